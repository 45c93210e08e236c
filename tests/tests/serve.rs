//! `waymark serve` as a process: a temp workspace, a temp SQLite file, HTTP over a real
//! socket, a `kill -9` in the middle of a journey, SIGTERM, and a refused config.

use std::time::Duration;

use serde_json::json;
use waymark_tests::{Site, sent};

const DAEMON: &str = env!("CARGO_BIN_EXE_waymark-daemon");

const WELCOME: &str = "
id: welcome
trigger:
  event: signed_up
steps:
  hello:
    send: email
    template: hello
    next: pause
  pause:
    wait: 1s
    next: again
  again:
    send: email
    template: hello
";

const HELLO: &str = "
email:
  subject: \"Hello {{ profile.first_name | default: 'there' }}\"
  text: \"Welcome aboard\"
";

/// The welcome journey, sending through a `log` channel.
fn site() -> Site {
    let mut site = Site::new(DAEMON);
    site.write("welcome.yaml", WELCOME);
    site.write("templates/hello.yaml", HELLO);
    site.configure("channels:\n  email: {kind: log}");
    site
}

/// How many times the log channel printed the message with this key, over every run.
fn delivered(site: &Site, key: &str) -> usize {
    delivered_in(&site.logs(), key)
}

/// How many times the log channel delivered `key` in `log`.
fn delivered_in(log: &str, key: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("waymark::log_channel") && l.contains(&format!("key={key} ")))
        .count()
}

#[tokio::test]
async fn serves_tracks_dedupes_and_logs_messages() {
    let mut site = site();
    let d = site.start().await;
    let (status, health) = d.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    d.ok(
        "/v1/identify",
        &json!({"userId": "ann", "traits": {"email": "ann@example.com", "first_name": "Ann"}}),
    )
    .await;
    let track = json!({"userId": "ann", "event": "signed_up", "messageId": "m-1"});
    assert_eq!(d.ok("/v1/track", &track).await["success"], true);
    assert_eq!(d.ok("/v1/track", &track).await["duplicate"], true);

    waymark_tests::eventually("ann's first message is sent", || async {
        sent(&d.profile("ann").await, "ann:1:hello:1")
    })
    .await;
    let p = d.profile("ann").await;
    assert_eq!(p["events"].as_array().unwrap().len(), 1, "{p}");
    assert_eq!(p["enrollments"][0]["step"], "pause");
    assert_eq!(delivered(&site, "ann:1:hello:1"), 1);
    assert!(d.log().contains("Hello Ann"), "{}", d.log());

    let (status, error) = d.post("/v1/track", &json!({"userId": "ann"})).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("event")));
}

#[tokio::test]
async fn a_kill_9_loses_no_event_and_timers_fire_once_after_restart() {
    let mut site = site();
    let d = site.start().await;
    d.ok(
        "/v1/identify",
        &json!({"userId": "ann", "traits": {"email": "ann@example.com"}}),
    )
    .await;
    d.ok(
        "/v1/track",
        &json!({"userId": "ann", "event": "signed_up", "messageId": "a-1"}),
    )
    .await;
    waymark_tests::eventually("ann's first message is sent", || async {
        sent(&d.profile("ann").await, "ann:1:hello:1")
    })
    .await;
    // Accepted, then killed at once: the event may not have been handled yet.
    d.ok(
        "/v1/identify",
        &json!({"userId": "bob", "traits": {"email": "bob@example.com"}}),
    )
    .await;
    d.ok(
        "/v1/track",
        &json!({"userId": "bob", "event": "signed_up", "messageId": "b-1"}),
    )
    .await;
    d.kill().await;

    // Down past ann's 1 s wait: her timer is due when the daemon comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = site.start().await;
    waymark_tests::eventually("both customers' second messages are sent", || async {
        sent(&d.profile("ann").await, "ann:1:again:2")
            && sent(&d.profile("bob").await, "bob:1:again:2")
    })
    .await;
    let bob = d.profile("bob").await;
    assert_eq!(bob["events"].as_array().unwrap().len(), 1, "{bob}");
    // The messageId is still remembered after the restart.
    let again = json!({"userId": "bob", "event": "signed_up", "messageId": "b-1"});
    assert_eq!(d.ok("/v1/track", &again).await["duplicate"], true);
    for key in ["ann:1:hello:1", "ann:1:again:2", "bob:1:again:2"] {
        assert_eq!(delivered(&site, key), 1, "{key} delivered once");
    }
    // The kill may have come between the log line of bob's welcome and the daemon's
    // record of it: the one window in which the spec allows a second send. Each run still
    // sends it at most once, and the restart sends it if the first run did not.
    let all = delivered(&site, "bob:1:hello:1");
    let after_restart = delivered_in(&d.log(), "bob:1:hello:1");
    let before_kill = all - after_restart;
    assert!(
        all >= 1 && before_kill <= 1 && after_restart <= 1,
        "{}",
        site.logs()
    );
    let ann = d.profile("ann").await;
    assert_eq!(ann["enrollments"][0]["outcome"], "completed", "{ann}");
    assert_eq!(waymark_tests::messages(&ann).len(), 2);
}

