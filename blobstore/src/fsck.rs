//! Offline check and repair of the store itself (the filesystem on top has its own).
//!
//! `check_store` reads both superblock copies and replays the log leniently (see
//! [`recovery::replay_lenient`]), collecting findings instead of failing, then checks the
//! parent links of the state it rebuilt and counts shared and exclusive clusters (see
//! [`check_links`]). `repair_store` fixes what can be fixed without guessing: clusters owned
//! twice are cloned (each owner keeps the bytes it had), unknown flags are cleared, records
//! that do not apply (a parent link to a missing blob or making a cycle among them) and
//! damaged groups are left out, a writable parent is made read-only, a `through` beyond the
//! blob's size is limited to it, and a damaged superblock copy is rewritten. The repaired
//! state is written as a fresh checkpoint (new log, both superblock copies), through the
//! same checkpoint code a live store uses. A damaged checkpoint or unknown incompatible
//! features are not repairable.

use crate::check::{check_links, Sharing};
use crate::error::{Error, Result};
use crate::format::superblock::{Superblock, SB_SIZE};
use crate::meta::{Table, FLAG_READ_ONLY};
use crate::recovery::{self, read_bytes, Finding, Replayed};
use crate::store::{Blobstore, OpenOptions};
use crate::units::{BlobId, ClusterIdx};
use driver::{run_one, Device, Lba, Op};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the store check found.
#[derive(Debug)]
pub struct StoreCheck {
    /// Each copy as decoded (fields valid or not), or why it could not be.
    pub superblocks: [std::result::Result<Superblock, String>; 2],
    /// The copy in use.
    pub active: Option<usize>,
    pub findings: Vec<Finding>,
    /// The lenient replay, when a checkpoint could be read.
    pub replayed: Option<Replayed>,
    /// Why checking could not go on, if it could not.
    pub fatal: Option<String>,
    /// Shared and exclusive clusters of the replayed state (when there is one).
    pub sharing: Option<Sharing>,
}

impl StoreCheck {
    /// Whether anything is wrong (notes do not count).
    pub fn is_clean(&self) -> bool {
        self.findings.iter().all(|f| f.note) && self.fatal.is_none()
    }

    /// Whether every finding can be repaired.
    pub fn repairable(&self) -> bool {
        self.fatal.is_none() && self.findings.iter().all(|f| f.repairable)
    }

    /// Whether a repair must rewrite the store (some finding is at this level, notes
    /// included).
    pub fn needs_repair(&self) -> bool {
        !self.findings.is_empty()
    }

    /// Errors (findings that are not notes).
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| !f.note).count()
    }
}

