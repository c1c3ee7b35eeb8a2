//! RocksDB: the stock db_bench with `--fs_uri=blobfs://IMAGE` (our FileSystem preloaded)
//! vs the same db_bench, same options, on ext4 on a loop device of the same size.
//!
//! Each side runs `fillseq,fillrandom,overwrite,readrandom` in one process (fillseq and
//! fillrandom start from an empty DB, overwrite and readrandom use fillrandom's), then
//! `fillsync` (every write synced, `--sync=1` semantics) in another. (db_bench's help says
//! fillsync writes N/1000 values; 7.8.3 writes N, so `--num` is the synced-write count.) The
//! two sides alternate (ext4, ours, ours, ext4 in the full run) and each figure is the mean
//! of its runs, so slow drift of the machine hits both alike.

use crate::ext4::Ext4Loop;
use crate::{note, run_cmd, Better, Case, Ctx, Results};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The patterns of the main invocation, in order.
const MAIN: [&str; 4] = ["fillseq", "fillrandom", "overwrite", "readrandom"];

/// ops/s per benchmark name, from db_bench's report lines
/// (`fillseq      :       2.605 micros/op 383883 ops/sec ...`).
pub fn parse(out: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains(' ') {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "ops/sec") {
            if i > 0 && words.get(1) == Some(&"micros/op") {
                if let Ok(v) = words[i - 1].parse::<f64>() {
                    m.insert(name.to_string(), v);
                }
            }
        }
    }
    m
}

struct Side<'a> {
    /// db_bench arguments that pick the file system and DB directory.
    fs_args: Vec<String>,
    preload: Option<&'a Path>,
    /// The line the blobfs factory prints (proof our FileSystem was used).
    expect: Option<String>,
    db_dir: String,
}

