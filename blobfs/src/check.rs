//! The filesystem's consistency check and its repairs (fsck's filesystem half).
//!
//! [`check_fs`] works on the metadata of an open blobstore (no mount needed) and returns
//! findings, each with the fix a repair applies; [`repair_fs`] applies them through
//! ordinary blobstore transactions, so a crash during a repair is as safe as any change.
//! Notes (not errors) are things a crash leaves behind normally: orphans the next mount
//! deletes, clusters past the end of a file whose size was not committed.

use crate::error::Result;
use crate::fs::FileSystem;
use crate::inode::{
    decode_entry, encode_entry, orphan_key, parse_orphan_key, Ino, InodeAttr, Kind, KEY_INODE,
    KEY_MARKER, KEY_SYMLINK, MARKER, ROOT_INO, S_IFDIR,
};
use blobstore::{BlobId, BlobMeta, Blobstore, XattrNs};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// An inconsistency: fsck exits non-zero until it is repaired.
    Error,
    /// Normal after a crash; a repair tidies it up.
    Note,
}

/// What a repair does about a finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fix {
    /// Nothing safe: left for a human.
    None,
    RemoveEntry {
        dir: Ino,
        name: Vec<u8>,
    },
    SetEntry {
        dir: Ino,
        name: Vec<u8>,
        ino: Ino,
        kind: Kind,
    },
    SetAttr {
        ino: Ino,
        attr: InodeAttr,
    },
    DeleteBlob {
        ino: Ino,
    },
    /// Give an unreachable inode a name in /lost+found.
    Reattach {
        ino: Ino,
        kind: Kind,
    },
    RemoveOrphanRecord {
        ino: Ino,
    },
    /// Delete an orphan (and its record), as the next mount would.
    DeleteOrphan {
        ino: Ino,
    },
    /// Release a file's clusters past its end.
    Trim {
        ino: Ino,
        clusters: u64,
    },
}

/// One thing the check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsFinding {
    /// Stable identifier, e.g. `dangling-entry`.
    pub kind: &'static str,
    pub detail: String,
    pub severity: Severity,
    pub fix: Fix,
}

impl FsFinding {
    pub fn repairable(&self) -> bool {
        self.fix != Fix::None
    }
}

/// What the check found, with counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsCheck {
    /// One line per error (notes excluded); empty when consistent.
    pub problems: Vec<String>,
    pub findings: Vec<FsFinding>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub orphans: u64,
    /// Blobs of snapshots, clones and reflinks' frozen copies (not inodes of the live tree).
    pub snapshot_blobs: u64,
}

