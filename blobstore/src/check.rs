//! The store's own consistency check.
//!
//! In memory: every cluster is owned at most once (superblock area, log segments, blobs,
//! frees waiting for a commit), the allocation bitmap matches ownership exactly (no leaked
//! and no doubly-used clusters), flags and xattrs are within the format's limits. On disk:
//! when no change is waiting for a commit, the log is replayed again from the device and
//! must rebuild exactly the metadata held in memory.

use crate::error::Result;
use crate::format::record::{MAX_XATTR_NAME, MAX_XATTR_VALUE};
use crate::meta::KNOWN_FLAGS;
use crate::recovery;
use crate::store::Blobstore;
use crate::units::ClusterIdx;

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