/// Checks the store on `dev` without writing anything. `Err` only for operational
/// failures (I/O errors, not a blobstore at all).
pub fn check_store(dev: &Arc<dyn Device>) -> Result<StoreCheck> {
    let mut qp = dev.open_qpair(16)?;
    let geom = dev.geometry();
    if geom.capacity() < 2 * SB_SIZE as u64 {
        return Err(Error::NotABlobstore(format!(
            "device of {} bytes is too small",
            geom.capacity()
        )));
    }
    let raw = read_bytes(qp.as_mut(), dev.as_ref(), 0, 2 * SB_SIZE)?;
    let mut findings = Vec::new();
    let decoded = [
        Superblock::decode_unchecked(&raw[..SB_SIZE]),
        Superblock::decode_unchecked(&raw[SB_SIZE..]),
    ];
    if decoded
        .iter()
        .all(|d| matches!(d, Err(Error::NotABlobstore(_))))
    {
        return Err(Error::NotABlobstore(format!(
            "no superblock found on {}",
            dev.describe()
        )));
    }
    let superblocks: [std::result::Result<Superblock, String>; 2] = [0, 1].map(|i| {
        decoded[i]
            .as_ref()
            .map(|s| s.clone())
            .map_err(|e| e.to_string())
    });
    // The newest copy whose CRC holds is the one in charge (as at open).
    let active = match (&decoded[0], &decoded[1]) {
        (Ok(a), Ok(b)) => Some(if b.generation > a.generation { 1 } else { 0 }),
        (Ok(_), Err(_)) => Some(0),
        (Err(_), Ok(_)) => Some(1),
        _ => None,
    };
    let mut out = StoreCheck {
        superblocks,
        active,
        findings: Vec::new(),
        replayed: None,
        fatal: None,
        sharing: None,
    };
    let Some(slot) = active else {
        out.findings.push(Finding::new(
            "superblock-bad",
            format!(
                "both superblock copies are damaged ({}; {})",
                err_text(&decoded[0]),
                err_text(&decoded[1])
            ),
            false,
        ));
        out.fatal = Some("no usable superblock".into());
        return Ok(out);
    };
    let Ok(sb) = decoded[slot].as_ref().map(|s| s.clone()) else {
        return Ok(out);
    };
    if let Err(e) = sb.validate() {
        let (kind, repairable) = match e {
            Error::Unsupported(_) => ("unknown-features", false),
            _ => ("superblock-bad", false),
        };
        out.findings.push(Finding::new(
            kind,
            format!("superblock copy {slot}: {e}"),
            repairable,
        ));
        out.fatal = Some(e.to_string());
        return Ok(out);
    }
    if sb.read_only_features() != 0 {
        out.findings.push(Finding::new(
            "unknown-features",
            format!(
                "read-only-compatible feature bits {:#x} this build does not know",
                sb.read_only_features()
            ),
            false,
        ));
    }
    // The other copy: absent only right after mkfs (generation 1 lives in copy 1).
    let other = 1 - slot;
    // The active copy is valid, so the other is only a fallback. A torn write (the power
    // failed during a checkpoint) damages it just like decay would: a note, which the next
    // checkpoint (or fsck -y) rewrites. A copy from another store is an error.
    match &decoded[other] {
        Ok(o) => {
            if let Err(e) = o.validate() {
                findings.push(Finding::note(
                    "superblock-copy-bad",
                    format!("the other superblock copy ({other}) is invalid: {e}"),
                ));
            } else if o.uuid != sb.uuid {
                findings.push(Finding::new(
                    "superblock-copy-bad",
                    format!("superblock copy {other} belongs to another store (uuid differs)"),
                    true,
                ));
            }
        }
        Err(Error::NotABlobstore(_)) if sb.generation == 1 => {}
        Err(e) => findings.push(Finding::note(
            "superblock-copy-bad",
            format!(
                "the other superblock copy ({other}) is damaged, as a power failure while it \
                 was written leaves it: {e}"
            ),
        )),
    }
    if let Err(e) = recovery::check_device(&sb, dev.as_ref()) {
        out.findings.extend(findings);
        out.findings
            .push(Finding::new("device-too-small", e.to_string(), false));
        out.fatal = Some(e.to_string());
        return Ok(out);
    }
    match recovery::replay_lenient(qp.as_mut(), dev.as_ref(), &sb, false, &mut findings) {
        Ok(r) => {
            // The replay refuses links to missing blobs and cycles record by record
            // (`invalid-record`); what is left is checked as the live check does.
            let (sharing, problems) = check_links(&r.table);
            findings.extend(
                problems
                    .into_iter()
                    .map(|p| Finding::new(p.kind, p.detail, p.repairable)),
            );
            out.sharing = Some(sharing);
            out.replayed = Some(r);
        }
        Err(Error::Io(e)) => return Err(Error::Io(e)),
        Err(e) => {
            findings.push(Finding::new(
                "checkpoint-damaged",
                format!("the checkpoint the superblock points at cannot be read: {e}"),
                false,
            ));
            out.fatal = Some(e.to_string());
        }
    }
    out.findings.extend(findings);
    Ok(out)
}

fn err_text<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => "valid".into(),
        Err(e) => e.to_string(),
    }
}

