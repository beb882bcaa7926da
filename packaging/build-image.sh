#!/usr/bin/env bash
# Builds s3-helper_VERSION_oci.tar, an OCI image archive, with Debian's
# buildah and no daemon: FROM scratch with the static binary, the CA bundle
# and the licence, run as user 65532, with the org.opencontainers.image.*
# labels. VERSION is the binary's release version, as for the .deb. Every
# timestamp is the commit's (SOURCE_DATE_EPOCH, else git log -1 --format=%ct),
# so one commit built twice gives one image digest and one archive.
# `skopeo copy oci-archive:FILE docker://REGISTRY/s3-helper:VERSION` or
# `podman load -i FILE` takes the archive as it is.
# Usage: packaging/build-image.sh [OUTDIR]  (default: .)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
go=${GO:-go}
export PATH=$PATH:/usr/local/go/bin
for tool in buildah tar; do
	command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (apt-get install buildah)" >&2; exit 1; }
done
ca=/etc/ssl/certs/ca-certificates.crt
[[ -s $ca ]] || { echo "build-image: $ca is missing (apt-get install ca-certificates)" >&2; exit 1; }
# The repository the image's source label points to.
source_url=${S3_HELPER_IMAGE_SOURCE:-https://example.org/s3-helper}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

root=$work/context/root
mkdir -p "$root/usr/bin"
CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w" -o "$root/usr/bin/s3-helper" .
version=$("$root/usr/bin/s3-helper" -version | awk '{print $2}')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
install -D -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
install -D -m 0644 packaging/copyright "$root/usr/share/doc/s3-helper/copyright"
install -m 0644 packaging/Containerfile "$work/context/Containerfile"

# Storage of its own, on vfs (no overlay mounts, no daemon); chroot
# isolation, though a FROM scratch build runs nothing.
buildah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
tag=s3-helper:$version
"${buildah[@]}" build --quiet --isolation chroot --timestamp "$epoch" --identity-label=false \
	--label "org.opencontainers.image.title=s3-helper" \
	--label "org.opencontainers.image.description=A signing S3 origin for nginx-vod: plain GET and HEAD in, SigV4-signed requests to S3 out" \
	--label "org.opencontainers.image.version=$version" \
	--label "org.opencontainers.image.revision=$revision" \
	--label "org.opencontainers.image.source=$source_url" \
	--label "org.opencontainers.image.created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)" \
	--label "org.opencontainers.image.licenses=LicenseRef-all-rights-reserved AND BSD-3-Clause" \
	-f "$work/context/Containerfile" -t "localhost/$tag" "$work/context" >/dev/null
"${buildah[@]}" push --quiet "localhost/$tag" "oci:$work/layout:$tag"
# buildah's own archive stamps its entries with the time of writing; this
# one carries the commit's time, so the file is the same on every build.
archive=$out/s3-helper_${version}_oci.tar
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --mode=u=rwX,go=rX \
	-C "$work/layout" -cf "$archive" oci-layout index.json blobs
echo "$archive"
