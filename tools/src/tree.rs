//! Copying whole trees between a BlobFS image, the host's filesystem and tar streams.
//!
//! A *source* walks a tree in pre-order (a directory before its entries, entries in name
//! order) and hands every entry to a *sink* with a path relative to the copy's root (the
//! root itself has the empty path). Sources: a BlobFS tree, a host tree, a tar stream.
//! Sinks: a BlobFS tree, a host tree, a tar stream. `cp`, `export` and `import` pick one of
//! each, so every direction preserves the same things: type, permission bits (with
//! set-id and sticky bits), numeric owner and group, atime and mtime (nanoseconds),
//! symlinks (never followed), hard links (a second name of an inode already copied becomes
//! a link), device nodes and fifos, and xattrs (with the host: `user.*` only).
//!
//! Directory times are set last, deepest first, as tar does, since adding entries changes
//! them.

use crate::offline::{display_rel, rdev_join, rdev_split, type_bits, Progress};
use anyhow::{anyhow, bail, Context, Result};
use blobfs::{FileSystem, Ino, Kind, SetAttr, Time};
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Path components relative to the root of a copy.
pub type Rel = [Vec<u8>];

/// Chunk size for file data.
const CHUNK: usize = 1 << 20;
/// Entries written to an image between two commits (which also let the inode cache go).
const COMMIT_EVERY: usize = 4096;

/// What is kept of an entry besides its type and data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits with set-id and sticky bits (no type bits).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Time,
    pub mtime: Time,
    /// Extended attributes, name and value.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One entry of a tree.
pub enum Node<'a> {
    Dir,
    File {
        size: u64,
        data: &'a mut dyn Read,
    },
    Symlink(&'a [u8]),
    /// Fifo, socket, character or block device; `rdev` as BlobFS stores it.
    Special {
        kind: Kind,
        rdev: u32,
    },
}

impl Node<'_> {
    fn is_dir(&self) -> bool {
        matches!(self, Node::Dir)
    }
}

/// Where the entries of a tree go.
pub trait Sink {
    /// Creates (or, for a directory that exists, merges into) the entry at `rel`.
    fn entry(&mut self, rel: &Rel, node: Node<'_>, meta: &Meta) -> Result<()>;
    /// Makes `rel` another name of the (non-directory) entry copied earlier at `target`.
    fn hard_link(&mut self, rel: &Rel, target: &Rel, meta: &Meta) -> Result<()>;
    /// Sets what had to wait (directory times) and flushes.
    fn finish(&mut self) -> Result<()>;
}

/// Counts of what went through a copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub special: u64,
    pub bytes: u64,
}

impl Counts {
    pub fn summary(&self) -> String {
        format!(
            "{} files ({} bytes), {} directories, {} symlinks, {} hard links, {} special files",
            self.files, self.bytes, self.dirs, self.symlinks, self.hard_links, self.special
        )
    }
}

/// Wraps a sink: counts, progress, and `-v` listing (on stderr) of each path.
pub struct Tracked<'a> {
    pub inner: &'a mut dyn Sink,
    pub progress: Progress,
    pub verbose: Option<String>,
    pub counts: Counts,
}

impl<'a> Tracked<'a> {
    /// `verbose`: a prefix for listed paths (None: no listing).
    pub fn new(inner: &'a mut dyn Sink, progress: Progress, verbose: Option<String>) -> Self {
        Tracked {
            inner,
            progress,
            verbose,
            counts: Counts::default(),
        }
    }

    fn entries(&self) -> u64 {
        let c = &self.counts;
        c.files + c.dirs + c.symlinks + c.hard_links + c.special
    }

    fn list(&self, rel: &Rel, suffix: &str) {
        if let Some(prefix) = &self.verbose {
            let p = display_rel(rel);
            let sep = if p.is_empty() || prefix.ends_with('/') {
                ""
            } else {
                "/"
            };
            self.progress
                .suspend(|| eprintln!("{prefix}{sep}{p}{suffix}"));
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.progress.finish();
    }
}

impl Sink for Tracked<'_> {
    fn entry(&mut self, rel: &Rel, node: Node<'_>, meta: &Meta) -> Result<()> {
        match &node {
            Node::Dir => self.counts.dirs += 1,
            Node::File { size, .. } => {
                self.counts.files += 1;
                self.counts.bytes += size;
            }
            Node::Symlink(_) => self.counts.symlinks += 1,
            Node::Special { .. } => self.counts.special += 1,
        }
        self.list(rel, if node.is_dir() { "/" } else { "" });
        self.progress.entries(self.entries());
        self.inner.entry(rel, node, meta)
    }

    fn hard_link(&mut self, rel: &Rel, target: &Rel, meta: &Meta) -> Result<()> {
        self.counts.hard_links += 1;
        self.list(rel, &format!(" => {}", display_rel(target)));
        self.progress.entries(self.entries());
        self.inner.hard_link(rel, target, meta)
    }

    fn finish(&mut self) -> Result<()> {
        self.inner.finish()
    }
}

fn child(rel: &Rel, name: &[u8]) -> Vec<Vec<u8>> {
    let mut v = rel.to_vec();
    v.push(name.to_vec());
    v
}

