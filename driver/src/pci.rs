//! A userspace NVMe driver for a controller handed to userspace with `uio_pci_generic`.
//!
//! The model is SPDK's NVMe driver: the process maps the controller's registers (BAR0,
//! through the PCI device's sysfs `resource0`), resets and enables it, builds the admin
//! queue, reads Identify Controller and Identify Namespace, and creates one I/O
//! submission/completion queue pair per [`QueuePair`], without interrupts: completions are
//! found by polling the phase bit of the completion queue. Nothing runs in the background.
//!
//! # DMA memory
//!
//! Without an IOMMU (uio) the controller addresses physical memory, so everything it reads
//! or writes lives in 2 MiB hugepages (`MAP_HUGETLB`: never swapped, never migrated), whose
//! physical addresses come from `/proc/self/pagemap` (root only). Each queue pair owns one
//! region holding its queues, one PRP list page and one bounce buffer per command slot:
//! a Write copies the caller's [`DmaBuf`] into the slot's bounce buffer, a Read copies out
//! of it at completion. The caller's buffers are never given to the device, so no
//! allocation of the layers above has to be pinned, and a controller that misbehaves can
//! only ever write into memory this module owns. Bounce buffers are aligned to their size
//! (a power of two no larger than a hugepage), so each is physically contiguous and its PRP
//! list is fixed: it is written once, when the queue pair is made.
//!
//! # Commands
//!
//! Read, Write (PRP1/PRP2, a PRP list beyond two pages), Flush, Write Zeroes (in pieces of
//! 65,536 blocks), and Deallocate. The driver contract says deallocated blocks read back as
//! zeroes; only Write Zeroes with the Deallocate bit promises that (a Dataset Management
//! deallocate is advisory: QEMU ignores it unless its drive has `discard=unmap`), so that is
//! what Deallocate sends, or zeroed writes on a controller without Write Zeroes. Dataset
//! Management is used instead when [`PciOptions::dsm_deallocate`] asks for it and the
//! namespace reports that deallocated blocks read as zeroes (DLFEAT). A failed command
//! completes with [`Error::Nvme`], its status decoded.
//!
//! # Failures and reset
//!
//! A queue pair with commands in flight and no completions checks the controller status
//! every millisecond of polling. When the controller reports a fatal status, is no longer
//! ready (reset from outside, e.g. a function-level reset through sysfs), reads all ones
//! (gone), or a command is older than [`PciOptions::timeout`], the driver resets the
//! controller (disable, admin queue, enable) and every queue pair of the controller fails
//! its commands in flight with [`Error::ControllerReset`], recreates its queues, and takes
//! new commands. [`PciDevice::reset_controller`] does the same on request.
//!
//! Dropping the last handle shuts the controller down (CC.SHN normal, then disabled), so
//! the kernel's `nvme` driver can take it back. All `unsafe` code of this backend is in this
//! file, each block with its SAFETY argument.

use crate::nvme::{self, IdController, IdNamespace};
use crate::{Completion, Device, Error, Geometry, Op, QueuePair, Result, SubmitError};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;

// Controller registers (NVMe Base Specification 2.0, section 3.1.3).
const REG_CAP: usize = 0x00;
const REG_INTMS: usize = 0x0c;
const REG_CC: usize = 0x14;
const REG_CSTS: usize = 0x1c;
const REG_AQA: usize = 0x24;
const REG_ASQ: usize = 0x28;
const REG_ACQ: usize = 0x30;
const REG_DOORBELLS: usize = 0x1000;

const CC_EN: u32 = 1;
/// I/O submission and completion queue entry sizes: 2^6 = 64 and 2^4 = 16 bytes.
const CC_IOSQES_IOCQES: u32 = (6 << 16) | (4 << 20);
/// Shutdown notification: normal.
const CC_SHN_NORMAL: u32 = 1 << 14;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
/// Shutdown status "complete" (bits 3:2 = 10b).
const CSTS_SHST_DONE: u32 = 2 << 2;

/// Admin queue entries (both queues).
const ADMIN_ENTRIES: u16 = 32;
/// Most entries of an I/O queue (so queues fit at the start of one hugepage).
const MAX_IO_ENTRIES: u32 = 1024;
/// I/O queue pairs asked of the controller (Set Features, Number of Queues).
const WANT_IO_QUEUES: u32 = 64;
/// How often a queue pair with commands in flight but no completions looks at CSTS.
const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(1);

/// Options for [`PciDevice::open`].
#[derive(Clone, Debug)]
pub struct PciOptions {
    /// The namespace to drive (1 on single-namespace controllers).
    pub nsid: u32,
    /// Refuse writes (Read and Flush only).
    pub read_only: bool,
    /// A command not completed after this long makes the driver reset the controller.
    pub timeout: Duration,
    /// Cap on one transfer (each command slot has a bounce buffer of this size); a power
    /// of two between 4 KiB and 2 MiB. The controller's MDTS may lower it.
    pub max_transfer: u32,
    /// Send Deallocate as Dataset Management (advisory) when the namespace says
    /// deallocated blocks read as zeroes, trusting the device to deallocate every range
    /// whole; off by default, where Write Zeroes with the Deallocate bit guarantees zeroes.
    pub dsm_deallocate: bool,
}

impl Default for PciOptions {
    fn default() -> PciOptions {
        PciOptions {
            nsid: 1,
            read_only: false,
            timeout: Duration::from_secs(30),
            max_transfer: 128 << 10,
            dsm_deallocate: false,
        }
    }
}

fn bad(spec: &str, reason: impl Into<String>) -> Error {
    Error::BadSpec {
        spec: format!("pci:{spec}"),
        reason: reason.into(),
    }
}

/// `0000:00:04.0` from `0000:00:04.0` or `00:04.0` (domain 0 by default); `None` if it is
/// not a PCI address.
pub fn normalize_addr(addr: &str) -> Option<String> {
    let parts: Vec<&str> = addr.split(':').collect();
    let (dom, bus, devfn) = match parts.as_slice() {
        [b, df] => ("0000", *b, *df),
        [d, b, df] => (*d, *b, *df),
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    let hex = |s: &str, max: u32| u32::from_str_radix(s, 16).ok().filter(|v| *v <= max);
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(dom, 0xffff)?,
        hex(bus, 0xff)?,
        hex(dev, 0x1f)?,
        hex(func, 7)?
    ))
}

// ---------------------------------------------------------------------------------------
// Registers.

