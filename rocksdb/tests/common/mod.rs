//! Shared fixtures: the built preload library and `blobfs` CLI, images, running the stock
//! RocksDB tools with the library preloaded.
//!
//! Where the library comes from: cargo builds this package's cdylib in the same run as
//! its tests, as `target/<profile>/deps/libblobfs_rocksdb.so` (it is copied up to
//! `target/<profile>/libblobfs_rocksdb.so` only by `cargo build`). The test binary lives
//! in `target/<profile>/deps/`, so the library is found next to it; the newer of the two
//! places wins. The `blobfs` CLI (for mkfs, fsck, ls) is `target/<profile>/blobfs`, which
//! a workspace test run builds (blobfs-tools' own tests need it); if it is missing (only
//! this package's tests were asked for) it is built once with `cargo build -p
//! blobfs-tools`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// `target/<profile>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .to_path_buf()
}

/// The preload library built with these tests.
pub fn preload_lib() -> PathBuf {
    let dir = profile_dir();
    let candidates = [
        dir.join("deps/libblobfs_rocksdb.so"),
        dir.join("libblobfs_rocksdb.so"),
    ];
    let newest = candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p.clone());
    newest.unwrap_or_else(|| {
        panic!(
            "libblobfs_rocksdb.so not found in {} or its deps/ (cargo builds it with this \
             package's tests; or run: cargo build -p blobfs-rocksdb)",
            dir.display()
        )
    })
}

/// The `blobfs` CLI of this build (built if missing).
pub fn blobfs_cli() -> &'static Path {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        let dir = profile_dir();
        let bin = dir.join("blobfs");
        if bin.exists() {
            return bin;
        }
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let target_dir = dir.parent().expect("target dir");
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "blobfs-tools",
            "--bin",
            "blobfs",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let st = cmd.status().expect("run cargo build -p blobfs-tools");
        assert!(st.success(), "cargo build -p blobfs-tools failed");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs the `blobfs` CLI.
pub fn blobfs(args: &[&str]) -> Output {
    Command::new(blobfs_cli())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run blobfs")
}

/// Runs the `blobfs` CLI; asserts success; returns stdout.
pub fn blobfs_ok(args: &[&str]) -> String {
    let o = blobfs(args);
    assert!(
        o.status.success(),
        "blobfs {args:?}: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// A temporary directory with a fresh BlobFS image `db.img` (1 GiB, sparse).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_size("1G")
    }

    /// A fresh image of `size` (`blobfs mkfs --size`, e.g. "2G"; sparse).
    pub fn with_size(size: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("db.img");
        blobfs_ok(&["mkfs", image.to_str().expect("utf-8"), "--size", size]);
        Fixture { dir, image }
    }

    pub fn image_str(&self) -> &str {
        self.image.to_str().expect("utf-8 path")
    }

    pub fn uri(&self) -> String {
        format!("blobfs://{}", self.image_str())
    }

    /// A DB path for the `rocksdb` crate's API: `DIR/NAME` under this fixture's temporary
    /// directory. rocksdb 0.20.1's `DB::open*` runs `std::fs::create_dir_all(path)` on the
    /// host before RocksDB sees the path (src/db.rs), so every DB path also appears on the
    /// host as an empty directory; under the temporary directory it goes away with it. In
    /// the image the DB lives at the same absolute path.
    pub fn db_path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("utf-8 path")
            .to_string()
    }

    /// `blobfs fsck -n` must say clean (exit 0).
    pub fn assert_fsck_clean(&self) {
        let o = blobfs(&["fsck", "-n", self.image_str()]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "fsck -n {}: {:?}\n{}\n{}",
            self.image.display(),
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
    }

    /// Names in a directory of the image (`blobfs ls`).
    pub fn ls(&self, path: &str) -> Vec<String> {
        blobfs_ok(&["ls", self.image_str(), path])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Whether the stock RocksDB tools are installed (rocksdb-tools).
pub fn require_tools() {
    for t in ["db_bench", "ldb", "sst_dump"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{t} not found in PATH: these tests need Debian's rocksdb-tools (make deps)"
        );
    }
}

/// Runs one of the stock tools with the library preloaded.
pub fn tool(name: &str, args: &[String], cwd: &Path) -> Output {
    Command::new(name)
        .args(args)
        .env("LD_PRELOAD", preload_lib())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

/// Describes a finished tool run for assertion messages.
pub fn show(name: &str, o: &Output) -> String {
    format!(
        "{name}: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        tail(&text(&o.stdout)),
        tail(&text(&o.stderr))
    )
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(40);
    lines[from..].join("\n")
}

/// The line the factory prints when it opened the image.
pub fn factory_line(image: &Path) -> String {
    let canonical = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
    format!("blobfs: RocksDB FileSystem on {}", canonical.display())
}

/// The FUSE mount tests' precondition: root and /dev/fuse (CI has both). Fails with a clear
/// message rather than skipping.
pub fn require_fuse() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "mounting the image with FUSE needs root (mount(2)); euid is {euid}"
    );
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        panic!("mounting the image with FUSE needs /dev/fuse ({e}); modprobe fuse");
    }
}

/// An image mounted with `blobfs mount IMAGE MNT --background`. `unmount` runs `blobfs
/// umount` (which waits until the server has closed the image); if the guard is dropped
/// still mounted (a failed assertion), it detaches the mount and kills the server, so
/// nothing is left behind.
pub struct FuseMount {
    pub mnt: PathBuf,
    server: Option<i32>,
}

impl FuseMount {
    pub fn mount(image: &Path, mnt: &Path) -> FuseMount {
        require_fuse();
        std::fs::create_dir_all(mnt).expect("mkdir mountpoint");
        let out = blobfs_ok(&[
            "mount",
            image.to_str().expect("utf-8"),
            mnt.to_str().expect("utf-8"),
            "--background",
        ]);
        // "mounted IMAGE at MNT (server pid N); unmount with: ..."
        let server = out
            .split("server pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok());
        let m = FuseMount {
            mnt: mnt.to_path_buf(),
            server,
        };
        assert!(server.is_some(), "no server pid in {out:?}");
        assert!(m.is_mounted(), "{} not mounted: {out}", mnt.display());
        m
    }

    pub fn is_mounted(&self) -> bool {
        blobfs_fuse::find_mount(&self.mnt)
            .ok()
            .flatten()
            .is_some_and(|m| m.fstype.starts_with("fuse"))
    }

    /// `blobfs umount MNT`: returns when the server has written back and closed the image.
    pub fn unmount(mut self) {
        blobfs_ok(&["umount", self.mnt.to_str().expect("utf-8")]);
        assert!(!self.is_mounted());
        self.server = None;
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        while self.is_mounted() {
            if blobfs_fuse::unmount(&self.mnt, blobfs_fuse::Unmount::Lazy).is_err() {
                break;
            }
        }
        if let Some(pid) = self.server.take() {
            // SAFETY: kill with the pid of the server this guard started; at worst it has
            // exited already (ESRCH).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