/// Reads exactly `size` bytes: stops there, and pads with zeroes if the source ends early
/// (a file that shrank while being copied), noting that it did.
struct Exact<R: Read> {
    inner: R,
    left: u64,
    padded: u64,
    progress: Progress,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, size: u64, progress: Progress) -> Self {
        Exact {
            inner,
            left: size,
            padded: 0,
            progress,
        }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let Some(dst) = buf.get_mut(..want) else {
            return Ok(0);
        };
        let mut n = if self.padded > 0 {
            0
        } else {
            self.inner.read(dst)?
        };
        if n == 0 {
            dst.fill(0);
            n = want;
            self.padded += n as u64;
        }
        self.left -= n as u64;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}

/// Fills `buf` as far as the reader goes; returns the bytes read (short only at the end).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn warn(progress: &Progress, msg: &str) {
    progress.suspend(|| eprintln!("blobfs: warning: {msg}"));
}

// ---------------------------------------------------------------------------------------
// Sources

/// Reads a file of the image from an offset on.
struct FsReader<'a> {
    fs: &'a FileSystem,
    ino: Ino,
    off: u64,
}

impl Read for FsReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let data = self
            .fs
            .read(self.ino, self.off, buf.len().min(CHUNK))
            .map_err(|e| io::Error::other(format!("inode {}: {e}", self.ino)))?;
        let n = data.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), data.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.off += n as u64;
        Ok(n)
    }
}

/// The attributes of an inode of the image as [`Meta`], with its xattrs.
pub fn image_meta(fs: &FileSystem, a: &blobfs::Attr) -> Result<Meta> {
    let mut xattrs = Vec::new();
    for name in fs.listxattr(a.ino)? {
        match fs.getxattr(a.ino, &name) {
            Ok(v) => xattrs.push((name, v)),
            Err(blobfs::Error::NoAttr) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Meta {
        perm: a.perm & 0o7777,
        uid: a.uid,
        gid: a.gid,
        atime: a.atime,
        mtime: a.mtime,
        xattrs,
    })
}

/// Walks the tree at `root` in the image (the whole subtree when it is a directory).
/// `label` names the root in messages (`IMAGE:/path`).
pub fn walk_image(fs: &FileSystem, label: &str, root: Ino, sink: &mut Tracked<'_>) -> Result<()> {
    let mut stack: Vec<(Vec<Vec<u8>>, Ino)> = vec![(Vec::new(), root)];
    let mut links: HashMap<Ino, Vec<Vec<u8>>> = HashMap::new();
    let mut seen_dirs: HashSet<Ino> = HashSet::new();
    while let Some((rel, ino)) = stack.pop() {
        let at = || {
            let r = display_rel(&rel);
            if r.is_empty() {
                label.to_string()
            } else {
                format!("{}/{r}", label.trim_end_matches('/'))
            }
        };
        let a = fs.getattr(ino).with_context(at)?;
        let meta = image_meta(fs, &a).with_context(at)?;
        if a.kind != Kind::Dir && a.nlink > 1 {
            if let Some(first) = links.get(&ino) {
                sink.hard_link(&rel, first, &meta)?;
                continue;
            }
            links.insert(ino, rel.clone());
        }
        match a.kind {
            Kind::File => {
                let reader = BufReader::with_capacity(CHUNK, FsReader { fs, ino, off: 0 });
                let mut data = Exact::new(reader, a.size, sink.progress.clone());
                sink.entry(
                    &rel,
                    Node::File {
                        size: a.size,
                        data: &mut data,
                    },
                    &meta,
                )?;
                if data.padded > 0 {
                    bail!("{}: shorter than its size {}", at(), a.size);
                }
            }
            Kind::Dir => {
                if !seen_dirs.insert(ino) {
                    bail!(
                        "{}: directory inode {ino} reached twice (damaged image?)",
                        at()
                    );
                }
                sink.entry(&rel, Node::Dir, &meta)?;
                let entries = fs.readdir(ino).with_context(at)?;
                for e in entries.into_iter().rev() {
                    stack.push((child(&rel, &e.name), e.ino));
                }
            }
            Kind::Symlink => {
                let target = fs.readlink(ino).with_context(at)?;
                sink.entry(&rel, Node::Symlink(&target), &meta)?;
            }
            kind => sink.entry(&rel, Node::Special { kind, rdev: a.rdev }, &meta)?,
        }
        fs.forget(ino);
    }
    Ok(())
}

/// The bytes of the total data of the image tree at `root` (for a progress bar).
pub fn image_total(fs: &FileSystem, root: Ino) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![root];
    let mut seen = HashSet::new();
    while let Some(ino) = stack.pop() {
        let Ok(a) = fs.getattr(ino) else { continue };
        match a.kind {
            Kind::File => total += a.size,
            Kind::Dir if seen.insert(ino) => {
                if let Ok(es) = fs.readdir(ino) {
                    stack.extend(es.into_iter().map(|e| e.ino));
                }
            }
            _ => {}
        }
    }
    total
}

/// User xattrs of a host path (`user.*` only: the others need privileges or mean
/// something to the host). Filesystems without xattrs give none.
fn local_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(names) = xattr::list(path) else {
        return out;
    };
    for name in names {
        if !name.as_bytes().starts_with(b"user.") {
            continue;
        }
        if let Ok(Some(v)) = xattr::get(path, &name) {
            out.push((name.as_bytes().to_vec(), v));
        }
    }
    out.sort();
    out
}

