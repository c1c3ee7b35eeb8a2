#!/usr/bin/env bash
# Boots Debian's kernel under qemu (software emulation: KVM is not usable on these hosts)
# with a busybox initramfs and an emulated NVMe controller, runs one shell command inside
# with the host's root filesystem shared read-only (so the workspace's binaries run as
# they are), and exits with the command's status. Its output goes to stdout.
#
#   tests/vm/run.sh [--lba 4096|512] [--ns-size 1G] [--pci] -- COMMAND...
#
# Inside the guest: /dev/nvme0n1 (kernel block device, polled queues with
# nvme.poll_queues=1), /dev/ng0n1 (passthrough char device), /tmp a tmpfs, $VM_OUT a
# directory shared back with the host. With --pci the namespace sits in an NVMe subsystem
# with two controllers (NVMe multipath): the kernel drives it through the first, the
# second (PCI 0000:00:10.0, $VM_PCI) is left for the userspace driver (tests/vm/pci-bind.sh
# hands it over), so all three paths reach the same namespace at once. Everything it needs (qemu-system-x86,
# busybox-static, the kernel package, unpacked with dpkg-deb, never installed) is fetched
# on first use and cached under target/vm/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache="$root/target/vm"
lba=4096
ns_size=1G
mem=2G
pci=0
while [ $# -gt 0 ]; do
    case "$1" in
    --lba) lba=$2; shift 2 ;;
    --ns-size) ns_size=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --pci) pci=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "run.sh: no command given (see --help)" >&2; exit 2; }

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Host tools (idempotent).
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    echo "vm: installing ${need[*]}" >&2
    sudo_ apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -q "${need[@]}" >/dev/null
fi

# The kernel: the package linux-image-amd64 points at, unpacked once.
mkdir -p "$cache"
if [ ! -f "$cache/kernel/ready" ]; then
    kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
    pkg=$(kpkg)
    if [ -z "$pkg" ]; then
        # A fresh machine may have no package lists yet.
        sudo_ apt-get update -q >/dev/null
        pkg=$(kpkg)
    fi
    [ -n "$pkg" ] || { echo "vm: cannot find the kernel package (apt-get update?)" >&2; exit 1; }
    echo "vm: fetching $pkg" >&2
    rm -rf "$cache/kernel" && mkdir -p "$cache/kernel"
    (cd "$cache/kernel" && apt-get download "$pkg" >/dev/null 2>&1 && dpkg-deb -x ./*.deb root && rm -f ./*.deb)
    touch "$cache/kernel/ready"
fi
kroot="$cache/kernel/root"
kver=$(ls "$kroot/lib/modules" | head -1)
vmlinuz="$kroot/boot/vmlinuz-$kver"

# The initramfs: busybox, the modules the guest needs (in dependency order, from each
# module's own `depends=`: the package has no modules.dep), and the init script.
initrd="$cache/initrd-$kver.gz"
if [ ! -f "$initrd" ] || [ "$here/init" -nt "$initrd" ] || [ "$0" -nt "$initrd" ]; then
    work=$(mktemp -d)
    mkdir -p "$work"/{bin,dev,proc,sys,host,out,modules}
    cp /bin/busybox "$work/bin/busybox"
    python3 - "$kroot/lib/modules/$kver" "$work/modules" <<'EOF'
import os, re, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
paths = {}
for d, _, fs in os.walk(src):
    for f in fs:
        if f.endswith('.ko'):
            paths[f[:-3].replace('-', '_')] = os.path.join(d, f)
def deps(n):
    m = re.search(rb'depends=([^\x00]*)', open(paths[n], 'rb').read())
    return [x.replace('-', '_') for x in m.group(1).decode().split(',') if x] if m else []
order = []
def visit(n):
    n = n.replace('-', '_')
    if n in order:
        return
    for d in deps(n):
        visit(d)
    order.append(n)
for n in ['virtio_pci', 'nvme', '9pnet_virtio', '9p', 'fuse', 'uio_pci_generic', 'vfio_pci']:
    visit(n)
with open(os.path.join(dst, 'order'), 'w') as o:
    for i, n in enumerate(order):
        name = '%02d-%s.ko' % (i, n)
        shutil.copy(paths[n], os.path.join(dst, name))
        o.write(name + '\n')
EOF
    cp "$here/init" "$work/init"
    chmod +x "$work/init"
    (cd "$work" && find . | cpio -o -H newc --quiet | gzip -1 > "$initrd.tmp")
    mv "$initrd.tmp" "$initrd"
    rm -rf "$work"
fi

# One run: a fresh namespace image, a shared output directory, the command in it.
run=$(mktemp -d /tmp/blobfs-vm.XXXXXX)
trap 'rm -rf "$run"' EXIT
truncate -s "$ns_size" "$run/ns.img"
mkdir -p "$run/out"
printf '%s\n' "$*" > "$run/out/cmd"
printf '%s\n' "$(pwd)" > "$run/out/cwd"
printf '%s\n' "$root" > "$run/out/root"
if [ "$pci" = 1 ]; then
    nvme=(-device nvme-subsys,id=subsys0,nqn=blobfs
        -device nvme,serial=blobfs,id=nvme0,subsys=subsys0
        -device nvme,serial=blobfs,id=nvme1,subsys=subsys0,bus=pci.0,addr=0x10
        -device "nvme-ns,drive=nvm,nsid=1,shared=on,logical_block_size=$lba,physical_block_size=$lba")
else
    nvme=(-device nvme,serial=blobfs,id=nvme0
        -device "nvme-ns,drive=nvm,nsid=1,logical_block_size=$lba,physical_block_size=$lba")
fi
qemu-system-x86_64 -accel tcg -m "$mem" -smp 2 -no-reboot -display none -monitor none \
    -serial "file:$run/console.log" \
    -kernel "$vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 nvme.poll_queues=1" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$run/out,mount_tag=out,security_model=none" \
    -drive "file=$run/ns.img,if=none,id=nvm,format=raw,cache=none,discard=unmap" \
    "${nvme[@]}" </dev/null || true
if [ -f "$run/out/output" ]; then
    cat "$run/out/output"
fi
if [ ! -f "$run/out/status" ]; then
    echo "vm: the guest did not report a status; its console:" >&2
    cat "$run/console.log" >&2
    exit 1
fi
exit "$(cat "$run/out/status")"
