//! The fsck damage corpus: for every class of damage fsck knows, make it on a real image,
//! then `fsck -n` must exit 4 and name it; `fsck -y` repairs what is repairable (exit 1) and
//! a second `fsck -n` exits 0; unrepairable cases stay at 4 with the image unchanged.
//! Prints `fsck-corpus: cases=N detected=N repaired=R`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobfs::inode::{encode_entry, orphan_key, InodeAttr, Kind, KEY_INODE, KEY_SYMLINK};
use blobfs::{FileSystem, FsOptions, ROOT_INO};
use blobstore::format::record::Record;
use blobstore::{BlobId, BlobOptions, Blobstore, OpenOptions, XattrNs};
use driver::uring::{UringDevice, UringOptions};
use driver::Device;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const CS: u64 = 64 * 1024;

fn dev(img: &Path) -> Arc<dyn Device> {
    Arc::new(
        UringDevice::open(
            img.to_str().unwrap(),
            &UringOptions {
                lba_size: Some(4096),
                read_only: false,
            },
        )
        .unwrap(),
    )
}

fn store(img: &Path) -> Blobstore {
    Blobstore::open(
        dev(img),
        OpenOptions {
            background_checkpoint: false,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

/// Inodes of the pristine image.
#[derive(Clone, Copy, Debug)]
struct Inos {
    a: u64,
    sub: u64,
    f1: u64,
    f2: u64,
    lnk: u64,
}

/// A populated BlobFS image: /a/sub, /a/f1 (data), /b/f2 with a hard link /f2link, a
/// symlink /lnk; a checkpoint, then some logged changes.
fn pristine(dir: &Path) -> (PathBuf, Inos) {
    let img = dir.join("pristine.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    FileSystem::format(
        dev(&img),
        &blobstore::FormatOptions {
            cluster_size: CS as u32,
            ..Default::default()
        },
    )
    .unwrap();
    let fs = FileSystem::open(
        dev(&img),
        FsOptions {
            sync_interval: None,
            ..Default::default()
        },
    )
    .unwrap();
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0).unwrap().ino;
    let b = fs.mkdir(ROOT_INO, b"b", 0o755, 0, 0).unwrap().ino;
    let sub = fs.mkdir(a, b"sub", 0o755, 0, 0).unwrap().ino;
    let f1 = fs.create(a, b"f1", 0o644, 0, 0).unwrap().ino;
    fs.write(f1, 0, &vec![0x11; 100_000]).unwrap();
    let f2 = fs.create(b, b"f2", 0o644, 0, 0).unwrap().ino;
    fs.write(f2, 0, &vec![0x22; 70_000]).unwrap();
    fs.link(f2, ROOT_INO, b"f2link").unwrap();
    let lnk = fs.symlink(ROOT_INO, b"lnk", b"a/f1", 0, 0).unwrap().ino;
    fs.sync_all().unwrap();
    fs.store().checkpoint().unwrap();
    // Changes after the checkpoint, one commit each, so the log has several blocks.
    for i in 0..6 {
        fs.create(sub, format!("late{i}").as_bytes(), 0o644, 0, 0)
            .unwrap();
        fs.sync_all().unwrap();
    }
    drop(fs);
    (
        img,
        Inos {
            a,
            sub,
            f1,
            f2,
            lnk,
        },
    )
}

fn fsck(img: &Path, flag: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blobfs"))
        .args(["fsck", flag, img.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn bytes(img: &Path) -> Vec<u8> {
    std::fs::read(img).unwrap()
}

fn poke(img: &Path, off: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn peek(img: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

fn attr(st: &Blobstore, ino: u64) -> InodeAttr {
    InodeAttr::decode(&st.blob_meta(BlobId(ino)).unwrap().internal[KEY_INODE]).unwrap()
}

/// Which superblock copy is active, and the other one.
fn sb_slots(img: &Path) -> (u64, u64) {
    let c = blobstore::fsck::check_store(&dev(img)).unwrap();
    let a = c.active.unwrap() as u64;
    (a, 1 - a)
}

struct Case {
    name: &'static str,
    /// The finding kind fsck must name.
    kind: &'static str,
    repairable: bool,
    /// Normal after a crash: reported as a note (exit 0), tidied by -y.
    note: bool,
    damage: fn(&Path, Inos),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "one superblock copy damaged",
            kind: "superblock-copy-bad",
            repairable: true,
            note: true,
            damage: |img, _| {
                let (_, other) = sb_slots(img);
                poke(img, other * 4096 + 200, &[0xEE; 8]);
            },
        },
        Case {
            name: "both superblock copies damaged",
            kind: "superblock-bad",
            repairable: false,
            note: false,
            damage: |img, _| {
                poke(img, 300, &[0xEE; 8]);
                poke(img, 4096 + 300, &[0xEE; 8]);
            },
        },
        Case {
            name: "unknown incompatible feature",
            kind: "unknown-features",
            repairable: false,
            note: false,
            damage: |img, _| {
                let (active, _) = sb_slots(img);
                let raw = peek(img, active * 4096, 4096);
                let mut sb = blobstore::format::superblock::Superblock::decode(&raw).unwrap();
                sb.incompat |= 1 << 20;
                poke(img, active * 4096, &sb.encode());
            },
        },
        Case {
            name: "damaged checkpoint",
            kind: "checkpoint-damaged",
            repairable: false,
            note: false,
            damage: |img, _| {
                let st = store(img);
                let seg = st.metadata_layout().snapshot_segment;
                drop(st);
                poke(img, seg.0 * CS + 100, &[0x5A; 16]);
            },
        },
        Case {
            name: "damaged log block with commits after it",
            kind: "log-damaged",
            repairable: true,
            note: false,
            damage: |img, _| {
                let st = store(img);
                let (seg, off) = st.metadata_layout().tail;
                drop(st);
                // The commits after the checkpoint are one 4 KiB block each: break one in
                // the middle.
                poke(img, seg.0 * CS + off - 3 * 4096 + 60, &[0xAB; 4]);
            },
        },
        Case {
            name: "cluster owned twice",
            kind: "cluster-owned-twice",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let c = st.blob_meta(BlobId(i.f1)).unwrap().clusters[0];
                st.debug_inject_records(vec![Record::MapRun {
                    id: BlobId(i.f2),
                    index: 0,
                    first: c,
                    count: 1,
                }])
                .unwrap();
            },
        },
        Case {
            name: "unknown blob flags",
            kind: "unknown-flags",
            repairable: true,
            note: false,
            damage: |img, i| {
                store(img)
                    .debug_inject_records(vec![Record::SetFlags {
                        id: BlobId(i.f1),
                        flags: 0x1 | 0x40,
                    }])
                    .unwrap();
            },
        },
        Case {
            name: "record for a missing blob",
            kind: "invalid-record",
            repairable: true,
            note: false,
            damage: |img, _| {
                store(img)
                    .debug_inject_records(vec![Record::SetXattr {
                        id: BlobId(77_777),
                        ns: XattrNs::User,
                        name: b"x".to_vec(),
                        value: vec![1],
                    }])
                    .unwrap();
            },
        },
        Case {
            name: "dangling directory entry",
            kind: "dangling-entry",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let mut t = st.transaction();
                t.set_xattr(
                    BlobId(i.a),
                    XattrNs::Internal,
                    b"ghost",
                    &encode_entry(88_888, Kind::File),
                );
                t.commit_sync().unwrap();
            },
        },
        Case {
            name: "duplicate directory entry (a directory with two names)",
            kind: "directory-linked-twice",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let mut t = st.transaction();
                t.set_xattr(
                    BlobId(ROOT_INO),
                    XattrNs::Internal,
                    b"sub-again",
                    &encode_entry(i.sub, Kind::Dir),
                );
                t.commit_sync().unwrap();
            },
        },
        Case {
            name: "entry type disagrees with the inode",
            kind: "entry-type-mismatch",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let mut t = st.transaction();
                t.set_xattr(
                    BlobId(i.a),
                    XattrNs::Internal,
                    b"f1",
                    &encode_entry(i.f1, Kind::Symlink),
                );
                t.commit_sync().unwrap();
            },
        },
        Case {
            name: "wrong link count",
            kind: "wrong-link-count",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let mut a = attr(&st, i.f2);
                a.nlink = 7;
                st.open_blob(BlobId(i.f2))
                    .unwrap()
                    .set_xattr_ns(XattrNs::Internal, KEY_INODE, &a.encode())
                    .unwrap();
                st.sync().unwrap();
            },
        },
        Case {
            name: "wrong directory parent",
            kind: "wrong-parent",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let mut a = attr(&st, i.sub);
                a.parent = ROOT_INO;
                st.open_blob(BlobId(i.sub))
                    .unwrap()
                    .set_xattr_ns(XattrNs::Internal, KEY_INODE, &a.encode())
                    .unwrap();
                st.sync().unwrap();
            },
        },
        Case {
            name: "size beyond the allocated space",
            kind: "size-beyond-allocated",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let mut a = attr(&st, i.f1);
                a.size = 10 << 20;
                st.open_blob(BlobId(i.f1))
                    .unwrap()
                    .set_xattr_ns(XattrNs::Internal, KEY_INODE, &a.encode())
                    .unwrap();
                st.sync().unwrap();
            },
        },
        Case {
            name: "orphan inode (no name, no orphan record)",
            kind: "orphan-inode",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let mut t = st.transaction();
                t.remove_xattr(BlobId(i.a), XattrNs::Internal, b"f1");
                t.commit_sync().unwrap();
            },
        },
        Case {
            name: "leaked clusters (a blob that is not part of the filesystem)",
            kind: "leaked-clusters",
            repairable: true,
            note: false,
            damage: |img, _| {
                let st = store(img);
                st.create_blob(BlobOptions {
                    thin: false,
                    clusters: 3,
                    ..Default::default()
                })
                .unwrap();
                st.sync().unwrap();
            },
        },
        Case {
            name: "orphan record of a missing inode",
            kind: "stale-orphan-record",
            repairable: true,
            note: false,
            damage: |img, _| {
                let st = store(img);
                let mut t = st.transaction();
                t.set_xattr(
                    BlobId(ROOT_INO),
                    XattrNs::Internal,
                    &orphan_key(55_555),
                    b"",
                );
                t.commit_sync().unwrap();
            },
        },
        Case {
            name: "orphan record of a file that still has names",
            kind: "orphan-with-names",
            repairable: true,
            note: false,
            damage: |img, i| {
                let st = store(img);
                let mut t = st.transaction();
                t.set_xattr(BlobId(ROOT_INO), XattrNs::Internal, &orphan_key(i.f1), b"");
                t.commit_sync().unwrap();
            },
        },
        Case {
            name: "unreadable inode record of a named file",
            kind: "inode-record-bad",
            repairable: false,
            note: false,
            damage: |img, i| {
                let st = store(img);
                st.open_blob(BlobId(i.f2))
                    .unwrap()
                    .set_xattr_ns(XattrNs::Internal, KEY_INODE, b"garbage")
                    .unwrap();
                st.sync().unwrap();
            },
        },
        Case {
            name: "symlink without a target",
            kind: "symlink-without-target",
            repairable: false,
            note: false,
            damage: |img, i| {
                let st = store(img);
                st.open_blob(BlobId(i.lnk))
                    .unwrap()
                    .remove_xattr_ns(XattrNs::Internal, KEY_SYMLINK)
                    .unwrap();
                st.sync().unwrap();
            },
        },
    ]
}