impl FsCheck {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl FileSystem {
    /// Checks the store (in memory and against the device) and the namespace: every entry
    /// names an existing inode of the right type, link counts match the names
    /// (directories: 2 + subdirectories), every directory's parent field points where its
    /// name is, sizes fit the blobs, every blob is reachable from the root or recorded as
    /// an orphan.
    pub fn check(&self) -> Result<FsCheck> {
        let store = self.store();
        let sc = store.check()?;
        let mut rep = check_fs(store)?;
        let mut store_problems: Vec<String> = sc
            .problems
            .into_iter()
            .map(|p| format!("blobstore: {p}"))
            .collect();
        store_problems.append(&mut rep.problems);
        rep.problems = store_problems;
        Ok(rep)
    }
}

fn err(kind: &'static str, detail: String, fix: Fix) -> FsFinding {
    FsFinding {
        kind,
        detail,
        severity: Severity::Error,
        fix,
    }
}

fn note(kind: &'static str, detail: String, fix: Fix) -> FsFinding {
    FsFinding {
        kind,
        detail,
        severity: Severity::Note,
        fix,
    }
}

/// Whether the store holds a BlobFS filesystem (the root marker).
pub fn is_blobfs(store: &Blobstore) -> bool {
    store
        .blob_meta(BlobId(ROOT_INO))
        .map(|m| m.internal.get(KEY_MARKER).map(|v| &v[..]) == Some(MARKER))
        .unwrap_or(false)
}

/// Checks the filesystem in `store` (which must hold one: see [`is_blobfs`]).
pub fn check_fs(store: &Blobstore) -> Result<FsCheck> {
    let metas: BTreeMap<BlobId, BlobMeta> = store.export();
    let cs = store.cluster_size();
    let mut rep = FsCheck::default();
    let mut f: Vec<FsFinding> = Vec::new();
    // Inode records.
    let mut attrs: HashMap<Ino, InodeAttr> = HashMap::new();
    let mut bad_inode: HashSet<Ino> = HashSet::new();
    for (id, m) in &metas {
        match m.internal.get(KEY_INODE) {
            None => {}
            Some(v) => match InodeAttr::decode(v) {
                Ok(a) => {
                    attrs.insert(id.0, a);
                }
                Err(e) => {
                    bad_inode.insert(id.0);
                    f.push(err(
                        "inode-record-bad",
                        format!("inode {}: {e}", id.0),
                        Fix::None,
                    ));
                }
            },
        }
    }
    match attrs.get(&ROOT_INO) {
        Some(a) if a.kind() == Kind::Dir => {}
        _ => {
            f.push(err(
                "root-bad",
                "the root directory (blob 1) is missing or not a directory".into(),
                Fix::None,
            ));
            rep.problems = f
                .iter()
                .map(|x| format!("{}: {}", x.kind, x.detail))
                .collect();
            rep.findings = f;
            return Ok(rep);
        }
    }
    // Blobs of snapshots and clones (and frozen blobs files read through) are not inodes of
    // the live tree: set them apart before judging the live tree.
    let others = crate::snapshots::other_trees(&metas);
    attrs.retain(|ino, _| !others.contains(&BlobId(*ino)));
    rep.snapshot_blobs = others.len() as u64;
    // Walk the tree from the root.
    let mut names: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut dir_name: HashMap<Ino, (Ino, Vec<u8>)> = HashMap::new();
    let mut orphans: HashSet<Ino> = HashSet::new();
    let mut queue = vec![ROOT_INO];
    let mut seen_dirs: HashSet<Ino> = HashSet::from([ROOT_INO]);
    while let Some(dir) = queue.pop() {
        let Some(m) = metas.get(&BlobId(dir)) else {
            continue;
        };
        for (k, v) in &m.internal {
            if k.first() == Some(&0) {
                if dir == ROOT_INO {
                    if let Some(o) = parse_orphan_key(k) {
                        orphans.insert(o);
                    }
                }
                continue;
            }
            let name = String::from_utf8_lossy(k).into_owned();
            let (ino, kind) = match decode_entry(v) {
                Ok(x) => x,
                Err(e) => {
                    f.push(err(
                        "dangling-entry",
                        format!("entry {dir}/{name}: {e}"),
                        Fix::RemoveEntry {
                            dir,
                            name: k.clone(),
                        },
                    ));
                    continue;
                }
            };
            let Some(a) = attrs.get(&ino) else {
                let fix = if bad_inode.contains(&ino) {
                    Fix::None
                } else {
                    Fix::RemoveEntry {
                        dir,
                        name: k.clone(),
                    }
                };
                f.push(err(
                    "dangling-entry",
                    format!("entry {dir}/{name} points to inode {ino}, which does not exist"),
                    fix,
                ));
                continue;
            };
            if ino == ROOT_INO {
                f.push(err(
                    "directory-linked-twice",
                    format!("entry {dir}/{name} names the root directory"),
                    Fix::RemoveEntry {
                        dir,
                        name: k.clone(),
                    },
                ));
                continue;
            }
            if a.kind() != kind {
                f.push(err(
                    "entry-type-mismatch",
                    format!(
                        "entry {dir}/{name} says {kind:?}, inode {ino} is {:?}",
                        a.kind()
                    ),
                    Fix::SetEntry {
                        dir,
                        name: k.clone(),
                        ino,
                        kind: a.kind(),
                    },
                ));
            }
            if a.kind() == Kind::Dir {
                if !seen_dirs.insert(ino) {
                    f.push(err(
                        "directory-linked-twice",
                        format!("directory {ino} has a second name {dir}/{name}"),
                        Fix::RemoveEntry {
                            dir,
                            name: k.clone(),
                        },
                    ));
                    continue;
                }
                dir_name.insert(ino, (dir, k.clone()));
                *subdirs.entry(dir).or_default() += 1;
                queue.push(ino);
            }
            *names.entry(ino).or_default() += 1;
        }
    }
    // Inodes named by any directory, reachable or not: an unreachable subtree is
    // reattached by its top only, and the rest comes along.
    let mut named_anywhere: HashSet<Ino> = HashSet::new();
    for (id, m) in &metas {
        if attrs.get(&id.0).is_some_and(|a| a.kind() == Kind::Dir) {
            for (k, v) in &m.internal {
                if k.first() != Some(&0) {
                    if let Ok((ino, _)) = decode_entry(v) {
                        named_anywhere.insert(ino);
                    }
                }
            }
        }
    }
    // Per inode.
    let mut inos: Vec<Ino> = attrs.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        let a = attrs[&ino];
        let n = names.get(&ino).copied().unwrap_or(0);
        match a.kind() {
            Kind::Dir => rep.dirs += 1,
            Kind::Symlink => rep.symlinks += 1,
            _ => rep.files += 1,
        }
        let is_orphan = orphans.contains(&ino);
        let reachable = ino == ROOT_INO || n > 0 || seen_dirs.contains(&ino);
        if !reachable && !is_orphan && named_anywhere.contains(&ino) {
            // Inside a detached subtree: handled with its top.
            continue;
        }
        if !reachable && !is_orphan {
            f.push(err(
                "orphan-inode",
                format!(
                    "inode {ino} ({:?}, {} bytes) has no name and no orphan record",
                    a.kind(),
                    a.size
                ),
                Fix::Reattach {
                    ino,
                    kind: a.kind(),
                },
            ));
            continue;
        }
        if is_orphan {
            if n > 0 || a.nlink != 0 {
                f.push(err(
                    "orphan-with-names",
                    format!("orphan record for inode {ino}, which has {n} name(s)"),
                    Fix::RemoveOrphanRecord { ino },
                ));
            } else {
                rep.orphans += 1;
                f.push(note(
                    "pending-orphan",
                    format!("inode {ino} was unlinked while open; the next mount deletes it"),
                    Fix::DeleteOrphan { ino },
                ));
                continue;
            }
        }
        let mut fixed = a;
        let mut what = Vec::new();
        let want = if a.kind() == Kind::Dir {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            n
        };
        if a.nlink != want {
            what.push(format!("nlink {} but {want} names", a.nlink));
            fixed.nlink = want;
        }
        if a.kind() == Kind::Dir {
            let parent = if ino == ROOT_INO {
                ROOT_INO
            } else {
                dir_name.get(&ino).map(|(p, _)| *p).unwrap_or(a.parent)
            };
            if a.parent != parent {
                what.push(format!("parent {} but it is in {parent}", a.parent));
                fixed.parent = parent;
            }
        }
        let meta = &metas[&BlobId(ino)];
        let blob_bytes = meta.clusters.len() as u64 * cs;
        if a.kind() == Kind::File && a.size > blob_bytes {
            what.push(format!(
                "size {} beyond its {blob_bytes} allocated bytes",
                a.size
            ));
            fixed.size = blob_bytes;
        }
        if !what.is_empty() {
            let kind = if a.nlink != fixed.nlink {
                "wrong-link-count"
            } else if a.parent != fixed.parent {
                "wrong-parent"
            } else {
                "size-beyond-allocated"
            };
            f.push(err(
                kind,
                format!("inode {ino}: {}", what.join(", ")),
                Fix::SetAttr { ino, attr: fixed },
            ));
        }
        if a.kind() == Kind::Symlink && !meta.internal.contains_key(KEY_SYMLINK) {
            f.push(err(
                "symlink-without-target",
                format!("symlink {ino} has no target"),
                Fix::None,
            ));
        }
        if a.kind() == Kind::File {
            let need = fixed.size.div_ceil(cs);
            let past = meta
                .clusters
                .iter()
                .skip(need as usize)
                .filter(|c| c.is_some())
                .count();
            if past > 0 {
                f.push(note(
                    "clusters-past-eof",
                    format!(
                        "file {ino} holds {past} cluster(s) past its end (writes whose size a \
                         crash did not commit)"
                    ),
                    Fix::Trim {
                        ino,
                        clusters: need,
                    },
                ));
            }
        }
    }
    // Blobs that are not inodes at all hold leaked clusters.
    for (id, m) in &metas {
        if !m.internal.contains_key(KEY_INODE) && !others.contains(id) {
            f.push(err(
                "leaked-clusters",
                format!(
                    "blob {id} is not part of the filesystem (no inode record); its {} \
                     cluster(s) are leaked",
                    m.allocated()
                ),
                Fix::DeleteBlob { ino: id.0 },
            ));
        }
    }
    for o in &orphans {
        if !attrs.contains_key(o) && !bad_inode.contains(o) {
            f.push(err(
                "stale-orphan-record",
                format!("orphan record for inode {o}, which does not exist"),
                Fix::RemoveOrphanRecord { ino: *o },
            ));
        }
    }
    rep.problems = f
        .iter()
        .filter(|x| x.severity == Severity::Error)
        .map(|x| format!("{}: {}", x.kind, x.detail))
        .collect();
    rep.findings = f;
    Ok(rep)
}

