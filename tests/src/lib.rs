//! Integration tests of the whole stack live in `tests/`; this crate has no code of its own.