#[test]
fn damage_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let (pristine, inos) = pristine(dir.path());
    let (code, text) = fsck(&pristine, "-n");
    assert_eq!(code, 0, "pristine image not clean:\n{text}");
    let (mut n, mut detected, mut repaired) = (0, 0, 0);
    for case in cases() {
        n += 1;
        let img = dir.path().join("case.img");
        std::fs::copy(&pristine, &img).unwrap();
        (case.damage)(&img, inos);
        let (code, text) = fsck(&img, "-n");
        if case.note {
            // A note: named, but not an error.
            assert_eq!(code, 0, "{}: a note should exit 0:\n{text}", case.name);
            assert!(
                text.contains(case.kind),
                "{}: not named:\n{text}",
                case.name
            );
            detected += 1;
            let (code, text) = fsck(&img, "-y");
            assert_eq!(code, 0, "{}: tidying a note exits 0:\n{text}", case.name);
            let (code, text) = fsck(&img, "-n");
            assert_eq!(code, 0, "{text}");
            assert!(
                !text.contains(case.kind),
                "{}: still there after -y:\n{text}",
                case.name
            );
            repaired += 1;
            eprintln!("fsck-corpus: {}: noted {}, tidied", case.name, case.kind);
            continue;
        }
        assert_eq!(code, 4, "{}: fsck -n should exit 4:\n{text}", case.name);
        assert!(
            text.contains(case.kind),
            "{}: fsck -n does not name {}:\n{text}",
            case.name,
            case.kind
        );
        detected += 1;
        let before = bytes(&img);
        let (code, text) = fsck(&img, "-y");
        if case.repairable {
            assert_eq!(
                code, 1,
                "{}: fsck -y should repair (exit 1):\n{text}",
                case.name
            );
            let (code, text) = fsck(&img, "-n");
            assert_eq!(
                code, 0,
                "{}: still not clean after repair:\n{text}",
                case.name
            );
            // The repaired image mounts and the untouched data is there.
            let fs = FileSystem::open(
                dev(&img),
                FsOptions {
                    read_only: true,
                    sync_interval: None,
                    ..Default::default()
                },
            )
            .unwrap();
            let r = fs.check().unwrap();
            assert!(r.is_clean(), "{}: {:?}", case.name, r.problems);
            // f1 keeps its bytes whatever was repaired around it (as owner of the shared
            // cluster too).
            let f1 = fs.read(inos.f1, 0, 100_000).unwrap();
            assert_eq!(f1.len(), 100_000, "{}", case.name);
            assert!(
                f1.iter().all(|&b| b == 0x11),
                "{}: f1's data changed",
                case.name
            );
            repaired += 1;
        } else {
            assert_eq!(
                code, 4,
                "{}: fsck -y must leave it (exit 4):\n{text}",
                case.name
            );
            assert!(
                bytes(&img) == before,
                "{}: an unrepairable image was changed",
                case.name
            );
        }
        eprintln!(
            "fsck-corpus: {}: detected {}, {}",
            case.name,
            case.kind,
            if case.repairable {
                "repaired"
            } else {
                "left (unrepairable)"
            }
        );
    }
    println!("fsck-corpus: cases={n} detected={detected} repaired={repaired}");
    assert_eq!(detected, n);
}

