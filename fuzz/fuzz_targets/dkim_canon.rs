#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzz_targets::dkim_canon(data));
