//! The FUSE request handlers: one `blobfs::FileSystem` call per request.

use crate::options::MountOptions;
use crate::threads::{Block, Threads, Turn};
use blobfs::{Attr, FileSystem, Kind, RenameFlags, SetAttr, Time};
use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Largest write the kernel sends in one request (and the read size it asks for).
pub const MAX_WRITE: u32 = 1 << 20;
/// Read-ahead asked of the kernel (it may grant less).
pub const MAX_READAHEAD: u32 = 1 << 20;

/// The outcome of closing the filesystem at the end of a session: `None` while it is still
/// mounted (or was never closed), then `Ok` or the error of `FileSystem::close`.
#[derive(Clone, Debug, Default)]
pub struct CloseStatus(Arc<Mutex<Option<Result<(), String>>>>);

impl CloseStatus {
    /// What the close did, if it happened.
    pub fn get(&self) -> Option<Result<(), String>> {
        self.0.lock().clone()
    }

    fn set(&self, r: Result<(), String>) {
        *self.0.lock() = Some(r);
    }
}

/// A directory listing taken at `opendir`: `readdir` pages through it by index, so
/// entries added or removed meanwhile neither repeat nor vanish from a listing under way.
type Listing = Arc<Vec<(u64, FileType, OsString)>>;

/// BlobFS as a FUSE filesystem.
#[derive(Debug)]
pub struct BlobFuse {
    /// `None` once closed (session end).
    fs: Option<FileSystem>,
    ttl: Duration,
    writeback_cache: bool,
    next_fh: AtomicU64,
    dirs: Mutex<HashMap<u64, Listing>>,
    status: CloseStatus,
    threads: Arc<Threads>,
}

impl BlobFuse {
    /// Whether the kernel is asked for its writeback cache.
    pub fn writeback_cache(&self) -> bool {
        self.writeback_cache
    }

    /// Serves `fs` as `opts` say (cache lifetimes, writeback cache).
    pub fn new(fs: FileSystem, opts: &MountOptions) -> BlobFuse {
        BlobFuse {
            fs: Some(fs),
            ttl: opts.ttl,
            writeback_cache: opts.writeback_cache,
            next_fh: AtomicU64::new(1),
            dirs: Mutex::new(HashMap::new()),
            status: CloseStatus::default(),
            threads: Threads::new(),
        }
    }

    /// The scheduling state of the request threads (off until [`crate::session`] starts
    /// it: then every thread goes back to reading after each request).
    pub(crate) fn threads(&self) -> Arc<Threads> {
        Arc::clone(&self.threads)
    }

    /// A handle on the outcome of the close at the session's end.
    pub fn close_status(&self) -> CloseStatus {
        self.status.clone()
    }

    fn fs(&self) -> Result<&FileSystem, Errno> {
        self.fs.as_ref().ok_or(Errno::EIO)
    }

    /// Runs an operation that may allocate space (blobfs itself retries after a commit
    /// when frees are waiting for one).
    fn alloc<T>(&self, op: impl Fn(&FileSystem) -> blobfs::Result<T>) -> Result<T, Errno> {
        op(self.fs()?).map_err(err)
    }

    /// Hands reading over to another thread before a flush that will write back.
    fn blocking_if_dirty(&self, turn: &Turn<'_>, ino: u64) {
        if self.fs().is_ok_and(|fs| fs.has_dirty_data(ino)) {
            turn.blocking(Block::Long);
        }
    }

    fn fh(&self) -> FileHandle {
        FileHandle(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }

    /// Closes the filesystem once (write back, commit, checkpoint) and records how it went.
    fn close(&mut self) {
        self.dirs.lock().clear();
        if let Some(fs) = self.fs.take() {
            let r = fs.close().map_err(|e| e.to_string());
            if let Err(e) = &r {
                log::error!("closing the filesystem failed: {e}");
            }
            self.status.set(r);
        }
    }

    /// Owner of a new inode in `parent`: the caller, except that a set-group-id directory
    /// passes its group on (and, to subdirectories, its set-group-id bit).
    fn owner(&self, req: &Request, parent: u64, mode: u32, dir: bool) -> (u32, u32, u32) {
        let (uid, mut gid, mut mode) = (req.uid(), req.gid(), mode);
        if let Ok(p) = self.fs().and_then(|fs| fs.getattr(parent).map_err(err)) {
            if p.perm & libc::S_ISGID != 0 {
                gid = p.gid;
                if dir {
                    mode |= libc::S_ISGID;
                }
            }
        }
        (uid, gid, mode)
    }
}

impl Drop for BlobFuse {
    fn drop(&mut self) {
        self.close();
    }
}

fn err(e: blobfs::Error) -> Errno {
    let n = e.errno();
    if matches!(n, libc::EIO | libc::EUCLEAN) {
        log::error!("{e}");
    } else {
        log::debug!("{e}");
    }
    Errno::from_i32(n)
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.to_system(),
        mtime: a.mtime.to_system(),
        ctime: a.ctime.to_system(),
        crtime: a.crtime.to_system(),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::Now => Time::now(),
        TimeOrNow::SpecificTime(s) => Time::from_system(s),
    }
}