/// The controller's register window (BAR0), mapped from sysfs.
struct Mmio {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain device memory accessed only with volatile loads and stores
// of aligned u32s; the hardware, not Rust aliasing, defines what concurrent accesses do,
// and the driver serialises the accesses that must not interleave (admin queue, resets).
unsafe impl Send for Mmio {}
// SAFETY: see above.
unsafe impl Sync for Mmio {}

impl Mmio {
    fn map(file: &File, len: usize) -> io::Result<Mmio> {
        // SAFETY: a new shared mapping of `len` bytes of the resource file at offset 0; the
        // kernel picks the address; nothing else refers to that range yet.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmio {
            ptr: ptr.cast(),
            len,
        })
    }

    fn read32(&self, off: usize) -> u32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "register {off:#x}"
        );
        // SAFETY: `off` is 4-aligned and inside the mapping (checked above); registers are
        // read with one volatile 32-bit load, as the specification requires.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    fn write32(&self, off: usize, v: u32) {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "register {off:#x}"
        );
        // SAFETY: as in `read32`, a single aligned volatile store inside the mapping.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }

    fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off)) | (u64::from(self.read32(off + 4)) << 32)
    }

    fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once; no reference into it
        // survives (all accesses are by value).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// ---------------------------------------------------------------------------------------
// DMA memory.

/// Hugepage memory the controller may read and write, with its physical addresses.
struct DmaRegion {
    ptr: *mut u8,
    len: usize,
    /// Physical address of each 2 MiB page.
    phys: Vec<u64>,
}

// SAFETY: the region is owned memory accessed through raw pointers only, by the one queue
// pair (or the admin queue under its mutex) that owns it.
unsafe impl Send for DmaRegion {}
// SAFETY: see above.
unsafe impl Sync for DmaRegion {}

fn virt_to_phys(pagemap: &File, addr: usize) -> io::Result<u64> {
    let mut e = [0u8; 8];
    pagemap.read_exact_at(&mut e, (addr / PAGE * 8) as u64)?;
    let e = u64::from_le_bytes(e);
    if e & (1 << 63) == 0 {
        return Err(io::Error::other("page not present"));
    }
    let pfn = e & ((1 << 55) - 1);
    if pfn == 0 {
        return Err(io::Error::other(
            "physical addresses are hidden (reading /proc/self/pagemap needs CAP_SYS_ADMIN)",
        ));
    }
    Ok(pfn * PAGE as u64 + (addr % PAGE) as u64)
}

impl DmaRegion {
    fn new(len: usize) -> Result<DmaRegion> {
        let len = len.max(1).div_ceil(HUGE) * HUGE;
        // SAFETY: a new anonymous shared mapping; MAP_POPULATE faults every hugepage in now
        // so its physical address exists; nothing else refers to the range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(Error::Io(io::Error::new(
                e.kind(),
                format!(
                    "cannot get {} MiB of 2 MiB hugepages for NVMe DMA ({e}); reserve more with \
                     `echo N > /proc/sys/vm/nr_hugepages`",
                    len >> 20
                ),
            )));
        }
        let mut region = DmaRegion {
            ptr: ptr.cast(),
            len,
            phys: Vec::new(),
        };
        let pagemap = File::open("/proc/self/pagemap")?;
        for off in (0..len).step_by(HUGE) {
            // SAFETY: `off` is inside the mapping; a volatile write of zero makes sure the
            // page is present before its address is looked up.
            unsafe { std::ptr::write_volatile(region.ptr.add(off), 0) };
            let p = virt_to_phys(&pagemap, region.ptr as usize + off).map_err(|e| {
                Error::Io(io::Error::new(
                    e.kind(),
                    format!("physical address of DMA memory: {e}"),
                ))
            })?;
            region.phys.push(p);
        }
        Ok(region)
    }

    /// Ordinary pages with made-up physical addresses: for tests of the ring logic, which
    /// never reach a device.
    #[cfg(test)]
    fn for_test(len: usize) -> DmaRegion {
        let len = len.div_ceil(HUGE) * HUGE;
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        DmaRegion {
            ptr: ptr.cast(),
            len,
            phys: (0..len / HUGE)
                .map(|i| 0x1_0000_0000 + (i * 2 * HUGE) as u64)
                .collect(),
        }
    }

    /// Physical address of byte `off`.
    fn phys(&self, off: usize) -> u64 {
        self.phys[off / HUGE] + (off % HUGE) as u64
    }

    fn check(&self, off: usize, len: usize) {
        assert!(
            off + len <= self.len,
            "DMA region access {off}+{len} > {}",
            self.len
        );
    }

    /// Copies `src` into the region at `off`.
    fn write(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        // SAFETY: the range is inside the region (checked); the device is not using it (the
        // caller writes only slots and queue entries the controller does not own now).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len()) }
    }

    /// Copies from the region at `off` into `dst`.
    fn read(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        // SAFETY: inside the region (checked); read after the completion of the command
        // that filled it (an acquire fence follows the phase-bit check), so the device is
        // done writing there.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), dst.as_mut_ptr(), dst.len()) }
    }

    fn fill_zero(&self, off: usize, len: usize) {
        self.check(off, len);
        // SAFETY: inside the region (checked), not in use by the device (as in `write`).
        unsafe { std::ptr::write_bytes(self.ptr.add(off), 0, len) }
    }

    /// A 32-bit word the device may write at any time (completion entries): one volatile
    /// load.
    fn load32(&self, off: usize) -> u32 {
        assert!(off.is_multiple_of(4));
        self.check(off, 4);
        // SAFETY: aligned, inside the region; volatile because the device writes it.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: unmaps exactly this region once. Owners make sure the controller no longer
        // uses it (queues deleted or controller disabled), or leak it instead of dropping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// ---------------------------------------------------------------------------------------
// Commands.

/// One 64-byte submission queue entry.
#[derive(Clone, Copy, Default)]
struct Sqe {
    dw: [u32; 16],
}

impl Sqe {
    fn new(opcode: u8, nsid: u32) -> Sqe {
        let mut s = Sqe::default();
        s.dw[0] = u32::from(opcode);
        s.dw[1] = nsid;
        s
    }

    fn cid(mut self, cid: u16) -> Sqe {
        self.dw[0] = (self.dw[0] & 0xffff) | (u32::from(cid) << 16);
        self
    }

    fn prp(mut self, prp1: u64, prp2: u64) -> Sqe {
        self.dw[6] = prp1 as u32;
        self.dw[7] = (prp1 >> 32) as u32;
        self.dw[8] = prp2 as u32;
        self.dw[9] = (prp2 >> 32) as u32;
        self
    }

    fn cdw(mut self, i: usize, v: u32) -> Sqe {
        self.dw[i] = v;
        self
    }

    fn slba(self, lba: u64) -> Sqe {
        self.cdw(10, lba as u32).cdw(11, (lba >> 32) as u32)
    }

    fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        for (i, w) in self.dw.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        b
    }
}

