#!/usr/bin/env bash
# bench/run.sh — the one command that benchmarks smtp_bridge against Postfix's smtp-sink.
#
# Builds the release binaries and the bench examples, fetches smtp-sink from Debian's postfix
# package without installing Postfix (cached under target/bench-cache), starts every server on
# a free loopback port with a temporary config and spool, runs every measure of the table R
# times (fresh server each time, so peak RSS belongs to one measure), takes medians, and
# writes the table into BENCHMARKS.md between its bench markers. Loopback only; every run is
# bounded in count and in time. No timed assertion lives in `cargo test`: this is the place.
#
# Usage: bench/run.sh            (R=5 repetitions)
#        R=3 N_SMALL=5000 bench/run.sh
#        ONLY=reference bench/run.sh   (smtp-sink and the bridge sink only: harness check)
#
# Knobs (environment): R, SESSIONS (20), N_SMALL (1 KiB messages, reuse), N_NEW (1 KiB,
# one connection each), N_LARGE (1 MiB messages), HUGE_MIB (20), IDLE (1000 connections),
# SINK_N (PUTs for the sink-alone rate), SHIM_N (sendmail runs), OUT (BENCHMARKS.md),
# (as root, the 1 KiB kept-connection load runs a second time with bench/syslog_sink.py as
# the daemon's syslog, for the CPU a real box's syslog costs and a count of the lines)
# DAEMON_BIN (another smtp_bridge build to measure; default: this tree's), CANDIDATE_BIN (a
# second build, e.g. with a proposed fix, measured in the same repetitions for a fair
# before/after on a noisy machine), CANDIDATE_CONF (extra configuration lines for the
# candidate, e.g. 'spool_sync = "file"'; with it alone, the candidate is this tree's daemon).
set -euo pipefail

R=${R:-5}
SESSIONS=${SESSIONS:-20}
N_SMALL=${N_SMALL:-10000}
N_NEW=${N_NEW:-4000}
N_LARGE=${N_LARGE:-100}
HUGE_MIB=${HUGE_MIB:-20}
IDLE=${IDLE:-1000}
SINK_N=${SINK_N:-5000}
SHIM_N=${SHIM_N:-200}
ONLY=${ONLY:-all}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/BENCHMARKS.md}
cd "$ROOT"

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

say "building release binaries and bench examples"
cargo build --release --bins --examples >&2

REL=$ROOT/target/release
DAEMON_BIN=${DAEMON_BIN:-$REL/smtp_bridge}
CANDIDATE_CONF=${CANDIDATE_CONF:-}
CANDIDATE_BIN=${CANDIDATE_BIN:-}
[[ -n $CANDIDATE_CONF && -z $CANDIDATE_BIN ]] && CANDIDATE_BIN=$DAEMON_BIN
LOADGEN=$REL/examples/loadgen
SINKBIN=$REL/examples/bridge_sink
CACHE=$ROOT/target/bench-cache

# ------------------------------------------------------------------ smtp-sink (reference)
SMTP_SINK=$CACHE/postfix/usr/sbin/smtp-sink
SMTP_SINK_LIBS=$CACHE/postfix/usr/lib/postfix
if [[ ! -x $SMTP_SINK ]]; then
    say "fetching smtp-sink from Debian's postfix package (not installing Postfix)"
    mkdir -p "$CACHE/deb"
    (cd "$CACHE/deb" && rm -f postfix_*.deb && apt-get download postfix >&2) ||
        die "apt-get download postfix failed (run apt-get update first?)"
    rm -rf "$CACHE/postfix"
    dpkg -x "$CACHE"/deb/postfix_*.deb "$CACHE/postfix"
fi
missing=$(LD_LIBRARY_PATH=$SMTP_SINK_LIBS ldd "$SMTP_SINK" | awk '/not found/ {print $1}' || true)
[[ -z $missing ]] || die "smtp-sink needs libraries that are missing: $missing (install those libraries only, never the postfix package)"
POSTFIX_VERSION=$(dpkg-deb -f "$CACHE"/deb/postfix_*.deb Version 2>/dev/null || echo unknown)

