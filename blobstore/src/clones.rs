//! Snapshots, clones, inflate, decouple and absorbing deletes.
//!
//! Every cluster has exactly one owner; sharing is by parent links. A snapshot takes its
//! blob's clusters (`MoveClusters`) and becomes the blob's parent (`SetParent`): the blob is
//! now an empty thin clone reading everything through the snapshot, and its next write to a
//! cluster copies the snapshot's cluster first (copy-on-write, in `channel`). A clone is an
//! empty thin blob whose parent is a snapshot. Chains form when a clone is snapshotted
//! again. Only read-only blobs (snapshots) can be cloned, so no parent's data ever changes
//! under its clones; a blob with clones cannot be deleted, except that a snapshot with
//! exactly one clone can be absorbed by it (`delete_absorbed`).
//!
//! Each operation is one atomic group of records and, like the ordinary API, ordered: the
//! data written before it is durable before it. Writes to a blob must not be in flight
//! while it is being snapshotted (they would land in the snapshot's clusters).

use crate::error::{Error, Result};
use crate::format::record::{Record, XattrNs};
use crate::meta::{BlobMeta, FLAG_READ_ONLY, FLAG_THIN};
use crate::store::{Blobstore, Transaction};
use crate::units::BlobId;
use driver::DmaBuf;

/// How a blob relates to others through parent links (see [`Blobstore::family`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    /// The parent chain, nearest first.
    pub ancestors: Vec<BlobId>,
    /// Blobs whose parent is this one.
    pub children: Vec<BlobId>,
}

