//! Builds the C++ shim (rocksdb/shim/*.cc) against Debian's shared librocksdb.
//!
//! The shim is linked with `+whole-archive`: nothing in Rust references the object holding
//! the static initializer that registers the `blobfs://` factory, and without it the linker
//! would leave that object out of the cdylib.

use std::path::Path;
use std::process::Command;

/// Where Debian puts librocksdb.so (overridable like the rocksdb crate's build).
const DEFAULT_LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
const DEFAULT_INCLUDE_DIR: &str = "/usr/include";

fn main() {
    println!("cargo:rerun-if-changed=shim");
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=ROCKSDB_INCLUDE_DIR");
    let lib_dir = std::env::var("ROCKSDB_LIB_DIR").unwrap_or_else(|_| DEFAULT_LIB_DIR.into());
    let include_dir =
        std::env::var("ROCKSDB_INCLUDE_DIR").unwrap_or_else(|_| DEFAULT_INCLUDE_DIR.into());
    let lib = Path::new(&lib_dir).join("librocksdb.so");
    if !lib.exists()
        || !Path::new(&include_dir)
            .join("rocksdb/file_system.h")
            .exists()
    {
        panic!(
            "blobfs-rocksdb needs RocksDB's shared library and headers ({} and {}/rocksdb/): \
             install librocksdb-dev (make deps), or set ROCKSDB_LIB_DIR/ROCKSDB_INCLUDE_DIR",
            lib.display(),
            include_dir
        );
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .pic(true)
        .include(&include_dir)
        .include("shim")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true);
    // A RocksDB built without RTTI has no `typeinfo for rocksdb::FileSystem`; classes
    // derived from its types must then be compiled without RTTI too, or the link fails.
    if !has_rtti(&lib) {
        println!("cargo:warning=librocksdb has no RTTI: compiling the shim with -fno-rtti");
        build.flag("-fno-rtti");
    }
    let mut files: Vec<_> = std::fs::read_dir("shim")
        .expect("rocksdb/shim")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cc"))
        .collect();
    files.sort();
    build.files(&files);
    build.cargo_metadata(false);
    build.compile("blobfs_rocksdb_shim");

    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    println!("cargo:rustc-link-search=native={out}");
    println!("cargo:rustc-link-lib=static:+whole-archive=blobfs_rocksdb_shim");
    println!("cargo:rustc-link-search=native={lib_dir}");
    println!("cargo:rustc-link-lib=dylib=rocksdb");
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

/// Whether the library exports `typeinfo for rocksdb::FileSystem` (`nm -D`). Without nm,
/// assume a normal (RTTI) build.
fn has_rtti(lib: &Path) -> bool {
    match Command::new("nm").arg("-DC").arg(lib).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.ends_with("typeinfo for rocksdb::FileSystem")),
        _ => true,
    }
}
