//! Per-thread I/O channels: blob offset -> cluster -> LBA, many requests in flight.
//!
//! A channel owns one queue pair. `submit_read`/`submit_write` translate a request into
//! device commands (one per cluster piece, split at `max_transfer`) and return at once;
//! `poll`/`wait` hand back finished requests. Each part gets a view of the caller's buffer
//! (no copy) and the views are joined again on completion.
//!
//! A write to an unallocated cluster of a thin blob allocates it inside `submit_write`: the
//! data and zeroes for the rest of the cluster are written and waited for, and only then is
//! the mapping queued for the next commit (the ordering rule in `store`). That part of a
//! submit blocks; writes to allocated clusters never do.

use crate::blob::Blob;
use crate::error::{Error, Result};
use crate::format::record::Record;
use crate::meta::{BlobEntry, FLAG_READ_ONLY, FLAG_THIN};
use crate::store::Inner;
use crate::units::ClusterIdx;
use driver::{Completion, DmaBuf, Lba, Op, QueuePair};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A finished request.
#[derive(Debug)]
pub struct IoCompletion {
    /// The caller's tag.
    pub tag: u64,
    pub result: Result<()>,
    /// The caller's buffer (holding the data, for reads).
    pub buf: DmaBuf,
}

struct Req {
    tag: u64,
    write: bool,
    blocking: bool,
    parts: Vec<Option<DmaBuf>>,
    /// Parts in flight, plus one while the request is still being submitted.
    outstanding: u32,
    error: Option<Error>,
}

/// Slot number marking internal commands (zero fill) in driver tags.
const INTERNAL: u64 = u32::MAX as u64;
/// Slot number of the internal read of a parent's cluster (copy-on-write).
const INTERNAL_READ: u64 = INTERNAL - 1;

/// An I/O channel; use one per thread.
pub struct IoChannel {
    inner: Arc<Inner>,
    qp: Box<dyn QueuePair>,
    reqs: Vec<Option<Req>>,
    free: Vec<usize>,
    ready: VecDeque<(bool, IoCompletion)>,
    scratch: Vec<Completion>,
    internal_outstanding: usize,
    internal_error: Option<driver::Error>,
    /// Allocating writes queue their mapping for a checked commit (`set_checked_mapping`).
    checked_mapping: bool,
    /// The finished internal read of a parent's cluster (copy-on-write).
    cow_read: Option<std::result::Result<DmaBuf, driver::Error>>,
}

impl fmt::Debug for IoChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoChannel")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// A piece of a request inside one cluster.
struct Piece {
    /// Blob cluster index.
    idx: u64,
    /// Byte offset inside the cluster.
    within: u64,
    len: u64,
}

impl IoChannel {
    pub(crate) fn new(inner: Arc<Inner>) -> Result<IoChannel> {
        let qp = inner.dev.open_qpair(inner.opts.queue_depth)?;
        Ok(IoChannel {
            inner,
            qp,
            reqs: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            scratch: Vec::new(),
            internal_outstanding: 0,
            internal_error: None,
            checked_mapping: false,
            cow_read: None,
        })
    }

    /// Checked-mapping mode: a write that allocates a cluster queues its mapping for a
    /// *checked* commit instead of an ordered one, on stores with data checks. The caller
    /// must then queue, in the commit that takes the mapping, `DataCheck`s covering every
    /// byte of the cluster (its data and the zeroes around it, as `data_crc` of the whole
    /// cluster) through `Blob::set_xattr_ns_checked`; a commit that takes the mapping
    /// without them goes the ordered way (pre-flush), so forgetting is slow, not unsafe.
    /// Best used by the commit leader (`Blobstore::sync_overlapped`), so that the mapping
    /// and its checks meet in one group. Off by default.
    pub fn set_checked_mapping(&mut self, on: bool) {
        self.checked_mapping = on;
    }

