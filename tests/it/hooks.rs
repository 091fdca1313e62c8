//! Hooks with real scripts: what they get on stdin and in their environment, timeouts that kill
//! the process group, retries then a recorded failure, a bad hooks file, and a SIGKILL
//! mid-dispatch after which every event still reaches the hook.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::{eventually, spawn_app_with, TestApp};

const WAIT: Duration = Duration::from_secs(30);

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("hooks-it-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn host_report(host: &str, status: &str, minute: u32) -> Value {
    json!({
        "host_id": host, "cluster_id": "0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b", "infra_env_id": "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
        "host_name": "worker-1", "status": status, "status_info": "info", "updated_at": format!("2026-11-23T10:{minute:02}:00Z"),
    })
}

async fn app_with_hooks(hooks: &Path) -> TestApp {
    spawn_app_with(&[("EVENT_HOOKS_FILE", hooks.to_str().unwrap()), ("WRITER_BATCH_INTERVAL_MS", "100")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_gets_each_matching_event_on_stdin_with_its_environment_and_no_secrets() {
    let scratch = Scratch::new();
    let out = scratch.0.display().to_string();
    let record = scratch.script(
        "record.sh",
        &format!("cat > {out}/event-$EVENT_ID.json\nenv > {out}/env-$EVENT_ID.txt\necho $EVENT_ID >> {out}/ids.txt"),
    );
    let hooks = scratch.file(
        "hooks.toml",
        &format!("[[hook]]\nname = \"record\"\nevents = [\"host_status_updated\"]\ncommand = [\"{}\"]\n", record.display()),
    );
    let app = app_with_hooks(&hooks).await;
    let host = "5b1f8a2e-3c4d-4e5f-8a6b-7c8d9e0f1a2b";
    for (n, status) in ["discovering", "known", "installing"].into_iter().enumerate() {
        app.send(
            "host-status-changed",
            &testkit::user_message("org-h", &host_report(host, status, n as u32), host, &format!("h-{n}")),
        )
        .await;
    }
    // host_registered, then two host_status_updated: only those two match the hook.
    eventually(WAIT, "two events handed to the hook", || async { scratch.read("ids.txt").lines().count() == 2 }).await;
    let ids: Vec<i64> = scratch.read("ids.txt").lines().map(|l| l.parse().unwrap()).collect();
    let expected: Vec<i64> = sqlx::query_scalar("SELECT id FROM events WHERE name = 'host_status_updated' ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(ids, expected, "each matching event once, in order");
    let event: Value = serde_json::from_str(&scratch.read(&format!("event-{}.json", ids[1]))).unwrap();
    assert_eq!(event["name"], "host_status_updated");
    assert_eq!(event["payload"]["message"], "Host worker-1: updated status from known to installing (info)");
    assert_eq!((event["payload"]["severity"].as_str(), event["payload"]["host_id"].as_str()), (Some("info"), Some(host)));
    assert_eq!((event["metadata"]["event_id"].as_i64(), event["metadata"]["request_id"].as_str()), (Some(ids[1]), Some("h-2")));
    let env = scratch.read(&format!("env-{}.txt", ids[1]));
    for expected in [
        format!("EVENT_ID={}", ids[1]),
        "EVENT_NAME=host_status_updated".into(),
        "EVENT_SEVERITY=info".into(),
        "ORG_ID=org-h".into(),
        "REQUEST_ID=h-2".into(),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} in the hook's environment:\n{env}");
    }
    assert!(!env.contains("DATABASE_URL") && !env.contains("KAFKA_"), "the service's settings stay out:\n{env}");
    let stdin = scratch.read(&format!("event-{}.json", ids[1]));
    let identity = event_router::envelope::identity::encode_identity(&samples::user_identity("org-h"));
    assert!(!stdin.contains("x-rh-identity") && !stdin.contains(&identity), "no identity on stdin");
    assert_eq!(app.metric("event_router_hook_runs_total", &[("hook", "record"), ("result", "ok")]).await, 2.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_is_killed_with_its_children_and_a_failing_one_is_recorded_and_passed() {
    let scratch = Scratch::new();
    let out = scratch.0.display().to_string();
    // Starts a child that would outlive it, says its pid, and hangs.
    let hang = scratch.script("hang.sh", &format!("sleep 300 &\necho $! >> {out}/children.txt\nsleep 300"));
    // Fails for host_registered, succeeds for the rest.
    let picky = scratch.script(
        "picky.sh",
        &format!("echo $EVENT_NAME >> {out}/picky.txt\n[ \"$EVENT_NAME\" = host_registered ] && {{ echo 'refusing it' >&2; exit 3; }}\nexit 0"),
    );
    let hooks = scratch.file(
        "hooks.toml",
        &format!(
            "[[hook]]\nname = \"hang\"\nevents = \"all\"\ncommand = [\"{}\"]\ntimeout = \"1s\"\nattempts = 2\n\n\
             [[hook]]\nname = \"picky\"\nevents = \"all\"\ncommand = [\"{}\"]\nattempts = 2\n",
            hang.display(),
            picky.display()
        ),
    );
    let app = app_with_hooks(&hooks).await;
    let host = "6c2f9b3e-4d5e-4f6a-9b7c-8d9e0f1a2b3c";
    app.send("host-status-changed", &testkit::user_message("org-h", &host_report(host, "discovering", 1), host, "p-0")).await;
    app.send("host-status-changed", &testkit::user_message("org-h", &host_report(host, "known", 2), host, "p-1")).await;

    // picky: host_registered fails twice and is recorded; host_status_updated still runs after it.
    eventually(WAIT, "picky went past its failure", || async { scratch.read("picky.txt").lines().count() == 3 }).await;
    assert_eq!(
        scratch.read("picky.txt").lines().collect::<Vec<_>>(),
        ["host_registered", "host_registered", "host_status_updated"]
    );
    // hang: each of its runs killed at 1 s, twice per event, then recorded.
    eventually(WAIT, "both events given up by the hanging hook", || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM writer_failures WHERE writer = 'hook:hang'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        count == 2
    })
    .await;
    let failures: Vec<(String, i32, String)> =
        sqlx::query_as("SELECT writer, attempts, error FROM writer_failures ORDER BY id").fetch_all(&app.db.pool).await.unwrap();
    let picky_failure = failures.iter().find(|f| f.0 == "hook:picky").expect("picky's failure recorded");
    assert_eq!(picky_failure.1, 2);
    assert!(picky_failure.2.contains("exit status: 3") && picky_failure.2.contains("refusing it"), "{}", picky_failure.2);
    assert!(
        failures.iter().filter(|f| f.0 == "hook:hang").all(|f| f.2.contains("killed with its process group")),
        "{failures:?}"
    );
    // The children the hanging script started died with it (one per run: 2 events, 2 attempts).
    let children = scratch.read("children.txt");
    assert_eq!(children.lines().count(), 4, "every run of the hanging hook said its child: {children:?}");
    for pid in children.lines() {
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ");
        assert!(!alive, "child {pid} of the killed hook is still running");
    }
    assert_eq!(app.metric("event_router_hook_runs_total", &[("hook", "hang"), ("result", "given_up")]).await, 2.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hooks_file_stops_start_up_naming_the_file_the_hook_and_the_field() {
    let scratch = Scratch::new();
    let hooks = scratch.file("hooks.toml", "[[hook]]\nname = \"notify\"\nevents = [\"host_exploded\"]\ncommand = [\"true\"]\n");
    let db = testkit::TestDb::create().await;
    let config = testkit::test_config("127.0.0.1:1", &db.url, "bad-hooks", &[("EVENT_HOOKS_FILE", hooks.to_str().unwrap())]);
    let error = event_router::app::Application::build(config).await.err().expect("start-up refused").to_string();
    assert!(
        error.contains("hooks.toml") && error.contains("hook #1 (`notify`), field `events`: no event `host_exploded`"),
        "{error}"
    );
}

/// The service as its own process, with the hooks file; killed with SIGKILL by the test.
async fn service_process(broker: &str, db: &testkit::TestDb, hooks: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
        .arg("run")
        .env("KAFKA_BROKERS", broker)
        .env("KAFKA_GROUP_ID", "hooks-kill")
        .env("DATABASE_URL", &db.url)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("API_ADDR", "127.0.0.1:0")
        .env("EVENT_HOOKS_FILE", hooks)
        .env("WRITER_BATCH_INTERVAL_MS", "100")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_mid_dispatch_every_event_reaches_every_hook_at_least_once() {
    let scratch = Scratch::new();
    let out = scratch.0.display().to_string();
    let slow = scratch.script("slow.sh", &format!("echo $EVENT_ID >> {out}/ids.txt\nsleep 0.1"));
    let quick = scratch.script("quick.sh", &format!("echo $EVENT_ID >> {out}/quick.txt"));
    let hooks = scratch.file(
        "hooks.toml",
        &format!(
            "[[hook]]\nname = \"slow\"\nevents = \"all\"\ncommand = [\"{}\"]\n\n\
             [[hook]]\nname = \"quick\"\nevents = \"all\"\ncommand = [\"{}\"]\n",
            slow.display(),
            quick.display()
        ),
    );
    let db = std::sync::Arc::new(testkit::TestDb::create().await);
    let broker = testkit::start_broker(&testkit::test_config("127.0.0.1:1", &db.url, "probe", &[]));
    let config = testkit::test_config(broker.bootstrap_servers(), &db.url, "hooks-kill", &[]);
    let producer = event_router::producer::EventProducer::new(&config.kafka, &config.topics).unwrap();
    let mut service = service_process(broker.bootstrap_servers(), &db, &hooks).await;
    for n in 0..40u64 {
        let host = samples::uuid_from(n, 31).to_string();
        let outgoing = testkit::user_message("org-k", &host_report(&host, "known", 1), &host, &format!("k-{n}"));
        producer.send_raw(&producer.build("host-status-changed", &outgoing)).await.unwrap();
    }
    eventually(WAIT, "the hook is part-way", || async { scratch.read("ids.txt").lines().count() >= 10 }).await;
    service.start_kill().unwrap();
    service.wait().await.unwrap();
    let before = scratch.read("ids.txt").lines().count();
    assert!(before < 40, "killed mid-dispatch ({before} of 40 handed over)");

    let mut restarted = service_process(broker.bootstrap_servers(), &db, &hooks).await;
    let all: Vec<i64> = {
        eventually(WAIT, "all 40 events recorded", || async { db.count("events").await == 40 }).await;
        sqlx::query_scalar("SELECT id FROM events ORDER BY id").fetch_all(&db.pool).await.unwrap()
    };
    eventually(WAIT, "every event reached both hooks", || async {
        ["ids.txt", "quick.txt"].iter().all(|file| {
            let seen: std::collections::HashSet<i64> = scratch.read(file).lines().filter_map(|l| l.parse().ok()).collect();
            all.iter().all(|id| seen.contains(id))
        })
    })
    .await;
    let handed: Vec<i64> = scratch.read("ids.txt").lines().filter_map(|l| l.parse().ok()).collect();
    let repeated = handed.len() - all.len();
    eprintln!("{before} handed over before the kill; {repeated} handed over twice after it");
    assert!(repeated <= event_router::writers::BATCH as usize, "at most the unconfirmed batch again");
    restarted.start_kill().unwrap();
    let _ = restarted.wait().await;
}
