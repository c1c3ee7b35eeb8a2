//! NVMe commands through io_uring passthrough: `IORING_OP_URING_CMD` on a namespace's
//! generic character device (`/dev/ngXnY`), with 128-byte submission and 32-byte completion
//! entries, polled completions (`IORING_SETUP_IOPOLL`) when the kernel has poll queues
//! (`nvme.poll_queues=N`), else interrupt-driven ones.
//!
//! Geometry comes from Identify Namespace (LBA format in use, namespace size) and Identify
//! Controller (MDTS), sent with the admin passthrough ioctl at open. Commands: Read (0x02),
//! Write (0x01), Flush (0x00), Write Zeroes (0x08, with the Deallocate bit for
//! `Op::Deallocate`: a Deallocate through Write Zeroes reads back zeroes on every device,
//! which the driver contract requires), split into pieces of at most 65,536 LBAs. A command
//! the controller fails comes back as its NVMe status (status code type and code).

use crate::{Completion, Device, DmaBuf, Error, Geometry, Op, QueuePair, Result, SubmitError};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::Arc;

/// `_IO('N', 0x40)`: the namespace id of an NVMe namespace device.
const NVME_IOCTL_ID: libc::c_ulong = 0x4e40;
/// `_IOWR('N', 0x41, struct nvme_passthru_cmd)` (72 bytes).
const NVME_IOCTL_ADMIN_CMD: libc::c_ulong = 0xc048_4e41;
/// `_IOWR('N', 0x80, struct nvme_uring_cmd)` (72 bytes): an I/O command via uring_cmd.
const NVME_URING_CMD_IO: u32 = 0xc048_4e80;

use crate::nvme::{
    IdController, IdNamespace, MAX_ZERO_LBAS, OP_FLUSH, OP_READ, OP_WRITE, OP_WRITE_ZEROES, WZ_DEAC,
};

/// `struct nvme_passthru_cmd` / `struct nvme_uring_cmd` share this layout (72 bytes).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct NvmeCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

const _: () = assert!(std::mem::size_of::<NvmeCmd>() == 72);

impl NvmeCmd {
    fn bytes(&self) -> [u8; 80] {
        let mut out = [0u8; 80];
        // SAFETY: NvmeCmd is repr(C), 72 bytes of plain integers with no padding (the
        // assertion above checks the size); reading it as bytes is sound.
        let raw = unsafe { std::slice::from_raw_parts((self as *const NvmeCmd).cast::<u8>(), 72) };
        out[..72].copy_from_slice(raw);
        out
    }
}

/// Options for [`PassthruDevice::open`].
#[derive(Clone, Debug, Default)]
pub struct PassthruOptions {
    /// Refuse writes (Read and Flush only).
    pub read_only: bool,
    /// Never use polled completions, even where the kernel offers poll queues.
    pub no_poll: bool,
}

struct Shared {
    file: File,
    path: String,
    nsid: u32,
    geom: Geometry,
    read_only: bool,
    no_poll: bool,
}

/// An NVMe namespace driven through its generic character device.
#[derive(Clone)]
pub struct PassthruDevice {
    shared: Arc<Shared>,
}

impl fmt::Debug for PassthruDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassthruDevice")
            .field("path", &self.shared.path)
            .field("nsid", &self.shared.nsid)
            .field("geometry", &self.shared.geom)
            .finish()
    }
}

fn bad(path: &str, reason: impl Into<String>) -> Error {
    Error::BadSpec {
        spec: path.to_string(),
        reason: reason.into(),
    }
}

/// The block queue limits directory of the namespace behind `/dev/ngXnY` (its block
/// device is `nvmeXnY`).
fn queue_dir(path: &str) -> Option<String> {
    let name = std::path::Path::new(path).file_name()?.to_str()?;
    let rest = name.strip_prefix("ng")?;
    let q = format!("/sys/block/nvme{rest}/queue");
    std::path::Path::new(&q).exists().then_some(q)
}

