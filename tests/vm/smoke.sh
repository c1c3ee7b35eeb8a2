#!/bin/sh
# Runs inside the VM (tests/vm/run.sh): BlobFS on the emulated NVMe namespace through the
# kernel block device /dev/nvme0n1 (io_uring, O_DIRECT): mkfs, copy in and out, fsck, and
# a FUSE mount with files written and read back through the kernel.
set -eu
B=${BLOBFS:-target/debug/blobfs}
DEV=/dev/nvme0n1
echo "smoke: $(cat /sys/block/nvme0n1/queue/logical_block_size)-byte LBAs, $(($(cat /sys/block/nvme0n1/size) * 512 >> 20)) MiB"
$B mkfs --force "$DEV" | head -3
head -c 3000000 /dev/urandom > /tmp/in.bin
$B cp /tmp/in.bin "$DEV:/in.bin"
$B cp "$DEV:/in.bin" /tmp/back.bin
cmp /tmp/in.bin /tmp/back.bin
$B fsck -n "$DEV"
mkdir -p /tmp/m
$B mount --background "$DEV" /tmp/m
mkdir -p /tmp/m/d
for i in 1 2 3 4 5; do head -c $((i * 70000)) /dev/urandom > /tmp/m/d/f$i; done
cp /tmp/in.bin /tmp/m/d/big
sync
sum1=$(cat /tmp/m/d/* | md5sum)
$B umount /tmp/m
$B mount --background -o ro "$DEV" /tmp/m
sum2=$(cat /tmp/m/d/* | md5sum)
cmp /tmp/in.bin /tmp/m/d/big
$B umount /tmp/m
[ "$sum1" = "$sum2" ] || { echo "smoke: FUSE data differs after remount"; exit 1; }
$B fsck -n "$DEV"
$B df "$DEV"
echo "smoke: ok"
