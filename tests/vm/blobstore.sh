#!/bin/sh
# Runs inside the VM (tests/vm/run.sh --pci): the blobstore tests that drive a real device
# (blobstore/tests/basic.rs, and the model test's device cases, blobstore/tests/model.rs)
# on the emulated NVMe namespace through each path: io_uring passthrough (/dev/ngXn1),
# the kernel block device (/dev/nvmeXn1) and the userspace driver (pci:$VM_PCI), one test
# at a time (they share the namespace). A test runs on the namespace when its LBA size
# matches the namespace's (run.sh --lba).
#   blobstore.sh BASIC_TEST_BINARY MODEL_TEST_BINARY
set -eu
T=$1
M=$2
B=${BLOBFS:-target/debug/blobfs}
BLK=$(ls /dev/nvme[0-9]n1 | head -1)
NG=/dev/ng${BLK#/dev/nvme}
lba=$(cat "/sys/block/${BLK#/dev/}/queue/logical_block_size")
tests/vm/pci-bind.sh
if [ "$lba" = 4096 ]; then model=model_uring_4k; else model=model_uring_512; fi
for dev in "$NG" "$BLK" "pci:$VM_PCI"; do
    # Wipe the start of the namespace, so the check below sees this run's store.
    dd if=/dev/zero of="$BLK" bs=1M count=8 oflag=direct status=none
    echo "blobstore tests on $dev ($lba-byte LBAs)"
    BLOBFS_TEST_NVME=$dev "$T" --test-threads=1 -q
    # Some test formatted the namespace (it was used, not skipped).
    $B info "$dev" >/dev/null || { echo "no test used $dev"; exit 1; }
    dd if=/dev/zero of="$BLK" bs=1M count=8 oflag=direct status=none
    BLOBFS_TEST_NVME=$dev MODEL_CASES=${MODEL_CASES:-32} "$M" --test-threads=1 -q "$model"
    $B info "$dev" >/dev/null || { echo "the model test did not use $dev"; exit 1; }
done
echo "blobstore: ok"