impl Side<'_> {
    fn run(
        &self,
        benchmarks: &str,
        num: u64,
        db: &str,
        common: &[String],
    ) -> Result<BTreeMap<String, f64>> {
        let mut cmd = Command::new("db_bench");
        cmd.args(&self.fs_args)
            .arg(format!("--db={}/{db}", self.db_dir))
            .arg(format!("--benchmarks={benchmarks}"))
            .arg(format!("--num={num}"))
            .args(common);
        if let Some(lib) = self.preload {
            cmd.env("LD_PRELOAD", lib);
        }
        let out = run_cmd(&mut cmd)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(line) = &self.expect {
            if !stderr.contains(line.as_str()) {
                bail!("db_bench ran without the blobfs FileSystem (no {line:?} on stderr)");
            }
        }
        let m = parse(&String::from_utf8_lossy(&out.stdout));
        for b in benchmarks.split(',') {
            if !m.contains_key(b) {
                bail!(
                    "db_bench printed no result for {b}:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        Ok(m)
    }

    fn how(&self, benchmarks: &str, num: u64, common: &[String]) -> String {
        let pre = self
            .preload
            .map(|p| format!("LD_PRELOAD={} ", p.display()))
            .unwrap_or_default();
        format!(
            "`{pre}db_bench {} --db={}/DB --benchmarks={benchmarks} --num={num} {}`",
            self.fs_args.join(" "),
            self.db_dir,
            common.join(" ")
        )
    }
}

pub fn run(ctx: &Ctx, out: &mut Results) -> Result<()> {
    if !crate::have("db_bench") {
        bail!("db_bench not found (apt-get install rocksdb-tools, or `make bench`)");
    }
    let lib = ctx.rocksdb_lib.as_deref().context(
        "libblobfs_rocksdb.so not found next to the blobfs binary (`make bench` builds it; \
         or pass --rocksdb-lib)",
    )?;
    let size: u64 = ctx.pick(8 << 30, 2 << 30);
    let num: u64 = ctx.pick(1_000_000, 100_000);
    // Synced writes per fillsync run (about 0.6-1.5 ms each here).
    let sync_num: u64 = ctx.pick(10_000, 2_000);
    let rounds = ctx.pick(2, 1);
    let common: Vec<String> = [
        "--seed=42",
        "--threads=1",
        "--histogram=0",
        "--statistics=0",
        "--value_size=100",
        "--key_size=16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let image = ctx.dir.join("rocksdb.img");
    run_cmd(
        Command::new(&ctx.blobfs_bin)
            .arg("mkfs")
            .arg(&image)
            .arg("--size")
            .arg(size.to_string()),
    )
    .context("blobfs mkfs for the RocksDB image")?;
    let image = std::fs::canonicalize(&image)?;
    let ours = Side {
        fs_args: vec![format!("--fs_uri=blobfs://{}", image.display())],
        preload: Some(lib),
        expect: Some(format!("blobfs: RocksDB FileSystem on {}", image.display())),
        db_dir: String::new(),
    };
    let ext4 = Ext4Loop::new(
        &ctx.dir.join("rocksdb-ext4.img"),
        size,
        &ctx.dir.join("ext4-rocksdb"),
    )?;
    let base = Side {
        fs_args: vec![],
        preload: None,
        expect: None,
        db_dir: ext4.mountpoint.display().to_string(),
    };

    let main = MAIN.join(",");
    let mut sums: BTreeMap<(bool, String), f64> = BTreeMap::new();
    let mut add = |ours_side: bool, m: BTreeMap<String, f64>| {
        for (k, v) in m {
            *sums.entry((ours_side, k)).or_default() += v;
        }
    };
    for round in 0..rounds {
        // ABBA: ext4 first in even rounds, ours first in odd ones.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for ours_side in order {
            let (side, label) = if ours_side {
                (&ours, "blobfs")
            } else {
                (&base, "ext4")
            };
            note(format!(
                "rocksdb round {}: {label} {main} --num={num}",
                round + 1
            ));
            add(
                ours_side,
                side.run(&main, num, &format!("db{round}"), &common)?,
            );
            note(format!("rocksdb round {}: {label} fillsync", round + 1));
            add(
                ours_side,
                side.run("fillsync", sync_num, &format!("dbsync{round}"), &common)?,
            );
        }
    }
    for b in MAIN.iter().chain(["fillsync"].iter()) {
        let get = |o: bool| sums.get(&(o, b.to_string())).copied().unwrap_or(0.0) / rounds as f64;
        let n = if *b == "fillsync" { sync_num } else { num };
        out.push(Case {
            group: "rocksdb".into(),
            name: format!("rocksdb-{b}"),
            ours: get(true),
            baseline: get(false),
            unit: "ops/s".into(),
            better: Better::Higher,
            target: Some(if *b == "fillsync" { 2.0 } else { 1.0 }),
            ours_how: ours.how(
                if *b == "fillsync" { "fillsync" } else { &main },
                n,
                &common,
            ),
            baseline_how: base.how(
                if *b == "fillsync" { "fillsync" } else { &main },
                n,
                &common,
            ),
            note: format!(
                "{} bytes image and ext4 loop device; mean of {rounds} run(s) per side, sides \
                 alternating{}",
                size,
                if *b == "fillsync" {
                    format!("; {n} synced writes per run")
                } else {
                    String::new()
                }
            ),
        });
    }
    drop(ext4);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_db_bench_lines() {
        let out = "Keys:       16 bytes each\n\
            fillseq      :       2.605 micros/op 383883 ops/sec 0.521 seconds 200000 operations;   42.5 MB/s\n\
            readrandom   :       4.645 micros/op 215269 ops/sec 0.929 seconds 200000 operations; (172504 of 200000 found)\n\
            DB path: [/db]\n";
        let m = parse(out);
        assert_eq!(m.len(), 2);
        assert_eq!(m["fillseq"], 383883.0);
        assert_eq!(m["readrandom"], 215269.0);
    }
}
