//! Config parsing and validation: any text, never a panic.
#![no_main]

use keygate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::from_toml(text, std::path::Path::new("/etc/keygate"), &|_| None);
});
