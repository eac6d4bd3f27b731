# Entry points. Everything that touches the kernel runs in network namespaces the tools create
# and remove; `demo` and `test` need root.

CARGO ?= cargo
TARGET_DIR ?= target

.PHONY: all deps build demo test unit lint fmt bench

all: build

# Installs what the demo and the suites need (Debian packages, moto, a kube-apiserver built
# from Debian's source); quick when everything is there.
deps:
	tests/setup.sh

build:
	$(CARGO) build --workspace --bins

# A local VPC, a node running ipamd, ten pods created as containerd creates them; then the
# security-groups-for-pods database scenario in a User-mode Linux guest.
demo: deps build
	$(TARGET_DIR)/debug/vpc-demo

# The whole suite: unit, netlink-in-namespace, plugin, ipamd, simulator, end to end.
test: deps build
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2

unit:
	$(CARGO) test --workspace --lib --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Plugin ADD/DEL latency against the baseline ptp+host-local, in one run, with every binary
# (plugin, ipamd, simulator) built as shipped: release.
bench: deps
	$(CARGO) build --release --workspace --bins
	VPC_CNI_BIN_DIR=$(TARGET_DIR)/release $(TARGET_DIR)/release/vpc-bench 30
