//! The store's own consistency check.
//!
//! In memory: every cluster is owned at most once (superblock area, log segments, blobs,
//! frees waiting for a commit), the allocation bitmap matches ownership exactly (no leaked
//! and no doubly-used clusters), flags and xattrs are within the format's limits, parent
//! links (snapshots and clones) point at existing read-only blobs without cycles and agree
//! with the children counts (see [`check_links`], which fsck runs too). On disk: when no
//! change is waiting for a commit, the log is replayed again from the device and must
//! rebuild exactly the metadata held in memory.

use crate::error::Result;
use crate::format::record::{MAX_XATTR_NAME, MAX_XATTR_VALUE};
use crate::meta::{Table, FLAG_READ_ONLY, KNOWN_FLAGS};
use crate::recovery;
use crate::store::Blobstore;
use crate::units::{BlobId, ClusterIdx};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// One line per problem; empty when consistent.
    pub problems: Vec<String>,
    pub blobs: u64,
    pub blob_clusters: u64,
    pub log_segments: u64,
    pub used_clusters: u64,
    /// Whether the on-disk replay comparison ran.
    pub verified_on_disk: bool,
    /// Blob clusters whose owner has children (clones read through them); with
    /// `exclusive_clusters` they add up to `blob_clusters`. See [`Sharing`].
    pub shared_clusters: u64,
    /// Blob clusters whose owner has no children.
    pub exclusive_clusters: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Free,
    Superblock,
    Log,
    Blob(u64),
    PendingFree,
}

pub(crate) fn check(store: &Blobstore) -> Result<CheckReport> {
    let inner = store.inner();
    // Hold the committer for the whole check: no commit runs meanwhile, so memory and disk
    // can be compared.
    let committer = inner.committer.lock();
    let log_segments = committer.journal.segments.clone();
    let st = inner.state.lock();
    let mut pending_frees = st.pending_frees.clone();
    pending_frees.extend_from_slice(&committer.releasing);
    let count = st.alloc.count();
    let mut rep = CheckReport::default();
    let mut owner = vec![Owner::Free; count as usize];
    let mut claim = |c: ClusterIdx, who: Owner, rep: &mut CheckReport| {
        if c.0 >= count {
            rep.problems.push(format!(
                "{who:?} references {c}, beyond the device's {count}"
            ));
            return;
        }
        let slot = &mut owner[c.0 as usize];
        if *slot != Owner::Free {
            rep.problems
                .push(format!("{c} owned twice: by {:?} and by {who:?}", *slot));
        } else {
            *slot = who;
        }
    };
    claim(ClusterIdx(0), Owner::Superblock, &mut rep);
    for s in &log_segments {
        claim(*s, Owner::Log, &mut rep);
    }
    rep.log_segments = log_segments.len() as u64;
    for (id, e) in &st.table.blobs {
        rep.blobs += 1;
        if id.0 >= st.table.next_blob_id {
            rep.problems.push(format!(
                "blob {id} not below the next blob id {}",
                st.table.next_blob_id
            ));
        }
        let m = e.meta.read();
        if m.flags & !KNOWN_FLAGS != 0 {
            rep.problems.push(format!(
                "blob {id} has unknown flags {:#x}",
                m.flags & !KNOWN_FLAGS
            ));
        }
        if m.clusters.len() as u64 > count {
            rep.problems.push(format!(
                "blob {id} has {} clusters, more than the device",
                m.clusters.len()
            ));
        }
        for c in m.clusters.iter().filter(|c| c.is_some()) {
            rep.blob_clusters += 1;
            claim(*c, Owner::Blob(id.0), &mut rep);
        }
        for (k, v) in m.xattrs.iter().chain(m.internal.iter()) {
            if k.is_empty() || k.len() > MAX_XATTR_NAME || v.len() > MAX_XATTR_VALUE {
                rep.problems
                    .push(format!("blob {id} has an xattr outside the size limits"));
            }
        }
    }
    let (sharing, link_problems) = check_links(&st.table);
    rep.shared_clusters = sharing.shared_clusters;
    rep.exclusive_clusters = sharing.exclusive_clusters;
    rep.problems
        .extend(link_problems.into_iter().map(|p| p.detail));
    for c in &pending_frees {
        claim(*c, Owner::PendingFree, &mut rep);
    }
    for c in &st.bg_segments {
        claim(*c, Owner::Log, &mut rep);
    }
    let mut used = 0u64;
    for (i, o) in owner.iter().enumerate() {
        let c = ClusterIdx(i as u64);
        let marked = st.alloc.is_used(c);
        if marked {
            used += 1;
        }
        match (o, marked) {
            (Owner::Free, true) => rep
                .problems
                .push(format!("{c} leaked: marked used, owned by nothing")),
            (o, false) if *o != Owner::Free => rep
                .problems
                .push(format!("{c} owned by {o:?} but marked free")),
            _ => {}
        }
    }
    if used != st.alloc.used() {
        rep.problems.push(format!(
            "allocator counts {} used clusters, bitmap has {used}",
            st.alloc.used()
        ));
    }
    rep.used_clusters = used;
    // Compare with what the device holds, when nothing is waiting for a commit.
    if st.pending.is_empty() && pending_frees.is_empty() {
        let memory = st.table.export();
        drop(st);
        let dev = inner.dev.as_ref();
        let mut qp = dev.open_qpair(16)?;
        let disk = recovery::read_superblocks(qp.as_mut(), dev)
            .and_then(|p| recovery::replay(qp.as_mut(), dev, &p.active, false));
        match disk {
            Ok(r) => {
                rep.verified_on_disk = true;
                let on_disk = r.table.export();
                // Metadata changes may have been applied since the state lock was released;
                // they are not on disk yet, so compare only if memory did not move.
                if on_disk != memory && inner.state.lock().table.export() == memory {
                    for (id, m) in &memory {
                        match on_disk.get(id) {
                            None => rep.problems.push(format!("blob {id} is not on disk")),
                            Some(d) if d != m => {
                                rep.problems.push(format!("blob {id} differs on disk"))
                            }
                            _ => {}
                        }
                    }
                    for id in on_disk.keys() {
                        if !memory.contains_key(id) {
                            rep.problems
                                .push(format!("blob {id} on disk but deleted in memory"));
                        }
                    }
                }
            }
            Err(e) => rep
                .problems
                .push(format!("replaying the log from the device failed: {e}")),
        }
    }
    drop(committer);
    Ok(rep)
}

