//! The filesystem: inode cache, namespace operations as blobstore transactions, and the
//! background syncer.
//!
//! Locking: `ns` serializes namespace changes (create, link, unlink, rename, setattr...);
//! each inode's state has its own mutex (data path). Order: `ns`, then inode states (in no
//! particular order between inodes: only `ns` holders take more than one), then the
//! blobstore's locks.

use crate::error::{Error, Result};
use crate::file::BeforeIo;
use crate::inode::{
    check_name, decode_entry, encode_entry, orphan_key, parse_orphan_key, Ino, InodeAttr, Kind,
    Time, KEY_INODE, KEY_MARKER, KEY_SYMLINK, MARKER, ROOT_INO, SYMLINK_MAX, S_IFDIR, S_IFMT,
};
use blobstore::{Blob, BlobId, Blobstore, IoChannel, OpenOptions, XattrNs};
use driver::Device;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Size of a cached page.
pub const PAGE: u64 = 4096;

/// Options for opening a filesystem.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Refuse all changes.
    pub read_only: bool,
    /// Dirty file data held in memory, over all files, before writers write back.
    pub dirty_limit: u64,
    /// Dirty data of one file before its writer writes it back.
    pub file_dirty_limit: u64,
    /// Largest read-ahead window for sequential reads.
    pub readahead_max: u64,
    /// Clean file pages kept in memory (the device is read with O_DIRECT: there is no
    /// kernel page cache under BlobFS).
    pub cache_bytes: u64,
    /// Keep written-back pages in that cache, as a kernel page cache keeps written pages.
    /// Off by default: under FUSE the kernel's page cache already holds what was written,
    /// and a second copy only churns. On for direct users such as the RocksDB FileSystem,
    /// where this cache is the only one (RocksDB reads back blocks it has just written).
    pub cache_written: bool,
    /// Write back and commit everything this often in the background (`None`: never; data
    /// is then durable only on fsync, sync and unmount).
    pub sync_interval: Option<Duration>,
    /// Blobstore options (read_only is taken from above).
    pub store: OpenOptions,
    /// Open this snapshot or clone (by name) instead of the live tree: a snapshot read-only
    /// only, a clone either way (see `FileSystem::snapshot`).
    pub view: Option<String>,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            read_only: false,
            dirty_limit: 256 << 20,
            file_dirty_limit: 16 << 20,
            readahead_max: 1 << 20,
            cache_bytes: 256 << 20,
            cache_written: false,
            sync_interval: Some(Duration::from_secs(5)),
            store: OpenOptions::default(),
            view: None,
        }
    }
}

/// Attributes as callers see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    /// Permission bits (and suid/sgid/sticky), without the type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    pub blksize: u32,
}

/// Attribute changes for `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
}

/// Filesystem figures for `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub bsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namelen: u32,
}

/// A directory entry from `readdir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: Kind,
}

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with `Exists` if the target exists.
    pub noreplace: bool,
    /// Swap source and target (both must exist).
    pub exchange: bool,
}

pub(crate) struct InodeState {
    pub attr: InodeAttr,
    /// The attributes differ from the stored inode record (files only; directories and
    /// symlinks are written through).
    pub attr_dirty: bool,
    /// Dirty pages of file data, by page index.
    pub pages: BTreeMap<u64, Box<[u8]>>,
    /// Generation of this file's pages in the clean-page cache (unique over the
    /// filesystem's life); a new one drops them all.
    pub cache_gen: u64,
    /// Bumped by every change of the file's data: a read that went to the device without
    /// the lock caches what it read only if no change happened meanwhile.
    pub data_version: u64,
    /// Where the last read ended (sequential detection) and the read-ahead window.
    pub ra_next: u64,
    pub ra_window: u64,
    /// nlink reached 0 while open: an orphan, deleted on last release.
    pub unlinked: bool,
    /// Pure appends since the size in the last inode record queued: (that size, CRC32C of
    /// the file's bytes from it to `attr.size`). `None` once anything else touched those
    /// bytes (an overwrite, a gap, a truncate): the next record then takes the ordered path.
    /// With it, a size-growing record can be committed as a checked group (one flush: the
    /// store verifies the bytes at replay if that group is the log's last).
    pub tail: Option<(u64, u32)>,
    /// Bytes `[from, to)` a checked inode record vouched for, and `groups_committed()` once
    /// it was durable (`u64::MAX` while not known). Until a later group is durable, those
    /// bytes must not change on the device (replay would find them differ and discard the
    /// acknowledged group): a write or truncate touching them confirms first.
    pub unconfirmed: Option<(u64, u64, u64)>,
}

/// A cached inode: its blob held open, its state behind a mutex.
pub(crate) struct Inode {
    pub ino: Ino,
    pub blob: Blob,
    pub st: Mutex<InodeState>,
    /// Open handles.
    pub pins: AtomicU32,
}

pub(crate) struct Inner {
    pub store: Blobstore,
    pub opts: FsOptions,
    pub inodes: Mutex<HashMap<Ino, Arc<Inode>>>,
    pub ns: Mutex<()>,
    pub channels: Mutex<Vec<IoChannel>>,
    pub cache: crate::cache::PageCache,
    pub io_bufs: crate::file::BufPool,
    pub page_pool: crate::file::PagePool,
    pub dirty_bytes: AtomicU64,
    /// Orphans whose deletion found the blob in use.
    pub retry_orphans: Mutex<Vec<Ino>>,
    pub cluster_size: u64,
    pub read_only: bool,
    /// Largest file size: the device's clusters (thin blobs cannot be larger).
    pub max_size: u64,
    /// The snapshot or clone this handle shows (`None`: the live tree).
    pub view: Option<crate::snapshots::View>,
    /// Blobs that registered snapshots and clones hold (the live tree's garbage collection
    /// of hidden reflink snapshots must leave them alone).
    pub held: Mutex<std::collections::HashSet<BlobId>>,
}

struct Syncer {
    stop: Mutex<bool>,
    cv: Condvar,
}

struct Life {
    syncer: Arc<Syncer>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Life {
    fn drop(&mut self) {
        *self.syncer.stop.lock() = true;
        self.syncer.cv.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// A mounted (opened) BlobFS. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct FileSystem {
    pub(crate) inner: Arc<Inner>,
    _life: Arc<Life>,
}

impl fmt::Debug for FileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSystem")
            .field("store", &self.inner.store)
            .finish()
    }
}

fn bid(ino: Ino) -> BlobId {
    BlobId(ino)
}

