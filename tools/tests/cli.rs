//! Runs the built `blobfs` binary the way a user would.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_blobfs");

fn blobfs(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run blobfs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let o = blobfs(dir, args);
    assert!(
        o.status.success(),
        "blobfs {args:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts a clean failure (exit code 1, one line on stderr, no panic) and returns stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = blobfs(dir, args);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "blobfs {args:?}: expected exit code 1, got {:?}\nstdout:\n{}\nstderr:\n{err}",
        o.status,
        stdout(&o)
    );
    assert!(!err.contains("panicked"), "blobfs {args:?} panicked: {err}");
    assert!(err.starts_with("blobfs: error: "), "blobfs {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

fn info_json(dir: &Path, path: &str) -> serde_json::Value {
    let out = ok(dir, &["info", path, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"))
}

/// The uuid line of `mkfs` output.
fn uuid_of(mkfs_out: &str) -> String {
    mkfs_out
        .lines()
        .find_map(|l| l.trim().strip_prefix("uuid:"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no uuid in:\n{mkfs_out}"))
}

#[test]
fn mkfs_creates_an_image_that_info_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(d, &["mkfs", "s.img", "--size", "64M"]);
    assert!(out.contains("64 MiB"), "{out}");
    assert!(out.contains("as a new BlobFS filesystem"), "{out}");
    assert!(out.contains("cluster size:  1 MiB"), "{out}");
    let uuid = uuid_of(&out);
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(std::fs::metadata(d.join("s.img")).unwrap().len(), 64 << 20);

    let text = ok(d, &["info", "s.img"]);
    for want in [
        uuid.as_str(),
        "generation",
        "cluster size:   1 MiB",
        "LBA size:       4096",
        "64 total",
        // The root directory of the (empty) filesystem.
        "blobs:          1",
        "filesystem:     BlobFS",
        "metadata log",
        "checkpoints",
        "replay at open",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }

    let j = info_json(d, "s.img");
    assert_eq!(j["uuid"], uuid.as_str());
    assert_eq!(j["cluster_size"], 1 << 20);
    assert_eq!(j["lba_size"], 4096);
    assert_eq!(j["cluster_count"], 64);
    assert_eq!(j["blob_count"], 1);
    assert_eq!(j["filesystem"], "blobfs");
    assert_eq!(j["read_only"], true);
    let used = j["used_clusters"].as_u64().unwrap();
    let free = j["free_clusters"].as_u64().unwrap();
    assert_eq!(used + free, 64);
    assert!(j["reserved_clusters"].as_u64().unwrap() <= free);
    assert!(j["log_segments"].as_u64().unwrap() >= 1);
    assert!(j["replay"]["records"].as_u64().unwrap() >= 1);
    assert!(j["generation"].as_u64().unwrap() >= 1);
}

#[test]
fn mkfs_blobstore_only_makes_a_bare_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(d, &["mkfs", "b.img", "--size", "32M", "--blobstore-only"]);
    assert!(out.contains("as a new blobstore"), "{out}");
    assert!(!out.contains("BlobFS"), "{out}");
    let j = info_json(d, "b.img");
    assert_eq!(j["blob_count"], 0);
    assert_eq!(j["filesystem"], "none");
    let text = ok(d, &["info", "b.img"]);
    assert!(
        text.contains("filesystem:     none: a bare blobstore"),
        "{text}"
    );
    // Mounting it says what it is.
    std::fs::create_dir(d.join("mnt")).unwrap();
    let err = fails(d, &["mount", "b.img", "mnt", "--background"]);
    assert!(err.contains("not a BlobFS filesystem"), "{err}");
    assert!(err.contains("blobfs mkfs"), "{err}");
}

#[test]
fn mkfs_under_its_classic_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let link = d.join("mkfs.blobfs");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let o = Command::new(&link)
        .args(["c.img", "--size", "32M"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("as a new BlobFS filesystem"),
        "{}",
        stdout(&o)
    );
    assert_eq!(info_json(d, "c.img")["filesystem"], "blobfs");
}

#[test]
fn mkfs_options_and_path_forms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = blobfs(
        d,
        &[
            "mkfs",
            "file:small.img",
            "--size",
            "16M",
            "--cluster-size",
            "64K",
            "--lba-size",
            "512",
            "--no-discard",
        ],
    );
    if !o.status.success() && stderr(&o).contains("O_DIRECT I/O aligned to") {
        // A file system on a 4K-sector disk cannot do 512-byte O_DIRECT.
        eprintln!("skipping the 512-byte LBA case: {}", stderr(&o));
    } else {
        assert!(o.status.success(), "{}", stderr(&o));
        // The LBA size the store was made with is found without being told.
        let j = info_json(d, "small.img");
        assert_eq!(j["lba_size"], 512);
        assert_eq!(j["cluster_size"], 64 << 10);
        assert_eq!(j["cluster_count"], 256);
    }
    // An existing file is resized by --size.
    std::fs::write(d.join("empty.img"), b"").unwrap();
    ok(d, &["mkfs", "empty.img", "--size", "32M"]);
    assert_eq!(info_json(d, "empty.img")["cluster_count"], 32);
    // An in-memory device can be formatted (and is gone afterwards).
    let out = ok(d, &["mkfs", "mem:32M"]);
    assert!(out.contains("in-memory"), "{out}");
}

#[test]
fn mkfs_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = uuid_of(&ok(d, &["mkfs", "s.img", "--size", "32M"]));
    let err = fails(d, &["mkfs", "s.img"]);
    assert!(err.contains("already holds a blobstore"), "{err}");
    assert!(err.contains("--force"), "{err}");
    // Not with --size either, and the file keeps its length.
    fails(d, &["mkfs", "s.img", "--size", "64M"]);
    assert_eq!(std::fs::metadata(d.join("s.img")).unwrap().len(), 32 << 20);
    assert_eq!(info_json(d, "s.img")["uuid"], first.as_str());
    // With --force it is formatted anew.
    let second = uuid_of(&ok(d, &["mkfs", "s.img", "--force"]));
    assert_ne!(first, second);
    assert_eq!(info_json(d, "s.img")["uuid"], second.as_str());
}

#[test]
fn demo_runs_and_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["mkfs", "s.img", "--size", "64M", "--blobstore-only"]);
    let before = info_json(d, "s.img");
    for _ in 0..2 {
        let out = ok(d, &["demo", "s.img"]);
        for want in [
            "create a thin blob",
            "pattern intact",
            "reads as zeroes",
            "name=\"blobfs-demo\"",
            "deleted",
            "demo finished",
        ] {
            assert!(out.contains(want), "{want:?} missing from:\n{out}");
        }
    }
    let after = info_json(d, "s.img");
    assert_eq!(after["blob_count"], 0);
    assert_eq!(after["filesystem"], "none");
    assert_eq!(after["used_clusters"], before["used_clusters"]);
    assert_eq!(after["uuid"], before["uuid"]);
    // The demo closed cleanly: a checkpoint, so the next open replays only that.
    assert!(after["checkpoint_count"].as_u64().unwrap() >= 1);
}

