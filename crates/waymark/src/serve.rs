//! `waymark serve`: start-up, the work loops, signals and a clean shutdown.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::watch;
use waymark_channel::Registry;
use waymark_scheduler::{ChannelDirectory, Engine, SystemClock};
use waymark_store::{PostgresStore, SqliteStore, Store};

use crate::channels::Channels;
use crate::config::{Config, ConfigError, DEFAULT_CONFIG, Listen};
use crate::daemon::{self, Daemon};
use crate::dispatch;

/// How long a shutdown waits for customer queues to empty.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// `waymark serve`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// The daemon config (default: waymark.yaml, if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM or Ctrl-C, on a runtime of its own.
///
/// # Errors
/// Invalid config or journeys, a database that cannot be opened, an address that cannot
/// be bound.
pub fn run(args: ServeArgs, registry: Registry) -> anyhow::Result<ExitCode> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, registry))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Opens the database a `database:` URL names: a SQLite file (its directory created), or
/// a PostgreSQL database (`postgres://` or `postgresql://`) that replicas may share.
///
/// # Errors
/// An unsupported URL, or one that cannot be opened.
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = sqlite_file(rest)?;
        let store = SqliteStore::open_path(&path)
            .await
            .with_context(|| format!("`database`: {url}"))?;
        return Ok(store.shared());
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::open(url)
            .await
            .with_context(|| format!("`database`: {}", redact(url)))?;
        return Ok(store.shared());
    }
    bail!(
        "`database`: `{}` is neither sqlite://PATH nor postgres://USER@HOST/DB",
        redact(url)
    )
}

/// The file a `sqlite://` URL's remainder names, its directory created.
fn sqlite_file(rest: &str) -> anyhow::Result<PathBuf> {
    let path = rest.trim_start_matches("//");
    let path = Path::new(path.split('?').next().unwrap_or(path));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the database directory {}", dir.display()))?;
    }
    Ok(path.to_path_buf())
}

/// The embedded database serves one daemon (several share PostgreSQL): a lock on
/// `FILE.lock` beside it, held while the returned file is open, refuses a second daemon on
/// the same file. `None` for a database other daemons may share.
///
/// # Errors
/// Another daemon holds the lock, or the lock file cannot be opened.
fn hold_embedded_database(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(None);
    };
    let mut lock = sqlite_file(rest)?.into_os_string();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .with_context(|| format!("`database`: opening {}", lock.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "`database`: {url} is in use by another waymark daemon ({} is locked); the embedded database serves one daemon, several share PostgreSQL",
            lock.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("`database`: locking {}", lock.display()))
        }
    }
}

