#!/bin/sh
# Runs inside the VM (tests/vm/run.sh --pci): the three ways to the same emulated NVMe
# namespace compared with `blobfs bench --only paths`: the kernel block device through
# io_uring (the baseline), io_uring passthrough, and the userspace driver. Software
# emulation makes absolute figures meaningless; only the ratios are reported.
#   bench.sh [BENCH OPTIONS...]   (e.g. --quick)
set -eu
B=${BLOBFS:-target/release/blobfs}
[ -x "$B" ] || B=target/debug/blobfs
BLK=$(ls /dev/nvme[0-9]n1 | head -1)
NG=/dev/ng${BLK#/dev/nvme}
tests/vm/pci-bind.sh
if ! "$B" bench --only paths --device "$BLK,$NG,pci:$VM_PCI" --out /tmp/bench --docs "" "$@" \
    > /tmp/bench.out 2>&1; then
    cat /tmp/bench.out
    exit 1
fi
echo "Ratios to $BLK (kernel block device, io_uring); above 1 is faster. Software emulation"
echo "makes absolute figures meaningless, so none are shown."
grep '^paths:' /tmp/bench.out
