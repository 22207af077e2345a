#!/bin/sh
# sandbox-run.sh: run a command as root in a throwaway copy-on-write view of this machine,
# for the system tests (SMTP_BRIDGE_SYSTEM_TESTS=1) on a workstation or a shared box.
#
# / is mounted as an overlay whose upper layer is a temporary directory, with private
# mount, network (loopback only) and PID namespaces and an empty /run (so no systemd):
# install.sh, apt-get install ./smtp-bridge.deb and port 25 all happen in the copy and
# vanish with it. The repository's directory is bound read-write so cargo can build.
#
# Usage (as root): packaging/sandbox-run.sh COMMAND [ARG...]
#   packaging/sandbox-run.sh env SMTP_BRIDGE_SYSTEM_TESTS=1 cargo test --test install
set -eu

if [ "$(id -u)" != 0 ] || [ $# -eq 0 ]; then
	echo "usage (as root): $0 COMMAND [ARG...]" >&2
	exit 64
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=$(mktemp -d /tmp/smtp_bridge-sandbox.XXXXXX)
trap 'rm -rf "$BASE"' EXIT INT TERM
mkdir "$BASE/upper" "$BASE/work" "$BASE/root"

# shellcheck disable=SC2016 # expanded by the inner shell
unshare --mount --net --pid --fork --mount-proc sh -c '
	set -eu
	base=$1 repo=$2 cwd=$3
	shift 3
	mount --make-rprivate /
	mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
	mount -t proc proc "$base/root/proc"
	mount --rbind /dev "$base/root/dev"
	mount --rbind /sys "$base/root/sys"
	mount -t tmpfs tmpfs "$base/root/run"
	mkdir -p "$base/root/run/lock" "$base/root$repo"
	mount --bind "$repo" "$base/root$repo"
	# The shell stays PID 1 of the namespace (no exec), so it reaps orphaned daemons.
	exec chroot "$base/root" sh -c "ip link set lo up 2>/dev/null || true; cd \"\$0\" && \"\$@\"" "$cwd" "$@"
' sh "$BASE" "$REPO" "$(pwd)" "$@"
