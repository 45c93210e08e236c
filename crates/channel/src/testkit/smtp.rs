//! A real SMTP server for tests: `smtp_sink.py` beside this file, an aiosmtpd server that
//! stores what it receives and refuses scripted recipients.
//!
//! It needs `python3` with aiosmtpd (`python3 -m pip install aiosmtpd`); without them
//! [`SmtpSink::start`] panics and says so, so a test never passes having checked nothing.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/testkit/smtp_sink.py");
const INSTALL: &str =
    "the SMTP sink needs python3 with aiosmtpd: `python3 -m pip install aiosmtpd`";

/// One running `smtp_sink.py` on 127.0.0.1, killed when dropped.
pub struct SmtpSink {
    port: u16,
    dir: tempfile::TempDir,
    _child: Child,
}

/// A message as the sink stored it.
pub struct ReceivedMail {
    /// The message as received, CRLF line ends included.
    pub raw: String,
    /// Envelope (`mail_from`, `rcpt_tos`) and a parse by Python's `email` package (an
    /// independent MIME decoder) under `parsed`; see `smtp_sink.py`.
    pub summary: Value,
}

impl ReceivedMail {
    /// The envelope recipients.
    pub fn rcpt_tos(&self) -> Vec<&str> {
        self.summary["rcpt_tos"]
            .as_array()
            .expect("rcpt_tos")
            .iter()
            .filter_map(Value::as_str)
            .collect()
    }

    /// A header as Python decoded it (RFC 2047 words resolved), by lower-case name.
    pub fn header(&self, name: &str) -> &str {
        self.summary["parsed"]["headers"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no `{name}` header in:\n{}", self.raw))
    }

    /// A header line as sent, `Name: value`, unfolded.
    pub fn raw_header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or_default();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        let prefix = format!("{}:", name.to_ascii_lowercase());
        unfolded
            .split("\r\n")
            .find(|line| line.to_ascii_lowercase().starts_with(&prefix))
            .map(str::to_owned)
    }

    pub fn content_type(&self) -> &str {
        self.summary["parsed"]["content_type"]
            .as_str()
            .expect("content_type")
    }

    /// The decoded content of the leaf part with this content type, with `\n` line ends
    /// and no trailing whitespace.
    pub fn part(&self, content_type: &str) -> Option<String> {
        self.summary["parsed"]["parts"]
            .as_array()
            .expect("parts")
            .iter()
            .find(|part| part["content_type"] == content_type && part.get("content").is_some())
            .and_then(|part| part["content"].as_str())
            .map(|content| content.replace("\r\n", "\n").trim_end().to_owned())
    }
}

impl SmtpSink {
    /// Starts the sink with `smtp_sink.py`'s options (`--reject ADDR`, `--defer ADDR`,
    /// `--auth USER:PASSWORD`) and waits until it accepts connections.
    pub async fn start(args: &[&str]) -> SmtpSink {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let ready = tokio::time::timeout(
            Duration::from_secs(20),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        let port = line
            .strip_prefix("READY ")
            .and_then(|port| port.trim().parse().ok());
        let Some(port) = port else {
            let _ = child.start_kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), pipe.read_to_string(&mut stderr))
                        .await;
            }
            panic!(
                "the SMTP sink did not start ({}); {INSTALL}\nstdout: {line}\nstderr: {stderr}",
                if ready.is_err() {
                    "timed out"
                } else {
                    "exited"
                }
            );
        };
        SmtpSink {
            port,
            dir,
            _child: child,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `smtp://127.0.0.1:PORT`, as an `smtp` channel's `url`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedMail> {
        let mut received = Vec::new();
        for number in 1.. {
            let base = self.dir.path().join(number.to_string());
            let json = base.with_extension("json");
            if !json.exists() {
                break;
            }
            received.push(ReceivedMail {
                raw: read(&base.with_extension("eml")),
                summary: serde_json::from_str(&read(&json)).expect("the sink writes JSON"),
            });
        }
        received
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
