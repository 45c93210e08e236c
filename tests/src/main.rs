//! The daemon the black-box tests run: `waymark serve` through the library entry point,
//! with the built-in channel kinds.

fn main() -> std::process::ExitCode {
    waymark::run(waymark::default_registry())
}
