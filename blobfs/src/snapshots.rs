//! Filesystem snapshots and clones (whole trees) and reflinks (one file), on the
//! blobstore's blob snapshots and clones.
//!
//! A snapshot named NAME freezes every inode of the live tree in one blobstore transaction:
//! each inode's blob is snapshotted (the snapshot blob takes its clusters and xattrs, the
//! live blob becomes its copy-on-write clone), a *table* blob records inode number -> frozen
//! blob, and the live root directory records NAME -> table. Directory entries keep naming
//! inode numbers, so opening the snapshot (`FsOptions::view`) only translates inode numbers
//! through the table. A clone of a snapshot is a second table whose blobs are clones of the
//! snapshot's: it opens read-write; inodes it creates are their own blobs (fresh ids, never
//! in any table). Deleting a snapshot has each frozen blob absorbed by its one remaining
//! clone (the live file) or deleted; it is refused while a clone of it exists.
//!
//! Registry (internal xattrs of the live root, blob 1): key `\0s` + NAME, value: kind u8
//! (1 snapshot, 2 clone), table blob u64, created seconds i64, origin length u16, origin
//! (the snapshot a clone was made from). Table blob: internal xattr `\0t` = `BLOBFSTB`, then
//! one xattr per inode: key inode u64 LE (8 bytes), value blob id u64 LE.
//!
//! A reflink (`FileSystem::reflink`) snapshots one file's blob into a *hidden* frozen blob
//! that no table names, and makes the new file a clone of it; when the last clone of a
//! hidden blob goes, the hidden blob goes too.

use crate::error::{Error, Result};
use crate::fs::{Attr, FileSystem, Inner};
use crate::inode::{
    check_name, decode_entry, encode_entry, Ino, InodeAttr, Kind, Time, KEY_INODE, ROOT_INO,
};
use blobstore::{Blob, BlobId, Blobstore, XattrNs, FLAG_READ_ONLY};
use std::collections::{BTreeMap, HashMap, HashSet};

const REG_PREFIX: &[u8] = b"\0s";
const TABLE_KEY: &[u8] = b"\0t";
const TABLE_MARKER: &[u8] = b"BLOBFSTB";
const KIND_SNAPSHOT: u8 = 1;
const KIND_CLONE: u8 = 2;
/// Longest snapshot name in bytes.
pub const MAX_NAME: usize = 200;

/// Snapshot (read-only, frozen) or clone (writable, made from a snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapKind {
    Snapshot,
    Clone,
}

/// A registered snapshot or clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    pub name: String,
    pub kind: SnapKind,
    /// The table blob.
    pub table: BlobId,
    pub created: Time,
    /// For a clone: the snapshot it was made from.
    pub origin: Option<String>,
    /// Inodes in its table.
    pub inodes: u64,
}

fn reg_key(name: &str) -> Vec<u8> {
    [REG_PREFIX, name.as_bytes()].concat()
}

fn encode_reg(kind: SnapKind, table: BlobId, created: Time, origin: Option<&str>) -> Vec<u8> {
    let mut v = vec![match kind {
        SnapKind::Snapshot => KIND_SNAPSHOT,
        SnapKind::Clone => KIND_CLONE,
    }];
    v.extend_from_slice(&table.0.to_le_bytes());
    v.extend_from_slice(&created.sec.to_le_bytes());
    let o = origin.unwrap_or("").as_bytes();
    v.extend_from_slice(&(o.len() as u16).to_le_bytes());
    v.extend_from_slice(o);
    v
}

fn decode_reg(name: &str, v: &[u8]) -> Result<SnapInfo> {
    let bad = || Error::Corruption(format!("snapshot {name:?}: bad registry record"));
    if v.len() < 19 {
        return Err(bad());
    }
    let kind = match v[0] {
        KIND_SNAPSHOT => SnapKind::Snapshot,
        KIND_CLONE => SnapKind::Clone,
        _ => return Err(bad()),
    };
    let word = |a: usize| -> [u8; 8] { v[a..a + 8].try_into().unwrap_or([0; 8]) };
    let table = BlobId(u64::from_le_bytes(word(1)));
    let sec = i64::from_le_bytes(word(9));
    let olen = u16::from_le_bytes([v[17], v[18]]) as usize;
    let origin = v.get(19..19 + olen).ok_or_else(bad)?;
    Ok(SnapInfo {
        name: name.to_string(),
        kind,
        table,
        created: Time { sec, nsec: 0 },
        origin: (!origin.is_empty()).then(|| String::from_utf8_lossy(origin).into_owned()),
        inodes: 0,
    })
}