impl FileSystem {
    /// Makes a new, empty filesystem on `dev` (formats the blobstore, creates the root).
    pub fn format(dev: Arc<dyn Device>, opts: &blobstore::FormatOptions) -> Result<()> {
        let store = Blobstore::create(
            dev,
            opts,
            OpenOptions {
                background_checkpoint: false,
                ..OpenOptions::default()
            },
        )?;
        let mut t = store.transaction();
        let root = t.create_blob(0);
        if root.0 != ROOT_INO {
            return Err(Error::Invalid(format!("fresh store gave root id {root}")));
        }
        let mut attr = InodeAttr::new(S_IFDIR | 0o755, 0, 0);
        attr.nlink = 2;
        attr.parent = ROOT_INO;
        t.set_xattr(root, XattrNs::Internal, KEY_INODE, &attr.encode());
        t.set_xattr(root, XattrNs::Internal, KEY_MARKER, MARKER);
        t.commit()?;
        store.close()?;
        Ok(())
    }

    /// Opens the filesystem on `dev`; deletes orphans left by a crash (unless read-only).
    pub fn open(dev: Arc<dyn Device>, opts: FsOptions) -> Result<FileSystem> {
        let mut sopts = opts.store.clone();
        sopts.read_only = opts.read_only;
        let store = match Blobstore::open(dev, sopts) {
            Err(blobstore::Error::NotABlobstore(m)) => return Err(Error::NotBlobfs(m)),
            r => r?,
        };
        let root = store
            .open_blob(bid(ROOT_INO))
            .map_err(|_| Error::NotBlobfs("the blobstore has no root directory".into()))?;
        if root.get_xattr_ns(XattrNs::Internal, KEY_MARKER).as_deref() != Some(MARKER) {
            return Err(Error::NotBlobfs(
                "blob 1 is not a BlobFS root directory (a plain blobstore?)".into(),
            ));
        }
        let view = match &opts.view {
            None => None,
            Some(name) => Some(crate::snapshots::View::load(
                &store,
                &root,
                name,
                opts.read_only,
            )?),
        };
        // Every handle (views too: a clone's file may be the last reader of a frozen blob)
        // must know which blobs snapshots hold before it garbage-collects hidden ones.
        let held = crate::snapshots::held_blobs(&store, &root)?;
        drop(root);
        let usage = store.usage();
        let inner = Arc::new(Inner {
            cluster_size: store.cluster_size(),
            read_only: opts.read_only,
            max_size: usage.clusters.saturating_mul(usage.cluster_size),
            store,
            inodes: Mutex::new(HashMap::new()),
            ns: Mutex::new(()),
            channels: Mutex::new(Vec::new()),
            cache: crate::cache::PageCache::new((opts.cache_bytes / PAGE) as usize),
            io_bufs: crate::file::BufPool::default(),
            page_pool: crate::file::PagePool::default(),
            dirty_bytes: AtomicU64::new(0),
            retry_orphans: Mutex::new(Vec::new()),
            opts: opts.clone(),
            view,
            held: Mutex::new(held),
        });
        let fs = FileSystem {
            _life: Arc::new(Life {
                syncer: Arc::new(Syncer {
                    stop: Mutex::new(false),
                    cv: Condvar::new(),
                }),
                thread: Mutex::new(None),
            }),
            inner,
        };
        if !opts.read_only {
            fs.delete_orphans()?;
            if let Some(every) = opts.sync_interval {
                let weak = Arc::downgrade(&fs.inner);
                let syncer = Arc::clone(&fs._life.syncer);
                let t = std::thread::Builder::new()
                    .name("blobfs-sync".into())
                    .spawn(move || sync_loop(weak, syncer, every))
                    .map_err(|e| Error::Invalid(format!("cannot start the syncer: {e}")))?;
                *fs._life.thread.lock() = Some(t);
            }
        }
        Ok(fs)
    }

    /// The blobstore underneath.
    pub fn store(&self) -> &Blobstore {
        &self.inner.store
    }

