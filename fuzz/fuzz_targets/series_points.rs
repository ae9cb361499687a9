#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| busbar_server::fuzzing::series_points(data));
