//! `event-router schema check` and `schema declare` through the binary, against a real git
//! repository: exit codes, both output formats, folders and revisions, hostile files.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{json, Value};

/// A throwaway git repository holding `api/event/` and the two deploy files.
struct Repo {
    root: PathBuf,
}

impl Repo {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("er-schema-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("api/event")).unwrap();
        std::fs::create_dir_all(root.join("deploy/kubernetes")).unwrap();
        let repo = Self { root };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn commit(&self) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "version"]);
    }

    fn schemas(&self) -> PathBuf {
        self.root.join("api/event")
    }

    fn write_schema(&self, name: &str, schema: &Value) {
        std::fs::write(self.schemas().join(name), serde_json::to_string_pretty(schema).unwrap()).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_event-router")).current_dir(&self.root).args(args).output().unwrap()
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn todo(max_title: u64) -> Value {
    json!({
        "type": "object",
        "x-compatibility": "full",
        "additionalProperties": false,
        "required": ["id", "title"],
        "properties": {
            "id": {"type": "integer", "minimum": 0},
            "title": {"type": "string", "maxLength": max_title},
            "state": {"enum": ["open", "done"]}
        },
        "examples": [{"id": 1, "title": "t"}]
    })
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn check_json(repo: &Repo, against: &str) -> (i32, Value) {
    let output = repo.run(&["schema", "check", "--against", against, "--format", "json"]);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&output)));
    (output.status.code().unwrap(), report)
}

fn rules(report: &Value, key: &str) -> Vec<(String, String, String, bool)> {
    let schema = report["schemas"].as_array().unwrap().iter().find(|s| s["key"] == key).unwrap();
    schema["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let text = |k: &str| b[k].as_str().unwrap().to_string();
            (text("direction"), text("rule"), text("path"), b["enforced"].as_bool().unwrap())
        })
        .collect()
}

#[test]
fn a_breaking_change_against_a_revision_exits_1_with_rule_and_path() {
    let repo = Repo::new();
    repo.write_schema("todo-created.event.json", &todo(256));
    repo.write_schema("x-id.header.json", &json!({"type": "object"}));
    repo.commit();
    assert_eq!(check_json(&repo, "HEAD").0, 0, "nothing changed");

    let mut changed = todo(128);
    changed["required"] = json!(["id", "title", "state"]);
    changed["properties"]["state"]["enum"] = json!(["open", "done", "archived"]);
    repo.write_schema("todo-created.event.json", &changed);
    let (code, report) = check_json(&repo, "HEAD");
    assert_eq!(code, 1);
    assert_eq!(report["compatible"], false);
    assert_eq!(
        rules(&report, "todo-created"),
        [
            ("backward".into(), "required-added".into(), "/required".into(), true),
            ("backward".into(), "bound-tightened".into(), "/properties/title/maxLength".into(), true),
            ("forward".into(), "enum-value-added".into(), "/properties/state/enum".into(), true),
        ]
    );

    let text = repo.run(&["schema", "check", "--against", "main"]);
    assert_eq!(text.status.code(), Some(1));
    let text = stdout(&text);
    assert!(text.contains("topic todo-created (todo-created.event.json, full): INCOMPATIBLE"), "{text}");
    assert!(text.contains("backward required-added at /required ($.state)"), "{text}");
    assert!(text.contains("header x-id (x-id.header.json, backward): unchanged"), "{text}");

    // The same comparison against a folder holding the old version.
    let old = repo.root.join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("todo-created.event.json"), todo(256).to_string()).unwrap();
    std::fs::write(old.join("x-id.header.json"), "{\"type\": \"object\"}").unwrap();
    let (code, from_folder) = check_json(&repo, old.to_str().unwrap());
    assert_eq!(code, 1);
    assert_eq!(rules(&from_folder, "todo-created"), rules(&report, "todo-created"));
}