/// Repairs the store from a check: clones clusters owned twice, then writes the state as a
/// new checkpoint to both superblock copies. Returns the store, open read-write. Refuses
/// (leaving the device untouched) when any finding is not repairable.
pub fn repair_store(dev: Arc<dyn Device>, check: StoreCheck) -> Result<(Blobstore, Vec<String>)> {
    if !check.repairable() {
        return Err(Error::Invalid(format!(
            "the store is not repairable: {}",
            check
                .fatal
                .clone()
                .or_else(|| check
                    .findings
                    .iter()
                    .find(|f| !f.repairable)
                    .map(|f| f.detail.clone()))
                .unwrap_or_default()
        )));
    }
    let Some(mut r) = check.replayed else {
        return Err(Error::Invalid("nothing was replayed".into()));
    };
    let mut done = Vec::new();
    let mut qp = dev.open_qpair(16)?;
    let cs = u64::from(r.sb.cluster_size);
    let lba = u64::from(dev.geometry().lba_size);
    // Clone every extra reference of a shared cluster, so each owner keeps its bytes.
    for (id, index, c) in std::mem::take(&mut r.duplicates) {
        let Some(new) = r.alloc.alloc() else {
            return Err(Error::NoSpace(format!(
                "no free cluster to clone {c} for blob {id}"
            )));
        };
        copy_cluster(qp.as_mut(), dev.as_ref(), c, new, cs, lba)?;
        if let Some(e) = r.table.blobs.get(&id) {
            let mut m = e.meta.write();
            if let Some(slot) = m.clusters.get_mut(index as usize) {
                *slot = new;
            }
        }
        done.push(format!(
            "cloned {c} into {new} for blob {id} (index {index})"
        ));
    }
    run_one(qp.as_mut(), Op::Flush)?;
    repair_links(&mut r.table);
    for f in &check.findings {
        match f.kind {
            "cluster-owned-twice" => {}
            "parent-writable" => done.push(format!("made the parent read-only: {}", f.detail)),
            "through-beyond-size" | "through-without-parent" => {
                done.push(format!("limited to the blob's size: {}", f.detail))
            }
            "child-count-wrong" | "parent-link-stale" => {
                done.push(format!("rebuilt from the parent ids: {}", f.detail))
            }
            "unknown-flags" => done.push(format!("cleared: {}", f.detail)),
            "invalid-record" | "log-damaged" | "checkpoint-damaged" => {
                done.push(format!("kept the state that replays: {}", f.detail))
            }
            "superblock-copy-bad" => done.push(format!("rewrote: {}", f.detail)),
            _ => done.push(f.detail.clone()),
        }
    }
    let store = Blobstore::from_replayed(
        Arc::clone(&dev),
        OpenOptions {
            background_checkpoint: false,
            ..OpenOptions::default()
        },
        qp,
        r,
    )?;
    // Two checkpoints: the repaired state goes to both superblock copies, and the old log
    // (with whatever was damaged in it) is released.
    store.checkpoint()?;
    store.checkpoint()?;
    Ok((store, done))
}

/// Restores the parent-link invariants a repair can restore without changing what any blob
/// reads (a missing parent and a cycle are refused before this): parents read-only,
/// `through` within the blob's size (and 0 without a parent), and the children counts and
/// parent handles rebuilt from the parent ids.
fn repair_links(table: &mut Table) {
    let mut children: BTreeMap<BlobId, u64> = BTreeMap::new();
    for e in table.blobs.values() {
        let mut m = e.meta.write();
        let limit = if m.parent.0 == 0 {
            0
        } else {
            m.clusters.len() as u64
        };
        m.through = m.through.min(limit);
        if m.parent.0 != 0 {
            *children.entry(m.parent).or_insert(0) += 1;
        }
        *e.parent.write() = table.blobs.get(&m.parent).cloned();
    }
    for (id, e) in &table.blobs {
        if children.contains_key(id) {
            e.meta.write().flags |= FLAG_READ_ONLY;
        }
    }
    table.children = children;
}

fn copy_cluster(
    qp: &mut dyn driver::QueuePair,
    dev: &dyn Device,
    from: ClusterIdx,
    to: ClusterIdx,
    cs: u64,
    lba: u64,
) -> Result<()> {
    let max = u64::from(dev.geometry().max_transfer);
    let mut off = 0;
    while off < cs {
        let n = (cs - off).min(max);
        let buf = run_one(
            qp,
            Op::Read {
                lba: Lba((from.0 * cs + off) / lba),
                buf: dev.alloc_buf(n as usize),
            },
        )?
        .ok_or_else(|| Error::Invalid("read returned no buffer".into()))?;
        run_one(
            qp,
            Op::Write {
                lba: Lba((to.0 * cs + off) / lba),
                buf,
            },
        )?;
        off += n;
    }
    Ok(())
}