fn local_meta(path: &Path, m: &std::fs::Metadata) -> Meta {
    let t = |sec: i64, nsec: i64| Time {
        sec,
        nsec: u32::try_from(nsec).unwrap_or(0).min(999_999_999),
    };
    Meta {
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        atime: t(m.atime(), m.atime_nsec()),
        mtime: t(m.mtime(), m.mtime_nsec()),
        xattrs: if m.file_type().is_symlink() {
            Vec::new()
        } else {
            local_xattrs(path)
        },
    }
}

fn host_rdev(rdev: u64) -> u32 {
    rdev_join(libc::major(rdev), libc::minor(rdev))
}

/// Walks the host tree at `root` (without following symlinks).
pub fn walk_local(root: &Path, sink: &mut Tracked<'_>) -> Result<()> {
    let mut stack: Vec<(Vec<Vec<u8>>, PathBuf)> = vec![(Vec::new(), root.to_path_buf())];
    let mut links: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    while let Some((rel, path)) = stack.pop() {
        let m = std::fs::symlink_metadata(&path)
            .with_context(|| format!("{}: cannot stat", path.display()))?;
        let meta = local_meta(&path, &m);
        let ft = m.file_type();
        if !ft.is_dir() && m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = links.get(&key) {
                sink.hard_link(&rel, first, &meta)?;
                continue;
            }
            links.insert(key, rel.clone());
        }
        if ft.is_file() {
            let f =
                File::open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
            let reader = BufReader::with_capacity(CHUNK, f);
            let mut data = Exact::new(reader, m.len(), sink.progress.clone());
            sink.entry(
                &rel,
                Node::File {
                    size: m.len(),
                    data: &mut data,
                },
                &meta,
            )
            .with_context(|| format!("copying {}", path.display()))?;
            if data.padded > 0 {
                warn(
                    &sink.progress,
                    &format!(
                        "{}: file shrank by {} bytes while being copied; padded with zeroes",
                        path.display(),
                        data.padded
                    ),
                );
            }
        } else if ft.is_dir() {
            sink.entry(&rel, Node::Dir, &meta)?;
            let mut names: Vec<Vec<u8>> = std::fs::read_dir(&path)
                .with_context(|| format!("{}: cannot read the directory", path.display()))?
                .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                .collect::<io::Result<_>>()
                .with_context(|| format!("{}: cannot read the directory", path.display()))?;
            names.sort();
            for name in names.into_iter().rev() {
                let p = path.join(OsStr::from_bytes(&name));
                stack.push((child(&rel, &name), p));
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .with_context(|| format!("{}: cannot read the symlink", path.display()))?;
            sink.entry(&rel, Node::Symlink(target.as_os_str().as_bytes()), &meta)?;
        } else {
            let kind = if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else if ft.is_char_device() {
                Kind::CharDev
            } else {
                Kind::BlockDev
            };
            sink.entry(
                &rel,
                Node::Special {
                    kind,
                    rdev: host_rdev(m.rdev()),
                },
                &meta,
            )?;
        }
    }
    Ok(())
}

