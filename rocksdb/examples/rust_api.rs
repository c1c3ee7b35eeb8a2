//! RocksDB on BlobFS through the `rocksdb` crate's API: opens (or creates) a DB in a BlobFS
//! image, writes keys in two column families, reads them back, iterates, takes a snapshot
//! and closes, saying what it does.
//!
//! ```sh
//! blobfs mkfs /tmp/db.img --size 2G
//! cargo run --release -p blobfs-rocksdb --example rust_api -- /tmp/db.img
//! blobfs ls -l /tmp/db.img /tmp/rust-api-db && blobfs fsck -n /tmp/db.img
//! ```
//!
//! DB paths are paths inside the image. One quirk of the `rocksdb` crate (0.20.1): its
//! `DB::open*` first runs `std::fs::create_dir_all(path)` on the host, before RocksDB (and
//! so BlobFS) sees the path, so the path must be one the process may create on the host,
//! and an empty directory of that name appears there. The default path is under the
//! system's temporary directory, and this example removes the empty directory again when
//! it made it.

use blobfs_rocksdb::rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB,
};
use std::path::Path;
use std::process::ExitCode;

const CFS: [&str; 2] = ["fruits", "colors"];

fn main() -> ExitCode {
    // Where the DB lives inside the image (paths in the image are absolute from its root).
    let default_db = std::env::temp_dir().join("rust-api-db");
    let default_db = default_db.to_string_lossy();
    let args: Vec<String> = std::env::args().collect();
    let (image, db_path) = match args.as_slice() {
        [_, image] => (image.as_str(), &*default_db),
        [_, image, db] => (image.as_str(), db.as_str()),
        _ => {
            eprintln!("usage: rust_api IMAGE [DB_PATH_IN_IMAGE]   (default {default_db})");
            return ExitCode::from(2);
        }
    };
    if !Path::new(image).exists() {
        eprintln!(
            "rust_api: {image}: no such image. Make a BlobFS image first:\n  \
             blobfs mkfs {image} --size 2G\n(or: cargo run -p blobfs-tools -- mkfs {image} \
             --size 2G)"
        );
        return ExitCode::from(1);
    }
    match run(image, db_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rust_api: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(image: &str, db_path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let image_abs = std::fs::canonicalize(image)?;
    let uri = format!("blobfs://{}", image_abs.display());
    // The environment holds the image open (exclusively) until it and every DB using it are
    // dropped.
    let env = blobfs_rocksdb::env(&uri)?;
    // `DB::open*` will make `db_path` on the host too (see the top of the file).
    let host_dir_existed = Path::new(db_path).exists();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_env(&env);
    let cfs = CFS
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, db_path, cfs)?;
    println!("opened {db_path} in {} ({uri})", image_abs.display());

    let fruits = db.cf_handle("fruits").ok_or("no column family fruits")?;
    let colors = db.cf_handle("colors").ok_or("no column family colors")?;
    let mut batch = WriteBatch::default();
    for (k, v) in [
        ("apple", "red"),
        ("banana", "yellow"),
        ("cherry", "dark red"),
    ] {
        batch.put_cf(fruits, k, v);
    }
    for (k, v) in [
        ("red", "#ff0000"),
        ("green", "#00ff00"),
        ("blue", "#0000ff"),
    ] {
        batch.put_cf(colors, k, v);
    }
    db.write(batch)?;
    println!("wrote 3 keys in column family fruits and 3 in colors (one write batch)");

    for (cf, name, key) in [(fruits, "fruits", "banana"), (colors, "colors", "green")] {
        let v = db.get_cf(cf, key)?.ok_or("a key just written is missing")?;
        println!("get {name}/{key} = {}", String::from_utf8_lossy(&v));
    }

    print!("iterate fruits forward:");
    for item in db.iterator_cf(fruits, IteratorMode::Start) {
        let (k, v) = item?;
        print!(
            " {}={}",
            String::from_utf8_lossy(&k),
            String::from_utf8_lossy(&v)
        );
    }
    println!();
    print!("iterate colors backward from \"h\":");
    for item in db.iterator_cf(colors, IteratorMode::From(b"h", Direction::Reverse)) {
        let (k, _) = item?;
        print!(" {}", String::from_utf8_lossy(&k));
    }
    println!();

    let snapshot = db.snapshot();
    db.put_cf(fruits, "apple", "green")?;
    let then = snapshot.get_cf(fruits, "apple")?.unwrap_or_default();
    let now = db.get_cf(fruits, "apple")?.unwrap_or_default();
    println!(
        "snapshot: overwrote fruits/apple; the snapshot still sees {:?}, the DB sees {:?}",
        String::from_utf8_lossy(&then),
        String::from_utf8_lossy(&now)
    );
    drop(snapshot);

    db.flush_cf(fruits)?;
    db.flush_cf(colors)?;
    let mut files: Vec<String> = db.live_files()?.into_iter().map(|f| f.name).collect();
    files.sort();
    println!("flushed; live SST files in the image: {}", files.join(" "));

    drop(db);
    drop(opts);
    drop(env);
    if !host_dir_existed {
        // Empty (RocksDB wrote nothing there): remove_dir fails on anything else.
        if let Err(e) = std::fs::remove_dir(db_path) {
            eprintln!("rust_api: left the host directory {db_path} the rocksdb crate made: {e}");
        }
    }
    println!(
        "closed (the image is written back and closed); look at it with:\n  \
         blobfs ls -l {image} {db_path}\n  blobfs fsck -n {image}"
    );
    Ok(())
}
