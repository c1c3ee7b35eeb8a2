//! `blobfs snapshot` / `clone` / `--list` / `--delete` and `blobfs mount --snapshot`, run as
//! a user would on an image made with `blobfs mkfs` and filled with `blobfs cp`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = blobfs(dir, args);
    assert!(
        o.status.success(),
        "blobfs {args:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A clean failure: exit code 1, a one-line message, no panic. Returns stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = blobfs(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "blobfs {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn snapshot_clone_list_delete_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["mkfs", "--size=64M", "--cluster-size=64K", "img"]);
    std::fs::write(d.join("a.txt"), b"first version").unwrap();
    ok(d, &["cp", "a.txt", "img:/a.txt"]);
    let out = ok(d, &["snapshot", "img", "v1"]);
    assert!(out.contains("snapshot v1"), "{out}");
    // The live file changes; the snapshot's does not.
    std::fs::write(d.join("a.txt"), b"second version, longer").unwrap();
    ok(d, &["cp", "--force", "a.txt", "img:/a.txt"]);
    ok(d, &["clone", "img", "v1", "work"]);
    let list = ok(d, &["snapshot", "--list", "img"]);
    assert!(list.contains("v1") && list.contains("snapshot"), "{list}");
    assert!(list.contains("work") && list.contains("clone"), "{list}");
    let json = ok(d, &["snapshot", "--list", "--json", "img"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["v1", "work"]);
    assert_eq!(v[1]["origin"], "v1");
    // Clear refusals.
    let e = fails(d, &["snapshot", "img", "v1"]);
    assert!(e.contains("v1"), "{e}");
    let e = fails(d, &["clone", "img", "nope", "x"]);
    assert!(e.contains("nope"), "{e}");
    let e = fails(d, &["snapshot", "--delete", "img", "v1"]);
    assert!(e.contains("work"), "the clone is named: {e}");
    let e = fails(d, &["snapshot", "img", "a/b"]);
    assert!(e.contains("a/b"), "{e}");
    // fsck is clean with snapshots and clones present; df counts the live tree's inodes
    // only (the root and a.txt), and shows the snapshot's clusters as shared.
    ok(d, &["fsck", "-n", "img"]);
    let df = ok(d, &["df", "--json", "img"]);
    let v: serde_json::Value = serde_json::from_str(&df).unwrap();
    assert_eq!(v["files"], 1, "{df}");
    assert_eq!(v["dirs"], 1, "{df}");
    assert!(v["shared_clusters"].as_u64().unwrap() >= 1, "{df}");
    ok(d, &["cp", "img:/a.txt", "live.txt"]);
    assert_eq!(
        std::fs::read(d.join("live.txt")).unwrap(),
        b"second version, longer"
    );
    ok(d, &["snapshot", "--delete", "img", "work"]);
    ok(d, &["snapshot", "--delete", "img", "v1"]);
    let list = ok(d, &["snapshot", "--list", "img"]);
    assert!(list.contains("no snapshots"), "{list}");
    ok(d, &["fsck", "-n", "img"]);
    // Mounting a snapshot read-write is refused with a message saying what to do.
    ok(d, &["snapshot", "img", "v2"]);
    std::fs::create_dir(d.join("mnt")).unwrap();
    let e = fails(d, &["mount", "--snapshot", "v2", "img", "mnt"]);
    assert!(e.contains("read-only"), "{e}");
    let e = fails(
        d,
        &["mount", "--snapshot", "missing", "-o", "ro", "img", "mnt"],
    );
    assert!(e.contains("missing"), "{e}");
}