/// The bytes of data of the host tree at `root` (for a progress bar).
pub fn local_total(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_file() {
            total += m.len();
        } else if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// The path of a tar entry relative to the archive's root: leading `/` and `./` go,
/// `..` is refused (it would write outside the destination).
pub fn archive_rel(path: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => bail!(
                "archive entry {:?}: a path with `..` is refused",
                String::from_utf8_lossy(path)
            ),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// A PAX time (`SEC[.FRACTION]`, possibly negative).
fn parse_pax_time(v: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    Some(if !neg {
        Time { sec, nsec }
    } else if nsec == 0 {
        Time { sec: -sec, nsec: 0 }
    } else {
        Time {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}

fn pax_time(t: Time) -> String {
    if t.sec < 0 && t.nsec > 0 {
        format!("-{}.{:09}", -(t.sec + 1), 1_000_000_000 - t.nsec)
    } else {
        format!("{}.{:09}", t.sec, t.nsec)
    }
}

const XATTR_PAX: &str = "SCHILY.xattr.";

/// Reads a tar stream: regular files, directories, symlinks, hard links, device nodes and
/// fifos, with PAX mtime/atime (nanoseconds), uid/gid and `SCHILY.xattr.*` records.
pub fn read_tar(r: &mut dyn Read, sink: &mut Tracked<'_>) -> Result<()> {
    let mut ar = tar::Archive::new(r);
    let entries = ar.entries().context("cannot read the archive")?;
    for e in entries {
        let mut e = e.context("cannot read the archive")?;
        let path = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&path).into_owned();
        let rel = archive_rel(&path)?;
        let h = e.header().clone();
        let ty = h.entry_type();
        if ty.is_pax_global_extensions()
            || ty.is_pax_local_extensions()
            || ty.is_gnu_longname()
            || ty.is_gnu_longlink()
        {
            continue;
        }
        let bad = |what: &str| anyhow!("archive entry {name:?}: bad {what}");
        let mtime = Time {
            sec: i64::try_from(h.mtime().map_err(|_| bad("mtime"))?).map_err(|_| bad("mtime"))?,
            nsec: 0,
        };
        let mut meta = Meta {
            perm: h.mode().map_err(|_| bad("mode"))? & 0o7777,
            uid: u32::try_from(h.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?,
            gid: u32::try_from(h.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?,
            atime: mtime,
            mtime,
            xattrs: Vec::new(),
        };
        let mut atime = None;
        if let Some(exts) = e
            .pax_extensions()
            .with_context(|| format!("archive entry {name:?}: bad PAX records"))?
        {
            for ext in exts {
                let ext = ext.with_context(|| format!("archive entry {name:?}: bad PAX record"))?;
                let v = ext.value_bytes();
                match ext.key_bytes() {
                    b"mtime" => {
                        meta.mtime = parse_pax_time(v).ok_or_else(|| bad("PAX mtime"))?;
                    }
                    b"atime" => atime = Some(parse_pax_time(v).ok_or_else(|| bad("PAX atime"))?),
                    b"uid" | b"gid" => {
                        let id = std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse::<u32>().ok())
                            .ok_or_else(|| bad("PAX uid/gid"))?;
                        if ext.key_bytes() == b"uid" {
                            meta.uid = id;
                        } else {
                            meta.gid = id;
                        }
                    }
                    k => {
                        if let Some(x) = k.strip_prefix(XATTR_PAX.as_bytes()) {
                            meta.xattrs.push((x.to_vec(), v.to_vec()));
                        }
                    }
                }
            }
        }
        meta.atime = atime.unwrap_or(meta.mtime);
        let link = e.link_name_bytes().map(|l| l.into_owned());
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = e.size();
                let mut data = Exact::new(&mut e, size, Progress::hidden());
                sink.entry(
                    &rel,
                    Node::File {
                        size,
                        data: &mut data,
                    },
                    &meta,
                )
                .with_context(|| format!("archive entry {name:?}"))?;
                if data.padded > 0 {
                    bail!("archive entry {name:?}: the archive ends inside its data");
                }
            }
            tar::EntryType::Directory => sink
                .entry(&rel, Node::Dir, &meta)
                .with_context(|| format!("archive entry {name:?}"))?,
            tar::EntryType::Symlink => {
                let target = link.ok_or_else(|| bad("symlink target"))?;
                sink.entry(&rel, Node::Symlink(&target), &meta)
                    .with_context(|| format!("archive entry {name:?}"))?;
            }
            tar::EntryType::Link => {
                let target = link.ok_or_else(|| bad("link target"))?;
                let target = archive_rel(&target)?;
                sink.hard_link(&rel, &target, &meta)
                    .with_context(|| format!("archive entry {name:?}"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let kind = match ty {
                    tar::EntryType::Char => Kind::CharDev,
                    tar::EntryType::Block => Kind::BlockDev,
                    _ => Kind::Fifo,
                };
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                sink.entry(
                    &rel,
                    Node::Special {
                        kind,
                        rdev: rdev_join(major, minor),
                    },
                    &meta,
                )
                .with_context(|| format!("archive entry {name:?}"))?;
            }
            other => warn(
                &sink.progress,
                &format!("archive entry {name:?}: skipped (entry type {other:?} is not supported)"),
            ),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sinks

/// Where the root of a copy goes in the image.
#[derive(Clone, Debug)]
pub enum DestRoot {
    /// The entry `name` in directory `parent` (created, or merged into / replaced).
    At { parent: Ino, name: Vec<u8> },
    /// An existing directory whose contents are merged with the source's (the root entry
    /// of the source must be a directory; its attributes are applied).
    Dir(Ino),
}

/// Writes a tree into a BlobFS filesystem.
pub struct ImageSink<'a> {
    fs: &'a FileSystem,
    /// How the destination root is named in messages (`IMAGE:/path`).
    label: String,
    root: DestRoot,
    force: bool,
    /// Directories entered, by relative path.
    dirs: HashMap<Vec<Vec<u8>>, Ino>,
    /// Directory times to set at the end.
    deferred: Vec<(Ino, Meta)>,
    touched: Vec<Ino>,
    buf: Vec<u8>,
}

impl<'a> ImageSink<'a> {
    pub fn new(fs: &'a FileSystem, label: String, root: DestRoot, force: bool) -> Self {
        let mut dirs = HashMap::new();
        if let DestRoot::Dir(ino) = root {
            dirs.insert(Vec::new(), ino);
        }
        ImageSink {
            fs,
            label,
            root,
            force,
            dirs,
            deferred: Vec::new(),
            touched: Vec::new(),
            buf: vec![0u8; CHUNK],
        }
    }

    fn at(&self, rel: &Rel) -> String {
        let r = display_rel(rel);
        if r.is_empty() {
            self.label.clone()
        } else {
            format!("{}/{r}", self.label.trim_end_matches('/'))
        }
    }

    /// The directory that holds `rel` (created with default attributes if missing, as
    /// tar does for archives that do not list a parent).
    fn parent_dir(&mut self, rel: &Rel) -> Result<Ino> {
        let n = rel.len().saturating_sub(1);
        if let Some(&ino) = self.dirs.get(rel.get(..n).unwrap_or_default()) {
            return Ok(ino);
        }
        for i in 0..=n {
            let prefix = rel.get(..i).unwrap_or_default().to_vec();
            if self.dirs.contains_key(&prefix) {
                continue;
            }
            let (parent, name) = match (i, &self.root) {
                (0, DestRoot::At { parent, name }) => (*parent, name.clone()),
                (0, DestRoot::Dir(ino)) => {
                    self.dirs.insert(prefix, *ino);
                    continue;
                }
                _ => {
                    let up = prefix.get(..i - 1).unwrap_or_default();
                    let parent = *self
                        .dirs
                        .get(up)
                        .ok_or_else(|| anyhow!("{}: parent not created", self.at(&prefix)))?;
                    (parent, prefix.last().cloned().unwrap_or_default())
                }
            };
            let ino = match self.fs.lookup(parent, &name) {
                Ok(a) if a.kind == Kind::Dir => a.ino,
                Ok(_) => bail!("{}: not a directory", self.at(&prefix)),
                Err(blobfs::Error::NotFound) => {
                    // SAFETY: getuid/getgid cannot fail and touch no memory.
                    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                    self.fs
                        .mkdir(parent, &name, 0o755, uid, gid)
                        .with_context(|| format!("{}: cannot create", self.at(&prefix)))?
                        .ino
                }
                Err(e) => return Err(anyhow!(e).context(self.at(&prefix))),
            };
            self.dirs.insert(prefix, ino);
        }
        self.dirs
            .get(rel.get(..n).unwrap_or_default())
            .copied()
            .ok_or_else(|| anyhow!("{}: parent not created", self.at(rel)))
    }

    /// Parent and name of `rel` in the image.
    fn place(&mut self, rel: &Rel) -> Result<(Ino, Vec<u8>)> {
        match rel.last() {
            Some(name) => Ok((self.parent_dir(rel)?, name.clone())),
            None => match &self.root {
                DestRoot::At { parent, name } => Ok((*parent, name.clone())),
                DestRoot::Dir(_) => bail!(
                    "{}: is a directory; only a directory can be copied onto it",
                    self.label
                ),
            },
        }
    }

    /// Clears the way for a new non-directory (or directory, `dir`) at `parent/name`.
    /// Returns the existing directory's inode when a directory merges into it.
    fn make_room(&self, rel: &Rel, parent: Ino, name: &[u8], dir: bool) -> Result<Option<Ino>> {
        match self.fs.lookup(parent, name) {
            Ok(a) if a.kind == Kind::Dir && dir => Ok(Some(a.ino)),
            Ok(a) if a.kind == Kind::Dir => bail!(
                "{}: is a directory; it cannot be replaced by a non-directory",
                self.at(rel)
            ),
            Ok(_) if !self.force => bail!("{}: exists (--force replaces it)", self.at(rel)),
            Ok(_) => {
                self.fs
                    .unlink(parent, name)
                    .with_context(|| format!("{}: cannot remove", self.at(rel)))?;
                Ok(None)
            }
            Err(blobfs::Error::NotFound) => Ok(None),
            Err(e) => Err(anyhow!(e).context(self.at(rel))),
        }
    }

    fn set_xattrs(&self, rel: &Rel, ino: Ino, meta: &Meta) -> Result<()> {
        for (k, v) in &meta.xattrs {
            self.fs.setxattr(ino, k, v, false, false).with_context(|| {
                format!(
                    "{}: cannot set xattr {}",
                    self.at(rel),
                    String::from_utf8_lossy(k)
                )
            })?;
        }
        Ok(())
    }

    fn set_times(&self, ino: Ino, meta: &Meta) -> Result<()> {
        self.fs.setattr(
            ino,
            SetAttr {
                atime: Some(meta.atime),
                mtime: Some(meta.mtime),
                ..SetAttr::default()
            },
        )?;
        Ok(())
    }

    /// Commits now and then, so that the inode cache does not grow with the tree.
    fn touched(&mut self, ino: Ino) -> Result<()> {
        self.touched.push(ino);
        if self.touched.len() >= COMMIT_EVERY {
            self.fs.sync_all().context("cannot commit")?;
            for ino in self.touched.drain(..) {
                self.fs.forget(ino);
            }
        }
        Ok(())
    }
}

impl Sink for ImageSink<'_> {
    fn entry(&mut self, rel: &Rel, node: Node<'_>, meta: &Meta) -> Result<()> {
        if rel.is_empty() {
            if let DestRoot::Dir(ino) = self.root {
                if !node.is_dir() {
                    bail!(
                        "{}: is a directory; only a directory can be copied onto it",
                        self.label
                    );
                }
                self.merge_dir(rel, ino, meta)?;
                return Ok(());
            }
        }
        let (parent, name) = self.place(rel)?;
        let fs = self.fs;
        let at = self.at(rel);
        if let Some(ino) = self.make_room(rel, parent, &name, node.is_dir())? {
            self.dirs.insert(rel.to_vec(), ino);
            return self.merge_dir(rel, ino, meta);
        }
        let ino = match node {
            Node::Dir => {
                let a = fs
                    .mkdir(parent, &name, meta.perm, meta.uid, meta.gid)
                    .with_context(|| format!("{at}: cannot create the directory"))?;
                self.dirs.insert(rel.to_vec(), a.ino);
                self.set_xattrs(rel, a.ino, meta)?;
                self.deferred.push((a.ino, meta.clone()));
                return Ok(());
            }
            Node::File { size: _, data } => {
                let a = fs
                    .create(parent, &name, meta.perm, meta.uid, meta.gid)
                    .with_context(|| format!("{at}: cannot create"))?;
                let mut off = 0u64;
                let mut end = 0u64;
                loop {
                    let n = read_full(data, &mut self.buf)?;
                    if n == 0 {
                        break;
                    }
                    let chunk = self.buf.get(..n).unwrap_or_default();
                    // Runs of zeroes stay holes (thin blobs allocate on write).
                    if chunk.iter().any(|&b| b != 0) {
                        fs.write(a.ino, off, chunk)
                            .with_context(|| format!("{at}: cannot write"))?;
                        end = off + n as u64;
                    }
                    off += n as u64;
                }
                if off > end {
                    fs.setattr(
                        a.ino,
                        SetAttr {
                            size: Some(off),
                            ..SetAttr::default()
                        },
                    )
                    .with_context(|| format!("{at}: cannot set the size"))?;
                }
                a.ino
            }
            Node::Symlink(target) => {
                fs.symlink(parent, &name, target, meta.uid, meta.gid)
                    .with_context(|| format!("{at}: cannot create the symlink"))?
                    .ino
            }
            Node::Special { kind, rdev } => {
                fs.mknod(
                    parent,
                    &name,
                    type_bits(kind) | meta.perm,
                    meta.uid,
                    meta.gid,
                    rdev,
                )
                .with_context(|| format!("{at}: cannot create"))?
                .ino
            }
        };
        self.set_xattrs(rel, ino, meta)?;
        self.set_times(ino, meta)
            .with_context(|| format!("{at}: cannot set the times"))?;
        self.touched(ino)
    }

    fn hard_link(&mut self, rel: &Rel, target: &Rel, _meta: &Meta) -> Result<()> {
        let at = self.at(rel);
        let Some(tname) = target.last() else {
            bail!("{at}: cannot be a hard link to the root of the copy");
        };
        let tparent = self.parent_dir(target)?;
        let t = self
            .fs
            .lookup(tparent, tname)
            .map_err(|e| anyhow!("{at}: hard link to {}: {e}", self.at(target)))?;
        if t.kind == Kind::Dir {
            bail!("{at}: hard link to a directory ({})", self.at(target));
        }
        let (parent, name) = self.place(rel)?;
        if let Ok(a) = self.fs.lookup(parent, &name) {
            if a.ino == t.ino {
                return Ok(());
            }
        }
        self.make_room(rel, parent, &name, false)?;
        self.fs
            .link(t.ino, parent, &name)
            .with_context(|| format!("{at}: cannot link to {}", self.at(target)))?;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        while let Some((ino, meta)) = self.deferred.pop() {
            self.set_times(ino, &meta)
                .with_context(|| format!("{}: cannot set directory times", self.label))?;
        }
        self.fs.sync_all().context("cannot commit")?;
        for ino in self.touched.drain(..) {
            self.fs.forget(ino);
        }
        Ok(())
    }
}

impl ImageSink<'_> {
    /// Applies a source directory's attributes to an existing directory.
    fn merge_dir(&mut self, rel: &Rel, ino: Ino, meta: &Meta) -> Result<()> {
        self.fs
            .setattr(
                ino,
                SetAttr {
                    mode: Some(meta.perm),
                    uid: Some(meta.uid),
                    gid: Some(meta.gid),
                    ..SetAttr::default()
                },
            )
            .with_context(|| format!("{}: cannot set attributes", self.at(rel)))?;
        self.set_xattrs(rel, ino, meta)?;
        self.deferred.push((ino, meta.clone()));
        Ok(())
    }
}

/// Writes a tree into the host's filesystem.
pub struct LocalSink {
    root: PathBuf,
    force: bool,
    deferred: Vec<(PathBuf, Meta)>,
    buf: Vec<u8>,
    is_root: bool,
    warned_xattrs: bool,
    notes: Vec<String>,
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{}: path contains a NUL byte", p.display()))
}

fn timespec(t: Time) -> libc::timespec {
    libc::timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec),
    }
}

impl LocalSink {
    pub fn new(root: PathBuf, force: bool) -> Self {
        LocalSink {
            root,
            force,
            deferred: Vec::new(),
            buf: vec![0u8; CHUNK],
            // SAFETY: geteuid cannot fail and touches no memory.
            is_root: unsafe { libc::geteuid() } == 0,
            warned_xattrs: false,
            notes: Vec::new(),
        }
    }

    fn path(&self, rel: &Rel) -> PathBuf {
        let mut p = self.root.clone();
        for c in rel {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    /// Owner, permissions (not for symlinks) and times of `p`, in that order (a chown
    /// clears set-id bits).
    fn apply(&self, p: &Path, meta: &Meta, symlink: bool) -> Result<()> {
        let c = cpath(p)?;
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let r = unsafe { libc::lchown(c.as_ptr(), meta.uid, meta.gid) };
        if r != 0 && self.is_root {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("{}: cannot set the owner", p.display()));
        }
        if !symlink {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(meta.perm))
                .with_context(|| format!("{}: cannot set permissions", p.display()))?;
        }
        let ts = [timespec(meta.atime), timespec(meta.mtime)];
        // SAFETY: `c` is a valid path and `ts` two timespecs, as utimensat wants.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("{}: cannot set times", p.display()));
        }
        Ok(())
    }

    fn set_xattrs(&mut self, p: &Path, meta: &Meta) {
        for (k, v) in &meta.xattrs {
            if !k.starts_with(b"user.") {
                continue;
            }
            if let Err(e) = xattr::set(p, OsStr::from_bytes(k), v) {
                if !self.warned_xattrs {
                    self.warned_xattrs = true;
                    self.notes.push(format!(
                        "{}: cannot set xattr {} ({e}); xattrs may be missing",
                        p.display(),
                        String::from_utf8_lossy(k)
                    ));
                }
            }
        }
    }

    /// Clears the way for a new entry; returns true when an existing directory is merged.
    fn make_room(&self, p: &Path, dir: bool) -> Result<bool> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() && dir => Ok(true),
            Ok(m) if m.is_dir() => bail!(
                "{}: is a directory; it cannot be replaced by a non-directory",
                p.display()
            ),
            Ok(_) if !self.force => bail!("{}: exists (--force replaces it)", p.display()),
            Ok(_) => {
                std::fs::remove_file(p)
                    .with_context(|| format!("{}: cannot remove", p.display()))?;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("{}: cannot stat", p.display())),
        }
    }

    /// Warnings gathered (xattrs the host filesystem refused).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl Sink for LocalSink {
    fn entry(&mut self, rel: &Rel, node: Node<'_>, meta: &Meta) -> Result<()> {
        let p = self.path(rel);
        if self.make_room(&p, node.is_dir())? {
            self.set_xattrs(&p, meta);
            self.deferred.push((p, meta.clone()));
            return Ok(());
        }
        match node {
            Node::Dir => {
                std::fs::create_dir(&p)
                    .with_context(|| format!("{}: cannot create the directory", p.display()))?;
                self.set_xattrs(&p, meta);
                self.deferred.push((p, meta.clone()));
                return Ok(());
            }
            Node::File { size: _, data } => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&p)
                    .with_context(|| format!("{}: cannot create", p.display()))?;
                let mut len = 0u64;
                loop {
                    let n = read_full(data, &mut self.buf)?;
                    if n == 0 {
                        break;
                    }
                    let chunk = self.buf.get(..n).unwrap_or_default();
                    if chunk.iter().all(|&b| b == 0) {
                        f.seek(SeekFrom::Current(n as i64))?;
                    } else {
                        f.write_all(chunk)
                            .with_context(|| format!("{}: cannot write", p.display()))?;
                    }
                    len += n as u64;
                }
                f.set_len(len)
                    .with_context(|| format!("{}: cannot set the length", p.display()))?;
                // SAFETY: fchown on a descriptor we own.
                let r = unsafe { libc::fchown(f.as_raw_fd(), meta.uid, meta.gid) };
                if r != 0 && self.is_root {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("{}: cannot set the owner", p.display()));
                }
                drop(f);
                self.set_xattrs(&p, meta);
                self.apply(&p, meta, false)?;
            }
            Node::Symlink(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p)
                    .with_context(|| format!("{}: cannot create the symlink", p.display()))?;
                self.apply(&p, meta, true)?;
            }
            Node::Special { kind, rdev } => {
                let c = cpath(&p)?;
                let (major, minor) = rdev_split(rdev);
                let dev = libc::makedev(major, minor);
                // SAFETY: `c` is a valid NUL-terminated path.
                let r = unsafe { libc::mknod(c.as_ptr(), type_bits(kind) | meta.perm, dev) };
                if r != 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("{}: cannot create", p.display()));
                }
                self.apply(&p, meta, false)?;
            }
        }
        Ok(())
    }

    fn hard_link(&mut self, rel: &Rel, target: &Rel, _meta: &Meta) -> Result<()> {
        let p = self.path(rel);
        let t = self.path(target);
        if let (Ok(a), Ok(b)) = (std::fs::symlink_metadata(&p), std::fs::symlink_metadata(&t)) {
            if a.dev() == b.dev() && a.ino() == b.ino() {
                return Ok(());
            }
        }
        self.make_room(&p, false)?;
        std::fs::hard_link(&t, &p)
            .with_context(|| format!("{}: cannot link to {}", p.display(), t.display()))?;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        while let Some((p, meta)) = self.deferred.pop() {
            self.apply(&p, &meta, false)?;
        }
        Ok(())
    }
}

