//! `blobfs ls` and `blobfs stat`: look into a BlobFS image without mounting it.

use crate::offline::{
    components, display_abs, hex, kind_name, local_time, local_time_full, mode_string, rdev_split,
    resolve_existing, rfc3339, Locked,
};
use anyhow::{bail, Result};
use blobfs::{Attr, FileSystem, Ino, Kind};
use blobstore::BlobId;
use serde::Serialize;
use std::collections::HashSet;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Image file or block device holding a BlobFS filesystem.
    #[arg(value_name = "IMAGE")]
    pub path: String,
    /// Path inside the filesystem [default: /].
    #[arg(value_name = "PATH", default_value = "/")]
    pub inner: String,
    /// Long listing: mode, links, owner, group, size, mtime, name (-> symlink target).
    #[arg(short = 'l')]
    pub long: bool,
    /// List subdirectories recursively.
    #[arg(short = 'R')]
    pub recursive: bool,
    /// Also show `.` and `..`.
    #[arg(short = 'a')]
    pub all: bool,
    /// Show inode numbers.
    #[arg(short = 'i')]
    pub inode: bool,
    /// List a directory itself, not its contents.
    #[arg(short = 'd')]
    pub directory: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// Image file or block device holding a BlobFS filesystem.
    #[arg(value_name = "IMAGE")]
    pub path: String,
    /// Path inside the filesystem.
    #[arg(value_name = "PATH")]
    pub inner: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One line of a listing.
struct Line {
    name: Vec<u8>,
    attr: Option<Attr>,
    target: Option<Vec<u8>>,
}

fn kind_char(kind: Kind) -> &'static str {
    match kind {
        Kind::File => "regular file",
        Kind::Dir => "directory",
        Kind::Symlink => "symbolic link",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDev => "character special file",
        Kind::BlockDev => "block special file",
    }
}

fn size_field(a: &Attr) -> String {
    match a.kind {
        Kind::CharDev | Kind::BlockDev => {
            let (ma, mi) = rdev_split(a.rdev);
            format!("{ma}, {mi}")
        }
        _ => a.size.to_string(),
    }
}

