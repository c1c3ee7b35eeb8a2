//! Path-based operations on a mounted image, as RocksDB's FileSystem needs them.
//!
//! Paths are byte strings, absolute from the BlobFS root; a relative path is taken from
//! the root, empty components and `.` are skipped and `..` goes up (lexically).

use crate::mount::{Lease, Mount, OpenFile};
use crate::FsError;
use blobfs::{Attr, Ino, Kind, RenameFlags, SetAttr, ROOT_INO};

/// How `open` opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Read,
    /// Created if missing, truncated to 0 if it exists.
    Truncate,
    /// Created if missing, size kept.
    Append,
}

/// The normalized components of `path`.
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// `path` normalized, for messages: `/a/b`.
pub fn display(comps: &[&[u8]]) -> String {
    if comps.is_empty() {
        return "/".into();
    }
    let mut s = String::new();
    for c in comps {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    s
}

fn err_at(comps: &[&[u8]], e: blobfs::Error) -> FsError {
    FsError::new(e.errno(), format!("{}: {e}", display(comps)))
}

const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

impl Mount {
    /// Attributes of the inode at `comps`.
    fn walk(&self, comps: &[&[u8]]) -> Result<Attr, FsError> {
        let mut ino = ROOT_INO;
        for (i, c) in comps.iter().enumerate() {
            ino = self
                .fs
                .lookup(ino, c)
                .map_err(|e| err_at(&comps[..=i], e))?
                .ino;
        }
        self.fs.getattr(ino).map_err(|e| err_at(comps, e))
    }

    /// The parent directory of `comps` and the last name (the root has none).
    fn parent<'a>(&self, comps: &[&'a [u8]]) -> Result<(Ino, &'a [u8]), FsError> {
        let Some((name, dir)) = comps.split_last() else {
            return Err(FsError::new(
                libc::EBUSY,
                "/: not allowed on the root directory".into(),
            ));
        };
        let attr = self.walk(dir)?;
        if attr.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("{}: not a directory", display(dir)),
            ));
        }
        Ok((attr.ino, name))
    }

    /// Attributes of `path`.
    pub fn stat(&self, path: &[u8]) -> Result<Attr, FsError> {
        self.walk(&components(path))
    }

    /// The names in directory `path` (no `.` and `..`).
    pub fn children(&self, path: &[u8]) -> Result<Vec<Vec<u8>>, FsError> {
        let comps = components(path);
        let attr = self.walk(&comps)?;
        let entries = self.fs.readdir(attr.ino).map_err(|e| err_at(&comps, e))?;
        Ok(entries.into_iter().map(|e| e.name).collect())
    }

    /// Creates directory `path`; with `parents` also missing parents, and an existing
    /// directory is not an error.
    pub fn mkdir(&self, path: &[u8], parents: bool) -> Result<(), FsError> {
        let comps = components(path);
        if comps.is_empty() {
            return if parents {
                Ok(())
            } else {
                Err(FsError::new(libc::EEXIST, "/: file exists".into()))
            };
        }
        if !parents {
            let (dir, name) = self.parent(&comps)?;
            return self
                .fs
                .mkdir(dir, name, DIR_MODE, self.uid, self.gid)
                .map(|_| ())
                .map_err(|e| err_at(&comps, e));
        }
        let mut ino = ROOT_INO;
        for (i, c) in comps.iter().enumerate() {
            let here = &comps[..=i];
            let attr = match self.fs.lookup(ino, c) {
                Ok(a) => a,
                Err(blobfs::Error::NotFound) => {
                    match self.fs.mkdir(ino, c, DIR_MODE, self.uid, self.gid) {
                        Ok(a) => a,
                        // Made by another thread meanwhile.
                        Err(blobfs::Error::Exists) => {
                            self.fs.lookup(ino, c).map_err(|e| err_at(here, e))?
                        }
                        Err(e) => return Err(err_at(here, e)),
                    }
                }
                Err(e) => return Err(err_at(here, e)),
            };
            if attr.kind != Kind::Dir {
                return Err(FsError::new(
                    if i + 1 == comps.len() {
                        libc::EEXIST
                    } else {
                        libc::ENOTDIR
                    },
                    format!("{}: exists and is not a directory", display(here)),
                ));
            }
            ino = attr.ino;
        }
        Ok(())
    }

    /// Removes the empty directory `path`.
    pub fn rmdir(&self, path: &[u8]) -> Result<(), FsError> {
        let comps = components(path);
        let (dir, name) = self.parent(&comps)?;
        self.fs.rmdir(dir, name).map_err(|e| err_at(&comps, e))
    }

    /// Removes the file `path`.
    pub fn unlink(&self, path: &[u8]) -> Result<(), FsError> {
        let comps = components(path);
        let (dir, name) = self.parent(&comps)?;
        self.fs.unlink(dir, name).map_err(|e| err_at(&comps, e))
    }

    /// Renames `from` to `to`, atomically replacing `to` if it exists.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> Result<(), FsError> {
        let fc = components(from);
        let tc = components(to);
        let (fdir, fname) = self.parent(&fc)?;
        let (tdir, tname) = self.parent(&tc)?;
        self.fs
            .rename(fdir, fname, tdir, tname, RenameFlags::default())
            .map_err(|e| {
                FsError::new(
                    e.errno(),
                    format!("rename {} to {}: {e}", display(&fc), display(&tc)),
                )
            })
    }

    /// Makes every change so far durable: one commit (a directory fsync).
    pub fn sync_dir(&self, path: &[u8]) -> Result<(), FsError> {
        let comps = components(path);
        let attr = self.walk(&comps)?;
        self.fs.fsync(attr.ino).map_err(|e| err_at(&comps, e))
    }

    /// Bytes available for new data.
    pub fn free_space(&self) -> u64 {
        let s = self.fs.statfs();
        s.bavail * u64::from(s.bsize)
    }

    /// Takes the in-process lock on `path`, creating the file if missing.
    pub fn lock(&self, lease: &Lease, path: &[u8]) -> Result<(), FsError> {
        let comps = components(path);
        let key = display(&comps).into_bytes();
        // The file first (RocksDB expects LOCK to exist), then the lock itself.
        open(lease, path, OpenMode::Append)?.close()?;
        let mut locks = self.locks.lock();
        if !locks.insert(key) {
            return Err(FsError::new(
                libc::EWOULDBLOCK,
                format!(
                    "lock hold by current process: {}: the lock is already held (another \
                     DB in this process has it open)",
                    display(&comps)
                ),
            ));
        }
        Ok(())
    }

    /// Releases a lock taken with `lock`.
    pub fn unlock(&self, path: &[u8]) -> Result<(), FsError> {
        let comps = components(path);
        if self.locks.lock().remove(display(&comps).as_bytes()) {
            Ok(())
        } else {
            Err(FsError::new(
                libc::ENOLCK,
                format!("{}: not locked", display(&comps)),
            ))
        }
    }
}