fn check_snap_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains(['/', '\0']) {
        return Err(Error::Invalid(format!(
            "snapshot name {name:?}: 1 to {MAX_NAME} bytes, no '/' or NUL"
        )));
    }
    Ok(())
}

/// Every registered snapshot and clone, from the live root.
fn registry(root: &Blob) -> Result<BTreeMap<String, SnapInfo>> {
    let mut out = BTreeMap::new();
    let mut bad = None;
    root.visit_xattrs_ns(XattrNs::Internal, Some(REG_PREFIX), |k, v| {
        let Some(rest) = k.strip_prefix(REG_PREFIX) else {
            return false;
        };
        let name = String::from_utf8_lossy(rest).into_owned();
        match decode_reg(&name, v) {
            Ok(i) => {
                out.insert(name, i);
            }
            Err(e) => bad = Some(e),
        }
        true
    });
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A table: inode -> blob.
fn load_table(store: &Blobstore, table: BlobId) -> Result<HashMap<Ino, BlobId>> {
    let t = store.open_blob(table)?;
    if t.get_xattr_ns(XattrNs::Internal, TABLE_KEY).as_deref() != Some(TABLE_MARKER) {
        return Err(Error::Corruption(format!(
            "blob {table} is not a snapshot table"
        )));
    }
    let mut map = HashMap::new();
    t.visit_xattrs_ns(XattrNs::Internal, None, |k, v| {
        if let (Ok(k), Ok(v)) = (<[u8; 8]>::try_from(k), <[u8; 8]>::try_from(v)) {
            map.insert(u64::from_le_bytes(k), BlobId(u64::from_le_bytes(v)));
        }
        true
    });
    Ok(map)
}

/// Records inode `ino` -> blob `b` in table `table`.
fn table_entry(t: &mut blobstore::Transaction<'_>, table: BlobId, ino: Ino, b: BlobId) {
    t.set_xattr(
        table,
        XattrNs::Internal,
        &ino.to_le_bytes(),
        &b.0.to_le_bytes(),
    );
}

/// The blobs registered snapshots and clones hold: their tables and every blob the tables
/// name (blobs a clone created itself are found by walking its tree, see `tree_blobs`).
pub(crate) fn held_blobs(store: &Blobstore, root: &Blob) -> Result<HashSet<BlobId>> {
    let mut held = HashSet::new();
    for info in registry(root)?.values() {
        held.insert(info.table);
        held.extend(load_table(store, info.table)?.into_values());
    }
    Ok(held)
}

/// What a handle opened on a snapshot or clone sees.
#[derive(Debug)]
pub(crate) struct View {
    pub info: SnapInfo,
    map: HashMap<Ino, BlobId>,
}

impl View {
    pub(crate) fn load(
        store: &Blobstore,
        root: &Blob,
        name: &str,
        read_only: bool,
    ) -> Result<View> {
        let reg = registry(root)?;
        let info = reg
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no snapshot or clone named {name:?}")))?;
        if info.kind == SnapKind::Snapshot && !read_only {
            return Err(Error::Invalid(format!(
                "{name:?} is a snapshot: open it read-only, or make a clone of it to write"
            )));
        }
        let map = load_table(store, info.table)?;
        if !map.contains_key(&ROOT_INO) {
            return Err(Error::Corruption(format!(
                "snapshot {name:?}: its table has no root directory"
            )));
        }
        Ok(View { info, map })
    }

    /// The blob of inode `ino` (inodes a clone created itself are their own blobs).
    pub(crate) fn blob_of(&self, ino: Ino) -> BlobId {
        self.map.get(&ino).copied().unwrap_or(BlobId(ino))
    }
}

/// Every inode of the tree rooted at the blob `root_blob`, reading directories through
/// `blob_of`: (inode, blob) pairs, root first.
fn tree_blobs(store: &Blobstore, blob_of: &dyn Fn(Ino) -> BlobId) -> Result<Vec<(Ino, BlobId)>> {
    let mut out = vec![(ROOT_INO, blob_of(ROOT_INO))];
    let mut seen: HashSet<Ino> = HashSet::from([ROOT_INO]);
    let mut dirs = vec![ROOT_INO];
    while let Some(d) = dirs.pop() {
        let blob = store.open_blob(blob_of(d))?;
        let mut entries = Vec::new();
        let mut bad = None;
        blob.visit_xattrs_ns(XattrNs::Internal, None, |k, v| {
            if k.first() == Some(&0) {
                return true;
            }
            match decode_entry(v) {
                Ok(e) => entries.push(e),
                Err(e) => bad = Some(e),
            }
            true
        });
        if let Some(e) = bad {
            return Err(e);
        }
        for (ino, kind) in entries {
            if seen.insert(ino) {
                out.push((ino, blob_of(ino)));
                if kind == Kind::Dir {
                    dirs.push(ino);
                }
            }
        }
    }
    Ok(out)
}

impl FileSystem {
    fn live_only(&self, what: &str) -> Result<()> {
        if let Some(v) = &self.inner.view {
            return Err(Error::Invalid(format!(
                "{what}: this handle shows {:?}; open the live filesystem",
                v.info.name
            )));
        }
        Ok(())
    }

    /// The snapshot or clone this handle shows (`None`: the live tree).
    pub fn view(&self) -> Option<&SnapInfo> {
        self.inner.view.as_ref().map(|v| &v.info)
    }

    /// Registered snapshots and clones, by name.
    pub fn snapshots(&self) -> Result<Vec<SnapInfo>> {
        let root = self.inner.store.open_blob(BlobId(ROOT_INO))?;
        let mut out = Vec::new();
        for mut info in registry(&root)?.into_values() {
            info.inodes = load_table(&self.inner.store, info.table)?.len() as u64;
            out.push(info);
        }
        Ok(out)
    }

    /// Freezes the whole live tree as snapshot `name` (one atomic change), durable when
    /// it returns. Nothing may write to the filesystem meanwhile (the tools run it on an
    /// unmounted image). Costs metadata only: each inode's blob is snapshotted, its data
    /// stays where it is and the live file copies a cluster the first time it changes it.
    pub fn snapshot(&self, name: &str) -> Result<SnapInfo> {
        self.live_only("snapshot")?;
        self.inner.writable()?;
        check_snap_name(name)?;
        self.sync_all()?;
        let _ns = self.inner.ns.lock();
        let store = &self.inner.store;
        let root = store.open_blob(BlobId(ROOT_INO))?;
        if registry(&root)?.contains_key(name) {
            return Err(Error::Exists);
        }
        let inodes = tree_blobs(store, &|i| BlobId(i))?;
        let mut t = store.transaction();
        let table = t.create_blob(0);
        t.set_xattr(table, XattrNs::Internal, TABLE_KEY, TABLE_MARKER);
        let mut frozen = Vec::with_capacity(inodes.len());
        for (ino, blob) in &inodes {
            let snap = t.snapshot(*blob)?;
            if *ino == ROOT_INO {
                // The frozen root keeps the tree, not the live root's bookkeeping: orphan
                // records (a clone opened read-write would delete those inodes) and the
                // registry of snapshots.
                let mut drop_keys = Vec::new();
                root.visit_xattrs_ns(XattrNs::Internal, None, |k, _| {
                    if k.starts_with(b"\0o") || k.starts_with(REG_PREFIX) {
                        drop_keys.push(k.to_vec());
                    }
                    true
                });
                for k in drop_keys {
                    t.remove_xattr(snap, XattrNs::Internal, &k);
                }
            }
            table_entry(&mut t, table, *ino, snap);
            frozen.push(snap);
        }
        self.register(t, name, SnapKind::Snapshot, None, table, frozen)
    }

    /// Adds the registry entry of `name` to `t` (which made `table` and the blobs `blobs`
    /// it names), commits and syncs, and notes the blobs as held.
    fn register(
        &self,
        mut t: blobstore::Transaction<'_>,
        name: &str,
        kind: SnapKind,
        origin: Option<&str>,
        table: BlobId,
        blobs: Vec<BlobId>,
    ) -> Result<SnapInfo> {
        let created = Time::now();
        t.set_xattr(
            BlobId(ROOT_INO),
            XattrNs::Internal,
            &reg_key(name),
            &encode_reg(kind, table, created, origin),
        );
        t.commit()?;
        self.inner.store.sync()?;
        let inodes = blobs.len() as u64;
        let mut held = self.inner.held.lock();
        held.insert(table);
        held.extend(blobs);
        Ok(SnapInfo {
            name: name.to_string(),
            kind,
            table,
            created,
            origin: origin.map(str::to_string),
            inodes,
        })
    }

    /// Makes a writable clone `name` of snapshot `snapshot` (open it with
    /// `FsOptions::view`); durable when it returns.
    pub fn clone_snapshot(&self, snapshot: &str, name: &str) -> Result<SnapInfo> {
        self.live_only("clone")?;
        self.inner.writable()?;
        check_snap_name(name)?;
        let _ns = self.inner.ns.lock();
        let store = &self.inner.store;
        let root = store.open_blob(BlobId(ROOT_INO))?;
        let reg = registry(&root)?;
        if reg.contains_key(name) {
            return Err(Error::Exists);
        }
        let src = reg
            .get(snapshot)
            .ok_or_else(|| Error::Invalid(format!("no snapshot named {snapshot:?}")))?;
        if src.kind != SnapKind::Snapshot {
            return Err(Error::Invalid(format!(
                "{snapshot:?} is a clone: snapshot the live tree, or clone a snapshot"
            )));
        }
        let map = load_table(store, src.table)?;
        let mut t = store.transaction();
        let table = t.create_blob(0);
        t.set_xattr(table, XattrNs::Internal, TABLE_KEY, TABLE_MARKER);
        let mut made = Vec::with_capacity(map.len());
        let mut inos: Vec<_> = map.into_iter().collect();
        inos.sort_unstable();
        for (ino, frozen) in inos {
            let c = t.clone_blob(frozen)?;
            table_entry(&mut t, table, ino, c);
            made.push(c);
        }
        self.register(t, name, SnapKind::Clone, Some(snapshot), table, made)
    }

    /// Deletes snapshot or clone `name`; durable when it returns. A snapshot with a clone
    /// made from it is refused (delete the clone first). The live tree is untouched: each
    /// frozen blob is absorbed by the live file still sharing it, or deleted.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.live_only("delete snapshot")?;
        self.inner.writable()?;
        let _ns = self.inner.ns.lock();
        let store = &self.inner.store;
        let root = store.open_blob(BlobId(ROOT_INO))?;
        let reg = registry(&root)?;
        let info = reg
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("no snapshot or clone named {name:?}")))?;
        if let Some(c) = reg.values().find(|c| c.origin.as_deref() == Some(name)) {
            return Err(Error::Invalid(format!(
                "snapshot {name:?} has clone {:?}: delete the clone first",
                c.name
            )));
        }
        let map = load_table(store, info.table)?;
        let blobs: Vec<BlobId> = match info.kind {
            SnapKind::Snapshot => map.values().copied().collect(),
            // A clone also owns the inodes it created: walk its tree.
            SnapKind::Clone => {
                let mut v: Vec<BlobId> =
                    tree_blobs(store, &|i| map.get(&i).copied().unwrap_or(BlobId(i)))?
                        .into_iter()
                        .map(|(_, b)| b)
                        .collect();
                // And table entries no longer in its tree (unlinked there, still present).
                for b in map.values() {
                    if !v.contains(b) && store.blob_meta(*b).is_ok() {
                        v.push(*b);
                    }
                }
                v
            }
        };
        // Children of every blob, from one pass over the store (not a scan per blob).
        let mut children: HashMap<BlobId, Vec<BlobId>> = HashMap::new();
        for (id, m) in store.export() {
            if m.parent.0 != 0 {
                children.entry(m.parent).or_default().push(id);
            }
        }
        let going: HashSet<BlobId> = blobs.iter().copied().collect();
        let mut t = store.transaction();
        let mut frozen_parents = Vec::new();
        for b in &blobs {
            let Ok(m) = store.blob_meta(*b) else { continue };
            // Children that go in the same change do not count (a clone's own reflinks).
            let kids: Vec<BlobId> = children
                .get(b)
                .map(|v| v.iter().copied().filter(|c| !going.contains(c)).collect())
                .unwrap_or_default();
            match kids[..] {
                [] => {
                    t.delete_blob(*b);
                    if m.parent.0 != 0 && !going.contains(&m.parent) {
                        frozen_parents.push(m.parent);
                    }
                }
                [child] if info.kind == SnapKind::Snapshot => t.absorb_into(*b, child)?,
                _ => {
                    return Err(Error::Invalid(format!(
                        "{name:?}: blob {b} is shared by {} others (a reflink?)",
                        kids.len()
                    )))
                }
            }
        }
        t.delete_blob(info.table);
        t.remove_xattr(BlobId(ROOT_INO), XattrNs::Internal, &reg_key(name));
        t.commit()?;
        store.sync()?;
        {
            let mut held = self.inner.held.lock();
            held.remove(&info.table);
            for b in &blobs {
                held.remove(b);
            }
        }
        drop(_ns);
        for p in frozen_parents {
            self.inner.collect_hidden(p)?;
        }
        Ok(())
    }

    /// Makes `name` in directory `parent` a new file sharing `src`'s data (a reflink, like
    /// FICLONE into a new file): no data is copied now; either file copies a cluster the
    /// first time it changes it. Returns the new file's attributes.
    pub fn reflink(&self, src: Ino, parent: Ino, name: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        self.inner.writable()?;
        check_name(name)?;
        let inner = &self.inner;
        let src_inode = inner.get(src)?;
        // The data written so far goes into the blob first (the snapshot is ordered: what
        // was written before it is durable before it).
        {
            let mut st = src_inode.st.lock();
            if st.attr.kind() != Kind::File {
                return Err(Error::Invalid(
                    "reflink of something that is not a file".into(),
                ));
            }
            inner.persist_locked(&src_inode, &mut st)?;
        }
        let _ns = inner.ns.lock();
        let dir = inner.get_dir(parent)?;
        if inner.entry(&dir, name)?.is_some() {
            return Err(Error::Exists);
        }
        let sattr = src_inode.st.lock().attr;
        let mut a = InodeAttr::new(sattr.mode, uid, gid);
        a.size = sattr.size;
        let now = Time::now();
        let mut dst = dir.st.lock().attr;
        dst.mtime = now;
        dst.ctime = now;
        let store = &inner.store;
        // Two changes: the frozen copy must exist before a clone of it can be described. A
        // crash between leaves `src` reading through a hidden frozen blob: same content.
        let frozen = store.snapshot(src_inode.blob.id())?;
        let mut t = store.transaction();
        let id = t.clone_blob(frozen)?;
        t.set_xattr(id, XattrNs::Internal, KEY_INODE, &a.encode());
        t.set_xattr(
            inner.bid(parent),
            XattrNs::Internal,
            name,
            &encode_entry(id.0, Kind::File),
        );
        t.set_xattr(
            inner.bid(parent),
            XattrNs::Internal,
            KEY_INODE,
            &dst.encode(),
        );
        t.commit()?;
        dir.st.lock().attr = dst;
        let inode = inner.get(id.0)?;
        let st = inode.st.lock();
        Ok(inner.attr_of(&inode, &st.attr))
    }
}