/// A completion queue entry's DW0 and DW3 (command id, phase, status).
struct Cqe {
    dw0: u32,
    cid: u16,
    status: u16,
}

/// A queue's ring state: entries, tail/head and the expected phase.
struct Rings {
    entries: u16,
    sq_off: usize,
    cq_off: usize,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
}

impl Rings {
    /// Queues at the start of `region`: the submission queue, then the completion queue.
    fn new(entries: u16) -> Rings {
        let sq_bytes = (usize::from(entries) * 64).div_ceil(PAGE) * PAGE;
        Rings {
            entries,
            sq_off: 0,
            cq_off: sq_bytes,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
        }
    }

    fn bytes(&self) -> usize {
        self.cq_off + (usize::from(self.entries) * 16).div_ceil(PAGE) * PAGE
    }

    fn reset(&mut self, region: &DmaRegion) {
        region.fill_zero(0, self.bytes());
        self.sq_tail = 0;
        self.cq_head = 0;
        self.phase = true;
    }

    /// Writes `sqe` at the tail; returns the new tail for the doorbell.
    fn push(&mut self, region: &DmaRegion, sqe: &Sqe) -> u16 {
        region.write(self.sq_off + usize::from(self.sq_tail) * 64, &sqe.bytes());
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        self.sq_tail
    }

