//! `waymark.yaml`: where the journeys and the database are, where to listen, the default
//! send policy and the channels.
//!
//! Every value may use `${ENV}`; the file is validated completely at start (before
//! anything is opened or contacted), and each error names the file and the key it is
//! about. Relative paths in it are relative to the file's folder.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use waymark_journey::Policy;

/// The file `waymark serve` reads when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "waymark.yaml";

/// A config problem, naming the file and the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, when one was read.
    pub file: Option<PathBuf>,
    /// The key path, such as `channels.sms.auth_token`; empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: None,
        key: key.into(),
        message: message.into(),
    }
}

/// The daemon's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The journeys workspace; relative to the config file's folder when read from one.
    pub journeys: PathBuf,
    /// `sqlite://path` (or `postgres://...`); a relative SQLite path is relative to the
    /// config file's folder when read from one.
    pub database: String,
    /// Where the API listens; from the start on, the address bound.
    pub listen: Listen,
    /// Bearer tokens; empty means no authentication (loopback only).
    pub api_keys: Vec<String>,
    /// The base policy under each journey's own `policy:`.
    pub policy: Policy,
    /// Channel name -> its config section (with `kind`).
    pub channels: BTreeMap<String, Value>,
    /// The daemon's address as customers and providers reach it, for the links it puts
    /// in messages and for checking signed provider callbacks; `http://{listen}` if unset.
    pub public_url: Option<String>,
    /// Signs unsubscribe and tracking links; when unset, one is generated at the first
    /// start and kept in the database, so links stay valid across restarts.
    pub link_secret: Option<String>,
    pub tracking: Tracking,
    /// No file was read: every channel a journey names is a `log` channel.
    pub defaults: bool,
    /// Where it was read from.
    pub source: Option<PathBuf>,
}

/// The file as written, before validation of the values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    journeys: Option<PathBuf>,
    database: Option<String>,
    listen: Option<String>,
    #[serde(default)]
    api_keys: Vec<String>,
    policy: Option<Value>,
    #[serde(default)]
    channels: BTreeMap<String, Value>,
    public_url: Option<String>,
    link_secret: Option<String>,
    tracking: Option<Value>,
}

/// Email open and click tracking (`tracking:`): off unless asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracking {
    /// A 1x1 image in each HTML message records `message_opened`.
    #[serde(default)]
    pub opens: bool,
    /// Web links in HTML messages go through a redirect that records `message_clicked`.
    #[serde(default)]
    pub clicks: bool,
}

impl Config {
    /// The settings used without a config file: an embedded database under `./data`,
    /// journeys from `./journeys`, `log` channels, loopback, no API keys.
    pub fn defaults() -> Config {
        Config {
            journeys: PathBuf::from("journeys"),
            database: "sqlite://./data/waymark.db".to_owned(),
            listen: Listen::Addr(SocketAddr::from(([127, 0, 0, 1], 8080))),
            api_keys: Vec::new(),
            policy: Policy::default(),
            channels: BTreeMap::new(),
            public_url: None,
            link_secret: None,
            tracking: Tracking::default(),
            defaults: true,
            source: None,
        }
    }