/// Writes a tree as a tar stream (GNU format, with PAX records for nanosecond mtimes,
/// exact symlink targets and `SCHILY.xattr.*`).
pub struct TarSink<W: Write> {
    b: tar::Builder<W>,
    /// The name of the root entry when it is not a directory.
    root_name: Vec<u8>,
    notes: Vec<String>,
}

type Pax = Vec<(String, Vec<u8>)>;

impl<W: Write> TarSink<W> {
    pub fn new(w: W, root_name: Vec<u8>) -> Self {
        let mut b = tar::Builder::new(w);
        b.mode(tar::HeaderMode::Complete);
        TarSink {
            b,
            root_name,
            notes: Vec::new(),
        }
    }

    fn name(&self, rel: &Rel, dir: bool) -> PathBuf {
        if rel.is_empty() {
            return if dir {
                PathBuf::from(".")
            } else {
                PathBuf::from(OsStr::from_bytes(&self.root_name))
            };
        }
        PathBuf::from(OsStr::from_bytes(&rel.join(&b'/')))
    }

    /// A header with the entry's attributes, and the PAX records it needs.
    fn header(&mut self, meta: &Meta, ty: tar::EntryType) -> (tar::Header, Pax) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(meta.perm);
        h.set_uid(u64::from(meta.uid));
        h.set_gid(u64::from(meta.gid));
        h.set_mtime(u64::try_from(meta.mtime.sec).unwrap_or(0));
        h.set_size(0);
        let mut pax: Pax = Vec::new();
        if meta.mtime.nsec != 0 || meta.mtime.sec < 0 {
            pax.push(("mtime".into(), pax_time(meta.mtime).into_bytes()));
        }
        for (k, v) in &meta.xattrs {
            match std::str::from_utf8(k) {
                Ok(k) => pax.push((format!("{XATTR_PAX}{k}"), v.clone())),
                Err(_) => self.notes.push(format!(
                    "xattr {:?}: the name is not UTF-8; left out of the archive",
                    String::from_utf8_lossy(k)
                )),
            }
        }
        (h, pax)
    }

    fn pax(&mut self, pax: &Pax) -> Result<()> {
        if !pax.is_empty() {
            self.b
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .context("cannot write the archive")?;
        }
        Ok(())
    }

    /// Warnings gathered (xattrs that could not be stored, sockets left out).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Finishes the archive and returns the writer.
    pub fn into_inner(self) -> Result<W> {
        self.b.into_inner().context("cannot finish the archive")
    }
}

