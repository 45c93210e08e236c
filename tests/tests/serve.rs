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
