#!/usr/bin/env bash
# Builds s3-helper_VERSION_ARCH.deb with Debian's dpkg-deb from the static
# binary, the systemd units, the commented /etc/default file (a conffile)
# and a man page written from -help by help2man. VERSION is the binary's
# release version. Usage: packaging/build-deb.sh [OUTDIR]  (default: .)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
go=${GO:-go}
export PATH=$PATH:/usr/local/go/bin
for tool in dpkg-deb help2man gzip; do
	command -v "$tool" >/dev/null || { echo "build-deb: $tool is missing (apt-get install dpkg help2man)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$work/s3-helper
CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w" -o "$bin" .
version=$("$bin" -version | awk '{print $2}')
arch=$(dpkg --print-architecture)
root=$work/root
install -D -m 0755 "$bin" "$root/usr/bin/s3-helper"
for unit in s3-helper.service s3-helper.socket s3-helper-admin.socket; do
	install -D -m 0644 "packaging/$unit" "$root/lib/systemd/system/$unit"
done
install -D -m 0644 packaging/s3-helper.default "$root/etc/default/s3-helper"
install -D -m 0644 packaging/lintian-overrides "$root/usr/share/lintian/overrides/s3-helper"
doc=$root/usr/share/doc/s3-helper
install -D -m 0644 packaging/copyright "$doc/copyright"
install -m 0644 README.md "$doc/README.md"
date=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$date/" packaging/changelog | gzip -9n >"$doc/changelog.gz"
mkdir -p "$root/usr/share/man/man1"
help2man --no-info --version-string="$version" \
	--name="a signing S3 origin for nginx on the same host" "$bin" | gzip -9n >"$root/usr/share/man/man1/s3-helper.1.gz"
mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" packaging/control >"$root/DEBIAN/control"
install -m 0644 packaging/conffiles "$root/DEBIAN/conffiles"
(cd "$root" && find usr lib -type f | LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"
for script in postinst prerm postrm; do
	install -m 0755 "packaging/$script" "$root/DEBIAN/$script"
done
deb=$out/s3-helper_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
