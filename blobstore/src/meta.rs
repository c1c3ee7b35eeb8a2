//! The in-memory blob table and the one function that changes it: [`Table::apply`].
//!
//! Live operations and log replay both go through `apply`, so what a load rebuilds is by
//! construction what the live store had. `apply` validates each record against the table
//! (a record that does not fit is corruption at replay and a bug or bad argument live) and
//! returns an [`Undo`] so a multi-record transaction that fails half-way leaves no trace.

use crate::error::{Error, Result};
use crate::format::record::{Record, XattrNs, MAX_XATTR_NAME, MAX_XATTR_VALUE};
use crate::units::{BlobId, ClusterIdx};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Clusters are allocated on first write (and released by unmap).
pub const FLAG_THIN: u64 = 1;
/// No data or metadata change is accepted (permanent).
pub const FLAG_READ_ONLY: u64 = 2;
/// Flags this build knows.
pub const KNOWN_FLAGS: u64 = FLAG_THIN | FLAG_READ_ONLY;
/// Blob ids are below this (so the next-id counter never overflows).
pub const MAX_BLOB_ID: u64 = 1 << 62;

/// Metadata of one blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobMeta {
    pub flags: u64,
    /// Cluster of each blob cluster index; `ClusterIdx::NONE` = not allocated (reads zeroes).
    pub clusters: Vec<ClusterIdx>,
    /// User xattrs.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Internal xattrs (for layers above: inode attributes, directory entries).
    pub internal: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The blob unallocated clusters read from (`BlobId(0)`: none, they read zeroes).
    pub parent: BlobId,
    /// Only cluster indexes below this read through the parent (a shrink lowers it, so
    /// growing again reads zeroes, not the parent's old data).
    pub through: u64,
}

impl BlobMeta {
    pub fn ns(&self, ns: XattrNs) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        match ns {
            XattrNs::User => &self.xattrs,
            XattrNs::Internal => &self.internal,
        }
    }

    pub fn ns_mut(&mut self, ns: XattrNs) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        match ns {
            XattrNs::User => &mut self.xattrs,
            XattrNs::Internal => &mut self.internal,
        }
    }

    /// Number of allocated clusters.
    pub fn allocated(&self) -> u64 {
        self.clusters.iter().filter(|c| c.is_some()).count() as u64
    }

    /// The cluster map as runs: (index, first cluster or NONE, count), maximal runs of
    /// consecutive clusters (or of unallocated entries).
    pub fn runs(&self) -> Vec<(u64, ClusterIdx, u64)> {
        let mut out: Vec<(u64, ClusterIdx, u64)> = Vec::new();
        for (i, &c) in self.clusters.iter().enumerate() {
            if let Some(last) = out.last_mut() {
                let next = if last.1.is_some() {
                    ClusterIdx(last.1 .0 + last.2)
                } else {
                    ClusterIdx::NONE
                };
                if c == next {
                    last.2 += 1;
                    continue;
                }
            }
            out.push((i as u64, c, 1));
        }
        out
    }
}

/// A blob as the store holds it: metadata behind a reader-writer lock (the data path only
/// reads the cluster map), plus open and allocation bookkeeping that is never on disk.
#[derive(Debug)]
pub struct BlobEntry {
    pub id: BlobId,
    pub meta: RwLock<BlobMeta>,
    pub open_count: AtomicU32,
    /// Serializes first writes to unallocated clusters of this blob.
    pub alloc_lock: Mutex<()>,
    /// Set once the blob is deleted, so late installs of allocations give their cluster back.
    pub deleted: AtomicBool,
    /// The parent's entry (kept in step with `BlobMeta::parent` by `Table::apply`), so reads
    /// of unallocated clusters walk the chain without the table.
    pub parent: RwLock<Option<Arc<BlobEntry>>>,
}

impl BlobEntry {
    fn new(id: BlobId, flags: u64) -> Arc<BlobEntry> {
        Arc::new(BlobEntry {
            id,
            meta: RwLock::new(BlobMeta {
                flags,
                ..BlobMeta::default()
            }),
            open_count: AtomicU32::new(0),
            alloc_lock: Mutex::new(()),
            deleted: AtomicBool::new(false),
            parent: RwLock::new(None),
        })
    }

