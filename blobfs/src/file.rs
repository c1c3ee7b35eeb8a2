//! File data: dirty pages (write-back), read-ahead, truncate, and the invariant that keeps
//! a crash from exposing bytes that were never written.
//!
//! Invariant: on the device, every byte of a file's allocated clusters beyond its size is
//! zero, except bytes written by the file itself after its last committed size (which a
//! crash can leave). So whenever the size grows, the bytes between the old size and the
//! new data are zeroed first; a page loaded from the device is cleared beyond the size.
//! And the inode record (with the size) is only queued for commit after the data it covers
//! was written back, so the commit's flush makes that data durable before the size.

use crate::cache::Page;
use crate::error::{Error, Result};
use crate::fs::{Inner, Inode, InodeState, PAGE};
use crate::inode::{Kind, Time, KEY_INODE};
use blobstore::XattrNs;
use driver::DmaBuf;
use std::collections::btree_map::Entry;
use std::sync::atomic::Ordering;

/// Pages written back in one device write at most.
const RUN_PAGES: u64 = 256;

/// Reads of this size or more get no read-ahead (in sequential FUSE reads of 1 MiB, the
/// kernel reading ahead in requests of up to 1 MiB, reading another megabyte ahead before
/// replying cost a third of the throughput), and what they read from the device is not
/// cached (a scan must not push out the pages of small reads).
const RA_BIG_READ: u64 = 128 * 1024;

/// Bytes of a full run.
const RUN_BYTES: usize = (RUN_PAGES * PAGE) as usize;
/// Full-run write-back buffers kept for reuse (16 MiB).
const POOL_MAX: usize = 16;

/// The file's dirty pages inside the blob as runs of consecutive pages (first index, page
/// indexes), each at most `RUN_PAGES` long: one device write each.
pub(crate) fn dirty_runs(st: &InodeState, blob_size: u64) -> Vec<(u64, Vec<u64>)> {
    let mut runs: Vec<(u64, Vec<u64>)> = Vec::new();
    for &idx in st.pages.keys() {
        if idx * PAGE >= blob_size {
            continue;
        }
        match runs.last_mut() {
            Some((start, pages))
                if *start + pages.len() as u64 == idx && (pages.len() as u64) < RUN_PAGES =>
            {
                pages.push(idx)
            }
            _ => runs.push((idx, vec![idx])),
        }
    }
    runs
}

/// Where a read puts its bytes, in order.
trait ReadSink {
    fn reserve(&mut self, n: usize);
    fn put(&mut self, bytes: &[u8]);
    fn zeroes(&mut self, n: usize);
}

impl ReadSink for Vec<u8> {
    fn reserve(&mut self, n: usize) {
        Vec::reserve(self, n);
    }
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn zeroes(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}

/// A caller's buffer, filled from the start (a read never yields more than its length).
struct SliceSink<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl ReadSink for SliceSink<'_> {
    fn reserve(&mut self, _n: usize) {}
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
    fn zeroes(&mut self, n: usize) {
        self.buf[self.at..self.at + n].fill(0);
        self.at += n;
    }
}

/// I/O buffers of full runs, reused: a fresh aligned megabyte for every run (allocated,
/// zeroed, faulted in) cost about a quarter of the FUSE server's CPU time in sequential
/// writes. Every byte of a reused buffer is overwritten before use: by the pages written
/// back, or by the device (or the zeroes of an unallocated cluster) in a read.
#[derive(Default)]
pub(crate) struct BufPool(parking_lot::Mutex<Vec<DmaBuf>>);

impl BufPool {
    fn take(&self, len: usize) -> DmaBuf {
        if len == RUN_BYTES {
            if let Some(b) = self.0.lock().pop() {
                return b;
            }
        }
        DmaBuf::zeroed(len)
    }

    fn give(&self, b: DmaBuf) {
        if b.len() == RUN_BYTES {
            let mut pool = self.0.lock();
            if pool.len() < POOL_MAX {
                pool.push(b);
            }
        }
    }
}

/// Dirty-page buffers kept for reuse: one file's write-back limit (16 MiB) by default.
const PAGE_POOL_MAX: usize = 4096;

