//! `blobfs://IMAGE[?OPTIONS]` URIs.

use std::path::PathBuf;
use std::time::Duration;

/// The scheme prefix.
pub const SCHEME: &str = "blobfs://";

/// A parsed URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    /// The image file or block device (as written; relative to the working directory if
    /// not absolute).
    pub image: PathBuf,
    /// `sync_interval=SECS`: how often the background syncer commits (0 = never: data is
    /// durable only on fsync, directory fsync, and close). `None`: BlobFS's default (5 s).
    pub sync_interval: Option<Option<Duration>>,
}

/// What URIs look like, for error messages.
pub const USAGE: &str = "blobfs://IMAGE_PATH, e.g. blobfs:///tmp/db.img \
    (options: ?sync_interval=SECS)";

impl Uri {
    /// Parses `blobfs://IMAGE` with optional `?key=value&...` options. Everything after
    /// `blobfs://` up to `?` is the image path, so `blobfs:///tmp/db.img` names
    /// `/tmp/db.img`.
    pub fn parse(uri: &str) -> Result<Uri, String> {
        let Some(rest) = uri.strip_prefix(SCHEME) else {
            return Err(format!("{uri:?} is not a BlobFS URI (expected {USAGE})"));
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(format!("{uri:?}: no image path (expected {USAGE})"));
        }
        let mut out = Uri {
            image: PathBuf::from(path),
            sync_interval: None,
        };
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("sync_interval", v)) => {
                    let secs: u64 = v.parse().map_err(|_| {
                        format!("{uri:?}: sync_interval={v:?} is not a number of seconds")
                    })?;
                    out.sync_interval = Some((secs > 0).then(|| Duration::from_secs(secs)));
                }
                _ => {
                    return Err(format!(
                        "{uri:?}: unknown option {kv:?} (known: sync_interval=SECS)"
                    ))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let u = Uri::parse("blobfs:///tmp/db.img").unwrap();
        assert_eq!(u.image, PathBuf::from("/tmp/db.img"));
        assert_eq!(u.sync_interval, None);
        let u = Uri::parse("blobfs://rel/db.img?sync_interval=0").unwrap();
        assert_eq!(u.image, PathBuf::from("rel/db.img"));
        assert_eq!(u.sync_interval, Some(None));
        let u = Uri::parse("blobfs:///x?sync_interval=2").unwrap();
        assert_eq!(u.sync_interval, Some(Some(Duration::from_secs(2))));
        for bad in [
            "blobfs://",
            "blobfs",
            "file:///x",
            "blobfs:///x?sync_interval=soon",
            "blobfs:///x?color=red",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
        let e = Uri::parse("/tmp/db.img").unwrap_err();
        assert!(e.contains("blobfs:///tmp/db.img"), "{e}");
    }
}
