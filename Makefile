# BlobFS: build, run and test entry points.
#
#   make run        build (release), make ./blobfs.img (1 GiB BlobFS) if missing, mount it
#                   at ./mnt in the foreground; Ctrl-C (or SIGTERM) unmounts cleanly
#   make demo       build, then walk through the blob API on ./blobfs.img (blobfs demo)
#   make test       install what is missing, then fmt check, clippy, the whole test suite,
#                   and the VM tests (make test-vm)
#   make build      build the workspace (release)
#   make rocksdb    build target/release/libblobfs_rocksdb.so, the RocksDB FileSystem on BlobFS
#                   for LD_PRELOAD into db_bench/ldb/sst_dump (`blobfs rocksdb-env IMAGE` says how)
#   make install    install blobfs to $(PREFIX)/sbin (PREFIX=/usr/local) and the helpers
#                   mount.fuse.blobfs, mkfs.blobfs and fsck.blobfs to /sbin, for mount(8),
#                   mkfs(8), fsck(8) and fstab; libblobfs_rocksdb.so to $(PREFIX)/lib
#   make uninstall  remove what make install put there
#   make deps       install the Debian packages the build and tests need (idempotent)
#   make clean      remove build output and the image
#   make bench      benchmark BlobFS against fio, ext4 (loop device) and RocksDB on ext4, as
#                   ratios measured in one run (< 20 min, root): prints `bench:` lines and a
#                   table, writes bench/results.json, bench/ratios.svg, docs/benchmarks.md
#   make bench-quick the same on small sizes (< 3 min): a smoke test, noisier ratios; writes
#                   bench/quick/ and leaves docs/benchmarks.md alone
#   make test-vm    boot Debian's kernel under qemu (software emulation) with an emulated NVMe
#                   namespace and run the VM tests in it (tests/vm/; ~6 min, root; fetches
#                   qemu-system-x86, busybox-static and the kernel package on first use):
#                   kernel block device, io_uring passthrough, userspace PCI driver
#   make bench-vm   compare the kernel block device, io_uring passthrough and the userspace
#                   NVMe driver on one emulated namespace in the VM, as ratios (~5 min)
#   make bench-fsck time blobfs fsck on a 64 GiB image of 100,000 files (~7 GiB of disk in
#                   BENCH_DIR, default $TMPDIR or /tmp; BENCH_ARGS=... passes options)
#
# Everything here is non-interactive (CI runs `.ci/run` as root with no stdin). cargo comes
# from PATH; the toolchain is pinned in rust-toolchain.toml.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
IMAGE ?= ./blobfs.img
IMAGE_SIZE ?= 1G
# Every non-empty file takes at least one cluster: 64 KiB suits a tree of small files
# (blobfs mkfs defaults to 1 MiB, better for big files such as RocksDB's).
IMAGE_CLUSTER ?= 64K
MNT ?= ./mnt
BLOBFS := target/release/blobfs
# make install: the binary goes to $(SBINDIR); the mount(8) and mkfs(8) helpers go to
# $(HELPERDIR), which must be /sbin for mount(8) to find mount.fuse.blobfs.
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
LIBDIR ?= $(PREFIX)/lib
ROCKSDB_LIB := target/release/libblobfs_rocksdb.so
HELPERDIR ?= /sbin
DESTDIR ?=

# Debian packages the build and tests need, installed by `make deps` when `dpkg -s` says
# they are missing: fuse3 for fusermount3 (unmounting and mounting as non-root; the mount
# itself is pure Rust, no libfuse). RocksDB on BlobFS (rocksdb/): librocksdb-dev (headers and
# the shared library the C++ shim links), g++ (the shim), rocksdb-tools (db_bench, ldb,
# sst_dump: the tests run them), libclang-dev (bindgen, for the `rocksdb` crate).
APT_PACKAGES := fuse3 librocksdb-dev rocksdb-tools libclang-dev g++

# $(call apt_install,PACKAGES,LABEL): installs those of PACKAGES dpkg says are missing
# (idempotent, no prompts); `make deps` and `make bench-deps` share it.
apt_install = missing=""; for p in $(1); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "$(2): installing$$missing"; $(SUDO) apt-get update -q; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "$(2): all Debian packages present ($(strip $(1)))"; fi

