//! Shared fixtures: images formatted with BlobFS, mounted in-process with FUSE.
#![allow(dead_code)]

use blobfs::{FileSystem, FsOptions};
use blobfs_fuse::{MountOptions, Mounted};
use driver::uring::{UringDevice, UringOptions};
use driver::Device;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// These tests mount for real: they need root and /dev/fuse. Say so clearly instead of
/// skipping (CI runs as root with FUSE available).
pub fn require_fuse() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the FUSE mount tests need root (they mount with mount(2)); run them as root \
         (euid is {euid})"
    );
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        panic!(
            "the FUSE mount tests need /dev/fuse ({e}); load the module (modprobe fuse) or \
             run the tests where FUSE is available"
        );
    }
}

/// A temporary directory with an image and a mountpoint in it.
pub struct Fixture {
    // Dropped last: every mount inside is gone by then.
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub mnt: PathBuf,
}

pub fn fixture(size: u64) -> Fixture {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(size)
        .unwrap();
    FileSystem::format(
        device(&image, false),
        &blobstore::FormatOptions {
            cluster_size: 64 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    Fixture { dir, image, mnt }
}

pub fn device(image: &Path, read_only: bool) -> Arc<dyn Device> {
    Arc::new(
        UringDevice::open(
            image.to_str().unwrap(),
            &UringOptions {
                lba_size: Some(4096),
                read_only,
            },
        )
        .unwrap(),
    )
}

pub fn open_fs(image: &Path, read_only: bool) -> FileSystem {
    FileSystem::open(
        device(image, read_only),
        FsOptions {
            read_only,
            ..Default::default()
        },
    )
    .unwrap()
}

impl Fixture {
    /// Mounts the image with `-o opts`, plus whatever `BLOBFS_TEST_MOUNT_OPTIONS` says
    /// (e.g. `no_writeback_cache`, to run the suite without the kernel's writeback cache).
    pub fn mount(&self, opts: &str) -> Mounted {
        let mut o = MountOptions {
            fsname: self.image.display().to_string(),
            ..Default::default()
        };
        if let Ok(extra) = std::env::var("BLOBFS_TEST_MOUNT_OPTIONS") {
            o.apply(&extra).unwrap();
        }
        o.apply(opts).unwrap();
        blobfs_fuse::mount(open_fs(&self.image, o.read_only), &self.mnt, &o).unwrap()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Opens the (unmounted) image and asserts its consistency check is clean.
    pub fn check_clean(&self) {
        let fs = open_fs(&self.image, true);
        let r = fs.check().unwrap();
        assert!(r.is_clean(), "check found problems: {:#?}", r.problems);
    }
}

/// Runs a shell command line, asserting success; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The errno of a failed std::io call.
pub fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(0)
}

/// A deterministic pseudo-random byte pattern.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