/// Prints lines the way `ls -1` / `ls -l` do, columns sized to the widest cell.
fn print_lines(out: &mut dyn Write, lines: &[Line], long: bool, inode: bool) -> Result<()> {
    let cells: Vec<Option<[String; 5]>> = lines
        .iter()
        .map(|l| {
            l.attr.map(|a| {
                [
                    a.ino.to_string(),
                    a.nlink.to_string(),
                    a.uid.to_string(),
                    a.gid.to_string(),
                    size_field(&a),
                ]
            })
        })
        .collect();
    let w = |i: usize| {
        cells
            .iter()
            .flatten()
            .map(|c| c[i].len())
            .max()
            .unwrap_or(1)
    };
    let widths = [w(0), w(1), w(2), w(3), w(4)];
    for (l, c) in lines.iter().zip(&cells) {
        if inode {
            match c {
                Some(c) => write!(out, "{:>w$} ", c[0], w = widths[0])?,
                None => write!(out, "{:>w$} ", "?", w = widths[0])?,
            }
        }
        if long {
            match (&l.attr, c) {
                (Some(a), Some(c)) => write!(
                    out,
                    "{} {:>w1$} {:>w2$} {:>w3$} {:>w4$} {} ",
                    mode_string(a.kind, a.perm),
                    c[1],
                    c[2],
                    c[3],
                    c[4],
                    local_time(a.mtime, "%Y-%m-%d %H:%M"),
                    w1 = widths[1],
                    w2 = widths[2],
                    w3 = widths[3],
                    w4 = widths[4],
                )?,
                _ => write!(out, "?????????? ? ? ? ? ? ")?,
            }
        }
        out.write_all(&l.name)?;
        if long {
            if let Some(t) = &l.target {
                out.write_all(b" -> ")?;
                out.write_all(t)?;
            }
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads what a line needs; a failure is reported and leaves `?`s.
fn line(fs: &FileSystem, name: Vec<u8>, ino: Ino, long: bool, errors: &mut Vec<String>) -> Line {
    let mut l = Line {
        name,
        attr: None,
        target: None,
    };
    match fs.getattr(ino) {
        Ok(a) => {
            if long && a.kind == Kind::Symlink {
                match fs.readlink(ino) {
                    Ok(t) => l.target = Some(t),
                    Err(e) => errors.push(format!(
                        "{}: cannot read the symlink: {e}",
                        String::from_utf8_lossy(&l.name)
                    )),
                }
            }
            l.attr = Some(a);
        }
        Err(e) => errors.push(format!(
            "{}: inode {ino}: {e}",
            String::from_utf8_lossy(&l.name)
        )),
    }
    fs.forget(ino);
    l
}

pub fn ls(args: &LsArgs, out: &mut dyn Write) -> Result<()> {
    let img = Locked::new(&args.path, false)?;
    let name = img.name();
    let fs = img.open_fs(true)?;
    let comps = components(args.inner.as_bytes());
    let attr = resolve_existing(&fs, &name, &comps)?;
    let need_attr = args.long || args.inode;
    let mut errors: Vec<String> = Vec::new();
    if attr.kind != Kind::Dir || args.directory {
        let l = line(
            &fs,
            args.inner.as_bytes().to_vec(),
            attr.ino,
            need_attr,
            &mut errors,
        );
        print_lines(out, &[l], args.long, args.inode)?;
        return finish(&name, errors, out);
    }
    // Directories to list, in order: (path as shown, inode).
    let mut stack: Vec<(Vec<u8>, Ino)> = vec![(display_abs(&comps).into_bytes(), attr.ino)];
    let mut seen: HashSet<Ino> = HashSet::new();
    let mut first = true;
    while let Some((path, ino)) = stack.pop() {
        if args.recursive {
            if !first {
                out.write_all(b"\n")?;
            }
            out.write_all(&path)?;
            out.write_all(b":\n")?;
        }
        first = false;
        if !seen.insert(ino) {
            errors.push(format!(
                "{}: directory inode {ino} reached again (damaged image?)",
                String::from_utf8_lossy(&path)
            ));
            continue;
        }
        let entries = match fs.readdir(ino) {
            Ok(e) => e,
            Err(e) => {
                errors.push(format!(
                    "{}: cannot read the directory: {e}",
                    String::from_utf8_lossy(&path)
                ));
                continue;
            }
        };
        let mut lines = Vec::with_capacity(entries.len() + 2);
        if args.all {
            lines.push(line(&fs, b".".to_vec(), ino, need_attr, &mut errors));
            let parent = fs.parent_of(ino).unwrap_or(ino);
            lines.push(line(&fs, b"..".to_vec(), parent, need_attr, &mut errors));
        }
        let mut subdirs = Vec::new();
        for e in &entries {
            if need_attr {
                lines.push(line(&fs, e.name.clone(), e.ino, true, &mut errors));
            } else {
                lines.push(Line {
                    name: e.name.clone(),
                    attr: None,
                    target: None,
                });
            }
            if args.recursive && e.kind == Kind::Dir {
                let mut p = path.clone();
                if p.last() != Some(&b'/') {
                    p.push(b'/');
                }
                p.extend_from_slice(&e.name);
                subdirs.push((p, e.ino));
            }
        }
        print_lines(out, &lines, args.long, args.inode)?;
        stack.extend(subdirs.into_iter().rev());
        fs.forget(ino);
    }
    finish(&name, errors, out)
}

/// Reports what could not be listed (each on stderr) and fails if anything could not.
fn finish(name: &str, errors: Vec<String>, out: &mut dyn Write) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    out.flush()?;
    for e in &errors {
        eprintln!("blobfs: {name}: {e}");
    }
    bail!("{name}: {} entries could not be listed", errors.len())
}

/// Everything `stat` shows; the JSON form is this struct as is.
#[derive(Debug, Serialize)]
struct StatReport {
    path: String,
    ino: u64,
    kind: &'static str,
    size: u64,
    blocks: u64,
    nlink: u32,
    mode: String,
    mode_string: String,
    uid: u32,
    gid: u32,
    rdev: u32,
    rdev_major: u32,
    rdev_minor: u32,
    atime: String,
    mtime: String,
    ctime: String,
    crtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<u64>,
    xattrs: Vec<XattrOut>,
    blob_clusters: u64,
    blob_allocated_clusters: u64,
}

#[derive(Debug, Serialize)]
struct XattrOut {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    value_hex: String,
}

pub fn stat(args: &StatArgs, out: &mut dyn Write) -> Result<()> {
    let img = Locked::new(&args.path, false)?;
    let name = img.name();
    let fs = img.open_fs(true)?;
    let comps = components(args.inner.as_bytes());
    let a = resolve_existing(&fs, &name, &comps)?;
    let target = if a.kind == Kind::Symlink {
        Some(String::from_utf8_lossy(&fs.readlink(a.ino)?).into_owned())
    } else {
        None
    };
    let parent = if a.kind == Kind::Dir {
        Some(fs.parent_of(a.ino)?)
    } else {
        None
    };
    let mut xattrs = Vec::new();
    for n in fs.listxattr(a.ino)? {
        let v = fs.getxattr(a.ino, &n)?;
        xattrs.push(XattrOut {
            name: String::from_utf8_lossy(&n).into_owned(),
            value: std::str::from_utf8(&v)
                .ok()
                .filter(|s| !s.chars().any(char::is_control))
                .map(str::to_string),
            value_hex: hex(&v),
        });
    }
    let blob = fs.store().open_blob(BlobId(a.ino))?;
    let (ma, mi) = rdev_split(a.rdev);
    let r = StatReport {
        path: display_abs(&comps),
        ino: a.ino,
        kind: kind_name(a.kind),
        size: a.size,
        blocks: a.blocks,
        nlink: a.nlink,
        mode: format!("{:04o}", a.perm),
        mode_string: mode_string(a.kind, a.perm),
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        rdev_major: ma,
        rdev_minor: mi,
        atime: rfc3339(a.atime),
        mtime: rfc3339(a.mtime),
        ctime: rfc3339(a.ctime),
        crtime: rfc3339(a.crtime),
        target,
        parent,
        xattrs,
        blob_clusters: blob.num_clusters(),
        blob_allocated_clusters: blob.allocated_clusters(),
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "  File: {}", r.path)?;
    if let Some(t) = &r.target {
        writeln!(out, "Target: {t}")?;
    }
    writeln!(out, "  Type: {}", kind_char(a.kind))?;
    writeln!(out, " Inode: {} (blob {:#x})", r.ino, r.ino)?;
    writeln!(out, " Links: {}", r.nlink)?;
    writeln!(out, "  Size: {}", r.size)?;
    writeln!(
        out,
        "Blocks: {} (512-byte units; blob of {} clusters, {} allocated)",
        r.blocks, r.blob_clusters, r.blob_allocated_clusters
    )?;
    writeln!(out, "  Mode: {} ({})", r.mode, r.mode_string)?;
    writeln!(out, "   Uid: {}", r.uid)?;
    writeln!(out, "   Gid: {}", r.gid)?;
    if matches!(a.kind, Kind::CharDev | Kind::BlockDev) {
        writeln!(out, "  Rdev: {ma}:{mi}")?;
    }
    if let Some(p) = r.parent {
        writeln!(out, "Parent: {p}")?;
    }
    writeln!(out, "Access: {}", local_time_full(a.atime))?;
    writeln!(out, "Modify: {}", local_time_full(a.mtime))?;
    writeln!(out, "Change: {}", local_time_full(a.ctime))?;
    writeln!(out, " Birth: {}", local_time_full(a.crtime))?;
    for x in &r.xattrs {
        match &x.value {
            Some(v) => writeln!(out, " Xattr: {} = {v:?}", x.name)?,
            None => writeln!(out, " Xattr: {} = 0x{}", x.name, x.value_hex)?,
        }
    }
    Ok(())
}
