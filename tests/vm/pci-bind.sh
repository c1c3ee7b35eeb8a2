#!/bin/sh
# Runs inside the VM (tests/vm/run.sh --pci): hands an NVMe controller to userspace for the
# `pci` backend: reserves 2 MiB hugepages for its DMA memory, unbinds the controller from
# the kernel's nvme driver and binds it to uio_pci_generic. `pci-bind.sh --kernel` gives it
# back to the nvme driver.
#   pci-bind.sh [--kernel] [ADDRESS]   (default $VM_PCI)
set -eu
to=uio_pci_generic
if [ "${1:-}" = --kernel ]; then to=nvme; shift; fi
addr=${1:-$VM_PCI}
d=/sys/bus/pci/devices/$addr
[ -d "$d" ] || { echo "pci-bind: no PCI device $addr" >&2; exit 1; }
if [ "$to" = uio_pci_generic ]; then
    want=${HUGEPAGES:-300}
    [ "$(cat /proc/sys/vm/nr_hugepages)" -ge "$want" ] || echo "$want" > /proc/sys/vm/nr_hugepages
fi
if [ -e "$d/driver" ]; then
    [ "$(basename "$(readlink "$d/driver")")" = "$to" ] && exit 0
    echo "$addr" > "$d/driver/unbind"
fi
echo "$to" > "$d/driver_override"
echo "$addr" > /sys/bus/pci/drivers_probe
if [ -e "$d/driver" ]; then
    echo "pci-bind: $addr -> $(basename "$(readlink "$d/driver")")"
else
    echo "pci-bind: $addr has no driver now" >&2
    exit 1
fi