    /// Where cluster index `idx` of this blob reads from: its own cluster, else the first
    /// ancestor that has one (within each link's `through`), else `None` (zeroes).
    pub fn resolve(self: &Arc<Self>, idx: u64) -> Option<ClusterIdx> {
        let mut cur = Arc::clone(self);
        loop {
            let next = {
                let m = cur.meta.read();
                match m.clusters.get(idx as usize) {
                    Some(c) if c.is_some() => return Some(*c),
                    None => return None,
                    Some(_) => {}
                }
                if m.parent.0 == 0 || idx >= m.through {
                    return None;
                }
                cur.parent.read().clone()?
            };
            cur = next;
        }
    }
}

/// What applying a record did to cluster ownership.
#[derive(Debug, Default)]
pub struct Effects {
    /// Clusters no blob references any more.
    pub freed: Vec<ClusterIdx>,
    /// Clusters newly referenced.
    pub mapped: Vec<ClusterIdx>,
}

/// How to reverse one applied record.
#[derive(Debug)]
pub enum Undo {
    Created {
        id: BlobId,
        prev_next_id: u64,
    },
    Deleted(Arc<BlobEntry>),
    Resized {
        id: BlobId,
        removed: Vec<ClusterIdx>,
        old_len: u64,
    },
    Mapped {
        id: BlobId,
        index: u64,
        old: Vec<ClusterIdx>,
    },
    Xattr {
        id: BlobId,
        ns: XattrNs,
        name: Vec<u8>,
        old: Option<Vec<u8>>,
    },
    Flags {
        id: BlobId,
        old: u64,
    },
    /// The record changed nothing (`DataCheck`).
    Nothing,
    Parent {
        id: BlobId,
        old: BlobId,
        old_through: u64,
    },
    Moved {
        from: BlobId,
        to: BlobId,
        moved: Vec<(u64, ClusterIdx)>,
    },
    /// A shrink that also lowered `through`.
    ResizedThrough {
        resized: Box<Undo>,
        old_through: u64,
    },
}

/// All blobs.
#[derive(Debug)]
pub struct Table {
    pub blobs: BTreeMap<BlobId, Arc<BlobEntry>>,
    pub next_blob_id: u64,
    /// Clusters on the device: bounds cluster indices and blob sizes.
    pub cluster_count: u64,
    /// Cluster size in bytes: bounds the byte ranges of `DataCheck` records.
    pub cluster_size: u64,
    /// Number of blobs whose parent is each blob (a blob with children cannot be deleted).
    pub children: BTreeMap<BlobId, u64>,
}

impl Table {
    pub fn new(cluster_count: u64, cluster_size: u64) -> Table {
        Table {
            blobs: BTreeMap::new(),
            next_blob_id: 1,
            cluster_count,
            cluster_size,
            children: BTreeMap::new(),
        }
    }

    /// How many blobs have `id` as their parent.
    pub fn child_count(&self, id: BlobId) -> u64 {
        self.children.get(&id).copied().unwrap_or(0)
    }

