//! Replays the fuzz targets' checked-in corpus (fuzz/corpus/<target>/*)
//! through the same entry points libFuzzer drives (`busbar_server::fuzzing`),
//! so every seed and every input that once found a bug is run by
//! `cargo test` in seconds, without cargo-fuzz.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 8] = [
    ("path", busbar_server::fuzzing::path),
    ("config", busbar_server::fuzzing::config),
    ("flight_ticket", busbar_server::fuzzing::flight_ticket),
    ("flight_command", busbar_server::fuzzing::flight_command),
    ("series_points", busbar_server::fuzzing::series_points),
    ("sql", busbar_server::fuzzing::sql),
    ("client_series_read", busbar_client::fuzz_series_read),
    ("cli_import", busbar::points_file::fuzz_decode),
];

#[test]
fn every_corpus_input_runs_clean() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let targets = std::fs::read_to_string(corpus.join("../Cargo.toml")).unwrap();
    for (name, run) in TARGETS {
        assert!(
            targets.contains(&format!("name = \"{name}\"")),
            "{name} is not a fuzz target in fuzz/Cargo.toml"
        );
        let mut inputs = 0;
        for entry in std::fs::read_dir(corpus.join(name)).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "fuzz/corpus/{name} is empty");
    }
    let listed = targets.matches("[[bin]]").count();
    assert_eq!(
        listed,
        TARGETS.len(),
        "a fuzz target has no corpus replay here"
    );
}