    /// The next completion, if the controller has posted it.
    fn pop(&mut self, region: &DmaRegion) -> Option<Cqe> {
        let off = self.cq_off + usize::from(self.cq_head) * 16;
        let dw3 = region.load32(off + 12);
        if ((dw3 >> 16) & 1 == 1) != self.phase {
            return None;
        }
        // The rest of the entry (and the data it completes) is read only after the phase
        // bit says the controller wrote it.
        fence(Ordering::Acquire);
        let dw0 = region.load32(off);
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        Some(Cqe {
            dw0,
            cid: dw3 as u16,
            status: ((dw3 >> 17) & 0x7fff) as u16,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The controller.

struct Admin {
    region: DmaRegion,
    rings: Rings,
    next_cid: u16,
}

/// Offset of the 4 KiB Identify buffer in the admin region.
const ADMIN_DATA: usize = 64 << 10;

struct Ctrl {
    addr: String,
    mmio: Mmio,
    /// The PCI configuration space (bus mastering is switched on there).
    config: File,
    /// Keeps the exclusive lock on the register file: one process per controller.
    _lock: File,
    dstrd: usize,
    mqes: u32,
    ready_timeout: Duration,
    opts: PciOptions,
    admin: Mutex<Admin>,
    /// Bumped by every controller reset; queue pairs made before it recreate their queues.
    generation: AtomicU64,
    /// Doorbell writes hold it shared, a reset exclusively: no queue pair rings a
    /// doorbell of a queue that a reset is tearing down (QEMU's controller has crashed
    /// on that), and one that finds the generation changed does not ring at all.
    doorbells: parking_lot::RwLock<()>,
    last_reset: Mutex<String>,
    /// The last reset failed: the controller is unusable until a reset works.
    dead: AtomicBool,
    free_qids: Mutex<Vec<u16>>,
    id: IdController,
    geom: Geometry,
    /// Deallocate through Dataset Management (else Write Zeroes with DEAC, else writes).
    dsm_dealloc: bool,
    write_zeroes: bool,
}

impl Ctrl {
    fn csts(&self) -> u32 {
        self.mmio.read32(REG_CSTS)
    }

    fn doorbell(&self, qid: u16, completion: bool, value: u16) {
        // Every entry written to memory must be visible before the controller is told.
        fence(Ordering::SeqCst);
        let idx = 2 * usize::from(qid) + usize::from(completion);
        self.mmio
            .write32(REG_DOORBELLS + idx * (4 << self.dstrd), u32::from(value));
    }

    /// Waits for CSTS.RDY to become `ready`.
    fn wait_ready(&self, ready: bool) -> Result<()> {
        let start = Instant::now();
        loop {
            let csts = self.csts();
            // All ones: in reset, or gone; give it the controller's own timeout to return.
            if csts == u32::MAX {
                if start.elapsed() > self.ready_timeout {
                    return Err(Error::Gone);
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if ready && csts & CSTS_CFS != 0 {
                return Err(Error::Io(io::Error::other(format!(
                    "NVMe controller {} reports a fatal status while enabling",
                    self.addr
                ))));
            }
            if (csts & CSTS_RDY != 0) == ready {
                return Ok(());
            }
            if start.elapsed() > self.ready_timeout {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "NVMe controller {} did not become {} within {:?}",
                        self.addr,
                        if ready { "ready" } else { "disabled" },
                        self.ready_timeout
                    ),
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn enable_bus_master(&self) -> Result<()> {
        let mut cmd = [0u8; 2];
        self.config.read_exact_at(&mut cmd, 4)?;
        let v = u16::from_le_bytes(cmd) | 0x2 | 0x4; // memory space, bus master
        self.config.write_all_at(&v.to_le_bytes(), 4)?;
        Ok(())
    }

    /// Disables, sets up the admin queue, enables, masks interrupts and asks for queues:
    /// the controller as after power-on. Returns how many I/O queue ids it granted.
    fn init(&self, admin: &mut Admin) -> Result<u16> {
        self.enable_bus_master()?;
        let cc = self.mmio.read32(REG_CC);
        if cc & CC_EN != 0 {
            self.mmio.write32(REG_CC, cc & !CC_EN);
        }
        self.wait_ready(false)?;
        admin.rings.reset(&admin.region);
        let n = u32::from(ADMIN_ENTRIES - 1);
        self.mmio.write32(REG_AQA, (n << 16) | n);
        self.mmio
            .write64(REG_ASQ, admin.region.phys(admin.rings.sq_off));
        self.mmio
            .write64(REG_ACQ, admin.region.phys(admin.rings.cq_off));
        // NVM command set, 4 KiB pages (MPS 0), round robin, entry sizes, enable.
        self.mmio.write32(REG_CC, CC_IOSQES_IOCQES | CC_EN);
        self.wait_ready(true)?;
        // Completions are polled: no interrupt is ever wanted.
        self.mmio.write32(REG_INTMS, u32::MAX);
        let want = WANT_IO_QUEUES - 1;
        let dw0 = self.admin_cmd(
            admin,
            Sqe::new(nvme::ADMIN_SET_FEATURES, 0)
                .cdw(10, nvme::FEAT_NUM_QUEUES)
                .cdw(11, (want << 16) | want),
            None,
        )?;
        let granted = (dw0 & 0xffff).min(dw0 >> 16) + 1;
        Ok(granted.min(WANT_IO_QUEUES) as u16)
    }

    /// Runs one admin command to completion; `data` receives the 4 KiB data buffer.
    fn admin_cmd(&self, admin: &mut Admin, sqe: Sqe, data: Option<&mut [u8]>) -> Result<u32> {
        let cid = admin.next_cid;
        admin.next_cid = admin.next_cid.wrapping_add(1);
        let mut sqe = sqe.cid(cid);
        if data.is_some() {
            admin.region.fill_zero(ADMIN_DATA, PAGE);
            sqe = sqe.prp(admin.region.phys(ADMIN_DATA), 0);
        }
        let tail = admin.rings.push(&admin.region, &sqe);
        self.doorbell(0, false, tail);
        let start = Instant::now();
        let cqe = loop {
            if let Some(c) = admin.rings.pop(&admin.region) {
                if c.cid == cid {
                    break c;
                }
                continue;
            }
            if start.elapsed() > self.opts.timeout.min(Duration::from_secs(10)) {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "NVMe controller {}: admin command {:#04x} timed out",
                        self.addr,
                        sqe.dw[0] & 0xff
                    ),
                )));
            }
            std::hint::spin_loop();
        };
        self.doorbell(0, true, admin.rings.cq_head);
        if cqe.status != 0 {
            return Err(nvme::status_error(cqe.status));
        }
        if let Some(d) = data {
            admin.region.read(ADMIN_DATA, d);
        }
        Ok(cqe.dw0)
    }

    fn identify(&self, admin: &mut Admin, cns: u32, nsid: u32) -> Result<Vec<u8>> {
        let mut b = vec![0u8; PAGE];
        self.admin_cmd(
            admin,
            Sqe::new(nvme::ADMIN_IDENTIFY, nsid).cdw(10, cns),
            Some(&mut b),
        )?;
        Ok(b)
    }

    /// Creates I/O queue `qid` with its queues at the start of `region`.
    fn create_queues(&self, qid: u16, region: &DmaRegion, rings: &Rings) -> Result<u64> {
        let mut admin = self.admin.lock();
        let size = (u32::from(rings.entries) - 1) << 16 | u32::from(qid);
        // Physically contiguous (PC), interrupts off.
        self.admin_cmd(
            &mut admin,
            Sqe::new(nvme::ADMIN_CREATE_CQ, 0)
                .prp(region.phys(rings.cq_off), 0)
                .cdw(10, size)
                .cdw(11, 1),
            None,
        )?;
        let r = self.admin_cmd(
            &mut admin,
            Sqe::new(nvme::ADMIN_CREATE_SQ, 0)
                .prp(region.phys(rings.sq_off), 0)
                .cdw(10, size)
                .cdw(11, (u32::from(qid) << 16) | 1),
            None,
        );
        if let Err(e) = r {
            let _ = self.admin_cmd(
                &mut admin,
                Sqe::new(nvme::ADMIN_DELETE_CQ, 0).cdw(10, u32::from(qid)),
                None,
            );
            return Err(e);
        }
        // Read under the admin lock: a reset takes it too, so queues made now belong to
        // this generation.
        Ok(self.generation.load(Ordering::SeqCst))
    }

    fn delete_queues(&self, qid: u16) -> Result<()> {
        let mut admin = self.admin.lock();
        self.admin_cmd(
            &mut admin,
            Sqe::new(nvme::ADMIN_DELETE_SQ, 0).cdw(10, u32::from(qid)),
            None,
        )?;
        self.admin_cmd(
            &mut admin,
            Sqe::new(nvme::ADMIN_DELETE_CQ, 0).cdw(10, u32::from(qid)),
            None,
        )?;
        Ok(())
    }

    /// Resets the controller unless another queue pair already did since generation
    /// `seen`. Every queue pair then fails what it had in flight and recreates its queues.
    ///
    /// `drain`: how long commands already sent get to finish first (a reset on request of
    /// a working controller); the controller drops whatever is still running when it is
    /// disabled. Their queue pairs report them failed either way, since their completions
    /// are not looked at. QEMU's emulated controller has crashed (one run in ten) when
    /// disabled while it was still executing commands, which the drain avoids.
    fn recover(&self, seen: u64, reason: &str, drain: Duration) -> Result<()> {
        let mut admin = self.admin.lock();
        if self.generation.load(Ordering::SeqCst) != seen {
            return Ok(());
        }
        *self.last_reset.lock() = reason.to_string();
        let r = {
            let _quiet = self.doorbells.write();
            // First, so no doorbell of the old queues rings after this: queue pairs drop
            // their old queues whether or not the reset works.
            self.generation.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(drain);
            self.init(&mut admin)
        };
        self.dead.store(r.is_err(), Ordering::SeqCst);
        match r {
            Ok(_) => {
                eprintln!(
                    "blobfs-driver: NVMe controller {} was reset ({reason}); commands in \
                     flight failed, queues recreated",
                    self.addr
                );
                Ok(())
            }
            Err(e) => {
                eprintln!(
                    "blobfs-driver: NVMe controller {}: reset after {reason} failed: {e}",
                    self.addr
                );
                Err(e)
            }
        }
    }

    fn reset_error(&self, reason: &str) -> Error {
        Error::ControllerReset {
            ctrl: self.addr.clone(),
            reason: reason.to_string(),
        }
    }
}

impl Drop for Ctrl {
    fn drop(&mut self) {
        // Normal shutdown, so the controller flushes its cache and a later owner (the
        // kernel driver, another process) finds it clean; then disable it.
        let csts = self.csts();
        if csts == u32::MAX || csts & CSTS_RDY == 0 {
            return;
        }
        let cc = self.mmio.read32(REG_CC);
        self.mmio.write32(REG_CC, (cc & !(3 << 14)) | CC_SHN_NORMAL);
        let start = Instant::now();
        while self.csts() & (3 << 2) != CSTS_SHST_DONE && start.elapsed() < self.ready_timeout {
            std::thread::sleep(Duration::from_millis(1));
        }
        let cc = self.mmio.read32(REG_CC);
        self.mmio.write32(REG_CC, cc & !CC_EN);
        let _ = self.wait_ready(false);
    }
}

// ---------------------------------------------------------------------------------------
// The device.

/// An NVMe namespace behind a controller driven from userspace.
#[derive(Clone)]
pub struct PciDevice {
    ctrl: Arc<Ctrl>,
}

impl fmt::Debug for PciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciDevice")
            .field("addr", &self.ctrl.addr)
            .field("model", &self.ctrl.id.model)
            .field("nsid", &self.ctrl.opts.nsid)
            .field("geometry", &self.ctrl.geom)
            .finish()
    }
}

fn sysfs_driver(dir: &std::path::Path) -> Option<String> {
    let link = std::fs::read_link(dir.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

impl PciDevice {
    /// Opens the controller at PCI address `addr` (`0000:00:04.0`), which must be bound to
    /// `uio_pci_generic` (or to no driver), resets it and reads namespace `opts.nsid`.
    /// Needs root: the registers, the configuration space and physical addresses.
    pub fn open(addr: &str, opts: &PciOptions) -> Result<PciDevice> {
        let spec = addr;
        let addr = normalize_addr(addr).ok_or_else(|| {
            bad(
                spec,
                "not a PCI address (expected DOMAIN:BUS:DEVICE.FUNCTION, e.g. 0000:00:04.0)",
            )
        })?;
        let dir = PathBuf::from("/sys/bus/pci/devices").join(&addr);
        if !dir.exists() {
            return Err(bad(
                spec,
                format!("no PCI device {addr} (see /sys/bus/pci/devices, or lspci)"),
            ));
        }
        let class = std::fs::read_to_string(dir.join("class")).unwrap_or_default();
        if class.trim() != "0x010802" {
            return Err(bad(
                spec,
                format!(
                    "{addr} is not an NVMe controller (PCI class {})",
                    class.trim()
                ),
            ));
        }
        match sysfs_driver(&dir).as_deref() {
            None | Some("uio_pci_generic") => {}
            Some(other) => {
                return Err(bad(
                    spec,
                    format!(
                        "{addr} is bound to the {other} driver; hand it to userspace first: \
                         echo {addr} > /sys/bus/pci/devices/{addr}/driver/unbind; modprobe \
                         uio_pci_generic; echo uio_pci_generic > \
                         /sys/bus/pci/devices/{addr}/driver_override; echo {addr} > \
                         /sys/bus/pci/drivers_probe"
                    ),
                ))
            }
        }
        if !opts.max_transfer.is_power_of_two()
            || !(PAGE as u32..=HUGE as u32).contains(&opts.max_transfer)
        {
            return Err(bad(
                spec,
                format!(
                    "max transfer {} is not a power of two from 4 KiB to 2 MiB",
                    opts.max_transfer
                ),
            ));
        }
        let open_rw = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(name))
                .map_err(|e| bad(spec, format!("opening {}: {e}", dir.join(name).display())))
        };
        let config = open_rw("config")?;
        let res = open_rw("resource0")?;
        // SAFETY: flock on an open descriptor; no memory is involved.
        if unsafe { libc::flock(res.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(bad(
                spec,
                format!("{addr} is in use by another process (its register file is locked)"),
            ));
        }
        let bar_len = res.metadata()?.len() as usize;
        if bar_len < REG_DOORBELLS + 8 {
            return Err(bad(spec, format!("BAR0 of {addr} is only {bar_len} bytes")));
        }
        let mmio = Mmio::map(&res, bar_len)
            .map_err(|e| bad(spec, format!("mapping BAR0 of {addr}: {e}")))?;
        let cap = mmio.read64(REG_CAP);
        if cap == u64::MAX {
            return Err(bad(
                spec,
                format!("{addr}: registers read all ones (memory decoding off, or removed)"),
            ));
        }
        if (cap >> 48) & 0xf != 0 {
            return Err(bad(spec, "the controller does not support 4 KiB pages"));
        }
        if (cap >> 37) & 1 == 0 {
            return Err(bad(spec, "the controller lacks the NVM command set"));
        }
        let admin = Admin {
            region: DmaRegion::new(HUGE)?,
            rings: Rings::new(ADMIN_ENTRIES),
            next_cid: 0,
        };
        let mut ctrl = Ctrl {
            addr: addr.clone(),
            mmio,
            config,
            _lock: res,
            dstrd: ((cap >> 32) & 0xf) as usize,
            mqes: (cap & 0xffff) as u32 + 1,
            ready_timeout: Duration::from_millis(500 * ((cap >> 24) & 0xff).max(2)),
            opts: opts.clone(),
            admin: Mutex::new(admin),
            generation: AtomicU64::new(0),
            doorbells: parking_lot::RwLock::new(()),
            last_reset: Mutex::new(String::new()),
            dead: AtomicBool::new(false),
            free_qids: Mutex::new(Vec::new()),
            // Filled in below, from Identify.
            id: IdController::default(),
            geom: Geometry {
                lba_size: 512,
                lba_count: 0,
                atomic_write_lbas: 1,
                max_transfer: PAGE as u32,
            },
            dsm_dealloc: false,
            write_zeroes: false,
        };
        let (queues, id, ns) = {
            let c = &ctrl;
            let mut admin = c.admin.lock();
            let admin = &mut *admin;
            let queues = c.init(admin)?;
            let id = IdController::parse(&c.identify(admin, nvme::CNS_CONTROLLER, 0)?)
                .ok_or_else(|| bad(spec, "short Identify Controller data"))?;
            if opts.nsid == 0 || opts.nsid > id.nn {
                return Err(bad(
                    spec,
                    format!("no namespace {} (the controller has {})", opts.nsid, id.nn),
                ));
            }
            let ns = IdNamespace::parse(&c.identify(admin, nvme::CNS_NAMESPACE, opts.nsid)?)
                .ok_or_else(|| bad(spec, format!("namespace {} is not active", opts.nsid)))?;
            (queues, id, ns)
        };
        if ns.metadata != 0 {
            return Err(bad(
                spec,
                format!(
                    "unsupported LBA format ({} bytes with {} metadata bytes)",
                    ns.lba_size, ns.metadata
                ),
            ));
        }
        let mut max_transfer = u64::from(opts.max_transfer);
        if id.mdts != 0 {
            max_transfer = max_transfer.min((PAGE as u64) << id.mdts);
        }
        ctrl.geom = Geometry {
            lba_size: ns.lba_size,
            lba_count: ns.nsze,
            atomic_write_lbas: 1,
            max_transfer: (max_transfer as u32).max(ns.lba_size),
        };
        ctrl.dsm_dealloc = opts.dsm_deallocate && id.has_dsm() && ns.dealloc_reads_zeroes;
        ctrl.write_zeroes = id.has_write_zeroes();
        ctrl.free_qids = Mutex::new((1..=queues).rev().collect());
        ctrl.id = id;
        Ok(PciDevice {
            ctrl: Arc::new(ctrl),
        })
    }

    /// The controller's PCI address.
    pub fn addr(&self) -> &str {
        &self.ctrl.addr
    }

    /// Model and serial number, from Identify Controller.
    pub fn model(&self) -> (String, String) {
        (self.ctrl.id.model.clone(), self.ctrl.id.serial.clone())
    }

    /// How Deallocate is sent: "dataset-management", "write-zeroes" or "write".
    pub fn deallocate_method(&self) -> &'static str {
        if self.ctrl.dsm_dealloc {
            "dataset-management"
        } else if self.ctrl.write_zeroes {
            "write-zeroes"
        } else {
            "write"
        }
    }

    /// Controller resets so far (by this driver or noticed from outside).
    pub fn resets(&self) -> u64 {
        self.ctrl.generation.load(Ordering::SeqCst)
    }

    /// Resets the controller now, as after a failure: commands in flight on every queue
    /// pair fail with [`Error::ControllerReset`]; the queue pairs then carry on.
    pub fn reset_controller(&self) -> Result<()> {
        let seen = self.ctrl.generation.load(Ordering::SeqCst);
        self.ctrl
            .recover(seen, "reset requested", Duration::from_millis(20))
    }
}

impl Device for PciDevice {
    fn geometry(&self) -> Geometry {
        self.ctrl.geom
    }

    fn open_qpair(&self, depth: u32) -> Result<Box<dyn QueuePair>> {
        Ok(Box::new(PciQueuePair::new(Arc::clone(&self.ctrl), depth)?))
    }

    fn describe(&self) -> String {
        format!("pci:{}", self.ctrl.addr)
    }
}

// ---------------------------------------------------------------------------------------
// Queue pairs.

/// PRP entries for `len` bytes of a bounce buffer at `bounce` whose PRP list (its pages
/// after the first) is at `list`.
fn prps(region: &DmaRegion, bounce: usize, list: usize, len: usize) -> (u64, u64) {
    let prp1 = region.phys(bounce);
    let prp2 = if len <= PAGE {
        0
    } else if len <= 2 * PAGE {
        region.phys(bounce + PAGE)
    } else {
        region.phys(list)
    };
    (prp1, prp2)
}

/// One op in flight: it owns its slot (command id) until done; long ops (Write Zeroes,
/// Deallocate) go out as pieces, one at a time, from `next` to `end` (in blocks).
struct Slot {
    op: Op,
    tag: u64,
    next: u64,
    end: u64,
    started: Instant,
}

struct PciQueuePair {
    ctrl: Arc<Ctrl>,
    qid: u16,
    region: DmaRegion,
    rings: Rings,
    /// Offsets in `region` of slot 0's PRP list page and bounce buffer.
    prp_off: usize,
    bounce_off: usize,
    bounce_len: usize,
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    done: VecDeque<Completion>,
    /// The controller generation the queues were made in; `None`: they do not exist.
    generation: Option<u64>,
    last_check: Instant,
}

impl PciQueuePair {
    fn new(ctrl: Arc<Ctrl>, depth: u32) -> Result<PciQueuePair> {
        let entries = (depth.max(1) + 1).min(ctrl.mqes).min(MAX_IO_ENTRIES);
        let depth = entries - 1;
        let rings = Rings::new(entries as u16);
        let bounce_len = ctrl.geom.max_transfer as usize;
        let prp_off = rings.bytes();
        let bounce_off = (prp_off + depth as usize * PAGE).div_ceil(bounce_len) * bounce_len;
        let region = DmaRegion::new(bounce_off + depth as usize * bounce_len)?;
        let qid = ctrl.free_qids.lock().pop().ok_or_else(|| {
            Error::Io(io::Error::other(format!(
                "NVMe controller {}: no I/O queue left (close a queue pair first)",
                ctrl.addr
            )))
        })?;
        let mut qp = PciQueuePair {
            ctrl,
            qid,
            region,
            rings,
            prp_off,
            bounce_off,
            bounce_len,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as u16).rev().collect(),
            done: VecDeque::new(),
            generation: None,
            last_check: Instant::now(),
        };
        // Each slot's PRP list: the pages of its bounce buffer after the first.
        for s in 0..depth as usize {
            let bounce = qp.bounce_off + s * bounce_len;
            let list: Vec<u8> = (1..bounce_len / PAGE)
                .flat_map(|p| qp.region.phys(bounce + p * PAGE).to_le_bytes())
                .collect();
            qp.region.write(qp.prp_off + s * PAGE, &list);
        }
        qp.make_queues()?;
        Ok(qp)
    }

    fn make_queues(&mut self) -> Result<()> {
        self.rings.reset(&self.region);
        self.generation = Some(
            self.ctrl
                .create_queues(self.qid, &self.region, &self.rings)?,
        );
        Ok(())
    }

    fn bounce(&self, slot: u16) -> usize {
        self.bounce_off + usize::from(slot) * self.bounce_len
    }

    /// The command for the next piece of slot `s`'s op; advances `next`.
    fn next_command(&mut self, s: u16) -> Sqe {
        let nsid = self.ctrl.opts.nsid;
        let lba_size = u64::from(self.ctrl.geom.lba_size);
        let zero_write_lbas = self.bounce_len as u64 / lba_size;
        let (dsm, wz) = (self.ctrl.dsm_dealloc, self.ctrl.write_zeroes);
        let b = self.bounce(s);
        let list = self.prp_off + usize::from(s) * PAGE;
        let region = &self.region;
        let Some(slot) = self.slots[usize::from(s)].as_mut() else {
            unreachable!("command for an empty slot")
        };
        let at = slot.next;
        match &slot.op {
            Op::Read { buf, .. } | Op::Write { buf, .. } => {
                let opcode = if matches!(slot.op, Op::Read { .. }) {
                    nvme::OP_READ
                } else {
                    nvme::OP_WRITE
                };
                let nlb = buf.len() as u64 / lba_size;
                slot.next = slot.end;
                let (p1, p2) = prps(region, b, list, buf.len());
                Sqe::new(opcode, nsid)
                    .prp(p1, p2)
                    .slba(at)
                    .cdw(12, (nlb - 1) as u32)
            }
            Op::Flush => {
                slot.next = slot.end;
                Sqe::new(nvme::OP_FLUSH, nsid)
            }
            Op::Deallocate { .. } if dsm => {
                let n = (slot.end - at).min(u64::from(u32::MAX));
                slot.next += n;
                let mut range = [0u8; 16];
                range[4..8].copy_from_slice(&(n as u32).to_le_bytes());
                range[8..16].copy_from_slice(&at.to_le_bytes());
                region.write(b, &range);
                // One range (NR = 0), attribute Deallocate.
                Sqe::new(nvme::OP_DSM, nsid)
                    .prp(region.phys(b), 0)
                    .cdw(10, 0)
                    .cdw(11, 1 << 2)
            }
            Op::Deallocate { .. } | Op::WriteZeroes { .. } if wz => {
                let n = (slot.end - at).min(nvme::MAX_ZERO_LBAS);
                slot.next += n;
                let deac = if matches!(slot.op, Op::Deallocate { .. }) {
                    nvme::WZ_DEAC
                } else {
                    0
                };
                Sqe::new(nvme::OP_WRITE_ZEROES, nsid)
                    .slba(at)
                    .cdw(12, (n - 1) as u32 | deac)
            }
            Op::Deallocate { .. } | Op::WriteZeroes { .. } => {
                // Neither offered: write zeroes from the (zeroed) bounce buffer.
                let n = (slot.end - at).min(zero_write_lbas);
                slot.next += n;
                let len = (n * lba_size) as usize;
                region.fill_zero(b, len);
                let (p1, p2) = prps(region, b, list, len);
                Sqe::new(nvme::OP_WRITE, nsid)
                    .prp(p1, p2)
                    .slba(at)
                    .cdw(12, (n - 1) as u32)
            }
        }
    }

    fn issue(&mut self, s: u16) {
        let sqe = self.next_command(s).cid(s);
        // The timeout is per command: a long Deallocate goes out as many pieces.
        if let Some(slot) = self.slots[usize::from(s)].as_mut() {
            slot.started = Instant::now();
        }
        let tail = self.rings.push(&self.region, &sqe);
        self.ring(false, tail);
    }

    /// Rings one of this queue pair's doorbells, unless a reset has replaced its queues
    /// (then what was submitted fails at the next poll, with the reset's error).
    fn ring(&self, completion: bool, value: u16) {
        let _shared = self.ctrl.doorbells.read();
        if self.generation == Some(self.ctrl.generation.load(Ordering::SeqCst)) {
            self.ctrl.doorbell(self.qid, completion, value);
        }
    }

    fn finish(&mut self, s: u16, result: Result<()>) {
        let Some(slot) = self.slots[usize::from(s)].take() else {
            return;
        };
        self.free.push(s);
        self.done.push_back(Completion {
            tag: slot.tag,
            result,
            buf: slot.op.into_buf(),
        });
    }

    fn reap(&mut self) -> usize {
        let mut n = 0;
        while let Some(c) = self.rings.pop(&self.region) {
            n += 1;
            let s = c.cid;
            let Some(slot) = self.slots.get(usize::from(s)).and_then(Option::as_ref) else {
                continue;
            };
            if c.status != 0 {
                self.finish(s, Err(nvme::status_error(c.status)));
            } else if slot.next < slot.end {
                self.issue(s);
            } else {
                if let Some(Slot {
                    op: Op::Read { buf, .. },
                    ..
                }) = self.slots[usize::from(s)].as_mut()
                {
                    self.region.read(
                        self.bounce_off + usize::from(s) * self.bounce_len,
                        buf.as_mut_slice(),
                    );
                }
                self.finish(s, Ok(()));
            }
        }
        if n > 0 {
            self.ring(true, self.rings.cq_head);
        }
        n
    }

    fn in_flight_slots(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Fails every op in flight with a reset error (the controller dropped them).
    fn fail_all(&mut self, reason: &str) {
        for s in 0..self.slots.len() as u16 {
            if self.slots[usize::from(s)].is_some() {
                self.finish(s, Err(self.ctrl.reset_error(reason)));
            }
        }
    }

    /// After a reset by anyone: fail what was in flight, make the queues again.
    fn resync(&mut self) -> Result<()> {
        let now = self.ctrl.generation.load(Ordering::SeqCst);
        if self.generation == Some(now) {
            return Ok(());
        }
        if self.in_flight_slots() > 0 {
            let reason = self.ctrl.last_reset.lock().clone();
            self.fail_all(&reason);
        }
        self.generation = None;
        if self.ctrl.dead.load(Ordering::SeqCst) {
            return Err(self.ctrl.reset_error(&format!(
                "{}; the controller did not come back",
                self.ctrl.last_reset.lock()
            )));
        }
        self.make_queues()
    }

    /// With ops in flight and no completions: is the controller still working?
    fn health_check(&mut self) {
        if self.last_check.elapsed() < HEALTH_CHECK_EVERY {
            return;
        }
        self.last_check = Instant::now();
        let csts = self.ctrl.csts();
        let oldest = self
            .slots
            .iter()
            .flatten()
            .map(|s| s.started.elapsed())
            .max()
            .unwrap_or_default();
        let reason = if csts == u32::MAX {
            "its registers read all ones (removed, or in reset)".to_string()
        } else if csts & CSTS_CFS != 0 {
            "the controller reported a fatal status".to_string()
        } else if csts & CSTS_RDY == 0 {
            "the controller stopped being ready (reset from outside)".to_string()
        } else if oldest > self.ctrl.opts.timeout {
            format!("a command timed out after {:?}", self.ctrl.opts.timeout)
        } else {
            return;
        };
        let Some(seen) = self.generation else { return };
        // Whether or not the reset works, what was in flight is gone.
        let _ = self.ctrl.recover(seen, &reason, Duration::ZERO);
        self.fail_all(&reason);
        let _ = self.resync();
    }
}

impl QueuePair for PciQueuePair {
    fn submit(&mut self, op: Op, tag: u64) -> std::result::Result<(), SubmitError> {
        if let Err(error) = op.validate(&self.ctrl.geom) {
            return Err(SubmitError { error, op });
        }
        if self.ctrl.opts.read_only && !matches!(op, Op::Read { .. } | Op::Flush) {
            return Err(SubmitError {
                error: Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("pci:{} is opened read-only", self.ctrl.addr),
                )),
                op,
            });
        }
        if let Err(error) = self.resync() {
            return Err(SubmitError { error, op });
        }
        let Some(s) = self.free.pop() else {
            return Err(SubmitError {
                error: Error::QueueFull,
                op,
            });
        };
        let lba_size = u64::from(self.ctrl.geom.lba_size);
        let (next, end) = match &op {
            Op::Read { lba, buf } | Op::Write { lba, buf } => {
                (lba.0, lba.0 + buf.len() as u64 / lba_size)
            }
            Op::Flush => (0, 1),
            Op::Deallocate { lba, count } | Op::WriteZeroes { lba, count } => {
                (lba.0, lba.0 + count)
            }
        };
        if let Op::Write { buf, .. } = &op {
            self.region.write(self.bounce(s), buf.as_slice());
        }
        self.slots[usize::from(s)] = Some(Slot {
            op,
            tag,
            next,
            end,
            started: Instant::now(),
        });
        self.issue(s);
        Ok(())
    }