    /// Whether changes are refused.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only || self.inner.store.is_read_only()
    }

    fn delete_orphans(&self) -> Result<()> {
        let root = self.inner.get(ROOT_INO)?;
        let mut orphans = Vec::new();
        root.blob.visit_xattrs_ns(
            XattrNs::Internal,
            Some(b"\0o"),
            |k, _| match parse_orphan_key(k) {
                Some(ino) => {
                    orphans.push(ino);
                    true
                }
                None => !k.starts_with(b"\0o"),
            },
        );
        if orphans.is_empty() {
            return Ok(());
        }
        for ino in orphans {
            self.inner.inodes.lock().remove(&ino);
            let mut t = self.inner.store.transaction();
            if self.inner.store.blob_meta(self.inner.bid(ino)).is_ok() {
                t.delete_blob(self.inner.bid(ino));
            }
            t.remove_xattr(
                self.inner.bid(ROOT_INO),
                XattrNs::Internal,
                &orphan_key(ino),
            );
            t.commit()?;
        }
        self.inner.store.sync()?;
        Ok(())
    }

    /// Writes back everything, commits, checkpoints and stops the syncer. Other clones of
    /// the handle stay usable.
    pub fn close(self) -> Result<()> {
        if !self.is_read_only() {
            self.sync_all()?;
        }
        let store = self.inner.store.clone();
        drop(self);
        store.close()?;
        Ok(())
    }

    /// Writes back all dirty data and attributes, then commits (like `sync(2)`).
    pub fn sync_all(&self) -> Result<()> {
        self.inner.sync_all()
    }

    // ---- attributes and lookup ----

    /// Looks a name up in a directory.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let ino = self.inner.lookup_ino(parent, name)?.0;
        self.getattr(ino)
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let inode = self.inner.get(ino)?;
        let st = inode.st.lock();
        Ok(self.inner.attr_of(&inode, &st.attr))
    }

    /// Changes attributes; a size change truncates or extends the file.
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        self.retry_nospace(|| self.setattr_once(ino, set))
    }

    fn setattr_once(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        self.inner.writable()?;
        let _ns = self.inner.ns.lock();
        let inode = self.inner.get(ino)?;
        let mut st = inode.st.lock();
        let kind = st.attr.kind();
        if let Some(size) = set.size {
            match kind {
                Kind::File => self.inner.truncate_locked(&inode, &mut st, size)?,
                Kind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("size of a special file".into())),
            }
        }
        let mut a = st.attr;
        let now = Time::now();
        if let Some(m) = set.mode {
            a.mode = (a.mode & S_IFMT) | (m & !S_IFMT);
        }
        if let Some(u) = set.uid {
            a.uid = u;
        }
        if let Some(g) = set.gid {
            a.gid = g;
        }
        if let Some(t) = set.atime {
            a.atime = t;
        }
        if let Some(t) = set.mtime {
            a.mtime = t;
        }
        a.ctime = set.ctime.unwrap_or(now);
        st.attr = a;
        if kind == Kind::File {
            st.attr_dirty = true;
        } else {
            inode
                .blob
                .set_xattr_ns(XattrNs::Internal, KEY_INODE, &a.encode())?;
        }
        Ok(self.inner.attr_of(&inode, &st.attr))
    }

    /// Reads a symlink's target.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.inner.get(ino)?;
        if inode.st.lock().attr.kind() != Kind::Symlink {
            return Err(Error::Invalid("not a symlink".into()));
        }
        inode
            .blob
            .get_xattr_ns(XattrNs::Internal, KEY_SYMLINK)
            .ok_or_else(|| Error::Corruption(format!("symlink {ino} has no target")))
    }

    /// Lists a directory (without `.` and `..`), in name order.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let inode = self.inner.get(ino)?;
        if inode.st.lock().attr.kind() != Kind::Dir {
            return Err(Error::NotDir);
        }
        let mut out = Vec::with_capacity(inode.blob.xattr_count_ns(XattrNs::Internal));
        let mut bad = None;
        inode.blob.visit_xattrs_ns(XattrNs::Internal, None, |k, v| {
            if k.first() == Some(&0) {
                return true;
            }
            match decode_entry(v) {
                Ok((ino, kind)) => out.push(DirEntry {
                    name: k.to_vec(),
                    ino,
                    kind,
                }),
                Err(e) => bad = Some(e),
            }
            true
        });
        match bad {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The parent of a directory (the root is its own parent).
    pub fn parent_of(&self, dir: Ino) -> Result<Ino> {
        let inode = self.inner.get(dir)?;
        let st = inode.st.lock();
        if st.attr.kind() != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(st.attr.parent)
    }

    /// Filesystem figures.
    pub fn statfs(&self) -> StatFs {
        let u = self.inner.store.usage();
        let per = u.cluster_size / PAGE;
        let avail = u.free.saturating_sub(u.reserved);
        StatFs {
            bsize: PAGE as u32,
            blocks: u.clusters * per,
            bfree: u.free * per,
            bavail: avail * per,
            files: u.blobs + avail,
            ffree: avail,
            namelen: crate::inode::NAME_MAX as u32,
        }
    }

    // ---- namespace changes ----

    /// Creates a regular file, device node, fifo or socket (per `mode`'s type bits).
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> Result<Attr> {
        let kind = Kind::from_mode(mode).unwrap_or(Kind::File);
        if matches!(kind, Kind::Dir | Kind::Symlink) {
            return Err(Error::Invalid("mknod of a directory or symlink".into()));
        }
        let mut attr = InodeAttr::new(kind.mode_bits() | (mode & !S_IFMT), uid, gid);
        attr.rdev = rdev;
        self.inner.create_inode(parent, name, attr, None)
    }

    /// Creates a regular file.
    pub fn create(&self, parent: Ino, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        let attr = InodeAttr::new(crate::inode::S_IFREG | (mode & !S_IFMT), uid, gid);
        self.inner.create_inode(parent, name, attr, None)
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        let mut attr = InodeAttr::new(S_IFDIR | (mode & !S_IFMT), uid, gid);
        attr.nlink = 2;
        attr.parent = parent;
        self.inner.create_inode(parent, name, attr, None)
    }

    /// Creates a symlink to `target`.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        if target.is_empty() || target.len() > SYMLINK_MAX {
            return Err(Error::NameTooLong);
        }
        let mut attr = InodeAttr::new(crate::inode::S_IFLNK | 0o777, uid, gid);
        attr.size = target.len() as u64;
        self.inner.create_inode(parent, name, attr, Some(target))
    }

    /// Adds a hard link `newparent/newname` to `ino` (not a directory).
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr> {
        self.inner.writable()?;
        check_name(newname)?;
        let _ns = self.inner.ns.lock();
        let inode = self.inner.get(ino)?;
        let dir = self.inner.get_dir(newparent)?;
        if self.inner.entry(&dir, newname)?.is_some() {
            return Err(Error::Exists);
        }
        let mut st = inode.st.lock();
        if st.attr.kind() == Kind::Dir {
            return Err(Error::NotPermitted("hard link to a directory".into()));
        }
        if st.unlinked || st.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        self.inner.write_back(&inode, &mut st)?;
        let now = Time::now();
        let mut a = st.attr;
        a.nlink += 1;
        a.ctime = now;
        let mut dst = st_copy(&dir);
        dst.mtime = now;
        dst.ctime = now;
        let mut t = self.inner.store.transaction();
        t.set_xattr(
            self.inner.bid(newparent),
            XattrNs::Internal,
            newname,
            &encode_entry(ino, a.kind()),
        );
        t.set_xattr(
            self.inner.bid(newparent),
            XattrNs::Internal,
            KEY_INODE,
            &dst.encode(),
        );
        t.set_xattr(
            self.inner.bid(ino),
            XattrNs::Internal,
            KEY_INODE,
            &a.encode(),
        );
        t.commit()?;
        st.attr = a;
        st.attr_dirty = false;
        if !Arc::ptr_eq(&dir, &inode) {
            dir.st.lock().attr = dst;
        }
        Ok(self.inner.attr_of(&inode, &st.attr))
    }

    /// Removes a name of a non-directory; the inode goes when its last name and last open
    /// handle are gone.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.inner.writable()?;
        let _ns = self.inner.ns.lock();
        let dir = self.inner.get_dir(parent)?;
        let (ino, kind) = self.inner.entry(&dir, name)?.ok_or(Error::NotFound)?;
        if kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        let now = Time::now();
        let mut dst = st_copy(&dir);
        dst.mtime = now;
        dst.ctime = now;
        let mut t = self.inner.store.transaction();
        t.remove_xattr(self.inner.bid(parent), XattrNs::Internal, name);
        t.set_xattr(
            self.inner.bid(parent),
            XattrNs::Internal,
            KEY_INODE,
            &dst.encode(),
        );
        let fate = self.inner.drop_link(&mut t, ino, now)?;
        t.commit()?;
        dir.st.lock().attr = dst;
        self.inner.after_drop_link(fate);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.inner.writable()?;
        let _ns = self.inner.ns.lock();
        let dir = self.inner.get_dir(parent)?;
        let (ino, kind) = self.inner.entry(&dir, name)?.ok_or(Error::NotFound)?;
        if kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        let victim = self.inner.get_dir(ino)?;
        if self.inner.has_entries(&victim) {
            return Err(Error::NotEmpty);
        }
        drop(victim);
        let now = Time::now();
        let mut dst = st_copy(&dir);
        dst.mtime = now;
        dst.ctime = now;
        dst.nlink = dst.nlink.saturating_sub(1).max(2);
        let mut t = self.inner.store.transaction();
        t.remove_xattr(self.inner.bid(parent), XattrNs::Internal, name);
        t.set_xattr(
            self.inner.bid(parent),
            XattrNs::Internal,
            KEY_INODE,
            &dst.encode(),
        );
        let fate = self.inner.drop_dir(&mut t, ino, now)?;
        t.commit()?;
        dir.st.lock().attr = dst;
        self.inner.after_drop_link(fate);
        Ok(())
    }

    /// Renames `parent/name` to `newparent/newname`, atomically replacing the target.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.inner.writable()?;
        check_name(newname)?;
        let _ns = self.inner.ns.lock();
        let src_dir = self.inner.get_dir(parent)?;
        let dst_dir = self.inner.get_dir(newparent)?;
        let (ino, kind) = self.inner.entry(&src_dir, name)?.ok_or(Error::NotFound)?;
        let target = self.inner.entry(&dst_dir, newname)?;
        if parent == newparent && name == newname {
            return if flags.noreplace {
                Err(Error::Exists)
            } else {
                Ok(())
            };
        }
        if flags.noreplace && target.is_some() {
            return Err(Error::Exists);
        }
        if flags.exchange && target.is_none() {
            return Err(Error::NotFound);
        }
        if !flags.exchange && target.is_some_and(|(tino, _)| tino == ino) {
            // Two names of the same file: POSIX says do nothing.
            return Ok(());
        }
        // A directory may not move into its own subtree.
        if kind == Kind::Dir && parent != newparent && self.inner.is_ancestor(ino, newparent)? {
            return Err(Error::Invalid("cannot move a directory into itself".into()));
        }
        if let (true, Some((tino, Kind::Dir))) = (flags.exchange, target) {
            if parent != newparent && self.inner.is_ancestor(tino, parent)? {
                return Err(Error::Invalid("cannot move a directory into itself".into()));
            }
        }
        let now = Time::now();
        let same_dir = parent == newparent;
        // Link-count changes of the two directories (".." of moved subdirectories).
        let (mut src_delta, mut dst_delta) = (0i64, 0i64);
        let mut t = self.inner.store.transaction();
        let mut moved: Vec<(Ino, Kind, Ino)> = vec![(ino, kind, newparent)];
        let mut fate = None;
        if flags.exchange {
            let (tino, tkind) = target.ok_or(Error::NotFound)?;
            t.set_xattr(
                self.inner.bid(parent),
                XattrNs::Internal,
                name,
                &encode_entry(tino, tkind),
            );
            t.set_xattr(
                self.inner.bid(newparent),
                XattrNs::Internal,
                newname,
                &encode_entry(ino, kind),
            );
            moved.push((tino, tkind, parent));
        } else {
            if let Some((tino, tkind)) = target {
                match (kind == Kind::Dir, tkind == Kind::Dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) => {
                        let victim = self.inner.get_dir(tino)?;
                        if self.inner.has_entries(&victim) {
                            return Err(Error::NotEmpty);
                        }
                        drop(victim);
                        fate = Some(self.inner.drop_dir(&mut t, tino, now)?);
                        // Its ".." no longer counts towards the destination.
                        dst_delta -= 1;
                    }
                    (false, false) => {
                        fate = Some(self.inner.drop_link(&mut t, tino, now)?);
                    }
                }
            }
            t.remove_xattr(self.inner.bid(parent), XattrNs::Internal, name);
            t.set_xattr(
                self.inner.bid(newparent),
                XattrNs::Internal,
                newname,
                &encode_entry(ino, kind),
            );
        }
        // The moved inodes: ctime; directories changing parent also their parent field.
        let mut updates: Vec<(Arc<Inode>, InodeAttr)> = Vec::new();
        for (mino, mkind, to) in moved {
            let inode = self.inner.get(mino)?;
            let mut st = inode.st.lock();
            self.inner.write_back(&inode, &mut st)?;
            let mut a = st.attr;
            a.ctime = now;
            if mkind == Kind::Dir && !same_dir {
                a.parent = to;
                if to == newparent {
                    src_delta -= 1;
                    dst_delta += 1;
                } else {
                    dst_delta -= 1;
                    src_delta += 1;
                }
            }
            t.set_xattr(
                self.inner.bid(mino),
                XattrNs::Internal,
                KEY_INODE,
                &a.encode(),
            );
            drop(st);
            updates.push((inode, a));
        }
        let adjust = |a: &mut InodeAttr, d: i64| {
            a.nlink = (i64::from(a.nlink) + d).clamp(2, i64::from(u32::MAX)) as u32;
            a.mtime = now;
            a.ctime = now;
        };
        let mut src_a = st_copy(&src_dir);
        let mut dst_a = st_copy(&dst_dir);
        if same_dir {
            adjust(&mut src_a, src_delta + dst_delta);
            t.set_xattr(
                self.inner.bid(parent),
                XattrNs::Internal,
                KEY_INODE,
                &src_a.encode(),
            );
        } else {
            adjust(&mut src_a, src_delta);
            adjust(&mut dst_a, dst_delta);
            t.set_xattr(
                self.inner.bid(parent),
                XattrNs::Internal,
                KEY_INODE,
                &src_a.encode(),
            );
            t.set_xattr(
                self.inner.bid(newparent),
                XattrNs::Internal,
                KEY_INODE,
                &dst_a.encode(),
            );
        }
        t.commit()?;
        src_dir.st.lock().attr = src_a;
        if !same_dir {
            dst_dir.st.lock().attr = dst_a;
        }
        for (inode, a) in updates {
            let mut st = inode.st.lock();
            st.attr = a;
            st.attr_dirty = false;
        }
        if let Some(f) = fate {
            self.inner.after_drop_link(f);
        }
        Ok(())
    }

    // ---- open files ----

    /// Opens an inode for I/O; pair with `release_file`.
    pub fn open_file(&self, ino: Ino) -> Result<()> {
        let inode = self.inner.get(ino)?;
        inode.pins.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Closes an open handle: writes back the file's data; the last close of an unlinked
    /// file deletes it.
    pub fn release_file(&self, ino: Ino) -> Result<()> {
        let Some(inode) = self.inner.inodes.lock().get(&ino).cloned() else {
            return Ok(());
        };
        let prev = inode.pins.fetch_sub(1, Ordering::SeqCst);
        if prev > 1 {
            return Ok(());
        }
        let unlinked = {
            let mut st = inode.st.lock();
            if st.unlinked {
                let dirty = st.pages.len() as u64 * PAGE;
                st.pages.clear();
                let _ =
                    self.inner
                        .dirty_bytes
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                            Some(d.saturating_sub(dirty))
                        });
                true
            } else {
                if !self.is_read_only() {
                    self.inner.write_back(&inode, &mut st)?;
                }
                false
            }
        };
        if unlinked {
            drop(inode);
            self.inner.delete_orphan(ino)?;
        }
        Ok(())
    }

    /// Runs `f`, and once more after a commit if it ran out of space: clusters freed by
    /// deletes and truncates return only when that change is committed, so without this
    /// `rm big; cp other .` could fail for no reason between two background syncs.
    fn retry_nospace<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Err(Error::NoSpace) => {
                self.inner.store.sync()?;
                f()
            }
            r => r,
        }
    }

    /// Reads up to `len` bytes at `offset` (short at end of file).
    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        let inode = self.inner.get(ino)?;
        self.inner.read(&inode, offset, len, &mut BeforeIo::none())
    }

    /// Reads into `buf` at `offset`, straight from the caches (or the device) into the
    /// caller's memory; returns the bytes read, short only at the end of the file.
    pub fn read_into(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self.inner.get(ino)?;
        self.inner
            .read_into(&inode, offset, buf, &mut BeforeIo::none())
    }

    /// `read`, calling `before_io` once if the read has to wait for the device (it missed
    /// the caches), right before it does.
    pub fn read_with(
        &self,
        ino: Ino,
        offset: u64,
        len: usize,
        before_io: &mut dyn FnMut(),
    ) -> Result<Vec<u8>> {
        let inode = self.inner.get(ino)?;
        self.inner
            .read(&inode, offset, len, &mut BeforeIo::new(before_io))
    }

    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_with(ino, offset, data, &mut || {})
    }

    /// `write`, calling `before_io` once if the write has to wait for the device (writing
    /// back dirty data, reading a partly written page, zeroing a gap), right before it
    /// does.
    pub fn write_with(
        &self,
        ino: Ino,
        offset: u64,
        data: &[u8],
        before_io: &mut dyn FnMut(),
    ) -> Result<usize> {
        self.inner.writable()?;
        let inode = self.inner.get(ino)?;
        let mut io = BeforeIo::new(before_io);
        self.retry_nospace(|| self.inner.write(&inode, offset, data, &mut io))
    }

    /// Whether the file has data not yet written back (a `flush` would write).
    pub fn has_dirty_data(&self, ino: Ino) -> bool {
        let inode = self.inner.inodes.lock().get(&ino).cloned();
        inode.is_some_and(|i| !i.st.lock().pages.is_empty())
    }

    /// Makes the file's data and attributes durable (also its name if `ino` is a directory
    /// entry created before: namespace changes are committed by the same store sync).
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        let inode = self.inner.get(ino)?;
        {
            let mut st = inode.st.lock();
            match self.inner.fsync_appends_overlapped(&inode, &mut st) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // Out of space: the ordinary path below commits (releasing clusters that
                // wait for a commit to be free) and tries again.
                Err(Error::NoSpace) => {}
                Err(e) => return Err(e),
            }
        }
        self.retry_nospace(|| {
            let mut st = inode.st.lock();
            self.inner.persist_locked(&inode, &mut st)
        })?;
        self.inner.store.sync()?;
        let g = self.inner.store.groups_committed();
        note_committed(&mut inode.st.lock(), g);
        Ok(())
    }

    /// Writes back the file's dirty data without committing (close(2)-time flush).
    pub fn flush(&self, ino: Ino) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        let inode = self.inner.get(ino)?;
        self.retry_nospace(|| {
            let mut st = inode.st.lock();
            self.inner.write_back(&inode, &mut st)
        })
    }

    // ---- xattrs ----

    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create_only: bool,
        replace_only: bool,
    ) -> Result<()> {
        self.inner.writable()?;
        if name.is_empty() || name.len() > blobstore::format::record::MAX_XATTR_NAME {
            return Err(Error::Invalid("xattr name length".into()));
        }
        if value.len() > blobstore::format::record::MAX_XATTR_VALUE {
            return Err(Error::TooBig);
        }
        let _ns = self.inner.ns.lock();
        let inode = self.inner.get(ino)?;
        let exists = inode.blob.get_xattr(name).is_some();
        if create_only && exists {
            return Err(Error::Exists);
        }
        if replace_only && !exists {
            return Err(Error::NoAttr);
        }
        inode.blob.set_xattr(name, value)?;
        self.inner.touch_ctime(&inode)?;
        Ok(())
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let inode = self.inner.get(ino)?;
        inode.blob.get_xattr(name).ok_or(Error::NoAttr)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let inode = self.inner.get(ino)?;
        Ok(inode.blob.xattr_names())
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.inner.writable()?;
        let _ns = self.inner.ns.lock();
        let inode = self.inner.get(ino)?;
        match inode.blob.remove_xattr(name) {
            Err(blobstore::Error::NoXattr(_)) => return Err(Error::NoAttr),
            r => r?,
        }
        self.inner.touch_ctime(&inode)?;
        Ok(())
    }

    /// What Linux does to a file whose data or owner changes (`file_remove_privs`): drops
    /// its `security.capability` xattr always, and with `kill_suidgid` clears set-user-ID
    /// and (when group-executable) set-group-ID. Called by a server that asked the kernel to
    /// leave this to it (FUSE_HANDLE_KILLPRIV_V2); costs two lookups when there is nothing
    /// to drop, which is nearly always.
    pub fn remove_privs(&self, ino: Ino, kill_suidgid: bool) -> Result<()> {
        const CAPS: &[u8] = b"security.capability";
        const S_ISUID: u32 = 0o4000;
        const S_ISGID: u32 = 0o2000;
        const S_IXGRP: u32 = 0o0010;
        let inode = self.inner.get(ino)?;
        let drop_mode = {
            let st = inode.st.lock();
            if st.attr.kind() == Kind::Dir {
                return Ok(());
            }
            let m = st.attr.mode;
            let mut drop = 0;
            if kill_suidgid {
                if m & S_ISUID != 0 {
                    drop |= S_ISUID;
                }
                if m & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
                    drop |= S_ISGID;
                }
            }
            drop
        };
        if inode.blob.get_xattr(CAPS).is_some() {
            match self.removexattr(ino, CAPS) {
                Ok(()) | Err(Error::NoAttr) => {}
                Err(e) => return Err(e),
            }
        }
        if drop_mode != 0 {
            self.inner.writable()?;
            let _ns = self.inner.ns.lock();
            self.inner.change_attr(&inode, |a| a.mode &= !drop_mode)?;
        }
        Ok(())
    }

    /// Drops a cached inode that no handle uses (after the kernel forgets it).
    pub fn forget(&self, ino: Ino) {
        let mut map = self.inner.inodes.lock();
        if let Some(i) = map.get(&ino) {
            if ino != ROOT_INO && i.pins.load(Ordering::SeqCst) == 0 {
                let st = i.st.lock();
                if st.pages.is_empty() && !st.attr_dirty && !st.unlinked {
                    drop(st);
                    map.remove(&ino);
                }
            }
        }
    }
}