/// Opens (or creates) the file `path` on `lease`'s image.
pub fn open(lease: &Lease, path: &[u8], mode: OpenMode) -> Result<OpenFile, FsError> {
    let comps = components(path);
    let shown = display(&comps);
    let m: &Mount = lease;
    let attr = if mode == OpenMode::Read {
        m.walk(&comps)?
    } else {
        let (dir, name) = m.parent(&comps)?;
        match m.fs.lookup(dir, name) {
            Ok(a) => a,
            Err(blobfs::Error::NotFound) => match m.fs.create(dir, name, FILE_MODE, m.uid, m.gid) {
                Ok(a) => a,
                Err(blobfs::Error::Exists) => {
                    m.fs.lookup(dir, name).map_err(|e| err_at(&comps, e))?
                }
                Err(e) => return Err(err_at(&comps, e)),
            },
            Err(e) => return Err(err_at(&comps, e)),
        }
    };
    match attr.kind {
        Kind::File => {}
        Kind::Dir => {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{shown}: is a directory"),
            ))
        }
        _ => {
            return Err(FsError::new(
                libc::EINVAL,
                format!("{shown}: not a regular file"),
            ))
        }
    }
    m.fs.open_file(attr.ino).map_err(|e| err_at(&comps, e))?;
    let f = OpenFile::new(lease.share(), attr.ino, shown);
    if mode == OpenMode::Truncate && attr.size > 0 {
        m.fs.setattr(
            attr.ino,
            SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )
        .map_err(|e| err_at(&comps, e))?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        let c = components(b"/db//000001.log");
        assert_eq!(c, vec![&b"db"[..], b"000001.log"]);
        assert_eq!(components(b"db/./x/../y"), vec![&b"db"[..], b"y"]);
        assert!(components(b"/").is_empty());
        assert!(components(b"/..").is_empty());
        assert_eq!(display(&components(b"a//b/")), "/a/b");
        assert_eq!(display(&[]), "/");
    }
}
