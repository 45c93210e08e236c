# Waymark developer commands. `just` lists them.

default:
    @just --list

# Validate the example journeys and the conformance workspace.
check:
    cargo run -q -p waymark -- check journeys
    cargo run -q -p waymark -- check ../shared/conformance/journeys

# Every test: unit, scenario (examples and conformance), adapters, daemon.
test:
    cargo test --workspace

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks: the engine in memory and the scenario suite's time; then the daemon
# (durable transitions next to the raw SQLite ceiling, HTTP ingestion, peak RSS).
# `WAYMARK_BENCH_CUSTOMERS=100000 just bench` for a quicker run.
bench:
    cargo bench -p waymark-scenario --bench engine
    cargo bench -p waymark --bench daemon

# Run the daemon on the example journeys (embedded SQLite under ./data).
serve:
    cargo run --release -p waymark -- serve
