//! Filesystem snapshots and clones through real FUSE mounts: a tree written through the
//! kernel, snapshotted, changed; the snapshot mounted read-only shows the old tree byte for
//! byte (diff -r against a copy kept on the host); a clone mounted read-write diverges
//! without touching the snapshot or the live tree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use blobfs::{FileSystem, FsOptions};
use blobfs_fuse::MountOptions;
use common::{device, fixture, open_fs, pattern, sh};
use std::fs;
use std::path::Path;

fn mount_view(image: &Path, mnt: &Path, view: &str, read_only: bool) -> blobfs_fuse::Mounted {
    let fs = FileSystem::open(
        device(image, read_only),
        FsOptions {
            read_only,
            view: Some(view.to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut o = MountOptions {
        fsname: image.display().to_string(),
        ..Default::default()
    };
    o.read_only = read_only;
    blobfs_fuse::mount(fs, mnt, &o).unwrap()
}

#[test]
fn snapshot_mounts_read_only_with_the_old_tree_and_a_clone_diverges() {
    let fx = fixture(256 << 20);
    let keep = fx.dir.path().join("before");
    let after = fx.dir.path().join("after");
    // A tree through the kernel.
    let mut m = fx.mount("");
    fs::create_dir_all(fx.p("src/deep/er")).unwrap();
    fs::write(fx.p("src/small"), b"small").unwrap();
    fs::write(fx.p("src/deep/big"), pattern(1, 3 << 20)).unwrap();
    fs::write(fx.p("src/deep/er/odd"), pattern(2, 70_001)).unwrap();
    std::os::unix::fs::symlink("deep/big", fx.p("src/link")).unwrap();
    fs::hard_link(fx.p("src/small"), fx.p("src/small-hardlink")).unwrap();
    let mnt = fx.mnt.display().to_string();
    sh(&format!("cp -a '{mnt}/src' '{}'", keep.display()));
    m.unmount().unwrap();

    // Snapshot the unmounted image (what `blobfs snapshot IMAGE NAME` does).
    {
        let fs = open_fs(&fx.image, false);
        fs.snapshot("before").unwrap();
        fs.close().unwrap();
    }
    fx.check_clean();

    // Change and delete files in the live tree.
    let mut m = fx.mount("");
    sh(&format!(
        "dd if=/dev/zero of='{mnt}/src/deep/big' bs=4096 seek=10 count=3 conv=notrunc status=none"
    ));
    fs::remove_file(fx.p("src/deep/er/odd")).unwrap();
    fs::write(fx.p("src/small"), b"rewritten").unwrap();
    fs::write(fx.p("src/new"), pattern(3, 10_000)).unwrap();
    sh(&format!("cp -a '{mnt}/src' '{}'", after.display()));
    m.unmount().unwrap();
    fx.check_clean();

    // The snapshot, mounted read-only, is the old tree byte for byte; writes are refused.
    let mut m = mount_view(&fx.image, &fx.mnt, "before", true);
    sh(&format!(
        "diff -r --no-dereference '{}' '{mnt}/src'",
        keep.display()
    ));
    assert_eq!(
        fs::write(fx.p("src/x"), b"x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    m.unmount().unwrap();
    // A snapshot cannot be opened read-write.
    assert!(FileSystem::open(
        device(&fx.image, false),
        FsOptions {
            view: Some("before".into()),
            ..Default::default()
        }
    )
    .is_err());

    // A clone of it, mounted read-write, diverges.
    {
        let fs = open_fs(&fx.image, false);
        fs.clone_snapshot("before", "trial").unwrap();
        fs.close().unwrap();
    }
    let mut m = mount_view(&fx.image, &fx.mnt, "trial", false);
    sh(&format!(
        "diff -r --no-dereference '{}' '{mnt}/src'",
        keep.display()
    ));
    fs::write(fx.p("src/deep/er/odd"), b"clone's own").unwrap();
    fs::create_dir(fx.p("src/clone-dir")).unwrap();
    fs::write(fx.p("src/clone-dir/f"), pattern(4, 123_456)).unwrap();
    fs::remove_file(fx.p("src/small-hardlink")).unwrap();
    m.unmount().unwrap();
    let mut m = mount_view(&fx.image, &fx.mnt, "trial", false);
    assert_eq!(fs::read(fx.p("src/deep/er/odd")).unwrap(), b"clone's own");
    assert_eq!(
        fs::read(fx.p("src/clone-dir/f")).unwrap(),
        pattern(4, 123_456)
    );
    assert!(!fx.p("src/small-hardlink").exists());
    m.unmount().unwrap();

    // Neither the snapshot nor the live tree moved.
    let mut m = mount_view(&fx.image, &fx.mnt, "before", true);
    sh(&format!(
        "diff -r --no-dereference '{}' '{mnt}/src'",
        keep.display()
    ));
    m.unmount().unwrap();
    let mut m = fx.mount("");
    sh(&format!(
        "diff -r --no-dereference '{}' '{mnt}/src'",
        after.display()
    ));
    assert!(!fx.p("src/clone-dir").exists());
    m.unmount().unwrap();
    fx.check_clean();

    // Deleting the clone, then the snapshot, leaves the live tree as it is.
    {
        let fs = open_fs(&fx.image, false);
        assert!(
            fs.delete_snapshot("before").is_err(),
            "the clone depends on it"
        );
        fs.delete_snapshot("trial").unwrap();
        fs.delete_snapshot("before").unwrap();
        assert!(fs.snapshots().unwrap().is_empty());
        fs.close().unwrap();
    }
    fx.check_clean();
    let mut m = fx.mount("");
    sh(&format!(
        "diff -r --no-dereference '{}' '{mnt}/src'",
        after.display()
    ));
    m.unmount().unwrap();
}
