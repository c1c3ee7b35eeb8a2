//! `blobfs cp`, `blobfs export`, `blobfs import`: files and trees between an unmounted
//! BlobFS image and the host (or a tar stream). The copying itself is in [`crate::tree`].

use crate::device::{PathKind, Target};
use crate::offline::{
    components, display_abs, resolve, resolve_existing, Locked, Progress, Resolved,
};
use crate::tree::{
    image_total, local_total, read_tar, walk_image, walk_local, DestRoot, ImageSink, LocalSink,
    Sink, TarSink, Tracked,
};
use anyhow::{anyhow, bail, Context, Result};
use blobfs::{FileSystem, Ino, Kind, ROOT_INO};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Text for `blobfs cp --help`.
pub const CP_HELP: &str = "\
Operands:
  IMAGE:/PATH names PATH inside the BlobFS filesystem on IMAGE (an image file or a block
  device); anything else is a path on the host. The first `:` after which the part before
  it names an existing file or block device splits IMAGE from PATH. Exactly one side is
  in the image: `blobfs cp LOCAL... IMAGE:/PATH` copies in, `blobfs cp IMAGE:/PATH...
  LOCAL` copies out (several sources must come from the same image).

Semantics (as cp -a, with safer defaults):
  - If DST is an existing directory, each SRC is copied into it under its own name;
    otherwise DST is the new name (one SRC only). SRC ending in `/.` copies the
    directory's contents into DST.
  - Directories need -r. A directory that already exists at the destination is merged
    into; an existing file is only replaced with --force.
  - The parent of DST must exist, unless --mkpath creates it. A DST ending in / names a
    directory to copy into: --mkpath creates it too; without, only a single directory
    SRC may become it (as with cp).
  - Kept: file type, permission bits (with set-id and sticky bits), numeric owner and
    group, atime and mtime (nanoseconds), symlinks (copied as links, never followed), hard
    links between copied files, device nodes and fifos, xattrs (to and from the host:
    user.* only). Runs of zero bytes become holes. Owners are only set on the host when
    running as root. Paths in the image are resolved without following symlinks.
  - `blobfs cp IMAGE:/FILE -` writes one file's data to standard output.

The image is locked (shared when copying out, exclusive when copying in), so a mounted
image is refused. Copying in writes everything back, commits and checkpoints at the end.
A progress bar is drawn on stderr when it is a terminal.";

#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// Files or directories to copy: all on the host, or all IMAGE:/PATH of one image.
    #[arg(value_name = "SRC", required = true)]
    pub sources: Vec<OsString>,
    /// Where to copy to: IMAGE:/PATH or a host path.
    #[arg(value_name = "DST", required = true)]
    pub dest: OsString,
    /// Copy directories and their contents.
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,
    /// Replace existing non-directories at the destination.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Create missing parent directories of DST (and DST if it ends in /).
    #[arg(long)]
    pub mkpath: bool,
    /// List every path copied (on stderr) and a summary.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Image file or block device holding a BlobFS filesystem.
    #[arg(value_name = "IMAGE")]
    pub path: String,
    /// The tree (or file) in the filesystem to export.
    #[arg(value_name = "PATH", default_value = "/")]
    pub inner: String,
    /// A tar file, `-` for standard output, or a directory (an existing one, or a path
    /// ending in /).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: OsString,
    /// Replace an existing tar file, or files in the output directory.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// List every path exported (on stderr) and a summary.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Image file or block device holding a BlobFS filesystem.
    #[arg(value_name = "IMAGE")]
    pub path: String,
    /// A tar file, `-` for standard input, or a directory whose contents are imported.
    #[arg(value_name = "IN")]
    pub input: OsString,
    /// The directory in the filesystem to import into (created if missing).
    #[arg(long = "to", value_name = "PATH", default_value = "/")]
    pub to: String,
    /// Replace existing non-directories.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// List every path imported (on stderr) and a summary.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// A cp operand.
#[derive(Debug)]
enum Loc {
    Image { spec: String, path: Vec<u8> },
    Local(PathBuf),
}