#[test]
fn clean_and_operational_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = pristine(dir.path());
    // -y on a clean image changes nothing and exits 0.
    let before = bytes(&img);
    let (code, text) = fsck(&img, "-y");
    assert_eq!(code, 0, "{text}");
    assert!(bytes(&img) == before, "fsck -y wrote to a clean image");
    // JSON.
    let out = Command::new(env!("CARGO_BIN_EXE_blobfs"))
        .args(["fsck", "-n", "--json", img.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["filesystem"], true);
    // Not a blobstore, missing file: operational errors.
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    assert_eq!(fsck(&junk, "-n").0, 8);
    assert_eq!(fsck(&dir.path().join("missing.img"), "-n").0, 8);
    // A bare blobstore (no filesystem) is checked at the store level only.
    let bare = dir.path().join("bare.img");
    std::fs::File::create(&bare)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    Blobstore::format(dev(&bare), &Default::default()).unwrap();
    let (code, text) = fsck(&bare, "-n");
    assert_eq!(code, 0, "{text}");
}

/// Runs `blobfs ARGS` and returns (exit code, stdout).
fn blobfs(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blobfs"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The `Blob clusters: ...` line of a text output.
fn sharing_line(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("Blob clusters: "))
        .unwrap_or_else(|| panic!("no shared/exclusive line in:\n{text}"))
        .to_string()
}

