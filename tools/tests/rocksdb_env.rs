//! `blobfs rocksdb-env`: finding libblobfs_rocksdb.so and printing the LD_PRELOAD line.

use std::path::Path;
use std::process::Command;

/// A copy of the binary in a directory of its own, so what sits next to it is known.
fn copy_binary(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    let exe = bin.join("blobfs");
    std::fs::copy(env!("CARGO_BIN_EXE_blobfs"), &exe).expect("copy the binary");
    exe
}

#[test]
fn prints_the_preload_line_and_examples() {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_binary(dir.path());
    let lib = dir.path().join("bin/libblobfs_rocksdb.so");
    std::fs::write(&lib, b"").unwrap();
    let image = dir.path().join("db.img");
    std::fs::write(&image, b"").unwrap();
    let o = Command::new(&exe)
        .args(["rocksdb-env", image.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    let lib = std::fs::canonicalize(&lib).unwrap();
    let image = std::fs::canonicalize(&image).unwrap();
    assert_eq!(
        out.lines().next(),
        Some(format!("LD_PRELOAD={}", lib.display()).as_str()),
        "{out}"
    );
    let uri = format!("--fs_uri=blobfs://{}", image.display());
    for tool in ["db_bench", "ldb", "sst_dump"] {
        assert!(
            out.lines().any(|l| l.contains(tool) && l.contains(&uri)),
            "no {tool} example with {uri}:\n{out}"
        );
    }
    // Every line but the first is a comment: the output can be eval'ed.
    assert!(out.lines().skip(1).all(|l| l.starts_with('#')), "{out}");
}

#[test]
fn says_how_to_build_the_library_when_missing() {
    if Path::new("/usr/local/lib/libblobfs_rocksdb.so").exists() {
        // Installed: it would be found there.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_binary(dir.path());
    let o = Command::new(&exe).arg("rocksdb-env").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err.contains("libblobfs_rocksdb.so not found") && err.contains("make rocksdb"),
        "{err}"
    );
}
