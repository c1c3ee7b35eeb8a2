//! The filesystem's consistency check: the blobstore's own check, then a walk of the
//! namespace from the root.

use crate::error::Result;
use crate::fs::FileSystem;
use crate::inode::{
    decode_entry, parse_orphan_key, Ino, InodeAttr, Kind, KEY_INODE, KEY_SYMLINK, ROOT_INO,
};
use blobstore::{BlobId, XattrNs};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What the check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsCheck {
    pub problems: Vec<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub orphans: u64,
}

impl FsCheck {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl FileSystem {
    /// Checks the store and the namespace: every entry names an existing inode of the
    /// right type, link counts match the names (directories: 2 + subdirectories), every
    /// directory's parent field points where its name is, sizes fit the blobs, and every
    /// blob is reachable from the root or recorded as an orphan.
    pub fn check(&self) -> Result<FsCheck> {
        let store = self.store();
        let mut rep = FsCheck::default();
        let sc = store.check()?;
        rep.problems
            .extend(sc.problems.into_iter().map(|p| format!("blobstore: {p}")));
        let metas: BTreeMap<BlobId, blobstore::BlobMeta> = store.export();
        let cs = store.cluster_size();
        let mut attrs: HashMap<Ino, InodeAttr> = HashMap::new();
        for (id, m) in &metas {
            match m.internal.get(KEY_INODE) {
                None => rep.problems.push(format!("blob {id} has no inode record")),
                Some(v) => match InodeAttr::decode(v) {
                    Ok(a) => {
                        attrs.insert(id.0, a);
                    }
                    Err(e) => rep.problems.push(format!("inode {}: {e}", id.0)),
                },
            }
        }
        let mut names: HashMap<Ino, u32> = HashMap::new();
        let mut subdirs: HashMap<Ino, u32> = HashMap::new();
        let mut seen_dirs: HashSet<Ino> = HashSet::new();
        let mut orphans: HashSet<Ino> = HashSet::new();
        let mut queue = vec![ROOT_INO];
        seen_dirs.insert(ROOT_INO);
        while let Some(dir) = queue.pop() {
            let Some(m) = metas.get(&BlobId(dir)) else {
                rep.problems.push(format!("directory {dir} does not exist"));
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
                let name = String::from_utf8_lossy(k);
                let (ino, kind) = match decode_entry(v) {
                    Ok(x) => x,
                    Err(e) => {
                        rep.problems.push(format!("entry {dir}/{name}: {e}"));
                        continue;
                    }
                };
                let Some(a) = attrs.get(&ino) else {
                    rep.problems
                        .push(format!("entry {dir}/{name} points to missing inode {ino}"));
                    continue;
                };
                if a.kind() != kind {
                    rep.problems.push(format!(
                        "entry {dir}/{name} says {kind:?}, inode {ino} is {:?}",
                        a.kind()
                    ));
                }
                *names.entry(ino).or_default() += 1;
                if a.kind() == Kind::Dir {
                    *subdirs.entry(dir).or_default() += 1;
                    if a.parent != dir {
                        rep.problems.push(format!(
                            "directory {ino} ({dir}/{name}) records parent {}",
                            a.parent
                        ));
                    }
                    if !seen_dirs.insert(ino) {
                        rep.problems
                            .push(format!("directory {ino} has more than one name"));
                    } else {
                        queue.push(ino);
                    }
                }
            }
        }
        for (ino, a) in &attrs {
            match a.kind() {
                Kind::Dir => rep.dirs += 1,
                Kind::Symlink => rep.symlinks += 1,
                _ => rep.files += 1,
            }
            let n = names.get(ino).copied().unwrap_or(0);
            let is_orphan = orphans.contains(ino);
            if n == 0 && *ino != ROOT_INO && !is_orphan {
                rep.problems
                    .push(format!("inode {ino} is unreachable (leaked)"));
            }
            if is_orphan && (n > 0 || a.nlink != 0) {
                rep.problems.push(format!(
                    "orphan {ino} still has {n} name(s), nlink {}",
                    a.nlink
                ));
            }
            let want = if a.kind() == Kind::Dir {
                2 + subdirs.get(ino).copied().unwrap_or(0)
            } else {
                n
            };
            if !is_orphan && a.nlink != want {
                rep.problems.push(format!(
                    "inode {ino}: nlink {} but {want} expected",
                    a.nlink
                ));
            }
            if let Some(m) = metas.get(&BlobId(*ino)) {
                let blob_bytes = m.clusters.len() as u64 * cs;
                if a.kind() == Kind::File && a.size > blob_bytes {
                    rep.problems.push(format!(
                        "file {ino}: size {} beyond its {} allocated bytes",
                        a.size, blob_bytes
                    ));
                }
                if a.kind() == Kind::Symlink && !m.internal.contains_key(KEY_SYMLINK) {
                    rep.problems.push(format!("symlink {ino} has no target"));
                }
            }
        }
        for o in &orphans {
            if !attrs.contains_key(o) {
                rep.problems
                    .push(format!("orphan record for missing inode {o}"));
            }
        }
        rep.orphans = orphans.len() as u64;
        let _ = XattrNs::Internal;
        Ok(rep)
    }
}