/// How blob clusters are shared through parent links. Every cluster has exactly one owner;
/// a cluster is *shared* when its owner has children (clones, or the blob a snapshot was
/// taken of, read through it), *exclusive* when its owner has none. `blobfs df` and
/// `blobfs fsck` both count with [`check_links`], so they agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sharing {
    /// Allocated blob clusters (each cluster-map entry counts, as in
    /// [`CheckReport::blob_clusters`]) whose owner has children.
    pub shared_clusters: u64,
    /// Allocated blob clusters whose owner has no children.
    pub exclusive_clusters: u64,
    /// Blobs with a parent link (clones and blobs that were snapshotted).
    pub linked_blobs: u64,
    /// Blobs with children (snapshots that something reads through).
    pub parent_blobs: u64,
}

/// A parent link that breaks an invariant (see [`check_links`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkProblem {
    /// A stable identifier (fsck's finding kind): `parent-missing`, `parent-cycle`,
    /// `parent-writable`, `through-beyond-size`, `through-without-parent`,
    /// `child-count-wrong` or `parent-link-stale`.
    pub kind: &'static str,
    pub detail: String,
    /// Whether fsck can repair it without changing what any blob reads: a writable parent
    /// is made read-only, `through` is limited to the blob's size, counts and links held
    /// in memory are rebuilt from the parent ids. A missing parent or a cycle is not.
    pub repairable: bool,
}

impl LinkProblem {
    fn new(kind: &'static str, repairable: bool, detail: String) -> LinkProblem {
        LinkProblem {
            kind,
            detail,
            repairable,
        }
    }
}

