use crate::units::BlobId;
use thiserror::Error;

/// Errors of the blobstore.
///
/// `Corruption` (the bytes on the device are wrong) is kept apart from `Io` (the device
/// failed to move them): the first calls for fsck, the second for hardware or retries.
#[derive(Debug, Error)]
pub enum Error {
    /// The device reported an error.
    /// (The driver's message says what failed, "I/O error: ..." or "NVMe command failed:
    /// ...", so it is shown as is; it is not also the source, so a chain printed with
    /// `{:#}` says it once.)
    #[error("{0}")]
    Io(driver::Error),
    /// On-disk metadata is damaged or impossible.
    #[error("corruption: {0}")]
    Corruption(String),
    /// The device does not hold a blobstore (no valid superblock magic).
    #[error("not a blobstore: {0}")]
    NotABlobstore(String),
    /// The image uses features this build does not know.
    #[error("unsupported on-disk feature: {0}")]
    Unsupported(String),
    /// No blob with this id.
    #[error("blob {0} not found")]
    NotFound(BlobId),
    /// No such xattr.
    #[error("xattr {0:?} not found")]
    NoXattr(String),
    /// Out of clusters.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// The store (or blob) accepts no changes: opened read-only, marked read-only, or turned
    /// read-only after a failed metadata write.
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// The blob is open and cannot be deleted.
    #[error("blob {0} is open")]
    Busy(BlobId),
    /// A bad argument: misaligned offset, out-of-range access, over-long name.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// Whether this error means damaged on-disk data.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption(_))
    }
}

impl From<driver::Error> for Error {
    fn from(e: driver::Error) -> Error {
        Error::Io(e)
    }
}

/// Result of blobstore operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for a corruption error.
pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corruption(msg.into())
}