    fn poll(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        if self.resync().is_ok() && self.reap() == 0 && self.in_flight_slots() > 0 {
            self.health_check();
        }
        let n = max.min(self.done.len());
        out.extend(self.done.drain(..n));
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight_slots() + self.done.len()
    }

    fn depth(&self) -> usize {
        self.slots.len()
    }
}

impl Drop for PciQueuePair {
    fn drop(&mut self) {
        // Let what is in flight finish (polling resets a stuck controller, which fails the
        // commands, so this ends), then delete the queues so the controller stops using
        // this memory before it is unmapped.
        let mut sink = Vec::new();
        while self.in_flight_slots() > 0 {
            self.poll(usize::MAX, &mut sink);
        }
        let current = self.generation == Some(self.ctrl.generation.load(Ordering::SeqCst));
        // Queues of an older generation died with the reset that replaced them (it
        // disabled the controller): nothing refers to this memory any more.
        let released = !current || self.ctrl.delete_queues(self.qid).is_ok();
        if released {
            self.ctrl.free_qids.lock().push(self.qid);
        } else {
            // The controller may still use this memory: never hand it back.
            let region = std::mem::replace(
                &mut self.region,
                DmaRegion {
                    ptr: std::ptr::null_mut(),
                    len: 0,
                    phys: Vec::new(),
                },
            );
            std::mem::forget(region);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            normalize_addr("0000:00:04.0").as_deref(),
            Some("0000:00:04.0")
        );
        assert_eq!(normalize_addr("00:1f.7").as_deref(), Some("0000:00:1f.7"));
        assert_eq!(normalize_addr("1:2:3.4").as_deref(), Some("0001:02:03.4"));
        for bad in ["", "00:04", "zz:00.0", "00:20.0", "00:04.8", "0:0:0:0.0"] {
            assert_eq!(normalize_addr(bad), None, "{bad}");
        }
    }