    /// Reads `path`; with `explicit` false a missing file means [`Config::defaults`].
    /// Relative `journeys` and SQLite `database` paths are taken from the file's folder,
    /// as docker-compose does, so the daemon finds them whatever directory it runs in.
    ///
    /// # Errors
    /// The file cannot be read (or is missing when given explicitly), or is invalid.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let in_file = |e: ConfigError| ConfigError {
            file: Some(path.to_path_buf()),
            ..e
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut config =
                    Config::parse(&text, &|name| std::env::var(name).ok()).map_err(in_file)?;
                config
                    .resolve_paths(path.parent().unwrap_or(Path::new("")))
                    .map_err(in_file)?;
                config.source = Some(path.to_path_buf());
                Ok(config)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::defaults())
            }
            Err(e) => Err(in_file(error("", format!("cannot read it: {e}")))),
        }
    }

    /// Takes relative `journeys` and SQLite `database` paths from `dir` (the config
    /// file's folder); `dir` empty leaves them relative to the working directory.
    ///
    /// # Errors
    /// A relative SQLite path under a folder whose name is not UTF-8 (the URL is text).
    pub fn resolve_paths(&mut self, dir: &Path) -> Result<(), ConfigError> {
        self.journeys = beside(dir, &self.journeys);
        if let Some(rest) = self.database.strip_prefix("sqlite:") {
            let file = rest.trim_start_matches("//");
            let (file, query) = file.split_at(file.find('?').unwrap_or(file.len()));
            // `:memory:` and its kind are not files.
            if !file.is_empty() && !file.starts_with(':') {
                let path = beside(dir, Path::new(file));
                let path = path.to_str().ok_or_else(|| {
                    error(
                        "database",
                        format!(
                            "the config file's folder {} is not UTF-8: give an absolute path",
                            dir.display()
                        ),
                    )
                })?;
                self.database = format!("sqlite://{path}{query}");
            }
        }
        Ok(())
    }

    /// Parses and validates a config text, taking `${NAME}` values from `env`.
    ///
    /// # Errors
    /// Invalid YAML, an unknown key, a wrong type, an unset variable, or a value that
    /// does not validate.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut value = waymark_journey::yaml_to_json(text)
            .map_err(|d| error("", format!("invalid YAML: {}", d.message)))?;
        if value.is_null() {
            value = Value::Object(serde_json::Map::new());
        }
        substitute(&mut value, "", env, true)?;
        let raw: RawConfig = deserialize(value, "")?;
        let defaults = Config::defaults();
        let listen = match raw.listen {
            Some(text) => Listen::parse(&text)
                .map_err(|e| error("listen", format!("`{text}` is not HOST:PORT: {e}")))?,
            None => defaults.listen,
        };
        let policy = match &raw.policy {
            Some(section) => {
                let o = waymark_journey::policy_override_from_json(section)
                    .map_err(|m| error("policy", m))?;
                Policy::default().with(&o)
            }
            None => Policy::default(),
        };
        for (i, key) in raw.api_keys.iter().enumerate() {
            if key.trim().is_empty() {
                return Err(error(
                    format!("api_keys[{i}]"),
                    "an API key must not be empty",
                ));
            }
        }
        for (name, section) in &raw.channels {
            let kind = section.get("kind").and_then(Value::as_str);
            if !section.is_object() || kind.is_none() {
                return Err(error(
                    format!("channels.{name}"),
                    "a channel is a mapping with a `kind` (such as `log`, `smtp`, `telegram`)",
                ));
            }
        }
        let database = raw.database.unwrap_or(defaults.database);
        if !(database.starts_with("sqlite:") || database.starts_with("postgres")) {
            return Err(error(
                "database",
                format!("`{database}` is neither sqlite://PATH nor postgres://..."),
            ));
        }
        if let Some(url) = &raw.public_url
            && !crate::links::is_web_link(url)
        {
            return Err(error(
                "public_url",
                format!("`{url}` is not an http:// or https:// URL"),
            ));
        }
        if raw.link_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(error(
                "link_secret",
                "must be at least 16 characters: it is all that stops forged links",
            ));
        }
        let config = Config {
            journeys: raw.journeys.unwrap_or(defaults.journeys),
            database,
            listen,
            api_keys: raw.api_keys,
            policy,
            channels: raw.channels,
            public_url: raw.public_url,
            link_secret: raw.link_secret,
            tracking: match raw.tracking {
                Some(section) => deserialize(section, "tracking.")?,
                None => Tracking::default(),
            },
            defaults: false,
            source: None,
        };
        // A host name is judged once resolved, at start.
        if let Listen::Addr(addr) = config.listen {
            config.check_exposure(&[addr])?;
        }
        Ok(config)
    }

    /// Where customers and providers reach the daemon: `public_url`, else the listen
    /// address (loopback when listening on every interface).
    pub fn public_base(&self) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        match &self.listen {
            Listen::Addr(addr) => {
                let mut addr = *addr;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
            Listen::Host { host, port } => format!("http://{host}:{port}"),
        }
    }

    /// Refuses to listen beyond loopback without API keys: an open ingest endpoint lets
    /// anyone message every customer. `addrs` are what `listen` resolved to; every one
    /// must be loopback.
    ///
    /// # Errors
    /// A non-loopback address with no `api_keys`.
    pub fn check_exposure(&self, addrs: &[SocketAddr]) -> Result<(), ConfigError> {
        if self.api_keys.is_empty()
            && let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
        {
            let what = match &self.listen {
                Listen::Addr(_) => open.to_string(),
                Listen::Host { .. } => format!("{} ({open})", self.listen),
            };
            return Err(ConfigError {
                file: self.source.clone(),
                ..error(
                    "api_keys",
                    format!("listening on {what} (beyond loopback) needs at least one API key"),
                )
            });
        }
        Ok(())
    }
}