#[test]
fn demo_on_a_blobfs_image_leaves_the_filesystem_intact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["mkfs", "fs.img", "--size", "64M"]);
    let before = info_json(d, "fs.img");
    let out = ok(d, &["demo", "fs.img"]);
    assert!(out.contains("holds a BlobFS filesystem"), "{out}");
    assert!(out.contains("demo finished"), "{out}");
    let after = info_json(d, "fs.img");
    assert_eq!(after["blob_count"], before["blob_count"]);
    assert_eq!(after["used_clusters"], before["used_clusters"]);
    assert_eq!(after["filesystem"], "blobfs");
    // The filesystem opens and checks clean.
    let dev = driver::uring::UringDevice::open(
        d.join("fs.img").to_str().unwrap(),
        &driver::uring::UringOptions {
            lba_size: None,
            read_only: true,
        },
    )
    .unwrap();
    let fs = blobfs::FileSystem::open(
        std::sync::Arc::new(dev),
        blobfs::FsOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
}

#[test]
fn demo_on_an_in_memory_device() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["demo", "mem:64M"]);
    assert!(out.contains("formatting it first"), "{out}");
    assert!(out.contains("demo finished"), "{out}");
}

#[test]
fn info_on_things_that_are_not_blobstores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A file of text.
    let mut text = Vec::new();
    while text.len() < 1 << 20 {
        text.extend_from_slice(b"just some text, not a blobstore\n");
    }
    std::fs::write(d.join("notes.txt"), &text).unwrap();
    let err = fails(d, &["info", "notes.txt"]);
    assert!(err.contains("notes.txt"), "{err}");
    assert!(err.contains("not a blobstore"), "{err}");
    // A tiny file.
    std::fs::write(d.join("tiny"), b"hi").unwrap();
    let err = fails(d, &["info", "tiny"]);
    assert!(err.contains("not a blobstore"), "{err}");
    // Nothing there, a directory, an empty in-memory device, an unknown scheme.
    let err = fails(d, &["info", "missing.img"]);
    assert!(err.contains("missing.img: no such file"), "{err}");
    let err = fails(d, &["info", "."]);
    assert!(err.contains("directory"), "{err}");
    let err = fails(d, &["info", "mem:16M"]);
    assert!(err.contains("not a blobstore"), "{err}");
    let err = fails(d, &["info", "nvme-foo:1"]);
    assert!(err.contains("unknown scheme"), "{err}");
    // demo says the same.
    let err = fails(d, &["demo", "notes.txt"]);
    assert!(err.contains("not a blobstore"), "{err}");
}