# Root installs directly; anyone else goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export DEBIAN_FRONTEND := noninteractive

.PHONY: help build rocksdb run demo image install uninstall test deps toolcheck clean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

build:
	$(CARGO) build --workspace --release

rocksdb:
	$(CARGO) build --release -p blobfs-rocksdb
	@echo "built $(ROCKSDB_LIB); run the stock tools with it: $(BLOBFS) rocksdb-env IMAGE"

# The image: a BlobFS filesystem. An empty bare blobstore left by an earlier `make run`
# (which only ran the demo) is made a filesystem; anything else is left alone.
image: build
	@if [ ! -e "$(IMAGE)" ]; then \
		echo "creating $(IMAGE) ($(IMAGE_SIZE)), a BlobFS filesystem"; \
		$(BLOBFS) mkfs "$(IMAGE)" --size $(IMAGE_SIZE) --cluster-size $(IMAGE_CLUSTER); \
	elif $(BLOBFS) info "$(IMAGE)" --json | grep -q '"filesystem": "none"'; then \
		if $(BLOBFS) info "$(IMAGE)" --json | grep -q '"blob_count": 0,'; then \
			echo "$(IMAGE) is an empty bare blobstore (from an earlier make run): making it a BlobFS filesystem"; \
			$(BLOBFS) mkfs "$(IMAGE)" --force --cluster-size $(IMAGE_CLUSTER); \
		else \
			echo "$(IMAGE) holds a bare blobstore with blobs, not a BlobFS filesystem;" \
				"move it away or run: $(BLOBFS) mkfs $(IMAGE) --force" >&2; \
			exit 1; \
		fi; \
	else \
		echo "using the existing $(IMAGE) (make clean removes it)"; \
	fi

# Mount in the foreground. A dead mount left at $(MNT) (server killed: "transport endpoint
# is not connected") is cleared first; a live one is an error.
run: image
	@if grep -qs " $(abspath $(MNT)) " /proc/self/mountinfo; then \
		if stat "$(MNT)" >/dev/null 2>&1; then \
			echo "$(MNT) is already mounted; unmount it first: $(BLOBFS) umount $(MNT)" >&2; \
			exit 1; \
		fi; \
		echo "clearing a dead mount at $(MNT)"; \
		fusermount3 -u -z "$(MNT)" 2>/dev/null || $(SUDO) umount -l "$(MNT)"; \
	fi
	@mkdir -p "$(MNT)"
	@echo "mounting $(IMAGE) at $(MNT): use it from another terminal (cp, ls, tar... in $(MNT));"
	@echo "press Ctrl-C here (or send SIGTERM) to unmount: everything is written back first"
	$(BLOBFS) mount "$(IMAGE)" "$(MNT)"

demo: image
	$(BLOBFS) demo "$(IMAGE)"

install: build
	install -D -m 755 $(BLOBFS) "$(DESTDIR)$(SBINDIR)/blobfs"
	install -d "$(DESTDIR)$(HELPERDIR)"
	ln -sf "$(SBINDIR)/blobfs" "$(DESTDIR)$(HELPERDIR)/mount.fuse.blobfs"
	ln -sf "$(SBINDIR)/blobfs" "$(DESTDIR)$(HELPERDIR)/mkfs.blobfs"
	ln -sf "$(SBINDIR)/blobfs" "$(DESTDIR)$(HELPERDIR)/fsck.blobfs"
	install -D -m 644 $(ROCKSDB_LIB) "$(DESTDIR)$(LIBDIR)/libblobfs_rocksdb.so"
	@echo "installed $(SBINDIR)/blobfs, $(HELPERDIR)/mount.fuse.blobfs, $(HELPERDIR)/mkfs.blobfs and $(HELPERDIR)/fsck.blobfs"
	@echo "installed $(LIBDIR)/libblobfs_rocksdb.so (LD_PRELOAD it into db_bench, ldb, sst_dump: blobfs rocksdb-env IMAGE)"

