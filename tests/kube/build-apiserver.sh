#!/usr/bin/env bash
# Builds kube-apiserver from Debian 12's Kubernetes source package into $KUBE_CACHE (default
# /var/cache/vpc-cni/kube), once; later runs reuse the binary. There is no Kubernetes binary in
# Debian's archive, and nothing else may be downloaded, so the suites that need a real API
# server build one here. Takes ~6 minutes on two cores.
set -euo pipefail
cache=${KUBE_CACHE:-/var/cache/vpc-cni/kube}
bin="$cache/kube-apiserver"
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
mkdir -p "$cache"

export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
	cat > /etc/apt/sources.list.d/vpc-cni-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends golang-go rsync jq etcd-server etcd-client \
	golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev dpkg-dev >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source --download-only kubernetes >/dev/null
tar xf kubernetes_*.orig.tar.*
src=$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
cd "$src"
# The vendored reflect2 crashes on the first custom resource with Go >= 1.18; Debian's copy
# (and the json-iterator built against it) do not.
for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
	rm -rf "vendor/$pkg"
	cp -r "/usr/share/gocode/src/$pkg" "vendor/$pkg"
done
GOPROXY=off GOFLAGS= make WHAT=cmd/kube-apiserver >/dev/null
install -m 0755 _output/bin/kube-apiserver "$bin"
echo "$bin"
