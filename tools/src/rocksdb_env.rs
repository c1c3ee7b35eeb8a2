//! `blobfs rocksdb-env [IMAGE]`: how to run the stock RocksDB tools (db_bench, ldb,
//! sst_dump) on a BlobFS image: the `LD_PRELOAD=` line for libblobfs_rocksdb.so and
//! example commands with `--fs_uri=blobfs://IMAGE`.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The preload library's file name.
pub const LIB_NAME: &str = "libblobfs_rocksdb.so";

/// Where `make install` puts it (PREFIX=/usr/local).
const INSTALLED_DIR: &str = "/usr/local/lib";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The BlobFS image the examples use (made with `blobfs mkfs IMAGE --size 2G`).
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
}

/// Where to look for the library, in order: next to this binary (the same cargo target
/// directory, e.g. target/release/), `../lib` from it (an installed `PREFIX/sbin/blobfs`
/// finds `PREFIX/lib`), then /usr/local/lib.
pub fn candidates(exe: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        out.push(dir.join(LIB_NAME));
        if let Some(up) = dir.parent() {
            out.push(up.join("lib").join(LIB_NAME));
        }
    }
    let installed = Path::new(INSTALLED_DIR).join(LIB_NAME);
    if !out.contains(&installed) {
        out.push(installed);
    }
    out
}

/// The first candidate that exists, as an absolute path.
pub fn find_lib(exe: Option<&Path>) -> Result<PathBuf> {
    let list = candidates(exe);
    for p in &list {
        if p.is_file() {
            return std::fs::canonicalize(p).with_context(|| format!("{}", p.display()));
        }
    }
    let looked: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "{LIB_NAME} not found (looked for {}); build it with `make rocksdb` (cargo build \
         --release -p blobfs-rocksdb, next to target/release/blobfs) or install it with \
         `make install`",
        looked.join(", ")
    )
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    let exe = std::env::current_exe().ok();
    let lib = find_lib(exe.as_deref())?;
    let image = match &args.image {
        Some(p) => {
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| {
                std::env::current_dir()
                    .map(|d| d.join(p))
                    .unwrap_or_else(|_| p.clone())
            });
            if !abs.exists() {
                eprintln!(
                    "blobfs: note: {} does not exist yet; make it with: blobfs mkfs {} --size 2G",
                    abs.display(),
                    abs.display()
                );
            }
            abs.display().to_string()
        }
        None => "/path/to/db.img".to_string(),
    };
    let pre = format!("LD_PRELOAD={}", lib.display());
    let uri = format!("--fs_uri=blobfs://{image}");
    writeln!(out, "{pre}")?;
    writeln!(
        out,
        "# The stock RocksDB tools on the BlobFS image {image} (one process at a time; the \
         image must not be mounted):"
    )?;
    writeln!(
        out,
        "#   {pre} db_bench {uri} --db=/db --benchmarks=fillseq,readrandom --num=100000"
    )?;
    writeln!(out, "#   {pre} ldb {uri} --db=/db scan")?;
    writeln!(out, "#   {pre} sst_dump {uri} --file=/db --command=verify")?;
    writeln!(
        out,
        "# Paths inside the image are absolute from its root (--db=/db is /db in the image)."
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_next_to_the_binary_first() {
        let c = candidates(Some(Path::new("/work/target/release/blobfs")));
        assert_eq!(c[0], Path::new("/work/target/release/libblobfs_rocksdb.so"));
        assert_eq!(c[1], Path::new("/work/target/lib/libblobfs_rocksdb.so"));
        assert_eq!(
            c.last().map(PathBuf::as_path),
            Some(Path::new("/usr/local/lib/libblobfs_rocksdb.so"))
        );
        let c = candidates(Some(Path::new("/usr/local/sbin/blobfs")));
        assert_eq!(c.len(), 2, "{c:?}");
    }

    #[test]
    fn finds_or_says_how_to_build() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("bin/blobfs");
        if !Path::new(INSTALLED_DIR).join(LIB_NAME).exists() {
            let e = find_lib(Some(&exe)).unwrap_err().to_string();
            assert!(e.contains("make rocksdb") && e.contains(LIB_NAME), "{e}");
        }
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin").join(LIB_NAME), b"").unwrap();
        let p = find_lib(Some(&exe)).unwrap();
        assert!(
            p.is_absolute() && p.ends_with(format!("bin/{LIB_NAME}")),
            "{p:?}"
        );
    }
}
