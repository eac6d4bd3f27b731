#!/usr/bin/env bash
# Builds a tiny OCI image "registry.k8s.io/pause:<tag>" from pause.c, as an OCI-layout tarball
# that `ctr images import` accepts. There is no image registry here, so the sandbox image is
# made locally.
#   usage: pause-image.sh OUT.tar [TAG]
set -euo pipefail
out=$1
tag=${2:-3.9}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/rootfs" "$work/layout/blobs/sha256"
gcc -static -Os -o "$work/rootfs/pause" "$here/pause.c"
tar -C "$work/rootfs" --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" pause

blob() { # file -> digest (and copies it into the layout)
	local d
	d=$(sha256sum "$1" | cut -d' ' -f1)
	cp "$1" "$work/layout/blobs/sha256/$d"
	echo "$d"
}
layer=$(blob "$work/layer.tar")
layer_size=$(stat -c %s "$work/layer.tar")

cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
config=$(blob "$work/config.json")
config_size=$(stat -c %s "$work/config.json")

cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$layer_size}]}
JSON
manifest=$(blob "$work/manifest.json")
manifest_size=$(stat -c %s "$work/manifest.json")

cat > "$work/layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"annotations":{"io.containerd.image.name":"registry.k8s.io/pause:$tag","org.opencontainers.image.ref.name":"$tag"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
tar -C "$work/layout" -cf "$out" oci-layout index.json blobs