fn name(n: &OsStr) -> &[u8] {
    n.as_bytes()
}

const GEN: Generation = Generation(0);

impl BlobFuse {
    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &file_attr(&a), GEN),
            Err(e) => reply.error(e),
        }
    }

    fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
        if size == 0 {
            match u32::try_from(data.len()) {
                Ok(n) => reply.size(n),
                Err(_) => reply.error(Errno::E2BIG),
            }
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(data);
        }
    }
}

impl Filesystem for BlobFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config
            .set_max_write(MAX_WRITE)
            .or_else(|n| config.set_max_write(n));
        let _ = config
            .set_max_readahead(MAX_READAHEAD)
            .or_else(|n| config.set_max_readahead(n));
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Symlinks never change, so their targets may be cached; lookups and readdirs of one
        // directory may run in parallel (the filesystem locks internally).
        for f in [
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
            // We drop set-user-ID/set-group-ID bits and file capabilities on write, truncate
            // and chown ourselves (`Fs::remove_privs`). In return the kernel marks the
            // superblock SB_NOSEC and stops asking GETXATTR security.capability before every
            // write(2): without this, each write costs two round trips to the server.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            let _ = config.add_capabilities(f);
        }
        if self.writeback_cache {
            if let Err(e) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
                log::warn!("the kernel offers no writeback cache ({e:?})");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.close();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let _turn = self.threads.enter();
        let r = self
            .fs()
            .and_then(|fs| fs.lookup(parent.0, name(n)).map_err(err));
        self.entry(reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        let _turn = self.threads.enter();
        // The kernel forgot the inode entirely: drop it from the cache if nothing uses it.
        if let Ok(fs) = self.fs() {
            fs.forget(ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _turn = self.threads.enter();
        match self.fs().and_then(|fs| fs.getattr(ino.0).map_err(err)) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let turn = self.threads.enter();
        if size.is_some() {
            turn.blocking(Block::Long);
        }
        // HANDLE_KILLPRIV_V2: the kernel leaves dropping privileges to us. fuser does not pass
        // FATTR_KILL_SUIDGID on, so do what the kernel asks for: on chown always, on a size
        // change unless the caller is root (a stand-in for CAP_FSETID).
        if uid.is_some() || gid.is_some() || size.is_some() {
            let kill = uid.is_some() || gid.is_some() || req.uid() != 0;
            if let Err(e) = self
                .fs()
                .and_then(|fs| fs.remove_privs(ino.0, kill).map_err(err))
            {
                reply.error(e);
                return;
            }
        }
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            ctime: ctime.map(Time::from_system),
        };
        match self.alloc(|fs| fs.setattr(ino.0, set)) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _turn = self.threads.enter();
        match self.fs().and_then(|fs| fs.readlink(ino.0).map_err(err)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.threads.enter();
        let (uid, gid, mode) = self.owner(req, parent.0, mode & !umask, false);
        let r = self.alloc(|fs| fs.mknod(parent.0, name(n), mode, uid, gid, rdev));
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.threads.enter();
        let (uid, gid, mode) = self.owner(req, parent.0, mode & !umask, true);
        let r = self.alloc(|fs| fs.mkdir(parent.0, name(n), mode, uid, gid));
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let _turn = self.threads.enter();
        let r = self
            .fs()
            .and_then(|fs| fs.unlink(parent.0, name(n)).map_err(err));
        Self::empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let _turn = self.threads.enter();
        let r = self
            .fs()
            .and_then(|fs| fs.rmdir(parent.0, name(n)).map_err(err));
        Self::empty(reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _turn = self.threads.enter();
        let (uid, gid, _) = self.owner(req, parent.0, 0, false);
        let r = self.alloc(|fs| {
            fs.symlink(
                parent.0,
                name(link_name),
                target.as_os_str().as_bytes(),
                uid,
                gid,
            )
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _turn = self.threads.enter();
        let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
        if !known.contains(flags) || flags == known {
            // RENAME_WHITEOUT (overlayfs) is not supported; NOREPLACE|EXCHANGE is invalid.
            return reply.error(Errno::EINVAL);
        }
        let f = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        let r = self.fs().and_then(|fs| {
            fs.rename(parent.0, name(n), newparent.0, name(newname), f)
                .map_err(err)
        });
        Self::empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _turn = self.threads.enter();
        let r = self.alloc(|fs| fs.link(ino.0, newparent.0, name(newname)));
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.threads.enter();
        match self.fs().and_then(|fs| fs.open_file(ino.0).map_err(err)) {
            Ok(()) => reply.opened(self.fh(), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let turn = self.threads.enter();
        let mut before_io = || turn.blocking(Block::Short);
        match self.fs().and_then(|fs| {
            fs.read_with(ino.0, offset, size as usize, &mut before_io)
                .map_err(err)
        }) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let turn = self.threads.enter();
        // HANDLE_KILLPRIV_V2: the kernel sets KILL_SUIDGID when the writer lacks CAP_FSETID.
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        if let Err(e) = self
            .fs()
            .and_then(|fs| fs.remove_privs(ino.0, kill).map_err(err))
        {
            reply.error(e);
            return;
        }
        // Write-back can take a while: always let another thread read meanwhile.
        let mut before_io = || turn.blocking(Block::Long);
        match self.fs().and_then(|fs| {
            fs.write_with(ino.0, offset, data, &mut before_io)
                .map_err(err)
        }) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let turn = self.threads.enter();
        // close(2): write back now so that write errors reach the caller.
        self.blocking_if_dirty(&turn, ino.0);
        let r = self.alloc(|fs| fs.flush(ino.0));
        Self::empty(reply, r);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let turn = self.threads.enter();
        // Write back before the handle goes, so that a lack of space can still be retried.
        self.blocking_if_dirty(&turn, ino.0);
        let _ = self.alloc(|fs| fs.flush(ino.0));
        let r = self.fs().and_then(|fs| fs.release_file(ino.0).map_err(err));
        Self::empty(reply, r);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let turn = self.threads.enter();
        // A commit and a flush: concurrent fsyncs share them if other threads take them.
        turn.blocking(Block::Long);
        let r = self.alloc(|fs| fs.fsync(ino.0));
        Self::empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.threads.enter();
        let listing = self.fs().and_then(|fs| {
            let entries = fs.readdir(ino.0).map_err(err)?;
            let parent = fs.parent_of(ino.0).map_err(err)?;
            let mut v = Vec::with_capacity(entries.len() + 2);
            v.push((ino.0, FileType::Directory, OsString::from(".")));
            v.push((parent, FileType::Directory, OsString::from("..")));
            v.extend(
                entries
                    .into_iter()
                    .map(|e| (e.ino, file_type(e.kind), OsString::from_vec(e.name))),
            );
            Ok(v)
        });
        match listing {
            Ok(v) => {
                let fh = self.fh();
                self.dirs.lock().insert(fh.0, Arc::new(v));
                reply.opened(fh, FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _turn = self.threads.enter();
        let Some(listing) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, n)) in listing.iter().enumerate().skip(start) {
            // The offset of an entry is where the next readdir resumes.
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, n) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _turn = self.threads.enter();
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let turn = self.threads.enter();
        turn.blocking(Block::Long);
        // Commits every namespace change made so far, this directory's included.
        let r = self.fs().and_then(|fs| fs.fsync(ino.0).map_err(err));
        Self::empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _turn = self.threads.enter();
        match self.fs() {
            Ok(fs) => {
                let s = fs.statfs();
                reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.threads.enter();
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return reply.error(Errno::EINVAL);
        }
        let r = self.alloc(|fs| {
            fs.setxattr(
                ino.0,
                name(n),
                value,
                flags & libc::XATTR_CREATE != 0,
                flags & libc::XATTR_REPLACE != 0,
            )
        });
        Self::empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        let _turn = self.threads.enter();
        match self
            .fs()
            .and_then(|fs| fs.getxattr(ino.0, name(n)).map_err(err))
        {
            Ok(v) => Self::xattr_reply(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _turn = self.threads.enter();
        match self.fs().and_then(|fs| fs.listxattr(ino.0).map_err(err)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                Self::xattr_reply(reply, size, &buf);
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let _turn = self.threads.enter();
        let r = self
            .fs()
            .and_then(|fs| fs.removexattr(ino.0, name(n)).map_err(err));
        Self::empty(reply, r);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _turn = self.threads.enter();
        // Mounted with default_permissions: the kernel has checked already.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _turn = self.threads.enter();
        let (uid, gid, mode) = self.owner(req, parent.0, mode & !umask, false);
        let r = self
            .alloc(|fs| {
                if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
                    fs.create(parent.0, name(n), mode, uid, gid)
                } else {
                    fs.mknod(parent.0, name(n), mode, uid, gid, 0)
                }
            })
            .and_then(|a| {
                self.fs()?.open_file(a.ino).map_err(err)?;
                Ok(a)
            });
        match r {
            Ok(a) => reply.created(
                &self.ttl,
                &file_attr(&a),
                GEN,
                self.fh(),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}