/// Splits `IMAGE:PATH` at the first `:` whose left side names an existing regular file
/// or block device.
fn parse_loc(arg: &OsStr) -> Loc {
    let b = arg.as_bytes();
    for (i, _) in b.iter().enumerate().filter(|(_, &c)| c == b':') {
        let (Some(left), Some(right)) = (b.get(..i), b.get(i + 1..)) else {
            continue;
        };
        let Ok(spec) = std::str::from_utf8(left) else {
            continue;
        };
        if let Ok(t) = Target::parse(spec) {
            let is_image = match &t {
                Target::Path { path, .. } => std::fs::metadata(path).is_ok_and(|m| {
                    m.is_file() || m.file_type().is_block_device() || m.file_type().is_char_device()
                }),
                Target::Pci { .. } => t.path_kind().is_ok_and(|k| k == PathKind::Pci),
                Target::Mem { .. } => false,
            };
            if is_image {
                return Loc::Image {
                    spec: spec.to_string(),
                    path: right.to_vec(),
                };
            }
        }
    }
    Loc::Local(PathBuf::from(arg))
}

/// Whether `p` is the image itself (writing there would destroy it).
fn is_image(img: &Locked, p: &Path) -> bool {
    let Target::Path { path, .. } = &img.target else {
        return false;
    };
    match (std::fs::metadata(path), std::fs::metadata(p)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether a source names "the contents of a directory" (`dir/.` or `.`).
fn contents_only(p: &[u8]) -> bool {
    p == b"." || p.ends_with(b"/.")
}

fn verbose_prefix(on: bool, label: &str) -> Option<String> {
    on.then(|| label.to_string())
}

pub fn cp(args: &CpArgs, out: &mut dyn Write) -> Result<()> {
    let dest = parse_loc(&args.dest);
    let sources: Vec<Loc> = args.sources.iter().map(|s| parse_loc(s)).collect();
    let n_image = sources
        .iter()
        .filter(|s| matches!(s, Loc::Image { .. }))
        .count();
    match dest {
        Loc::Image { spec, path } => {
            if n_image > 0 {
                bail!(
                    "copying inside an image or between images is not supported (copy out, \
                     then in; or mount the image)"
                );
            }
            let srcs = sources
                .into_iter()
                .filter_map(|s| match s {
                    Loc::Local(p) => Some(p),
                    Loc::Image { .. } => None,
                })
                .collect();
            copy_in(args, &spec, &path, srcs)
        }
        Loc::Local(dst) => {
            if n_image == 0 {
                bail!(
                    "no operand is in an image: write IMAGE:/PATH for a path inside the \
                     filesystem on IMAGE (an existing image file or block device)"
                );
            }
            if n_image != sources.len() {
                bail!("the sources must all be in the image (or all on the host)");
            }
            let mut spec0: Option<String> = None;
            let mut paths = Vec::new();
            for s in sources {
                if let Loc::Image { spec, path } = s {
                    if spec0.as_ref().is_some_and(|s0| *s0 != spec) {
                        bail!("the sources must all be in the same image");
                    }
                    spec0 = Some(spec);
                    paths.push(path);
                }
            }
            let spec = spec0.ok_or_else(|| anyhow!("no source"))?;
            copy_out(args, &spec, paths, &dst, out)
        }
    }
}

/// `mkdir -p` in the image; returns the directory.
fn mkdir_p(fs: &FileSystem, image: &str, comps: &[Vec<u8>]) -> Result<Ino> {
    let mut cur = ROOT_INO;
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    for (i, c) in comps.iter().enumerate() {
        let here = || {
            format!(
                "{image}:{}",
                display_abs(comps.get(..=i).unwrap_or_default())
            )
        };
        cur = match fs.lookup(cur, c) {
            Ok(a) if a.kind == Kind::Dir => a.ino,
            Ok(_) => bail!("{}: not a directory", here()),
            Err(blobfs::Error::NotFound) => {
                fs.mkdir(cur, c, 0o755, uid, gid)
                    .with_context(|| format!("{}: cannot create the directory", here()))?
                    .ino
            }
            Err(e) => return Err(anyhow!(e).context(here())),
        };
    }
    Ok(cur)
}

/// Runs `f` on the filesystem opened read-write, then closes it (write back, commit,
/// checkpoint) even if `f` failed, so what was copied is kept; `f`'s error comes first.
fn with_fs_rw(img: &Locked, f: impl FnOnce(&FileSystem) -> Result<()>) -> Result<()> {
    let fs = img.open_fs(false)?;
    let r = f(&fs);
    let closed = fs
        .close()
        .with_context(|| format!("{}: cannot write back and close the filesystem", img.name()));
    r.and(closed)
}

fn copy_in(args: &CpArgs, spec: &str, dst: &[u8], sources: Vec<PathBuf>) -> Result<()> {
    let img = Locked::new(spec, true)?;
    let name = img.name();
    // Check the sources before writing anything.
    let mut metas = Vec::new();
    for s in &sources {
        let m = std::fs::symlink_metadata(s).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!("{}: no such file or directory", s.display()),
            _ => anyhow!(e).context(format!("{}: cannot stat", s.display())),
        })?;
        if m.is_dir() && !args.recursive {
            bail!("{}: is a directory (use -r to copy it)", s.display());
        }
        metas.push(m);
    }
    with_fs_rw(&img, |fs| {
        let comps = components(dst);
        // DST ending in / is a directory to copy into; a single directory source may
        // still become it when it does not exist (as cp does), unless --mkpath makes it.
        let single_dir = sources.len() == 1 && metas.first().is_some_and(|m| m.is_dir());
        let trailing = dst.ends_with(b"/") && !comps.is_empty();
        let want_dir = sources.len() > 1 || (trailing && (args.mkpath || !single_dir));
        if args.mkpath {
            let upto = if want_dir {
                comps.len()
            } else {
                comps.len().saturating_sub(1)
            };
            mkdir_p(fs, &name, comps.get(..upto).unwrap_or_default())?;
        }
        let label = format!("{name}:{}", display_abs(&comps));
        let resolved = resolve(fs, &name, &comps).map_err(|e| {
            if args.mkpath {
                e
            } else {
                anyhow!("{e:#} (--mkpath creates missing directories)")
            }
        })?;
        let dst_dir = match &resolved {
            Resolved::Found { attr, .. } if attr.kind == Kind::Dir => Some(attr.ino),
            _ => None,
        };
        if want_dir && dst_dir.is_none() {
            match resolved {
                Resolved::Found { .. } => bail!("{label}: not a directory"),
                Resolved::Missing { .. } => {
                    bail!("{label}: no such directory (--mkpath creates it)")
                }
            }
        }
        for (src, m) in sources.iter().zip(&metas) {
            let raw = src.as_os_str().as_bytes();
            let (root, root_label) = if contents_only(raw) {
                if !m.is_dir() {
                    bail!("{}: not a directory", src.display());
                }
                let ino = match (&resolved, dst_dir) {
                    (_, Some(d)) => d,
                    (Resolved::Missing { parent, name: n }, None) => {
                        // SAFETY: getuid/getgid cannot fail and touch no memory.
                        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                        fs.mkdir(*parent, n, 0o755, uid, gid)
                            .with_context(|| format!("{label}: cannot create"))?
                            .ino
                    }
                    _ => bail!("{label}: not a directory"),
                };
                (DestRoot::Dir(ino), label.clone())
            } else if let Some(d) = dst_dir {
                let Some(base) = src.file_name() else {
                    bail!(
                        "{}: has no name to copy under; name the destination (or use {}/.)",
                        src.display(),
                        src.display()
                    );
                };
                let base = base.as_bytes().to_vec();
                let l = format!(
                    "{}/{}",
                    label.trim_end_matches('/'),
                    String::from_utf8_lossy(&base)
                );
                (
                    DestRoot::At {
                        parent: d,
                        name: base,
                    },
                    l,
                )
            } else {
                match &resolved {
                    Resolved::Found { parent, .. } => {
                        if m.is_dir() {
                            bail!(
                                "{label}: exists and is not a directory; cannot copy the \
                                 directory {} onto it",
                                src.display()
                            );
                        }
                        let Some(last) = comps.last() else {
                            bail!("{label}: is the root directory");
                        };
                        (
                            DestRoot::At {
                                parent: *parent,
                                name: last.clone(),
                            },
                            label.clone(),
                        )
                    }
                    Resolved::Missing { parent, name: n } => (
                        DestRoot::At {
                            parent: *parent,
                            name: n.clone(),
                        },
                        label.clone(),
                    ),
                }
            };
            let progress = if m.is_dir() {
                let p = Progress::new("cp", None);
                if p.visible() {
                    Progress::new("cp", Some(local_total(src)))
                } else {
                    p
                }
            } else {
                Progress::new("cp", Some(m.len()))
            };
            let mut sink = ImageSink::new(fs, root_label.clone(), root, args.force);
            let mut t = Tracked::new(
                &mut sink,
                progress,
                verbose_prefix(args.verbose, &root_label),
            );
            walk_local(src, &mut t)?;
            t.finish()?;
            if args.verbose {
                let c = t.counts;
                t.progress
                    .suspend(|| eprintln!("blobfs: copied {}", c.summary()));
            }
        }
        Ok(())
    })
}

