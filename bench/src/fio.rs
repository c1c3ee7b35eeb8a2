//! Running fio and reading its JSON output: the baseline for raw I/O (on the same file our
//! io_uring backend uses) and the load on mounts (BlobFS through FUSE and ext4).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// One fio job: a pattern on one file.
#[derive(Debug, Clone)]
pub struct Job {
    /// fio `--rw`: read, write, randread, randwrite.
    pub rw: &'static str,
    pub bs: u64,
    pub iodepth: u32,
    /// io_uring with O_DIRECT on a file or device; psync buffered elsewhere (FUSE).
    pub engine: &'static str,
    pub direct: bool,
    /// Bytes of the file the job touches.
    pub size: u64,
    pub runtime_s: u32,
    /// Ramp time before measuring.
    pub ramp_s: u32,
    /// Extra fio options (`--name=value`).
    pub extra: Vec<String>,
}

/// What fio measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub iops: f64,
    /// Bytes per second.
    pub bw: f64,
    /// Mean completion latency in microseconds.
    pub lat_us: f64,
}

impl Outcome {
    pub fn mb_s(&self) -> f64 {
        self.bw / 1e6
    }
}

impl Job {
    pub fn args(&self, file: &Path) -> Vec<String> {
        let mut a = vec![
            "--name=bench".to_string(),
            format!("--filename={}", file.display()),
            format!("--rw={}", self.rw),
            format!("--bs={}", self.bs),
            format!("--iodepth={}", self.iodepth),
            format!("--ioengine={}", self.engine),
            format!("--direct={}", u8::from(self.direct)),
            format!("--size={}", self.size),
            format!("--runtime={}", self.runtime_s),
            format!("--ramp_time={}", self.ramp_s),
            "--time_based=1".to_string(),
            "--group_reporting=1".to_string(),
            "--randrepeat=0".to_string(),
            "--norandommap=1".to_string(),
            "--output-format=json".to_string(),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    /// The command line, for the record.
    pub fn command(&self, file: &Path) -> String {
        format!("fio {}", self.args(file).join(" "))
    }

    pub fn run(&self, file: &Path) -> Result<Outcome> {
        let out = Command::new("fio")
            .args(self.args(file))
            .output()
            .context("running fio (install it: apt-get install fio, or `make bench`)")?;
        if !out.status.success() {
            bail!(
                "fio failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Reads the summed read and write figures of the first job of fio's JSON output.
pub fn parse(json: &str) -> Result<Outcome> {
    // fio may print warnings before the JSON object.
    let start = json.find('{').context("no JSON in fio's output")?;
    let v: serde_json::Value = serde_json::from_str(&json[start..]).context("fio's JSON")?;
    let job = v["jobs"].get(0).context("no job in fio's output")?;
    let mut o = Outcome::default();
    let mut lat_weighted = 0.0;
    for dir in ["read", "write"] {
        let d = &job[dir];
        let iops = d["iops"].as_f64().unwrap_or(0.0);
        o.iops += iops;
        o.bw += d["bw_bytes"].as_f64().unwrap_or(0.0);
        lat_weighted += iops * d["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0;
    }
    if o.iops > 0.0 {
        o.lat_us = lat_weighted / o.iops;
    }
    if o.iops <= 0.0 {
        bail!("fio reported no I/O");
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json() {
        let j = r#"note: something
{"jobs":[{"read":{"iops":1000.5,"bw_bytes":4098048,"clat_ns":{"mean":32000.0}},
          "write":{"iops":0,"bw_bytes":0,"clat_ns":{"mean":0}}}]}"#;
        let o = parse(j).unwrap();
        assert_eq!(o.iops, 1000.5);
        assert_eq!(o.bw, 4098048.0);
        assert!((o.lat_us - 32.0).abs() < 1e-9);
        assert!(parse(r#"{"jobs":[{"read":{"iops":0},"write":{"iops":0}}]}"#).is_err());
        assert!(parse("garbage").is_err());
    }
}
