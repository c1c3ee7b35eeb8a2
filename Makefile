# BlobFS: build, demo and test entry points.
#
#   make run     build (release), create ./blobfs.img (1 GiB) if missing, run the demo on it
#   make test    install what is missing, then fmt check, clippy, and the whole test suite
#   make build   build the workspace (release)
#   make deps    install the Debian packages the build and tests need (idempotent)
#   make clean   remove build output and the demo image
#
# Everything here is non-interactive (CI runs `.ci/run` as root with no stdin). cargo comes
# from PATH; the toolchain is pinned in rust-toolchain.toml.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
IMAGE ?= ./blobfs.img
IMAGE_SIZE ?= 1G
BLOBFS := target/release/blobfs

# Debian packages the build and tests need, installed by `make deps` when `dpkg -s` says
# they are missing. None so far; later parts add theirs here (e.g. fuse3 libfuse3-dev for
# the FUSE mount, librocksdb-dev for the RocksDB FileSystem).
APT_PACKAGES :=

# Root installs directly; anyone else goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export DEBIAN_FRONTEND := noninteractive

.PHONY: help build run test deps toolcheck clean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

build:
	$(CARGO) build --workspace --release

run: build
	@if [ -e "$(IMAGE)" ]; then \
		echo "using the existing $(IMAGE) (make clean removes it)"; \
	else \
		echo "creating $(IMAGE) ($(IMAGE_SIZE))"; \
		$(BLOBFS) mkfs "$(IMAGE)" --size $(IMAGE_SIZE); \
	fi
	$(BLOBFS) demo "$(IMAGE)"

deps: toolcheck
	@missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		$(SUDO) apt-get update -q; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else \
		echo "deps: all Debian packages present ($(if $(strip $(APT_PACKAGES)),$(strip $(APT_PACKAGES)),none needed))"; \
	fi

# The Rust toolchain is not installed here (rust-toolchain.toml pins it); say clearly
# what is missing instead of failing halfway through.
toolcheck:
	@command -v $(CARGO) >/dev/null || { echo "deps: cargo not found in PATH (install Rust $$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml))" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "deps: rustfmt missing (rustup component add rustfmt)" >&2; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "deps: clippy missing (rustup component add clippy)" >&2; exit 1; }

test: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --workspace --no-fail-fast"; \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "$(CARGO) test --workspace --no-fail-fast (cargo-nextest not found)"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

clean:
	$(CARGO) clean
	rm -f "$(IMAGE)"
