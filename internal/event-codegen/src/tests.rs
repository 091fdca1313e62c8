use super::*;
use serde_json::json;

fn write_dir(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "event-codegen-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        fs::write(dir.join(name), text).unwrap();
    }
    dir
}

const GOOD: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "ThingHappened",
  "type": "object",
  "required": ["id"],
  "additionalProperties": false,
  "properties": { "id": { "type": "integer", "minimum": 0, "maximum": 10 } },
  "examples": [{ "id": 3 }]
}"#;

#[test]
fn good_schema_generates_a_module_and_registry_entry() {
    let dir = write_dir(&[("thing-happened.event.json", GOOD)]);
    let generated = generate(&dir).unwrap();
    assert_eq!(generated.topics.len(), 1);
    let topic = &generated.topics[0];
    assert_eq!(topic.key, "thing-happened");
    assert_eq!(topic.module, "thing_happened");
    assert_eq!(topic.payload_type, "ThingHappened");
    assert!(topic.code.contains("pub struct ThingHappened"), "{}", topic.code);
    let registry = generated.registry_source();
    assert!(registry.contains("pub mod thing_happened"));
    assert!(registry.contains("key: \"thing-happened\""));
    assert!(registry.contains("impl crate::topics::Topic for thing_happened::ThingHappened"));
    assert_eq!(topic.examples, [r#"{"id":3}"#]);
    assert!(registry.contains(r#"examples: &["{\"id\":3}"]"#), "{registry}");
}

#[test]
fn a_topic_without_an_object_example_is_refused() {
    let without = GOOD.replace(",\n  \"examples\": [{ \"id\": 3 }]", "");
    assert_ne!(without, GOOD);
    let dir = write_dir(&[("thing-happened.event.json", &without)]);
    assert!(generate(&dir).unwrap_err().problem.starts_with("the root schema needs `examples`"));
    for examples in ["[]", "{}", "[3]", "[{\"id\": 3}, \"text\"]"] {
        let dir = write_dir(&[("thing-happened.event.json", &GOOD.replace("[{ \"id\": 3 }]", examples))]);
        let problem = generate(&dir).unwrap_err().problem;
        assert!(problem.contains("examples"), "{examples}: {problem}");
    }
}

#[test]
fn unknown_keyword_names_file_path_and_suggestion() {
    let bad = GOOD.replace("\"minimum\"", "\"minValue\"");
    let dir = write_dir(&[("thing-happened.event.json", &bad)]);
    let error = generate(&dir).unwrap_err();
    assert!(error.file.ends_with("thing-happened.event.json"));
    assert_eq!(error.problem, "at `#/properties/id/minValue`: unknown keyword `minValue` (did you mean `minimum`?)");
}

#[test]
fn invalid_json_reports_line_and_column() {
    let dir = write_dir(&[("thing-happened.event.json", "{\n  \"type\": \"object\",\n}")]);
    let error = generate(&dir).unwrap_err();
    assert!(error.problem.starts_with("invalid JSON at line 3 column 1"), "{}", error.problem);
}

#[test]
fn external_ref_and_if_then_are_refused_before_typify_panics() {
    let external = json!({"title": "T", "type": "object", "properties": {"a": {"$ref": "other.json#/x"}}});
    let problems = check_schema(&external, true);
    assert_eq!(problems.errors.len(), 1);
    assert!(problems.errors[0].contains("external reference `other.json#/x`"));

    let conditional = json!({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}});
    let problems = check_schema(&conditional, true);
    assert_eq!(problems.errors.len(), 2, "{problems:?}");
    assert!(problems.errors[0].contains("`if`/`then`/`else` is not supported"));
    // Header schemas are not typified, so the same construct is fine there.
    assert!(check_schema(&conditional, false).errors.is_empty());
}

#[test]
fn ignored_keywords_warn_but_build() {
    let schema = json!({"type": "object", "dependentRequired": {"a": ["b"]}, "properties": {"a": {"type": "string"}}});
    let problems = check_schema(&schema, true);
    assert!(problems.errors.is_empty());
    assert_eq!(problems.warnings.len(), 1);
}

#[test]
fn typify_panic_becomes_an_error() {
    // A `$ref` without a '/' passes the keyword check's "#..." rule only if it is "#" itself;
    // use a reference to a missing definition, which typify cannot resolve.
    let schema = GOOD.replace("{ \"type\": \"integer\", \"minimum\": 0, \"maximum\": 10 }", "{ \"$ref\": \"#/$defs/missing\" }");
    let dir = write_dir(&[("thing-happened.event.json", &schema)]);
    let error = generate(&dir).unwrap_err();
    assert!(error.problem.contains("typify"), "{}", error.problem);
}

#[test]
fn root_must_be_an_object_and_key_must_be_a_topic_name() {
    let dir = write_dir(&[("thing.event.json", r#"{"type": "string"}"#)]);
    assert!(generate(&dir).unwrap_err().problem.contains("\"type\": \"object\""));
    let dir = write_dir(&[("Thing_Happened.event.json", GOOD)]);
    assert!(generate(&dir).unwrap_err().problem.contains("lower-case"));
}

#[test]
fn stray_json_file_and_empty_folder_are_errors() {
    let dir = write_dir(&[("thing-happened.event.json", GOOD), ("notes.json", "{}")]);
    assert!(generate(&dir).unwrap_err().problem.contains("unexpected file name"));
    let dir = write_dir(&[]);
    assert!(generate(&dir).unwrap_err().problem.contains("no topic schema"));
}

#[test]
fn pascal_case_joins_dash_separated_words() {
    assert_eq!(pascal_case("todo-created"), "TodoCreated");
    assert_eq!(pascal_case("cluster-install-progressed"), "ClusterInstallProgressed");
}

mod catalog {
    use crate::catalog::{parse_catalog, parse_template, Piece};

    const GOOD: &str = r#"
events:
  - name: host_status_updated
    message: "Host {host_name}: now {status} ({{literal}})"
    event_type: host
    severity: info
    properties:
      host_id: uuid
      infra_env_id: uuid
      cluster_id: {type: uuid, optional: true}
      host_name: string
      status: string
"#;

    fn problem(text: &str) -> String {
        parse_catalog(text).unwrap_err()
    }

    #[test]
    fn a_good_catalog_parses_with_its_properties_in_order() {
        let events = parse_catalog(GOOD).unwrap();
        assert_eq!(events[0].type_name, "HostStatusUpdated");
        let names: Vec<_> = events[0].properties.iter().map(|p| (p.name.as_str(), p.optional)).collect();
        assert_eq!(
            names,
            [("host_id", false), ("infra_env_id", false), ("cluster_id", true), ("host_name", false), ("status", false)]
        );
        let source = crate::catalog::catalog_source(&events, "api/events.yaml", "sha256:0");
        assert!(source.contains("pub struct HostStatusUpdated"), "{source}");
        assert!(source.contains(r#"format!("Host {}: now {} ({{literal}})", self.host_name, self.status)"#), "{source}");
        assert!(source.contains("cluster_id: self.cluster_id, host_id: Some(self.host_id)"), "{source}");
    }

    #[test]
    fn templates_split_into_text_and_placeholders() {
        assert_eq!(
            parse_template("a {b} {{c}}").unwrap(),
            [Piece::Text("a ".into()), Piece::Placeholder("b".into()), Piece::Text(" {c}".into())]
        );
        assert!(parse_template("a {b").unwrap_err().contains("not closed"));
        assert!(parse_template("a }").unwrap_err().contains("lone `}`"));
        assert!(parse_template("a {B C}").unwrap_err().contains("not a placeholder"));
    }

    #[test]
    fn each_mistake_names_the_event_and_the_problem() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "{host_name}",
                "{hostname}",
                "event `host_status_updated`: unknown placeholder `{hostname}`: no property of that name",
            ),
            (
                "      infra_env_id: uuid\n",
                "",
                "event `host_status_updated`: a `host` event requires the property `infra_env_id`",
            ),
            (
                "severity: info",
                "severity: fatal",
                "event `host_status_updated`: unknown severity `fatal` (one of: info, warning, error, critical)",
            ),
            ("event_type: host", "event_type: rack", "event `host_status_updated`: unknown event_type `rack`"),
            ("status: string", "status: text", "event `host_status_updated`: property `status`: unknown type `text`"),
            ("name: host_status_updated", "name: HostStatusUpdated", "event `HostStatusUpdated`: bad name shape"),
            (
                "name: host_status_updated",
                "name: host_status_update",
                "event `host_status_update`: bad name shape: `update` is not past tense",
            ),
            ("host_id: uuid", "host_id: string", "property `host_id` identifies an entity and must have type `uuid`"),
            (
                "host_name: string",
                "host_name: {type: string, optional: true}",
                "placeholder `{host_name}` names an optional property",
            ),
            (
                "infra_env_id: uuid",
                "infra_env_id: {type: uuid, optional: true}",
                "`infra_env_id` cannot be optional in a `host` event",
            ),
            ("severity: info", "severity: info\n    severty: info", "unknown field `severty`"),
        ];
        for (from, to, expected) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let problem = problem(&text);
            assert!(problem.contains(expected), "{from} → {to}: expected `{expected}` in `{problem}`");
        }
        let twice = format!("{GOOD}{}", GOOD.trim_start().trim_start_matches("events:\n"));
        assert_eq!(problem(&twice), "event `host_status_updated`: duplicate name: event names are unique");
    }

    #[test]
    fn hostile_catalogs_are_refused_with_a_reason_not_a_panic() {
        // A property twice, a key twice, NUL, a document that is not a catalog, an empty one.
        let property_twice = GOOD.replacen("status: string", "status: string\n      status: integer", 1);
        assert!(problem(&property_twice).contains("duplicate"), "{}", problem(&property_twice));
        let key_twice = GOOD.replacen("severity: info", "severity: info\n    severity: error", 1);
        assert!(problem(&key_twice).contains("duplicate field `severity`"), "{}", problem(&key_twice));
        assert!(problem(&GOOD.replacen("Host", "Ho\0st", 1)).starts_with("not a valid catalog"));
        assert!(problem("- just\n- a list\n").starts_with("not a valid catalog"));
        assert_eq!(problem("events: []\n"), "the catalog declares no events");
        let huge = format!(
            "events:\n{}",
            "  - {name: x_happened, message: m, event_type: cluster, severity: info, properties: {cluster_id: uuid}}\n"
                .repeat(20_000)
        );
        assert!(problem(&huge).contains("duplicate name"));
    }
}

#[test]
fn topic_keywords_are_read_at_the_root_and_nowhere_else() {
    let declared =
        GOOD.replace("\"type\": \"object\",", "\"type\": \"object\", \"x-compatibility\": \"full\", \"x-partitions\": 6,");
    assert_ne!(declared, GOOD);
    assert!(generate(&write_dir(&[("thing-happened.event.json", &declared)])).is_ok());
    let misspelled = GOOD.replace("\"type\": \"object\",", "\"type\": \"object\", \"x-compatability\": \"full\",");
    let problem = generate(&write_dir(&[("thing-happened.event.json", &misspelled)])).unwrap_err().problem;
    assert!(problem.contains("at `#/x-compatability`: unknown keyword `x-compatability`"), "{problem}");
    let bad_value = GOOD.replace("\"type\": \"object\",", "\"type\": \"object\", \"x-partitions\": 0,");
    let problem = generate(&write_dir(&[("thing-happened.event.json", &bad_value)])).unwrap_err().problem;
    assert!(problem.contains("`x-partitions` must be an integer from 1 to 1000, not 0"), "{problem}");
    let nested = GOOD.replace("\"minimum\": 0", "\"x-partitions\": 3, \"minimum\": 0");
    let problem = generate(&write_dir(&[("thing-happened.event.json", &nested)])).unwrap_err().problem;
    assert!(problem.contains("unknown keyword `x-partitions`"), "{problem}");
}

#[test]
fn a_versioned_key_gets_its_own_module_and_type() {
    let generated = generate(&write_dir(&[("thing-happened.v2.event.json", GOOD)])).unwrap();
    let topic = &generated.topics[0];
    assert_eq!((topic.key.as_str(), topic.module.as_str()), ("thing-happened.v2", "thing_happened_v2"));
    assert_eq!(pascal_case("thing-happened.v2"), "ThingHappenedV2");
    for bad in ["thing..v2", ".thing", "thing.", "Thing.v2"] {
        let problem = generate(&write_dir(&[(&format!("{bad}.event.json"), GOOD)])).unwrap_err().problem;
        assert!(problem.contains("must be lower-case letters, digits and dashes"), "{bad}: {problem}");
    }
}

#[test]
fn a_duplicate_key_fails_the_build_naming_it() {
    let twice = GOOD.replace("\"maximum\": 10", "\"maximum\": 10, \"maximum\": 1000");
    assert_ne!(twice, GOOD);
    let problem = generate(&write_dir(&[("thing-happened.event.json", &twice)])).unwrap_err().problem;
    assert!(problem.contains("duplicate key `maximum`"), "{problem}");
}

#[test]
fn hostile_schema_files_fail_the_build_with_a_reason_not_a_panic() {
    let problem_of = |dir: PathBuf| generate(&dir).unwrap_err().problem;
    // Bytes that are not UTF-8.
    let dir = write_dir(&[]);
    let mut bytes = GOOD.as_bytes().to_vec();
    bytes.splice(40..40, [0xff, 0xfe]);
    fs::write(dir.join("thing-happened.event.json"), bytes).unwrap();
    assert!(problem_of(dir).starts_with("cannot read"));
    // A raw NUL inside a string (JSON allows it only escaped).
    let nul = GOOD.replacen("ThingHappened", "Thing\0Happened", 1);
    assert!(problem_of(write_dir(&[("thing-happened.event.json", &nul)])).starts_with("invalid JSON at line 3"));
    // Nesting far deeper than any schema: refused, not a stack overflow.
    let deep = format!("{}{}", "{\"a\": ".repeat(50_000), "1");
    assert!(problem_of(write_dir(&[("thing-happened.event.json", &deep)])).contains("recursion limit"));
}