/// Buffers of dirty pages, reused: freeing the 4,096 pages of a written-back file gave
/// the memory back to the system and the next 16 MiB of writes faulted it in again
/// (page faults and page clearing were a fifth of the server's CPU time in sequential
/// writes). A page taken from here is always overwritten in full before use.
#[derive(Default)]
pub(crate) struct PagePool(parking_lot::Mutex<Vec<Box<[u8]>>>);

impl PagePool {
    /// A page holding a copy of `data` (one page long).
    fn copy_of(&self, data: &[u8]) -> Box<[u8]> {
        match self.0.lock().pop() {
            Some(mut p) => {
                p.copy_from_slice(data);
                p
            }
            None => Box::from(data),
        }
    }

    fn give(&self, pages: impl Iterator<Item = Box<[u8]>>) {
        let mut pool = self.0.lock();
        for p in pages {
            if pool.len() >= PAGE_POOL_MAX {
                break;
            }
            if p.len() == PAGE as usize {
                pool.push(p);
            }
        }
    }
}

/// Called once, right before an operation first waits for the device (a FUSE server hands
/// its request thread over to another then).
pub(crate) struct BeforeIo<'a>(Option<&'a mut dyn FnMut()>);

impl<'a> BeforeIo<'a> {
    pub(crate) fn new(f: &'a mut dyn FnMut()) -> BeforeIo<'a> {
        BeforeIo(Some(f))
    }

    pub(crate) fn none() -> BeforeIo<'static> {
        BeforeIo(None)
    }

    fn fire(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Inner {
    /// Blob clusters needed for `size` bytes.
    fn clusters_for(&self, size: u64) -> u64 {
        size.div_ceil(self.cluster_size)
    }

    /// Grows the blob so `end` bytes fit (thin: metadata only).
    fn ensure_clusters(&self, inode: &Inode, end: u64) -> Result<()> {
        let need = self.clusters_for(end);
        if inode.blob.num_clusters() < need {
            inode.blob.resize(need)?;
        }
        Ok(())
    }

    /// Reads one page of the file from the device, cleared beyond `size`.
    fn load_page(
        &self,
        inode: &Inode,
        idx: u64,
        size: u64,
        io: &mut BeforeIo<'_>,
    ) -> Result<Box<[u8]>> {
        let start = idx * PAGE;
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        if start >= size || start >= inode.blob.size() {
            return Ok(page);
        }
        io.fire();
        let len = PAGE.min(inode.blob.size() - start);
        let buf = self.with_channel(|ch| {
            Ok(inode
                .blob
                .read_buf(ch, start, DmaBuf::zeroed(len as usize))?)
        })?;
        page[..len as usize].copy_from_slice(buf.as_slice());
        let valid = (size - start).min(PAGE) as usize;
        page[valid..].fill(0);
        Ok(page)
    }

    /// The dirty page `idx`, loading it (read-modify-write) if needed.
    fn page_mut<'a>(
        &self,
        inode: &Inode,
        st: &'a mut InodeState,
        idx: u64,
        whole: bool,
        io: &mut BeforeIo<'_>,
    ) -> Result<&'a mut [u8]> {
        if !st.pages.contains_key(&idx) {
            let page = if whole {
                vec![0u8; PAGE as usize].into_boxed_slice()
            } else {
                self.load_page(inode, idx, st.attr.size, io)?
            };
            st.pages.insert(idx, page);
            self.dirty_bytes.fetch_add(PAGE, Ordering::SeqCst);
        }
        st.pages
            .get_mut(&idx)
            .map(|p| &mut p[..])
            .ok_or_else(|| Error::Invalid("page vanished".into()))
    }