uninstall:
	rm -f "$(DESTDIR)$(HELPERDIR)/mount.fuse.blobfs" "$(DESTDIR)$(HELPERDIR)/mkfs.blobfs" \
		"$(DESTDIR)$(HELPERDIR)/fsck.blobfs" \
		"$(DESTDIR)$(SBINDIR)/blobfs" \
		"$(DESTDIR)$(LIBDIR)/libblobfs_rocksdb.so"

deps: toolcheck
	@$(call apt_install,$(APT_PACKAGES),deps)

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
	$(MAKE) --no-print-directory test-vm

clean:
	$(CARGO) clean
	rm -f "$(IMAGE)"
	@rmdir "$(MNT)" 2>/dev/null || true

# Benchmarks, not part of `make test`. `blobfs bench` needs fio and db_bench (installed here
# when missing), the release binary and libblobfs_rocksdb.so next to it, and root (loop
# devices, mounts). BENCH_ARGS passes options (e.g. BENCH_ARGS="--only blobio,meta").
BENCH_PACKAGES := fio rocksdb-tools e2fsprogs util-linux
.PHONY: test-vm
# The VM tests (tests/vm/), with 4096- and 512-byte LBAs, each in two boots: BlobFS on the
# kernel block device and through io_uring passthrough (smoke.sh, passthru_probe, also
# through a controller reset by the kernel mid-I/O, passthru.sh); then, with the namespace behind two controllers (run.sh --pci), the
# userspace driver (pci.sh: its probe, controller resets mid-I/O, BlobFS and FUSE with data
# crossing between the three paths) and the blobstore tests on all three paths
# (blobstore.sh). run.sh installs what it needs and caches the kernel under target/vm/.
test-vm: deps
	$(CARGO) build -p blobfs-tools
	$(CARGO) build -p blobfs-driver --examples
	basic=$$(tests/vm/testbin.sh blobfs-blobstore basic) && [ -n "$$basic" ] && \
	model=$$(tests/vm/testbin.sh blobfs-blobstore model) && [ -n "$$model" ] && \
	for lba in 4096 512; do \
		tests/vm/run.sh --lba $$lba -- 'tests/vm/smoke.sh && target/debug/examples/passthru_probe /dev/ng0n1 && target/debug/examples/passthru_probe /dev/ng0n1 --reset && tests/vm/passthru.sh' && \
		tests/vm/run.sh --lba $$lba --pci -- "tests/vm/pci.sh && tests/vm/blobstore.sh $$basic $$model" || exit 1; \
	done

.PHONY: bench-vm
# The three paths to one emulated NVMe namespace (kernel block device through io_uring,
# io_uring passthrough, the userspace driver), compared in the VM with `blobfs bench --only
# paths` (tests/vm/bench.sh; ~5 min). Only the ratios mean anything under emulation.
bench-vm: deps
	$(CARGO) build --release -p blobfs-tools
	tests/vm/run.sh --pci -- 'BLOBFS=target/release/blobfs tests/vm/bench.sh $(BENCH_ARGS)'

.PHONY: bench bench-quick bench-deps
bench-deps: deps
	@$(call apt_install,$(BENCH_PACKAGES),bench)
	$(CARGO) build --release -p blobfs-tools -p blobfs-rocksdb

bench: bench-deps
	$(SUDO) $(BLOBFS) bench --dir "$(BENCH_DIR)" $(BENCH_ARGS)

bench-quick: bench-deps
	$(SUDO) $(BLOBFS) bench --quick --dir "$(BENCH_DIR)" $(BENCH_ARGS)

# Builds a sparse 64 GiB image holding 100,000 files
# through the library, then times `blobfs fsck -n` (twice) and `-y` on it and prints
# `bench:` lines (time and peak RSS; only a clean result is checked). Needs ~7 GiB free.
BENCH_DIR ?= $(or $(TMPDIR),/tmp)
BENCH_ARGS ?=
.PHONY: bench-fsck
bench-fsck: toolcheck
	$(CARGO) build --release -p blobfs-tools
	$(CARGO) run --release -p blobfs-tools --example fsck_bench -- \
		--dir "$(BENCH_DIR)" --blobfs "$(abspath $(BLOBFS))" $(BENCH_ARGS)
