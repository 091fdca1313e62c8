//! A bad schema or a bad event catalog fails a real `cargo build` with one line naming the file
//! and the problem (and the event, for the catalog).
//!
//! The fixture crate runs the same build step as event-router's build.rs on a schema folder this
//! test fills; building it with cargo proves what a developer sees, not just what a function
//! returns.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Builds the fixture with `schemas` as its `api/event/` and the repository's event catalog.
fn build_with(schemas: &[(&str, &str)]) -> (bool, String) {
    let catalog = std::fs::read_to_string(workspace().join("api/events.yaml")).unwrap();
    build_with_catalog(schemas, &catalog)
}

/// Builds the fixture with `schemas` as its `api/event/` and `catalog` as its `api/events.yaml`,
/// and returns (success, stderr).
fn build_with_catalog(schemas: &[(&str, &str)], catalog: &str) -> (bool, String) {
    // One build at a time: every fixture copy is the same package to cargo, so a copy written
    // while another built could look older than that build's output and not run its build script.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = workspace();
    let dir = std::env::temp_dir().join(format!("schema-build-{}", uuid::Uuid::new_v4().simple()));
    copy_dir(&root.join("tests/fixtures/schema-build"), &dir);
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml.in"))
        .unwrap()
        .replace("@CODEGEN@", root.join("internal/event-codegen").to_str().unwrap());
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::create_dir_all(dir.join("api/event")).unwrap();
    for (name, text) in schemas {
        std::fs::write(dir.join("api/event").join(name), text).unwrap();
    }
    std::fs::write(dir.join("api/events.yaml"), catalog).unwrap();
    let output = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", root.join("target/schema-build-fixture"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    let _ = std::fs::remove_dir_all(&dir);
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn assert_one_clear_error(stderr: &str, expected: &str) {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    let schema_errors: Vec<&&str> =
        errors.iter().filter(|l| l.contains("bad event schema") || l.contains("bad event catalog")).collect();
    assert_eq!(schema_errors.len(), 1, "exactly one schema error line:\n{stderr}");
    assert!(schema_errors[0].contains(expected), "expected `{expected}` in:\n{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "no panic:\n{stderr}");
}

#[test]
fn bad_schemas_fail_the_build_with_one_readable_line() {
    let todo = std::fs::read_to_string(workspace().join("api/event/todo-created.event.json")).unwrap();

    let (ok, stderr) = build_with(&[("todo-created.event.json", &todo.replace("\"minimum\"", "\"minValue\""))]);
    assert!(!ok);
    assert_one_clear_error(
        &stderr,
        "api/event/todo-created.event.json: at `#/properties/id/minValue`: unknown keyword `minValue` (did you mean `minimum`?)",
    );

    let (ok, stderr) = build_with(&[("todo-created.event.json", &todo.replacen('{', "{,", 1))]);
    assert!(!ok);
    assert_one_clear_error(&stderr, "api/event/todo-created.event.json: invalid JSON at line 1");

    let external =
        todo.replace(r#""title": { "type": "string", "maxLength": 256 }"#, r#""title": { "$ref": "common.json#/title" }"#);
    assert_ne!(external, todo);
    let (ok, stderr) = build_with(&[("todo-created.event.json", &external)]);
    assert!(!ok);
    assert_one_clear_error(&stderr, "external reference `common.json#/title`");

    let conditional = todo.replacen(
        r#""type": "object","#,
        r#""type": "object", "if": {"required": ["id"]}, "then": {"required": ["title"]},"#,
        1,
    );
    let (ok, stderr) = build_with(&[("todo-created.event.json", &conditional)]);
    assert!(!ok);
    assert_one_clear_error(&stderr, "`if`/`then`/`else` is not supported");

    let (ok, stderr) = build_with(&[("todo-created.event.json", &todo)]);
    assert!(ok, "the unchanged schema builds:\n{stderr}");
}

#[test]
fn bad_catalogs_fail_the_build_with_one_readable_line_naming_the_event() {
    let todo = std::fs::read_to_string(workspace().join("api/event/todo-created.event.json")).unwrap();
    let schemas = [("todo-created.event.json", todo.as_str())];
    let catalog = std::fs::read_to_string(workspace().join("api/events.yaml")).unwrap();
    let entry = "  - name: host_reset\n    message: \"Host {host_name} was reset\"\n    event_type: host\n    severity: info\n    properties:\n      host_id: uuid\n      infra_env_id: uuid\n      host_name: string\n";
    let cases = [
        (entry.replace("{host_name}", "{name}"), "event `host_reset`: unknown placeholder `{name}`: no property of that name"),
        (
            entry.replace("      infra_env_id: uuid\n", ""),
            "event `host_reset`: a `host` event requires the property `infra_env_id`",
        ),
        (entry.replace("host_reset", "host_registered"), "event `host_registered`: duplicate name: event names are unique"),
    ];
    for (added, expected) in cases {
        let (ok, stderr) = build_with_catalog(&schemas, &format!("{catalog}\n{added}"));
        assert!(!ok, "{added}");
        assert_one_clear_error(&stderr, &format!("bad event catalog: api/events.yaml: {expected}"));
    }
    let (ok, stderr) = build_with_catalog(&schemas, &format!("{catalog}\n{entry}"));
    assert!(ok, "a good new entry builds:\n{stderr}");
}
