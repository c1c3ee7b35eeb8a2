//! What the benchmark ran on, recorded with the results (ratios from different machines
//! are not comparable either).

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub os: String,
    /// Filesystem type of the work directory (the backing files live there).
    pub work_fs: String,
    pub fio: String,
    pub db_bench: String,
}

impl Machine {
    pub fn probe(work_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        Machine {
            cpu,
            cores,
            mem_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel,
            os,
            work_fs: fs_type(work_dir),
            fio: version("fio", &["--version"]),
            db_bench: if crate::have("db_bench") {
                "db_bench (rocksdb-tools)".into()
            } else {
                "not installed".into()
            },
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} cores ({}), {} GiB, Linux {}, {}",
            self.cores, self.cpu, self.mem_gib, self.kernel, self.os
        )
    }
}

fn version(prog: &str, args: &[&str]) -> String {
    std::process::Command::new(prog)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "not installed".into())
}

/// The filesystem type of the mount holding `dir`, from /proc/self/mountinfo (longest
/// mount point prefix).
pub fn fs_type(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("?").to_string();
        if dir.starts_with(mp) && best.as_ref().is_none_or(|(l, _)| mp.len() >= *l) {
            best = Some((mp.len(), fstype));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, t)| t)
}