impl FileSystem {
    /// `lseek(SEEK_DATA)`: the first offset at or after `offset` that holds data (written
    /// pages not yet written back, or a cluster the file or what it reads through has);
    /// `None` when there is none before the end of the file (ENXIO).
    pub fn seek_data(&self, ino: Ino, offset: u64) -> Result<Option<u64>> {
        let inode = self.inner.get(ino)?;
        let st = inode.st.lock();
        let size = st.attr.size;
        if offset >= size {
            return Ok(None);
        }
        let page = crate::fs::PAGE;
        let dirty = st
            .pages
            .range(offset / page..)
            .next()
            .map(|(i, _)| (i * page).max(offset));
        let mapped = inode.blob.seek_data(offset);
        let at = match (dirty, mapped) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(u64::MAX),
        };
        Ok((at < size).then_some(at))
    }

    /// `lseek(SEEK_HOLE)`: the first offset at or after `offset` that reads zeroes without
    /// holding data, or the file size (every file ends in a virtual hole); `None` when
    /// `offset` is at or past the end (ENXIO).
    pub fn seek_hole(&self, ino: Ino, offset: u64) -> Result<Option<u64>> {
        let inode = self.inner.get(ino)?;
        let st = inode.st.lock();
        let size = st.attr.size;
        if offset >= size {
            return Ok(None);
        }
        let page = crate::fs::PAGE;
        let mut pos = offset;
        while pos < size {
            let hole = inode.blob.seek_hole(pos);
            if hole > pos {
                // Inside clusters with data: skip to their end.
                pos = hole;
                continue;
            }
            if st.pages.contains_key(&(pos / page)) {
                pos = (pos / page + 1) * page;
                continue;
            }
            // No cluster with data and no dirty page here: a hole.
            return Ok(Some(pos));
        }
        Ok(Some(size))
    }
}

