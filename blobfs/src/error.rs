use thiserror::Error;

/// Errors of the filesystem layer; each maps to one errno (see [`Error::errno`]).
#[derive(Debug, Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("no space left on device")]
    NoSpace,
    #[error("read-only filesystem: {0}")]
    ReadOnly(String),
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value too large")]
    TooBig,
    #[error("file too large")]
    FileTooBig,
    #[error("not a BlobFS filesystem: {0}")]
    NotBlobfs(String),
    #[error("filesystem corruption: {0}")]
    Corruption(String),
    #[error("blobstore: {0}")]
    Store(blobstore::Error),
}

impl From<blobstore::Error> for Error {
    fn from(e: blobstore::Error) -> Error {
        match e {
            blobstore::Error::NoSpace(_) => Error::NoSpace,
            blobstore::Error::ReadOnly(m) => Error::ReadOnly(m),
            blobstore::Error::Corruption(m) => Error::Corruption(m),
            other => Error::Store(other),
        }
    }
}

impl Error {
    /// The errno a POSIX caller expects for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::Invalid(_) => libc::EINVAL,
            Error::NotPermitted(_) => libc::EPERM,
            Error::NoSpace => libc::ENOSPC,
            Error::ReadOnly(_) => libc::EROFS,
            Error::NoAttr => libc::ENODATA,
            Error::TooBig => libc::E2BIG,
            Error::FileTooBig => libc::EFBIG,
            Error::NotBlobfs(_) | Error::Corruption(_) => libc::EUCLEAN,
            Error::Store(e) => match e {
                blobstore::Error::NotFound(_) => libc::ENOENT,
                blobstore::Error::NoXattr(_) => libc::ENODATA,
                blobstore::Error::Invalid(_) => libc::EINVAL,
                blobstore::Error::Busy(_) => libc::EBUSY,
                _ => libc::EIO,
            },
        }
    }
}

/// Result of filesystem operations.
pub type Result<T> = std::result::Result<T, Error>;
