//! The process-wide registry of open images, and opening an image.
//!
//! Every RocksDB `FileSystem` object (and every open file) in the process holds a [`Lease`]
//! on the [`Mount`] of its image: one `blobfs::FileSystem` per image, however many DBs
//! and tools use it. The last lease to go writes everything back, commits, checkpoints
//! and closes the image. An exclusive `flock` on the image is held for the mount's life,
//! so a second process cannot open it (and a FUSE mount or a `blobfs` command cannot
//! touch it meanwhile). An `atexit` handler syncs every open mount when the process
//! exits normally: tools such as db_bench never destroy their FileSystem.

use crate::uri::Uri;
use crate::FsError;
use blobfs::{FileSystem, FsOptions, Ino};
use blobstore::format::superblock::SB_SIZE;
use blobstore::recovery;
use driver::uring::{UringDevice, UringOptions};
use driver::Device;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{File, TryLockError};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

/// One open image, shared by everything in the process that uses it.
pub struct Mount {
    pub(crate) fs: FileSystem,
    image: PathBuf,
    /// Paths locked with `lock` (RocksDB's LOCK files).
    pub(crate) locks: Mutex<HashSet<Vec<u8>>>,
    /// Owner of new files and directories: the image file's owner.
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// The exclusive flock on the image, released when the mount is dropped (after close).
    _flock: File,
}

impl fmt::Debug for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mount").field("image", &self.image).finish()
    }
}

impl Mount {
    /// The blobfs filesystem.
    pub fn fs(&self) -> &FileSystem {
        &self.fs
    }

    /// The image's absolute path.
    pub fn image(&self) -> &Path {
        &self.image
    }
}

struct Entry {
    mount: Arc<Mount>,
    users: usize,
}

/// Image path (canonical) -> its mount and the number of leases on it.
static REGISTRY: Mutex<BTreeMap<PathBuf, Entry>> = Mutex::new(BTreeMap::new());
static AT_EXIT: Once = Once::new();

/// A reference to an open image; the last one dropped closes it.
pub struct Lease {
    mount: Arc<Mount>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("image", &self.mount.image)
            .finish()
    }
}

impl std::ops::Deref for Lease {
    type Target = Mount;
    fn deref(&self) -> &Mount {
        &self.mount
    }
}

impl Lease {
    /// Opens the image a `blobfs://` URI names, or shares the mount already open in this
    /// process (whose options then stay in force).
    pub fn open(uri: &str) -> Result<Lease, FsError> {
        let parsed = Uri::parse(uri).map_err(FsError::invalid)?;
        let image = check_image(&parsed.image)?;
        AT_EXIT.call_once(register_at_exit);
        let mut reg = REGISTRY.lock();
        if let Some(e) = reg.get_mut(&image) {
            e.users += 1;
            return Ok(Lease {
                mount: Arc::clone(&e.mount),
            });
        }
        let mut opts = FsOptions {
            // No kernel page cache under us here (unlike FUSE): keep what RocksDB writes
            // readable from memory, as ext4's page cache does.
            cache_written: true,
            ..FsOptions::default()
        };
        if let Some(every) = parsed.sync_interval {
            opts.sync_interval = every;
        }
        let mount = Arc::new(open_image(&image, opts)?);
        reg.insert(
            image,
            Entry {
                mount: Arc::clone(&mount),
                users: 1,
            },
        );
        Ok(Lease { mount })
    }