/// The embedded database serves one daemon: a second on the same file would claim the
/// messages the first is delivering.
#[tokio::test]
async fn a_second_daemon_on_the_same_database_refuses_to_start() {
    let mut site = site();
    let d = site.start().await;
    let out = tokio::process::Command::new(DAEMON)
        .args(["--config", "waymark.yaml"])
        .current_dir(site.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`database`") && stderr.contains("in use by another waymark daemon"),
        "{stderr}"
    );
    let (status, _) = d.get("/healthz").await;
    assert_eq!(status, 200, "the first daemon runs on");
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_an_open_listen_needs_keys() {
    let mut site = site();
    let d = site.start().await;
    let status = d.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(site.logs().contains("stopped"), "{}", site.logs());

    std::fs::write(site.path().join("open.yaml"), "listen: 0.0.0.0:0\n").unwrap();
    let out = tokio::process::Command::new(DAEMON)
        .args(["--config", "open.yaml"])
        .current_dir(site.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api_keys"), "{stderr}");
}

const NUDGE: &str = "
id: nudge
trigger:
  event: nudge
steps:
  remind:
    send: preferred
    template: nudge
";

/// Parts for the language's default `channels` (`email`, `sms`): what `waymark check`
/// asks of a journey without its own `policy.channels`.
const NUDGE_TEMPLATE: &str = "
email:
  subject: \"Still there?\"
  text: \"We miss you\"
sms:
  text: \"We miss you\"
";

/// Runs the daemon on `site`'s directory with `settings` as the rest of its config and
/// answers its stderr, asserting it refused to start.
async fn refused(site: &Site, settings: &str) -> String {
    std::fs::write(
        site.path().join("refused.yaml"),
        format!(
            "journeys: ./journeys\ndatabase: sqlite://./data/waymark.db\nlisten: 127.0.0.1:0\n{settings}\n"
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(DAEMON)
        .args(["--config", "refused.yaml"])
        .current_dir(site.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the daemon started:\n{stderr}");
    stderr
}

/// `send: preferred` may use any channel of the daemon's `policy.channels` (the journey
/// sets none): each must be configured, and the template needs a part for each, at start
/// and on reload, which keeps the running journeys when it refuses.
#[tokio::test]
async fn preferred_sends_are_checked_against_the_daemon_policy() {
    let mut site = Site::new(DAEMON);
    site.write("nudge.yaml", NUDGE);
    site.write("templates/nudge.yaml", NUDGE_TEMPLATE);
    let policy = "policy: {channels: [telegram, email]}\n";

    let stderr = refused(&site, &format!("{policy}channels:\n  email: {{kind: log}}")).await;
    assert!(
        stderr.contains("nudge.yaml:6:3: error: step `remind` sends on `preferred`")
            && stderr
                .contains("may use channel `telegram` of the daemon config's `policy.channels`")
            && stderr.contains("= D0001"),
        "{stderr}"
    );

    let settings = format!("{policy}channels:\n  email: {{kind: log}}\n  telegram: {{kind: log}}");
    let stderr = refused(&site, &settings).await;
    assert!(
        stderr
            .contains("nudge.yaml:6:3: error: template `nudge` has no part for channel `telegram`")
            && stderr.contains("6 |   remind:")
            && stderr.contains("= E0020 template-lacks-channel"),
        "{stderr}"
    );

    let with_telegram = format!("{NUDGE_TEMPLATE}telegram:\n  text: \"We miss you\"\n");
    site.write("templates/nudge.yaml", &with_telegram);
    site.configure(&settings);
    let d = site.start().await;
    d.ok(
        "/v1/identify",
        &json!({"userId": "ann", "traits": {"email": "ann@example.com", "telegram_chat_id": "501"}}),
    )
    .await;
    d.ok("/v1/track", &json!({"userId": "ann", "event": "nudge"}))
        .await;
    waymark_tests::eventually("ann's nudge goes out on telegram", || async {
        let ann = d.profile("ann").await;
        waymark_tests::messages(&ann)
            .iter()
            .any(|m| m["channel"] == "telegram" && m["delivery"] == "sent")
    })
    .await;

    site.write("templates/nudge.yaml", NUDGE_TEMPLATE);
    let (status, answer) = d.post("/v1/reload", &json!({})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer
            .to_string()
            .contains("has no part for channel `telegram`"),
        "{answer}"
    );
    let (_, journeys) = d.get("/v1/journeys").await;
    assert_eq!(journeys["journeys"][0]["id"], "nudge", "{journeys}");
}

/// `--config /elsewhere/waymark.yaml` from another directory: the config's relative paths
/// are its folder's, and `listen` may be a host name (loopback: no API key needed).
#[tokio::test]
async fn a_config_elsewhere_finds_its_journeys_and_may_listen_on_a_host_name() {
    let site = site();
    std::fs::write(
        site.path().join("elsewhere.yaml"),
        "journeys: ./journeys\ndatabase: sqlite://./other-data/w.db\nlisten: localhost:0\n\
         channels:\n  email: {kind: log}\n",
    )
    .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let log = site.path().join("elsewhere.log");
    let mut child = tokio::process::Command::new(DAEMON)
        .arg("--config")
        .arg(site.path().join("elsewhere.yaml"))
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mark = "listening on http://";
    let mut url = String::new();
    waymark_tests::eventually("the daemon listens", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.find(mark) {
            let address = text[at + mark.len()..].split_whitespace().next();
            url = format!("http://{}", address.unwrap_or_default());
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        assert!(!exited, "the daemon exited:\n{text}");
        std::future::ready(!url.is_empty())
    })
    .await;
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(site.path().join("other-data/w.db").exists());
    assert!(!cwd.path().join("other-data").exists());
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
