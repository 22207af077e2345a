#!/bin/sh
# install.sh: build, install and start smtp_bridge; optionally make it the system's sendmail;
# undo all of it with --uninstall.
#
# Everything this script creates is recorded in a manifest
# ($DESTDIR/var/lib/smtp_bridge/install.manifest), and everything it moves aside is recorded
# there too, so that --uninstall removes exactly what was added and puts back exactly what
# was there. Running it twice changes nothing the first run did not.
#
# POSIX sh; clean under shellcheck.

set -eu

PROG=install.sh
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
# Fixed paths: the binaries look for /etc/smtp_bridge.conf, and callers look for
# /usr/sbin/sendmail whatever PREFIX is.
CONF=/etc/smtp_bridge.conf
STATE_DIR=/var/lib/smtp_bridge
MANIFEST=$STATE_DIR/install.manifest
PIDFILE=/run/smtp_bridge.pid
UNIT_DIR=/etc/systemd/system
SAVED_SUFFIX=.smtp_bridge-saved
# The daemon's own system user (and group), created when the configuration names it and it
# does not exist yet: a fresh configuration does. Nobody else runs as it, so no other
# process can read or change the queued mail (nobody, the built-in default, is shared).
DAEMON_USER=smtp_bridge
# The system paths that --replace-sendmail takes over (Postfix's places on Debian).
SENDMAIL_PATHS="/usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq /usr/bin/newaliases"

SRC_DIR=$(cd "$(dirname "$0")" && pwd)
# Generated files (compressed pages, units with our paths) are made here, not in the tree.
TMP_DIR=
cleanup() { [ -z "$TMP_DIR" ] || rm -rf "$TMP_DIR"; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

usage() {
	cat <<EOF
Usage: $PROG [options]

Builds smtp_bridge (cargo build --release --locked), installs it under PREFIX, creates the
spool and /etc/smtp_bridge.conf (never overwriting an existing one), installs the systemd
units and starts the daemon.

Options:
  --replace-sendmail  make /usr/sbin/sendmail, /usr/lib/sendmail, /usr/bin/mailq and
                      /usr/bin/newaliases ours; whatever was there is kept aside
                      (dpkg-divert when dpkg owns the file, else NAME$SAVED_SUFFIX)
  --no-start          install, but do not enable or start the daemon
  --binaries DIR      install smtp_bridge and sendmail from DIR instead of building
  --gzip-man          install the man pages gzip-compressed
  --uninstall         remove what an earlier run installed and restore what it moved aside
  -h, --help          show this text

Environment:
  PREFIX   installation prefix (default /usr/local)
  DESTDIR  stage the installation under this directory: no chown, no systemctl, no
           dpkg-divert, no daemon start; those steps are printed as "would: ..." and
           recorded in \$DESTDIR$STATE_DIR/pending-actions
  CARGO    the cargo command (default cargo)

See smtp_bridge(8), sendmail(8) and smtp_bridge.conf(5).
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

# ---- options ---------------------------------------------------------------------------

MODE=install
REPLACE_SENDMAIL=0
START=1
BINARIES=
GZIP_MAN=0
while [ $# -gt 0 ]; do
	case $1 in
	--replace-sendmail) REPLACE_SENDMAIL=1 ;;
	--no-start) START=0 ;;
	--binaries)
		[ $# -ge 2 ] || die "--binaries needs a directory"
		BINARIES=$2
		shift
		;;
	--binaries=*) BINARIES=${1#--binaries=} ;;
	--gzip-man) GZIP_MAN=1 ;;
	--uninstall) MODE=uninstall ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown option: $1"
		;;
	esac
	shift
done

