#!/bin/sh
# build-deb.sh: build the smtp-bridge .deb with dpkg-deb from a release build.
#
# The tree is staged by install.sh (DESTDIR, PREFIX=/usr), so a package and a hand
# installation have the same layout; this script only moves the units to
# /lib/systemd/system, drops what dpkg tracks itself (install.sh's manifest, the spool,
# which postinst creates for the configured user) and writes the control files from
# packaging/debian/. dpkg-deb is all it needs beyond cargo: no cargo-deb to compile.
#
# Usage: packaging/build-deb.sh [--binaries DIR] [--out DIR]
#   --binaries DIR  package the smtp_bridge and sendmail binaries found in DIR instead of
#                   running cargo build --release --locked
#   --out DIR       where to write the .deb (default: target/debian); its path is printed
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
BINARIES=
OUT=$SRC/target/debian
while [ $# -gt 0 ]; do
	case $1 in
	--binaries)
		BINARIES=$2
		shift
		;;
	--out)
		OUT=$2
		shift
		;;
	-h | --help)
		sed -n '2,15s/^# \{0,1\}//p' "$0"
		exit 0
		;;
	*)
		echo "build-deb.sh: unknown option $1" >&2
		exit 64
		;;
	esac
	shift
done

VERSION=$(sed -n 's/^version *= *"\(.*\)"$/\1/p' "$SRC/Cargo.toml" | head -n 1)
ARCH=$(dpkg --print-architecture)
[ -n "$VERSION" ] || {
	echo "build-deb.sh: no version in Cargo.toml" >&2
	exit 1
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
ROOT=$WORK/root

set -- --no-start --gzip-man --replace-sendmail
[ -n "$BINARIES" ] && set -- "$@" --binaries "$BINARIES"
DESTDIR=$ROOT PREFIX=/usr "$SRC/install.sh" "$@" >/dev/null

# What dpkg and the maintainer scripts handle instead.
rm -rf "${ROOT:?}/var" "${ROOT:?}/usr/lib/smtp_bridge"
mkdir -p "$ROOT/lib/systemd/system"
mv "$ROOT/etc/systemd/system/smtp_bridge.service" "$ROOT/etc/systemd/system/smtp_bridge.socket" \
	"$ROOT/lib/systemd/system/"
rmdir "$ROOT/etc/systemd/system" "$ROOT/etc/systemd"
# Debian ships stripped binaries (the debug build, with --binaries, too).
if command -v strip >/dev/null 2>&1; then
	strip --strip-unneeded "$ROOT/usr/sbin/smtp_bridge" "$ROOT/usr/sbin/smtp_bridge-sendmail"
fi
# Debian names the documentation directory after the package.
mv "$ROOT/usr/share/doc/smtp_bridge" "$ROOT/usr/share/doc/smtp-bridge"
cp "$SRC/packaging/debian/copyright" "$ROOT/usr/share/doc/smtp-bridge/copyright"
chmod 0644 "$ROOT/usr/share/doc/smtp-bridge/copyright"
# Who builds it signs it, the Debian way (as dch does); the default names the project.
MAINTAINER="${DEBFULLNAME:-smtp_bridge developers} <${DEBEMAIL:-dev@smtp-bridge.local}>"
# A native package's changelog, as Debian policy asks.
{
	printf 'smtp-bridge (%s) unstable; urgency=medium\n\n' "$VERSION"
	printf '  * Built from smtp_bridge %s; see /usr/share/doc/smtp-bridge/README.md.\n\n' "$VERSION"
	printf ' -- %s  %s\n' "$MAINTAINER" "$(date -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")"
} | gzip -9n >"$ROOT/usr/share/doc/smtp-bridge/changelog.gz"
chmod 0644 "$ROOT/usr/share/doc/smtp-bridge/changelog.gz"
# sendmail(8) is also the page of the name the binary is installed under.
ln -s sendmail.8.gz "$ROOT/usr/share/man/man8/smtp_bridge-sendmail.8.gz"
# Links within the package are relative (install.sh, outside a package, makes them absolute).
find "$ROOT" -type l | while read -r link; do
	target=$(readlink "$link")
	case $target in
	/*) ln -sfr "$ROOT$target" "$link" ;;
	esac
done

# Shared-library dependencies, as dh_shlibdeps would compute them.
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
	mkdir -p "$WORK/src/debian"
	printf 'Source: smtp-bridge\n\nPackage: smtp-bridge\nArchitecture: any\n' >"$WORK/src/debian/control"
	DEPENDS=$(cd "$WORK/src" && dpkg-shlibdeps -O "$ROOT/usr/sbin/smtp_bridge" \
		"$ROOT/usr/sbin/smtp_bridge-sendmail" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
else
	glibc=$(objdump -T "$ROOT/usr/sbin/smtp_bridge" "$ROOT/usr/sbin/smtp_bridge-sendmail" |
		grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
	DEPENDS="libc6 (>= $glibc), libgcc-s1"
fi
# passwd: postinst creates the daemon's system user with useradd.
DEPENDS="$DEPENDS, init-system-helpers (>= 1.54~), passwd"

mkdir -p "$ROOT/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
	-e "s/@DEPENDS@/$DEPENDS/" -e "s|@MAINTAINER@|$MAINTAINER|" \
	"$SRC/packaging/debian/control.in" >"$ROOT/DEBIAN/control"
echo /etc/smtp_bridge.conf >"$ROOT/DEBIAN/conffiles"
for script in postinst prerm postrm; do
	cp "$SRC/packaging/debian/$script" "$ROOT/DEBIAN/$script"
	chmod 0755 "$ROOT/DEBIAN/$script"
done
(cd "$ROOT" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z |
	xargs -0 md5sum) >"$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/conffiles" "$ROOT/DEBIAN/md5sums"

mkdir -p "$OUT"
DEB=$OUT/smtp-bridge_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