impl Inner {
    /// After a blob whose parent was `p` went: a hidden frozen blob (a reflink's, held by no
    /// snapshot) that nobody reads through any more goes too, and so on up its chain.
    pub(crate) fn collect_hidden(&self, mut p: BlobId) -> Result<()> {
        while p.0 != 0 {
            if self.held.lock().contains(&p) {
                return Ok(());
            }
            let Ok(m) = self.store.blob_meta(p) else {
                return Ok(());
            };
            if m.flags & FLAG_READ_ONLY == 0 || self.store.child_count(p) > 0 {
                return Ok(());
            }
            self.store.delete_blob(p)?;
            p = m.parent;
        }
        Ok(())
    }
}

/// The blobs that belong to snapshots, clones (their tables, the blobs the tables name, and
/// the inodes clones created, found by walking each clone's tree), and every blob that a
/// blob of the live tree or of those reads through (frozen copies, a reflink's hidden one):
/// what a check of the live tree must not take for its own inodes or for leaks.
pub fn other_trees(metas: &BTreeMap<BlobId, blobstore::BlobMeta>) -> HashSet<BlobId> {
    let mut others = HashSet::new();
    let Some(root) = metas.get(&BlobId(ROOT_INO)) else {
        return others;
    };
    let table_of = |t: BlobId| -> HashMap<Ino, BlobId> {
        let mut map = HashMap::new();
        if let Some(m) = metas.get(&t) {
            for (k, v) in &m.internal {
                if let (Ok(k), Ok(v)) = (<[u8; 8]>::try_from(&k[..]), <[u8; 8]>::try_from(&v[..])) {
                    map.insert(u64::from_le_bytes(k), BlobId(u64::from_le_bytes(v)));
                }
            }
        }
        map
    };
    for (k, v) in &root.internal {
        let Some(rest) = k.strip_prefix(REG_PREFIX) else {
            continue;
        };
        let Ok(info) = decode_reg(&String::from_utf8_lossy(rest), v) else {
            continue;
        };
        others.insert(info.table);
        let map = table_of(info.table);
        others.extend(map.values().copied());
        if info.kind == SnapKind::Clone {
            // Inodes the clone made itself: walk its tree through its table.
            let mut dirs = vec![ROOT_INO];
            let mut seen = HashSet::from([ROOT_INO]);
            while let Some(d) = dirs.pop() {
                let b = map.get(&d).copied().unwrap_or(BlobId(d));
                others.insert(b);
                let Some(m) = metas.get(&b) else { continue };
                for (ek, ev) in &m.internal {
                    if ek.first() == Some(&0) {
                        continue;
                    }
                    if let Ok((ino, kind)) = decode_entry(ev) {
                        if seen.insert(ino) {
                            others.insert(map.get(&ino).copied().unwrap_or(BlobId(ino)));
                            if kind == Kind::Dir {
                                dirs.push(ino);
                            }
                        }
                    }
                }
            }
        }
    }
    // Everything read through: parents of any blob, up the chains.
    for m in metas.values() {
        let mut p = m.parent;
        let mut steps = 0;
        while p.0 != 0 && steps <= metas.len() {
            others.insert(p);
            p = metas.get(&p).map_or(BlobId(0), |pm| pm.parent);
            steps += 1;
        }
    }
    others
}
