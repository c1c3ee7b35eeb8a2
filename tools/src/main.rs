//! `blobfs`: tools for BlobFS images and devices.
//!
//! Also answers to `mount.fuse.blobfs` (the helper mount(8) runs for `-t fuse.blobfs` and
//! fstab lines) and `mkfs.blobfs` (`blobfs mkfs`) when started under those names.

mod demo;
mod device;
mod human;
mod info;
mod logger;
mod mkfs;
mod mount;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Text shared by every command's help: the PATH forms.
const PATH_FORMS: &str = "\
PATH forms:
  ./blobfs.img         an image file (regular file), opened with O_DIRECT through io_uring
  /dev/nvme0n1         a block device (its logical block size is the LBA size)
  file:PATH            the same as PATH, spelled out
  mem:SIZE             a new in-memory device of SIZE bytes (e.g. mem:64M), empty every time:
                       for experiments only, nothing is kept after the command ends
  Any form may end in ?lba=512 or ?lba=4096 to choose the LBA size of a regular file
  (default 4096; for an existing store the size it was made with is found automatically).
Sizes take binary suffixes: 4096, 64K, 1M, 10G (K = 1024).";

#[derive(Debug, Parser)]
#[command(
    name = "blobfs",
    version,
    about = "Tools for BlobFS: format a device or image, mount it with FUSE, inspect it, try it out",
    long_about = "Tools for BlobFS.\n\n\
        BlobFS is a filesystem on a blobstore: a blobstore keeps blobs (ordered lists of \
        clusters, with xattrs) on a raw device or an image file, its metadata a checksummed \
        log that starts with a checkpoint; every file and directory is a blob. These \
        commands format a device (mkfs), mount it with FUSE (mount, umount), show what a \
        store holds (info) and walk through the blob API on a store (demo).\n\n\
        Errors are reported on one line on stderr, with exit code 1.",
    after_help = PATH_FORMS,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Format PATH as a new, empty BlobFS filesystem (or a bare blobstore).
    #[command(
        long_about = "Format PATH as a new, empty BlobFS filesystem (a blobstore holding an \
            empty root directory), then print a summary (size, cluster size, cluster count, \
            uuid). With --blobstore-only, make a bare blobstore without a filesystem.\n\n\
            If PATH is a regular file that does not exist, it is created with --size bytes \
            (sparse). If it exists and --size is given, its length is set to --size first. \
            A block device is used whole; --size does not apply to it.\n\n\
            mkfs refuses to overwrite a device or file that already holds a blobstore (or \
            what looks like a damaged one) unless --force is given.",
        after_help = PATH_FORMS
    )]
    Mkfs(mkfs::Args),
    /// Show the superblock and usage of the blobstore on PATH (read-only).
    #[command(
        long_about = "Show the superblock and usage of the blobstore on PATH: uuid, \
            generation, cluster and LBA size, clusters total/used/free/reserved, blob count, \
            metadata log (segments, bytes, epoch), checkpoint count and what the log replay \
            at open found.\n\n\
            PATH is opened read-only: nothing is written, not even a recovery. With --json \
            the same figures are printed as one JSON object.",
        after_help = PATH_FORMS
    )]
    Info(info::Args),
    /// Walk through the blob API on the existing blobstore on PATH, printing each step.
    #[command(
        long_about = "Walk through the blob API on the existing blobstore on PATH, printing \
            each step: open the store, create a thin blob, write a recognisable pattern to \
            a few of its clusters (leaving one as a hole), set xattrs, sync, close and reopen \
            the store (replaying the metadata log), read everything back and verify it, list \
            the blobs with their sizes and xattrs, and show the store's figures before and \
            after.\n\n\
            The demo blob is deleted at the end, so the store is left as it was found (apart \
            from the metadata log and blob ids, which only move forward) and the demo can be \
            run again and again. For mem:SIZE the in-memory device is formatted first.",
        after_help = PATH_FORMS
    )]
    Demo(demo::Args),
    /// Mount the BlobFS filesystem on PATH at MOUNTPOINT with FUSE.
    #[command(
        long_about = "Mount the BlobFS filesystem on PATH at MOUNTPOINT with FUSE (as root \
            with mount(2), otherwise through fusermount3).\n\n\
            In the foreground (the default) the command serves the mount until it is \
            unmounted: by Ctrl-C, SIGTERM or SIGHUP (a busy mount is detached lazily and \
            closed when its last user lets go), by `blobfs umount`, or by umount(8). Then it \
            writes everything back, commits, writes a checkpoint, and exits 0.\n\n\
            With --background it returns once the mount is up, leaving a server process \
            (its own session, output discarded); errors before that are reported as usual.",
        after_help = format!("{}\n\n{PATH_FORMS}", mount::MOUNT_OPTIONS_HELP)
    )]
    Mount(mount::Args),
    /// Unmount a BlobFS mount and wait until its server has closed the filesystem.
    #[command(
        long_about = "Unmount the BlobFS filesystem mounted at MOUNTPOINT (umount(2) as \
            root, fusermount3 -u otherwise), then wait until the server has written \
            everything back and closed the store, so the image can be used at once.\n\n\
            A busy mount (open files, a working directory inside) is refused unless --lazy \
            is given; then it is detached at once and closed when the last user lets go."
    )]
    Umount(mount::UmountArgs),
}

/// The name this program was started under (its argv[0] without directories).
fn program_name(argv: &[OsString]) -> String {
    argv.first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    logger::init();
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    match program_name(&argv).as_str() {
        "mount.fuse.blobfs" | "mount.blobfs" => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let res = mount::helper(argv.get(1..).unwrap_or(&[]), &mut out);
            return finish(res.and_then(|()| out.flush().map_err(anyhow::Error::from)));
        }
        "mkfs.blobfs" => {
            argv.splice(0..1.min(argv.len()), ["blobfs".into(), "mkfs".into()]);
        }
        _ => {}
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors.
            let failed = e.use_stderr();
            let _ = e.print();
            return if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let res = match cli.command {
        Command::Mkfs(a) => mkfs::run(&a, &mut out),
        Command::Info(a) => info::run(&a, &mut out),
        Command::Demo(a) => demo::run(&a, &mut out),
        Command::Mount(a) => mount::run(&a, &mut out),
        Command::Umount(a) => mount::umount(&a, &mut out),
    }
    .and_then(|()| out.flush().map_err(anyhow::Error::from));
    finish(res)
}

fn finish(res: anyhow::Result<()>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`blobfs info | head -1`): nothing more to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blobfs: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let kind = c
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}