fn copy_out(
    args: &CpArgs,
    spec: &str,
    sources: Vec<Vec<u8>>,
    dst: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let img = Locked::new(spec, false)?;
    let name = img.name();
    let fs = img.open_fs(true)?;
    if dst.as_os_str() == "-" {
        let [src] = sources.as_slice() else {
            bail!("only one file can be written to standard output");
        };
        let comps = components(src);
        let a = resolve_existing(&fs, &name, &comps)?;
        if a.kind != Kind::File {
            bail!(
                "{name}:{}: not a regular file; only a file's data can go to standard output",
                display_abs(&comps)
            );
        }
        let mut off = 0u64;
        while off < a.size {
            let want = (a.size - off).min(1 << 20) as usize;
            let data = fs
                .read(a.ino, off, want)
                .with_context(|| format!("{name}:{}: cannot read", display_abs(&comps)))?;
            if data.is_empty() {
                break;
            }
            out.write_all(&data)?;
            off += data.len() as u64;
        }
        return Ok(());
    }
    let mut found = Vec::with_capacity(sources.len());
    for src in &sources {
        let comps = components(src);
        let a = resolve_existing(&fs, &name, &comps)?;
        found.push((comps, a));
    }
    let single_dir = matches!(found.as_slice(), [(_, a)] if a.kind == Kind::Dir);
    let trailing = dst.as_os_str().as_bytes().ends_with(b"/");
    let want_dir = sources.len() > 1 || (trailing && (args.mkpath || !single_dir));
    if args.mkpath {
        let dir = if want_dir { Some(dst) } else { dst.parent() };
        if let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
        }
    }
    let dst_is_dir = std::fs::metadata(dst).is_ok_and(|m| m.is_dir());
    if want_dir && !dst_is_dir {
        bail!(
            "{}: not a directory{}",
            dst.display(),
            if dst.exists() {
                ""
            } else {
                " (--mkpath creates it)"
            }
        );
    }
    for (src, (comps, a)) in sources.iter().zip(found) {
        let label = format!("{name}:{}", display_abs(&comps));
        if a.kind == Kind::Dir && !args.recursive {
            bail!("{label}: is a directory (use -r to copy it)");
        }
        let target = if contents_only(src) || (comps.is_empty() && dst_is_dir) {
            if a.kind != Kind::Dir {
                bail!("{label}: not a directory");
            }
            dst.to_path_buf()
        } else if dst_is_dir {
            match comps.last() {
                Some(base) => dst.join(OsStr::from_bytes(base)),
                None => dst.to_path_buf(),
            }
        } else {
            if a.kind == Kind::Dir && dst.symlink_metadata().is_ok() {
                bail!(
                    "{}: exists and is not a directory; cannot copy the directory {label} \
                     onto it",
                    dst.display()
                );
            }
            dst.to_path_buf()
        };
        let progress = if a.kind == Kind::Dir {
            let p = Progress::new("cp", None);
            if p.visible() {
                Progress::new("cp", Some(image_total(&fs, a.ino)))
            } else {
                p
            }
        } else {
            Progress::new("cp", Some(a.size))
        };
        if is_image(&img, &target) {
            bail!("{}: is the image itself", target.display());
        }
        let mut sink = LocalSink::new(target.clone(), args.force);
        {
            let prefix = verbose_prefix(args.verbose, &target.display().to_string());
            let mut t = Tracked::new(&mut sink, progress, prefix);
            walk_image(&fs, &label, a.ino, &mut t)?;
            t.finish()?;
            if args.verbose {
                let c = t.counts;
                t.progress
                    .suspend(|| eprintln!("blobfs: copied {}", c.summary()));
            }
        }
        for n in sink.notes() {
            eprintln!("blobfs: warning: {n}");
        }
    }
    Ok(())
}

