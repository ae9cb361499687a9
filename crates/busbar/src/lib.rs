//! The parts of the `busbar` command that other code drives too: reading
//! points files is fuzzed (`fuzz/`, target `cli_import`) through this
//! library, the same code the command runs.

pub mod points_file;
