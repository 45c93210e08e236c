//! Daemon benchmarks, printed as one markdown table: `just bench` (or
//! `cargo bench -p waymark --bench daemon`).
//!
//! 1. Durable transitions per second. N customers (1M by default,
//!    `WAYMARK_BENCH_CUSTOMERS`) are seeded waiting on a timer in a journey of three sends
//!    and one-second waits; a daemon process (the real [`Daemon`] on a [`SqliteStore`]
//!    file: its timer loop, per-customer executor and outbox dispatcher, with a channel that
//!    accepts every message at once) carries all of them to the end. Next to it, the raw
//!    ceiling of the same file: single-row UPDATEs, 1000 per transaction.
//! 2. HTTP ingestion. A daemon process serves the real API on loopback; C keep-alive
//!    connections (`WAYMARK_BENCH_CONNECTIONS`, 32) post `track` events back to back for
//!    S seconds (`WAYMARK_BENCH_SECONDS`, 10): events per second, p50 and p99 latency.
//! 3. Peak RSS: the VmHWM of the daemon process of (1), which starts with every customer
//!    waiting on a timer.
//!
//! Each daemon runs in a child process (this binary again, chosen by
//! `WAYMARK_BENCH_ROLE`), so neither the seeding nor the load generator counts in its
//! memory. They do share the machine's cores, as a client on the same box would.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_trait::async_trait;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use waymark::channels::Channels;
use waymark::config::Config;
use waymark::daemon::Daemon;
use waymark_channel::{
    Channel, ChannelKind, ConfigError, Delivery, DeliveryError, OutboundMessage,
};
use waymark_scheduler::{ChannelDirectory, Clock as _, CustomerState, Effect, Engine, SystemClock};
use waymark_store::{Commit, SqliteStore, Store};

/// Three sends with one-second waits between them, entered through the API. Seeded
/// customers wait in `settle`; from there each takes three timer firings and five
/// transitions (`hello`, `pause`, `reminder`, `rest`, `last`) to the end.
const JOURNEY: &str = "
id: bench
name: Sends and short waits
trigger:
  api: true
steps:
  settle:
    wait: 1s
    next: hello
  hello:
    send: email
    template: note
    next: pause
  pause:
    wait: 1s
    next: reminder
  reminder:
    send: email
    template: note
    next: rest
  rest:
    wait: 1s
    next: last
  last:
    send: email
    template: note
";

const TEMPLATE: &str = "
email:
  subject: \"A note for {{ profile.first_name | default: 'you' }}\"
  text: \"Journey {{ journey.id }}: see what is new this week.\"
";

const TRANSITIONS_PER_CUSTOMER: u64 = 5;
const MESSAGES_PER_CUSTOMER: u64 = 3;
/// Customers seeded per `commit_many` call.
const SEED_BATCH: usize = 5_000;
/// Rows per transaction in the raw UPDATE loop.
const RAW_BATCH: usize = 1_000;
/// Distinct customers the HTTP load spreads its events over.
const HTTP_CUSTOMERS: u64 = 100_000;

/// The allocator of the `waymark` binary, so that the daemon is measured as it ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match std::env::var("WAYMARK_BENCH_ROLE").as_deref() {
        Ok("timers") => runtime.block_on(timers_child()),
        Ok("http") => runtime.block_on(http_child()),
        _ => runtime.block_on(parent()),
    }
}

// --- the parent: seeding, the raw ceiling, the load generator, the table ---------------

