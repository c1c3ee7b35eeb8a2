//! The offline commands (dump, df, ls, stat, cp, export, import) run as a user would, on
//! images made with `blobfs mkfs` and filled with `blobfs cp` or through the library; and
//! random damage to the metadata of a small image, which `dump` and `ls -R` must survive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobfs::{FileSystem, FsOptions, ROOT_INO};
use blobstore::{Blobstore, FormatOptions, OpenOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_blobfs");

fn blobfs<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run blobfs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show<S: AsRef<OsStr>>(args: &[S]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// Asserts success and returns stdout.
fn ok<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> String {
    let o = blobfs(dir, args);
    assert!(
        o.status.success(),
        "blobfs {:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        show(args),
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Asserts a clean failure (exit code 1, one `blobfs: error:` line, no panic) and returns
/// stderr.
fn fails<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> String {
    let o = blobfs(dir, args);
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "blobfs {:?}: expected exit code 1, got {:?}\nstdout:\n{}\nstderr:\n{err}",
        show(args),
        o.status,
        text(&o.stdout)
    );
    assert!(
        !err.contains("panicked"),
        "{:?} panicked: {err}",
        show(args)
    );
    assert!(
        err.starts_with("blobfs: error: "),
        "{:?}: {err}",
        show(args)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

fn json<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> serde_json::Value {
    let out = ok(dir, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Sets atime and mtime (nanoseconds), not following symlinks.
fn set_times(p: &Path, sec: i64, nsec: i64) {
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let c = cpath(p);
    // SAFETY: a valid path and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn mknod(p: &Path, mode: u32, dev: u64) -> bool {
    let c = cpath(p);
    // SAFETY: a valid path.
    unsafe { libc::mknod(c.as_ptr(), mode, dev) == 0 }
}

/// A non-UTF-8 file name.
fn latin1_name() -> OsString {
    OsString::from_vec(b"caf\xe9".to_vec())
}

/// A tree with every kind of thing cp and export must keep. Returns whether a device node
/// could be made (root, and allowed here).
fn make_tree(src: &Path) -> bool {
    std::fs::create_dir_all(src.join("sub/deep")).unwrap();
    std::fs::create_dir(src.join("empty")).unwrap();
    std::fs::write(src.join("a.txt"), b"hello\n").unwrap();
    std::fs::set_permissions(src.join("a.txt"), PermissionsExt::from_mode(0o640)).unwrap();
    xattr::set(src.join("a.txt"), "user.color", b"blue").unwrap();
    std::fs::hard_link(src.join("a.txt"), src.join("hard")).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    std::os::unix::fs::symlink("../nowhere/x/", src.join("dangling")).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(src.join("sub/big"), &big).unwrap();
    std::fs::set_permissions(src.join("sub/big"), PermissionsExt::from_mode(0o4755)).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(src.join("sub/sparse")).unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(b"end").unwrap();
    }
    std::fs::write(src.join("sub/deep/empty-file"), b"").unwrap();
    std::fs::write(src.join(latin1_name()), b"latin-1 name\n").unwrap();
    assert!(mknod(&src.join("fifo"), libc::S_IFIFO | 0o620, 0));
    std::fs::set_permissions(src.join("fifo"), PermissionsExt::from_mode(0o620)).unwrap();
    let dev = is_root()
        && mknod(
            &src.join("null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
    if dev {
        std::fs::set_permissions(src.join("null"), PermissionsExt::from_mode(0o666)).unwrap();
    }
    xattr::set(src.join("sub"), "user.bin", &[0u8, 1, 2, 255]).unwrap();
    if is_root() {
        std::os::unix::fs::chown(src.join("sub"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(src.join("link"), Some(42), Some(43)).unwrap();
    }
    std::fs::set_permissions(src.join("sub"), PermissionsExt::from_mode(0o750)).unwrap();
    set_times(&src.join("a.txt"), 981_173_106, 123_456_789);
    set_times(&src.join("link"), 915_148_800, 1);
    set_times(&src.join("sub/big"), 1_000_000_000, 999_999_999);
    for d in ["sub/deep", "sub", "empty", ""] {
        set_times(&src.join(d), 1_600_000_000, 500);
    }
    dev
}

/// What a tree holds, path by path, as far as a copy must keep it.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    /// sha256 of a file, target of a symlink.
    content: String,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For the second and later names of a file: the first name.
    link_to: Option<Vec<u8>>,
    rdev: u64,
}

fn walk(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    fn go(
        root: &Path,
        rel: &[u8],
        out: &mut BTreeMap<Vec<u8>, Entry>,
        links: &mut BTreeMap<(u64, u64), Vec<u8>>,
    ) {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(rel))
        };
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let (kind, content) = if ft.is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            ("symlink", text(t.as_os_str().as_bytes()))
        } else if ft.is_file() {
            (
                "file",
                format!("{:x}", Sha256::digest(std::fs::read(&p).unwrap())),
            )
        } else if ft.is_dir() {
            ("dir", String::new())
        } else {
            ("special", format!("{:o}", m.mode() & libc::S_IFMT))
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = if ft.is_symlink() {
            Vec::new()
        } else {
            xattr::list(&p)
                .unwrap()
                .filter(|n| n.as_bytes().starts_with(b"user."))
                .map(|n| (n.as_bytes().to_vec(), xattr::get(&p, &n).unwrap().unwrap()))
                .collect()
        };
        xattrs.sort();
        let link_to = if !ft.is_dir() && m.nlink() > 1 {
            match links.get(&(m.dev(), m.ino())) {
                Some(first) => Some(first.clone()),
                None => {
                    links.insert((m.dev(), m.ino()), rel.to_vec());
                    None
                }
            }
        } else {
            None
        };
        out.insert(
            rel.to_vec(),
            Entry {
                kind,
                perm: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                size: if ft.is_dir() { 0 } else { m.len() },
                content,
                xattrs,
                link_to,
                rdev: m.rdev(),
            },
        );
        if ft.is_dir() {
            let mut names: Vec<Vec<u8>> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_vec())
                .collect();
            names.sort();
            for n in names {
                let mut r = rel.to_vec();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(&n);
                go(root, &r, out, links);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, b"", &mut out, &mut BTreeMap::new());
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (walk(a), walk(b));
    let ka: Vec<String> = ta.keys().map(|k| text(k)).collect();
    let kb: Vec<String> = tb.keys().map(|k| text(k)).collect();
    assert_eq!(ka, kb, "paths differ: {} vs {}", a.display(), b.display());
    for (k, ea) in &ta {
        assert_eq!(Some(ea), tb.get(k), "{:?} differs", text(k));
    }
}

fn mkfs(dir: &Path, name: &str, size: &str, cluster: &str) {
    ok(
        dir,
        &["mkfs", name, "--size", size, "--cluster-size", cluster],
    );
}

fn tree_paths(dump: &serde_json::Value) -> Vec<String> {
    dump["filesystem"]["tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn cp_in_then_inspect_with_dump_df_ls_stat() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let has_dev = make_tree(&d.join("src"));
    mkfs(d, "s.img", "64M", "64K");
    ok(d, &["cp", "-r", "src", "s.img:/"]);

    // dump: everything, parsable, naming the blobs and the tree.
    let v = json(d, &["dump", "s.img"]);
    assert_eq!(v["filesystem_type"], "blobfs");
    assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{}", v["errors"]);
    assert_eq!(v["log"]["complete"], true);
    assert!(v["superblocks"]["active_copy"].is_u64());
    let paths = tree_paths(&v);
    for p in [
        "/",
        "/src",
        "/src/a.txt",
        "/src/hard",
        "/src/link",
        "/src/sub/big",
        "/src/sub/deep/empty-file",
        "/src/caf\u{fffd}",
    ] {
        assert!(paths.contains(&p.to_string()), "{p} not in {paths:?}");
    }
    let tree = v["filesystem"]["tree"].as_array().unwrap();
    let a = tree.iter().find(|e| e["path"] == "/src/a.txt").unwrap();
    let hard = tree.iter().find(|e| e["path"] == "/src/hard").unwrap();
    assert_eq!(a["ino"], hard["ino"]);
    assert_eq!(a["nlink"], 2);
    assert_eq!(a["mode"], "0640");
    assert_eq!(a["mtime"], "2001-02-03T04:05:06.123456789Z");
    let link = tree.iter().find(|e| e["path"] == "/src/link").unwrap();
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["target"], "a.txt");
    let blob_ids: Vec<u64> = v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap())
        .collect();
    for e in tree {
        assert!(blob_ids.contains(&e["ino"].as_u64().unwrap()), "{e}");
    }
    assert!(v["filesystem"]["unreachable"]
        .as_array()
        .unwrap()
        .is_empty());
    // The checkpoint holds every blob; the root carries the filesystem marker.
    assert_eq!(
        v["checkpoint"]["blob_count"].as_u64().unwrap(),
        blob_ids.len() as u64
    );
    let root = &v["blobs"][0];
    assert_eq!(root["id"], 1);
    assert!(root["internal"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["key"] == "fs_marker"));
    assert!(root["internal"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["key"] == "dir_entry" && x["name"] == "src" && x["entry"]["type"] == "dir"));

    // --blob: that blob alone, and the records that name it.
    let ino = a["ino"].as_u64().unwrap();
    let one = json(
        d,
        &["dump", "s.img", "--blob", &format!("{ino:#x}"), "--pretty"],
    );
    assert_eq!(one["blob"]["id"], ino);
    assert_eq!(one["blob"]["xattrs"][0]["name"], "user.color");
    assert_eq!(one["blob"]["xattrs"][0]["value_hex"], "626c7565");
    let inode = one["blob"]["internal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["key"] == "inode")
        .unwrap();
    assert_eq!(inode["inode"]["nlink"], 2);
    assert!(!one["records"].as_array().unwrap().is_empty());
    assert!(one.get("blobs").is_none());
    let err = fails(d, &["dump", "s.img", "--blob", "999999"]);
    assert!(err.contains("not found"), "{err}");
    fails(d, &["dump", "s.img", "--blob", "zz"]);
    // --no-log: the figures without the records.
    let nolog = json(d, &["dump", "s.img", "--no-log"]);
    assert!(nolog["checkpoint"].get("records").is_none());
    assert!(nolog["log"].get("groups").is_none());
    assert!(nolog["log"]["stats"]["groups"].as_u64().unwrap() >= 1);
    assert_eq!(tree_paths(&nolog), paths);

    // df: the numbers add up, and agree with `info`.
    let df = json(d, &["df", "s.img", "--json"]);
    let n = |k: &str| df[k].as_u64().unwrap();
    let cs = n("cluster_size");
    assert_eq!(n("size_bytes"), n("clusters") * cs);
    assert_eq!(n("size_bytes"), 64 << 20);
    assert_eq!(n("used_bytes") + n("free_clusters") * cs, n("size_bytes"));
    assert_eq!(
        n("available_bytes") + n("reserved_bytes"),
        n("free_clusters") * cs
    );
    assert_eq!(
        n("use_percent"),
        (n("used_bytes") * 100).div_ceil(n("used_bytes") + n("available_bytes"))
    );
    // a.txt, big, sparse, empty-file, café (hard is a.txt) + fifo (+ null).
    assert_eq!(n("files"), 5);
    assert_eq!(n("dirs"), 5); // /, src, sub, deep, empty
    assert_eq!(n("symlinks"), 2);
    assert_eq!(n("other"), if has_dev { 2 } else { 1 });
    assert_eq!(
        n("blobs"),
        n("files") + n("dirs") + n("symlinks") + n("other")
    );
    let info = json(d, &["info", "s.img", "--json"]);
    assert_eq!(info["used_clusters"].as_u64().unwrap(), n("used_clusters"));
    assert_eq!(info["blob_count"].as_u64().unwrap(), n("blobs"));
    let text_df = ok(d, &["df", "s.img"]);
    assert!(
        text_df.contains("Use%") && text_df.contains("64 MiB"),
        "{text_df}"
    );
    assert!(
        text_df.contains("5 files, 5 directories, 2 symlinks"),
        "{text_df}"
    );

    // ls.
    let ls = ok(d, &["ls", "s.img", "/src"]);
    let names: Vec<&str> = ls.lines().collect();
    let mut expect = vec![
        "a.txt",
        "caf\u{fffd}",
        "dangling",
        "empty",
        "fifo",
        "hard",
        "link",
        "sub",
    ];
    if has_dev {
        expect.push("null");
    }
    expect.sort();
    assert_eq!(names, expect);
    let ll = ok(d, &["ls", "-l", "s.img", "/src"]);
    let line = |name: &str| {
        ll.lines()
            .find(|l| {
                l.split(" -> ")
                    .next()
                    .unwrap()
                    .ends_with(&format!(" {name}"))
            })
            .unwrap_or_else(|| panic!("{name} not in:\n{ll}"))
            .to_string()
    };
    let la = line("a.txt");
    assert!(la.starts_with("-rw-r----- 2 "), "{la}");
    assert!(la.contains(" 6 2001-02-0"), "{la}");
    assert!(line("link").starts_with("lrwxrwxrwx 1 "));
    assert!(line("link").ends_with("link -> a.txt"));
    assert!(line("sub").starts_with("drwxr-x--- 3 "));
    assert!(line("fifo").starts_with("prw--w---- 1 "));
    if is_root() {
        assert!(line("sub").contains(" 1234 5678 "), "{}", line("sub"));
    }
    let lr = ok(d, &["ls", "-R", "s.img", "/src"]);
    assert!(lr.starts_with("/src:\n"), "{lr}");
    assert!(lr.contains("\n\n/src/sub:\nbig\ndeep\nsparse\n"), "{lr}");
    assert!(lr.contains("\n\n/src/sub/deep:\nempty-file\n"), "{lr}");
    let big = ok(d, &["ls", "-l", "s.img", "/src/sub/big"]);
    assert!(big.starts_with("-rwsr-xr-x 1 "), "{big}");
    assert!(big.contains(" 300000 2001-09-0"), "{big}");
    assert!(big.trim_end().ends_with(" /src/sub/big"), "{big}");
    let la = ok(d, &["ls", "-a", "-i", "s.img", "/"]);
    assert!(
        la.lines().any(|l| l.trim_start().starts_with("1 .")),
        "{la}"
    );

    // stat.
    let st = ok(d, &["stat", "s.img", "/src/a.txt"]);
    assert!(st.contains("  Type: regular file"), "{st}");
    assert!(st.contains(" Links: 2"), "{st}");
    assert!(st.contains("  Mode: 0640 (-rw-r-----)"), "{st}");
    assert!(st.contains(".123456789 "), "{st}");
    assert!(st.contains(" Xattr: user.color = \"blue\""), "{st}");
    let sj = json(d, &["stat", "s.img", "/src/sub", "--json"]);
    assert_eq!(sj["kind"], "dir");
    assert_eq!(sj["mode"], "0750");
    assert_eq!(sj["nlink"], 3);
    assert_eq!(sj["xattrs"][0]["value_hex"], "000102ff");
    assert_eq!(sj["mtime"], "2020-09-13T12:26:40.000000500Z");
    let sl = json(d, &["stat", "s.img", "/src/dangling", "--json"]);
    assert_eq!(sl["target"], "../nowhere/x/");
    let sp = json(d, &["stat", "s.img", "/src/sub/sparse", "--json"]);
    assert_eq!(sp["size"], (5 << 20) + 3);
    // Runs of zeroes stayed holes: one 64 KiB cluster holds the last bytes.
    assert_eq!(sp["blob_allocated_clusters"], 1);
    if has_dev {
        let sn = json(d, &["stat", "s.img", "/src/null", "--json"]);
        assert_eq!(sn["kind"], "char_device");
        assert_eq!(
            (sn["rdev_major"].clone(), sn["rdev_minor"].clone()),
            (1.into(), 3.into())
        );
    }
}

#[test]
fn cp_round_trip_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("src"));
    mkfs(d, "s.img", "64M", "64K");
    // Quiet in pipes: no progress bar unless stderr is a terminal.
    for args in [
        vec!["cp", "-r", "src", "s.img:/"],
        vec!["cp", "-r", "s.img:/src", "out"],
    ] {
        let o = blobfs(d, &args);
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        assert!(
            o.stdout.is_empty() && o.stderr.is_empty(),
            "{args:?}: output"
        );
    }
    assert_same_tree(&d.join("src"), &d.join("out"));

    // Into an existing directory: under the source's name; contents with `/.`.
    std::fs::create_dir(d.join("into")).unwrap();
    ok(d, &["cp", "-r", "s.img:/src/sub", "into"]);
    assert_same_tree(&d.join("src/sub"), &d.join("into/sub"));
    ok(d, &["cp", "-r", "s.img:/src/sub/.", "contents"]);
    assert_same_tree(&d.join("src/sub"), &d.join("contents"));
    // A trailing / on a missing DST: a directory source becomes it (as cp), a file
    // source needs --mkpath.
    ok(d, &["cp", "-r", "s.img:/src/sub", "newdir/"]);
    assert_same_tree(&d.join("src/sub"), &d.join("newdir"));
    let e = fails(d, &["cp", "s.img:/src/a.txt", "nodir/"]);
    assert!(e.contains("--mkpath"), "{e}");
    ok(d, &["cp", "--mkpath", "s.img:/src/a.txt", "nodir/"]);
    assert_eq!(std::fs::read(d.join("nodir/a.txt")).unwrap(), b"hello\n");

    // Single files both ways, and to standard output.
    std::fs::write(d.join("one"), b"one file\n").unwrap();
    set_times(&d.join("one"), 1_234_567_890, 42);
    ok(d, &["cp", "one", "s.img:/src/sub/"]);
    ok(d, &["cp", "s.img:/src/sub/one", "one.back"]);
    assert_eq!(std::fs::read(d.join("one.back")).unwrap(), b"one file\n");
    let m = std::fs::metadata(d.join("one.back")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 42));
    let o = blobfs(d, &["cp", "s.img:/src/sub/big", "-"]);
    assert!(o.status.success());
    assert_eq!(o.stdout, std::fs::read(d.join("src/sub/big")).unwrap());

    // No overwriting without --force (in and out); --force replaces.
    std::fs::write(d.join("one"), b"changed\n").unwrap();
    let e = fails(d, &["cp", "one", "s.img:/src/sub/one"]);
    assert!(e.contains("exists (--force replaces it)"), "{e}");
    ok(d, &["cp", "--force", "one", "s.img:/src/sub/one"]);
    let e = fails(d, &["cp", "s.img:/src/sub/one", "one.back"]);
    assert!(e.contains("exists"), "{e}");
    ok(d, &["cp", "-f", "s.img:/src/sub/one", "one.back"]);
    assert_eq!(std::fs::read(d.join("one.back")).unwrap(), b"changed\n");

    // Parents: refused, or made with --mkpath.
    let e = fails(d, &["cp", "one", "s.img:/x/y/one"]);
    assert!(e.contains("--mkpath"), "{e}");
    ok(d, &["cp", "--mkpath", "one", "s.img:/x/y/one"]);
    ok(d, &["cp", "--mkpath", "one", "src/a.txt", "s.img:/z/w/"]);
    let ls = ok(d, &["ls", "s.img", "/z/w"]);
    assert_eq!(ls, "a.txt\none\n");
    ok(d, &["cp", "--mkpath", "s.img:/x/y/one", "deep/er/one"]);
    assert_eq!(std::fs::read(d.join("deep/er/one")).unwrap(), b"changed\n");

    // Mistakes.
    let e = fails(d, &["cp", "src", "s.img:/q"]);
    assert!(e.contains("is a directory (use -r"), "{e}");
    let e = fails(d, &["cp", "-r", "s.img:/nope", "q"]);
    assert!(e.contains("s.img:/nope: no such file or directory"), "{e}");
    let e = fails(d, &["cp", "nope", "s.img:/q"]);
    assert!(e.contains("nope: no such file or directory"), "{e}");
    let e = fails(d, &["cp", "one", "two"]);
    assert!(e.contains("IMAGE:/PATH"), "{e}");
    let e = fails(d, &["cp", "s.img:/src/a.txt", "s.img:/b"]);
    assert!(e.contains("not supported"), "{e}");
    let e = fails(d, &["cp", "one", "src/a.txt", "s.img:/src/a.txt"]);
    assert!(e.contains("not a directory"), "{e}");
    let e = fails(d, &["cp", "s.img:/src/sub", "-"]);
    assert!(e.contains("not a regular file"), "{e}");
}

fn tar_listing(d: &Path, tar: &str) -> Option<String> {
    let o = Command::new("tar")
        .arg("tvf")
        .arg(tar)
        .current_dir(d)
        .output()
        .ok()?;
    o.status.success().then(|| text(&o.stdout))
}

#[test]
fn export_import_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let has_dev = make_tree(&d.join("src"));
    mkfs(d, "a.img", "64M", "64K");
    ok(d, &["import", "a.img", "src", "--to", "/tree"]);
    // The import kept everything of the host tree (and the root's attributes).
    ok(d, &["cp", "-r", "a.img:/tree", "check"]);
    assert_same_tree(&d.join("src"), &d.join("check"));

    // tar: export -> import into a fresh image -> export gives the same archive.
    let o = blobfs(d, &["export", "a.img", "-o", "a.tar"]);
    assert!(o.status.success() && o.stdout.is_empty() && o.stderr.is_empty());
    mkfs(d, "b.img", "64M", "64K");
    ok(d, &["import", "b.img", "a.tar"]);
    ok(d, &["export", "b.img", "-o", "b.tar"]);
    let (ta, tb) = (
        std::fs::read(d.join("a.tar")).unwrap(),
        std::fs::read(d.join("b.tar")).unwrap(),
    );
    assert!(ta == tb, "the archives differ after a round trip");
    if let Some(list) = tar_listing(d, "a.tar") {
        assert_eq!(Some(list.clone()), tar_listing(d, "b.tar"));
        assert!(list.contains("tree/hard link to tree/a.txt"), "{list}");
        assert!(list.contains("tree/link -> a.txt"), "{list}");
        assert!(list.contains("-rwsr-xr-x"), "{list}");
        if is_root() {
            assert!(list.contains("1234/5678"), "{list}");
        }
        if has_dev {
            let null = list.lines().find(|l| l.ends_with(" tree/null")).unwrap();
            assert!(
                null.starts_with("crw-rw-rw- 0/0 ") && null.contains(" 1,3 "),
                "{null}"
            );
        }
    }
    // GNU tar reads our xattrs back.
    std::fs::create_dir(d.join("gnu")).unwrap();
    let gnu = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "-xf",
            "a.tar",
            "-C",
            "gnu",
        ])
        .current_dir(d)
        .status();
    if gnu.is_ok_and(|s| s.success()) {
        assert_eq!(
            xattr::get(d.join("gnu/tree/a.txt"), "user.color").unwrap(),
            Some(b"blue".to_vec())
        );
    }

    // Through a pipe: `export -o -` | `import -`.
    mkfs(d, "c.img", "64M", "64K");
    let mut export = Command::new(BIN)
        .args(["export", "a.img", "-o", "-"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new(BIN)
        .args(["import", "c.img", "-"])
        .current_dir(d)
        .stdin(export.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(export.wait().unwrap().success());
    assert!(import.status.success(), "{}", text(&import.stderr));
    ok(d, &["export", "c.img", "-o", "c.tar"]);
    assert!(std::fs::read(d.join("c.tar")).unwrap() == ta);

    // A directory: export to it, import it into a fresh image, export that as tar.
    ok(d, &["export", "a.img", "-o", "outdir/"]);
    assert_same_tree(&d.join("src"), &d.join("outdir/tree"));
    mkfs(d, "e.img", "64M", "64K");
    ok(d, &["import", "e.img", "outdir"]);
    ok(d, &["export", "e.img", "-o", "e.tar"]);
    assert!(
        std::fs::read(d.join("e.tar")).unwrap() == ta,
        "the archive of a directory round trip differs"
    );

    // A subtree, and a single file.
    ok(d, &["export", "a.img", "/tree/sub", "-o", "sub.tar"]);
    mkfs(d, "f.img", "64M", "64K");
    ok(d, &["import", "f.img", "sub.tar", "--to", "/x/y"]);
    ok(d, &["cp", "-r", "f.img:/x/y", "suback"]);
    assert_same_tree(&d.join("src/sub"), &d.join("suback"));
    ok(d, &["export", "a.img", "/tree/a.txt", "-o", "file.tar"]);
    ok(d, &["import", "f.img", "file.tar", "--to", "/x/y"]);
    assert_eq!(ok(d, &["cp", "f.img:/x/y/a.txt", "-"]), "hello\n");

    // Refusals: an existing archive, an existing file in the filesystem.
    let e = fails(d, &["export", "a.img", "-o", "a.tar"]);
    assert!(e.contains("exists (--force replaces it)"), "{e}");
    ok(d, &["export", "a.img", "-o", "a.tar", "--force"]);
    let e = fails(d, &["import", "f.img", "file.tar", "--to", "/x/y"]);
    assert!(e.contains("exists"), "{e}");
    ok(
        d,
        &["import", "f.img", "file.tar", "--to", "/x/y", "--force"],
    );
    let e = fails(d, &["export", "a.img", "/nope", "-o", "n.tar"]);
    assert!(e.contains("a.img:/nope: no such file or directory"), "{e}");
    assert!(!d.join("n.tar").exists());
    let e = fails(d, &["import", "f.img", "nope.tar"]);
    assert!(e.contains("no such file"), "{e}");
    std::fs::write(d.join("junk.tar"), vec![7u8; 3000]).unwrap();
    fails(d, &["import", "f.img", "junk.tar"]);
}

#[test]
fn wrong_images_and_locked_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &["mkfs", "bare.img", "--size", "16M", "--blobstore-only"],
    );
    for args in [
        vec!["ls", "bare.img"],
        vec!["stat", "bare.img", "/"],
        vec!["cp", "bare.img:/x", "y"],
        vec!["export", "bare.img", "-o", "x.tar"],
    ] {
        let e = fails(d, &args);
        assert!(e.contains("not a BlobFS filesystem"), "{args:?}: {e}");
    }
    std::fs::write(d.join("f"), b"x").unwrap();
    let e = fails(d, &["cp", "f", "bare.img:/f"]);
    assert!(e.contains("not a BlobFS filesystem"), "{e}");
    // dump and df work on a bare blobstore.
    let v = json(d, &["dump", "bare.img"]);
    assert_eq!(v["filesystem_type"], "blobstore");
    assert!(v["filesystem"].is_null());
    assert_eq!(v["blobs"].as_array().unwrap().len(), 0);
    let df = json(d, &["df", "bare.img", "--json"]);
    assert_eq!(df["filesystem"], "none");
    assert!(df.get("files").is_none());
    // Not an image at all.
    std::fs::write(d.join("zero.img"), vec![0u8; 1 << 20]).unwrap();
    let v = json(d, &["dump", "zero.img"]);
    assert!(v["superblocks"]["active_copy"].is_null());
    assert!(
        v["errors"][0].as_str().unwrap().contains("not a blobstore"),
        "{v}"
    );
    fails(d, &["ls", "zero.img"]);
    fails(d, &["df", "zero.img"]);
    let e = fails(d, &["ls", "missing.img"]);
    assert!(e.contains("no such file"), "{e}");
    let e = fails(d, &["dump", "mem:16M"]);
    assert!(e.contains("mem:"), "{e}");

    // A mounted image (its lock held exclusively) is refused by readers and writers.
    mkfs(d, "s.img", "16M", "64K");
    let f = std::fs::File::open(d.join("s.img")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    let t0 = Instant::now();
    let handles: Vec<_> = [
        vec!["ls", "s.img"],
        vec!["dump", "s.img"],
        vec!["import", "s.img", "."],
    ]
    .into_iter()
    .map(|args| {
        let d = d.to_path_buf();
        std::thread::spawn(move || fails(&d, &args))
    })
    .collect();
    for h in handles {
        let e = h.join().unwrap();
        assert!(e.contains("in use by another process"), "{e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    drop(f);
    ok(d, &["ls", "s.img"]);
}

/// Byte offsets of `len` bytes at `off` in the image.
fn damage_at(img: &mut [u8], off: usize, len: usize, rng: &mut SmallRng) {
    let end = (off + len).min(img.len());
    match rng.gen_range(0..4) {
        0 => {
            let i = rng.gen_range(off..end);
            img[i] ^= 1 << rng.gen_range(0..8);
        }
        1 => {
            let i = rng.gen_range(off..end);
            img[i] = rng.gen();
        }
        2 => {
            let i = rng.gen_range(off..end);
            let n = rng.gen_range(8..512).min(end - i);
            img[i..i + n].fill(0);
        }
        _ => {
            let i = rng.gen_range(off..end);
            let n = rng.gen_range(4..256).min(end - i);
            rng.fill(&mut img[i..i + n]);
        }
    }
}

/// Runs blobfs with a deadline; stdout and stderr go to files (no pipe to fill up).
fn run_limited(dir: &Path, args: &[&str], limit: Duration) -> (Option<i32>, Vec<u8>, String) {
    let out = std::fs::File::create(dir.join("out")).unwrap();
    let err = std::fs::File::create(dir.join("err")).unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("blobfs {args:?} hung (killed after {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.signal().is_none(),
        "blobfs {args:?} died of signal {:?}",
        status.signal()
    );
    (
        status.code(),
        std::fs::read(dir.join("out")).unwrap(),
        text(&std::fs::read(dir.join("err")).unwrap()),
    )
}

/// A small BlobFS image with a checkpoint and, after it, several committed log groups
/// (no close: the log stays as a crash would leave it).
fn small_image(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let spec = format!("file:{}", path.display());
    let dev = driver::open_uri(&spec).unwrap();
    FileSystem::format(
        dev,
        &FormatOptions {
            cluster_size: 16 << 10,
            ..FormatOptions::default()
        },
    )
    .unwrap();
    let fs = FileSystem::open(
        driver::open_uri(&spec).unwrap(),
        FsOptions {
            sync_interval: None,
            store: OpenOptions {
                background_checkpoint: false,
                checkpoint_bytes: Some(256 << 10),
                ..OpenOptions::default()
            },
            ..FsOptions::default()
        },
    )
    .unwrap();
    let d = fs.mkdir(ROOT_INO, b"dir", 0o755, 1, 2).unwrap();
    let sub = fs.mkdir(d.ino, b"sub", 0o700, 0, 0).unwrap();
    for i in 0..6u8 {
        let f = fs
            .create(
                if i % 2 == 0 { d.ino } else { sub.ino },
                &[b'f', b'0' + i],
                0o644,
                0,
                0,
            )
            .unwrap();
        fs.write(f.ino, 0, &vec![i; 1000 * usize::from(i + 1)])
            .unwrap();
        fs.setxattr(f.ino, b"user.n", &[i], false, false).unwrap();
        fs.fsync(f.ino).unwrap();
    }
    fs.symlink(d.ino, b"ln", b"sub/f1", 0, 0).unwrap();
    fs.store().checkpoint().unwrap();
    // After the checkpoint: groups in the log.
    for i in 0..4u8 {
        let f = fs.create(ROOT_INO, &[b'g', b'0' + i], 0o600, 0, 0).unwrap();
        fs.write(f.ino, 0, b"after the checkpoint").unwrap();
        fs.fsync(f.ino).unwrap();
    }
    let g0 = fs.lookup(ROOT_INO, b"g0").unwrap();
    fs.link(g0.ino, d.ino, b"g0-link").unwrap();
    fs.rename(ROOT_INO, b"g1", sub.ino, b"g1-moved", Default::default())
        .unwrap();
    fs.unlink(ROOT_INO, b"g2").unwrap();
    fs.sync_all().unwrap();
    drop(fs);
}

#[test]
fn random_damage_to_metadata_never_panics_or_hangs() {
    const CASES: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pristine_path = d.join("pristine.img");
    small_image(&pristine_path);
    let pristine = std::fs::read(&pristine_path).unwrap();
    // The metadata regions: both superblock copies, and the log's segments as far as
    // they are written.
    let layout = {
        let dev = driver::open_uri(&format!("file:{}", pristine_path.display())).unwrap();
        let store = Blobstore::open(
            dev,
            OpenOptions {
                read_only: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        store.metadata_layout()
    };
    let cs = layout.cluster_size as usize;
    let mut regions: Vec<(usize, usize)> = vec![(0, 8192)];
    for s in &layout.log_segments {
        let start = s.0 as usize * cs;
        let len = if *s == layout.tail.0 {
            (layout.tail.1 as usize + 4096).min(cs)
        } else {
            cs
        };
        regions.push((start, len));
    }
    assert!(
        layout.log_segments.len() >= 2 || layout.tail.1 > 0,
        "the test image should have a log after its checkpoint"
    );
    // The pristine image dumps without errors and has groups after the checkpoint.
    let v = json(d, &["dump", "pristine.img"]);
    assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{}", v["errors"]);
    assert!(v["log"]["groups"].as_array().unwrap().len() >= 4);

    let mut rng = SmallRng::seed_from_u64(0x000f_f11e);
    let limit = Duration::from_secs(20);
    let (mut dump_with_errors, mut ls_failed, mut lenient, mut walked) = (0, 0, 0, 0);
    let t0 = Instant::now();
    let (mut fsck_found, mut fsck_repaired) = (0, 0);
    for case in 0..CASES {
        let mut img = pristine.clone();
        for _ in 0..rng.gen_range(1..=4) {
            // Superblocks a quarter of the time, the snapshot segment a third, the rest.
            let r = match rng.gen_range(0..12) {
                0..=2 => regions[0],
                3..=6 => regions[1],
                _ => regions[rng.gen_range(1..regions.len())],
            };
            damage_at(&mut img, r.0, r.1, &mut rng);
        }
        std::fs::write(d.join("case.img"), &img).unwrap();

        let dump_args: &[&str] = if case % 2 == 0 {
            &["dump", "case.img"]
        } else {
            &["dump", "case.img", "--no-log", "--pretty"]
        };
        let (code, out, err) = run_limited(d, dump_args, limit);
        assert!(
            !err.contains("panicked"),
            "case {case}: dump panicked: {err}"
        );
        assert_eq!(code, Some(0), "case {case}: dump failed: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("case {case}: dump wrote bad JSON ({e})"));
        if !v["errors"].as_array().unwrap().is_empty() {
            dump_with_errors += 1;
        }
        match v["log"]["read_by"].as_str() {
            Some("lenient_replay") => lenient += 1,
            Some("block_walk") => walked += 1,
            _ => {}
        }

        let (code, _, err) = run_limited(d, &["ls", "-R", "-l", "case.img", "/"], limit);
        assert!(!err.contains("panicked"), "case {case}: ls panicked: {err}");
        match code {
            Some(0) => {}
            Some(1) => {
                ls_failed += 1;
                assert!(err.contains("blobfs: error: "), "case {case}: {err}");
            }
            other => panic!("case {case}: ls exited with {other:?}: {err}"),
        }
        // fsck -n: clean, errors found, or an operational error (no store at all); never
        // a panic or a hang.
        let (code, _, err) = run_limited(d, &["fsck", "-n", "case.img"], limit);
        assert!(
            !err.contains("panicked"),
            "case {case}: fsck panicked: {err}"
        );
        assert!(
            matches!(code, Some(0 | 4 | 8)),
            "case {case}: fsck -n exited with {code:?}: {err}"
        );
        if code == Some(4) {
            fsck_found += 1;
        }
        if case % 4 == 2 {
            let (code, _, err) = run_limited(d, &["fsck", "-y", "case.img"], limit);
            assert!(
                !err.contains("panicked"),
                "case {case}: fsck -y panicked: {err}"
            );
            assert!(
                matches!(code, Some(0 | 1 | 4 | 8)),
                "case {case}: fsck -y exited with {code:?}: {err}"
            );
            if code == Some(1) {
                // What was repaired now checks clean.
                let (code, out, err) = run_limited(d, &["fsck", "-n", "case.img"], limit);
                assert_eq!(
                    code,
                    Some(0),
                    "case {case}: not clean after repair: {}{err}",
                    String::from_utf8_lossy(&out)
                );
                fsck_repaired += 1;
            }
        }
        if case % 4 == 0 {
            let (code, _, err) = run_limited(
                d,
                &["export", "case.img", "-o", "case.tar", "--force"],
                limit,
            );
            assert!(
                !err.contains("panicked"),
                "case {case}: export panicked: {err}"
            );
            assert!(
                matches!(code, Some(0 | 1)),
                "case {case}: export: {code:?} {err}"
            );
        }
    }
    println!(
        "random-damage: cases={CASES} dump_reported_errors={dump_with_errors} \
         lenient_replays={lenient} block_walks={walked} ls_failed_cleanly={ls_failed} \
         fsck_found={fsck_found} fsck_repaired={fsck_repaired} panics=0 hangs=0 \
         in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(dump_with_errors > CASES / 4, "too few cases found damage");
}

#[test]
fn damaged_images_are_dumped_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    small_image(&d.join("s.img"));
    let pristine = std::fs::read(d.join("s.img")).unwrap();
    let v = json(d, &["dump", "s.img"]);
    let ckpt = v["checkpoint"]["segment"].as_u64().unwrap() as usize;
    let cs = v["superblocks"]["copies"][0]["cluster_size"]
        .as_u64()
        .unwrap() as usize;

    // Both superblocks gone: no store, but still JSON.
    let mut img = pristine.clone();
    img[..8192].fill(0);
    std::fs::write(d.join("s.img"), &img).unwrap();
    let v = json(d, &["dump", "s.img", "--pretty"]);
    assert!(v["superblocks"]["active_copy"].is_null());
    assert!(!v["errors"].as_array().unwrap().is_empty());
    fails(d, &["ls", "s.img"]);

    // One copy damaged: the other is used, the damage is named.
    let mut img = pristine.clone();
    let active = {
        std::fs::write(d.join("s.img"), &pristine).unwrap();
        json(d, &["dump", "s.img"])["superblocks"]["active_copy"]
            .as_u64()
            .unwrap() as usize
    };
    let other = 1 - active;
    img[other * 4096 + 100] ^= 0xff;
    std::fs::write(d.join("s.img"), &img).unwrap();
    let v = json(d, &["dump", "s.img"]);
    assert_eq!(v["superblocks"]["active_copy"], active);
    let c = &v["superblocks"]["copies"][other];
    assert_eq!(c["valid"], false);
    assert!(c["error"].as_str().unwrap().contains("CRC"), "{c}");
    ok(d, &["ls", "-R", "s.img"]);

    // The checkpoint's first block damaged: the log cannot be replayed.
    let mut img = pristine.clone();
    img[ckpt * cs + 60] ^= 0x10;
    std::fs::write(d.join("s.img"), &img).unwrap();
    let v = json(d, &["dump", "s.img"]);
    assert_eq!(v["log"]["complete"], false);
    assert!(v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e.as_str().unwrap().contains("log replay failed")));
    assert_eq!(v["log"]["tail"]["reason"], "BadCrc");
    assert_eq!(v["log"]["read_by"], "block_walk");
    let e = fails(d, &["ls", "s.img"]);
    assert!(e.contains("cannot open the filesystem"), "{e}");
    let e = fails(d, &["df", "s.img"]);
    assert!(e.contains("corruption"), "{e}");
}
