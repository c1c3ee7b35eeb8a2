#!/bin/sh
# Runs inside the VM (tests/vm/run.sh): the io_uring passthrough backend on /dev/ng0n1 and
# the kernel block device /dev/nvme0n1 on the same namespace: data written through one is
# read back through the other, both ways; then BlobFS (mkfs, cp, fsck, FUSE) through the
# passthrough backend.
set -eu
B=${BLOBFS:-target/debug/blobfs}
NG=/dev/ng0n1
BLK=/dev/nvme0n1
echo "passthru: $(cat /sys/block/nvme0n1/queue/logical_block_size)-byte LBAs"
# Format through passthrough, copy a file in, read the store back through the block device.
$B mkfs --force "$NG" | head -2
head -c 2500000 /dev/urandom > /tmp/in.bin
$B cp /tmp/in.bin "$NG:/in.bin"
$B cp "$BLK:/in.bin" /tmp/via-blk.bin
cmp /tmp/in.bin /tmp/via-blk.bin
$B fsck -n "$BLK"
# And the other way: written through the block device, read through passthrough.
head -c 1000000 /dev/urandom > /tmp/two.bin
$B cp /tmp/two.bin "$BLK:/two.bin"
$B cp "$NG:/two.bin" /tmp/via-ng.bin
cmp /tmp/two.bin /tmp/via-ng.bin
$B fsck -n "$NG"
$B info "$NG" | head -3
# FUSE through passthrough.
mkdir -p /tmp/m
$B mount --background "$NG" /tmp/m
for i in 1 2 3; do head -c $((i * 100000)) /dev/urandom > /tmp/m/f$i; done
sum1=$(cat /tmp/m/f* | md5sum)
$B umount /tmp/m
$B mount --background -o ro "$BLK" /tmp/m
sum2=$(cat /tmp/m/f* | md5sum)
$B umount /tmp/m
[ "$sum1" = "$sum2" ] || { echo "passthru: FUSE data differs"; exit 1; }
$B fsck -n "$NG"
echo "passthru: ok"