    #[test]
    fn submission_entry_layout() {
        let s = Sqe::new(nvme::OP_WRITE, 1)
            .cid(0x1234)
            .prp(0x1122_3344_5566_7000, 0xaabb_c000)
            .slba(0x0000_0007_0000_0010)
            .cdw(12, 31);
        let b = s.bytes();
        assert_eq!(b[0], 0x01);
        assert_eq!(&b[2..4], &0x1234u16.to_le_bytes());
        assert_eq!(&b[4..8], &1u32.to_le_bytes());
        assert_eq!(&b[24..32], &0x1122_3344_5566_7000u64.to_le_bytes());
        assert_eq!(&b[32..40], &0xaabb_c000u64.to_le_bytes());
        assert_eq!(&b[40..44], &0x10u32.to_le_bytes());
        assert_eq!(&b[44..48], &7u32.to_le_bytes());
        assert_eq!(&b[48..52], &31u32.to_le_bytes());
    }

    /// Writes a completion entry as a controller would.
    fn post(region: &DmaRegion, rings: &Rings, slot: u16, cid: u16, status: u16, phase: bool) {
        let mut e = [0u8; 16];
        e[0..4].copy_from_slice(&0xabcdu32.to_le_bytes());
        let dw3 = u32::from(cid) | (u32::from(phase) << 16) | (u32::from(status) << 17);
        e[12..16].copy_from_slice(&dw3.to_le_bytes());
        region.write(rings.cq_off + usize::from(slot) * 16, &e);
    }