/// How `Path` components would spell `target` (what the tar crate stores).
fn normalized_link(target: &[u8]) -> Vec<u8> {
    let p = Path::new(OsStr::from_bytes(target));
    let mut out: Vec<u8> = Vec::new();
    for (i, c) in p.components().enumerate() {
        let b = c.as_os_str().as_bytes();
        if i > 0 && out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(b);
    }
    out
}

impl<W: Write> Sink for TarSink<W> {
    fn entry(&mut self, rel: &Rel, node: Node<'_>, meta: &Meta) -> Result<()> {
        let name = self.name(rel, node.is_dir());
        let what = || format!("{}: cannot write the archive", name.display());
        match node {
            Node::Dir => {
                let (mut h, pax) = self.header(meta, tar::EntryType::Directory);
                self.pax(&pax)?;
                self.b
                    .append_data(&mut h, &name, io::empty())
                    .with_context(what)?;
            }
            Node::File { size, data } => {
                let (mut h, pax) = self.header(meta, tar::EntryType::Regular);
                h.set_size(size);
                self.pax(&pax)?;
                self.b.append_data(&mut h, &name, data).with_context(what)?;
            }
            Node::Symlink(target) => {
                let (mut h, mut pax) = self.header(meta, tar::EntryType::Symlink);
                // The tar crate stores the target as a cleaned-up path ("a/" as "a");
                // a PAX linkpath keeps it exact.
                if normalized_link(target) != target {
                    pax.push(("linkpath".into(), target.to_vec()));
                }
                self.pax(&pax)?;
                let t = normalized_link(target);
                let t = if t.is_empty() { target.to_vec() } else { t };
                self.b
                    .append_link(&mut h, &name, Path::new(OsStr::from_bytes(&t)))
                    .with_context(what)?;
            }
            Node::Special { kind, rdev } => {
                let ty = match kind {
                    Kind::CharDev => tar::EntryType::Char,
                    Kind::BlockDev => tar::EntryType::Block,
                    Kind::Fifo => tar::EntryType::Fifo,
                    _ => {
                        self.notes.push(format!(
                            "{}: a socket cannot be stored in a tar archive; left out",
                            name.display()
                        ));
                        return Ok(());
                    }
                };
                let (mut h, pax) = self.header(meta, ty);
                let (major, minor) = rdev_split(rdev);
                h.set_device_major(major).with_context(what)?;
                h.set_device_minor(minor).with_context(what)?;
                self.pax(&pax)?;
                self.b
                    .append_data(&mut h, &name, io::empty())
                    .with_context(what)?;
            }
        }
        Ok(())
    }