/// Whether an output operand means a directory: an existing one, or a path ending in /.
fn is_dir_operand(p: &OsStr) -> bool {
    p.as_bytes().ends_with(b"/") || std::fs::metadata(p).is_ok_and(|m| m.is_dir())
}

pub fn export(args: &ExportArgs, out: &mut dyn Write) -> Result<()> {
    let img = Locked::new(&args.path, false)?;
    let name = img.name();
    let fs = img.open_fs(true)?;
    let comps = components(args.inner.as_bytes());
    let label = format!("{name}:{}", display_abs(&comps));
    let a = resolve_existing(&fs, &name, &comps)?;
    let root_name = comps.last().cloned().unwrap_or_else(|| b"root".to_vec());
    let progress = || {
        let p = Progress::new("export", None);
        if p.visible() {
            Progress::new("export", Some(image_total(&fs, a.ino)))
        } else {
            p
        }
    };
    let verbose = verbose_prefix(args.verbose, &label);
    let o = args.output.as_os_str();
    if o == "-" {
        if std::io::stdout().is_terminal() {
            bail!("refusing to write a tar archive to a terminal (redirect it, or use -o FILE)");
        }
        let mut sink = TarSink::new(BufWriter::with_capacity(1 << 20, out), root_name);
        run_export(
            &fs,
            &label,
            a.ino,
            &mut sink,
            progress(),
            verbose,
            args.verbose,
        )?;
        for n in sink.notes() {
            eprintln!("blobfs: warning: {n}");
        }
        let mut w = sink.into_inner()?;
        w.flush()?;
        return Ok(());
    }
    if is_dir_operand(o) {
        let dir = PathBuf::from(o);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create the directory", dir.display()))?;
        let target = if a.kind == Kind::Dir {
            dir
        } else {
            dir.join(OsStr::from_bytes(&root_name))
        };
        let mut sink = LocalSink::new(target, args.force);
        run_export(
            &fs,
            &label,
            a.ino,
            &mut sink,
            progress(),
            verbose,
            args.verbose,
        )?;
        for n in sink.notes() {
            eprintln!("blobfs: warning: {n}");
        }
        return Ok(());
    }
    // A tar file.
    let path = PathBuf::from(o);
    if is_image(&img, &path) {
        bail!("{}: is the image itself", path.display());
    }
    if path.symlink_metadata().is_ok() && !args.force {
        bail!("{}: exists (--force replaces it)", path.display());
    }
    let f = File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
    let mut sink = TarSink::new(BufWriter::with_capacity(1 << 20, f), root_name);
    let r = run_export(
        &fs,
        &label,
        a.ino,
        &mut sink,
        progress(),
        verbose,
        args.verbose,
    )
    .and_then(|()| {
        for n in sink.notes() {
            eprintln!("blobfs: warning: {n}");
        }
        let w = sink.into_inner()?;
        let f = w
            .into_inner()
            .map_err(|e| anyhow!("{}: cannot write: {}", path.display(), e.error()))?;
        f.sync_all()
            .with_context(|| format!("{}: cannot write", path.display()))
    });
    if r.is_err() {
        // A half-written archive is worse than none.
        let _ = std::fs::remove_file(&path);
    }
    r
}