case $PREFIX in
/*) ;;
*) die "PREFIX must be an absolute path: $PREFIX" ;;
esac
PREFIX=${PREFIX%/}
DESTDIR=${DESTDIR%/}
if [ -n "$DESTDIR" ]; then
	case $DESTDIR in
	/*) ;;
	*) DESTDIR=$(pwd)/$DESTDIR ;;
	esac
	[ "$MODE" = uninstall ] || mkdir -p "$DESTDIR"
fi

SBIN=$PREFIX/sbin
DAEMON=$SBIN/smtp_bridge
SHIM=$SBIN/smtp_bridge-sendmail
LINK_DIR=$PREFIX/lib/smtp_bridge
MAN_DIR=$PREFIX/share/man
DOC_DIR=$PREFIX/share/doc/smtp_bridge

# Under DESTDIR nothing outside the staging tree is touched: owner changes, systemctl,
# dpkg-divert and starting the daemon are recorded instead.
staged() { [ -n "$DESTDIR" ]; }

# ---- manifest --------------------------------------------------------------------------
# One line per thing done: "KIND<TAB>PATH[<TAB>EXTRA]", paths without DESTDIR.
#   dir D       we created directory D (removed on uninstall when empty)
#   file F      we installed file or link F
#   conf F      we installed the configuration F from the example
#   spool D     we created the spool D
#   saved P S   P was moved aside to S
#   diverted P  P was diverted with dpkg-divert
#   unit U      we installed the systemd unit U
#   user U      we created the system user U
#   group G     we created the group G (with that user)

TAB=$(printf '\t')

record() {
	line=$1
	[ $# -ge 2 ] && line="$line$TAB$2"
	[ $# -ge 3 ] && line="$line$TAB$3"
	if [ ! -f "$DESTDIR$MANIFEST" ] || ! grep -Fxq -- "$line" "$DESTDIR$MANIFEST"; then
		printf '%s\n' "$line" >>"$DESTDIR$MANIFEST"
	fi
}

recorded() { # KIND PATH
	[ -f "$DESTDIR$MANIFEST" ] &&
		awk -F "$TAB" -v k="$1" -v p="$2" '$1 == k && $2 == p { f = 1 } END { exit !f }' \
			"$DESTDIR$MANIFEST"
}

would() {
	say "would: $*"
	printf '%s\n' "$*" >>"$DESTDIR$STATE_DIR/pending-actions"
}

# Creates directory $1 (and its parents) with mode $2, recording each component created.
# (POSIX sh has no local variables: each function uses its own prefix.)
make_dir() {
	md_missing=
	md_d=$1
	while [ -n "$md_d" ] && [ "$md_d" != / ] && [ ! -d "$DESTDIR$md_d" ]; do
		md_missing="$md_d $md_missing"
		md_d=$(dirname "$md_d")
	done
	for md_d in $md_missing; do
		mkdir -m "$2" "$DESTDIR$md_d"
	done
	# Recorded only now: the manifest itself may live in one of these directories.
	for md_d in $md_missing; do
		record dir "$md_d"
	done
}

# Installs file $1 as $2 with mode $3 (copied only when different, so a rerun is a no-op).
put_file() {
	pf_dst=$DESTDIR$2
	make_dir "$(dirname "$2")" 0755
	if [ -L "$pf_dst" ] || [ ! -f "$pf_dst" ] || ! cmp -s "$1" "$pf_dst"; then
		# Copy beside, then rename: a running binary is replaced, never rewritten.
		rm -f "$pf_dst.tmp.$$"
		cp "$1" "$pf_dst.tmp.$$"
		chmod "$3" "$pf_dst.tmp.$$"
		mv -f "$pf_dst.tmp.$$" "$pf_dst"
	fi
	chmod "$3" "$pf_dst"
	record file "$2"
}

# Makes $1 a symbolic link to $2.
put_link() {
	make_dir "$(dirname "$1")" 0755
	if [ "$(readlink "$DESTDIR$1" 2>/dev/null || true)" != "$2" ]; then
		rm -f "$DESTDIR$1"
		ln -s "$2" "$DESTDIR$1"
	fi
	record file "$1"
}

# ---- configuration ---------------------------------------------------------------------

# Reads one string setting from the daemon's --check-config output (the effective
# settings, so the legacy INI form and the defaults count too).
setting() { # KEY
	printf '%s\n' "$EFFECTIVE" | sed -n "s/^$1 *= *\"\(.*\)\"\$/\1/p" | head -n 1
}

setting_line() { # KEY: the whole line, for lists
	printf '%s\n' "$EFFECTIVE" | sed -n "/^$1 *= */p" | head -n 1
}