async fn serve(args: ServeArgs, registry: Registry) -> anyhow::Result<ExitCode> {
    let explicit = args.config.is_some();
    let path = args.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = Config::load(&path, explicit).context("config")?;
    // A host name is resolved, and judged by the addresses it stands for, before anything
    // is opened.
    let addrs = config
        .listen
        .resolve()
        .await
        .map_err(|e| ConfigError {
            file: config.source.clone(),
            ..e
        })
        .context("config")?;
    config.check_exposure(&addrs).context("config")?;
    if config.defaults {
        tracing::info!(
            "no config file ({}): embedded SQLite at {}, journeys from {}, every channel only logs its messages (kind `log`), listening on {} without API keys",
            path.display(),
            config.database,
            config.journeys.display(),
            config.listen
        );
    } else {
        tracing::info!(
            config = %path.display(),
            database = %redact(&config.database),
            journeys = %config.journeys.display(),
            listen = %config.listen,
            api_keys = config.api_keys.len(),
            "starting"
        );
    }

    let channels = Arc::new(
        Channels::build(&registry, &config.channels, config.defaults)
            .with_context(|| format!("config: {}", path.display()))?,
    );
    let workspace = match waymark_journey::load(&config.journeys) {
        Ok((workspace, warnings)) => {
            for w in &warnings {
                tracing::warn!("{}", w.render());
            }
            workspace
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                eprintln!("{}", d.render());
            }
            bail!(
                "the journeys in {} have errors; run `waymark check {}`",
                config.journeys.display(),
                config.journeys.display()
            );
        }
    };
    if let Err(diagnostics) = daemon::check_channels(&workspace, &channels, &config.policy) {
        for d in &diagnostics {
            eprintln!("{}", d.render());
        }
        bail!("the journeys do not fit the channels and the policy of the daemon config");
    }

    let alone = hold_embedded_database(&config.database)?;
    let store = open_store(&config.database).await?;
    if alone.is_some() {
        // Nothing else delivers from this database: messages still claimed were cut off
        // by the last stop, and go out now rather than when their leases run out.
        let now = waymark_scheduler::Clock::now(&SystemClock);
        let released = store
            .release_claims(now, dispatch::LEASE)
            .await
            .context("releasing the outbox claims of the last run")?;
        if released > 0 {
            tracing::info!(
                messages = released,
                "resuming deliveries cut off by the last stop"
            );
        }
    }
    // Bound before anything is built on the address: with port 0 the address links and
    // signed callbacks use is the port the system picked.
    let listener = tokio::net::TcpListener::bind(addrs.as_slice())
        .await
        .with_context(|| format!("`listen`: cannot bind {}", config.listen))?;
    let mut config = config;
    config.listen = Listen::Addr(listener.local_addr()?);
    if config.link_secret.is_none() {
        let fresh = crate::links::generate_secret().context("generating the link secret")?;
        let kept = store
            .setting_or_insert("link_secret", &fresh)
            .await
            .context("keeping the link secret in the database")?;
        config.link_secret = Some(kept);
    }
    tracing::info!(public_url = %config.public_base(), "links in messages and provider callbacks use this address");
    let clock = Arc::new(SystemClock);
    let now = waymark_scheduler::Clock::now(clock.as_ref());
    daemon::record_versions(store.as_ref(), &workspace, now).await;
    let older = daemon::restore_versions(store.as_ref(), &workspace).await;
    let directory: Arc<dyn ChannelDirectory> = channels.clone();
    let mut engine = Engine::new(workspace.clone(), config.policy.clone(), directory);
    if !older.is_empty() {
        for old in older {
            engine.reload(old);
        }
        engine.reload(workspace.clone());
    }
    tracing::info!(journeys = workspace.journeys.len(), "journeys loaded");

    let daemon = Daemon::new(store, engine, channels, clock, config);
    let replayed = daemon.sweep_inbox().await.context("replaying the inbox")?;
    if replayed > 0 {
        tracing::info!(
            events = replayed,
            "replaying events accepted before the last stop"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let timers = tokio::spawn(daemon.clone().timer_loop(stop_rx.clone()));
    let dispatcher = tokio::spawn(daemon.clone().dispatch_loop(stop_rx.clone()));
    let reloader = tokio::spawn(reload_on_sighup(daemon.clone(), stop_rx));

    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, crate::api::router(daemon.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;

    tracing::info!("shutting down: finishing the work under way");
    let _ = stop_tx.send(true);
    if !daemon.drain(DRAIN_TIMEOUT).await {
        tracing::warn!("some customers' inputs were still queued; they resume at the next start");
    }
    let _ = tokio::join!(timers, dispatcher, reloader);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A database URL without its password, for the log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP reloads the journeys (validated first; on errors the running set stays).
async fn reload_on_sighup(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    if let Err(diagnostics) = daemon.reload().await {
                        for d in &diagnostics {
                            tracing::error!("{}", d.render());
                        }
                        tracing::error!("reload refused: the journeys have errors; the running set is kept");
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (daemon, stop.changed().await);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://app:hunter2@db/waymark"),
            "postgres://app:***@db/waymark"
        );
        assert_eq!(
            super::redact("sqlite://./data/w.db"),
            "sqlite://./data/w.db"
        );
    }
}