fn run_export(
    fs: &FileSystem,
    label: &str,
    root: Ino,
    sink: &mut dyn Sink,
    progress: Progress,
    verbose: Option<String>,
    summary: bool,
) -> Result<()> {
    let mut t = Tracked::new(sink, progress, verbose);
    walk_image(fs, label, root, &mut t)?;
    t.finish()?;
    if summary {
        let c = t.counts;
        t.progress
            .suspend(|| eprintln!("blobfs: exported {}", c.summary()));
    }
    Ok(())
}

/// Counts the bytes read from a tar stream for the progress bar.
struct Counting<R: Read> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}

pub fn import(args: &ImportArgs, _out: &mut dyn Write) -> Result<()> {
    let input = args.input.as_os_str();
    enum In {
        Stdin,
        Dir(PathBuf),
        Tar(PathBuf, u64),
    }
    let what = if input == "-" {
        if std::io::stdin().is_terminal() {
            bail!("refusing to read a tar archive from a terminal (redirect it, or give a file)");
        }
        In::Stdin
    } else {
        let p = PathBuf::from(input);
        let m = std::fs::metadata(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!("{}: no such file or directory", p.display()),
            _ => anyhow!(e).context(format!("{}: cannot stat", p.display())),
        })?;
        if m.is_dir() {
            In::Dir(p)
        } else {
            In::Tar(p, m.len())
        }
    };
    let img = Locked::new(&args.path, true)?;
    let name = img.name();
    with_fs_rw(&img, |fs| {
        let comps = components(args.to.as_bytes());
        let label = format!("{name}:{}", display_abs(&comps));
        let ino = match resolve(fs, &name, &comps) {
            Ok(Resolved::Found { attr, .. }) if attr.kind == Kind::Dir => attr.ino,
            Ok(Resolved::Found { .. }) => bail!("{label}: not a directory"),
            _ => mkdir_p(fs, &name, &comps)?,
        };
        let mut sink = ImageSink::new(fs, label.clone(), DestRoot::Dir(ino), args.force);
        let verbose = verbose_prefix(args.verbose, &label);
        let counts = match what {
            In::Dir(dir) => {
                let p = Progress::new("import", None);
                let p = if p.visible() {
                    Progress::new("import", Some(local_total(&dir)))
                } else {
                    p
                };
                let mut t = Tracked::new(&mut sink, p, verbose);
                walk_local(&dir, &mut t)?;
                t.finish()?;
                t.counts
            }
            In::Stdin => {
                let p = Progress::new("import", None);
                let stdin = std::io::stdin();
                let mut r = Counting {
                    inner: BufReader::with_capacity(1 << 20, stdin.lock()),
                    progress: p.clone(),
                };
                let mut t = Tracked::new(&mut sink, p, verbose);
                read_tar(&mut r, &mut t)?;
                t.finish()?;
                t.counts
            }
            In::Tar(path, len) => {
                let f = File::open(&path)
                    .with_context(|| format!("{}: cannot open", path.display()))?;
                let p = Progress::new("import", Some(len));
                let mut r = Counting {
                    inner: BufReader::with_capacity(1 << 20, f),
                    progress: p.clone(),
                };
                let mut t = Tracked::new(&mut sink, p, verbose);
                read_tar(&mut r, &mut t).with_context(|| path.display().to_string())?;
                t.finish()?;
                t.counts
            }
        };
        if args.verbose {
            eprintln!("blobfs: imported {}", counts.summary());
        }
        Ok(())
    })
}