    fn hard_link(&mut self, rel: &Rel, target: &Rel, meta: &Meta) -> Result<()> {
        let name = self.name(rel, false);
        let tname = self.name(target, false);
        let (mut h, _) = self.header(meta, tar::EntryType::Link);
        self.b
            .append_link(&mut h, &name, &tname)
            .with_context(|| format!("{}: cannot write the archive", name.display()))
    }

    fn finish(&mut self) -> Result<()> {
        self.b.finish().context("cannot finish the archive")?;
        self.b.get_mut().flush().context("cannot write the archive")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths() {
        assert_eq!(
            archive_rel(b"./a/b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            archive_rel(b"/abs//x").unwrap(),
            vec![b"abs".to_vec(), b"x".to_vec()]
        );
        assert!(archive_rel(b".").unwrap().is_empty());
        assert!(archive_rel(b"./").unwrap().is_empty());
        assert!(archive_rel(b"a/../../etc/passwd").is_err());
        assert!(archive_rel(b"..").is_err());
    }

    #[test]
    fn pax_times() {
        for t in [
            Time { sec: 0, nsec: 0 },
            Time {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Time { sec: -1, nsec: 1 },
            Time {
                sec: -5,
                nsec: 999_999_999,
            },
            Time { sec: -7, nsec: 0 },
        ] {
            assert_eq!(parse_pax_time(pax_time(t).as_bytes()), Some(t), "{t:?}");
        }
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(Time {
                sec: 12,
                nsec: 500_000_000
            })
        );
        assert_eq!(parse_pax_time(b"12"), Some(Time { sec: 12, nsec: 0 }));
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(Time {
                sec: -2,
                nsec: 750_000_000
            })
        );
        for bad in [&b""[..], b"x", b"1.2x", b"1e5", b"--1"] {
            assert_eq!(parse_pax_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn link_targets() {
        assert_eq!(normalized_link(b"a/b"), b"a/b");
        assert_eq!(normalized_link(b"/etc/x"), b"/etc/x");
        assert_eq!(normalized_link(b"a//b/./c/"), b"a/b/c");
        assert_eq!(normalized_link(b"../x"), b"../x");
    }
}
