//! On-disk structures: encoders and decoders with golden-bytes tests.
//!
//! Every decoder returns an error on bad input; none panics or reads out of bounds.
//! docs/design.md has the byte tables; the module docs repeat them next to the code.

pub mod block;
pub mod codec;
pub mod record;
pub mod superblock;
