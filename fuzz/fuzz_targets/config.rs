//! The config loader: any text is parsed, checked and compiled without panicking; a
//! refused config has at least one located error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portico::config::Source;
use std::path::Path;

fuzz_target!(|text: &str| {
    let Ok(src) = Source::parse(Path::new("fuzz.yaml"), text, |_| None) else {
        return;
    };
    if let Err(e) = portico::compile::compile(&src) {
        assert!(!e.0.is_empty(), "a refused config names its problems");
    }
});