    /// Requests submitted and not yet returned by `poll`/`wait`.
    pub fn in_flight(&self) -> usize {
        self.reqs.iter().filter(|r| r.is_some()).count() + self.ready.len()
    }

    fn check_range(&self, blob: &BlobEntry, offset: u64, len: u64) -> Result<u64> {
        let unit = self.inner.lba_size;
        if len == 0 || !offset.is_multiple_of(unit) || !len.is_multiple_of(unit) {
            return Err(Error::Invalid(format!(
                "offset {offset} / length {len} not a non-zero multiple of the I/O unit {unit}"
            )));
        }
        let size = blob.meta.read().clusters.len() as u64 * self.inner.cluster_size;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(size),
            _ => Err(Error::Invalid(format!(
                "blob {}: range {offset}+{len} beyond its size {size}",
                blob.id
            ))),
        }
    }

    fn pieces(&self, offset: u64, len: u64) -> Vec<Piece> {
        let cs = self.inner.cluster_size;
        let max = u64::from(self.inner.geom.max_transfer);
        let mut out = Vec::new();
        let mut off = offset;
        let end = offset + len;
        while off < end {
            let within = off % cs;
            let n = (cs - within).min(end - off).min(max);
            out.push(Piece {
                idx: off / cs,
                within,
                len: n,
            });
            off += n;
        }
        out
    }

    fn new_slot(&mut self, req: Req) -> usize {
        match self.free.pop() {
            Some(s) => {
                self.reqs[s] = Some(req);
                s
            }
            None => {
                self.reqs.push(Some(req));
                self.reqs.len() - 1
            }
        }
    }

    fn lba_of(&self, cluster: ClusterIdx, within: u64) -> Lba {
        Lba((cluster.0 * self.inner.cluster_size + within) / self.inner.lba_size)
    }

    /// Starts a read of `buf.len()` bytes at `offset` of `blob` into `buf`.
    pub fn submit_read(
        &mut self,
        blob: &Blob,
        offset: u64,
        buf: DmaBuf,
        tag: u64,
    ) -> std::result::Result<(), (Error, DmaBuf)> {
        self.submit(blob, offset, buf, tag, false, false)
    }

    /// Starts a write of `buf` at `offset` of `blob`.
    pub fn submit_write(
        &mut self,
        blob: &Blob,
        offset: u64,
        buf: DmaBuf,
        tag: u64,
    ) -> std::result::Result<(), (Error, DmaBuf)> {
        self.submit(blob, offset, buf, tag, true, false)
    }

    fn submit(
        &mut self,
        blob: &Blob,
        offset: u64,
        mut buf: DmaBuf,
        tag: u64,
        write: bool,
        blocking: bool,
    ) -> std::result::Result<(), (Error, DmaBuf)> {
        let entry = Arc::clone(blob.entry());
        if let Err(e) = self.check_range(&entry, offset, buf.len() as u64) {
            return Err((e, buf));
        }
        if write {
            if let Err(e) = self.inner.check_writable() {
                return Err((e, buf));
            }
            if entry.meta.read().flags & FLAG_READ_ONLY != 0 {
                return Err((
                    Error::ReadOnly(format!("blob {} is read-only", entry.id)),
                    buf,
                ));
            }
        }
        let pieces = self.pieces(offset, buf.len() as u64);
        // Cut the buffer into one view per piece.
        let mut views = Vec::with_capacity(pieces.len());
        for p in pieces.iter().rev() {
            let at = buf.len() - p.len as usize;
            views.push(buf.split_off(at));
        }
        views.reverse();
        drop(buf);
        let slot = self.new_slot(Req {
            tag,
            write,
            blocking,
            parts: (0..pieces.len()).map(|_| None).collect(),
            outstanding: 1,
            error: None,
        });
        for (i, (p, mut view)) in pieces.into_iter().zip(views).enumerate() {
            let cluster = entry
                .meta
                .read()
                .clusters
                .get(p.idx as usize)
                .copied()
                .unwrap_or(ClusterIdx::NONE);
            let dtag = ((slot as u64) << 32) | i as u64;
            if cluster.is_some() {
                let lba = self.lba_of(cluster, p.within);
                let op = if write {
                    Op::Write { lba, buf: view }
                } else {
                    Op::Read { lba, buf: view }
                };
                self.submit_part(slot, i, op, dtag);
            } else if !write {
                // Not allocated here: a clone reads its ancestors' cluster, others zeroes.
                match entry.resolve(p.idx) {
                    Some(c) => {
                        let lba = self.lba_of(c, p.within);
                        self.submit_part(slot, i, Op::Read { lba, buf: view }, dtag);
                    }
                    None => {
                        view.as_mut_slice().fill(0);
                        self.part_done(slot, i, Some(view), None);
                    }
                }
            } else {
                self.allocating_write(&entry, slot, i, &p, view, dtag);
            }
        }
        self.release_guard(slot);
        Ok(())
    }

    /// Submits one part, reaping completions while the queue is full.
    fn submit_part(&mut self, slot: usize, part: usize, op: Op, dtag: u64) {
        let mut op = op;
        loop {
            match self.qp.submit(op, dtag) {
                Ok(()) => {
                    if let Some(r) = self.reqs[slot].as_mut() {
                        r.outstanding += 1;
                    }
                    return;
                }
                Err(e) if matches!(e.error, driver::Error::QueueFull) => {
                    op = e.op;
                    self.reap(true);
                }
                Err(e) => {
                    let buf = e.op.into_buf();
                    self.part_done(slot, part, buf, Some(Error::Io(e.error)));
                    return;
                }
            }
        }
    }

    fn submit_internal(&mut self, op: Op) {
        let mut op = op;
        loop {
            match self.qp.submit(op, INTERNAL << 32) {
                Ok(()) => {
                    self.internal_outstanding += 1;
                    return;
                }
                Err(e) if matches!(e.error, driver::Error::QueueFull) => {
                    op = e.op;
                    self.reap(true);
                }
                Err(e) => {
                    self.internal_error.get_or_insert(e.error);
                    return;
                }
            }
        }
    }

    /// Records a finished part (without touching `outstanding`).
    fn part_done(&mut self, slot: usize, part: usize, buf: Option<DmaBuf>, err: Option<Error>) {
        if let Some(r) = self.reqs[slot].as_mut() {
            r.parts[part] = Some(buf.unwrap_or_else(|| DmaBuf::zeroed(0)));
            if let Some(e) = err {
                r.error.get_or_insert(e);
            }
        }
    }

    fn release_guard(&mut self, slot: usize) {
        let done = match self.reqs[slot].as_mut() {
            Some(r) => {
                r.outstanding -= 1;
                r.outstanding == 0
            }
            None => false,
        };
        if done {
            self.finish(slot);
        }
    }

    fn finish(&mut self, slot: usize) {
        let Some(mut r) = self.reqs[slot].take() else {
            return;
        };
        self.free.push(slot);
        let mut parts = r
            .parts
            .drain(..)
            .map(|p| p.unwrap_or_else(|| DmaBuf::zeroed(0)));
        let mut buf = parts.next().unwrap_or_else(|| DmaBuf::zeroed(0));
        for p in parts {
            if let Err(p) = buf.unsplit(p) {
                // Not adjacent (cannot happen with our own splits): copy instead.
                let mut joined = DmaBuf::zeroed(buf.len() + p.len());
                joined.as_mut_slice()[..buf.len()].copy_from_slice(buf.as_slice());
                joined.as_mut_slice()[buf.len()..].copy_from_slice(p.as_slice());
                buf = joined;
            }
        }
        let result = match r.error {
            Some(e) => Err(e),
            None => Ok(()),
        };
        self.ready.push_back((
            r.blocking,
            IoCompletion {
                tag: r.tag,
                result,
                buf,
            },
        ));
    }

    /// Collects device completions and routes them to their requests.
    fn reap(&mut self, block: bool) {
        let mut cs = std::mem::take(&mut self.scratch);
        if block {
            self.qp.wait(64, &mut cs);
        } else {
            self.qp.poll(64, &mut cs);
        }
        for c in cs.drain(..) {
            let slot = c.tag >> 32;
            let part = (c.tag & 0xffff_ffff) as usize;
            if slot == INTERNAL_READ {
                self.internal_outstanding -= 1;
                self.cow_read = Some(match c.result {
                    Ok(()) => Ok(c.buf.unwrap_or_else(|| DmaBuf::zeroed(0))),
                    Err(e) => Err(e),
                });
                continue;
            }
            if slot == INTERNAL {
                self.internal_outstanding -= 1;
                match c.result {
                    Ok(()) => {
                        self.inner.data_writes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        self.internal_error.get_or_insert(e);
                    }
                }
                continue;
            }
            let slot = slot as usize;
            let write = self.reqs[slot].as_ref().is_some_and(|r| r.write);
            let err = match c.result {
                Ok(()) => {
                    if write {
                        self.inner.data_writes.fetch_add(1, Ordering::SeqCst);
                    }
                    None
                }
                Err(e) => Some(Error::Io(e)),
            };
            self.part_done(slot, part, c.buf, err);
            self.release_guard(slot);
        }
        self.scratch = cs;
    }

    /// Reads device cluster `c` whole, waiting for it (other requests stay in flight).
    fn read_cluster(&mut self, c: ClusterIdx) -> std::result::Result<DmaBuf, driver::Error> {
        self.cow_read = None;
        let op = Op::Read {
            lba: self.lba_of(c, 0),
            buf: DmaBuf::zeroed(self.inner.cluster_size as usize),
        };
        self.read_cluster_op(op)
    }

    fn read_cluster_op(&mut self, op: Op) -> std::result::Result<DmaBuf, driver::Error> {
        let mut op = op;
        loop {
            match self.qp.submit(op, INTERNAL_READ << 32) {
                Ok(()) => {
                    self.internal_outstanding += 1;
                    return self.wait_cow_read();
                }
                Err(e) if matches!(e.error, driver::Error::QueueFull) => {
                    op = e.op;
                    self.reap(true);
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    fn wait_cow_read(&mut self) -> std::result::Result<DmaBuf, driver::Error> {
        loop {
            if let Some(r) = self.cow_read.take() {
                return r;
            }
            self.reap(true);
        }
    }

    /// First write to an unallocated cluster: allocate, write data and zeroes (or, in a
    /// clone, the parent's cluster with the data laid over it), wait, then queue the mapping.
    fn allocating_write(
        &mut self,
        entry: &Arc<BlobEntry>,
        slot: usize,
        part: usize,
        p: &Piece,
        view: DmaBuf,
        dtag: u64,
    ) {
        let _alloc = entry.alloc_lock.lock();
        let current = entry.meta.read().clusters.get(p.idx as usize).copied();
        match current {
            None => {
                let e = Error::Invalid(format!("blob {} shrank under a write", entry.id));
                self.part_done(slot, part, Some(view), Some(e));
                return;
            }
            Some(c) if c.is_some() => {
                // Another thread allocated it meanwhile.
                let lba = self.lba_of(c, p.within);
                self.submit_part(slot, part, Op::Write { lba, buf: view }, dtag);
                return;
            }
            Some(_) => {}
        }
        let cluster = {
            let mut st = self.inner.state.lock();
            match self.inner.alloc_data(&mut st) {
                Ok(c) => c,
                Err(e) => {
                    drop(st);
                    self.part_done(slot, part, Some(view), Some(e));
                    return;
                }
            }
        };
        self.internal_error = None;
        let unit = self.inner.lba_size;
        let cs = self.inner.cluster_size;
        let lba = self.lba_of(cluster, p.within);
        // Copy-on-write: a clone whose ancestors hold this cluster index gets their cluster
        // with the new data laid over it (unless the write covers the whole cluster).
        let source = if p.within == 0 && p.len == cs {
            None
        } else {
            entry.resolve(p.idx)
        };
        if let Some(src) = source {
            match self.read_cluster(src) {
                Ok(mut whole) => {
                    let a = p.within as usize;
                    whole.as_mut_slice()[a..a + view.len()].copy_from_slice(view.as_slice());
                    self.submit_internal(Op::Write {
                        lba: self.lba_of(cluster, 0),
                        buf: whole,
                    });
                    self.part_done(slot, part, Some(view), None);
                }
                Err(e) => {
                    self.part_done(slot, part, Some(view), Some(Error::Io(e)));
                    self.inner.state.lock().alloc.release(cluster);
                    return;
                }
            }
        } else {
            // Outstanding is bumped by submit_part; the guard keeps the request alive.
            self.submit_part(slot, part, Op::Write { lba, buf: view }, dtag);
        }
        // The rest of the cluster must read zeroes: Deallocate guarantees that (driver
        // rule 4) and keeps image files sparse, where WriteZeroes would reserve the space.
        if source.is_none() && p.within > 0 {
            self.submit_internal(Op::Deallocate {
                lba: self.lba_of(cluster, 0),
                count: p.within / unit,
            });
        }
        let end = p.within + p.len;
        if source.is_none() && end < cs {
            self.submit_internal(Op::Deallocate {
                lba: self.lba_of(cluster, end),
                count: (cs - end) / unit,
            });
        }
        loop {
            let part_done = self.reqs[slot]
                .as_ref()
                .is_none_or(|r| r.parts[part].is_some());
            if part_done && self.internal_outstanding == 0 {
                break;
            }
            self.reap(true);
        }
        let failed = self.reqs[slot].as_ref().is_none_or(|r| r.error.is_some())
            || self.internal_error.is_some();
        let mut st = self.inner.state.lock();
        if let Some(e) = self.internal_error.take() {
            if let Some(r) = self.reqs[slot].as_mut() {
                r.error.get_or_insert(Error::Io(e));
            }
        }
        let still_wanted = !failed
            && !entry.deleted.load(Ordering::SeqCst)
            && entry
                .meta
                .read()
                .clusters
                .get(p.idx as usize)
                .is_some_and(|c| !c.is_some());
        if still_wanted {
            let rec = Record::MapRun {
                id: entry.id,
                index: p.idx,
                first: cluster,
                count: 1,
            };
            // A copied cluster holds the parent's bytes, which no caller's check describes.
            let applied = if self.checked_mapping && source.is_none() && self.inner.data_checks() {
                self.inner.apply_checked_map(&mut st, rec)
            } else {
                self.inner.apply_locked(&mut st, vec![rec])
            };
            if let Err(e) = applied {
                st.alloc.release(cluster);
                if let Some(r) = self.reqs[slot].as_mut() {
                    r.error.get_or_insert(e);
                }
            }
        } else {
            // Never exposed by any record: the cluster is free again at once.
            st.alloc.release(cluster);
        }
    }

    /// Collects finished requests without blocking; returns how many were added.
    pub fn poll(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        self.reap(false);
        self.drain_ready(out)
    }

    /// Blocks until at least one request finishes (if any is in flight), then collects.
    pub fn wait(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        loop {
            self.reap(false);
            let n = self.drain_ready(out);
            if n > 0
                || self
                    .reqs
                    .iter()
                    .all(|r| r.is_none() || r.as_ref().is_some_and(|r| r.blocking))
            {
                return n;
            }
            self.reap(true);
        }
    }

    fn drain_ready(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        let before = out.len();
        let mut keep = VecDeque::new();
        while let Some((blocking, c)) = self.ready.pop_front() {
            if blocking {
                keep.push_back((blocking, c));
            } else {
                out.push(c);
            }
        }
        self.ready = keep;
        out.len() - before
    }

    /// Runs one request to completion, leaving other requests in flight undisturbed.
    pub(crate) fn run(
        &mut self,
        blob: &Blob,
        offset: u64,
        buf: DmaBuf,
        write: bool,
    ) -> Result<DmaBuf> {
        // A tag unique among blocking requests of this channel (only one runs at a time).
        let tag = u64::MAX;
        self.submit(blob, offset, buf, tag, write, true)
            .map_err(|(e, _)| e)?;
        loop {
            if let Some(pos) = self.ready.iter().position(|(b, c)| *b && c.tag == tag) {
                let (_, c) = self
                    .ready
                    .remove(pos)
                    .ok_or(Error::Invalid("lost completion".into()))?;
                c.result?;
                return Ok(c.buf);
            }
            self.reap(true);
        }
    }

    /// Zeroes `[offset, offset+len)` of `blob`: whole clusters of thin blobs are released
    /// (they read zeroes again), the rest is zeroed on the device. With `dealloc` the device
    /// ranges are deallocated rather than written.
    pub(crate) fn zero_range(
        &mut self,
        blob: &Blob,
        offset: u64,
        len: u64,
        dealloc: bool,
    ) -> Result<()> {
        let entry = Arc::clone(blob.entry());
        self.check_range(&entry, offset, len)?;
        self.inner.check_writable()?;
        let (flags, map, through) = {
            let m = entry.meta.read();
            let through = if m.parent.0 != 0 { m.through } else { 0 };
            (m.flags, m.clusters.clone(), through)
        };
        if flags & FLAG_READ_ONLY != 0 {
            return Err(Error::ReadOnly(format!("blob {} is read-only", entry.id)));
        }
        let cs = self.inner.cluster_size;
        let unit = self.inner.lba_size;
        let mut release: Vec<u64> = Vec::new();
        self.internal_error = None;
        // Pieces of a clone that read an ancestor's data: zeroed by writing zeroes (which
        // allocates and copies-on-write like any write).
        let mut cow_zero: Vec<(u64, u64)> = Vec::new();
        for p in self.pieces(offset, len) {
            let c = map.get(p.idx as usize).copied().unwrap_or(ClusterIdx::NONE);
            let shared = p.idx < through;
            if !c.is_some() {
                if shared && entry.resolve(p.idx).is_some() {
                    cow_zero.push((p.idx * cs + p.within, p.len));
                }
                continue;
            }
            // Releasing a clone's cluster would expose its parent's data again.
            if p.within == 0 && p.len == cs && flags & FLAG_THIN != 0 && !shared {
                release.push(p.idx);
                continue;
            }
            let lba = self.lba_of(c, p.within);
            let count = p.len / unit;
            self.submit_internal(if dealloc {
                Op::Deallocate { lba, count }
            } else {
                Op::WriteZeroes { lba, count }
            });
        }
        while self.internal_outstanding > 0 {
            self.reap(true);
        }
        if let Some(e) = self.internal_error.take() {
            return Err(Error::Io(e));
        }
        for (off, n) in cow_zero {
            self.run(blob, off, DmaBuf::zeroed(n as usize), true)?;
        }
        if release.is_empty() {
            return Ok(());
        }
        let recs: Vec<Record> = release
            .iter()
            .map(|&idx| Record::MapRun {
                id: entry.id,
                index: idx,
                first: ClusterIdx::NONE,
                count: 1,
            })
            .collect();
        let mut st = self.inner.state.lock();
        self.inner.apply_locked(&mut st, recs)
    }
}

impl Drop for IoChannel {
    fn drop(&mut self) {
        // Buffers in flight are owned by the queue pair, which waits for them on drop.
    }
}