/// Checks the parent links of `table` and counts shared and exclusive clusters:
/// - every parent exists and is read-only (only snapshots can be cloned, and a snapshotted
///   blob is the child of its read-only snapshot);
/// - the chains have no cycles;
/// - `through` is at most the blob's number of clusters, and 0 without a parent;
/// - `Table::children` holds exactly the counts the parent links give, and each entry's
///   parent handle is the parent's entry.
///
/// Sharing follows the parent ids as they are (a missing parent counts as no parent).
pub fn check_links(table: &Table) -> (Sharing, Vec<LinkProblem>) {
    let mut problems = Vec::new();
    let mut sharing = Sharing::default();
    // Children counts as the parent links give them.
    let mut derived: BTreeMap<BlobId, u64> = BTreeMap::new();
    for (id, e) in &table.blobs {
        let m = e.meta.read();
        let len = m.clusters.len() as u64;
        if m.parent.0 == 0 {
            if m.through != 0 {
                problems.push(LinkProblem::new(
                    "through-without-parent",
                    true,
                    format!(
                        "blob {id} has no parent but reads through it up to index {}",
                        m.through
                    ),
                ));
            }
            if e.parent.read().is_some() {
                problems.push(LinkProblem::new(
                    "parent-link-stale",
                    true,
                    format!("blob {id} has no parent but holds a parent handle"),
                ));
            }
            continue;
        }
        sharing.linked_blobs += 1;
        *derived.entry(m.parent).or_insert(0) += 1;
        if m.through > len {
            problems.push(LinkProblem::new(
                "through-beyond-size",
                true,
                format!(
                    "blob {id} reads through its parent {} up to index {}, beyond its {len} \
                     clusters",
                    m.parent, m.through
                ),
            ));
        }
        let Some(p) = table.blobs.get(&m.parent) else {
            problems.push(LinkProblem::new(
                "parent-missing",
                false,
                format!("blob {id} has parent {}, which does not exist", m.parent),
            ));
            continue;
        };
        if m.parent == *id {
            // Reported as a cycle below.
            continue;
        }
        if p.meta.read().flags & FLAG_READ_ONLY == 0 {
            problems.push(LinkProblem::new(
                "parent-writable",
                true,
                format!(
                    "blob {id} has parent {}, which is writable (parents must be read-only \
                     snapshots)",
                    m.parent
                ),
            ));
        }
        if !e.parent.read().as_ref().is_some_and(|h| Arc::ptr_eq(h, p)) {
            problems.push(LinkProblem::new(
                "parent-link-stale",
                true,
                format!(
                    "blob {id}: the parent handle does not lead to its parent {}",
                    m.parent
                ),
            ));
        }
    }
    for (id, e) in &table.blobs {
        let n = e.meta.read().allocated();
        if derived.get(id).copied().unwrap_or(0) > 0 {
            sharing.shared_clusters += n;
            sharing.parent_blobs += 1;
        } else {
            sharing.exclusive_clusters += n;
        }
    }
    // Children counts: the table's against the links'.
    let ids: std::collections::BTreeSet<BlobId> = derived
        .keys()
        .chain(table.children.keys())
        .copied()
        .collect();
    for id in ids {
        let (have, want) = (
            table.child_count(id),
            derived.get(&id).copied().unwrap_or(0),
        );
        if have != want {
            problems.push(LinkProblem::new(
                "child-count-wrong",
                true,
                format!("blob {id} is counted with {have} children, its parent links give {want}"),
            ));
        }
    }
    problems.extend(find_cycles(table));
    (sharing, problems)
}

/// One problem per cycle of parent links, naming its blobs.
fn find_cycles(table: &Table) -> Vec<LinkProblem> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut out = Vec::new();
    let mut mark: BTreeMap<BlobId, Mark> = BTreeMap::new();
    for start in table.blobs.keys() {
        let mut path: Vec<BlobId> = Vec::new();
        let mut cur = *start;
        while cur.0 != 0 {
            match mark.get(&cur) {
                Some(Mark::Done) => break,
                Some(Mark::OnPath) => {
                    let at = path.iter().position(|b| *b == cur).unwrap_or(0);
                    let mut names: Vec<String> = path[at..].iter().map(|b| b.to_string()).collect();
                    names.push(cur.to_string());
                    out.push(LinkProblem::new(
                        "parent-cycle",
                        false,
                        format!("parent links form a cycle: blob {}", names.join(" -> ")),
                    ));
                    break;
                }
                None => {}
            }
            let Some(e) = table.blobs.get(&cur) else {
                // A missing parent: reported on its own.
                break;
            };
            mark.insert(cur, Mark::OnPath);
            path.push(cur);
            cur = e.meta.read().parent;
        }
        for b in path {
            mark.insert(b, Mark::Done);
        }
    }
    out
}

