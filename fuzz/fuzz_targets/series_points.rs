#![no_main]
// arrow-ipc's panics that busbar-ipc catches are refusals, not findings.
libfuzzer_sys::fuzz_target!(
    init: busbar_ipc::quiet_caught_panics(),
    |data: &[u8]| busbar_server::fuzzing::series_points(data)
);