    fn set_parent_link(&mut self, id: BlobId, old: BlobId, new: BlobId) {
        if old.0 != 0 {
            if let Some(n) = self.children.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.children.remove(&old);
                }
            }
        }
        if new.0 != 0 {
            *self.children.entry(new).or_insert(0) += 1;
        }
        if let Some(e) = self.blobs.get(&id) {
            *e.parent.write() = if new.0 == 0 {
                None
            } else {
                self.blobs.get(&new).cloned()
            };
        }
    }

    pub fn get(&self, id: BlobId) -> Result<&Arc<BlobEntry>> {
        self.blobs.get(&id).ok_or(Error::NotFound(id))
    }

    /// Applies one record. On error nothing changed.
    pub fn apply(&mut self, rec: &Record, fx: &mut Effects) -> Result<Undo> {
        match rec {
            Record::CreateBlob { id, flags } => {
                if id.0 == 0 || id.0 >= MAX_BLOB_ID {
                    return Err(Error::Invalid(format!("blob id {id} out of range")));
                }
                if self.blobs.contains_key(id) {
                    return Err(Error::Invalid(format!("blob {id} exists already")));
                }
                check_flags(*flags)?;
                self.blobs.insert(*id, BlobEntry::new(*id, *flags));
                let prev = self.next_blob_id;
                self.next_blob_id = self.next_blob_id.max(id.0 + 1);
                Ok(Undo::Created {
                    id: *id,
                    prev_next_id: prev,
                })
            }
            Record::DeleteBlob { id } => {
                let e = self.get(*id)?;
                if e.open_count.load(Ordering::SeqCst) > 0 {
                    return Err(Error::Busy(*id));
                }
                if self.child_count(*id) > 0 {
                    return Err(Error::Invalid(format!(
                        "blob {id} has {} clone(s)",
                        self.child_count(*id)
                    )));
                }
                let parent = e.meta.read().parent;
                if parent.0 != 0 {
                    self.set_parent_link(*id, parent, BlobId(0));
                }
                let e = self.blobs.remove(id).ok_or(Error::NotFound(*id))?;
                e.deleted.store(true, Ordering::SeqCst);
                let m = e.meta.read();
                fx.freed
                    .extend(m.clusters.iter().copied().filter(|c| c.is_some()));
                drop(m);
                Ok(Undo::Deleted(e))
            }
            Record::Resize { id, clusters } => {
                if *clusters > self.cluster_count {
                    return Err(Error::Invalid(format!(
                        "blob {id}: {clusters} clusters exceed the device's {}",
                        self.cluster_count
                    )));
                }
                let e = self.get(*id)?;
                let mut m = e.meta.write();
                let old_len = m.clusters.len() as u64;
                let mut removed = Vec::new();
                if *clusters < old_len {
                    removed = m.clusters.split_off(*clusters as usize);
                    fx.freed
                        .extend(removed.iter().copied().filter(|c| c.is_some()));
                } else {
                    m.clusters.resize(*clusters as usize, ClusterIdx::NONE);
                }
                let u = Undo::Resized {
                    id: *id,
                    removed,
                    old_len,
                };
                if m.through > *clusters {
                    let old_through = m.through;
                    m.through = *clusters;
                    return Ok(Undo::ResizedThrough {
                        resized: Box::new(u),
                        old_through,
                    });
                }
                Ok(u)
            }
            Record::MapRun {
                id,
                index,
                first,
                count,
            } => {
                let cc = self.cluster_count;
                let e = self.get(*id)?;
                let mut m = e.meta.write();
                let len = m.clusters.len() as u64;
                let end = index.checked_add(*count);
                if *count == 0 || end.is_none_or(|end| end > len) {
                    return Err(Error::Invalid(format!(
                        "blob {id}: map of {count} clusters at index {index} beyond {len}"
                    )));
                }
                if first.is_some() && first.0.checked_add(*count).is_none_or(|e| e > cc) {
                    return Err(Error::Invalid(format!(
                        "blob {id}: clusters {}..+{count} outside the device's {cc}",
                        first.0
                    )));
                }
                let mut old = Vec::with_capacity(*count as usize);
                for i in 0..*count {
                    let slot = &mut m.clusters[(index + i) as usize];
                    let new = if first.is_some() {
                        ClusterIdx(first.0 + i)
                    } else {
                        ClusterIdx::NONE
                    };
                    old.push(*slot);
                    if *slot != new {
                        if slot.is_some() {
                            fx.freed.push(*slot);
                        }
                        if new.is_some() {
                            fx.mapped.push(new);
                        }
                        *slot = new;
                    }
                }
                Ok(Undo::Mapped {
                    id: *id,
                    index: *index,
                    old,
                })
            }
            Record::SetXattr {
                id,
                ns,
                name,
                value,
            } => {
                check_xattr(name, value.len())?;
                let e = self.get(*id)?;
                let old = e
                    .meta
                    .write()
                    .ns_mut(*ns)
                    .insert(name.clone(), value.clone());
                Ok(Undo::Xattr {
                    id: *id,
                    ns: *ns,
                    name: name.clone(),
                    old,
                })
            }
            Record::RemoveXattr { id, ns, name } => {
                let e = self.get(*id)?;
                let old = e.meta.write().ns_mut(*ns).remove(name);
                if old.is_none() {
                    return Err(Error::NoXattr(String::from_utf8_lossy(name).into_owned()));
                }
                Ok(Undo::Xattr {
                    id: *id,
                    ns: *ns,
                    name: name.clone(),
                    old,
                })
            }
            Record::SetFlags { id, flags } => {
                check_flags(*flags)?;
                let e = self.get(*id)?;
                let mut m = e.meta.write();
                let old = m.flags;
                m.flags = *flags;
                Ok(Undo::Flags { id: *id, old })
            }
            Record::DataCheck {
                id, offset, len, ..
            } => {
                let e = self.get(*id)?;
                let size = (e.meta.read().clusters.len() as u64).saturating_mul(self.cluster_size);
                if offset.checked_add(*len).is_none_or(|end| end > size) {
                    return Err(Error::Invalid(format!(
                        "blob {id}: data check of {len} bytes at {offset} beyond its size {size}"
                    )));
                }
                Ok(Undo::Nothing)
            }
            Record::SetParent {
                id,
                parent,
                through,
            } => {
                let e = self.get(*id)?;
                if parent.0 != 0 {
                    // The parent exists and the link makes no cycle.
                    let mut cur = *parent;
                    let mut steps = 0u64;
                    while cur.0 != 0 {
                        if cur == *id {
                            return Err(Error::Invalid(format!(
                                "blob {id}: parent {parent} would make a cycle"
                            )));
                        }
                        let p = self.get(cur)?;
                        cur = p.meta.read().parent;
                        steps += 1;
                        if steps > self.blobs.len() as u64 {
                            return Err(Error::Invalid("parent chain loops".into()));
                        }
                    }
                }
                let (old, old_through) = {
                    let m = e.meta.read();
                    (m.parent, m.through)
                };
                {
                    let mut m = e.meta.write();
                    m.parent = *parent;
                    m.through = if parent.0 == 0 { 0 } else { *through };
                }
                self.set_parent_link(*id, old, *parent);
                Ok(Undo::Parent {
                    id: *id,
                    old,
                    old_through,
                })
            }
            Record::MoveClusters { from, to, count } => {
                if from == to {
                    return Err(Error::Invalid(format!("blob {from}: move onto itself")));
                }
                let src = Arc::clone(self.get(*from)?);
                let dst = Arc::clone(self.get(*to)?);
                let mut sm = src.meta.write();
                let mut dm = dst.meta.write();
                let n = (*count)
                    .min(sm.clusters.len() as u64)
                    .min(dm.clusters.len() as u64);
                let mut moved = Vec::new();
                for i in 0..n as usize {
                    if sm.clusters[i].is_some() && !dm.clusters[i].is_some() {
                        dm.clusters[i] = sm.clusters[i];
                        sm.clusters[i] = ClusterIdx::NONE;
                        moved.push((i as u64, dm.clusters[i]));
                    }
                }
                Ok(Undo::Moved {
                    from: *from,
                    to: *to,
                    moved,
                })
            }
            Record::SnapshotBegin { .. } | Record::SnapshotEnd { .. } => Err(Error::Invalid(
                "snapshot marker outside the start of a log".into(),
            )),
        }
    }

    /// Reverses an applied record (undos must be applied newest first).
    pub fn undo(&mut self, u: Undo) {
        match u {
            Undo::Created { id, prev_next_id } => {
                if let Some(e) = self.blobs.remove(&id) {
                    e.deleted.store(true, Ordering::SeqCst);
                }
                self.next_blob_id = prev_next_id;
            }
            Undo::Deleted(e) => {
                e.deleted.store(false, Ordering::SeqCst);
                let (id, parent) = (e.id, e.meta.read().parent);
                self.blobs.insert(id, e);
                if parent.0 != 0 {
                    self.set_parent_link(id, BlobId(0), parent);
                }
            }
            Undo::Resized {
                id,
                mut removed,
                old_len,
            } => {
                if let Some(e) = self.blobs.get(&id) {
                    let mut m = e.meta.write();
                    m.clusters.truncate(old_len as usize);
                    m.clusters.append(&mut removed);
                }
            }
            Undo::Mapped { id, index, old } => {
                if let Some(e) = self.blobs.get(&id) {
                    let mut m = e.meta.write();
                    for (i, c) in old.into_iter().enumerate() {
                        m.clusters[index as usize + i] = c;
                    }
                }
            }
            Undo::Xattr { id, ns, name, old } => {
                if let Some(e) = self.blobs.get(&id) {
                    let mut m = e.meta.write();
                    match old {
                        Some(v) => m.ns_mut(ns).insert(name, v),
                        None => m.ns_mut(ns).remove(&name),
                    };
                }
            }
            Undo::Flags { id, old } => {
                if let Some(e) = self.blobs.get(&id) {
                    e.meta.write().flags = old;
                }
            }
            Undo::Nothing => {}
            Undo::Parent {
                id,
                old,
                old_through,
            } => {
                let cur = self.blobs.get(&id).map(|e| e.meta.read().parent);
                if let Some(cur) = cur {
                    if let Some(e) = self.blobs.get(&id) {
                        let mut m = e.meta.write();
                        m.parent = old;
                        m.through = old_through;
                    }
                    self.set_parent_link(id, cur, old);
                }
            }
            Undo::Moved { from, to, moved } => {
                if let (Some(s), Some(d)) = (self.blobs.get(&from), self.blobs.get(&to)) {
                    let mut sm = s.meta.write();
                    let mut dm = d.meta.write();
                    for (i, c) in moved {
                        sm.clusters[i as usize] = c;
                        dm.clusters[i as usize] = ClusterIdx::NONE;
                    }
                }
            }
            Undo::ResizedThrough {
                resized,
                old_through,
            } => {
                if let Undo::Resized { id, .. } = &*resized {
                    if let Some(e) = self.blobs.get(id) {
                        e.meta.write().through = old_through;
                    }
                }
                self.undo(*resized);
            }
        }
    }

    /// The records that recreate the whole table: the body of a snapshot group.
    pub fn snapshot_records(&self) -> Vec<Record> {
        let mut out = vec![Record::SnapshotBegin {
            next_blob_id: self.next_blob_id,
            blob_count: self.blobs.len() as u64,
        }];
        for (id, e) in &self.blobs {
            let m = e.meta.read();
            out.push(Record::CreateBlob {
                id: *id,
                flags: m.flags,
            });
            if !m.clusters.is_empty() {
                out.push(Record::Resize {
                    id: *id,
                    clusters: m.clusters.len() as u64,
                });
            }
            for (index, first, count) in m.runs() {
                if first.is_some() {
                    out.push(Record::MapRun {
                        id: *id,
                        index,
                        first,
                        count,
                    });
                }
            }
            for ns in [XattrNs::User, XattrNs::Internal] {
                for (k, v) in m.ns(ns) {
                    out.push(Record::SetXattr {
                        id: *id,
                        ns,
                        name: k.clone(),
                        value: v.clone(),
                    });
                }
            }
        }
        // Parent links last: a parent may have a higher id than its child (a snapshot is
        // made after the blob it freezes).
        for (id, e) in &self.blobs {
            let m = e.meta.read();
            if m.parent.0 != 0 {
                out.push(Record::SetParent {
                    id: *id,
                    parent: m.parent,
                    through: m.through,
                });
            }
        }
        out.push(Record::SnapshotEnd {
            blob_count: self.blobs.len() as u64,
        });
        out
    }

    /// A plain copy of all metadata, for comparisons in checks and tests.
    pub fn export(&self) -> BTreeMap<BlobId, BlobMeta> {
        self.blobs
            .iter()
            .map(|(id, e)| (*id, e.meta.read().clone()))
            .collect()
    }
}