impl Blobstore {
    /// Shared and exclusive clusters as the store holds them now (see [`Sharing`]).
    pub fn cluster_sharing(&self) -> Sharing {
        check_links(&self.inner().state.lock().table).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::Record;
    use crate::meta::{Effects, FLAG_THIN};

    /// Blob 1 (4 clusters, 2 allocated) snapshotted as blob 2; blob 3 a clone of 2 with one
    /// cluster of its own; blob 4 independent with one cluster.
    fn table() -> Table {
        let mut t = Table::new(100, 16384);
        let mut fx = Effects::default();
        let recs = [
            Record::CreateBlob {
                id: BlobId(1),
                flags: FLAG_THIN,
            },
            Record::Resize {
                id: BlobId(1),
                clusters: 4,
            },
            Record::MapRun {
                id: BlobId(1),
                index: 0,
                first: ClusterIdx(10),
                count: 2,
            },
            Record::CreateBlob {
                id: BlobId(2),
                flags: FLAG_THIN | FLAG_READ_ONLY,
            },
            Record::Resize {
                id: BlobId(2),
                clusters: 4,
            },
            Record::MoveClusters {
                from: BlobId(1),
                to: BlobId(2),
                count: 4,
            },
            Record::SetParent {
                id: BlobId(1),
                parent: BlobId(2),
                through: 4,
            },
            Record::CreateBlob {
                id: BlobId(3),
                flags: FLAG_THIN,
            },
            Record::Resize {
                id: BlobId(3),
                clusters: 4,
            },
            Record::SetParent {
                id: BlobId(3),
                parent: BlobId(2),
                through: 4,
            },
            Record::MapRun {
                id: BlobId(3),
                index: 1,
                first: ClusterIdx(20),
                count: 1,
            },
            Record::CreateBlob {
                id: BlobId(4),
                flags: 0,
            },
            Record::Resize {
                id: BlobId(4),
                clusters: 1,
            },
            Record::MapRun {
                id: BlobId(4),
                index: 0,
                first: ClusterIdx(30),
                count: 1,
            },
        ];
        for r in &recs {
            t.apply(r, &mut fx).unwrap();
        }
        t
    }

    fn kinds(t: &Table) -> Vec<&'static str> {
        check_links(t).1.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn sharing_counts_of_a_snapshot_and_a_clone() {
        let t = table();
        let (s, problems) = check_links(&t);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            s,
            Sharing {
                shared_clusters: 2,
                exclusive_clusters: 2,
                linked_blobs: 2,
                parent_blobs: 1,
            }
        );
    }

    #[test]
    fn broken_links_are_found() {
        // A writable parent.
        let t = table();
        t.blobs[&BlobId(2)].meta.write().flags = FLAG_THIN;
        assert_eq!(kinds(&t), ["parent-writable", "parent-writable"]);
        // `through` beyond the size, and without a parent.
        let t = table();
        t.blobs[&BlobId(3)].meta.write().through = 5;
        t.blobs[&BlobId(4)].meta.write().through = 1;
        assert_eq!(kinds(&t), ["through-beyond-size", "through-without-parent"]);
        // Children counts out of step with the links.
        let mut t = table();
        t.children.insert(BlobId(2), 1);
        t.children.insert(BlobId(4), 1);
        let (_, p) = check_links(&t);
        assert_eq!(
            p.iter().map(|p| p.kind).collect::<Vec<_>>(),
            ["child-count-wrong", "child-count-wrong"]
        );
        assert!(p[0]
            .detail
            .contains("counted with 1 children, its parent links give 2"));
        // A stale parent handle.
        let t = table();
        *t.blobs[&BlobId(3)].parent.write() = t.blobs.get(&BlobId(4)).cloned();
        assert_eq!(kinds(&t), ["parent-link-stale"]);
        // A missing parent (the count moves with it, as a deleted parent would leave it).
        let mut t = table();
        t.blobs[&BlobId(3)].meta.write().parent = BlobId(9);
        t.children.insert(BlobId(2), 1);
        t.children.insert(BlobId(9), 1);
        let (s, p) = check_links(&t);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].kind, "parent-missing");
        assert!(!p[0].repairable);
        // Blob 3's cluster stays exclusive; a missing parent shares nothing.
        assert_eq!((s.shared_clusters, s.exclusive_clusters), (2, 2));
    }

    #[test]
    fn cycles_are_reported_once_each() {
        // 2 -> 1 -> 2 (1's parent is 2 already), and 4 -> 4.
        let mut t = table();
        for (id, parent) in [(2, 1), (4, 4)] {
            let mut m = t.blobs[&BlobId(id)].meta.write();
            m.parent = BlobId(parent);
            m.through = m.clusters.len() as u64;
        }
        for id in [1, 2, 4] {
            t.blobs[&BlobId(id)].meta.write().flags |= FLAG_READ_ONLY;
        }
        t.children.insert(BlobId(1), 1);
        t.children.insert(BlobId(4), 1);
        // Handles in step, so only the cycles remain.
        for id in [2, 4] {
            let p = t.blobs[&BlobId(id)].meta.read().parent;
            *t.blobs[&BlobId(id)].parent.write() = t.blobs.get(&p).cloned();
        }
        let (_, p) = check_links(&t);
        let cycles: Vec<&str> = p.iter().map(|p| p.detail.as_str()).collect();
        assert_eq!(
            cycles,
            [
                "parent links form a cycle: blob 0x1 -> 0x2 -> 0x1",
                "parent links form a cycle: blob 0x4 -> 0x4"
            ]
        );
        assert!(p.iter().all(|p| p.kind == "parent-cycle" && !p.repairable));
    }
}