# ------------------------------------------------------------------ scratch space
# Under target/ (a real disk, as /var/spool is), not tmpfs: fsync must cost what it costs.
WORK=$(mktemp -d "$ROOT/target/bench-run.XXXXXX")
chmod 755 "$WORK" # the daemon started as root becomes nobody and must reach its spool
RESULTS=$WORK/results.txt
: >"$RESULTS"
SERVER_PID=""
SINK_PID=""
cleanup() {
    local pid
    for pid in $SERVER_PID $SINK_PID $SYSLOG_PID; do
        { kill -KILL "$pid" && wait "$pid"; } 2>/dev/null || true
    done
    if [[ ${KEEP:-0} == 1 ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# 1,000 idle connections need descriptors on both sides.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# ------------------------------------------------------------------ bridge sink
"$SINKBIN" serve >"$WORK/sink.port" 2>"$WORK/sink.log" &
SINK_PID=$!
for _ in $(seq 100); do grep -q '^port=' "$WORK/sink.port" && break; sleep 0.05; done
SINK_PORT=$(sed -n 's/^port=//p' "$WORK/sink.port")
[[ -n $SINK_PORT ]] || die "bridge sink did not start: $(cat "$WORK/sink.log")"
SINK_ADDR=127.0.0.1:$SINK_PORT
SINK_URL=http://$SINK_ADDR/replies

# ------------------------------------------------------------------ servers
run_as_root=false
[[ $(id -u) == 0 ]] && run_as_root=true

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

start_reference() {
    SERVER_PORT=$("$LOADGEN" freeport)
    local user=()
    # smtp-sink refuses to run as root without -u; it drops to that user after binding.
    $run_as_root && user=(-u nobody)
    # -m: smtp-sink serves at most 256 connections at once by default and leaves the rest
    # ungreeted in the backlog; it gets the daemon's limit (max_connections below).
    LD_LIBRARY_PATH=$SMTP_SINK_LIBS "$SMTP_SINK" "${user[@]}" -m $((IDLE + 100)) \
        "127.0.0.1:$SERVER_PORT" 1024 \
        2>>"$WORK/smtp-sink.log" &
    SERVER_PID=$!
    "$LOADGEN" wait --addr "127.0.0.1:$SERVER_PORT" --timeout 10 || die "smtp-sink did not greet"
}

DAEMON_CONF=""
write_daemon_conf() { # $1: dir, $2: port
    cat >"$1/smtp_bridge.conf" <<EOF
# smtp_bridge benchmark configuration (bench/run.sh)
queue = "$SINK_URL"
name = "bench"
hostname = "bench.localhost"
loglevel = "info"
listen = ["127.0.0.1:$2"]
spool_dir = "$1/spool"
max_connections = $((IDLE + 100))
${EXTRA_CONF:-}
EOF
    chmod 644 "$1/smtp_bridge.conf"
    DAEMON_CONF=$1/smtp_bridge.conf
}

# With `syslog`, the daemon gets a syslog daemon reading its log, as on any real box (this
# machine may have no /dev/log; then the daemon's info lines go nowhere and cost less than they
# would). Root only: a private mount namespace gives the daemon bench/syslog_sink.py's socket
# as its /dev/log (and as /run/syslog, its fallback), as tests/common/daemon.rs does for the
# tests.
SYSLOG_PID=""
with_syslog=false
$run_as_root && command -v unshare >/dev/null && with_syslog=true
DAEMON_RUN=0
start_daemon() { # [$1: syslog]
    DAEMON_RUN=$((DAEMON_RUN + 1))
    local dir=$WORK/daemon.$DAEMON_RUN run=("$CURRENT_BIN")
    mkdir -p "$dir" && chmod 755 "$dir"
    SERVER_PORT=$("$LOADGEN" freeport)
    write_daemon_conf "$dir" "$SERVER_PORT"
    if [[ ${1:-} == syslog ]]; then
        SYSLOG_OUT=$dir/syslog.out
        python3 "$ROOT/bench/syslog_sink.py" "$dir/syslog.sock" >"$SYSLOG_OUT" 2>"$dir/syslog.log" &
        SYSLOG_PID=$!
        for _ in $(seq 100); do [[ -S $dir/syslog.sock ]] && break; sleep 0.05; done
        [[ -S $dir/syslog.sock ]] || die "the syslog stand-in did not start: $(cat "$dir/syslog.log")"
        # unshare and sh exec in place, so $! stays the daemon's own pid.
        # shellcheck disable=SC2016 # expanded by the inner shell
        run=(unshare --mount --propagation private sh -c '
            mount -t tmpfs -o size=64k,mode=755 none /run &&
            : >/run/syslog && mount --bind "$SYSLOG_SOCKET" /run/syslog &&
            { [ ! -e /dev/log ] || mount --bind "$SYSLOG_SOCKET" /dev/log; } &&
            exec "$0" "$@"' "$CURRENT_BIN")
    fi
    # As root the daemon binds, then drops to the configured user (nobody), as in production.
    SYSLOG_SOCKET=$dir/syslog.sock "${run[@]}" --config "$DAEMON_CONF" 2>>"$dir/daemon.log" &
    SERVER_PID=$!
    "$LOADGEN" wait --addr "127.0.0.1:$SERVER_PORT" --timeout 10 ||
        die "smtp_bridge did not greet: $(tail -5 "$dir/daemon.log")"
}
stop_syslog() { # after stop_server: what the daemon logged last has reached the socket
    [[ -n $SYSLOG_PID ]] || return 0
    sleep 0.5
    kill -TERM "$SYSLOG_PID" 2>/dev/null || true
    wait "$SYSLOG_PID" 2>/dev/null || true
    SYSLOG_PID=""
}

daemon_ready=false
if [[ $ONLY != reference ]]; then
    if "$DAEMON_BIN" --version 2>/dev/null | grep -q smtp_bridge; then
        daemon_ready=true
    else
        say "smtp_bridge is not built yet (skeleton): measuring the references only"
    fi
fi

record() { # $1 target, $2 measure, $3 rep, rest: command printing one key=value line
    local target=$1 measure=$2 rep=$3
    shift 3
    local line
    if ! line=$(timeout 900 "$@" 2>>"$WORK/loadgen.log"); then
        say "$target/$measure rep $rep failed: $(tail -3 "$WORK/loadgen.log")"
        line="run_failed=1"
    fi
    printf 'target=%s measure=%s rep=%s %s\n' "$target" "$measure" "$rep" "$line" | tee -a "$RESULTS" >&2
}

CURRENT_BIN=$DAEMON_BIN
one_target() { # $1: reference|daemon|candidate, $2: rep
    local t=$1 rep=$2 start sink_opt=()
    if [[ $t == reference ]]; then start=start_reference; else
        start=start_daemon
        sink_opt=(--sink "$SINK_ADDR")
        CURRENT_BIN=$DAEMON_BIN
        EXTRA_CONF=""
        [[ $t == candidate ]] && CURRENT_BIN=$CANDIDATE_BIN && EXTRA_CONF=$CANDIDATE_CONF
    fi
    local A="--addr" S=(--sessions "$SESSIONS")
    # Idle: peak RSS of a fresh server, then 1,000 idle sessions and the greeting of a newcomer.
    $start
    record "$t" idle "$rep" "$LOADGEN" procstat --pid "$SERVER_PID"
    record "$t" idle1000 "$rep" "$LOADGEN" idle $A "127.0.0.1:$SERVER_PORT" --pid "$SERVER_PID" \
        --connections "$IDLE"
    stop_server
    # 1 KiB over kept connections (+ end to end for the daemon; CPU counted until delivered).
    $start
    record "$t" reuse1k "$rep" "$LOADGEN" smtp $A "127.0.0.1:$SERVER_PORT" "${S[@]}" --mode reuse \
        --size 1024 --messages "$N_SMALL" --pid "$SERVER_PID" "${sink_opt[@]}" --timeout 600
    stop_server
    # The same with a syslog daemon reading the log (the daemon's CPU includes sending it).
    if [[ $t != reference ]] && $with_syslog; then
        start_daemon syslog
        record "$t" reuse1k_syslog "$rep" "$LOADGEN" smtp $A "127.0.0.1:$SERVER_PORT" "${S[@]}" \
            --mode reuse --size 1024 --messages "$N_SMALL" --pid "$SERVER_PID" "${sink_opt[@]}" \
            --timeout 600
        stop_server
        stop_syslog
        record "$t" syslog "$rep" cat "$SYSLOG_OUT"
    fi
    # 1 KiB, one connection per message.
    $start
    record "$t" new1k "$rep" "$LOADGEN" smtp $A "127.0.0.1:$SERVER_PORT" "${S[@]}" --mode new \
        --size 1024 --messages "$N_NEW" --pid "$SERVER_PID" --timeout 600
    stop_server
    # 1 MiB over kept connections.
    $start
    record "$t" reuse1m "$rep" "$LOADGEN" smtp $A "127.0.0.1:$SERVER_PORT" "${S[@]}" --mode reuse \
        --size 1048576 --messages "$N_LARGE" --pid "$SERVER_PID" --timeout 600
    stop_server
    # SESSIONS concurrent messages of HUGE_MIB MiB: peak RSS must not follow message size.
    $start
    record "$t" huge "$rep" "$LOADGEN" smtp $A "127.0.0.1:$SERVER_PORT" "${S[@]}" --mode new \
        --size $((HUGE_MIB * 1048576)) --messages "$SESSIONS" --pid "$SERVER_PID" "${sink_opt[@]}" \
        --timeout 600 --deliver-timeout 120
    stop_server
}

# A 1 KiB message as a cron job would pipe it into sendmail -t.
MSG1K=$WORK/msg1k.eml
{
    printf 'From: cron <root@localhost>\nTo: root\nSubject: benchmark message for the sendmail shim\n\n'
    for i in $(seq 12); do printf 'Line %02d of a cron report: the quick brown fox jumps over the dog.\n' "$i"; done
} | head -c 1000 >"$MSG1K"
printf '\n' >>"$MSG1K"

say "R=$R sessions=$SESSIONS n_small=$N_SMALL n_new=$N_NEW n_large=$N_LARGE huge=${HUGE_MIB}MiB idle=$IDLE"
for rep in $(seq "$R"); do
    say "repetition $rep of $R"
    record machine fsync "$rep" "$LOADGEN" fsync --dir "$WORK/fsync" --batch "$SESSIONS" --rounds 50
    record sink absorb "$rep" "$SINKBIN" put --url "$SINK_URL" --count "$SINK_N"
    one_target reference "$rep"
    if $daemon_ready; then
        one_target daemon "$rep"
        [[ -n $CANDIDATE_BIN ]] && one_target candidate "$rep"
        EXTRA_CONF=""
        shimdir=$WORK/shim.$rep
        mkdir -p "$shimdir" && chmod 755 "$shimdir"
        write_daemon_conf "$shimdir" "$("$LOADGEN" freeport)"
        # The floor: what starting any program costs here, measured the same way.
        record shim exec_floor "$rep" "$LOADGEN" exec --count "$SHIM_N" --input "$MSG1K" -- /bin/true
        record shim shim "$rep" env SMTP_BRIDGE_CONFIG="$DAEMON_CONF" "$LOADGEN" exec \
            --count "$SHIM_N" --input "$MSG1K" --sink "$SINK_ADDR" -- "$REL/sendmail" -t -i
    fi
done

# ------------------------------------------------------------------ the table
MACHINE_CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MACHINE_MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
FS=$(df -T "$WORK" | awk 'NR==2 {print $2" on "$1}')
NPROC=$(nproc)
KERNEL=$(uname -r)
RUSTC=$(rustc --version)
COMMIT=$(git describe --always --dirty 2>/dev/null || echo unknown)
DAEMON_SHA=$(sha256sum "$DAEMON_BIN" | cut -c1-12)
CANDIDATE_SHA=""
[[ -n $CANDIDATE_BIN ]] && CANDIDATE_SHA=$(sha256sum "$CANDIDATE_BIN" | cut -c1-12)
export DAEMON_BIN DAEMON_SHA CANDIDATE_BIN CANDIDATE_CONF CANDIDATE_SHA NPROC MACHINE_CPU MACHINE_MEM FS KERNEL RUSTC COMMIT POSTFIX_VERSION \
    R SESSIONS N_SMALL N_NEW N_LARGE HUGE_MIB IDLE SINK_N SHIM_N ONLY
say "nproc=$NPROC"
python3 "$ROOT/bench/table.py" "$RESULTS" "$OUT"
cp "$RESULTS" "$ROOT/target/bench-results.txt"
say "table written to $OUT (raw lines kept in target/bench-results.txt)"