    /// Zeroes the file's bytes in `[from, to)` (both beyond the current size), on the device
    /// and in cached pages, so a growing size never exposes old bytes.
    fn zero_gap(
        &self,
        inode: &Inode,
        st: &mut InodeState,
        from: u64,
        to: u64,
        io: &mut BeforeIo<'_>,
    ) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        st.cache_gen = self.cache.new_generation();
        st.data_version += 1;
        // The partial page at `from`: cleared in the cache (and written back later).
        if !from.is_multiple_of(PAGE) {
            let idx = from / PAGE;
            let page = self.page_mut(inode, st, idx, false, io)?;
            let a = (from % PAGE) as usize;
            let b = ((to - idx * PAGE).min(PAGE)) as usize;
            page[a..b].fill(0);
        }
        // Whole pages in between: zero them where the blob has clusters.
        let first = from.div_ceil(PAGE) * PAGE;
        // (A partial last page is zeroed whole: its bytes past `to` are past the end.)
        let last = (to.div_ceil(PAGE) * PAGE).min(inode.blob.size());
        if first < last {
            for idx in first / PAGE..last / PAGE {
                if let Some(p) = st.pages.get_mut(&idx) {
                    p.fill(0);
                }
            }
            io.fire();
            self.with_channel(|ch| Ok(inode.blob.write_zeroes(ch, first, last - first)?))?;
        }
        Ok(())
    }

    pub(crate) fn write(
        &self,
        inode: &Inode,
        offset: u64,
        data: &[u8],
        io: &mut BeforeIo<'_>,
    ) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.max_size)
            .ok_or(Error::FileTooBig)?;
        let mut st = inode.st.lock();
        match st.attr.kind() {
            Kind::File => {}
            Kind::Dir => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("write to a special file".into())),
        }
        if st.unlinked && inode.pins.load(Ordering::SeqCst) == 0 {
            return Err(Error::NotFound);
        }
        let size = st.attr.size;
        // Before anything changes: bytes a checked record vouched for must stay as they are
        // until a later group is durable (appends never touch them).
        self.confirm_before_change(&mut st, offset, end)?;
        st.tail = match st.tail {
            Some((from, crc)) if offset == size => {
                Some((from, blobstore::data_crc_append(crc, data)))
            }
            // Below the appended range: those bytes are not vouched for by the next record.
            Some(t) if end <= t.0 => Some(t),
            _ => None,
        };
        st.data_version += 1;
        for idx in offset / PAGE..=(end - 1) / PAGE {
            self.cache.remove(inode.ino, st.cache_gen, idx);
        }
        if offset > size {
            self.zero_gap(inode, &mut st, size, offset, io)?;
        }
        self.ensure_clusters(inode, end)?;
        let mut pos = offset;
        let mut src = data;
        while !src.is_empty() {
            let idx = pos / PAGE;
            let a = (pos % PAGE) as usize;
            let n = (PAGE as usize - a).min(src.len());
            if n == PAGE as usize {
                // A whole page: no need to read or zero it first.
                match st.pages.entry(idx) {
                    Entry::Vacant(v) => {
                        v.insert(self.page_pool.copy_of(&src[..n]));
                        self.dirty_bytes.fetch_add(PAGE, Ordering::SeqCst);
                    }
                    Entry::Occupied(mut o) => o.get_mut().copy_from_slice(&src[..n]),
                }
            } else {
                let page = self.page_mut(inode, &mut st, idx, false, io)?;
                page[a..a + n].copy_from_slice(&src[..n]);
            }
            pos += n as u64;
            src = &src[n..];
        }
        let now = Time::now();
        st.attr.size = st.attr.size.max(end);
        st.attr.mtime = now;
        st.attr.ctime = now;
        st.attr_dirty = true;
        let file_dirty = st.pages.len() as u64 * PAGE;
        if file_dirty >= self.opts.file_dirty_limit
            || self.dirty_bytes.load(Ordering::SeqCst) >= self.opts.dirty_limit
        {
            io.fire();
            self.write_back(inode, &mut st)?;
        }
        Ok(data.len())
    }

    /// Writes the file's dirty pages to its blob (not committed: no flush, no record).
    pub(crate) fn write_back(&self, inode: &Inode, st: &mut InodeState) -> Result<()> {
        if st.pages.is_empty() {
            return Ok(());
        }
        let blob_size = inode.blob.size();
        let runs = dirty_runs(st, blob_size);
        self.with_channel(|ch| {
            let submitted = self.submit_runs(ch, inode, st, &runs, blob_size);
            let reaped = self.reap_writes(ch);
            submitted.and(reaped)
        })?;
        self.written_back(inode, st, blob_size);
        Ok(())
    }

    /// Submits one write per run of dirty pages (copied into I/O buffers: the pages stay
    /// free to change) without waiting for them; stops at the first refused submission.
    pub(crate) fn submit_runs(
        &self,
        ch: &mut blobstore::IoChannel,
        inode: &Inode,
        st: &InodeState,
        runs: &[(u64, Vec<u64>)],
        blob_size: u64,
    ) -> Result<()> {
        let mut out = Vec::new();
        let mut res = Ok(());
        for (tag, (start, idxs)) in runs.iter().enumerate() {
            let off = start * PAGE;
            let len = (idxs.len() as u64 * PAGE).min(blob_size - off);
            let mut buf = self.io_bufs.take(len as usize);
            for (i, idx) in idxs.iter().enumerate() {
                let a = i * PAGE as usize;
                let b = (a + PAGE as usize).min(len as usize);
                if let Some(p) = st.pages.get(idx) {
                    buf.as_mut_slice()[a..b].copy_from_slice(&p[..b - a]);
                }
            }
            if let Err((e, buf)) = ch.submit_write(&inode.blob, off, buf, tag as u64) {
                self.io_bufs.give(buf);
                res = Err(Error::from(e));
                break;
            }
            while ch.in_flight() >= 32 {
                ch.wait(&mut out);
            }
        }
        // Completions collected while submitting: their results still count.
        for c in out {
            if let Err(e) = c.result {
                if res.is_ok() {
                    res = Err(Error::from(e));
                }
            }
            self.io_bufs.give(c.buf);
        }
        res
    }

    /// Waits for every write in flight on `ch`; returns the first error.
    pub(crate) fn reap_writes(&self, ch: &mut blobstore::IoChannel) -> Result<()> {
        self.reap_writes_raw(ch).map_err(Error::from)
    }

    /// `reap_writes` with the blobstore's error (for `Blobstore::sync_overlapped`).
    pub(crate) fn reap_writes_raw(&self, ch: &mut blobstore::IoChannel) -> blobstore::Result<()> {
        let mut out = Vec::new();
        while ch.in_flight() > 0 {
            ch.wait(&mut out);
        }
        let mut first_err = None;
        for c in out {
            if let Err(e) = c.result {
                first_err.get_or_insert(e);
            }
            self.io_bufs.give(c.buf);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// After the dirty pages' writes completed: they are clean (cached if the options say
    /// so) and no longer count as dirty.
    pub(crate) fn written_back(&self, inode: &Inode, st: &mut InodeState, blob_size: u64) {
        let n = st.pages.len() as u64 * PAGE;
        let pages = std::mem::take(&mut st.pages);
        if self.opts.cache_written {
            // Now clean: readable from memory (under the lock, with the current generation,
            // so no stale page can be put: the next change removes or orphans these).
            for (idx, p) in &pages {
                if idx * PAGE < blob_size {
                    let len = PAGE.min(blob_size - idx * PAGE) as usize;
                    self.cache
                        .put(inode.ino, st.cache_gen, *idx, Page::from(&p[..len]));
                }
            }
        }
        self.page_pool.give(pages.into_values());
        let _ = self
            .dirty_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                Some(d.saturating_sub(n))
            });
    }

    /// Truncates or extends the file to `size` (caller holds the inode's state).
    pub(crate) fn truncate_locked(
        &self,
        inode: &Inode,
        st: &mut InodeState,
        size: u64,
    ) -> Result<()> {
        if size > self.max_size {
            return Err(Error::FileTooBig);
        }
        let old = st.attr.size;
        if size < old {
            // Zeroing the rest of the new last page changes bytes a record may vouch for.
            self.confirm_before_change(st, size, old)?;
        }
        // Not an append: the next record takes the ordered path.
        st.tail = None;
        // Every cached page of the file goes: a new generation.
        st.cache_gen = self.cache.new_generation();
        st.data_version += 1;
        if size < old {
            // Drop cached pages past the end; clear the tail of the last cached page.
            let keep = size.div_ceil(PAGE);
            let dropped: Vec<u64> = st.pages.range(keep..).map(|(k, _)| *k).collect();
            for k in &dropped {
                st.pages.remove(k);
            }
            let _ = self
                .dirty_bytes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                    Some(d.saturating_sub(dropped.len() as u64 * PAGE))
                });
            if let Some(p) = st.pages.get_mut(&(size / PAGE)) {
                p[(size % PAGE) as usize..].fill(0);
            }
            // The data that stays is written back first; then the smaller size and the
            // released clusters commit together, so no crash separates them. Bytes past
            // the new end are not zeroed here (that would destroy data before the truncate
            // is durable): `zero_gap` clears them whenever the file grows again.
            self.write_back(inode, st)?;
            let now = Time::now();
            let mut a = st.attr;
            a.size = size;
            a.mtime = now;
            a.ctime = now;
            let mut t = self.store.transaction();
            let clusters = self.clusters_for(size);
            if inode.blob.num_clusters() > clusters {
                t.resize(inode.blob.id(), clusters);
            }
            t.set_xattr(inode.blob.id(), XattrNs::Internal, KEY_INODE, &a.encode());
            t.commit()?;
            st.attr = a;
            st.attr_dirty = false;
            st.tail = self.fresh_tail(size);
            return Ok(());
        } else if size > old {
            self.zero_gap(inode, st, old, size, &mut BeforeIo::none())?;
            self.ensure_clusters(inode, size)?;
        }
        st.attr.size = size;
        let now = Time::now();
        st.attr.mtime = now;
        st.attr.ctime = now;
        st.attr_dirty = true;
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`: dirty pages first, then the clean-page cache,
    /// then the device (without holding the inode's lock, so reads of one file run in
    /// parallel), with read-ahead into the cache for sequential reads.
    pub(crate) fn read(
        &self,
        inode: &Inode,
        offset: u64,
        len: usize,
        io: &mut BeforeIo<'_>,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_to(inode, offset, len, io, &mut out)?;
        Ok(out)
    }

    /// `read` into the caller's buffer (no intermediate copy); returns the bytes read,
    /// short only at the end of the file.
    pub(crate) fn read_into(
        &self,
        inode: &Inode,
        offset: u64,
        buf: &mut [u8],
        io: &mut BeforeIo<'_>,
    ) -> Result<usize> {
        let mut sink = SliceSink { buf, at: 0 };
        self.read_to(inode, offset, sink.buf.len(), io, &mut sink)?;
        Ok(sink.at)
    }

    fn read_to(
        &self,
        inode: &Inode,
        offset: u64,
        len: usize,
        io: &mut BeforeIo<'_>,
        out: &mut dyn ReadSink,
    ) -> Result<()> {
        let ino = inode.ino;
        // Under the lock: the size, the dirty pages, and what to fetch.
        let (size, end, gen, version, mut pages, ra_pages) = {
            let mut st = inode.st.lock();
            match st.attr.kind() {
                Kind::File => {}
                Kind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("read of a special file".into())),
            }
            let size = st.attr.size;
            if offset >= size || len == 0 {
                return Ok(());
            }
            let end = (offset + len as u64).min(size);
            let first = offset / PAGE;
            let last = (end - 1) / PAGE;
            let mut pages: Vec<Option<Page>> = Vec::with_capacity((last - first + 1) as usize);
            for idx in first..=last {
                pages.push(st.pages.get(&idx).map(|p| Page::from(&p[..])));
            }
            // Small sequential reads grow a read-ahead window; random ones read what they
            // need. So do big ones: the reader (the kernel's own read-ahead, for a FUSE
            // mount) already asks for plenty, and the reply waits for the read-ahead too.
            let sequential = offset == st.ra_next && offset != 0;
            st.ra_window = if sequential && (len as u64) < RA_BIG_READ {
                (st.ra_window * 2).clamp(128 * 1024, self.opts.readahead_max.max(128 * 1024))
            } else {
                0
            };
            st.ra_next = end;
            let ra_last = ((end + st.ra_window).min(size).saturating_sub(1)) / PAGE;
            let ra: Vec<u64> = (last + 1..=ra_last)
                .filter(|i| !st.pages.contains_key(i))
                .collect();
            (size, end, st.cache_gen, st.data_version, pages, ra)
        };
        let first = offset / PAGE;
        // The cache.
        let mut missing: Vec<u64> = Vec::new();
        for (i, slot) in pages.iter_mut().enumerate() {
            if slot.is_none() {
                let idx = first + i as u64;
                match self.cache.get(ino, gen, idx) {
                    Some(p) => *slot = Some(p),
                    None => missing.push(idx),
                }
            }
        }
        let ra_missing: Vec<u64> = ra_pages
            .into_iter()
            .filter(|i| !self.cache.contains(ino, gen, *i))
            .collect();
        // The device: runs of consecutive missing pages, one read each.
        if !missing.is_empty() || !ra_missing.is_empty() {
            let mut all: Vec<u64> = missing.clone();
            all.extend_from_slice(&ra_missing);
            io.fire();
            let fetched = self.fetch_pages(inode, &all, size)?;
            // Big reads stream: their pages would only push out those of small reads
            // (and the cache churn cost a quarter of the server's time reading a 1 GiB file
            // through FUSE, whose kernel page cache holds them anyway).
            if (len as u64) < RA_BIG_READ {
                let st = inode.st.lock();
                // Only if nothing changed the file meanwhile; never over a dirty page.
                if st.data_version == version && st.cache_gen == gen {
                    for (idx, p) in &fetched {
                        if !st.pages.contains_key(idx) {
                            self.cache.put(ino, gen, *idx, p.clone());
                        }
                    }
                }
            }
            for (idx, p) in fetched {
                if idx >= first && ((idx - first) as usize) < pages.len() {
                    pages[(idx - first) as usize] = Some(p);
                }
            }
        }
        // Appended in order (no zero-filling first: that was a sixth of the server's time
        // in sequential reads); a missing or short page reads as zeroes.
        out.reserve((end - offset) as usize);
        for (i, p) in pages.iter().enumerate() {
            let pstart = (first + i as u64) * PAGE;
            let a = pstart.max(offset);
            let b = (pstart + PAGE).min(end);
            let (pa, pb) = ((a - pstart) as usize, (b - pstart) as usize);
            let have = p.as_ref().map_or(0, |p| pb.min(p.len()).saturating_sub(pa));
            if let Some(p) = p {
                out.put(&p[pa..pa + have]);
            }
            out.zeroes(pb - pa - have);
        }
        Ok(())
    }

    /// Reads whole pages from the device, in runs of consecutive pages; bytes past the end
    /// of the file (`size`) are zeroed, pages past the blob are all zeroes.
    fn fetch_pages(&self, inode: &Inode, idxs: &[u64], size: u64) -> Result<Vec<(u64, Page)>> {
        let mut sorted = idxs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let blob_size = inode.blob.size();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for idx in sorted {
            match runs.last_mut() {
                Some((s, n)) if *s + *n == idx && *n < RUN_PAGES => *n += 1,
                _ => runs.push((idx, 1)),
            }
        }
        let mut out = Vec::new();
        self.with_channel(|ch| {
            let mut pending = Vec::new();
            for (tag, (s, n)) in runs.iter().enumerate() {
                let off = s * PAGE;
                if off >= blob_size {
                    continue;
                }
                let len = (n * PAGE).min(blob_size - off);
                let buf = self.io_bufs.take(len as usize);
                if let Err((e, _)) = ch.submit_read(&inode.blob, off, buf, tag as u64) {
                    return Err(Error::from(e));
                }
                while ch.in_flight() >= 32 {
                    ch.wait(&mut pending);
                }
            }
            while ch.in_flight() > 0 {
                ch.wait(&mut pending);
            }
            let mut got: Vec<Option<DmaBuf>> = (0..runs.len()).map(|_| None).collect();
            for c in pending {
                c.result.map_err(Error::from)?;
                got[c.tag as usize] = Some(c.buf);
            }
            for (i, (s, n)) in runs.iter().enumerate() {
                for k in 0..*n {
                    let idx = s + k;
                    let pstart = idx * PAGE;
                    let a = (k * PAGE) as usize;
                    if let Some(buf) = &got[i] {
                        if pstart + PAGE <= size && a + PAGE as usize <= buf.len() {
                            // A whole page of the file: one copy.
                            out.push((idx, Page::from(&buf.as_slice()[a..a + PAGE as usize])));
                            continue;
                        }
                    }
                    let mut page = vec![0u8; PAGE as usize];
                    if let Some(buf) = &got[i] {
                        let b = (a + PAGE as usize).min(buf.len());
                        if a < b {
                            page[..b - a].copy_from_slice(&buf.as_slice()[a..b]);
                        }
                    }
                    // Never show bytes past the end of the file.
                    if pstart + PAGE > size {
                        let valid = size.saturating_sub(pstart) as usize;
                        page[valid.min(PAGE as usize)..].fill(0);
                    }
                    out.push((idx, Page::from(page)));
                }
            }
            for buf in got.into_iter().flatten() {
                self.io_bufs.give(buf);
            }
            Ok(())
        })?;
        Ok(out)
    }
}