#[test]
fn damaged_images_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A bare store: its checkpoint is at the start of cluster 1 (a BlobFS mkfs writes a
    // second checkpoint elsewhere when it closes).
    ok(d, &["mkfs", "s.img", "--size", "32M", "--blobstore-only"]);
    let good = std::fs::read(d.join("s.img")).unwrap();

    // Both superblock copies damaged.
    let mut img = good.clone();
    for copy in [0usize, 4096] {
        img[copy + 60] ^= 0xff;
    }
    std::fs::write(d.join("sb.img"), &img).unwrap();
    let err = fails(d, &["info", "sb.img"]);
    assert!(err.contains("corruption"), "{err}");
    // mkfs treats it as a (damaged) store too.
    let err = fails(d, &["mkfs", "sb.img"]);
    assert!(err.contains("--force"), "{err}");

    // The checkpoint at the start of the log damaged (cluster 1 on a fresh store).
    let mut img = good.clone();
    img[(1 << 20) + 20] ^= 0xff;
    std::fs::write(d.join("log.img"), &img).unwrap();
    let err = fails(d, &["info", "log.img"]);
    assert!(err.contains("corruption"), "{err}");

    // Truncated.
    std::fs::write(d.join("short.img"), &good[..4 << 20]).unwrap();
    let err = fails(d, &["info", "short.img"]);
    assert!(err.contains("truncated"), "{err}");
    fails(d, &["demo", "short.img"]);
}

#[test]
fn bad_arguments_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (args, want) in [
        (&["mkfs", "a.img", "--size", "lots"][..], "--size"),
        (&["mkfs", "a.img", "--size", "0"][..], "--size"),
        (&["mkfs", "a.img", "--size", "1000"][..], "--size"),
        (&["mkfs", "a.img", "--size", "99999999P"][..], "--size"),
        (&["mkfs", "a.img"][..], "give --size"),
        (&["mkfs", "a.img", "--size", "1M"][..], "at least 8"),
        (
            &["mkfs", "a.img", "--size", "64M", "--cluster-size", "3K"][..],
            "--cluster-size",
        ),
        (
            &["mkfs", "a.img", "--size", "64M", "--lba-size", "1024"][..],
            "--lba-size",
        ),
        (&["mkfs", "mem:64M", "--size", "64M"][..], "mem:"),
        (&["mkfs", "mem:lots"][..], "not a size"),
        (&["mkfs", "a.img?lba=7", "--size", "64M"][..], "lba"),
        (&["mkfs", "no/such/dir/a.img", "--size", "64M"][..], "a.img"),
    ] {
        let err = fails(d, args);
        assert!(err.contains(want), "{args:?}: {want:?} missing from {err}");
    }
    // Nothing was left behind by the failures.
    assert!(!d.join("a.img").exists());
    // Usage errors exit with 1 as well.
    let o = blobfs(d, &["mkfs"]);
    assert_eq!(o.status.code(), Some(1));
    let o = blobfs(d, &["frobnicate"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn help_explains_commands_and_path_forms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        &["--help"][..],
        &["mkfs", "--help"][..],
        &["info", "--help"][..],
        &["demo", "--help"][..],
        &["mount", "--help"][..],
    ] {
        let out = ok(d, args);
        for want in ["file:PATH", "mem:SIZE", "block device", "image file"] {
            assert!(
                out.contains(want),
                "{args:?}: {want:?} missing from:\n{out}"
            );
        }
    }
    assert!(ok(d, &["mkfs", "--help"]).contains("--force"));
    assert!(ok(d, &["info", "--help"]).contains("--json"));
    assert!(ok(d, &["mkfs", "--help"]).contains("--blobstore-only"));
    let mount = ok(d, &["mount", "--help"]);
    for want in [
        "--background",
        "allow_other",
        "auto_unmount",
        "fstab",
        "SIGTERM",
    ] {
        assert!(mount.contains(want), "{want:?} missing from:\n{mount}");
    }
    assert!(ok(d, &["umount", "--help"]).contains("--lazy"));
}
