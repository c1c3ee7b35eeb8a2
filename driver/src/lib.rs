//! Polled NVMe-style block devices.
//!
//! The model is an NVMe namespace driven without interrupts or hidden threads, like SPDK's
//! `spdk_nvme_qpair_process_completions`: a [`Device`] describes the namespace geometry and
//! opens [`QueuePair`]s; a queue pair accepts [`Op`]s with owned, aligned [`DmaBuf`]s and a
//! caller-chosen tag, and hands back [`Completion`]s when the caller polls.
//!
//! # Semantics every backend honours (and every layer above may rely on)
//!
//! 1. **Unordered completion.** Commands in flight on a queue pair (or on different queue
//!    pairs) may execute and complete in any order. Two in-flight writes to the same LBA leave
//!    either value. Callers that need ordering wait for a completion before submitting.
//! 2. **Volatile write cache.** A completed Write, WriteZeroes or Deallocate is visible to
//!    later reads, but may still sit in a volatile cache: a power loss may drop it, or keep it,
//!    until a Flush *submitted after its completion* completes. Only then is it durable.
//! 3. **Atomic write unit.** A write no larger than [`Geometry::atomic_write_lbas`] LBAs
//!    (and not crossing a boundary of that size) is all-or-nothing under power loss. Larger
//!    writes may be torn at that granularity: any subset of their atomic units may persist.
//! 4. **Deallocate and WriteZeroes** both make the range read back as zeroes (this layer
//!    guarantees it on every backend; NVMe devices that do not are driven with WriteZeroes).
//! 5. **Alignment.** Buffers are aligned to [`DMA_ALIGN`]; transfer lengths are a non-zero
//!    multiple of the LBA size and at most [`Geometry::max_transfer`] bytes.
//!
//! `unsafe` code of the project lives in this crate only, each block with a `SAFETY` comment.

mod buf;
mod error;
pub mod fault;
pub mod mem;
mod nvme;
pub mod passthru;
pub mod pci;
mod uri;
pub mod uring;

pub use buf::{DmaBuf, DMA_ALIGN};
pub use error::{Error, Result};
pub use uri::{open_uri, parse_size};

use std::fmt;

/// A logical block address on the device, in units of the device's LBA size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lba(pub u64);

impl fmt::Display for Lba {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lba {}", self.0)
    }
}

/// The shape of a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per logical block (512 or 4096 in practice; a power of two).
    pub lba_size: u32,
    /// Number of logical blocks.
    pub lba_count: u64,
    /// Largest write, in LBAs, that power loss cannot tear.
    pub atomic_write_lbas: u32,
    /// Largest single transfer in bytes.
    pub max_transfer: u32,
}

impl Geometry {
    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.lba_count * u64::from(self.lba_size)
    }
}

/// One command.
#[derive(Debug)]
pub enum Op {
    /// Read `buf.len()` bytes starting at `lba` into `buf`.
    Read { lba: Lba, buf: DmaBuf },
    /// Write `buf.len()` bytes from `buf` starting at `lba`.
    Write { lba: Lba, buf: DmaBuf },
    /// Make every write completed before this was submitted durable.
    Flush,
    /// Release `count` LBAs at `lba`; they read back as zeroes.
    Deallocate { lba: Lba, count: u64 },
    /// Set `count` LBAs at `lba` to zeroes.
    WriteZeroes { lba: Lba, count: u64 },
}