impl Blobstore {
    fn require_clones(&self) -> Result<()> {
        if !self.supports_clones() {
            return Err(Error::Invalid(
                "this store predates snapshots and clones (no `clones` feature): \
                 format a new one to use them"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Makes a read-only snapshot of blob `id` and returns its id. Cheap: the snapshot takes
    /// the blob's clusters and xattrs are copied; the blob becomes a thin clone of the
    /// snapshot (same size, same content), its writes copying clusters on first touch.
    /// Durable after the next `sync`. No write to the blob may be in flight meanwhile.
    pub fn snapshot(&self, id: BlobId) -> Result<BlobId> {
        self.inner.check_writable()?;
        self.require_clones()?;
        let mut st = self.inner.state.lock();
        let m: BlobMeta = st.table.get(id)?.meta.read().clone();
        let snap = BlobId(st.table.next_blob_id);
        let recs = snapshot_records(id, &m, snap);
        self.inner.apply_locked(&mut st, recs)?;
        Ok(snap)
    }

    /// Makes a writable clone of snapshot `snap` (a read-only blob) and returns its id: a
    /// thin blob of the same size and xattrs reading everything through the snapshot.
    pub fn clone_blob(&self, snap: BlobId) -> Result<BlobId> {
        self.inner.check_writable()?;
        self.require_clones()?;
        let mut st = self.inner.state.lock();
        let m: BlobMeta = st.table.get(snap)?.meta.read().clone();
        let id = BlobId(st.table.next_blob_id);
        let recs = clone_records(snap, &m, id)?;
        self.inner.apply_locked(&mut st, recs)?;
        Ok(id)
    }

    /// Deletes snapshot `snap`, which has exactly one clone: the clone takes the snapshot's
    /// clusters it reads through it and then reads through the snapshot's own parent; the
    /// snapshot's other clusters are freed. The clone's content does not change. Durable when
    /// it returns (it syncs); no write to the clone may be in flight meanwhile.
    pub fn delete_absorbed(&self, snap: BlobId) -> Result<()> {
        self.inner.check_writable()?;
        let mut st = self.inner.state.lock();
        let children = children_of(&st.table, snap);
        let [child] = children[..] else {
            return Err(Error::Invalid(format!(
                "blob {snap} has {} clones: only a snapshot with exactly one can be absorbed",
                children.len()
            )));
        };
        let sm: BlobMeta = st.table.get(snap)?.meta.read().clone();
        let cm: BlobMeta = st.table.get(child)?.meta.read().clone();
        let recs = absorb_records(snap, &sm, child, &cm);
        self.inner.apply_locked(&mut st, recs)?;
        drop(st);
        // Durable before returning: the clone now owns clusters that, until this commit is
        // durable, still belong to the snapshot in the store's durable state; a write into
        // one of them in place would change the snapshot a crash brings back.
        self.sync()
    }

    /// Makes blob `id` independent: every cluster it reads through its ancestors is copied
    /// into a cluster of its own, every other cluster is allocated (zeroed), then the parent
    /// link goes. The content does not change.
    pub fn inflate(&self, id: BlobId) -> Result<()> {
        self.copy_from_parents(id, true)
    }

    /// Copies into blob `id` only the clusters its parent itself holds, then links the blob
    /// to its grandparent (what it read through the parent's own parent stays shared).
    pub fn decouple_parent(&self, id: BlobId) -> Result<()> {
        self.copy_from_parents(id, false)
    }

    fn copy_from_parents(&self, id: BlobId, all: bool) -> Result<()> {
        self.inner.check_writable()?;
        let blob = self.open_blob(id)?;
        let (m, parent_meta) = {
            let st = self.inner.state.lock();
            let m: BlobMeta = st.table.get(id)?.meta.read().clone();
            let pm = if m.parent.0 != 0 {
                Some(st.table.get(m.parent)?.meta.read().clone())
            } else {
                None
            };
            (m, pm)
        };
        if m.flags & FLAG_READ_ONLY != 0 {
            // Even when nothing needs copying: a snapshot's links do not change under it.
            return Err(Error::ReadOnly(format!(
                "blob {id} is read-only (a snapshot): inflate or decouple its clones instead"
            )));
        }
        let Some(pm) = parent_meta else {
            if all {
                // Already independent: "all clusters allocated" still holds after this.
                return self.allocate_all(&blob, &m);
            }
            return Err(Error::Invalid(format!("blob {id} has no parent")));
        };
        let cs = self.cluster_size();
        let mut ch = self.channel()?;
        for i in 0..m.clusters.len() as u64 {
            if m.clusters[i as usize].is_some() {
                continue;
            }
            let from_parent =
                i < m.through && pm.clusters.get(i as usize).is_some_and(|c| c.is_some());
            if !(all || from_parent) {
                continue;
            }
            // Read the cluster as the blob sees it, write it back whole: the write allocates
            // a cluster of the blob's own (a whole-cluster write copies nothing first).
            let buf = DmaBuf::zeroed(cs as usize);
            let buf = blob.read_buf(&mut ch, i * cs, buf)?;
            blob.write_buf(&mut ch, i * cs, buf)?;
        }
        let mut st = self.inner.state.lock();
        let (parent, through) = if all || pm.parent.0 == 0 {
            (BlobId(0), 0)
        } else {
            (pm.parent, m.through.min(pm.through))
        };
        self.inner.apply_locked(
            &mut st,
            vec![Record::SetParent {
                id,
                parent,
                through,
            }],
        )
    }

    /// Allocates every unallocated cluster of a blob without a parent (zeroed).
    fn allocate_all(&self, blob: &crate::blob::Blob, m: &BlobMeta) -> Result<()> {
        let cs = self.cluster_size();
        let mut ch = self.channel()?;
        for (i, c) in m.clusters.iter().enumerate() {
            if !c.is_some() {
                blob.write_buf(&mut ch, i as u64 * cs, DmaBuf::zeroed(cs as usize))?;
            }
        }
        Ok(())
    }

    /// Whether the store can hold snapshots and clones (the `clones` feature, set by
    /// `format`).
    pub fn supports_clones(&self) -> bool {
        self.inner.clones()
    }

    /// How many blobs have `id` as their parent (cheap, unlike [`Blobstore::family`]).
    pub fn child_count(&self, id: BlobId) -> u64 {
        self.inner.state.lock().table.child_count(id)
    }

    /// Blob `id`'s ancestors (nearest first) and children.
    pub fn family(&self, id: BlobId) -> Result<Family> {
        let st = self.inner.state.lock();
        let mut ancestors = Vec::new();
        let mut cur = st.table.get(id)?.meta.read().parent;
        while cur.0 != 0 && ancestors.len() <= st.table.blobs.len() {
            ancestors.push(cur);
            cur = st.table.get(cur)?.meta.read().parent;
        }
        Ok(Family {
            ancestors,
            children: children_of(&st.table, id),
        })
    }
}

/// The records of a snapshot `snap` of blob `id` (whose metadata is `m`).
fn snapshot_records(id: BlobId, m: &BlobMeta, snap: BlobId) -> Vec<Record> {
    let len = m.clusters.len() as u64;
    let mut recs = vec![Record::CreateBlob {
        id: snap,
        flags: FLAG_THIN | FLAG_READ_ONLY,
    }];
    if len > 0 {
        recs.push(Record::Resize {
            id: snap,
            clusters: len,
        });
    }
    recs.push(Record::MoveClusters {
        from: id,
        to: snap,
        count: len,
    });
    if m.parent.0 != 0 {
        // The snapshot inherits the chain the blob read through.
        recs.push(Record::SetParent {
            id: snap,
            parent: m.parent,
            through: m.through,
        });
    }
    recs.push(Record::SetParent {
        id,
        parent: snap,
        through: len,
    });
    if m.flags & FLAG_THIN == 0 {
        recs.push(Record::SetFlags {
            id,
            flags: m.flags | FLAG_THIN,
        });
    }
    recs.extend(copy_xattrs(m, snap));
    recs
}

/// The records of `child` absorbing its parent `snap` (metadata `sm`, `cm`).
fn absorb_records(snap: BlobId, sm: &BlobMeta, child: BlobId, cm: &BlobMeta) -> Vec<Record> {
    let (parent, through) = if sm.parent.0 != 0 {
        (sm.parent, cm.through.min(sm.through))
    } else {
        (BlobId(0), 0)
    };
    vec![
        Record::MoveClusters {
            from: snap,
            to: child,
            count: cm.through,
        },
        Record::SetParent {
            id: child,
            parent,
            through,
        },
        Record::DeleteBlob { id: snap },
    ]
}

/// The records of a clone `id` of snapshot `snap` (whose metadata is `m`).
fn clone_records(snap: BlobId, m: &BlobMeta, id: BlobId) -> Result<Vec<Record>> {
    if m.flags & FLAG_READ_ONLY == 0 {
        return Err(Error::Invalid(format!(
            "blob {snap} is writable: only snapshots (read-only blobs) can be cloned; \
             snapshot it first"
        )));
    }
    let len = m.clusters.len() as u64;
    let mut recs = vec![Record::CreateBlob {
        id,
        flags: FLAG_THIN,
    }];
    if len > 0 {
        recs.push(Record::Resize { id, clusters: len });
    }
    recs.push(Record::SetParent {
        id,
        parent: snap,
        through: len,
    });
    recs.extend(copy_xattrs(m, id));
    Ok(recs)
}

impl Transaction<'_> {
    /// Adds a snapshot of blob `id` (see [`Blobstore::snapshot`]) and returns the id the
    /// snapshot will have: many blobs snapshotted in one transaction are frozen together,
    /// atomically. Built from the blob's metadata now: snapshot each blob at most once per
    /// transaction, and change none of them before the commit.
    pub fn snapshot(&mut self, id: BlobId) -> Result<BlobId> {
        self.store.require_clones()?;
        let (m, snap) = {
            let mut st = self.store.inner.state.lock();
            let m: BlobMeta = st.table.get(id)?.meta.read().clone();
            let snap = BlobId(st.table.next_blob_id);
            st.table.next_blob_id = (snap.0 + 1).min(crate::meta::MAX_BLOB_ID);
            (m, snap)
        };
        self.records.extend(snapshot_records(id, &m, snap));
        Ok(snap)
    }

    /// Adds the absorbing delete of snapshot `snap` by its only child `child` (see
    /// [`Blobstore::delete_absorbed`], whose sync the caller owes: until this commit is
    /// durable, `child` must not be written in place).
    pub fn absorb_into(&mut self, snap: BlobId, child: BlobId) -> Result<()> {
        let (sm, cm, kids) = {
            let st = self.store.inner.state.lock();
            let sm: BlobMeta = st.table.get(snap)?.meta.read().clone();
            let cm: BlobMeta = st.table.get(child)?.meta.read().clone();
            (sm, cm, st.table.child_count(snap))
        };
        if cm.parent != snap || kids != 1 {
            return Err(Error::Invalid(format!(
                "blob {snap} has {kids} clones; {child} is not its only one"
            )));
        }
        self.records.extend(absorb_records(snap, &sm, child, &cm));
        Ok(())
    }

    /// Adds a clone of snapshot `snap` (see [`Blobstore::clone_blob`]); returns its id.
    pub fn clone_blob(&mut self, snap: BlobId) -> Result<BlobId> {
        self.store.require_clones()?;
        let (m, id) = {
            let mut st = self.store.inner.state.lock();
            let m: BlobMeta = st.table.get(snap)?.meta.read().clone();
            let id = BlobId(st.table.next_blob_id);
            st.table.next_blob_id = (id.0 + 1).min(crate::meta::MAX_BLOB_ID);
            (m, id)
        };
        self.records.extend(clone_records(snap, &m, id)?);
        Ok(id)
    }
}

fn children_of(t: &crate::meta::Table, id: BlobId) -> Vec<BlobId> {
    if t.child_count(id) == 0 {
        return Vec::new();
    }
    t.blobs
        .iter()
        .filter(|(_, e)| e.meta.read().parent == id)
        .map(|(k, _)| *k)
        .collect()
}

fn copy_xattrs(m: &BlobMeta, to: BlobId) -> Vec<Record> {
    let mut out = Vec::new();
    for ns in [XattrNs::User, XattrNs::Internal] {
        for (k, v) in m.ns(ns) {
            out.push(Record::SetXattr {
                id: to,
                ns,
                name: k.clone(),
                value: v.clone(),
            });
        }
    }
    out
}
