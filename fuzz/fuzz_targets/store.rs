//! Key store and revocation list parsing: any text, never a panic; a store
//! that parses renders back to text that parses to the same keys.
#![no_main]

use keygate::keys::storefile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = storefile::parse_revoked(text);
    if let Ok(keys) = storefile::parse_store(text) {
        let rendered = storefile::render_store(&keys).expect("a valid store renders");
        assert_eq!(storefile::parse_store(&rendered).as_ref(), Ok(&keys));
    }
});
