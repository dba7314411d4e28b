//! Arbitrary bytes (as UTF-8, lossily) into `Config::parse`: it must return, never panic, and
//! every `Invalid` error must point at a line of the text and name a key.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use longhaul::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(ConfigError::Invalid { line, key, .. }) =
        Config::parse(&text, Path::new("fuzz.toml"))
    {
        let lines = text.lines().count().max(1);
        assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}");
        assert!(!key.is_empty());
    }
});
