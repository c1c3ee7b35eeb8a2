//! `blobfs`: tools for BlobFS images and devices.
//!
//! Also answers to `mount.fuse.blobfs` (the helper mount(8) runs for `-t fuse.blobfs` and
//! fstab lines) and `mkfs.blobfs` (`blobfs mkfs`) when started under those names.

mod cp;
mod demo;
mod device;
mod df;
mod dump;
mod fsck;
mod human;
mod info;
mod logger;
mod ls;
mod mkfs;
mod mount;
mod offline;
mod rocksdb_env;
mod snapshot;
mod tree;

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
  /dev/ng0n1           an NVMe namespace's generic char device: NVMe commands through
                       io_uring passthrough (polled with the kernel's nvme.poll_queues)
  pci:0000:00:04.0     namespace 1 of an NVMe controller bound to uio_pci_generic, driven
                       by the userspace driver (root; 2 MiB hugepages for DMA, see
                       tests/vm/pci-bind.sh)
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
    /// Check the store and the filesystem on PATH offline; -y repairs what is safe.
    #[command(
        long_about = "Check the blobstore on PATH and the BlobFS filesystem in it, without \
            mounting: both superblock copies and feature words, the checkpoint and the \
            metadata log (CRCs, sequence, damage that cut committed changes off), clusters \
            owned twice, unknown blob flags, records that do not apply; then the \
            filesystem: dangling or duplicate directory entries, entry types, link counts, \
            directory parents, sizes beyond the allocated space, unreachable inodes, blobs \
            that are not part of the filesystem (leaked clusters), orphan records.\n\n\
            -n (the default) changes nothing. -y repairs what can be repaired without \
            guessing file contents: clusters owned twice are copied so each owner keeps its \
            bytes, dangling entries are removed, counts and parents are set to what the tree \
            says, unreachable inodes go to /lost+found, leaked blobs are deleted; the store \
            is rewritten as a fresh checkpoint. A damaged checkpoint or unknown incompatible \
            features are left alone (the image is not touched).\n\n\
            Exit codes as fsck(8): 0 no errors, 1 errors corrected, 4 errors left \
            uncorrected, 8 operational error. Also installed as fsck.blobfs (-a and -p mean \
            -y there).",
        after_help = PATH_FORMS
    )]
    Fsck(fsck::Args),
    /// Print the metadata of an unmounted image as JSON (superblocks, checkpoint, log,
    /// blobs, directory tree).
    #[command(
        long_about = "Print everything the metadata of an unmounted image says, as JSON: \
            both superblock copies (decoded, which one is in force, why the other is not), \
            the checkpoint and every group of the metadata log with its records (xattr \
            names as strings, or hex; BlobFS inode records and directory entries decoded), \
            the replay figures and where and why the log ends, every blob (flags, clusters, \
            cluster runs, xattrs), and for a BlobFS filesystem the directory tree, orphans \
            and unreachable blobs.\n\n\
            A damaged image is dumped as far as it can be read: what is wrong is listed \
            under \"errors\", and the exit code is 0 whenever the JSON was written. If the \
            log replay fails, the log is read again as fsck does (records that do not apply \
            are skipped), or, without a usable checkpoint, block by block; \
            \"log\".\"complete\" is then false and \"log\".\"read_by\" says how. The \
            image is opened read-only and locked shared: a mounted image is refused."
    )]
    Dump(dump::Args),
    /// Show size, used and available space and inode counts of an unmounted image.
    #[command(
        long_about = "Show the size, used and available space (free space minus what is \
            kept free for the metadata log and the next checkpoint), use% and the number of \
            inodes (blobs) of an unmounted image, like df(1); for BlobFS also the numbers \
            of files, directories, symlinks, other inodes and orphans. Read-only."
    )]
    Df(df::Args),
    /// Snapshot the whole filesystem of an unmounted image (or list or delete snapshots).
    #[command(
        long_about = "Freeze the whole filesystem on an unmounted image as snapshot NAME: \
            the tree as it is now, kept read-only while the live filesystem goes on. It costs \
            metadata only; data is shared until either side changes it (copy-on-write, per \
            cluster). `--list` lists snapshots and clones, `--delete` deletes one (a \
            snapshot that a clone was made from is refused until the clone is deleted). \
            Mount a snapshot with `blobfs mount --snapshot NAME -o ro IMAGE DIR`; make a \
            writable copy with `blobfs clone`."
    )]
    Snapshot(snapshot::Args),
    /// Make a writable clone of a snapshot on an unmounted image.
    #[command(
        long_about = "Make clone NAME of snapshot SNAPSHOT: a writable filesystem that starts \
            as the snapshot and diverges from it (copy-on-write); neither the snapshot nor \
            the live filesystem changes. Mount it with `blobfs mount --snapshot NAME IMAGE \
            DIR`; delete it with `blobfs snapshot --delete IMAGE NAME`."
    )]
    Clone(snapshot::CloneArgs),
    /// List a directory of an unmounted BlobFS image, like ls(1).
    #[command(
        long_about = "List PATH (default /) in the BlobFS filesystem on an unmounted image, \
            like ls(1), one name per line in byte order. -l shows mode, links, owner, \
            group, size, mtime (local time) and name, with `-> target` for symlinks; -R \
            lists subdirectories too. Read-only; exit code 1 if something could not be \
            listed (each problem is reported on stderr)."
    )]
    Ls(ls::LsArgs),
    /// Show every attribute of a path in an unmounted BlobFS image.
    #[command(
        long_about = "Show every inode field of PATH in the BlobFS filesystem on an \
            unmounted image: type, inode (= blob id), links, size, blocks, mode, owner, \
            group, device numbers, parent (directories), symlink target, all four times \
            and xattrs. Read-only."
    )]
    Stat(ls::StatArgs),
    /// Copy files and trees between an unmounted BlobFS image and the host.
    #[command(after_help = cp::CP_HELP)]
    Cp(cp::CpArgs),
    /// Write a tree of an unmounted BlobFS image to a tar archive or a host directory.
    #[command(
        long_about = "Write PATH (default /, the whole filesystem) of the BlobFS \
            filesystem on an unmounted image to OUT: a tar file, `-` for standard output, \
            or a directory (one that exists, or a path ending in /), whose contents become \
            those of PATH.\n\n\
            The archive is GNU tar format with entries named `.`, `a`, `a/b`... (like \
            `tar -C PATH -c .`), and keeps types, permission bits, numeric owners, mtimes \
            (nanoseconds in PAX records), symlinks, hard links (link entries), device \
            nodes, fifos and all xattrs (PAX SCHILY.xattr.* records, as GNU tar \
            --xattrs writes them). Sockets cannot be stored and are left out with a \
            warning. To a directory, the same is kept as `blobfs cp -r` keeps it.\n\n\
            An existing tar file, or existing files in the output directory, are only \
            replaced with --force. A progress bar is drawn on stderr when it is a \
            terminal."
    )]
    Export(cp::ExportArgs),
    /// Read a tar archive or a host directory into an unmounted BlobFS image.
    #[command(
        long_about = "Read IN into the directory --to PATH (default /; created if \
            missing) of the BlobFS filesystem on an unmounted image: IN is a tar file, `-` \
            for standard input, or a host directory whose contents are imported.\n\n\
            From tar: regular files, directories, symlinks, hard links (recreated as hard \
            links), device nodes and fifos, with permission bits, numeric owners, mtimes \
            (PAX nanoseconds when present), and xattrs from PAX SCHILY.xattr.* records. \
            Paths with `..` are refused; parents an archive does not list are created \
            (0755). The root entry `.` sets the attributes of PATH. From a directory: as \
            `blobfs cp -r DIR/. IMAGE:PATH`.\n\n\
            Existing directories are merged into; existing files are only replaced with \
            --force. At the end everything is written back, committed and checkpointed; \
            after an error, what was imported so far is kept. A progress bar is drawn on \
            stderr when it is a terminal."
    )]
    Import(cp::ImportArgs),
    /// Print the LD_PRELOAD line that runs the stock RocksDB tools on a BlobFS image.
    #[command(
        long_about = "Print how to run the stock RocksDB tools (db_bench, ldb, sst_dump) on \
            the BlobFS image IMAGE: the first line is LD_PRELOAD=/abs/path/libblobfs_rocksdb.so \
            (the RocksDB FileSystem on BlobFS, registered for blobfs:// URIs), then example \
            commands with --fs_uri=blobfs://IMAGE as comments.\n\n\
            The library is looked for next to this binary (the same cargo target directory), \
            in ../lib from it, then in /usr/local/lib; `make rocksdb` builds it and `make \
            install` installs it."
    )]
    RocksdbEnv(rocksdb_env::Args),
    /// Benchmark BlobFS against fio, ext4 and RocksDB on ext4, as ratios measured in one run.
    #[command(
        long_about = "Benchmark BlobFS against baselines measured in the same run on \
        the same machine (these machines are noisy: only ratios mean anything): blob I/O on \
        the io_uring backend vs fio on the same file (blobio), blob and file create+sync vs \
        ext4 on a loop device (meta), fio on the FUSE mount vs on ext4 (fuse), db_bench with \
        --fs_uri=blobfs:// vs db_bench on ext4 (rocksdb), and load time after a crash vs log \
        length and device size (recovery). Not run by default: `--only paths --device \
        A,B,...` compares device paths to one NVMe namespace (block device, passthrough, \
        pci:) as ratios against the first; it writes the devices raw, destroying their \
        contents.\n\n\
        Prints `bench: case=NAME ours=X baseline=Y unit=U ratio=R` per case (ratio above 1: \
        BlobFS better; cases with a target say ok or MISS), then a table; writes \
        OUT/results.json, OUT/ratios.svg and the results section of docs/benchmarks.md. \
        Needs root (loop devices, mounts), fio, and db_bench (rocksdb-tools) plus \
        libblobfs_rocksdb.so for the rocksdb group: `make bench` installs and builds them. \
        A full run takes under 20 minutes; --quick about 3."
    )]
    Bench(blobfs_bench::Args),
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
        "fsck.blobfs" => {
            argv.splice(0..1.min(argv.len()), ["blobfs".into(), "fsck".into()]);
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
    if let Command::Fsck(a) = &cli.command {
        // fsck has its own exit codes (fsck(8)).
        let code = fsck::main(a, &mut out);
        let _ = out.flush();
        return code;
    }
    let res = match cli.command {
        Command::Mkfs(a) => mkfs::run(&a, &mut out),
        Command::Info(a) => info::run(&a, &mut out),
        Command::Demo(a) => demo::run(&a, &mut out),
        Command::Mount(a) => mount::run(&a, &mut out),
        Command::Umount(a) => mount::umount(&a, &mut out),
        Command::Dump(a) => dump::run(&a, &mut out),
        Command::Df(a) => df::run(&a, &mut out),
        Command::Snapshot(a) => snapshot::run(&a, &mut out),
        Command::Clone(a) => snapshot::clone(&a, &mut out),
        Command::Ls(a) => ls::ls(&a, &mut out),
        Command::Stat(a) => ls::stat(&a, &mut out),
        Command::Cp(a) => cp::cp(&a, &mut out),
        Command::Export(a) => cp::export(&a, &mut out),
        Command::Import(a) => cp::import(&a, &mut out),
        Command::RocksdbEnv(a) => rocksdb_env::run(&a, &mut out),
        Command::Bench(a) => blobfs_bench::run(&a),
        Command::Fsck(_) => Ok(()),
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