/// Applies the fixes of `findings` (notes included) to `store`, one transaction each, and
/// commits. Returns a line per fix applied. Run [`check_fs`] again afterwards: one fix can
/// reveal another (a reattached directory changes link counts).
pub fn repair_fs(store: &Blobstore, findings: &[FsFinding]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let attr_of = |ino: Ino| -> Option<InodeAttr> {
        store
            .blob_meta(BlobId(ino))
            .ok()
            .and_then(|m| m.internal.get(KEY_INODE).cloned())
            .and_then(|v| InodeAttr::decode(&v).ok())
    };
    for x in findings {
        let mut t = store.transaction();
        match &x.fix {
            Fix::None => continue,
            Fix::RemoveEntry { dir, name } => {
                t.remove_xattr(BlobId(*dir), XattrNs::Internal, name);
            }
            Fix::SetEntry {
                dir,
                name,
                ino,
                kind,
            } => {
                t.set_xattr(
                    BlobId(*dir),
                    XattrNs::Internal,
                    name,
                    &encode_entry(*ino, *kind),
                );
            }
            Fix::SetAttr { ino, attr } => {
                t.set_xattr(BlobId(*ino), XattrNs::Internal, KEY_INODE, &attr.encode());
            }
            Fix::DeleteBlob { ino } => {
                t.delete_blob(BlobId(*ino));
            }
            Fix::Reattach { ino, kind } => {
                let lf = lost_and_found(store)?;
                let name = format!("#{ino}").into_bytes();
                t.set_xattr(
                    BlobId(lf),
                    XattrNs::Internal,
                    &name,
                    &encode_entry(*ino, *kind),
                );
                if let Some(mut a) = attr_of(*ino) {
                    if *kind == Kind::Dir {
                        a.parent = lf;
                        a.nlink = a.nlink.max(2);
                        if let Some(mut l) = attr_of(lf) {
                            l.nlink += 1;
                            t.set_xattr(BlobId(lf), XattrNs::Internal, KEY_INODE, &l.encode());
                        }
                    } else {
                        a.nlink = 1;
                    }
                    t.set_xattr(BlobId(*ino), XattrNs::Internal, KEY_INODE, &a.encode());
                }
            }
            Fix::RemoveOrphanRecord { ino } => {
                t.remove_xattr(BlobId(ROOT_INO), XattrNs::Internal, &orphan_key(*ino));
            }
            Fix::DeleteOrphan { ino } => {
                t.delete_blob(BlobId(*ino));
                t.remove_xattr(BlobId(ROOT_INO), XattrNs::Internal, &orphan_key(*ino));
            }
            Fix::Trim { ino, clusters } => {
                t.resize(BlobId(*ino), *clusters);
            }
        }
        t.commit()?;
        done.push(format!("{}: {}", x.kind, x.detail));
    }
    store.sync()?;
    Ok(done)
}

