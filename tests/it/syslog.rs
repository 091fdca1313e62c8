//! The syslog writer against a real rsyslog (Debian's package; `scripts/ensure-test-tools.sh`
//! installs it) listening on loopback ports and writing what it receives, raw, to a file: every
//! event arrives and parses back field by field, over UDP and TCP, and a receiver stopped for a
//! while gets the TCP backlog when it is back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::{eventually, spawn_app_with, TestApp};

const WAIT: Duration = Duration::from_secs(30);

struct Rsyslog {
    dir: PathBuf,
    udp: u16,
    tcp: u16,
    child: Option<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Rsyslog {
    fn new() -> Rsyslog {
        let dir = std::env::temp_dir().join(format!("rsyslog-it-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (udp, tcp) = (free_port(), free_port());
        let config = format!(
            "global(workDirectory=\"{dir}\" maxMessageSize=\"64k\")\n\
             module(load=\"imudp\")\nmodule(load=\"imtcp\")\n\
             input(type=\"imudp\" address=\"127.0.0.1\" port=\"{udp}\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp}\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             action(type=\"omfile\" file=\"{dir}/received.log\" template=\"raw\")\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("rsyslog.conf"), config).unwrap();
        let mut rsyslog = Rsyslog { dir, udp, tcp, child: None };
        rsyslog.start();
        rsyslog
    }

    fn start(&mut self) {
        let binary =
            ["/usr/sbin/rsyslogd", "rsyslogd"].into_iter().find(|b| std::process::Command::new(b).arg("-v").output().is_ok());
        let binary = binary.expect("rsyslogd is needed (Debian package rsyslog; make test installs it)");
        let child = std::process::Command::new(binary)
            .args(["-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.tcp)).is_err() {
            assert!(std::time::Instant::now() < deadline, "rsyslogd did not listen on {}", self.tcp);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("rsyslogd.pid"));
    }

    fn received(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("received.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An RFC 5424 line taken apart: header fields, structured-data params, message.
#[derive(Debug)]
struct Parsed {
    pri: u16,
    msgid: String,
    app: String,
    params: HashMap<String, String>,
    message: String,
}

fn parse(line: &str) -> Parsed {
    let rest = line.strip_prefix('<').unwrap_or_else(|| panic!("no PRI: {line}"));
    let (pri, rest) = rest.split_once('>').unwrap();
    let mut fields = rest.splitn(7, ' ');
    assert_eq!(fields.next(), Some("1"), "version: {line}");
    let (_time, _host, app, _pid, msgid) =
        (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
    let rest = fields.next().unwrap();
    let sd = rest.strip_prefix("[event@32473 ").unwrap_or_else(|| panic!("structured data: {line}"));
    let mut params = HashMap::new();
    let mut chars = sd.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().unwrap()),
                '"' => break,
                c => value.push(c),
            }
        }
        params.insert(name.trim().to_owned(), value);
        match chars.next() {
            Some(' ') => continue,
            Some(']') => break,
            other => panic!("after a param: {other:?} in {line}"),
        }
    }
    assert_eq!(chars.next(), Some(' '));
    Parsed { pri: pri.parse().unwrap(), msgid: msgid.into(), app: app.into(), params, message: chars.collect() }
}

fn report(host: &str, status: &str, minute: u32) -> Value {
    json!({
        "host_id": host, "cluster_id": "0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b", "infra_env_id": "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
        "host_name": "worker \"9\" ]", "status": status, "status_info": "ok", "updated_at": format!("2026-11-23T10:{minute:02}:00Z"),
    })
}

async fn send_reports(app: &TestApp, hosts: std::ops::Range<u64>, tag: &str) {
    for n in hosts {
        let host = samples::uuid_from(n, 51).to_string();
        for (step, status) in ["discovering", "error"].into_iter().enumerate() {
            let message =
                testkit::user_message("org-s", &report(&host, status, step as u32), &host, &format!("{tag}-{n}-{step}"));
            app.send("host-status-changed", &message).await;
        }
    }
}

/// (id, name, severity, message, request id, host id) of every event.
async fn events(app: &TestApp) -> Vec<(i64, String, String, String, String, Option<uuid::Uuid>)> {
    sqlx::query_as("SELECT id, name, severity, message, request_id, host_id FROM events ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

/// Every event is in `received`, with its fields.
async fn all_arrived(app: &TestApp, received: &[String]) -> bool {
    let parsed: HashMap<String, Parsed> = received.iter().map(|l| parse(l)).map(|p| (p.params["id"].clone(), p)).collect();
    let expected = events(app).await;
    for (id, name, severity, message, request_id, host_id) in &expected {
        let Some(line) = parsed.get(&id.to_string()) else { return false };
        let severity_code = match severity.as_str() {
            "critical" => 2,
            "error" => 3,
            "warning" => 4,
            _ => 6,
        };
        assert_eq!(line.pri, 16 * 8 + severity_code, "{id}: facility local0 and the severity");
        assert_eq!(
            (line.app.as_str(), line.msgid.as_str(), line.message.as_str()),
            ("event-router", name.as_str(), message.as_str())
        );
        assert_eq!(line.params.get("org_id").map(String::as_str), Some("org-s"));
        assert_eq!(line.params.get("request_id"), Some(request_id));
        assert_eq!(line.params.get("host_id").cloned(), host_id.map(|h| h.to_string()));
        assert!(line.params.contains_key("infra_env_id"));
    }
    !expected.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_over_udp_and_parses_back() {
    let rsyslog = Rsyslog::new();
    let addr = format!("udp://127.0.0.1:{}", rsyslog.udp);
    let app = spawn_app_with(&[("SYSLOG_ADDR", &addr), ("WRITER_BATCH_INTERVAL_MS", "100")]).await;
    send_reports(&app, 0..5, "udp").await;
    eventually(WAIT, "ten events recorded", || async { app.db.count("events").await == 10 }).await;
    eventually(WAIT, "every event received over UDP", || async { all_arrived(&app, &rsyslog.received()).await }).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_a_receiver_that_was_away_gets_the_backlog() {
    let mut rsyslog = Rsyslog::new();
    let addr = format!("tcp://127.0.0.1:{}", rsyslog.tcp);
    let app = spawn_app_with(&[("SYSLOG_ADDR", &addr), ("WRITER_BATCH_INTERVAL_MS", "100")]).await;
    send_reports(&app, 0..5, "tcp").await;
    eventually(WAIT, "every event received over TCP", || async { all_arrived(&app, &rsyslog.received()).await }).await;

    // The receiver goes away; events go on being recorded; then it is back on the same port.
    rsyslog.stop();
    send_reports(&app, 5..10, "tcp").await;
    eventually(WAIT, "twenty events recorded", || async { app.db.count("events").await == 20 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let backlog = app.metric("event_router_writer_backlog", &[("writer", "syslog")]).await;
    assert!(backlog > 0.0, "the writer holds the events it could not deliver");
    rsyslog.start();
    eventually(Duration::from_secs(60), "the backlog delivered", || async { all_arrived(&app, &rsyslog.received()).await }).await;
    let (lines, events) = (rsyslog.received().len(), app.db.count("events").await as usize);
    eprintln!("{events} events, {lines} lines received ({} again)", lines - events);
    app.stop().await;
}
