//! The stock RocksDB tools (Debian's rocksdb-tools 7.8.3) on BlobFS through
//! `LD_PRELOAD=libblobfs_rocksdb.so` and `--fs_uri=blobfs://IMAGE`.

mod common;

use common::*;
use std::path::Path;

/// Small enough to be quick, big enough for flushes, SST files and compactions.
const NUM: usize = 20_000;

fn bench_args(uri: &str, benchmarks: &str) -> Vec<String> {
    [
        format!("--fs_uri={uri}"),
        format!("--benchmarks={benchmarks}"),
        format!("--num={NUM}"),
        "--value_size=100".into(),
        "--db=/db".into(),
        // 256 KiB memtables and files: several flushes and compactions.
        "--write_buffer_size=262144".into(),
        "--target_file_size_base=262144".into(),
        "--max_bytes_for_level_base=1048576".into(),
        "--threads=1".into(),
    ]
    .to_vec()
}

/// The `N` of "readseq : ... N operations;" (the keys a full scan found).
fn readseq_count(stdout: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("readseq"))
        .unwrap_or_else(|| panic!("no readseq line in:\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.starts_with("operations"))
        .unwrap_or_else(|| panic!("no operation count in {line:?}"));
    words[i - 1]
        .parse()
        .unwrap_or_else(|_| panic!("bad count in {line:?}"))
}

fn ldb_scan_count(fx: &Fixture) -> usize {
    let o = tool(
        "ldb",
        &[
            format!("--fs_uri={}", fx.uri()),
            "--db=/db".into(),
            "scan".into(),
        ],
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", show("ldb scan", &o));
    assert!(
        text(&o.stderr).contains(&factory_line(&fx.image)),
        "{}",
        show("ldb scan", &o)
    );
    text(&o.stdout).lines().count()
}

#[test]
fn db_bench_then_ldb_and_fsck() {
    require_tools();
    let fx = Fixture::new();
    let o = tool(
        "db_bench",
        &bench_args(
            &fx.uri(),
            "fillseq,fillrandom,overwrite,readrandom,readseq,verifychecksum",
        ),
        fx.dir.path(),
    );
    let out = text(&o.stdout);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{}", show("db_bench", &o));
    assert!(
        err.contains(&factory_line(&fx.image)),
        "the blobfs factory was not used:\n{}",
        show("db_bench", &o)
    );
    for b in [
        "fillseq",
        "fillrandom",
        "overwrite",
        "readrandom",
        "readseq",
        "verifychecksum",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(b))
            .unwrap_or_else(|| panic!("no {b} result:\n{}", show("db_bench", &o)));
        eprintln!("{line}");
    }
    // fillrandom starts a fresh DB; overwrite adds random keys: readseq counts what is
    // there, and a new process (ldb) must find exactly that.
    let keys = readseq_count(&out);
    assert!(keys > NUM / 2 && keys <= NUM, "readseq found {keys}");
    assert_eq!(ldb_scan_count(&fx), keys, "ldb scan vs db_bench readseq");

    let names = fx.ls("/db");
    for must in ["CURRENT", "IDENTITY", "LOCK", "LOG"] {
        assert!(names.iter().any(|n| n == must), "no {must} in {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("MANIFEST-")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.ends_with(".sst")), "{names:?}");
    fx.assert_fsck_clean();

    // Reopened: the same keys, and verifychecksum of every SST.
    let o = tool(
        "db_bench",
        &[
            bench_args(&fx.uri(), "readseq,verifychecksum"),
            vec!["--use_existing_db=1".into()],
        ]
        .concat(),
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", show("db_bench reopen", &o));
    assert_eq!(readseq_count(&text(&o.stdout)), keys);
    fx.assert_fsck_clean();
}

#[test]
fn sst_dump_reads_an_sst_through_the_uri() {
    require_tools();
    let fx = Fixture::new();
    let o = tool("db_bench", &bench_args(&fx.uri(), "fillseq"), fx.dir.path());
    assert!(o.status.success(), "{}", show("db_bench fillseq", &o));
    let ssts: Vec<String> = fx
        .ls("/db")
        .into_iter()
        .filter(|n| n.ends_with(".sst"))
        .collect();
    assert!(!ssts.is_empty(), "no SST files after fillseq");
    let file = format!("/db/{}", ssts[0]);
    let uri = format!("--fs_uri={}", fx.uri());

    let o = tool(
        "sst_dump",
        &[
            uri.clone(),
            format!("--file={file}"),
            "--command=verify".into(),
        ],
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", show("sst_dump verify", &o));
    assert!(
        text(&o.stderr).contains(&factory_line(&fx.image)),
        "{}",
        show("sst_dump", &o)
    );
    assert!(
        text(&o.stdout).contains("The file is ok"),
        "{}",
        show("sst_dump verify", &o)
    );

    let o = tool(
        "sst_dump",
        &[
            uri.clone(),
            format!("--file={file}"),
            "--show_properties".into(),
        ],
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", show("sst_dump properties", &o));
    let out = text(&o.stdout);
    let entries: usize = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("# entries: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no entry count:\n{out}"));
    assert!(entries > 0, "{out}");

    let o = tool(
        "sst_dump",
        &[uri, format!("--file={file}"), "--command=scan".into()],
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", show("sst_dump scan", &o));
    let scanned = text(&o.stdout)
        .lines()
        .filter(|l| l.contains(" => "))
        .count();
    assert_eq!(scanned, entries, "{}", show("sst_dump scan", &o));
    fx.assert_fsck_clean();
}

/// A failing URI must give a message naming the image and a normal non-zero exit (the
/// stock tools crash with SIGSEGV when a factory returns nothing without an error).
fn assert_clean_failure(name: &str, o: &std::process::Output, must: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.signal().is_none() && o.status.code() != Some(139),
        "{name} crashed: {}",
        show(name, o)
    );
    assert!(!o.status.success(), "{name} succeeded: {}", show(name, o));
    let err = text(&o.stderr);
    for m in must {
        assert!(
            err.contains(m),
            "{name}: {m:?} not in the message: {}",
            show(name, o)
        );
    }
}

#[test]
fn bad_images_give_clear_errors() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let missing = d.join("missing.img");
    let junk = d.join("junk.img");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).expect("write junk");
    let tiny = d.join("tiny.img");
    std::fs::write(&tiny, b"hello").expect("write tiny");
    let bare = d.join("bare.img");
    blobfs_ok(&[
        "mkfs",
        bare.to_str().expect("utf-8"),
        "--size",
        "64M",
        "--blobstore-only",
    ]);

    let cases: [(&Path, &str); 4] = [
        (&missing, "no such image file"),
        (&junk, "not a BlobFS filesystem"),
        (&tiny, "too small"),
        (&bare, "not a BlobFS filesystem"),
    ];
    for (image, what) in cases {
        let shown = image.display().to_string();
        let uri = format!("--fs_uri=blobfs://{shown}");
        let o = tool(
            "db_bench",
            &[
                uri.clone(),
                "--benchmarks=fillseq".into(),
                "--num=10".into(),
                "--db=/db".into(),
            ],
            d,
        );
        assert_clean_failure("db_bench", &o, &[&shown, what]);
        let o = tool("ldb", &[uri.clone(), "--db=/db".into(), "scan".into()], d);
        assert_clean_failure("ldb", &o, &[&shown, what]);
        let o = tool("sst_dump", &[uri, "--file=/db/000001.sst".into()], d);
        assert_clean_failure("sst_dump", &o, &[&shown, what]);
    }
    // Nothing was created or changed.
    assert!(!missing.exists());
    assert_eq!(std::fs::read(&tiny).expect("read tiny"), b"hello");

    // A URI without an image path.
    let o = tool(
        "db_bench",
        &[
            "--fs_uri=blobfs://".into(),
            "--benchmarks=fillseq".into(),
            "--num=10".into(),
        ],
        d,
    );
    assert_clean_failure("db_bench", &o, &["no image path", "blobfs:///"]);
}

#[test]
fn an_image_in_use_is_refused() {
    require_tools();
    let fx = Fixture::new();
    // This process holds the image (and its flock), as a running DB would.
    let lease = blobfs_rocksdb::Lease::open(&fx.uri()).expect("open the image");
    let o = tool("db_bench", &bench_args(&fx.uri(), "fillseq"), fx.dir.path());
    assert_clean_failure(
        "db_bench",
        &o,
        &[fx.image_str(), "in use by another process"],
    );
    drop(lease);
    let o = tool("db_bench", &bench_args(&fx.uri(), "fillseq"), fx.dir.path());
    assert!(o.status.success(), "{}", show("db_bench after release", &o));
    fx.assert_fsck_clean();
}

#[test]
fn kill_9_during_synced_writes_then_recover() {
    require_tools();
    let fx = Fixture::new();
    let err_path = fx.dir.path().join("db_bench.err");
    let mut child = std::process::Command::new("db_bench")
        .args(bench_args(&fx.uri(), "fillrandom"))
        .args(["--num=10000000", "--sync=1"])
        .env("LD_PRELOAD", preload_lib())
        .current_dir(fx.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("start db_bench");
    // Let it open the image and write (synced) for a while.
    let factory = factory_line(&fx.image);
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&err_path)
        .unwrap_or_default()
        .contains(&factory)
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "db_bench did not start: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "db_bench exited early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().expect("kill -9");
    child.wait().expect("reap");

    // A new process recovers the DB (BlobFS log replay, then RocksDB's WAL recovery with
    // ReopenWritableFile/Truncate) and finds what the synced writes made durable.
    let keys = ldb_scan_count(&fx);
    assert!(keys > 0, "nothing recovered");
    let o = tool(
        "db_bench",
        &[
            bench_args(&fx.uri(), "readseq,verifychecksum"),
            vec!["--use_existing_db=1".into()],
        ]
        .concat(),
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", show("db_bench after kill", &o));
    assert_eq!(readseq_count(&text(&o.stdout)), keys);
    fx.assert_fsck_clean();
    eprintln!("kill -9 after synced writes: {keys} keys recovered");
}
