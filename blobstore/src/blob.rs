//! Open blob handles: metadata operations and blocking I/O helpers.

use crate::channel::IoChannel;
use crate::error::{Error, Result};
use crate::format::record::{Record, XattrNs};
use crate::meta::{check_xattr, BlobEntry, FLAG_READ_ONLY, FLAG_THIN};
use crate::store::{map_records, Inner};
use crate::units::{BlobId, ClusterIdx};
use driver::DmaBuf;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An open blob. Closing is dropping; a blob cannot be deleted while open.
pub struct Blob {
    inner: Arc<Inner>,
    entry: Arc<BlobEntry>,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob").field("id", &self.entry.id).finish()
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        self.entry.open_count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Blob {
    pub(crate) fn new(inner: Arc<Inner>, entry: Arc<BlobEntry>) -> Blob {
        Blob { inner, entry }
    }

    pub(crate) fn entry(&self) -> &Arc<BlobEntry> {
        &self.entry
    }

    pub fn id(&self) -> BlobId {
        self.entry.id
    }

    /// Size in clusters.
    pub fn num_clusters(&self) -> u64 {
        self.entry.meta.read().clusters.len() as u64
    }

    /// Size in bytes (clusters times cluster size).
    pub fn size(&self) -> u64 {
        self.num_clusters() * self.inner.cluster_size
    }

    /// Clusters actually allocated (less than `num_clusters` for a sparse thin blob).
    pub fn allocated_clusters(&self) -> u64 {
        self.entry.meta.read().allocated()
    }

    /// Whether every cluster overlapping bytes `[offset, offset + len)` is allocated (a
    /// write there then allocates nothing and queues no mapping).
    pub fn is_mapped(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let cs = self.inner.cluster_size;
        let (first, last) = (offset / cs, (offset + len - 1) / cs);
        let meta = self.entry.meta.read();
        (first..=last).all(|i| meta.clusters.get(i as usize).is_some_and(|c| c.is_some()))
    }

    /// The blob whose clusters this one reads where it has none (`None`: zeroes).
    pub fn parent(&self) -> Option<BlobId> {
        let p = self.entry.meta.read().parent;
        (p.0 != 0).then_some(p)
    }

    /// The first byte at or after `offset` that lies in a cluster holding data (this blob's
    /// own or, in a clone, an ancestor's); `None` if there is none before the end.
    pub fn seek_data(&self, offset: u64) -> Option<u64> {
        let cs = self.inner.cluster_size;
        let n = self.num_clusters();
        (offset / cs..n)
            .find(|&i| self.entry.resolve(i).is_some())
            .map(|i| (i * cs).max(offset))
    }

    /// The first byte at or after `offset` in a cluster that holds no data (reads zeroes
    /// without a device read), or the blob's size if every cluster from there holds data.
    pub fn seek_hole(&self, offset: u64) -> u64 {
        let cs = self.inner.cluster_size;
        let n = self.num_clusters();
        (offset / cs..n)
            .find(|&i| self.entry.resolve(i).is_none())
            .map_or(n * cs, |i| (i * cs).max(offset))
    }

    pub fn flags(&self) -> u64 {
        self.entry.meta.read().flags
    }

    pub fn is_thin(&self) -> bool {
        self.flags() & FLAG_THIN != 0
    }

    pub fn is_read_only(&self) -> bool {
        self.flags() & FLAG_READ_ONLY != 0
    }

    /// Whether the blob was deleted (only possible through another path, e.g. after a
    /// failed transaction undo; open blobs cannot be deleted).
    pub fn is_deleted(&self) -> bool {
        self.entry.deleted.load(Ordering::SeqCst)
    }

    fn check_mutable(&self) -> Result<()> {
        self.inner.check_writable()?;
        if self.is_read_only() {
            return Err(Error::ReadOnly(format!("blob {} is read-only", self.id())));
        }
        Ok(())
    }

    /// Changes the size. Growing a thick blob allocates and zeroes clusters; growing a thin
    /// one only extends its map. Shrinking frees the clusters past the end once durable.
    pub fn resize(&self, clusters: u64) -> Result<()> {
        self.check_mutable()?;
        let id = self.id();
        let cur = self.num_clusters();
        let mut new: Vec<ClusterIdx> = Vec::new();
        if !self.is_thin() && clusters > cur {
            new = self.inner.alloc_zeroed(clusters - cur)?;
        }
        let mut st = self.inner.state.lock();
        // Re-read under the lock: another resize may have raced.
        let cur_now = self.num_clusters();
        let mut recs = vec![Record::Resize { id, clusters }];
        if !new.is_empty() && cur_now == cur {
            recs.extend(map_records(id, cur, &new));
        }
        // Growing a thin blob exposes no data (the new clusters read zeroes): no pre-flush
        // for its sake. Mapping (thick growth) or freeing (shrink) is ordered regardless.
        let res = self.inner.apply_locked_with(&mut st, recs, false);
        if res.is_err() || cur_now != cur {
            for c in new {
                st.alloc.release(c);
            }
        }
        res
    }

    /// Marks the blob read-only, permanently.
    pub fn set_read_only(&self) -> Result<()> {
        self.inner.check_writable()?;
        let mut st = self.inner.state.lock();
        let flags = self.flags() | FLAG_READ_ONLY;
        self.inner.apply_locked(
            &mut st,
            vec![Record::SetFlags {
                id: self.id(),
                flags,
            }],
        )
    }

    /// Sets an xattr in namespace `ns`.
    pub fn set_xattr_ns(&self, ns: XattrNs, name: &[u8], value: &[u8]) -> Result<()> {
        self.check_mutable()?;
        check_xattr(name, value.len())?;
        let mut st = self.inner.state.lock();
        self.inner.apply_locked(
            &mut st,
            vec![Record::SetXattr {
                id: self.id(),
                ns,
                name: name.to_vec(),
                value: value.to_vec(),
            }],
        )
    }

    /// Sets an xattr in namespace `ns` as a *checked* change: the xattr (typically a file
    /// size) exposes data written just before, and `checks` lists that data as
    /// `(offset, len, crc)`: bytes `[offset, offset + len)` of this blob have CRC32C `crc`
    /// ([`crate::format::record::data_crc`]). The xattr and one `DataCheck` record per entry
    /// are applied atomically and queued *unordered*: if nothing ordered is queued with
    /// them, the commit writes its group without first flushing the data, then flushes once
    /// (one device flush per `sync` instead of two).
    ///
    /// Contract (what makes it safe):
    /// - the data the xattr depends on is exactly the checked ranges, and its writes have
    ///   completed before this call (their completion counts for the next commit's flush);
    /// - the ranges are inside the blob's allocated size (clusters are mapped: a write that
    ///   allocates queues its mapping as an ordered record, which makes that commit ordered);
    /// - the checked bytes are not changed while the group holding these checks may still be
    ///   the last of the log: after the `sync` that made it durable, note
    ///   [`crate::Blobstore::groups_committed`]; before changing those bytes, call
    ///   [`crate::Blobstore::confirm`] unless the counter has moved past the noted value.
    ///   Rewriting them with the same bytes (a partial last unit) is fine.
    ///
    /// If the power fails before the commit's flush completes, replay verifies the checks of
    /// the log's last group and drops the whole group if any fails (the group was never
    /// acknowledged). On a store without the `data_checks` feature
    /// ([`crate::Blobstore::supports_data_checks`]) this is an ordinary `set_xattr_ns`.
    pub fn set_xattr_ns_checked(
        &self,
        ns: XattrNs,
        name: &[u8],
        value: &[u8],
        checks: &[(u64, u64, u32)],
    ) -> Result<()> {
        self.check_mutable()?;
        check_xattr(name, value.len())?;
        let id = self.id();
        let mut recs = vec![Record::SetXattr {
            id,
            ns,
            name: name.to_vec(),
            value: value.to_vec(),
        }];
        let mut st = self.inner.state.lock();
        if !self.inner.data_checks() {
            return self.inner.apply_locked(&mut st, recs);
        }
        recs.extend(checks.iter().map(|&(offset, len, crc)| Record::DataCheck {
            id,
            offset,
            len,
            crc,
        }));
        self.inner.apply_locked_with(&mut st, recs, false)
    }

    /// Removes an xattr from namespace `ns`.
    pub fn remove_xattr_ns(&self, ns: XattrNs, name: &[u8]) -> Result<()> {
        self.check_mutable()?;
        let mut st = self.inner.state.lock();
        self.inner.apply_locked(
            &mut st,
            vec![Record::RemoveXattr {
                id: self.id(),
                ns,
                name: name.to_vec(),
            }],
        )
    }

    /// An xattr's value from namespace `ns`.
    pub fn get_xattr_ns(&self, ns: XattrNs, name: &[u8]) -> Option<Vec<u8>> {
        self.entry.meta.read().ns(ns).get(name).cloned()
    }

    /// Names in namespace `ns`, sorted.
    pub fn xattr_names_ns(&self, ns: XattrNs) -> Vec<Vec<u8>> {
        self.entry.meta.read().ns(ns).keys().cloned().collect()
    }

    /// Calls `f` with each (name, value) of namespace `ns` in name order, starting after
    /// `after` (from the first when `None`), until `f` returns false. Holds the blob's
    /// metadata read lock meanwhile: `f` must not call back into the store.
    pub fn visit_xattrs_ns(
        &self,
        ns: XattrNs,
        after: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) {
        let m = self.entry.meta.read();
        let map = m.ns(ns);
        let iter: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = match after {
            Some(a) => Box::new(
                map.range::<[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(map.iter()),
        };
        for (k, v) in iter {
            if !f(k, v) {
                break;
            }
        }
    }

    /// Number of xattrs in namespace `ns`.
    pub fn xattr_count_ns(&self, ns: XattrNs) -> usize {
        self.entry.meta.read().ns(ns).len()
    }

    /// Sets a user xattr.
    pub fn set_xattr(&self, name: &[u8], value: &[u8]) -> Result<()> {
        self.set_xattr_ns(XattrNs::User, name, value)
    }

    /// A user xattr's value.
    pub fn get_xattr(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.get_xattr_ns(XattrNs::User, name)
    }

    /// Removes a user xattr.
    pub fn remove_xattr(&self, name: &[u8]) -> Result<()> {
        self.remove_xattr_ns(XattrNs::User, name)
    }

    /// User xattr names, sorted.
    pub fn xattr_names(&self) -> Vec<Vec<u8>> {
        self.xattr_names_ns(XattrNs::User)
    }

    /// Reads into an aligned buffer without copying; returns it filled.
    pub fn read_buf(&self, ch: &mut IoChannel, offset: u64, buf: DmaBuf) -> Result<DmaBuf> {
        ch.run(self, offset, buf, false)
    }

    /// Writes an aligned buffer without copying; returns it.
    pub fn write_buf(&self, ch: &mut IoChannel, offset: u64, buf: DmaBuf) -> Result<DmaBuf> {
        ch.run(self, offset, buf, true)
    }

    /// Reads `out.len()` bytes at `offset` (both multiples of the I/O unit).
    pub fn read(&self, ch: &mut IoChannel, offset: u64, out: &mut [u8]) -> Result<()> {
        let buf = self.read_buf(ch, offset, self.inner.dev.alloc_buf(out.len()))?;
        out.copy_from_slice(buf.as_slice());
        Ok(())
    }

    /// Writes `data` at `offset` (both multiples of the I/O unit).
    pub fn write(&self, ch: &mut IoChannel, offset: u64, data: &[u8]) -> Result<()> {
        let mut buf = self.inner.dev.alloc_buf(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        self.write_buf(ch, offset, buf)?;
        Ok(())
    }

    /// Reads into several buffers, in order, from `offset`.
    pub fn readv(&self, ch: &mut IoChannel, offset: u64, iov: &mut [&mut [u8]]) -> Result<()> {
        let total: usize = iov.iter().map(|b| b.len()).sum();
        let buf = self.read_buf(ch, offset, self.inner.dev.alloc_buf(total))?;
        let mut at = 0;
        for b in iov.iter_mut() {
            let n = b.len();
            b.copy_from_slice(&buf.as_slice()[at..at + n]);
            at += n;
        }
        Ok(())
    }

    /// Writes several buffers, in order, from `offset`.
    pub fn writev(&self, ch: &mut IoChannel, offset: u64, iov: &[&[u8]]) -> Result<()> {
        let total: usize = iov.iter().map(|b| b.len()).sum();
        let mut buf = self.inner.dev.alloc_buf(total);
        let mut at = 0;
        for b in iov {
            buf.as_mut_slice()[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        self.write_buf(ch, offset, buf)?;
        Ok(())
    }

    /// Releases a range: it reads back as zeroes. Whole clusters of a thin blob are
    /// deallocated; the rest is deallocated on the device.
    pub fn unmap(&self, ch: &mut IoChannel, offset: u64, len: u64) -> Result<()> {
        ch.zero_range(self, offset, len, true)
    }

    /// Zeroes a range (whole clusters of a thin blob are released).
    pub fn write_zeroes(&self, ch: &mut IoChannel, offset: u64, len: u64) -> Result<()> {
        ch.zero_range(self, offset, len, false)
    }

    /// Makes this blob's (and everything else's) completed writes and metadata durable.
    pub fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
}