    /// Another lease on the same mount.
    pub fn share(&self) -> Lease {
        let mut reg = REGISTRY.lock();
        if let Some(e) = reg.get_mut(&self.mount.image) {
            e.users += 1;
        }
        Lease {
            mount: Arc::clone(&self.mount),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Closing under the registry lock: an open of the same image waits for the close
        // (and its flock release) instead of failing on our own lock.
        let mut reg = REGISTRY.lock();
        let last = match reg.get_mut(&self.mount.image) {
            Some(e) => {
                e.users -= 1;
                e.users == 0
            }
            None => false,
        };
        if last {
            reg.remove(&self.mount.image);
            if let Err(e) = self.mount.fs.clone().close() {
                eprintln!("blobfs: closing {} failed: {e}", self.mount.image.display());
            }
        }
    }
}

/// The images open in this process.
pub fn open_images() -> Vec<PathBuf> {
    REGISTRY.lock().keys().cloned().collect()
}

/// Writes back and commits every open image (what the exit handler does).
pub fn sync_all_images() -> Result<(), FsError> {
    let mounts: Vec<Arc<Mount>> = REGISTRY
        .lock()
        .values()
        .map(|e| Arc::clone(&e.mount))
        .collect();
    let mut first = None;
    for m in mounts {
        if let Err(e) = m.fs.sync_all() {
            let e = FsError::new(e.errno(), format!("{}: sync: {e}", m.image.display()));
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

extern "C" fn at_exit() {
    // Never unwind out of an exit handler.
    let r = std::panic::catch_unwind(sync_all_images);
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("blobfs: at exit: {}", e.msg),
        Err(_) => eprintln!("blobfs: at exit: sync panicked"),
    }
}

fn register_at_exit() {
    // SAFETY: atexit only stores the function pointer; `at_exit` is an `extern "C" fn()`
    // that lives as long as the process (this library is never unloaded while images are
    // open: the registry holds them) and does not unwind.
    let rc = unsafe { libc::atexit(at_exit) };
    if rc != 0 {
        eprintln!("blobfs: cannot register the exit handler: unsynced data may be lost at exit");
    }
}

/// Checks that `image` exists and is a regular file or block device; returns its
/// canonical path.
fn check_image(image: &Path) -> Result<PathBuf, FsError> {
    let shown = image.display();
    let meta = match std::fs::metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FsError::new(
                libc::ENOENT,
                format!(
                    "{shown}: no such image file; make a BlobFS image first: \
                     blobfs mkfs {shown} --size 2G"
                ),
            ))
        }
        Err(e) => return Err(FsError::io(format!("{shown}: cannot stat: {e}"), &e)),
    };
    if meta.is_dir() {
        return Err(FsError::new(
            libc::EISDIR,
            format!("{shown}: is a directory, not a BlobFS image file or device"),
        ));
    }
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(FsError::invalid(format!(
            "{shown}: not a regular file or block device"
        )));
    }
    if meta.is_file() && meta.len() < 2 * SB_SIZE as u64 {
        return Err(FsError::invalid(format!(
            "{shown}: not a BlobFS image: the file is {} bytes, too small to hold one \
             (make one with: blobfs mkfs {shown} --size 2G)",
            meta.len()
        )));
    }
    std::fs::canonicalize(image)
        .map_err(|e| FsError::io(format!("{shown}: cannot resolve the path: {e}"), &e))
}

fn open_device(image: &Path, lba: Option<u32>) -> Result<Arc<dyn Device>, FsError> {
    let p = image
        .to_str()
        .ok_or_else(|| FsError::invalid(format!("{}: path is not UTF-8", image.display())))?;
    let dev = UringDevice::open(
        p,
        &UringOptions {
            lba_size: lba,
            read_only: false,
        },
    )
    .map_err(|e| match e {
        driver::Error::BadSpec { reason, .. } => FsError::new(
            libc::EIO,
            format!("{}: cannot open: {reason}", image.display()),
        ),
        other => FsError::new(
            libc::EIO,
            format!("{}: cannot open: {other}", image.display()),
        ),
    })?;
    Ok(Arc::new(dev))
}