/// `listen:`: an IP address and port, or a host name and port, resolved at start (no I/O
/// while the config is validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

impl Listen {
    /// `127.0.0.1:8080`, `[::1]:8080` or `localhost:8080`.
    ///
    /// # Errors
    /// No port, a port out of range, or a host that is neither an IP address nor a name.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Listen::Addr(addr));
        }
        let (host, port) = text.rsplit_once(':').ok_or("no `:PORT`")?;
        let port = port
            .parse()
            .map_err(|_| format!("`{port}` is not a port number (0 to 65535)"))?;
        if !is_host_name(host) {
            return Err(format!("`{host}` is neither an IP address nor a host name"));
        }
        Ok(Listen::Host {
            host: host.to_owned(),
            port,
        })
    }

    /// The addresses to bind: this one, or every address the host name resolves to.
    ///
    /// # Errors
    /// The name does not resolve.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        match self {
            Listen::Addr(addr) => Ok(vec![*addr]),
            Listen::Host { host, port } => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| error("listen", format!("cannot resolve `{host}`: {e}")))?
                    .collect();
                if addrs.is_empty() {
                    return Err(error("listen", format!("`{host}` resolves to no address")));
                }
                Ok(addrs)
            }
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Addr(addr) => addr.fmt(f),
            Listen::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A DNS name (RFC 1123 labels); a last label of digits only is a mistyped IP address.
fn is_host_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

/// `path` taken from `dir`, unless absolute (or `dir` is empty: the working directory).
fn beside(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() || dir.as_os_str().is_empty() {
        return path.to_path_buf();
    }
    let mut out = dir.to_path_buf();
    // `./journeys` reads better in the log as `dir/journeys` than `dir/./journeys`.
    for part in path.components().filter(|c| *c != Component::CurDir) {
        out.push(part);
    }
    out
}

/// Reads a section, naming the key of an unknown or missing field (with `prefix`, the
/// section's own key and a dot).
fn deserialize<T: serde::de::DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> Result<T, ConfigError> {
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        // serde names unknown and missing keys in backquotes; point at them.
        let key = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("unknown field") || message.starts_with("missing"))
            .map_or_else(
                || prefix.trim_end_matches('.').to_owned(),
                |k| format!("{prefix}{k}"),
            );
        error(key, message)
    })
}

/// The top-level keys whose values are text whatever a variable holds: a numeric API key
/// stays a key.
const TEXT_KEYS: &[&str] = &[
    "journeys",
    "database",
    "listen",
    "api_keys",
    "public_url",
    "link_secret",
];

/// Replaces `${NAME}` in every string, depth first, naming the key of an unset variable.
///
/// A string that is one reference and nothing else takes the type of the variable's text,
/// as YAML would read it written there: `max: "${MAX}"` with `MAX=3` is the number 3,
/// `opens: "${OPENS}"` with `OPENS=true` a boolean (with `typed`; see [`TEXT_KEYS`]).
/// Only text that reads back the same becomes a number, so `+15550001`, `007` or
/// `5.199` stay strings; a reference inside longer text always gives a string.
fn substitute(
    value: &mut Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    typed: bool,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) => {
            let whole = is_one_reference(text);
            let out = expand(text, key, env)?;
            *value = if whole && typed {
                scalar(out)
            } else {
                Value::String(out)
            };
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{key}[{i}]"), env, typed)?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let (path, typed) = if key.is_empty() {
                    (k.clone(), typed && !TEXT_KEYS.contains(&k.as_str()))
                } else {
                    (format!("{key}.{k}"), typed)
                };
                substitute(item, &path, env, typed)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `${NAME}` and nothing else.