    #[test]
    fn rings_wrap_and_flip_phase() {
        let region = DmaRegion::for_test(HUGE);
        let mut rings = Rings::new(4);
        rings.reset(&region);
        assert_eq!(rings.cq_off, PAGE);
        // Submission tail wraps at the queue size; entries land where the tail was.
        for i in 0..6u16 {
            let tail = rings.push(&region, &Sqe::new(nvme::OP_READ, 1).cid(i));
            assert_eq!(tail, (i + 1) % 4);
            let mut b = [0u8; 4];
            region.read(usize::from(i % 4) * 64, &mut b);
            assert_eq!(u16::from_le_bytes([b[2], b[3]]), i);
        }
        // Completions: nothing until the phase bit matches; the phase flips at the wrap.
        assert!(rings.pop(&region).is_none());
        for (n, slot) in (0..4u16).enumerate() {
            post(&region, &rings, slot, n as u16, 0, true);
        }
        for n in 0..4u16 {
            let c = rings.pop(&region).expect("posted");
            assert_eq!((c.cid, c.status, c.dw0), (n, 0, 0xabcd));
        }
        assert_eq!((rings.cq_head, rings.phase), (0, false));
        // Old entries (phase 1) are not taken again; new ones carry phase 0.
        assert!(rings.pop(&region).is_none());
        post(&region, &rings, 0, 9, 0x281, false);
        let c = rings.pop(&region).expect("posted");
        assert_eq!((c.cid, c.status), (9, 0x281));
        assert!(nvme::status_error(c.status)
            .to_string()
            .contains("unrecovered read error"));
        // A reset starts over: phase 1, head 0, zeroed queues.
        rings.reset(&region);
        assert!(rings.pop(&region).is_none());
        assert_eq!((rings.sq_tail, rings.cq_head, rings.phase), (0, 0, true));
    }