fn st_copy(inode: &Inode) -> InodeAttr {
    inode.st.lock().attr
}

/// What became of an inode whose link was dropped.
pub(crate) enum LinkFate {
    /// Still has names.
    Done,
    /// The last name is gone: an orphan record was added, with these attributes.
    Orphaned(Arc<Inode>, InodeAttr),
}

impl Inner {
    /// The blob holding inode `ino`: itself in the live tree; in a snapshot or clone, the
    /// blob its table names (inodes a clone created after it was made are their own blobs).
    pub(crate) fn bid(&self, ino: Ino) -> BlobId {
        match &self.view {
            None => BlobId(ino),
            Some(v) => v.blob_of(ino),
        }
    }

    pub(crate) fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("mounted read-only".into()));
        }
        if self.store.is_read_only() {
            return Err(Error::ReadOnly(
                "the store turned read-only after a failed metadata write".into(),
            ));
        }
        Ok(())
    }

    /// The cached inode, loading it if needed.
    pub(crate) fn get(&self, ino: Ino) -> Result<Arc<Inode>> {
        if let Some(i) = self.inodes.lock().get(&ino) {
            return Ok(Arc::clone(i));
        }
        let blob = match self.store.open_blob(self.bid(ino)) {
            Ok(b) => b,
            Err(blobstore::Error::NotFound(_)) => return Err(Error::NotFound),
            Err(e) => return Err(e.into()),
        };
        let raw = blob
            .get_xattr_ns(XattrNs::Internal, KEY_INODE)
            .ok_or_else(|| Error::Corruption(format!("blob {ino} has no inode record")))?;
        let attr = InodeAttr::decode(&raw)?;
        let inode = Arc::new(Inode {
            ino,
            blob,
            st: Mutex::new(InodeState {
                attr,
                attr_dirty: false,
                pages: BTreeMap::new(),
                // Never a generation used before: a reloaded inode must not see pages its
                // earlier incarnation cached under an old generation.
                cache_gen: self.cache.new_generation(),
                data_version: 0,
                ra_next: 0,
                ra_window: 0,
                unlinked: false,
                tail: self.fresh_tail(attr.size),
                unconfirmed: None,
            }),
            pins: AtomicU32::new(0),
        });
        let mut map = self.inodes.lock();
        Ok(Arc::clone(map.entry(ino).or_insert(inode)))
    }

    pub(crate) fn get_dir(&self, ino: Ino) -> Result<Arc<Inode>> {
        let i = self.get(ino)?;
        if i.st.lock().attr.kind() != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(i)
    }

    /// A directory entry by name.
    pub(crate) fn entry(&self, dir: &Inode, name: &[u8]) -> Result<Option<(Ino, Kind)>> {
        check_name(name)?;
        match dir.blob.get_xattr_ns(XattrNs::Internal, name) {
            Some(v) => Ok(Some(decode_entry(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn lookup_ino(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Kind)> {
        let dir = self.get_dir(parent)?;
        if name == b"." {
            return Ok((parent, Kind::Dir));
        }
        if name == b".." {
            return Ok((dir.st.lock().attr.parent, Kind::Dir));
        }
        self.entry(&dir, name)?.ok_or(Error::NotFound)
    }

    pub(crate) fn has_entries(&self, dir: &Inode) -> bool {
        let mut any = false;
        dir.blob.visit_xattrs_ns(XattrNs::Internal, None, |k, _| {
            if k.first() != Some(&0) {
                any = true;
                return false;
            }
            true
        });
        any
    }

    /// Whether `anc` is `ino` or one of its ancestors.
    pub(crate) fn is_ancestor(&self, anc: Ino, mut ino: Ino) -> Result<bool> {
        for _ in 0..100_000 {
            if ino == anc {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            let p = self.get(ino)?.st.lock().attr.parent;
            if p == ino || p == 0 {
                return Ok(false);
            }
            ino = p;
        }
        Err(Error::Corruption(
            "directory parent chain too long (cycle?)".into(),
        ))
    }

    pub(crate) fn attr_of(&self, inode: &Inode, a: &InodeAttr) -> Attr {
        let allocated = inode.blob.allocated_clusters() * self.cluster_size;
        Attr {
            ino: inode.ino,
            kind: a.kind(),
            perm: a.mode & !S_IFMT,
            uid: a.uid,
            gid: a.gid,
            nlink: a.nlink,
            rdev: a.rdev,
            size: a.size,
            blocks: allocated / 512,
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            crtime: a.crtime,
            blksize: PAGE as u32,
        }
    }

    fn create_inode(
        &self,
        parent: Ino,
        name: &[u8],
        mut attr: InodeAttr,
        link: Option<&[u8]>,
    ) -> Result<Attr> {
        self.writable()?;
        check_name(name)?;
        let _ns = self.ns.lock();
        let dir = self.get_dir(parent)?;
        if self.entry(&dir, name)?.is_some() {
            return Err(Error::Exists);
        }
        let kind = attr.kind();
        let now = Time::now();
        let mut dst = st_copy(&dir);
        dst.mtime = now;
        dst.ctime = now;
        if kind == Kind::Dir {
            dst.nlink += 1;
            attr.parent = parent;
        }
        let mut t = self.store.transaction();
        let id = t.create_blob(0);
        t.set_xattr(id, XattrNs::Internal, KEY_INODE, &attr.encode());
        if let Some(target) = link {
            t.set_xattr(id, XattrNs::Internal, KEY_SYMLINK, target);
        }
        t.set_xattr(
            self.bid(parent),
            XattrNs::Internal,
            name,
            &encode_entry(id.0, kind),
        );
        t.set_xattr(
            self.bid(parent),
            XattrNs::Internal,
            KEY_INODE,
            &dst.encode(),
        );
        // A new empty inode and a name: nothing here depends on data written before, so
        // the commit that takes it needs no pre-flush for its sake.
        t.commit_unordered()?;
        dir.st.lock().attr = dst;
        let inode = self.get(id.0)?;
        let st = inode.st.lock();
        Ok(self.attr_of(&inode, &st.attr))
    }

    /// Adds to `t` what dropping one name of `ino` does: nlink-1, or, at the last name, an
    /// orphan record (deleted after the commit, or at the last close if the file is open).
    /// Deleting through an orphan record keeps a crash from leaking the blob, and lets the
    /// deletion wait for the last handle without failing the unlink.
    fn drop_link(
        &self,
        t: &mut blobstore::Transaction<'_>,
        ino: Ino,
        now: Time,
    ) -> Result<LinkFate> {
        let inode = self.get(ino)?;
        let mut st = inode.st.lock();
        let mut a = st.attr;
        a.nlink = a.nlink.saturating_sub(1);
        a.ctime = now;
        if a.nlink > 0 {
            self.write_back(&inode, &mut st)?;
            t.set_xattr(self.bid(ino), XattrNs::Internal, KEY_INODE, &a.encode());
            st.attr = a;
            st.attr_dirty = false;
            return Ok(LinkFate::Done);
        }
        t.set_xattr(self.bid(ino), XattrNs::Internal, KEY_INODE, &a.encode());
        t.set_xattr(self.bid(ROOT_INO), XattrNs::Internal, &orphan_key(ino), b"");
        drop(st);
        Ok(LinkFate::Orphaned(inode, a))
    }

    /// Like `drop_link` for an empty directory being removed.
    fn drop_dir(
        &self,
        t: &mut blobstore::Transaction<'_>,
        ino: Ino,
        now: Time,
    ) -> Result<LinkFate> {
        let inode = self.get(ino)?;
        let mut a = inode.st.lock().attr;
        a.nlink = 0;
        a.ctime = now;
        t.set_xattr(self.bid(ino), XattrNs::Internal, KEY_INODE, &a.encode());
        t.set_xattr(self.bid(ROOT_INO), XattrNs::Internal, &orphan_key(ino), b"");
        Ok(LinkFate::Orphaned(inode, a))
    }

    /// After the commit of a dropped last link: mark the inode unlinked, and delete it now
    /// unless it is open (then the last release does). Called with `ns` held.
    fn after_drop_link(&self, fate: LinkFate) {
        if let LinkFate::Orphaned(inode, a) = fate {
            let ino = inode.ino;
            let open = inode.pins.load(Ordering::SeqCst) > 0;
            {
                let mut st = inode.st.lock();
                st.attr = a;
                st.attr_dirty = false;
                st.unlinked = true;
                if !open {
                    // Nobody can read these pages any more. (An open file keeps them: it
                    // works as before through its handles until the last release.)
                    let dirty = st.pages.len() as u64 * PAGE;
                    st.pages.clear();
                    let _ =
                        self.dirty_bytes
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                                Some(d.saturating_sub(dirty))
                            });
                }
            }
            drop(inode);
            if !open {
                // Failure leaves the orphan record: retried by the syncer and at mount.
                let _ = self.delete_orphan_locked(ino);
            }
        }
    }

    /// Deletes an orphan once nothing uses it.
    fn delete_orphan(&self, ino: Ino) -> Result<()> {
        let _ns = self.ns.lock();
        self.delete_orphan_locked(ino)
    }

    /// `delete_orphan` with `ns` held. A handle still in use (a request in flight) leaves
    /// the orphan for a later retry.
    fn delete_orphan_locked(&self, ino: Ino) -> Result<()> {
        let handle = {
            let mut map = self.inodes.lock();
            match map.get(&ino) {
                Some(i) if i.pins.load(Ordering::SeqCst) > 0 => return Ok(()),
                _ => map.remove(&ino),
            }
        };
        drop(handle);
        let blob = self.bid(ino);
        let parent = self.store.blob_meta(blob).ok().map(|m| m.parent);
        let mut t = self.store.transaction();
        t.delete_blob(blob);
        t.remove_xattr(self.bid(ROOT_INO), XattrNs::Internal, &orphan_key(ino));
        match t.commit() {
            Err(blobstore::Error::Busy(_)) => {
                self.retry_orphans.lock().push(ino);
                Ok(())
            }
            r => {
                r?;
                if let Some(p) = parent.filter(|p| p.0 != 0) {
                    self.collect_hidden(p)?;
                }
                Ok(())
            }
        }
    }

    /// Retries orphans whose deletion found them busy.
    pub(crate) fn retry_orphan_deletes(&self) {
        let list = std::mem::take(&mut *self.retry_orphans.lock());
        for ino in list {
            let _ = self.delete_orphan(ino);
        }
    }

    fn touch_ctime(&self, inode: &Inode) -> Result<()> {
        self.change_attr(inode, |_| {})
    }

    /// Changes an inode's attributes with `f` and stamps its ctime: queued at once for a
    /// directory or symlink, with the next write-back of a file (its record carries size).
    pub(crate) fn change_attr(&self, inode: &Inode, f: impl FnOnce(&mut InodeAttr)) -> Result<()> {
        let mut st = inode.st.lock();
        f(&mut st.attr);
        st.attr.ctime = Time::now();
        if st.attr.kind() == Kind::File {
            st.attr_dirty = true;
        } else {
            inode
                .blob
                .set_xattr_ns(XattrNs::Internal, KEY_INODE, &st.attr.encode())?;
        }
        Ok(())
    }

    /// Writes back the data, then queues the inode record if it changed (not committed).
    pub(crate) fn persist_locked(&self, inode: &Inode, st: &mut InodeState) -> Result<()> {
        self.write_back(inode, st)?;
        if st.attr_dirty {
            let size = st.attr.size;
            let record = st.attr.encode();
            match st.tail {
                // Only appends since the last record: the record can vouch for them with a
                // check instead of waiting for a flush of the data first. (Their writes
                // completed in write_back; a cluster they allocated queued an ordered
                // record, which makes this commit the ordered kind anyway.)
                Some((from, crc)) if size > from => {
                    inode.blob.set_xattr_ns_checked(
                        XattrNs::Internal,
                        KEY_INODE,
                        &record,
                        &[(from, size - from, crc)],
                    )?;
                    st.unconfirmed = Some((from, size, u64::MAX));
                }
                _ => inode
                    .blob
                    .set_xattr_ns(XattrNs::Internal, KEY_INODE, &record)?,
            }
            st.attr_dirty = false;
            st.tail = self.fresh_tail(size);
        }
        Ok(())
    }

    /// fsync of a file changed only by appends into clusters it already has (a log, a
    /// RocksDB WAL): the data writes and the checked inode record go out together
    /// (`Blobstore::sync_overlapped`), so the fsync waits for one write and one Flush instead
    /// of a write, then another write, then a Flush. Returns `false`, having done nothing,
    /// when the file does not qualify (the caller takes the ordinary path).
    pub(crate) fn fsync_appends_overlapped(
        &self,
        inode: &Inode,
        st: &mut InodeState,
    ) -> Result<bool> {
        let size = st.attr.size;
        let Some((from, crc)) = st.tail else {
            return Ok(false);
        };
        if !st.attr_dirty || size <= from || st.pages.is_empty() {
            return Ok(false);
        }
        let blob_size = inode.blob.size();
        let runs = crate::file::dirty_runs(st, blob_size);
        if runs.is_empty() {
            return Ok(false);
        }
        // Clusters the write-back allocates: their mappings go unordered (checked-mapping
        // mode) and the record vouches for each whole cluster, whose content is exactly the
        // file's dirty pages in it and zeroes (nothing was written there before). So a new
        // file's create+write+fsync takes one Flush, not two.
        let cs = self.store.cluster_size();
        let mut new_clusters: Vec<u64> = Vec::new();
        for (start, idxs) in &runs {
            let a = start * PAGE;
            let b = (a + idxs.len() as u64 * PAGE).min(blob_size);
            for c in a / cs..b.div_ceil(cs) {
                if new_clusters.last() != Some(&c) && !inode.blob.is_mapped(c * cs, 1) {
                    new_clusters.push(c);
                }
            }
        }
        // A clone's new clusters are copies of its parent's, not pages and zeroes: those
        // fsyncs take the ordinary path (appends into clusters it owns still overlap).
        if !new_clusters.is_empty() && inode.blob.parent().is_some() {
            return Ok(false);
        }
        let mut checks = vec![(from, size - from, crc)];
        for &c in &new_clusters {
            checks.push((c * cs, cs, cluster_crc(st, c * cs, cs)));
        }
        self.writable()?;
        let record = st.attr.encode();
        let st_ref: &InodeState = st;
        let res = self.with_channel(|ch| {
            ch.set_checked_mapping(!new_clusters.is_empty());
            let mut submitted = self.submit_runs(ch, inode, st_ref, &runs, blob_size);
            ch.set_checked_mapping(false);
            if submitted.is_ok() && !new_clusters.is_empty() {
                // Allocating writes complete inside the submission; their errors (out of
                // space) must come out here, as errors of this fsync, not in the commit's
                // wait (where any failure turns the store read-only). Mappings of clusters
                // that did get allocated stay queued; without their checks they commit the
                // ordered way.
                submitted = self.reap_writes(ch);
            }
            match submitted {
                Err(e) => {
                    let _ = self.reap_writes(ch);
                    Err(e)
                }
                Ok(()) => self
                    .store
                    .sync_overlapped(
                        || {
                            inode.blob.set_xattr_ns_checked(
                                XattrNs::Internal,
                                KEY_INODE,
                                &record,
                                &checks,
                            )
                        },
                        || self.reap_writes_raw(ch),
                    )
                    .map_err(Error::from),
            }
        });
        res?;
        self.written_back(inode, st, blob_size);
        st.attr_dirty = false;
        st.tail = self.fresh_tail(size);
        // Every byte a check of the group vouches for stays put until a later group is
        // durable: the appended range and the whole of each new cluster.
        let lo = new_clusters.first().map_or(from, |c| from.min(c * cs));
        let hi = new_clusters.last().map_or(size, |c| size.max((c + 1) * cs));
        st.unconfirmed = Some((lo, hi, self.store.groups_committed()));
        Ok(true)
    }

    /// The tail of a file whose last queued record says `size`: nothing appended yet.
    /// `None` on images without data checks, so appends there compute no CRC.
    pub(crate) fn fresh_tail(&self, size: u64) -> Option<(u64, u32)> {
        self.store.supports_data_checks().then_some((size, 0))
    }

    /// Before bytes `[from, to)` of the file change: if a checked record vouching for some
    /// of them may still be in the log's last group, make a later group durable first.
    pub(crate) fn confirm_before_change(
        &self,
        st: &mut InodeState,
        from: u64,
        to: u64,
    ) -> Result<()> {
        let Some((a, b, g)) = st.unconfirmed else {
            return Ok(());
        };
        if to <= a || from >= b {
            return Ok(());
        }
        if g == u64::MAX {
            // The record may still be queued: commit it (this commits whatever else is
            // queued too, as any sync does), then a marker group after it.
            self.store.sync()?;
            self.store.confirm()?;
        } else if self.store.groups_committed() <= g {
            // Only an empty marker group: nothing queued is committed by it.
            self.store.confirm()?;
        }
        st.unconfirmed = None;
        Ok(())
    }

    pub(crate) fn sync_all(&self) -> Result<()> {
        self.writable()?;
        self.retry_orphan_deletes();
        let mut inodes: Vec<Arc<Inode>> = self.inodes.lock().values().cloned().collect();
        // A fixed order: the same work issues the same I/O (the power-cut sweeps replay it).
        inodes.sort_by_key(|i| i.ino);
        // One file failing (out of space) must not keep the others, and the commit that
        // releases freed clusters, from happening.
        let mut first_err = None;
        // Files whose record went as a checked one: their commit is known after the sync.
        let mut checked = Vec::new();
        for inode in inodes {
            let mut st = inode.st.lock();
            if !st.pages.is_empty() || st.attr_dirty {
                if let Err(e) = self.persist_locked(&inode, &mut st) {
                    first_err.get_or_insert(e);
                }
                if matches!(st.unconfirmed, Some((_, _, u64::MAX))) {
                    drop(st);
                    checked.push(inode);
                }
            }
        }
        self.store.sync()?;
        let g = self.store.groups_committed();
        for inode in &checked {
            note_committed(&mut inode.st.lock(), g);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs `f` with an I/O channel from the pool.
    pub(crate) fn with_channel<T>(&self, f: impl FnOnce(&mut IoChannel) -> Result<T>) -> Result<T> {
        let ch = self.channels.lock().pop();
        let mut ch = match ch {
            Some(c) => c,
            None => self.store.channel()?,
        };
        let r = f(&mut ch);
        if ch.in_flight() == 0 {
            self.channels.lock().push(ch);
        }
        r
    }
}

/// `data_crc` of bytes `[at, at + len)` of a file none of whose bytes there are on the
/// device yet: its dirty pages where it has them, zeroes elsewhere.
fn cluster_crc(st: &InodeState, at: u64, len: u64) -> u32 {
    let mut crc = 0u32;
    let mut pos = at;
    for (&idx, page) in st.pages.range(at / PAGE..(at + len).div_ceil(PAGE)) {
        let p = idx * PAGE;
        if p > pos {
            crc = blobstore::data_crc_combine(crc, blobstore::zeros_crc(p - pos), p - pos);
        }
        let n = PAGE.min(at + len - p) as usize;
        crc = blobstore::data_crc_append(crc, &page[..n]);
        pos = p + n as u64;
    }
    if at + len > pos {
        let gap = at + len - pos;
        crc = blobstore::data_crc_combine(crc, blobstore::zeros_crc(gap), gap);
    }
    crc
}

/// After a sync returned with `g` groups committed: a checked record queued before it is in
/// one of them, so once the count grows past `g` a later group exists and the bytes it
/// vouched for may change (see `Inner::confirm_before_change`).
fn note_committed(st: &mut InodeState, g: u64) {
    if let Some((a, b, u64::MAX)) = st.unconfirmed {
        st.unconfirmed = Some((a, b, g));
    }
}

fn sync_loop(weak: Weak<Inner>, syncer: Arc<Syncer>, every: Duration) {
    loop {
        {
            let mut stop = syncer.stop.lock();
            if *stop {
                return;
            }
            syncer.cv.wait_for(&mut stop, every);
            if *stop {
                return;
            }
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        // Errors turn the store read-only and are reported by the next caller.
        let _ = inner.sync_all();
    }
}
