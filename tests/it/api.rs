//! The events API over real events: tenancy, filters, counts, hostile requests, and answers
//! held to `api/openapi.json`.

use std::time::Duration;

use event_router::envelope::identity::encode_identity;
use serde_json::{json, Value};
use testkit::{eventually, HttpResponse, TestApp};

const WAIT: Duration = Duration::from_secs(20);
const EVENTS: &str = "/api/event-router/v1/events";
const HOST: &str = "5b1f8a2e-3c4d-4e5f-8a6b-7c8d9e0f1a2b";
const OTHER_HOST: &str = "6c2f9b3e-4d5e-4f6a-9b7c-8d9e0f1a2b3c";
const CLUSTER: &str = "0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b";

fn identity(org: &str) -> String {
    encode_identity(&samples::user_identity(org))
}

fn host_report(host: &str, status: &str, ntp: &str, minute: u32) -> Value {
    json!({
        "host_id": host, "cluster_id": CLUSTER, "infra_env_id": "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", "host_name": "worker-7",
        "status": status, "status_info": "info", "updated_at": format!("2026-11-23T10:{minute:02}:00Z"),
        "validations": [{"id": "ntp-synced", "status": ntp, "message": "Host clock is not synchronized"}]
    })
}

/// Org `a` gets 5 events for HOST (registered, validation failed, fixed, status updated, failed);
/// org `b` gets 1 for OTHER_HOST.
async fn app_with_events() -> TestApp {
    let app = testkit::spawn_app().await;
    let reports = [
        host_report(HOST, "discovering", "failure", 1),
        host_report(HOST, "discovering", "success", 2),
        host_report(HOST, "known", "success", 3),
        host_report(HOST, "error", "success", 4),
    ];
    for (n, report) in reports.iter().enumerate() {
        app.send("host-status-changed", &testkit::user_message("a", report, HOST, &format!("a-{n}"))).await;
    }
    let other = host_report(OTHER_HOST, "known", "success", 1);
    app.send("host-status-changed", &testkit::user_message("b", &other, OTHER_HOST, "b-0")).await;
    eventually(WAIT, "six events recorded", || async { app.db.count("events").await == 6 }).await;
    app
}

/// The OpenAPI document's schema `pointer` (within it), with formats checked.
fn contract(schema: Value) -> jsonschema::Validator {
    let document: Value = serde_json::from_str(event_router::api::OPENAPI).unwrap();
    let mut schema = schema;
    schema["components"] = document["components"].clone();
    jsonschema::options().should_validate_formats(true).build(&schema).unwrap()
}

/// Asserts `response` is what the document promises for its status.
fn holds_to_the_document(response: &HttpResponse) {
    let body = response.json();
    let schema = match response.status {
        200 => json!({"type": "array", "items": {"$ref": "#/components/schemas/Event"}}),
        _ => json!({"$ref": "#/components/schemas/Error"}),
    };
    let errors: Vec<String> = contract(schema).iter_errors(&body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "status {} body breaks api/openapi.json: {errors:?}\n{body}", response.status);
    assert!(response.header("x-rh-insights-request-id").is_some(), "every answer carries the request id");
    if response.status == 200 {
        for header in
            ["event-count", "severity-count-info", "severity-count-warning", "severity-count-error", "severity-count-critical"]
        {
            assert!(response.header(header).and_then(|v| v.parse::<u64>().ok()).is_some(), "{header} is a count");
        }
    }
}

async fn get(app: &TestApp, query: &str, org: &str) -> HttpResponse {
    let response = app.api_get(&format!("{EVENTS}{query}"), &[("x-rh-identity", &identity(org))]).await;
    holds_to_the_document(&response);
    response
}