/// The inode of /lost+found, created if missing.
fn lost_and_found(store: &Blobstore) -> Result<Ino> {
    const NAME: &[u8] = b"lost+found";
    let root = store.blob_meta(BlobId(ROOT_INO))?;
    if let Some(v) = root.internal.get(NAME) {
        if let Ok((ino, Kind::Dir)) = decode_entry(v) {
            return Ok(ino);
        }
    }
    let mut rattr = root
        .internal
        .get(KEY_INODE)
        .and_then(|v| InodeAttr::decode(v).ok())
        .ok_or_else(|| crate::Error::Corruption("root has no inode record".into()))?;
    let mut t = store.transaction();
    let id = t.create_blob(0);
    let mut a = InodeAttr::new(S_IFDIR | 0o700, 0, 0);
    a.nlink = 2;
    a.parent = ROOT_INO;
    t.set_xattr(id, XattrNs::Internal, KEY_INODE, &a.encode());
    t.set_xattr(
        BlobId(ROOT_INO),
        XattrNs::Internal,
        NAME,
        &encode_entry(id.0, Kind::Dir),
    );
    rattr.nlink += 1;
    t.set_xattr(
        BlobId(ROOT_INO),
        XattrNs::Internal,
        KEY_INODE,
        &rattr.encode(),
    );
    t.commit()?;
    Ok(id.0)
}