load_settings() {
	if ! EFFECTIVE=$("$DESTDIR$DAEMON" --check-config --config "$DESTDIR$CONF" 2>&1); then
		printf '%s\n' "$EFFECTIVE" >&2
		die "$DESTDIR$CONF is not a valid configuration (see above)"
	fi
	USER_NAME=$(setting username)
	GROUP_NAME=$(setting group)
	SPOOL=$(setting spool_dir)
	[ -n "$USER_NAME" ] || USER_NAME=nobody
	[ -n "$GROUP_NAME" ] || GROUP_NAME=nogroup
	[ -n "$SPOOL" ] || SPOOL=/var/spool/smtp_bridge
	case $SPOOL in
	/*) ;;
	*) die "spool_dir must be an absolute path: $SPOOL" ;;
	esac
	if [ "$USER_NAME" = "$DAEMON_USER" ]; then
		create_user
	fi
	if ! staged; then
		id -u "$USER_NAME" >/dev/null 2>&1 || die "user $USER_NAME (username in $CONF) does not exist"
		if ! getent group "$GROUP_NAME" >/dev/null 2>&1; then
			# As the daemon does: nogroup missing means the user's primary group.
			GROUP_NAME=$(id -gn "$USER_NAME")
		fi
	fi
}

# The configuration a fresh install gets: the example, with the daemon's own user and group
# instead of the built-in nobody:nogroup.
fresh_config() {
	sed -e "s/^#username = \"nobody\"\$/username = \"$DAEMON_USER\"/" \
		-e "s/^#group = \"nogroup\"\$/group = \"$DAEMON_USER\"/" \
		"$SRC_DIR/smtp_bridge.conf.example"
}

# Creates the daemon's system user when missing, as Debian's Postfix has its postfix user:
# no password, no login shell, the spool as its home (not created here), and a group of its
# own unless the configuration's group exists already.
create_user() {
	if staged; then
		would "useradd --system --no-create-home --home-dir $SPOOL --shell /usr/sbin/nologin" \
			"(--gid $GROUP_NAME if that group exists, else --user-group) $DAEMON_USER, unless it exists"
		return 0
	fi
	id -u "$DAEMON_USER" >/dev/null 2>&1 && return 0
	command -v useradd >/dev/null 2>&1 ||
		die "useradd not found: create the system user $DAEMON_USER, or name another user in $CONF"
	if getent group "$GROUP_NAME" >/dev/null 2>&1; then
		useradd --system --no-create-home --home-dir "$SPOOL" --shell /usr/sbin/nologin \
			--gid "$GROUP_NAME" --comment "smtp_bridge daemon" "$DAEMON_USER"
	else
		useradd --system --no-create-home --home-dir "$SPOOL" --shell /usr/sbin/nologin \
			--user-group --comment "smtp_bridge daemon" "$DAEMON_USER"
		record group "$DAEMON_USER"
	fi
	record user "$DAEMON_USER"
	say "created the system user $DAEMON_USER"
}

# Removes a user this script created, unless a spool it owns is still there (its home: the
# spool it was created for). Prints nothing and returns 1 when it kept the user.
remove_user() { # USER
	ru_home=$(getent passwd "$1" | cut -d: -f6)
	if [ -n "$ru_home" ] && [ -d "$ru_home" ]; then
		say "keeping the system user $1: it owns $ru_home, which is still there (userdel $1 once that is dealt with)"
		return 1
	fi
	# userdel also removes a group of the user's name that is its primary group (Debian's
	# USERGROUPS_ENAB): when that group was there before us, move the user out of it first.
	ru_group=$(id -gn "$1" 2>/dev/null || true)
	if [ "$ru_group" = "$1" ] && ! recorded group "$1"; then
		if getent group nogroup >/dev/null 2>&1; then
			usermod -g nogroup "$1"
		else
			say "keeping the system user $1: its primary group $1 is not ours to remove"
			return 1
		fi
	fi
	if ! userdel "$1"; then
		say "could not remove the system user $1 (userdel $1)"
		return 1
	fi
	return 0
}

# ---- install ---------------------------------------------------------------------------

build() {
	if [ -n "$BINARIES" ]; then
		BIN_SRC=$(cd "$BINARIES" && pwd)
	else
		if ! command -v "${CARGO:-cargo}" >/dev/null 2>&1; then
			die "cargo not found (root's PATH often lacks it): build as yourself with
  cargo build --release --locked
then run: sudo ./$PROG --binaries target/release [options]"
		fi
		say "building: ${CARGO:-cargo} build --release --locked"
		(cd "$SRC_DIR" && ${CARGO:-cargo} build --release --locked)
		BIN_SRC=${CARGO_TARGET_DIR:-$SRC_DIR/target}/release
	fi
	for b in smtp_bridge sendmail; do
		[ -x "$BIN_SRC/$b" ] || die "no executable $BIN_SRC/$b"
	done
}

install_files() {
	put_file "$BIN_SRC/smtp_bridge" "$DAEMON" 0755
	put_file "$BIN_SRC/sendmail" "$SHIM" 0755
	# A directory of the usual names, to put first in PATH or to link to: the shim picks
	# its mode from the name it is called by.
	for name in sendmail mailq newaliases; do
		put_link "$LINK_DIR/$name" "$SHIM"
	done
	for page in smtp_bridge.8 sendmail.8 smtp_bridge.conf.5; do
		section=${page##*.}
		dst=$MAN_DIR/man$section/$page
		if [ "$GZIP_MAN" = 1 ]; then
			gzip -9nc "$SRC_DIR/man/$page" >"$TMP_DIR/$page.gz"
			put_file "$TMP_DIR/$page.gz" "$dst.gz" 0644
		else
			put_file "$SRC_DIR/man/$page" "$dst" 0644
		fi
	done
	ext=
	[ "$GZIP_MAN" = 1 ] && ext=.gz
	for name in mailq newaliases; do
		put_link "$MAN_DIR/man8/$name.8$ext" "sendmail.8$ext"
	done
	put_file "$SRC_DIR/smtp_bridge.conf.example" "$DOC_DIR/smtp_bridge.conf.example" 0644

	if [ -e "$DESTDIR$CONF" ] || [ -L "$DESTDIR$CONF" ]; then
		say "keeping the existing $DESTDIR$CONF"
	else
		make_dir "$(dirname "$CONF")" 0755
		fresh_config >"$DESTDIR$CONF"
		chmod 0644 "$DESTDIR$CONF"
		record conf "$CONF"
		say "installed $DESTDIR$CONF from smtp_bridge.conf.example (username and group $DAEMON_USER)"
	fi
}

# Gives $2 to the configured user, or records that it would.
own() { # MODE PATH
	chmod "$1" "$DESTDIR$2"
	if staged; then
		would "chown $USER_NAME:$GROUP_NAME $2"
	else
		chown "$USER_NAME:$GROUP_NAME" "$2"
	fi
}

install_spool() {
	# Whose the queue was, before it is given to the configured user.
	previous=$(stat -c %u "$DESTDIR$SPOOL/queue" 2>/dev/null || true)
	if [ ! -d "$DESTDIR$SPOOL" ]; then
		make_dir "$(dirname "$SPOOL")" 0755
		mkdir -m 0755 "$DESTDIR$SPOOL"
		record spool "$SPOOL"
	fi
	own 0755 "$SPOOL"
	# maildrop: any local user's sendmail drops a file here; sticky and not listable.
	for sub in maildrop:1733 queue:0700 failed:0700; do
		d=$SPOOL/${sub%%:*}
		[ -d "$DESTDIR$d" ] || mkdir "$DESTDIR$d"
		own "${sub#*:}" "$d"
	done
	# A reinstall with another username/group: the previous owner's queued mail, locks and
	# marker go to the new one too, as the daemon does when it starts as root (files local
	# users left, in maildrop/ or set aside into failed/, keep theirs: they say who sent them).
	if ! staged && [ -n "$previous" ]; then
		{
			find "$SPOOL/queue" "$SPOOL/failed" -mindepth 1 -maxdepth 1 -type f
			for name in queue.lock maildrop.lock spares.lock backlog; do
				[ -f "$SPOOL/$name" ] && printf '%s\n' "$SPOOL/$name"
			done
		} | while read -r file; do
			[ "$(stat -c '%u %h' "$file")" = "$previous 1" ] || continue
			[ -L "$file" ] || chown "$USER_NAME:$GROUP_NAME" "$file"
		done
	fi
}

systemd_running() { ! staged && [ -d /run/systemd/system ]; }
# Units are staged always (the packager decides), and installed for real where systemctl is.
systemd_present() { staged || command -v systemctl >/dev/null 2>&1; }

install_units() {
	systemd_present || return 0
	make_dir "$UNIT_DIR" 0755
	for unit in smtp_bridge.service smtp_bridge.socket; do
		sed -e "s|/usr/sbin/smtp_bridge|$DAEMON|g" \
			-e "s|^User=.*|User=$USER_NAME|" \
			-e "s|^Group=.*|Group=$GROUP_NAME|" \
			-e "s|^ReadWritePaths=.*|ReadWritePaths=$SPOOL|" \
			-e "s|--config /etc/smtp_bridge.conf|--config $CONF|" \
			"$SRC_DIR/packaging/$unit" >"$TMP_DIR/$unit"
		put_file "$TMP_DIR/$unit" "$UNIT_DIR/$unit" 0644
		record unit "$UNIT_DIR/$unit"
	done
}

# Moves what is at $1 aside (dpkg-divert when a package owns it) and records it.
set_aside() {
	path=$1
	if staged; then
		mv "$DESTDIR$path" "$DESTDIR$path$SAVED_SUFFIX"
		record saved "$path" "$path$SAVED_SUFFIX"
	elif command -v dpkg-query >/dev/null 2>&1 && dpkg-query -S "$path" >/dev/null 2>&1; then
		dpkg-divert --quiet --local --rename --divert "$path$SAVED_SUFFIX" --add "$path"
		record diverted "$path"
	else
		mv "$path" "$path$SAVED_SUFFIX"
		record saved "$path" "$path$SAVED_SUFFIX"
	fi
	say "moved $path aside to $path$SAVED_SUFFIX"
}

replace_sendmail() {
	for path in $SENDMAIL_PATHS; do
		if [ "$(readlink "$DESTDIR$path" 2>/dev/null || true)" = "$SHIM" ]; then
			record file "$path"
			continue
		fi
		if [ -e "$DESTDIR$path" ] || [ -L "$DESTDIR$path" ]; then
			if [ -e "$DESTDIR$path$SAVED_SUFFIX" ] || [ -L "$DESTDIR$path$SAVED_SUFFIX" ]; then
				die "$DESTDIR$path$SAVED_SUFFIX already exists; not overwriting it"
			fi
			set_aside "$path"
		fi
		put_link "$path" "$SHIM"
	done
}

# Whether process $1 exists and has not exited: an exited daemon whose parent (install.sh,
# long gone) left it to an init that does not reap stays a zombie, which kill -0 still sees.
running() {
	kill -0 "$1" 2>/dev/null || return 1
	state=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null)
	[ "$state" != Z ]
}

stop_daemon() {
	if systemd_running; then
		for unit in smtp_bridge.service smtp_bridge.socket; do
			systemctl stop "$unit" 2>/dev/null || true
		done
	fi
	if [ -f "$PIDFILE" ] && ! staged; then
		pid=$(cat "$PIDFILE")
		if [ -n "$pid" ] && running "$pid" &&
			grep -q smtp_bridge "/proc/$pid/comm" 2>/dev/null; then
			kill -TERM "$pid"
			i=0
			# The daemon lets sessions in flight finish before it exits.
			while running "$pid" && [ $i -lt 60 ]; do
				sleep 1
				i=$((i + 1))
			done
		fi
		rm -f "$PIDFILE"
	fi
}

start_daemon() {
	if staged; then
		if systemd_present; then
			would "systemctl daemon-reload"
			[ "$START" = 1 ] && would "systemctl enable --now smtp_bridge.socket smtp_bridge.service"
		elif [ "$START" = 1 ]; then
			would "start $DAEMON --config $CONF"
		fi
		return 0
	fi
	if systemd_present && ! systemd_running; then
		say "systemd is installed but not running: units installed, not enabled"
	fi
	if systemd_running; then
		systemctl daemon-reload
		[ "$START" = 1 ] || return 0
		# enable may create the .wants directories: record them so --uninstall removes them.
		for wants in sockets.target.wants multi-user.target.wants; do
			[ -d "$UNIT_DIR/$wants" ] || record dir "$UNIT_DIR/$wants"
		done
		systemctl enable smtp_bridge.socket smtp_bridge.service
		systemctl restart smtp_bridge.socket smtp_bridge.service ||
			die "smtp_bridge did not start: see systemctl status smtp_bridge.socket smtp_bridge.service"
		say "started smtp_bridge.socket and smtp_bridge.service (systemctl status smtp_bridge)"
		return 0
	fi
	[ "$START" = 1 ] || return 0
	# No systemd: start the daemon in the background as root; it binds, then drops to
	# the configured user itself. Nothing restarts it at boot.
	stop_daemon
	"$DAEMON" --config "$CONF" </dev/null >/dev/null 2>"$TMP_DIR/daemon.err" &
	echo $! >"$PIDFILE"
	sleep 1
	if ! running "$(cat "$PIDFILE")"; then
		rm -f "$PIDFILE"
		die "the daemon exited at once: $(head -n 3 "$TMP_DIR/daemon.err")
  (for more: $DAEMON --config $CONF --loglevel debug)"
	fi
	say "started $DAEMON (pid $(cat "$PIDFILE"), no systemd: not started at boot)"
}

# Another MTA (exim4, postfix) still holding a port of `listen` would leave sendmail
# replaced and no daemon: refuse before the spool, the units or sendmail are touched. Our
# own daemon (an upgrade) is fine.
check_ports() {
	{ staged || [ "$START" != 1 ] || ! command -v ss >/dev/null 2>&1; } && return 0
	# The configuration the daemon will start with: the one there, or the example that
	# install_files puts there.
	conf=$CONF
	[ -f "$conf" ] || conf=$SRC_DIR/smtp_bridge.conf.example
	EFFECTIVE=$("$BIN_SRC/smtp_bridge" --check-config --config "$conf" 2>/dev/null) || return 0
	ports=$(setting_line listen | grep -o ':[0-9]*"' | tr -d ':"' | sort -u)
	# systemd (pid 1) holding our own socket unit (the service stopped, the socket still
	# listening: an upgrade) is no other MTA.
	ours_in_systemd=
	if command -v systemctl >/dev/null 2>&1 &&
		systemctl is-active --quiet smtp_bridge.socket 2>/dev/null; then
		ours_in_systemd=1
	fi
	for port in $ports; do
		# Every holder ("name",pid=N), less our daemon (and our socket unit).
		holders=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o '"[^"]*",pid=[0-9]*' |
			grep -v '^"smtp_bridge",' |
			{ if [ -n "$ours_in_systemd" ]; then grep -v '^"systemd",pid=1$'; else cat; fi; } |
			sed 's/,pid=\(.*\)/ (pid \1)/' | sort -u | tr '\n' ' ')
		[ -z "$holders" ] && continue
		die "port $port is in use by ${holders% }: stop and remove the MTA that holds it first
  (apt-get remove exim4-daemon-light, or postfix; systemctl disable --now SERVICE),
or install without starting the daemon: --no-start"
	done
}

do_install() {
	build
	check_ports
	TMP_DIR=$(mktemp -d)
	make_dir "$STATE_DIR" 0755
	if staged; then
		: >"$DESTDIR$STATE_DIR/pending-actions"
	fi
	install_files
	load_settings
	install_spool
	install_units
	if [ "$REPLACE_SENDMAIL" = 1 ]; then
		replace_sendmail
	elif [ ! -e "$DESTDIR/usr/sbin/sendmail" ]; then
		say "no /usr/sbin/sendmail here; rerun with --replace-sendmail to provide it"
	fi
	start_daemon
	say "installed into ${DESTDIR:-/} with PREFIX=$PREFIX"
}

# ---- uninstall -------------------------------------------------------------------------

entries() { # KIND: the paths recorded with that kind, last first
	[ -f "$DESTDIR$MANIFEST" ] || return 0
	awk -F "$TAB" -v k="$1" '$1 == k { print $2 }' "$DESTDIR$MANIFEST" | sed -n '1!G;h;$p'
}

spool_is_empty() {
	# queue/.spare.* are the files of delivered messages the daemon keeps for new ones, and
	# maildrop/.waiting the mark sendmail leaves for it: not mail.
	for d in maildrop queue failed; do
		if [ -d "$DESTDIR$1/$d" ] && [ -n "$(find "$DESTDIR$1/$d" -mindepth 1 -maxdepth 1 \
			! -path "$DESTDIR$1/queue/.spare.*" ! -path "$DESTDIR$1/maildrop/.waiting" \
			-print -quit)" ]; then
			return 1
		fi
	done
	return 0
}

do_uninstall() {
	[ -f "$DESTDIR$MANIFEST" ] || die "nothing to uninstall: no $DESTDIR$MANIFEST"
	if staged; then
		[ -n "$(entries unit)" ] && would "systemctl disable --now smtp_bridge.socket smtp_bridge.service"
	else
		if systemd_running && [ -n "$(entries unit)" ]; then
			systemctl disable --now smtp_bridge.socket smtp_bridge.service 2>/dev/null || true
		fi
		stop_daemon
	fi
	# Put back what --replace-sendmail moved aside.
	while IFS="$TAB" read -r kind path saved; do
		case $kind in
		saved)
			rm -f "$DESTDIR$path"
			mv "$DESTDIR$saved" "$DESTDIR$path"
			say "restored $path"
			;;
		diverted)
			rm -f "$path"
			dpkg-divert --quiet --local --rename --divert "$path$SAVED_SUFFIX" --remove "$path"
			say "restored $path"
			;;
		esac
	done <"$DESTDIR$MANIFEST"
	for f in $(entries file) $(entries unit); do
		# A restored original now sits at the path: leave it.
		if recorded saved "$f" || recorded diverted "$f"; then
			continue
		fi
		rm -f "$DESTDIR$f"
	done
	if systemd_running && [ -n "$(entries unit)" ]; then
		systemctl daemon-reload
	fi
	for conf in $(entries conf); do
		example=$SRC_DIR/smtp_bridge.conf.example
		# Unchanged: what this version writes, or (from an older version) nothing but comments.
		if [ -f "$DESTDIR$conf" ] && [ -f "$example" ] && {
			fresh_config | cmp -s - "$DESTDIR$conf" ||
				! grep -qv '^[[:space:]]*\(#.*\)\{0,1\}$' "$DESTDIR$conf"
		}; then
			rm -f "$DESTDIR$conf"
		else
			say "keeping $DESTDIR$conf: it was changed after installation"
		fi
	done
	kept_spool=
	for spool in $(entries spool); do
		[ -d "$DESTDIR$spool" ] || continue
		case $spool in
		/?*) ;;
		*) continue ;; # never "/" or a relative path
		esac
		if spool_is_empty "$spool"; then
			rm -rf "$DESTDIR$spool"
		else
			waiting=$(find "$DESTDIR$spool/maildrop" "$DESTDIR$spool/queue" -mindepth 1 -maxdepth 1 \
				-type f ! -name '.*' ! -name '*.retry' 2>/dev/null | wc -l)
			failed=$(find "$DESTDIR$spool/failed" -mindepth 1 -maxdepth 1 -type f \
				! -name '*.reason' 2>/dev/null | wc -l)
			say "keeping $DESTDIR$spool: $waiting message(s) were still waiting and $failed in failed/
  (to deliver waiting mail before uninstalling: sendmail -q, with the bridge up)"
			kept_spool=$spool
		fi
	done
	# The user we created goes too, unless a spool it owns is still there. What is kept stays
	# in the manifest, so that a later --uninstall (after a reinstall) still removes it.
	kept=
	for user in $(entries user); do
		if remove_user "$user"; then
			for group in $(entries group); do
				# userdel takes a user's own group with it where USERGROUPS_ENAB says so.
				if getent group "$group" >/dev/null 2>&1 && ! groupdel "$group"; then
					say "could not remove the group $group (groupdel $group)"
				fi
			done
		else
			kept="$kept$(printf 'user\t%s' "$user")
"
			for group in $(entries group); do
				kept="$kept$(printf 'group\t%s' "$group")
"
			done
		fi
	done
	[ -n "$kept_spool" ] && [ -n "$kept" ] && kept="$kept$(printf 'spool\t%s' "$kept_spool")
"
	rm -f "$DESTDIR$STATE_DIR/pending-actions"
	dirs=$(entries dir)
	rm -f "$DESTDIR$MANIFEST"
	if [ -n "$kept" ]; then
		printf '%sdir\t%s\n' "$kept" "$STATE_DIR" >"$DESTDIR$MANIFEST"
		say "$MANIFEST keeps what was left, for the next --uninstall"
	fi
	for d in $dirs; do
		rmdir "$DESTDIR$d" 2>/dev/null || true
	done
	say "uninstalled from ${DESTDIR:-/}"
}

if ! staged && [ "$(id -u)" != 0 ]; then
	die "installing into the system needs root (or set DESTDIR to stage the files)"
fi
if [ "$MODE" = uninstall ]; then
	do_uninstall
else
	do_install
fi