/// df and fsck (text and JSON) print the same shared and exclusive figures.
fn assert_df_fsck_agree(img: &Path, shared: u64, exclusive: u64) {
    let path = img.to_str().unwrap();
    let (code, df) = blobfs(&["df", "--json", path]);
    assert_eq!(code, 0, "{df}");
    let df: serde_json::Value = serde_json::from_str(&df).unwrap();
    let (code, fsck) = blobfs(&["fsck", "-n", "--json", path]);
    assert_eq!(code, 0, "{fsck}");
    let fsck: serde_json::Value = serde_json::from_str(&fsck).unwrap();
    for (k, want) in [
        ("shared_clusters", shared),
        ("exclusive_clusters", exclusive),
        ("shared_bytes", shared * CS),
        ("exclusive_bytes", exclusive * CS),
    ] {
        assert_eq!(df[k].as_u64(), Some(want), "df {k}: {df:#}");
        assert_eq!(fsck[k].as_u64(), Some(want), "fsck {k}: {fsck:#}");
    }
    // Blobs hold every used cluster but the metadata's (cluster 0 and the log).
    let st = Blobstore::open(
        dev(img),
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let meta = 1 + st.metadata_layout().log_segments.len() as u64;
    drop(st);
    assert_eq!(
        df["used_clusters"].as_u64().unwrap(),
        shared + exclusive + meta,
        "{df:#}"
    );
    let (_, df_text) = blobfs(&["df", path]);
    let (_, fsck_text) = blobfs(&["fsck", "-n", path]);
    let line = sharing_line(&df_text);
    assert_eq!(
        line,
        sharing_line(&fsck_text),
        "df:\n{df_text}\nfsck:\n{fsck_text}"
    );
    assert!(
        line.starts_with(&format!("Blob clusters: {shared} shared (")),
        "{line}"
    );
    assert!(
        line.contains(&format!(", {exclusive} exclusive (")),
        "{line}"
    );
}

#[test]
fn df_and_fsck_agree_on_shared_and_exclusive_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("clones.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    Blobstore::format(
        dev(&img),
        &blobstore::FormatOptions {
            cluster_size: CS as u32,
            ..Default::default()
        },
    )
    .unwrap();
    let st = store(&img);
    assert!(st.supports_clones());
    let mut ch = st.channel().unwrap();
    // A thin blob with 3 clusters of data, snapshotted and cloned; a thick blob of 2.
    let base = st
        .create_blob(BlobOptions {
            thin: true,
            clusters: 4,
            ..Default::default()
        })
        .unwrap();
    st.open_blob(base)
        .unwrap()
        .write(&mut ch, 0, &vec![0x5a; 3 * CS as usize])
        .unwrap();
    let plain = st
        .create_blob(BlobOptions {
            thin: false,
            clusters: 2,
            ..Default::default()
        })
        .unwrap();
    let snap = st.snapshot(base).unwrap();
    let clone = st.clone_blob(snap).unwrap();
    // The clone writes a cluster of its own; the base copies one on write.
    st.open_blob(clone)
        .unwrap()
        .write(&mut ch, 3 * CS, &vec![0x66; CS as usize])
        .unwrap();
    st.open_blob(base)
        .unwrap()
        .write(&mut ch, 4096, &[0x77; 4096])
        .unwrap();
    drop(ch);
    st.close().unwrap();
    // The snapshot's 3 clusters are shared; the clone's, the base's and plain's 2 are not.
    assert_df_fsck_agree(&img, 3, 4);
    let before = bytes(&img);
    let (code, text) = fsck(&img, "-y");
    assert_eq!(code, 0, "{text}");
    assert!(bytes(&img) == before, "fsck -y wrote to a clean image");

    // A writable parent: fsck names it, -y makes the snapshot read-only, and the figures
    // still agree.
    let st = store(&img);
    st.debug_inject_records(vec![Record::SetFlags {
        id: snap,
        flags: blobstore::FLAG_THIN,
    }])
    .unwrap();
    drop(st);
    let (code, text) = fsck(&img, "-n");
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("parent-writable"), "{text}");
    assert_eq!(
        sharing_line(&text),
        sharing_line(&blobfs(&["df", img.to_str().unwrap()]).1)
    );
    let (code, text) = fsck(&img, "-y");
    assert_eq!(code, 1, "{text}");
    assert_df_fsck_agree(&img, 3, 4);
    let st = store(&img);
    assert!(st.open_blob(snap).unwrap().is_read_only());
    assert_eq!(st.family(snap).unwrap().children.len(), 2);
    drop(st);

    // A cycle (the snapshot reading through its own clone): the image no longer loads, df
    // fails cleanly, fsck reports it (no panic) and -y drops the record.
    let st = store(&img);
    st.debug_inject_records(vec![Record::SetParent {
        id: snap,
        parent: clone,
        through: 4,
    }])
    .unwrap();
    drop(st);
    let (code, _) = blobfs(&["df", img.to_str().unwrap()]);
    assert_ne!(code, 0);
    let (code, text) = fsck(&img, "-n");
    assert_eq!(code, 4, "{text}");
    assert!(
        text.contains("invalid-record") && text.contains("cycle"),
        "{text}"
    );
    let (code, text) = fsck(&img, "-y");
    assert_eq!(code, 1, "{text}");
    assert_df_fsck_agree(&img, 3, 4);
    let _ = plain;
}