async fn parent() -> anyhow::Result<()> {
    let customers = env_number("WAYMARK_BENCH_CUSTOMERS", 1_000_000);
    let connections = env_number("WAYMARK_BENCH_CONNECTIONS", 32);
    let seconds = env_number("WAYMARK_BENCH_SECONDS", 10);
    let dir = tempfile::tempdir()?;
    let journeys = dir.path().join("journeys");
    write_workspace(&journeys)?;

    eprintln!("seeding {customers} customers waiting on a timer...");
    let db = dir.path().join("timers.db");
    let seed = seed(&db, &journeys, customers).await?;

    eprintln!("running the daemon until every customer is through...");
    let timers = child("timers", &db, &journeys, customers)?;
    let report = timers.finish()?;
    let raw = raw_ceiling(&db).await?;

    eprintln!("loading the HTTP API for {seconds} s on {connections} connections...");
    let http_db = dir.path().join("http.db");
    let mut server = child("http", &http_db, &journeys, customers)?;
    let port = server.read_line()?["port"]
        .as_u64()
        .context("the HTTP child's port")?;
    let load = load(port, connections, Duration::from_secs(seconds)).await?;
    let served = server.finish()?;

    print_table(&Table {
        customers,
        seed,
        timers: &report,
        raw,
        connections,
        load: &load,
        served: &served,
    });
    Ok(())
}

fn write_workspace(journeys: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(journeys.join("templates"))?;
    std::fs::write(journeys.join("bench.yaml"), JOURNEY)?;
    std::fs::write(journeys.join("templates/note.yaml"), TEMPLATE)?;
    Ok(())
}

/// Enters every customer into the journey with the real engine and writes the states
/// with `commit_many`, [`SEED_BATCH`] customers per transaction: the fastest honest way
/// to a database of customers waiting on a timer.
async fn seed(db: &Path, journeys: &Path, customers: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let store = SqliteStore::open_path(db).await?;
    let (engine, _) = engine(journeys, &Arc::new(AtomicU64::new(0)))?;
    let now = SystemClock.now();
    let traits = |i: u64| -> Map<String, Value> {
        let mut traits = Map::new();
        traits.insert("email".to_owned(), json!(format!("c{i}@example.com")));
        traits
    };
    let ids: Vec<u64> = (0..customers).collect();
    for chunk in ids.chunks(SEED_BATCH) {
        let mut entered: Vec<(CustomerState, Vec<Effect>)> = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let mut state = CustomerState::new(customer_id(i));
            state.profile.traits = traits(i);
            let effects = engine
                .enroll(&mut state, "bench", &Map::new(), now)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            entered.push((state, effects));
        }
        let commits: Vec<Commit<'_>> = entered
            .iter()
            .map(|(state, effects)| Commit {
                state,
                revision: 0,
                effects,
                event: None,
                merged: None,
                now,
                claim_until: None,
                message_id: None,
            })
            .collect();
        for result in store.commit_many(&commits).await {
            result?;
        }
    }
    store.close().await;
    Ok(started.elapsed())
}

fn customer_id(i: u64) -> String {
    format!("c{i:07}")
}