    #[test]
    fn prp_entries() {
        let region = DmaRegion::for_test(2 * HUGE);
        let (b, list) = (128 << 10, 64 << 10);
        assert_eq!(prps(&region, b, list, 4096), (region.phys(b), 0));
        assert_eq!(
            prps(&region, b, list, 8192),
            (region.phys(b), region.phys(b + PAGE))
        );
        assert_eq!(
            prps(&region, b, list, 12288),
            (region.phys(b), region.phys(list))
        );
        // Each hugepage has its own physical address; offsets inside one are contiguous.
        assert_eq!(region.phys(HUGE + 5) - region.phys(HUGE), 5);
        assert_ne!(region.phys(HUGE), region.phys(HUGE - 1) + 1);
    }

    #[test]
    fn refusals_are_clear() {
        let e = PciDevice::open("nonsense", &PciOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not a PCI address"), "{e}");
        let e = PciDevice::open("00ff:1f:1f.7", &PciOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no PCI device"), "{e}");
        // The host bridge (00:00.0) exists on every PC but is no NVMe controller.
        if std::path::Path::new("/sys/bus/pci/devices/0000:00:00.0").exists() {
            let e = PciDevice::open("0000:00:00.0", &PciOptions::default()).unwrap_err();
            assert!(e.to_string().contains("not an NVMe controller"), "{e}");
        }
    }
}
