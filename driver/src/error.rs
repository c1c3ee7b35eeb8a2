use thiserror::Error;

/// Errors of the driver layer.
#[derive(Debug, Error)]
pub enum Error {
    /// The operating system reported an I/O error. Shown in the message and not also
    /// exposed as the error's source, so a chain printed with `{:#}` says it once.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// The command addressed blocks beyond the end of the namespace.
    #[error("range out of bounds: lba {lba} + {count} blocks > {lba_count} blocks")]
    OutOfRange {
        lba: u64,
        count: u64,
        lba_count: u64,
    },
    /// A length or address is not a multiple of what the device requires.
    #[error("{what} {value} is not a non-zero multiple of {align}")]
    Misaligned {
        what: &'static str,
        value: u64,
        align: u64,
    },
    /// A transfer larger than the device's maximum.
    #[error("transfer of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u64, max: u64 },
    /// The queue pair has no free slot; poll and retry.
    #[error("queue full")]
    QueueFull,
    /// A blocking helper was used on a queue pair with commands in flight.
    #[error("queue pair busy")]
    Busy,
    /// A command vanished without a completion (backend bug).
    #[error("command lost without completion")]
    Lost,
    /// The device has lost power or was removed (also: a simulated crash).
    #[error("device is gone (power lost or removed)")]
    Gone,
    /// An error injected by a fault-injecting wrapper.
    #[error("injected {0} error")]
    Injected(&'static str),
    /// The NVMe controller completed the command with an error status.
    #[error(
        "NVMe command failed: {text} (status type {sct:#x}, code {sc:#04x}, {})",
        if *dnr { "do not retry" } else { "may retry" }
    )]
    Nvme {
        /// Status Code Type (0 generic, 1 command specific, 2 media and data integrity).
        sct: u8,
        /// Status Code.
        sc: u8,
        /// Do Not Retry: the same command would fail again.
        dnr: bool,
        text: &'static str,
    },
    /// The controller was reset (by this driver after a failure or timeout, or from
    /// outside) while the command was in flight: it may or may not have taken effect. The
    /// driver has brought the controller back; new commands may be submitted.
    #[error(
        "NVMe controller {ctrl} was reset while the command was in flight ({reason}); \
         it may or may not have taken effect"
    )]
    ControllerReset { ctrl: String, reason: String },
    /// A device URI or path could not be understood or opened.
    #[error("bad device spec {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

/// Result of driver operations.
pub type Result<T> = std::result::Result<T, Error>;
