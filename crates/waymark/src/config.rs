//! `waymark.yaml`: where the journeys and the database are, where to listen, the default
//! send policy and the channels.
//!
//! Every string value may use `${ENV}`; the file is validated completely at start (before
//! anything is opened or contacted), and each error names the key it is about.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use waymark_journey::Policy;

/// The file `waymark serve` reads when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "waymark.yaml";

/// A config problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key path, such as `channels.sms.auth_token`; empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        key: key.into(),
        message: message.into(),
    }
}

/// The daemon's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The journeys workspace.
    pub journeys: PathBuf,
    /// `sqlite://path` (or `postgres://...`).
    pub database: String,
    pub listen: SocketAddr,
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
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
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
    ///
    /// # Errors
    /// The file cannot be read (or is missing when given explicitly), or is invalid.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut config = Config::parse(&text, &|name| std::env::var(name).ok())?;
                config.source = Some(path.to_path_buf());
                Ok(config)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::defaults())
            }
            Err(e) => Err(error("", format!("cannot read {}: {e}", path.display()))),
        }
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
        substitute(&mut value, "", env)?;
        let raw: RawConfig = deserialize(value, "")?;
        let defaults = Config::defaults();
        let listen = match raw.listen {
            Some(text) => text
                .parse()
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
        config.check_exposure()?;
        Ok(config)
    }

    /// Where customers and providers reach the daemon: `public_url`, else the listen
    /// address (loopback when listening on every interface).
    pub fn public_base(&self) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// Refuses to listen beyond loopback without API keys: an open ingest endpoint lets
    /// anyone message every customer.
    ///
    /// # Errors
    /// A non-loopback `listen` with no `api_keys`.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.api_keys.is_empty() {
            return Err(error(
                "api_keys",
                format!(
                    "listening on {} (beyond loopback) needs at least one API key",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
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

/// Replaces `${NAME}` in every string, depth first, naming the key of an unset variable.
fn substitute(
    value: &mut Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) => {
            let mut out = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| error(key, "`${` without a closing `}`"))?;
                let name = &after[..end];
                let found = env(name).ok_or_else(|| {
                    error(key, format!("environment variable `{name}` is not set"))
                })?;
                out.push_str(&found);
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *text = out;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{key}[{i}]"), env)?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let path = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                substitute(item, &path, env)?;
            }
        }
        _ => {}
    }
    Ok(())
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
        assert_eq!(config.listen.port(), 9000);
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
}