#[test]
fn compatible_changes_and_intended_removals_exit_0() {
    let repo = Repo::new();
    repo.write_schema("todo-created.event.json", &todo(256));
    repo.write_schema("retired.event.json", &todo(256));
    repo.commit();
    let mut documented = todo(256);
    documented["description"] = json!("documented now");
    documented["x-partitions"] = json!(6);
    repo.write_schema("todo-created.event.json", &documented);
    repo.write_schema("todo-created.v2.event.json", &todo(64));
    std::fs::remove_file(repo.schemas().join("retired.event.json")).unwrap();

    let (code, report) = check_json(&repo, "HEAD");
    assert_eq!(code, 1, "a deleted schema is a break: {report}");
    let retired = report["schemas"].as_array().unwrap().iter().find(|s| s["key"] == "retired").unwrap();
    assert_eq!((retired["status"].as_str(), retired["breaks"][0]["rule"].as_str()), (Some("removed"), Some("schema-removed")));

    let output = repo.run(&["schema", "check", "--against", "HEAD", "--allow-removal", "retired"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(text.contains("topic todo-created.v2 (todo-created.v2.event.json, full): new"), "{text}");
    assert!(text.contains("topic todo-created (todo-created.event.json, full): compatible"), "{text}");
    assert!(text.contains("removal allowed"), "{text}");
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let repo = Repo::new();
    repo.write_schema("todo-created.event.json", &todo(256));
    repo.commit();
    for (args, expected) in [
        (vec!["schema", "check", "--against", "no-such-branch"], "is neither a folder nor a git revision"),
        (vec!["schema", "check", "--against=--output=/tmp/x"], "is not a git revision"),
        (vec!["schema", "check"], "--against"),
        (vec!["schema", "check", "--against", "HEAD", "--schemas", "missing/dir"], "cannot read the folder"),
        (vec!["schema", "check", "--against", "HEAD", "--format", "yaml"], "invalid value"),
    ] {
        let output = repo.run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Outside any git repository, a revision cannot be read either.
    let outside = std::env::temp_dir().join(format!("er-no-git-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("a.event.json"), todo(1).to_string()).unwrap();
    let output = repo.run(&["schema", "check", "--against", "HEAD", "--schemas", outside.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    std::fs::remove_dir_all(outside).unwrap();
}

#[test]
fn hostile_schema_files_are_reported_not_fatal() {
    let repo = Repo::new();
    repo.write_schema("todo-created.event.json", &todo(256));
    std::fs::write(repo.schemas().join("garbled.event.json"), b"{\"type\": \"object\xff\"}").unwrap();
    repo.commit();
    // New versions: one not UTF-8, one with NUL, one huge, one not JSON; a property name with
    // a control character.
    std::fs::write(repo.schemas().join("todo-created.event.json"), b"{\"type\":\0 \"object\"}").unwrap();
    std::fs::write(repo.schemas().join("huge.event.json"), vec![b' '; 2 << 20]).unwrap();
    std::fs::write(repo.schemas().join("garbled.event.json"), todo(256).to_string()).unwrap();
    let mut odd = todo(256);
    odd["properties"]["bell\u{7}"] = json!({"type": "string"});
    repo.write_schema("odd.event.json", &todo(256));
    repo.commit();
    repo.write_schema("odd.event.json", &odd);

    let (code, report) = check_json(&repo, "HEAD~1");
    assert_eq!(code, 1);
    assert_eq!(rules(&report, "todo-created")[0].1, "schema-invalid");
    assert_eq!(rules(&report, "huge")[0].1, "schema-invalid");
    let garbled = report["schemas"].as_array().unwrap().iter().find(|s| s["key"] == "garbled").unwrap();
    assert!(garbled["notes"][0].as_str().unwrap().contains("not UTF-8"), "{garbled}");
    let text = stdout(&repo.run(&["schema", "check", "--against", "HEAD"]));
    assert!(text.contains("$.bell\\u{7}"), "control characters are escaped: {text}");
    assert!(!text.contains('\u{7}'));
}

#[test]
fn declarations_are_checked_by_topic_and_rewritten_in_place() {
    let repo = Repo::new();
    repo.write_schema("todo-created.event.json", &todo(256));
    let clowdapp = repo.root.join("deploy/clowdapp.yaml");
    std::fs::write(
        &clowdapp,
        format!(
            "objects:\n  - spec:\n      {}\n      {}\n      deployments: []\n",
            topic_lifecycle::declare::CLOWDAPP_BEGIN,
            topic_lifecycle::declare::CLOWDAPP_END
        ),
    )
    .unwrap();
    let check = |repo: &Repo| repo.run(&["schema", "declare", "--check"]);
    let output = check(&repo);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("deploy/clowdapp.yaml: topic platform.event-router.todo-created: missing"),
        "{}",
        stdout(&output)
    );

    assert_eq!(repo.run(&["schema", "declare", "--write"]).status.code(), Some(0));
    assert_eq!(check(&repo).status.code(), Some(0), "{}", stdout(&check(&repo)));
    let strimzi = std::fs::read_to_string(repo.root.join("deploy/kubernetes/kafka-topics.yaml")).unwrap();
    assert!(strimzi.contains("  topicName: platform.event-router.todo-created\n  partitions: 3\n"), "{strimzi}");

    // A new topic with its own partitions: both files are out of date, by name.
    let mut busy = todo(256);
    busy["x-partitions"] = json!(12);
    repo.write_schema("widget-added.event.json", &busy);
    let output = stdout(&check(&repo));
    assert!(output.contains("deploy/clowdapp.yaml: topic platform.event-router.widget-added: missing"), "{output}");
    assert!(
        output.contains("deploy/kubernetes/kafka-topics.yaml: topic platform.event-router.widget-added: missing"),
        "{output}"
    );
    assert_eq!(repo.run(&["schema", "declare", "--write"]).status.code(), Some(0));
    let written = std::fs::read_to_string(&clowdapp).unwrap();
    assert!(written.contains("        - topicName: platform.event-router.widget-added\n          partitions: 12\n"), "{written}");
    assert!(written.ends_with("      deployments: []\n"));

    // A hand edit is named; a bad keyword is a usage error naming the file.
    std::fs::write(&clowdapp, written.replace("partitions: 12", "partitions: 2")).unwrap();
    assert!(stdout(&check(&repo)).contains("topic platform.event-router.widget-added: differs: `partitions: 2`"));
    busy["x-partitions"] = json!("many");
    repo.write_schema("widget-added.event.json", &busy);
    let output = check(&repo);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("widget-added.event.json: `x-partitions` must be an integer"));
}