/// Updates every enrollment in the file, [`RAW_BATCH`] per transaction, through the same
/// driver and settings as the store: once with one UPDATE per row, once with one UPDATE per
/// batch (the ids as a JSON array, as the store's bulk paths pass them). What the file
/// can do at best.
async fn raw_ceiling(db: &Path) -> anyhow::Result<Raw> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let options = SqliteConnectOptions::new()
        .filename(db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM enrollments")
        .fetch_all(&pool)
        .await?;
    let started = Instant::now();
    for chunk in ids.chunks(RAW_BATCH) {
        let mut tx = pool.begin().await?;
        for id in chunk {
            sqlx::query("UPDATE enrollments SET step = step + 1, wake_at = ? WHERE id = ?")
                .bind(1_i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    let row_by_row = started.elapsed();
    let started = Instant::now();
    for chunk in ids.chunks(RAW_BATCH) {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE enrollments SET step = step + 1, wake_at = ?
             WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(2_i64)
        .bind(serde_json::to_string(chunk)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let set_based = started.elapsed();
    pool.close().await;
    Ok(Raw {
        rows: ids.len() as u64,
        row_by_row,
        set_based,
    })
}

struct Raw {
    rows: u64,
    row_by_row: Duration,
    set_based: Duration,
}

/// A daemon child process, talking JSON lines on stdout.
struct Child {
    process: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

fn child(role: &str, db: &Path, journeys: &Path, customers: u64) -> anyhow::Result<Child> {
    let mut process = Command::new(std::env::current_exe()?)
        .env("WAYMARK_BENCH_ROLE", role)
        .env("WAYMARK_BENCH_DB", db)
        .env("WAYMARK_BENCH_JOURNEYS", journeys)
        .env("WAYMARK_BENCH_CUSTOMERS", customers.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a daemon child")?;
    let stdout = std::io::BufReader::new(process.stdout.take().context("child stdout")?);
    Ok(Child { process, stdout })
}

impl Child {
    fn read_line(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("a child's report: `{line}`"))
    }

    /// Closes its stdin (the signal to stop) and reads its last report.
    fn finish(mut self) -> anyhow::Result<Value> {
        drop(self.process.stdin.take());
        let report = self.read_line()?;
        let status = self.process.wait()?;
        ensure!(status.success(), "a daemon child failed: {status}");
        if let Some(error) = report.get("error") {
            bail!("a daemon child: {error}");
        }
        Ok(report)
    }
}

/// What the load generator saw.
struct Load {
    requests: u64,
    failed: u64,
    elapsed: Duration,
    /// Sorted, in microseconds.
    latencies: Vec<u32>,
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        f64::from(self.latencies[i - 1]) / 1000.0
    }
}

/// `connections` keep-alive connections, each posting one `track` event after another:
/// a one-second warm-up, then `duration` measured.
async fn load(port: u64, connections: u64, duration: Duration) -> anyhow::Result<Load> {
    let warm_up = Duration::from_secs(1);
    let start = Instant::now() + warm_up;
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        tasks.spawn(connection(port, c, start, end));
    }
    let mut total = Load {
        requests: 0,
        failed: 0,
        elapsed: duration,
        latencies: Vec::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let (latencies, failed) = done??;
        total.requests += latencies.len() as u64;
        total.failed += failed;
        total.latencies.extend(latencies);
    }
    total.latencies.sort_unstable();
    Ok(total)
}

async fn connection(
    port: u64,
    c: u64,
    start: Instant,
    end: Instant,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", u16::try_from(port)?)).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut n: u64 = 0;
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok((latencies, failed));
        }
        // Spread over the customers, so that each connection mostly talks about others.
        let customer = (c * 7_919 + n * 104_729) % HTTP_CUSTOMERS;
        let body = json!({
            "userId": format!("u{customer}"),
            "event": "page_viewed",
            "properties": {"path": format!("/products/{}", n % 1000), "referrer": "search"},
            "messageId": format!("m-{c}-{n}"),
        });
        n += 1;
        let request = hyper::Request::post("/v1/track")
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        if sent >= start {
            latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            failed += u64::from(!ok);
        }
    }
}

// --- the daemon children -----------------------------------------------------------------

/// Accepts every message at once, counting them: delivery is measured, providers are not.
struct InstantKind(Arc<AtomicU64>);

struct InstantChannel(Arc<AtomicU64>);

impl ChannelKind for InstantKind {
    fn kind(&self) -> &'static str {
        "instant"
    }

    fn address_trait(&self) -> Option<&'static str> {
        Some("email")
    }

    fn build(&self, _name: &str, _config: &Value) -> Result<Arc<dyn Channel>, ConfigError> {
        Ok(Arc::new(InstantChannel(self.0.clone())))
    }
}

#[async_trait]
impl Channel for InstantChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(Delivery {
            provider_id: Some(message.idempotency_key.clone()),
            detail: None,
        })
    }
}

fn channel_config() -> BTreeMap<String, Value> {
    BTreeMap::from([("email".to_owned(), json!({"kind": "instant"}))])
}