fn names(response: &HttpResponse) -> Vec<String> {
    response.json().as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_lists_filters_and_counts_its_own_events_only() {
    let app = app_with_events().await;
    let all = get(&app, "", "a").await;
    assert_eq!(all.status, 200);
    assert_eq!(
        names(&all),
        ["host_failed", "host_status_updated", "host_validation_fixed", "host_validation_failed", "host_registered"],
        "newest first"
    );
    let counts = |r: &HttpResponse| {
        ["event-count", "severity-count-info", "severity-count-warning", "severity-count-error", "severity-count-critical"]
            .map(|h| r.header(h).unwrap().parse::<u64>().unwrap())
    };
    assert_eq!(counts(&all), [5, 3, 1, 1, 0]);
    let first = &all.json()[0];
    assert_eq!(
        (first["severity"].as_str(), first["host_id"].as_str(), first["count"].as_i64()),
        (Some("error"), Some(HOST), Some(1))
    );
    assert_eq!(first["request_id"], "a-3");
    assert_eq!(first["properties"]["previous_status"], "known");

    // Filters: severities (the per-severity counts ignore it), name, message, time, paging, order.
    let serious = get(&app, "?severities=warning,error", "a").await;
    assert_eq!(names(&serious), ["host_failed", "host_validation_failed"]);
    assert_eq!(counts(&serious), [2, 3, 1, 1, 0]);
    assert_eq!(names(&get(&app, "?name=host_validation_fixed", "a").await), ["host_validation_fixed"]);
    assert_eq!(names(&get(&app, "?message=NOW%20FIXED", "a").await), ["host_validation_fixed"]);
    // Event times are the causing messages' times: the four reports were sent one after another.
    let time_of = |name: &str| {
        let events = all.json();
        let event = events.as_array().unwrap().iter().find(|e| e["name"] == name).unwrap().clone();
        percent_encoding::utf8_percent_encode(event["event_time"].as_str().unwrap(), percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    };
    let since = format!("?host_id={HOST}&since={}", time_of("host_status_updated"));
    assert_eq!(names(&get(&app, &since, "a").await), ["host_failed", "host_status_updated"]);
    let until = format!("?until={}&order=asc", time_of("host_validation_fixed"));
    assert_eq!(names(&get(&app, &until, "a").await), ["host_registered", "host_validation_failed"]);
    let page = get(&app, "?limit=2&offset=1&order=asc", "a").await;
    assert_eq!(names(&page), ["host_validation_failed", "host_validation_fixed"]);
    assert_eq!(counts(&page)[0], 5, "the total counts every match, not the page");

    // Another org sees its own and nothing of org a's, whatever it filters by.
    assert_eq!(names(&get(&app, "", "b").await), ["host_registered"]);
    let peeking = get(&app, &format!("?host_id={HOST}"), "b").await;
    assert_eq!((names(&peeking).len(), counts(&peeking)), (0, [0, 0, 0, 0, 0]));
    assert_eq!(names(&get(&app, "", "nobody").await).len(), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_forged_and_orgless_identities_are_refused_without_echo() {
    let app = app_with_events().await;
    let refused = |response: &HttpResponse, status: u16, code: &str| {
        holds_to_the_document(response);
        assert_eq!((response.status, response.json()["error"].as_str()), (status, Some(code)), "{}", response.body);
    };
    refused(&app.api_get(EVENTS, &[]).await, 401, "identity_missing");
    let forged = "eyJpZGVudGl0eSI6IHsib3JnX2lkIjogInNlY3JldC1vcmcifX0=%%%";
    let response = app.api_get(EVENTS, &[("x-rh-identity", forged)]).await;
    refused(&response, 401, "identity_not_base64");
    assert!(!response.body.contains("secret") && !response.body.contains("eyJ"), "the identity is not echoed: {}", response.body);
    let without_org = encode_identity(&json!({"identity": {"type": "User", "user": {"username": "jdoe"}}}));
    refused(&app.api_get(EVENTS, &[("x-rh-identity", &without_org)]).await, 401, "identity_org_id_missing");
    let twice = [("x-rh-identity", identity("a")), ("X-Rh-Identity", identity("b"))];
    let twice: Vec<(&str, &str)> = twice.iter().map(|(n, v)| (*n, v.as_str())).collect();
    refused(&app.api_get(EVENTS, &twice).await, 401, "identity_duplicate");
    let associate = encode_identity(
        &json!({"identity": {"type": "Associate", "auth_type": "saml-auth", "associate": {"email": "a@example.com"}}}),
    );
    refused(&app.api_get(EVENTS, &[("x-rh-identity", &associate)]).await, 403, "identity_org_missing");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_parameters_get_400_naming_the_parameter_and_never_a_row_or_a_500() {
    let app = app_with_events().await;
    let cases = [
        ("limit=-1", "limit"),
        ("limit=1000000", "limit"),
        ("offset=99999999999", "offset"),
        ("severities=info,panic", "severities"),
        ("host_id=not-a-uuid", "host_id"),
        ("cluster_id=%27%20OR%201=1--", "cluster_id"),
        ("name=x%27%3B%20DROP%20TABLE%20events%3B--", "name"),
        ("message=%00", "message"),
        ("since=2026-13-45", "since"),
        ("limit=1&limit=2", "limit"),
        ("org_id=a", "query"),
    ];
    for (query, parameter) in cases {
        let response = get(&app, &format!("?{query}"), "b").await;
        assert_eq!(
            (response.status, response.json()["parameter"].as_str()),
            (400, Some(parameter)),
            "{query}: {}",
            response.body
        );
    }
    let long = format!("?message={}", "%27".repeat(3000));
    assert_eq!(get(&app, &long, "b").await.status, 400);
    // Metacharacters inside a valid substring are text: nothing matches, nothing breaks.
    for text in ["%25", "_", "%27%20OR%20%271%27%3D%271", "%5C"] {
        let response = get(&app, &format!("?message={text}"), "b").await;
        assert_eq!((response.status, names(&response).len()), (200, 0), "{text}");
    }
    assert_eq!(app.db.count("events").await, 6, "the table is intact");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_is_taken_or_made_and_the_document_is_served() {
    let app = testkit::spawn_app().await;
    let given = app.api_get(EVENTS, &[("x-rh-identity", &identity("a")), ("x-rh-insights-request-id", "req-api-1")]).await;
    assert_eq!((given.status, given.header("x-rh-insights-request-id")), (200, Some("req-api-1")));
    let made = app.api_get(EVENTS, &[("x-rh-identity", &identity("a"))]).await;
    assert!(made.header("x-rh-insights-request-id").is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()));
    let long = "r".repeat(300);
    let refused = app.api_get(EVENTS, &[("x-rh-identity", &identity("a")), ("x-rh-insights-request-id", &long)]).await;
    assert_eq!((refused.status, refused.json()["parameter"].as_str()), (400, Some("x-rh-insights-request-id")));
    let document = app.api_get("/api/event-router/v1/openapi.json", &[]).await;
    assert_eq!((document.status, document.json()), (200, serde_json::from_str::<Value>(event_router::api::OPENAPI).unwrap()));
    assert_eq!(app.api_get("/api/event-router/v1/nothing", &[]).await.status, 404);

    // Header values that are not UTF-8, and a NUL: refused, never a 500.
    for (header, value, status) in [
        ("x-rh-insights-request-id", &b"req-\xff\xfe"[..], 400),
        ("x-rh-identity", &b"\xff\xfe"[..], 401),
        // NUL is not allowed in an HTTP header at all: the HTTP layer refuses the request.
        ("x-rh-identity", &b"ab\x00cd"[..], 400),
        ("last-event-id", &b"\xff1"[..], 400),
    ] {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(app.api_addr).await.unwrap();
        let identity = identity("a");
        let mut request = format!("GET {EVENTS}/feed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n").into_bytes();
        if header != "x-rh-identity" {
            request.extend_from_slice(format!("x-rh-identity: {identity}\r\n").as_bytes());
        }
        request.extend_from_slice(format!("{header}: ").as_bytes());
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        let code: u16 = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        assert_eq!(code, status, "{header}: {}", answer.lines().next().unwrap_or_default());
    }
    app.stop().await;
}

fn client(app: &TestApp, org: &str) -> event_router::api::client::ApiClient {
    event_router::api::client::ApiClient::new(&format!("http://{}", app.api_addr), identity(org)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_delivers_new_events_and_resumes_after_the_last_event_id() {
    let app = app_with_events().await;
    let mut feed = client(&app, "a").feed("", None).await.unwrap();
    let mut errors_only = client(&app, "a").feed("severities=error", None).await.unwrap();
    let mut other_org = client(&app, "b").feed("", None).await.unwrap();
    let sent = std::time::Instant::now();
    let report = host_report(HOST, "installing", "success", 5);
    app.send("host-status-changed", &testkit::user_message("a", &report, HOST, "a-4")).await;
    let next = tokio::time::timeout(WAIT, feed.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((next.event["name"].as_str(), next.event["request_id"].as_str()), (Some("host_status_updated"), Some("a-4")));
    eprintln!("a new event reached the feed {:?} after it was sent", sent.elapsed());
    // The filtered feed and the other org's feed have nothing to say about it.
    assert!(tokio::time::timeout(Duration::from_secs(2), errors_only.next()).await.is_err());
    assert!(tokio::time::timeout(Duration::from_millis(500), other_org.next()).await.is_err());

    // Resuming after the second of org a's events gives the rest, in order, the new one last.
    let all = get(&app, "?order=asc", "a").await.json();
    let second = all[1]["id"].as_i64().unwrap();
    let mut resumed = client(&app, "a").feed("", Some(second)).await.unwrap();
    let mut names = Vec::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(WAIT, resumed.next()).await.unwrap().unwrap().unwrap();
        names.push(event.event["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(names, ["host_validation_fixed", "host_status_updated", "host_failed", "host_status_updated"]);
    let refused = app.api_get(&format!("{EVENTS}/feed"), &[("x-rh-identity", &identity("a")), ("last-event-id", "-3")]).await;
    assert_eq!((refused.status, refused.json()["parameter"].as_str()), (400, Some("last-event-id")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_shows_the_callers_hosts_and_clusters_only() {
    let app = app_with_events().await;
    let progress =
        json!({"cluster_id": CLUSTER, "stage": "installing", "progress": 40, "hosts": [{"host_id": HOST, "role": "master"}]});
    app.send("cluster-install-progressed", &testkit::user_message("a", &progress, CLUSTER, "a-c")).await;
    eventually(WAIT, "the report stored", || async { app.db.count("cluster_install_progress").await == 1 }).await;
    let response = app.api_get("/api/event-router/v1/state", &[("x-rh-identity", &identity("a"))]).await;
    let state = response.json();
    let errors: Vec<String> =
        contract(json!({"$ref": "#/components/schemas/State"})).iter_errors(&state).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(state["hosts"][HOST]["status"], "error");
    assert_eq!(state["hosts"][HOST]["failing_validations"], json!([]));
    assert_eq!(state["clusters"][CLUSTER], json!({"stage": "installing", "progress": 40}));
    assert!(state["hosts"].get(OTHER_HOST).is_none(), "org b's host is not org a's business");
    let theirs = app.api_get("/api/event-router/v1/state", &[("x-rh-identity", &identity("b"))]).await.json();
    assert_eq!((theirs["hosts"].as_object().unwrap().len(), theirs["clusters"].as_object().unwrap().len()), (1, 0));
    app.stop().await;
}

/// `event-router events <args>` against `app`'s API as org a: (exit code, stdout, stderr).
async fn cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://{}", app.api_addr);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
        .arg("events")
        .args(args)
        .args(["--url", &url, "--org-id", "a"])
        .output()
        .await
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_watches_and_waits() {
    let app = app_with_events().await;
    let (code, out, _) = cli(&app, &["list", "--severities", "warning,error", "--format", "json"]).await;
    let names: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!((code, names), (0, vec!["host_failed".to_owned(), "host_validation_failed".to_owned()]));
    let (code, out, err) = cli(&app, &["list", "--limit", "2"]).await;
    assert_eq!(code, 0);
    assert!(out.lines().next().is_some_and(|l| l.contains("error") && l.contains("host_failed")), "{out}");
    assert!(err.contains("2 of 5 events"), "{err}");

    // wait: already true, then true later, then never.
    let installing = format!("hosts.{HOST}.status=installing");
    assert_eq!(cli(&app, &["wait", "--filter", &format!("hosts.{HOST}.status=error"), "--duration", "5s"]).await.0, 0);
    let waiting = {
        let url = format!("http://{}", app.api_addr);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
            .args(["events", "wait", "--filter", &installing, "--duration", "20s", "--url", &url, "--org-id", "a"])
            .output()
    };
    let watching = {
        let url = format!("http://{}", app.api_addr);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
            .args(["events", "watch", "--format", "json", "--url", &url, "--org-id", "a"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (waited, _) = tokio::join!(waiting, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = host_report(HOST, "installing", "success", 5);
        app.send("host-status-changed", &testkit::user_message("a", &report, HOST, "a-cli")).await;
    });
    assert_eq!(waited.unwrap().status.code(), Some(0), "wait saw the host reach the status");
    let mut watching = watching;
    let mut line = String::new();
    let stdout = watching.stdout.take().unwrap();
    let mut reader = tokio::io::BufReader::new(stdout);
    tokio::time::timeout(WAIT, tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line)).await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap()["request_id"],
        "a-cli",
        "watch showed the event made after it started"
    );
    watching.kill().await.unwrap();

    let (code, out, _) = cli(&app, &["wait", "--filter", &format!("hosts.{HOST}.status=installed"), "--duration", "2s"]).await;
    assert_eq!((code, out.trim()), (1, "timeout"));
    let (code, _, err) = cli(&app, &["wait", "--filter", "hosts..status", "--duration", "2s"]).await;
    assert!(code == 2 && err.contains("PATH"), "{err}");
    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
        .args(["events", "wait", "--filter", "hosts", "--duration", "2s", "--url", "http://127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot be reached"));
    app.stop().await;
}

#[test]
fn the_document_names_exactly_the_catalog_events() {
    let document: Value = serde_json::from_str(event_router::api::OPENAPI).unwrap();
    let catalog: Vec<&str> = event_router::events::catalog::CATALOG.iter().map(|e| e.name).collect();
    for path in ["/api/event-router/v1/events", "/api/event-router/v1/events/feed"] {
        let parameters = document["paths"][path]["get"]["parameters"].as_array().unwrap();
        let name = parameters.iter().find(|p| p["name"] == "name").unwrap();
        let listed: Vec<&str> = name["schema"]["enum"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        assert_eq!(listed, catalog, "{path}: api/openapi.json's `name` enum must list api/events.yaml's events, in order");
    }
}
