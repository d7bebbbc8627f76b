//! Token parsing: any bytes, never a panic; a token accepted with our prefix
//! has exactly the generated shape.
#![no_main]

use keygate::keys::token::{self, CHECKSUM_LEN, RANDOM_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if token::check(data, "kg").is_ok() && data.starts_with(b"kg_") {
        assert_eq!(data.len(), 3 + RANDOM_LEN + CHECKSUM_LEN);
        assert!(data[3..].iter().all(u8::is_ascii_alphanumeric));
    }
});