fn engine(journeys: &Path, delivered: &Arc<AtomicU64>) -> anyhow::Result<(Engine, Arc<Channels>)> {
    let (workspace, _) = waymark_journey::load(journeys).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let registry = waymark::default_registry().with(InstantKind(delivered.clone()));
    let channels = Arc::new(Channels::build(&registry, &channel_config(), false)?);
    let directory: Arc<dyn ChannelDirectory> = channels.clone();
    let engine = Engine::new(workspace, Config::defaults().policy, directory);
    Ok((engine, channels))
}

/// The daemon as `waymark serve` builds it, on the child's database.
async fn daemon(delivered: &Arc<AtomicU64>) -> anyhow::Result<Arc<Daemon>> {
    let db = PathBuf::from(std::env::var("WAYMARK_BENCH_DB")?);
    let journeys = PathBuf::from(std::env::var("WAYMARK_BENCH_JOURNEYS")?);
    let store = SqliteStore::open_path(&db).await?.shared();
    let (engine, channels) = engine(&journeys, delivered)?;
    let mut config = Config::defaults();
    config.journeys = journeys;
    config.database = format!("sqlite://{}", db.display());
    config.channels = channel_config();
    config.defaults = false;
    Ok(Daemon::new(
        store,
        engine,
        channels,
        Arc::new(SystemClock),
        config,
    ))
}

/// `VmRSS`, `VmHWM`, ... of this process, in kB.
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn report(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Starts the timer loop and the dispatcher on the seeded database and waits until every
/// customer has been carried to the end and every message delivered.
async fn timers_child() -> anyhow::Result<()> {
    init_tracing();
    let customers = env_number("WAYMARK_BENCH_CUSTOMERS", 0);
    let delivered = Arc::new(AtomicU64::new(0));
    let daemon = daemon(&delivered).await?;
    let rss_start = status_kb("VmRSS");
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let timers = tokio::spawn(daemon.clone().timer_loop(stopped.clone()));
    let dispatcher = tokio::spawn(daemon.clone().dispatch_loop(stopped));
    let transitions = || daemon.metrics.transitions.load(Ordering::Relaxed);
    let mut last_note = Instant::now();
    while delivered.load(Ordering::Relaxed) < customers * MESSAGES_PER_CUSTOMER
        || transitions() < customers * TRANSITIONS_PER_CUSTOMER
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if last_note.elapsed() >= Duration::from_secs(10) {
            last_note = Instant::now();
            eprintln!(
                "  {:.0} s: {} transitions, {} messages delivered, RSS {} kB",
                started.elapsed().as_secs_f64(),
                transitions(),
                delivered.load(Ordering::Relaxed),
                status_kb("VmRSS")
            );
        }
    }
    let _ = stop.send(true);
    let _ = tokio::join!(timers, dispatcher);
    let elapsed = started.elapsed();
    let depths = daemon.store.depths().await?;
    let mut out = json!({
        "seconds": elapsed.as_secs_f64(),
        "transitions": transitions(),
        "timers": daemon.metrics.timers_fired.load(Ordering::Relaxed),
        "delivered": delivered.load(Ordering::Relaxed),
        "conflicts": daemon.metrics.conflicts.load(Ordering::Relaxed),
        "rss_start_kb": rss_start,
        "hwm_kb": status_kb("VmHWM"),
    });
    if depths.active_enrollments != 0 || depths.outbox_pending != 0 {
        out["error"] = json!(format!(
            "{} enrollments still active, {} messages still pending",
            depths.active_enrollments, depths.outbox_pending
        ));
    }
    report(&out);
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(())
}

