#!/usr/bin/env bash
# Installs what the demo and the suites need on a fresh Debian 12 machine, as root, and does
# nothing (quickly) where it is all there already: Debian's packages, moto from PyPI, rustfmt
# and clippy, and a kube-apiserver built once from Debian's Kubernetes source package.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(protobuf-compiler gcc libc6-dev make openssl iproute2 iputils-ping nftables iptables
	containerd runc containernetworking-plugins user-mode-linux busybox-static etcd-server)
missing=()
for p in "${packages[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v moto_server >/dev/null || python3 -m pip install -q 'moto[server]>=5,<6'
cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 ||
	rustup component add rustfmt clippy >/dev/null

# The manifests and security-groups-for-pods suites need a real API server; the script caches
# the binary outside the repo (~6 minutes the first time).
tests/kube/build-apiserver.sh >/dev/null