fn is_one_reference(text: &str) -> bool {
    text.strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|name| !name.contains('}') && !name.contains("${"))
}

fn expand(
    text: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| error(key, "`${` without a closing `}`"))?;
        let name = &after[..end];
        let found = env(name)
            .ok_or_else(|| error(key, format!("environment variable `{name}` is not set")))?;
        out.push_str(&found);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A variable's text as a YAML scalar: `true`/`false`, an integer written as Rust (and
/// YAML) would print it, else the text.
fn scalar(text: String) -> Value {
    match text.as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    match text.parse::<i64>() {
        Ok(n) if n.to_string() == text => Value::from(n),
        _ => Value::String(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "secret".to_owned())
    }

    #[test]
    fn substitutes_variables_and_reads_every_section() {
        let config = Config::parse(
            "journeys: ./j\ndatabase: sqlite://./x.db\nlisten: 0.0.0.0:9000\n\
             api_keys: [\"${KEY}\"]\npolicy: {timezone: Europe/Moscow}\n\
             channels:\n  email: {kind: log}\n",
            &env,
        )
        .unwrap();
        assert_eq!(config.api_keys, vec!["secret".to_owned()]);
        assert_eq!(config.listen, Listen::Addr("0.0.0.0:9000".parse().unwrap()));
        assert_eq!(config.policy.timezone.name(), "Europe/Moscow");
        assert!(config.channels.contains_key("email"));
    }

    #[test]
    fn errors_name_the_key() {
        let unset = Config::parse("channels:\n  sms: {kind: log, token: \"${NOPE}\"}\n", &env);
        assert_eq!(unset.unwrap_err().key, "channels.sms.token");
        let unknown = Config::parse("listn: 1\n", &env).unwrap_err();
        assert_eq!(unknown.key, "listn");
        let open = Config::parse("listen: 0.0.0.0:80\n", &env).unwrap_err();
        assert_eq!(open.key, "api_keys");
        let bad = Config::parse("listen: nowhere\n", &env).unwrap_err();
        assert_eq!(bad.key, "listen");
        let kindless = Config::parse("channels:\n  sms: {url: x}\n", &env).unwrap_err();
        assert_eq!(kindless.key, "channels.sms");
        let url = Config::parse("public_url: waymark.example\n", &env).unwrap_err();
        assert_eq!(url.key, "public_url");
        let short = Config::parse("link_secret: abc\n", &env).unwrap_err();
        assert_eq!(short.key, "link_secret");
        let tracking = Config::parse("tracking: {opens: true, click: true}\n", &env);
        assert_eq!(tracking.unwrap_err().key, "tracking.click");
        let tracking = Config::parse("tracking: {opens: yes please}\n", &env);
        assert_eq!(tracking.unwrap_err().key, "tracking");
    }

    #[test]
    fn the_public_base_defaults_to_the_listen_address() {
        let config = Config::parse("public_url: https://w.example/\n", &env).unwrap();
        assert_eq!(config.public_base(), "https://w.example");
        let config = Config::parse("listen: 0.0.0.0:9000\napi_keys: [k]\n", &env).unwrap();
        assert_eq!(config.public_base(), "http://127.0.0.1:9000");
    }

    fn vars(name: &str) -> Option<String> {
        let value = match name {
            "MAX" => "3",
            "ON" => "true",
            "N" => "4",
            "PHONE" => "+15550001",
            "CODE" => "007",
            "VERSION" => "5.199",
            "DIGITS" => "1234567890123456",
            _ => return None,
        };
        Some(value.to_owned())
    }

    #[test]
    fn a_value_that_is_one_variable_takes_the_variables_type() {
        let config = Config::parse(
            "policy:\n  frequency_cap: {max: \"${MAX}\", per: 7d}\n\
             tracking:\n  opens: \"${ON}\"\n  clicks: ${ON}\n\
             api_keys: [\"${DIGITS}\"]\n\
             link_secret: \"${DIGITS}\"\n\
             channels:\n  crm:\n    kind: webhook\n    concurrency: \"${N}\"\n    timeout: \"${N}\"\n\
             \x20   from: \"${PHONE}\"\n    code: \"${CODE}\"\n    version: \"${VERSION}\"\n\
             \x20   label: \"n=${N}\"\n",
            &vars,
        )
        .unwrap();
        assert_eq!(config.policy.frequency_caps[0].max, 3);
        assert_eq!(
            config.tracking,
            Tracking {
                opens: true,
                clicks: true
            }
        );
        // The top-level keys are text by definition.
        assert_eq!(config.api_keys, ["1234567890123456"]);
        assert_eq!(config.link_secret.as_deref(), Some("1234567890123456"));
        let crm = &config.channels["crm"];
        assert_eq!(crm["concurrency"], serde_json::json!(4));
        assert_eq!(crm["timeout"], serde_json::json!(4));
        // Only text that reads back the same becomes a number; longer text is text.
        assert_eq!(crm["from"], "+15550001");
        assert_eq!(crm["code"], "007");
        assert_eq!(crm["version"], "5.199");
        assert_eq!(crm["label"], "n=4");

        let unset = Config::parse(
            "policy:\n  frequency_cap: {max: \"${NOPE}\", per: 7d}\n",
            &vars,
        )
        .unwrap_err();
        assert_eq!(unset.key, "policy.frequency_cap.max");
        assert!(unset.message.contains("`NOPE`"), "{}", unset.message);
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_files_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("waymark.yaml");
        std::fs::write(
            &file,
            "journeys: ./journeys\ndatabase: sqlite://./data/w.db?mode=rwc\n",
        )
        .unwrap();
        let config = Config::load(&file, true).unwrap();
        assert_eq!(config.journeys, dir.path().join("journeys"));
        let db = dir.path().join("data/w.db");
        assert_eq!(
            config.database,
            format!("sqlite://{}?mode=rwc", db.display())
        );

        let mut config =
            Config::parse("journeys: /srv/j\ndatabase: sqlite:///srv/w.db\n", &env).unwrap();
        config.resolve_paths(Path::new("/etc/waymark")).unwrap();
        assert_eq!(config.journeys, Path::new("/srv/j"));
        assert_eq!(config.database, "sqlite:///srv/w.db");
        let mut config = Config::parse("database: \"sqlite::memory:\"\n", &env).unwrap();
        config.resolve_paths(Path::new("/etc/waymark")).unwrap();
        assert_eq!(config.database, "sqlite::memory:");
        // `waymark.yaml` in the working directory: relative to it, as before.
        let mut config = Config::defaults();
        config.resolve_paths(Path::new("")).unwrap();
        assert_eq!(config.journeys, Path::new("journeys"));

        std::fs::write(&file, "listn: x\n").unwrap();
        let error = Config::load(&file, true).unwrap_err().to_string();
        assert!(error.starts_with(&file.display().to_string()), "{error}");
    }

    #[test]
    fn listen_takes_a_host_name_judged_by_its_addresses() {
        let config = Config::parse("listen: localhost:8080\n", &env).unwrap();
        assert_eq!(
            config.listen,
            Listen::Host {
                host: "localhost".to_owned(),
                port: 8080
            }
        );
        assert_eq!(config.public_base(), "http://localhost:8080");
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let public: SocketAddr = "192.0.2.7:8080".parse().unwrap();
        config
            .check_exposure(&[loopback, "[::1]:8080".parse().unwrap()])
            .unwrap();
        let open = config.check_exposure(&[loopback, public]).unwrap_err();
        assert_eq!(open.key, "api_keys");
        assert!(
            open.message.contains("localhost:8080 (192.0.2.7:8080)"),
            "{}",
            open.message
        );
        for bad in [
            "localhost",
            "localhost:http",
            "local_host:80",
            "999.1.1.1:80",
            ":80",
        ] {
            let error = Config::parse(&format!("listen: \"{bad}\"\n"), &env).unwrap_err();
            assert_eq!(error.key, "listen", "{bad}");
        }
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let config = Config::parse("listen: localhost:0\n", &env).unwrap();
        let addrs = config.listen.resolve().await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        config.check_exposure(&addrs).unwrap();
    }
}