/// Serves the API on a loopback port (reported first) until stdin closes; then reports
/// how many accepted events were still waiting to be handled and how long they took.
async fn http_child() -> anyhow::Result<()> {
    init_tracing();
    let delivered = Arc::new(AtomicU64::new(0));
    let daemon = daemon(&delivered).await?;
    let (stop, stopped) = watch::channel(false);
    let timers = tokio::spawn(daemon.clone().timer_loop(stopped.clone()));
    let dispatcher = tokio::spawn(daemon.clone().dispatch_loop(stopped));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    report(&json!({"port": listener.local_addr()?.port()}));
    let closed = tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
    });
    axum::serve(listener, waymark::api::router(daemon.clone()))
        .with_graceful_shutdown(async {
            let _ = closed.await;
        })
        .await?;
    let backlog = daemon.store.depths().await?.inbox;
    let started = Instant::now();
    while daemon.store.depths().await?.inbox > 0 && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = started.elapsed();
    let _ = stop.send(true);
    let _ = tokio::join!(timers, dispatcher);
    report(&json!({
        "ingested": daemon.metrics.events_ingested.load(Ordering::Relaxed),
        "backlog": backlog,
        "drain_seconds": drained.as_secs_f64(),
        "hwm_kb": status_kb("VmHWM"),
    }));
    Ok(())
}

// --- the table ---------------------------------------------------------------------------

struct Table<'a> {
    customers: u64,
    seed: Duration,
    timers: &'a Value,
    raw: Raw,
    connections: u64,
    load: &'a Load,
    served: &'a Value,
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn per_second(n: u64, seconds: f64) -> String {
    thousands((n as f64 / seconds).round() as u64)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!("{model}, {cores} cores")
}

fn print_table(t: &Table<'_>) {
    let number = |v: &Value, key: &str| v[key].as_u64().unwrap_or(0);
    let seconds = t.timers["seconds"].as_f64().unwrap_or(f64::NAN);
    let transitions = number(t.timers, "transitions");
    let mb = |kb: u64| format!("{:.0} MB", kb as f64 / 1024.0);
    let load = t.load;
    let measured = load.elapsed.as_secs_f64();
    println!("| daemon benchmark | figure |");
    println!("|---|---|");
    println!("| machine | {} |", machine());
    println!(
        "| customers seeded waiting on a timer (engine + `commit_many`, {SEED_BATCH} per transaction) | {} in {:.1} s |",
        thousands(t.customers),
        t.seed.as_secs_f64()
    );
    println!(
        "| **durable transitions per second** (timer loop, executor, SQLite commits, dispatcher) | **{}** ({} transitions, {} timers fired, {} messages delivered in {seconds:.1} s) |",
        per_second(transitions, seconds),
        thousands(transitions),
        thousands(number(t.timers, "timers")),
        thousands(number(t.timers, "delivered")),
    );
    println!(
        "| raw ceiling of the same file: UPDATE loop, {RAW_BATCH} rows per transaction | {} rows/s one statement per row, {} rows/s one statement per transaction |",
        per_second(t.raw.rows, t.raw.row_by_row.as_secs_f64()),
        per_second(t.raw.rows, t.raw.set_based.as_secs_f64()),
    );
    println!(
        "| **HTTP ingestion** (`POST /v1/track`, {} connections, {measured:.0} s) | **{} events/s**, p50 {:.2} ms, p99 {:.2} ms, {} failed |",
        t.connections,
        per_second(load.requests, measured),
        load.percentile(0.50),
        load.percentile(0.99),
        load.failed,
    );
    println!(
        "| accepted events still to handle when the load stopped | {} (handled in {:.1} s) |",
        thousands(number(t.served, "backlog")),
        t.served["drain_seconds"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "| **peak RSS** of the daemon with {} customers waiting on timers (VmHWM) | **{}** ({} at start) |",
        thousands(t.customers),
        mb(number(t.timers, "hwm_kb")),
        mb(number(t.timers, "rss_start_kb")),
    );
    println!(
        "| peak RSS of the daemon under the HTTP load (VmHWM) | {} |",
        mb(number(t.served, "hwm_kb"))
    );
}
