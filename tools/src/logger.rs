//! A small `log` backend: messages of the libraries (the FUSE layer, fuser) on stderr.
//!
//! `BLOBFS_LOG=error|warn|info|debug|trace` sets the level (default `warn`). fuser's own
//! messages are shown from `error` only unless `BLOBFS_LOG` is set: it warns about every
//! request the filesystem leaves to the kernel's fallback (lseek, fallocate...).

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    level: LevelFilter,
    explicit: bool,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        if m.target().starts_with("fuser") && !self.explicit {
            return m.level() <= Level::Error;
        }
        m.level() <= self.level
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "blobfs: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    let env = std::env::var("BLOBFS_LOG").ok();
    let level = env
        .as_deref()
        .and_then(|s| s.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Warn);
    let logger = Box::new(Stderr {
        level,
        explicit: env.is_some(),
    });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
