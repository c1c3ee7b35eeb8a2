#!/bin/sh
# Runs inside the VM (tests/vm/run.sh): the blobstore API tests (blobstore/tests/basic.rs)
# on the emulated NVMe namespace, through io_uring passthrough (/dev/ng0n1) and through the
# kernel block device (/dev/nvme0n1), one test at a time (they share the namespace). Each
# test runs on the namespace when its LBA size matches the namespace's (run.sh --lba).
# $1: the test binary.
set -eu
T=$1
B=${BLOBFS:-target/debug/blobfs}
for dev in /dev/ng0n1 /dev/nvme0n1; do
    # Wipe the start of the namespace, so the check below sees this run's store.
    dd if=/dev/zero of=/dev/nvme0n1 bs=1M count=8 oflag=direct status=none
    echo "blobstore tests on $dev"
    BLOBFS_TEST_NVME=$dev "$T" --test-threads=1 -q
    # Some test formatted the namespace (it was used, not skipped).
    $B info "$dev" >/dev/null || { echo "no test used $dev"; exit 1; }
done
echo "blobstore: ok"