fn check_flags(flags: u64) -> Result<()> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Error::Invalid(format!(
            "unknown blob flags {:#x}",
            flags & !KNOWN_FLAGS
        )));
    }
    Ok(())
}

/// Checks an xattr name and value size against the format's limits.
pub fn check_xattr(name: &[u8], value_len: usize) -> Result<()> {
    if name.is_empty() || name.len() > MAX_XATTR_NAME {
        return Err(Error::Invalid(format!(
            "xattr name of {} bytes (1..={MAX_XATTR_NAME})",
            name.len()
        )));
    }
    if value_len > MAX_XATTR_VALUE {
        return Err(Error::Invalid(format!(
            "xattr value of {value_len} bytes (max {MAX_XATTR_VALUE})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(t: &mut Table, r: Record) -> Result<(Undo, Effects)> {
        let mut fx = Effects::default();
        t.apply(&r, &mut fx).map(|u| (u, fx))
    }

    #[test]
    fn apply_and_undo_roundtrip() {
        let mut t = Table::new(100, 16384);
        let id = BlobId(5);
        apply(
            &mut t,
            Record::CreateBlob {
                id,
                flags: FLAG_THIN,
            },
        )
        .unwrap();
        assert_eq!(t.next_blob_id, 6);
        apply(&mut t, Record::Resize { id, clusters: 4 }).unwrap();
        let (_, fx) = apply(
            &mut t,
            Record::MapRun {
                id,
                index: 1,
                first: ClusterIdx(10),
                count: 2,
            },
        )
        .unwrap();
        assert_eq!(fx.mapped, vec![ClusterIdx(10), ClusterIdx(11)]);
        let before = t.export();
        let mut undos = Vec::new();
        let mut fx = Effects::default();
        for r in [
            Record::SetXattr {
                id,
                ns: XattrNs::User,
                name: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            Record::Resize { id, clusters: 2 },
            Record::SetFlags {
                id,
                flags: FLAG_READ_ONLY,
            },
            Record::DeleteBlob { id },
        ] {
            undos.push(t.apply(&r, &mut fx).unwrap());
        }
        assert_eq!(fx.freed, vec![ClusterIdx(11), ClusterIdx(10)]);
        assert!(t.blobs.is_empty());
        for u in undos.into_iter().rev() {
            t.undo(u);
        }
        assert_eq!(t.export(), before);
    }

    #[test]
    fn invalid_records() {
        let mut t = Table::new(100, 16384);
        let id = BlobId(1);
        assert!(apply(&mut t, Record::Resize { id, clusters: 1 }).is_err());
        apply(&mut t, Record::CreateBlob { id, flags: 0 }).unwrap();
        assert!(apply(&mut t, Record::CreateBlob { id, flags: 0 }).is_err());
        assert!(apply(
            &mut t,
            Record::CreateBlob {
                id: BlobId(2),
                flags: 8
            }
        )
        .is_err());
        assert!(apply(
            &mut t,
            Record::CreateBlob {
                id: BlobId(0),
                flags: 0
            }
        )
        .is_err());
        assert!(apply(&mut t, Record::Resize { id, clusters: 101 }).is_err());
        apply(&mut t, Record::Resize { id, clusters: 3 }).unwrap();
        for (index, first, count) in [(2, 5, 2), (0, 99, 2), (0, 5, 0), (u64::MAX, 5, 2)] {
            assert!(apply(
                &mut t,
                Record::MapRun {
                    id,
                    index,
                    first: ClusterIdx(first),
                    count
                }
            )
            .is_err());
        }
        assert!(apply(
            &mut t,
            Record::RemoveXattr {
                id,
                ns: XattrNs::User,
                name: b"zz".to_vec()
            }
        )
        .is_err());
        assert!(apply(&mut t, Record::SnapshotEnd { blob_count: 0 }).is_err());
        assert_eq!(t.blobs[&id].meta.read().clusters.len(), 3);
    }

    #[test]
    fn data_check_validates_and_changes_nothing() {
        let mut t = Table::new(100, 16384);
        let id = BlobId(1);
        let check = |offset, len| Record::DataCheck {
            id,
            offset,
            len,
            crc: 7,
        };
        assert!(matches!(
            apply(&mut t, check(0, 0)),
            Err(Error::NotFound(_))
        ));
        apply(
            &mut t,
            Record::CreateBlob {
                id,
                flags: FLAG_THIN,
            },
        )
        .unwrap();
        apply(&mut t, Record::Resize { id, clusters: 2 }).unwrap();
        let before = t.export();
        for (offset, len) in [(0, 0), (0, 32768), (32767, 1), (100, 5000), (32768, 0)] {
            let (u, fx) = apply(&mut t, check(offset, len)).unwrap();
            assert!(matches!(u, Undo::Nothing));
            assert!(fx.freed.is_empty() && fx.mapped.is_empty());
            t.undo(u);
        }
        for (offset, len) in [(0, 32769), (32768, 1), (u64::MAX, 2), (1, u64::MAX)] {
            assert!(apply(&mut t, check(offset, len)).is_err(), "{offset}+{len}");
        }
        assert_eq!(t.export(), before);
        // Snapshots never carry checks.
        assert!(!t
            .snapshot_records()
            .iter()
            .any(|r| matches!(r, Record::DataCheck { .. })));
    }

    /// The checkpoint layout: a snapshot group's exact bytes for a small table.
    #[test]
    fn snapshot_golden_bytes() {
        use crate::format::record::encode_all;
        let mut t = Table::new(100, 16384);
        let id = BlobId(7);
        let mut fx = Effects::default();
        for r in [
            Record::CreateBlob {
                id,
                flags: FLAG_THIN,
            },
            Record::Resize { id, clusters: 3 },
            Record::MapRun {
                id,
                index: 1,
                first: ClusterIdx(20),
                count: 2,
            },
            Record::SetXattr {
                id,
                ns: XattrNs::Internal,
                name: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        ] {
            t.apply(&r, &mut fx).unwrap();
        }
        let bytes = encode_all(&t.snapshot_records());
        let mut e: Vec<u8> = Vec::new();
        let mut put = |ty: u8, words: &[u64]| {
            e.push(ty);
            for w in words {
                e.extend_from_slice(&w.to_le_bytes());
            }
        };
        put(8, &[8, 1]); // SnapshotBegin: next id 8, one blob
        put(1, &[7, FLAG_THIN]); // CreateBlob
        put(3, &[7, 3]); // Resize to 3 clusters
        put(4, &[7, 1, 20, 2]); // MapRun: indices 1..3 -> clusters 20..22
        put(5, &[7]); // SetXattr, then ns, name len, value len, name, value
        e.push(1);
        e.extend_from_slice(&1u16.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(b"kv");
        e.push(9); // SnapshotEnd
        e.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(bytes, e);
    }

    #[test]
    fn runs_and_snapshot_records() {
        let m = BlobMeta {
            clusters: [5, 6, 7, 0, 0, 9, 3, 4]
                .iter()
                .map(|&c| ClusterIdx(c))
                .collect(),
            ..BlobMeta::default()
        };
        assert_eq!(
            m.runs(),
            vec![
                (0, ClusterIdx(5), 3),
                (3, ClusterIdx(0), 2),
                (5, ClusterIdx(9), 1),
                (6, ClusterIdx(3), 2)
            ]
        );
        let mut t = Table::new(100, 16384);
        let id = BlobId(3);
        apply(
            &mut t,
            Record::CreateBlob {
                id,
                flags: FLAG_READ_ONLY,
            },
        )
        .unwrap();
        apply(&mut t, Record::Resize { id, clusters: 8 }).unwrap();
        for (i, c) in m.clusters.iter().enumerate() {
            if c.is_some() {
                apply(
                    &mut t,
                    Record::MapRun {
                        id,
                        index: i as u64,
                        first: *c,
                        count: 1,
                    },
                )
                .unwrap();
            }
        }
        let snap = t.snapshot_records();
        let mut t2 = Table::new(100, 16384);
        for r in &snap[1..snap.len() - 1] {
            apply(&mut t2, r.clone()).unwrap();
        }
        assert_eq!(t2.export(), t.export());
    }
}