impl Op {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Flush => "flush",
            Op::Deallocate { .. } => "deallocate",
            Op::WriteZeroes { .. } => "write-zeroes",
        }
    }

    /// Whether the op can change what the device holds.
    pub fn is_mutating(&self) -> bool {
        !matches!(self, Op::Read { .. })
    }

    /// Takes the buffer out of the op, if it has one.
    pub fn into_buf(self) -> Option<DmaBuf> {
        match self {
            Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// Checks the op against the geometry: range, alignment, transfer size.
    pub fn validate(&self, geom: &Geometry) -> Result<()> {
        let lba_size = u64::from(geom.lba_size);
        let (lba, count) = match self {
            Op::Read { lba, buf } | Op::Write { lba, buf } => {
                let len = buf.len() as u64;
                if len == 0 || !len.is_multiple_of(lba_size) {
                    return Err(Error::Misaligned {
                        what: "transfer length",
                        value: len,
                        align: lba_size,
                    });
                }
                if len > u64::from(geom.max_transfer) {
                    return Err(Error::TooLarge {
                        len,
                        max: u64::from(geom.max_transfer),
                    });
                }
                (*lba, len / lba_size)
            }
            Op::Flush => return Ok(()),
            Op::Deallocate { lba, count } | Op::WriteZeroes { lba, count } => {
                if *count == 0 {
                    return Err(Error::Misaligned {
                        what: "block count",
                        value: 0,
                        align: 1,
                    });
                }
                (*lba, *count)
            }
        };
        match lba.0.checked_add(count) {
            Some(end) if end <= geom.lba_count => Ok(()),
            _ => Err(Error::OutOfRange {
                lba: lba.0,
                count,
                lba_count: geom.lba_count,
            }),
        }
    }
}

/// What a queue pair hands back for each finished command.
#[derive(Debug)]
pub struct Completion {
    /// The tag given at submission.
    pub tag: u64,
    /// Success or the error of this command.
    pub result: Result<()>,
    /// The buffer of a Read or Write, returned to its owner (also on error).
    pub buf: Option<DmaBuf>,
}

/// A rejected submission: the reason and the op, so the caller gets its buffer back.
#[derive(Debug)]
pub struct SubmitError {
    pub error: Error,
    pub op: Op,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rejected: {}", self.op.name(), self.error)
    }
}

impl std::error::Error for SubmitError {}

/// A namespace: geometry, queue pairs, DMA buffers.
pub trait Device: Send + Sync + fmt::Debug {
    /// The namespace's geometry; fixed for the device's lifetime.
    fn geometry(&self) -> Geometry;

    /// Opens a new queue pair holding at most `depth` commands in flight.
    fn open_qpair(&self, depth: u32) -> Result<Box<dyn QueuePair>>;

    /// A zeroed buffer of `len` bytes suitable for DMA to this device.
    fn alloc_buf(&self, len: usize) -> DmaBuf {
        DmaBuf::zeroed(len)
    }

    /// What this device is, for messages (a path, a URI).
    fn describe(&self) -> String;
}

/// A submission/completion queue pair. Not shared between threads: each thread opens its own.
pub trait QueuePair: Send {
    /// Queues `op`. Fails when the queue is full or the op is invalid, returning the op.
    fn submit(&mut self, op: Op, tag: u64) -> std::result::Result<(), SubmitError>;

    /// Collects up to `max` finished commands into `out`, without blocking for long;
    /// returns how many were added.
    fn poll(&mut self, max: usize, out: &mut Vec<Completion>) -> usize;

    /// Blocks until at least one command finishes (when any is in flight), then collects
    /// up to `max` like [`QueuePair::poll`]. Backends with a kernel wait (io_uring) sleep
    /// here instead of spinning; the default spins with a yield.
    fn wait(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        loop {
            let n = self.poll(max, out);
            if n > 0 || self.in_flight() == 0 {
                return n;
            }
            std::thread::yield_now();
        }
    }

    /// Commands submitted and not yet returned by `poll`.
    fn in_flight(&self) -> usize;

    /// The most commands that may be in flight.
    fn depth(&self) -> usize;
}

/// Runs one op to completion on an otherwise idle queue pair.
///
/// A convenience for simple callers and tests; high-throughput callers keep many ops in
/// flight with [`QueuePair::submit`] and [`QueuePair::poll`].
pub fn run_one(qp: &mut dyn QueuePair, op: Op) -> Result<Option<DmaBuf>> {
    if qp.in_flight() != 0 {
        return Err(Error::Busy);
    }
    qp.submit(op, 0).map_err(|e| e.error)?;
    let mut out = Vec::with_capacity(1);
    loop {
        if qp.wait(1, &mut out) > 0 {
            let c = out.pop().ok_or(Error::Busy)?;
            c.result?;
            return Ok(c.buf);
        }
        if qp.in_flight() == 0 {
            return Err(Error::Lost);
        }
    }
}
