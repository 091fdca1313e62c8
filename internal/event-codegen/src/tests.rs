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