/// Runs one admin command (Identify) through the passthrough ioctl into `buf`.
fn admin(fd: RawFd, cmd: &mut NvmeCmd, buf: &mut [u8]) -> io::Result<()> {
    cmd.addr = buf.as_mut_ptr() as u64;
    cmd.data_len = buf.len() as u32;
    // SAFETY: `cmd` is a valid nvme_passthru_cmd whose addr/data_len describe `buf`, which
    // outlives the synchronous ioctl; the kernel writes at most data_len bytes there.
    let rc = unsafe { libc::ioctl(fd, NVME_IOCTL_ADMIN_CMD as _, cmd as *mut NvmeCmd) };
    match rc {
        0 => Ok(()),
        r if r > 0 => Err(io::Error::other(
            crate::nvme::status_error(r as u16).to_string(),
        )),
        _ => Err(io::Error::last_os_error()),
    }
}

impl PassthruDevice {
    /// Opens `path`, a namespace's generic character device (`/dev/ng0n1`), and reads the
    /// geometry with Identify. Needs CAP_SYS_ADMIN (root).
    pub fn open(path: &str, opts: &PassthruOptions) -> Result<PassthruDevice> {
        let meta = std::fs::metadata(path).map_err(|e| bad(path, e.to_string()))?;
        if !meta.file_type().is_char_device() {
            return Err(bad(
                path,
                "not a character device (the passthrough backend takes /dev/ngXnY)",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| bad(path, e.to_string()))?;
        let fd = file.as_raw_fd();
        // SAFETY: NVME_IOCTL_ID takes no argument and returns the namespace id or -1.
        let nsid = unsafe { libc::ioctl(fd, NVME_IOCTL_ID as _) };
        if nsid <= 0 {
            return Err(bad(
                path,
                format!(
                    "not an NVMe namespace device ({})",
                    io::Error::last_os_error()
                ),
            ));
        }
        let nsid = nsid as u32;
        let mut ns = vec![0u8; 4096];
        let mut cmd = NvmeCmd {
            opcode: 0x06,
            nsid,
            cdw10: 0, // CNS 0: Identify Namespace
            ..NvmeCmd::default()
        };
        admin(fd, &mut cmd, &mut ns).map_err(|e| bad(path, format!("Identify Namespace: {e}")))?;
        let ns = IdNamespace::parse(&ns)
            .ok_or_else(|| bad(path, format!("namespace {nsid} is not active")))?;
        if ns.metadata != 0 {
            return Err(bad(
                path,
                format!(
                    "unsupported LBA format ({} bytes with {} metadata bytes)",
                    ns.lba_size, ns.metadata
                ),
            ));
        }
        let (nsze, lba_size) = (ns.nsze, ns.lba_size);
        let mut ctrl = vec![0u8; 4096];
        let mut cmd = NvmeCmd {
            opcode: 0x06,
            cdw10: 1, // CNS 1: Identify Controller
            ..NvmeCmd::default()
        };
        admin(fd, &mut cmd, &mut ctrl)
            .map_err(|e| bad(path, format!("Identify Controller: {e}")))?;
        // MDTS is in units of the minimum page size (4 KiB on every controller we drive);
        // 0 means no limit. The kernel's own limit for one passthrough command is
        // conservative too, so cap at 512 KiB.
        let mdts = IdController::parse(&ctrl).map_or(0, |c| c.mdts);
        let mut max_transfer: u64 = if mdts == 0 {
            512 << 10
        } else {
            4096u64 << mdts
        };
        // The kernel maps a passthrough buffer page by page: one command may span at most
        // max_segments pages (a buffer need not start on a page) and max_hw_sectors_kb
        // (beyond either: EINVAL). Both are in the matching block device's queue limits.
        if let Some(q) = queue_dir(path) {
            let read = |f: &str| -> Option<u64> {
                std::fs::read_to_string(format!("{q}/{f}"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            if let Some(kb) = read("max_hw_sectors_kb") {
                max_transfer = max_transfer.min(kb << 10);
            }
            if let Some(segs) = read("max_segments") {
                max_transfer = max_transfer.min(segs.saturating_sub(1).max(1) * 4096);
            }
        } else {
            max_transfer = max_transfer.min(128 << 10);
        }
        // A power of two, at least one block.
        let max_transfer = (1u64 << (63 - max_transfer.max(1).leading_zeros())) as u32;
        Ok(PassthruDevice {
            shared: Arc::new(Shared {
                path: path.to_string(),
                nsid,
                geom: Geometry {
                    lba_size,
                    lba_count: nsze,
                    atomic_write_lbas: 1,
                    max_transfer: max_transfer.max(lba_size),
                },
                read_only: opts.read_only,
                no_poll: opts.no_poll,
                file,
            }),
        })
    }

    /// The namespace id.
    pub fn nsid(&self) -> u32 {
        self.shared.nsid
    }
}

impl Device for PassthruDevice {
    fn geometry(&self) -> Geometry {
        self.shared.geom
    }

    fn open_qpair(&self, depth: u32) -> Result<Box<dyn QueuePair>> {
        let depth = depth.clamp(1, 4096);
        let entries = depth.next_power_of_two();
        let build = |poll: bool| {
            let mut b = IoUring::<squeue::Entry128, cqueue::Entry32>::builder();
            if poll {
                b.setup_iopoll();
            }
            b.build(entries)
        };
        // Polled completions need the kernel's poll queues: try a polled ring with a Flush
        // first, fall back to an interrupt-driven one.
        if !self.shared.no_poll {
            if let Ok(r) = build(true) {
                let mut qp = PassthruQueuePair::new(Arc::clone(&self.shared), r, depth, true);
                if crate::run_one(&mut qp, Op::Flush).is_ok() {
                    return Ok(Box::new(qp));
                }
            }
        }
        Ok(Box::new(PassthruQueuePair::new(
            Arc::clone(&self.shared),
            build(false)?,
            depth,
            false,
        )))
    }

    fn describe(&self) -> String {
        self.shared.path.clone()
    }
}

/// One command in flight: the op (holding its buffer until completion) and how many of its
/// NVMe commands are still out.
struct Slot {
    op: Op,
    tag: u64,
    pending: u32,
    error: Option<Error>,
}

struct PassthruQueuePair {
    shared: Arc<Shared>,
    ring: IoUring<squeue::Entry128, cqueue::Entry32>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    depth: usize,
    polled: bool,
    done: std::collections::VecDeque<Completion>,
}

impl PassthruQueuePair {
    fn new(
        shared: Arc<Shared>,
        ring: IoUring<squeue::Entry128, cqueue::Entry32>,
        depth: u32,
        polled: bool,
    ) -> PassthruQueuePair {
        PassthruQueuePair {
            shared,
            ring,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as usize).rev().collect(),
            depth: depth as usize,
            polled,
            done: std::collections::VecDeque::new(),
        }
    }

    /// The NVMe commands of `op` (one, or several for a long Write Zeroes).
    fn commands(&self, op: &mut Op) -> Vec<NvmeCmd> {
        let nsid = self.shared.nsid;
        let rw = |opcode: u8, lba: u64, buf: &mut DmaBuf, lba_size: u32| NvmeCmd {
            opcode,
            nsid,
            addr: buf.as_mut_ptr() as u64,
            data_len: buf.len() as u32,
            cdw10: lba as u32,
            cdw11: (lba >> 32) as u32,
            cdw12: (buf.len() as u64 / u64::from(lba_size) - 1) as u32,
            ..NvmeCmd::default()
        };
        let lba_size = self.shared.geom.lba_size;
        // Deallocate goes as Write Zeroes with the Deallocate bit: reads return zeroes.
        let deac = if matches!(op, Op::Deallocate { .. }) {
            WZ_DEAC
        } else {
            0
        };
        match op {
            Op::Read { lba, buf } => vec![rw(OP_READ, lba.0, buf, lba_size)],
            Op::Write { lba, buf } => vec![rw(OP_WRITE, lba.0, buf, lba_size)],
            Op::Flush => vec![NvmeCmd {
                opcode: OP_FLUSH,
                nsid,
                ..NvmeCmd::default()
            }],
            Op::WriteZeroes { lba, count } | Op::Deallocate { lba, count } => {
                let mut out = Vec::new();
                let (mut at, end) = (lba.0, lba.0 + *count);
                while at < end {
                    let n = (end - at).min(MAX_ZERO_LBAS);
                    out.push(NvmeCmd {
                        opcode: OP_WRITE_ZEROES,
                        nsid,
                        cdw10: at as u32,
                        cdw11: (at >> 32) as u32,
                        cdw12: (n - 1) as u32 | deac,
                        ..NvmeCmd::default()
                    });
                    at += n;
                }
                out
            }
        }
    }

    fn reap(&mut self) {
        let mut finished = Vec::new();
        for cqe in self.ring.completion() {
            finished.push((cqe.user_data() as usize, cqe.result()));
        }
        for (idx, res) in finished {
            let Some(slot) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if res != 0 && slot.error.is_none() {
                slot.error = Some(if res == -libc::EINTR || res == -libc::EFAULT {
                    // What the kernel's nvme driver returns for a passthrough command it
                    // cancelled (a controller reset, or a timeout): EINTR, and EFAULT from
                    // Debian's 6.1 kernel in the VM tests, where the cancellation runs
                    // outside this process. The buffer is this slot's own and valid until
                    // this completion, so EFAULT cannot be about it.
                    Error::ControllerReset {
                        ctrl: self.shared.path.clone(),
                        reason: format!(
                            "the kernel failed the command with {} (it cancels what the \
                             controller holds when it resets it)",
                            io::Error::from_raw_os_error(-res)
                        ),
                    }
                } else if res < 0 {
                    Error::Io(io::Error::from_raw_os_error(-res))
                } else {
                    // The kernel hands back the NVMe status field (SCT 10:8, SC 7:0, DNR 14).
                    crate::nvme::status_error(res as u16)
                });
            }
            slot.pending -= 1;
            if slot.pending == 0 {
                if let Some(s) = self.slots[idx].take() {
                    self.free.push(idx);
                    self.done.push_back(Completion {
                        tag: s.tag,
                        result: s.error.map_or(Ok(()), Err),
                        buf: s.op.into_buf(),
                    });
                }
            }
        }
    }

    fn in_flight_slots(&self) -> usize {
        self.depth - self.free.len()
    }
}

impl QueuePair for PassthruQueuePair {
    fn submit(&mut self, mut op: Op, tag: u64) -> std::result::Result<(), SubmitError> {
        if let Err(error) = op.validate(&self.shared.geom) {
            return Err(SubmitError { error, op });
        }
        if self.shared.read_only && !matches!(op, Op::Read { .. } | Op::Flush) {
            return Err(SubmitError {
                error: Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{} is opened read-only", self.shared.path),
                )),
                op,
            });
        }
        // The kernel maps the buffer for the device (bouncing what the controller cannot
        // address); the views the blobstore splits a request into are aligned to the LBA
        // size only (512 bytes on a 512-byte namespace), like O_DIRECT requires.
        let align = self.shared.geom.lba_size as usize;
        if let Op::Read { buf, .. } | Op::Write { buf, .. } = &op {
            if !buf.is_aligned_to(align) {
                return Err(SubmitError {
                    error: Error::Misaligned {
                        what: "buffer address",
                        value: (buf.as_slice().as_ptr() as usize % align) as u64,
                        align: align as u64,
                    },
                    op,
                });
            }
        }
        let Some(idx) = self.free.pop() else {
            return Err(SubmitError {
                error: Error::QueueFull,
                op,
            });
        };
        let cmds = self.commands(&mut op);
        // Room in the submission queue for every piece (the ring has at least `depth`
        // entries; long Write Zeroes may need more: hand what is queued to the kernel).
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < cmds.len() {
            let _ = self.ring.submit();
        }
        self.slots[idx] = Some(Slot {
            op,
            tag,
            pending: cmds.len() as u32,
            error: None,
        });
        let fd = types::Fd(self.shared.file.as_raw_fd());
        for c in &cmds {
            let e = opcode::UringCmd80::new(fd, NVME_URING_CMD_IO)
                .cmd(c.bytes())
                .build()
                .user_data(idx as u64);
            // SAFETY: the command's data buffer (addr/data_len) belongs to the op now held
            // in `self.slots[idx]`, which is neither moved out nor dropped until the last
            // completion carrying `user_data == idx` is reaped (`reap`); `Drop` waits for
            // every command in flight. The fd stays open while `self.shared` lives.
            while unsafe { self.ring.submission().push(&e) }.is_err() {
                let _ = self.ring.submit();
                self.reap();
            }
        }
        let _ = self.ring.submit();
        Ok(())
    }

    fn poll(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        if self.polled && self.in_flight_slots() > 0 {
            // Polled rings only make progress when the kernel is entered to poll.
            let _ = self.ring.submit_and_wait(0);
        }
        self.reap();
        let n = max.min(self.done.len());
        out.extend(self.done.drain(..n));
        n
    }

    fn wait(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        loop {
            let n = self.poll(max, out);
            if n > 0 || self.in_flight_slots() == 0 {
                return n;
            }
            let _ = self.ring.submit_and_wait(1);
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight_slots() + self.done.len()
    }

    fn depth(&self) -> usize {
        self.depth
    }
}

impl Drop for PassthruQueuePair {
    fn drop(&mut self) {
        // Buffers of commands in flight must outlive them: wait for every completion.
        let mut tries = 0;
        while self.in_flight_slots() > 0 && tries < 100_000 {
            let _ = self.ring.submit_and_wait(if self.polled { 0 } else { 1 });
            self.reap();
            tries += 1;
        }
        if self.in_flight_slots() > 0 {
            // Never expected: leak the buffers rather than free memory the device writes.
            for s in self.slots.iter_mut().filter_map(Option::take) {
                std::mem::forget(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command as the kernel reads it (`struct nvme_uring_cmd`): field offsets pinned.
    #[test]
    fn uring_cmd_layout() {
        let c = NvmeCmd {
            opcode: OP_WRITE,
            nsid: 7,
            addr: 0x1122_3344_5566_7788,
            data_len: 8192,
            cdw10: 0xaabb_ccdd,
            cdw11: 0x1,
            cdw12: 1,
            ..NvmeCmd::default()
        };
        let b = c.bytes();
        assert_eq!(b[0], 0x01);
        assert_eq!(&b[4..8], &7u32.to_le_bytes());
        assert_eq!(&b[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[36..40], &8192u32.to_le_bytes());
        assert_eq!(&b[40..44], &0xaabb_ccddu32.to_le_bytes());
        assert_eq!(&b[44..48], &1u32.to_le_bytes());
        assert_eq!(&b[48..52], &1u32.to_le_bytes());
        assert!(b[72..].iter().all(|&x| x == 0));
        // _IOWR('N', 0x80, 72 bytes) and _IOWR('N', 0x41, 72 bytes).
        let iowr = |nr: u32| (3u32 << 30) | (72 << 16) | (u32::from(b'N') << 8) | nr;
        assert_eq!(NVME_URING_CMD_IO, iowr(0x80));
        assert_eq!(NVME_IOCTL_ADMIN_CMD as u32, iowr(0x41));
    }

    #[test]
    fn refuses_what_is_not_a_namespace_char_device() {
        let dir = std::env::temp_dir();
        let e =
            PassthruDevice::open(dir.to_str().unwrap(), &PassthruOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not a character device"), "{e}");
        let e = PassthruDevice::open("/dev/null", &PassthruOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not an NVMe namespace"), "{e}");
        assert!(PassthruDevice::open("/nonexistent/ng0n1", &PassthruOptions::default()).is_err());
    }
}