/// Opens the BlobFS filesystem on `image` (canonical path) with its exclusive flock, like
/// `blobfs mount`: the LBA size of a regular file is the one the store was made with.
fn open_image(image: &Path, opts: FsOptions) -> Result<Mount, FsError> {
    let shown = image.display();
    let flock = File::open(image)
        .map_err(|e| FsError::io(format!("{shown}: cannot open to lock it: {e}"), &e))?;
    match flock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(FsError::new(
                libc::EBUSY,
                format!(
                    "{shown}: in use by another process (a blobfs mount, a blobfs command, or \
                     another program using RocksDB on it)"
                ),
            ))
        }
        Err(TryLockError::Error(e)) => {
            return Err(FsError::io(format!("{shown}: cannot lock: {e}"), &e))
        }
    }
    let meta = flock
        .metadata()
        .map_err(|e| FsError::io(format!("{shown}: cannot stat: {e}"), &e))?;
    let mut dev = open_device(image, None)?;
    if meta.is_file() {
        let unit = {
            let mut qp = dev.open_qpair(4).map_err(|e| {
                FsError::new(libc::EIO, format!("{shown}: cannot open a queue pair: {e}"))
            })?;
            recovery::read_superblocks(qp.as_mut(), dev.as_ref())
                .ok()
                .map(|pair| pair.active.log_unit)
        };
        if let Some(unit) = unit {
            if unit != dev.geometry().lba_size && (unit == 512 || unit == 4096) {
                drop(dev);
                dev = open_device(image, Some(unit))?;
            }
        }
    }
    let fs = FileSystem::open(dev, opts).map_err(|e| match e {
        blobfs::Error::NotBlobfs(m) => FsError::new(
            libc::EINVAL,
            format!(
                "{shown}: not a BlobFS filesystem ({m}); make one with: blobfs mkfs {shown} \
                 --size 2G (--force to overwrite)"
            ),
        ),
        other => FsError::new(
            other.errno(),
            format!("{shown}: cannot open the BlobFS filesystem: {other}"),
        ),
    })?;
    Ok(Mount {
        fs,
        image: image.to_path_buf(),
        locks: Mutex::new(HashSet::new()),
        uid: meta.uid(),
        gid: meta.gid(),
        _flock: flock,
    })
}

/// An open file: an inode held open (`open_file`/`release_file`) and a lease on its image.
pub struct OpenFile {
    pub(crate) lease: Lease,
    pub(crate) ino: Ino,
    pub(crate) path: String,
    closed: bool,
}

impl fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenFile")
            .field("image", &self.lease.image)
            .field("path", &self.path)
            .field("ino", &self.ino)
            .finish()
    }
}

impl OpenFile {
    pub(crate) fn new(lease: Lease, ino: Ino, path: String) -> OpenFile {
        OpenFile {
            lease,
            ino,
            path,
            closed: false,
        }
    }

    fn err(&self, e: blobfs::Error) -> FsError {
        FsError::new(e.errno(), format!("{}: {e}", self.path))
    }

    /// The inode number.
    pub fn ino(&self) -> Ino {
        self.ino
    }

    /// Reads at `offset` into `buf`; short only at the end of the file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        // One call: blobfs reads are short only at the end of the file.
        self.lease
            .fs
            .read_into(self.ino, offset, buf)
            .map_err(|e| self.err(e))
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let mut done = 0;
        while done < data.len() {
            let n = self
                .lease
                .fs
                .write(self.ino, offset + done as u64, &data[done..])
                .map_err(|e| self.err(e))?;
            if n == 0 {
                return Err(FsError::new(
                    libc::EIO,
                    format!("{}: write made no progress", self.path),
                ));
            }
            done += n;
        }
        Ok(())
    }

    /// Sets the size.
    pub fn truncate(&self, size: u64) -> Result<(), FsError> {
        self.lease
            .fs
            .setattr(
                self.ino,
                blobfs::SetAttr {
                    size: Some(size),
                    ..Default::default()
                },
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Writes the cached data back (not durable until a commit).
    pub fn flush(&self) -> Result<(), FsError> {
        self.lease.fs.flush(self.ino).map_err(|e| self.err(e))
    }

    /// Makes data and size durable.
    pub fn fsync(&self) -> Result<(), FsError> {
        self.lease.fs.fsync(self.ino).map_err(|e| self.err(e))
    }

    /// The current size.
    pub fn size(&self) -> Result<u64, FsError> {
        Ok(self
            .lease
            .fs
            .getattr(self.ino)
            .map_err(|e| self.err(e))?
            .size)
    }

    /// Releases the file (writing its data back).
    pub fn close(mut self) -> Result<(), FsError> {
        self.closed = true;
        self.lease
            .fs
            .release_file(self.ino)
            .map_err(|e| self.err(e))
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.lease.fs.release_file(self.ino);
        }
    }
}
