#!/bin/sh
# Runs inside the VM (tests/vm/run.sh --pci): the userspace NVMe driver on the second
# controller of the namespace's subsystem ($VM_PCI), while the kernel keeps /dev/nvme0n1
# and /dev/ng0n1 through the first: the driver's own probe (every command kind, controller
# resets on request and from outside), then BlobFS (mkfs, cp, fsck, FUSE) through
# pci:$VM_PCI, with data written through the userspace driver read back through the
# kernel's block device and passthrough device, and the reverse.
set -eu
B=${BLOBFS:-target/debug/blobfs}
P=pci:$VM_PCI
# The kernel names the multipath namespace after the subsystem: nvme0n1 or nvme1n1.
BLK=$(ls /dev/nvme[0-9]n1 | head -1)
NG=/dev/ng${BLK#/dev/nvme}
tests/vm/pci-bind.sh
echo "pci: $BLK and $NG through the kernel, $P in userspace;" \
    "$(cat "/sys/block/${BLK#/dev/}/queue/logical_block_size")-byte LBAs"
target/debug/examples/pci_probe "$VM_PCI"
target/debug/examples/pci_probe "$VM_PCI" --reset requested
target/debug/examples/pci_probe "$VM_PCI" --reset sysfs
# Format through the userspace driver, copy a file in, read it back through both kernel
# paths.
$B mkfs --force "$P" | head -2
head -c 2500000 /dev/urandom > /tmp/in.bin
$B cp /tmp/in.bin "$P:/in.bin"
$B cp "$BLK:/in.bin" /tmp/via-blk.bin
cmp /tmp/in.bin /tmp/via-blk.bin
$B cp "$NG:/in.bin" /tmp/via-ng.bin
cmp /tmp/in.bin /tmp/via-ng.bin
$B fsck -n "$BLK"
# Written through the kernel, read through the userspace driver.
head -c 1000000 /dev/urandom > /tmp/two.bin
$B cp /tmp/two.bin "$BLK:/two.bin"
$B cp "$P:/two.bin" /tmp/via-pci.bin
cmp /tmp/two.bin /tmp/via-pci.bin
$B fsck -n "$P"
$B info "$P" | head -3
# FUSE through the userspace driver, read back through the kernel's block device.
mkdir -p /tmp/m
$B mount --background "$P" /tmp/m
mkdir /tmp/m/d
for i in 1 2 3; do head -c $((i * 100000)) /dev/urandom > /tmp/m/d/f$i; done
cp /tmp/in.bin /tmp/m/d/big
sum1=$(cat /tmp/m/d/* | md5sum)
$B umount /tmp/m
$B mount --background -o ro "$BLK" /tmp/m
sum2=$(cat /tmp/m/d/* | md5sum)
$B umount /tmp/m
[ "$sum1" = "$sum2" ] || { echo "pci: FUSE data differs"; exit 1; }
# And mounted again through the userspace driver.
$B mount --background -o ro "$P" /tmp/m
sum3=$(cat /tmp/m/d/* | md5sum)
$B umount /tmp/m
[ "$sum1" = "$sum3" ] || { echo "pci: FUSE data differs on the second mount"; exit 1; }
$B fsck -n "$P"
$B df "$P" | head -3
echo "pci: ok"
