//! `Record::decode_all` on arbitrary record streams (every record type, `DataCheck`
//! included). The encoding is canonical, so whatever decodes must re-encode to the same
//! bytes.
#![no_main]

use blobstore::format::record::{encode_all, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Record::decode_all(data) {
        Ok(records) => assert_eq!(encode_all(&records), data),
        Err(e) => assert!(e.is_corruption(), "{e}"),
    }
});
