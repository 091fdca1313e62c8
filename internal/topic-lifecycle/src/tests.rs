//! Pairs of schema versions and what the check must say about them.

use serde_json::{json, Value};

use crate::compat::{breaks, reads, Direction};
use crate::declare;
use crate::report::{check, AllowedRemovals, Status};
use crate::settings::Compatibility;
use crate::source::{SchemaFile, SchemaKind, SchemaSet};

fn base() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "title"],
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 1000},
            "title": {"type": "string", "maxLength": 256},
            "state": {"enum": ["open", "done"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 32}, "maxItems": 10}
        }
    })
}

/// `base()` with `edit` applied at a JSON Pointer (a `null` value removes the member).
fn edited(pointer: &str, value: Value) -> Value {
    let mut schema = base();
    let (parent, member) = pointer.rsplit_once('/').unwrap();
    let target = schema.pointer_mut(parent).unwrap().as_object_mut().unwrap();
    if value.is_null() {
        target.remove(member);
    } else {
        target.insert(member.to_string(), value);
    }
    schema
}

/// (rule, path) of each break, in order.
fn found(old: &Value, new: &Value, mode: Compatibility) -> Vec<(Direction, &'static str, String)> {
    breaks(old, new, mode).into_iter().map(|b| (b.direction, b.rule, b.path)).collect()
}

const B: Direction = Direction::Backward;
const F: Direction = Direction::Forward;

#[test]
fn identical_schemas_are_compatible_both_ways() {
    assert!(found(&base(), &base(), Compatibility::Full).is_empty());
}

#[test]
fn a_new_required_property_breaks_backward_only() {
    let new = edited("/required", json!(["id", "title", "state"]));
    assert_eq!(found(&base(), &new, Compatibility::Full), [(B, "required-added", "/required".to_string())]);
    let b = &breaks(&base(), &new, Compatibility::Backward)[0];
    assert_eq!(b.field, "$.state");
    assert!(b.detail.contains("old: `state` optional; new: `state` required"), "{}", b.detail);
}

#[test]
fn a_removed_required_property_breaks_forward_only() {
    let new = edited("/required", json!(["id"]));
    assert_eq!(found(&base(), &new, Compatibility::Full), [(F, "required-removed", "/required".to_string())]);
    assert!(found(&base(), &new, Compatibility::Backward).is_empty());
}

#[test]
fn enum_values_removed_break_backward_and_added_break_forward() {
    let removed = edited("/properties/state", json!({"enum": ["open"]}));
    assert_eq!(found(&base(), &removed, Compatibility::Full), [(B, "enum-value-removed", "/properties/state/enum".to_string())]);
    let added = edited("/properties/state", json!({"enum": ["open", "done", "archived"]}));
    assert_eq!(found(&base(), &added, Compatibility::Full), [(F, "enum-value-added", "/properties/state/enum".to_string())]);
    assert!(found(&base(), &added, Compatibility::Backward).is_empty());
    let constant = edited("/properties/state", json!({"const": "open"}));
    assert_eq!(
        found(&base(), &constant, Compatibility::Backward),
        [(B, "enum-value-removed", "/properties/state/const".to_string())]
    );
}

#[test]
fn narrowed_and_widened_types() {
    // string → null: neither contains the other.
    let changed = edited("/properties/title", json!({"type": "null"}));
    let rules = found(&base(), &changed, Compatibility::Full);
    assert!(rules.contains(&(B, "type-changed", "/properties/title/type".into())), "{rules:?}");
    assert!(rules.contains(&(F, "type-changed", "/properties/title/type".into())), "{rules:?}");
    // integer → number reads every old message; old consumers refuse 1.5.
    let widened = edited("/properties/id", json!({"type": "number", "minimum": 0, "maximum": 1000}));
    assert_eq!(found(&base(), &widened, Compatibility::Full), [(F, "type-widened", "/properties/id/type".to_string())]);
    // ["string", "null"] → "string": null titles written before are refused.
    let old = edited("/properties/title", json!({"type": ["string", "null"], "maxLength": 256}));
    assert_eq!(found(&old, &base(), Compatibility::Backward), [(B, "type-narrowed", "/properties/title/type".to_string())]);
}

#[test]
fn tightened_and_widened_bounds_name_the_keyword() {
    for (pointer, value, path) in [
        ("/properties/title/maxLength", json!(128), "/properties/title/maxLength"),
        ("/properties/id/maximum", json!(999), "/properties/id/maximum"),
        ("/properties/id/minimum", json!(1), "/properties/id/minimum"),
        ("/properties/tags/maxItems", json!(5), "/properties/tags/maxItems"),
        ("/properties/tags/minItems", json!(1), "/properties/tags/minItems"),
        ("/properties/tags/items/maxLength", json!(8), "/properties/tags/items/maxLength"),
        ("/properties/id/exclusiveMaximum", json!(1000), "/properties/id/exclusiveMaximum"),
        ("/properties/id/multipleOf", json!(2), "/properties/id/multipleOf"),
        ("/properties/tags/uniqueItems", json!(true), "/properties/tags/uniqueItems"),
    ] {
        let tightened = edited(pointer, value.clone());
        assert_eq!(found(&base(), &tightened, Compatibility::Backward), [(B, "bound-tightened", path.to_string())], "{pointer}");
        // The same change undone is a widening, which only old consumers mind.
        assert_eq!(found(&tightened, &base(), Compatibility::Forward), [(F, "bound-widened", path.to_string())], "{pointer}");
        assert!(found(&tightened, &base(), Compatibility::Backward).is_empty(), "{pointer}");
    }
    // A bound dropped altogether is the widest widening.
    let unbounded = edited("/properties/title/maxLength", Value::Null);
    assert_eq!(
        found(&base(), &unbounded, Compatibility::Full),
        [(F, "bound-widened", "/properties/title/maxLength".to_string())]
    );
}

#[test]
fn closing_additional_properties_breaks_backward_and_opening_breaks_forward() {
    let open = edited("/additionalProperties", Value::Null);
    assert_eq!(
        found(&open, &base(), Compatibility::Full),
        [(B, "additional-properties-closed", "/additionalProperties".to_string())]
    );
    assert_eq!(
        found(&base(), &open, Compatibility::Full),
        [(F, "additional-properties-opened", "/additionalProperties".to_string())]
    );
}

#[test]
fn a_new_format_or_pattern_breaks_backward() {
    let formatted = edited("/properties/title/format", json!("uuid"));
    assert_eq!(found(&base(), &formatted, Compatibility::Full), [(B, "format-added", "/properties/title/format".to_string())]);
    assert_eq!(found(&formatted, &base(), Compatibility::Full), [(F, "format-removed", "/properties/title/format".to_string())]);
    let patterned = edited("/properties/title/pattern", json!("^[a-z]+$"));
    assert_eq!(
        found(&base(), &patterned, Compatibility::Backward),
        [(B, "pattern-added", "/properties/title/pattern".to_string())]
    );
    let changed = {
        let mut s = patterned.clone();
        s["properties"]["title"]["pattern"] = json!("^[a-z0-9]+$");
        s
    };
    // Compared as text: a changed pattern is reported in both directions.
    assert_eq!(
        found(&patterned, &changed, Compatibility::Full),
        [
            (B, "pattern-changed", "/properties/title/pattern".to_string()),
            (F, "pattern-changed", "/properties/title/pattern".to_string()),
        ]
    );
}

#[test]
fn properties_removed_or_added_under_a_closed_object() {
    // Removing `state` under additionalProperties false: old messages with `state` are refused.
    let removed = edited("/properties/state", Value::Null);
    assert_eq!(found(&base(), &removed, Compatibility::Full), [(B, "property-removed", "/properties/state".to_string())]);
    // Adding an optional property: new readers are fine; old readers, closed, refuse it.
    let added = edited("/properties/note", json!({"type": "string"}));
    assert_eq!(found(&base(), &added, Compatibility::Full), [(F, "property-added", "/properties/note".to_string())]);
    // Under an open object both are harmless.
    let open = edited("/additionalProperties", Value::Null);
    let open_removed = {
        let mut s = open.clone();
        s["properties"].as_object_mut().unwrap().remove("state");
        s
    };
    assert!(found(&open, &open_removed, Compatibility::Full).is_empty());
}

#[test]
fn nested_changes_are_found_through_items_refs_and_all_of() {
    let old = json!({
        "type": "object",
        "properties": {"hosts": {"type": "array", "items": {"$ref": "#/$defs/host"}}},
        "$defs": {"host": {"type": "object", "properties": {"role": {"$ref": "#/$defs/role"}}}, "role": {"enum": ["master", "worker"]}}
    });
    let mut new = old.clone();
    new["$defs"]["role"] = json!({"enum": ["master"]});
    assert_eq!(
        found(&old, &new, Compatibility::Backward),
        [(B, "enum-value-removed", "/properties/hosts/items/properties/role/enum".to_string())]
    );
    assert_eq!(breaks(&old, &new, Compatibility::Backward)[0].field, "$.hosts[].role");
    // A $ref with siblings and an allOf fold into one set of constraints.
    let refd = json!({"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 10});
    let all = json!({"allOf": [{"type": "string"}, {"maxLength": 10}]});
    assert!(found(&refd, &all, Compatibility::Full).is_empty());
    let tighter = json!({"allOf": [{"type": "string"}, {"maxLength": 5}]});
    assert_eq!(found(&refd, &tighter, Compatibility::Backward), [(B, "bound-tightened", "/maxLength".to_string())]);
}

#[test]
fn recursive_schemas_terminate() {
    let tree = json!({"$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"});
    assert!(found(&tree, &tree.clone(), Compatibility::Full).is_empty());
    let mut narrower = tree.clone();
    narrower["$defs"]["node"]["properties"]["children"]["maxItems"] = json!(2);
    assert_eq!(
        found(&tree, &narrower, Compatibility::Backward),
        [(B, "bound-tightened", "/properties/children/maxItems".to_string())]
    );
}

#[test]
fn any_of_branches_are_matched_one_by_one() {
    let old = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    let fewer = json!({"anyOf": [{"type": "string"}]});
    assert_eq!(found(&old, &fewer, Compatibility::Full), [(B, "branch-removed", "/anyOf".to_string())]);
    let more = json!({"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]});
    assert_eq!(found(&old, &more, Compatibility::Full), [(F, "branch-added", "/anyOf".to_string())]);
}

#[test]
fn keywords_that_cannot_be_compared_must_stay_unchanged() {
    let old = json!({"type": "string", "not": {"const": "x"}});
    assert!(found(&old, &old.clone(), Compatibility::Full).is_empty());
    let new = json!({"type": "string", "not": {"const": "y"}});
    let rules = found(&old, &new, Compatibility::Full);
    assert_eq!(rules, [(B, "unverifiable-change", "/not".to_string()), (F, "unverifiable-change", "/not".to_string())]);
}

#[test]
fn changes_that_only_document_break_nothing() {
    let mut new = base();
    new["description"] = json!("now documented");
    new["properties"]["title"]["examples"] = json!(["x"]);
    new["x-partitions"] = json!(12);
    assert!(found(&base(), &new, Compatibility::Full).is_empty());
}

#[test]
fn the_mode_picks_the_directions() {
    let new = edited("/required", json!(["id", "title", "state"]));
    assert_eq!(breaks(&base(), &new, Compatibility::Forward), []);
    assert_eq!(breaks(&base(), &new, Compatibility::None), []);
    assert_eq!(reads(&base(), &new, Direction::Forward), []);
}

fn set(origin: &str, files: &[(&str, Value)]) -> SchemaSet {
    SchemaSet {
        origin: origin.into(),
        files: files
            .iter()
            .map(|(name, schema)| SchemaFile {
                key: name.trim_end_matches(".event.json").trim_end_matches(".header.json").into(),
                kind: if name.ends_with(".header.json") { SchemaKind::Header } else { SchemaKind::Topic },
                name: name.to_string(),
                text: Ok(schema.to_string()),
            })
            .collect(),
    }
}

#[test]
fn the_report_covers_added_removed_and_changed_schemas() {
    let old =
        set("old", &[("a.event.json", base()), ("gone.event.json", base()), ("x-id.header.json", json!({"type": "object"}))]);
    let mut strict = base();
    strict["x-compatibility"] = json!("full");
    strict["properties"]["title"]["maxLength"] = json!(100);
    let new = set(
        "new",
        &[
            ("a.event.json", strict),
            ("b.event.json", base()),
            ("x-id.header.json", json!({"type": "object", "required": ["identity"]})),
        ],
    );
    let report = check(&old, &new, &AllowedRemovals::new());
    assert!(!report.compatible);
    let status: Vec<(&str, &str, Status)> = report.schemas.iter().map(|s| (s.kind, s.key.as_str(), s.status)).collect();
    assert_eq!(
        status,
        [
            ("topic", "a", Status::Incompatible),
            ("topic", "b", Status::Added),
            ("topic", "gone", Status::Removed),
            ("header", "x-id", Status::Incompatible),
        ]
    );
    let a = &report.schemas[0];
    assert_eq!(a.compatibility, "full");
    assert_eq!(a.breaks[0].rule, "bound-tightened");
    assert!(a.breaks.iter().all(|b| b.enforced));
    assert!(a.notes[0].contains("compatibility changed from backward to full"));
    // Breaks outside the mode are shown but fail nothing.
    let mut loose = base();
    loose["properties"]["title"]["maxLength"] = json!(512);
    let widened =
        check(&set("old", &[("a.event.json", base())]), &set("new", &[("a.event.json", loose)]), &AllowedRemovals::new());
    assert!(widened.compatible);
    assert_eq!(widened.schemas[0].status, Status::Compatible);
    assert_eq!((widened.schemas[0].breaks[0].rule, widened.schemas[0].breaks[0].enforced), ("bound-widened", false));
    assert!(
        widened
            .text()
            .contains("forward bound-widened at /properties/title/maxLength ($.title): old: maxLength 256; new: maxLength 512"),
        "{}",
        widened.text()
    );
    assert!(widened.text().contains("[not enforced]"));
    assert_eq!(report.schemas[2].breaks[0].rule, "schema-removed");
    let text = report.text();
    assert!(text.contains("topic a (a.event.json, full): INCOMPATIBLE"), "{text}");
    assert!(text.contains("backward bound-tightened at /properties/title/maxLength ($.title)"), "{text}");
    assert!(text.contains("topic gone (gone.event.json, backward): REMOVED"), "{text}");
    let json = report.json();
    assert_eq!(json["compatible"], false);
    assert_eq!(json["schemas"][0]["breaks"][0]["path"], "/properties/title/maxLength");
    // Removal on purpose.
    let allowed: AllowedRemovals = ["gone".to_string()].into();
    let report = check(&old, &set("new", &[("a.event.json", base()), ("x-id.header.json", json!({"type": "object"}))]), &allowed);
    assert!(report.compatible, "{}", report.text());
}

#[test]
fn unreadable_schemas_are_reported_not_fatal() {
    let old = set("old", &[("a.event.json", base())]);
    let mut new = set("new", &[("a.event.json", base())]);
    new.files[0].text = Ok("{ not json".into());
    let report = check(&old, &new, &AllowedRemovals::new());
    assert_eq!(report.schemas[0].breaks[0].rule, "schema-invalid");
    let mut duplicated = set("new", &[("a.event.json", base())]);
    duplicated.files[0].text = Ok(r#"{"type": "object", "required": ["id"], "required": []}"#.into());
    let report = check(&old, &duplicated, &AllowedRemovals::new());
    assert_eq!(report.schemas[0].breaks[0].rule, "schema-invalid");
    assert!(report.schemas[0].breaks[0].detail.contains("duplicate key `required`"), "{:?}", report.schemas[0]);
    let mut bad_mode = base();
    bad_mode["x-compatibility"] = json!("sideways");
    let report = check(&old, &set("new", &[("a.event.json", bad_mode)]), &AllowedRemovals::new());
    assert!(report.schemas[0].breaks[0].detail.contains("`x-compatibility` must be one of"));
    let mut broken_old = old.clone();
    broken_old.files[0].text = Err("not UTF-8".into());
    let report = check(&broken_old, &set("new", &[("a.event.json", base())]), &AllowedRemovals::new());
    assert!(report.compatible && report.schemas[0].notes[0].contains("cannot be read"));
}

#[test]
fn declarations_follow_the_schemas_and_drift_names_the_topic() {
    let mut busy = base();
    busy["x-partitions"] = json!(12);
    busy["x-retention-ms"] = json!(-1);
    let schemas = set("now", &[("a.event.json", base()), ("busy.event.json", busy)]);
    let topics = declare::topics(&schemas, "platform.x").unwrap();
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["platform.x.a", "platform.x.busy", "platform.x.events-stream", "platform.x.dlq"]);
    assert_eq!((topics[1].partitions, topics[1].retention_ms), (12, -1));

    let template = format!(
        "spec:\n      {}\n      kafkaTopics: []\n      {}\n      deployments: []\n",
        declare::CLOWDAPP_BEGIN,
        declare::CLOWDAPP_END
    );
    let drift = declare::check_clowdapp("app.yaml", &template, &topics);
    assert_eq!(drift.len(), 4, "{drift:?}");
    let written = declare::write_clowdapp(&template, &topics).unwrap();
    assert!(written.contains("      kafkaTopics:\n        - topicName: platform.x.a\n          partitions: 3\n"), "{written}");
    assert!(written.ends_with(&format!("      {}\n      deployments: []\n", declare::CLOWDAPP_END)));
    assert_eq!(declare::check_clowdapp("app.yaml", &written, &topics), []);
    assert_eq!(declare::write_clowdapp(&written, &topics).unwrap(), written, "writing is idempotent");

    let strimzi = declare::strimzi_file(&topics);
    assert_eq!(declare::check_strimzi("topics.yaml", &strimzi, &topics), []);
    // A new topic shows up by name in both files' drift.
    let more = set("now", &[("a.event.json", base()), ("busy.event.json", base()), ("new-one.event.json", base())]);
    let newer = declare::topics(&more, "platform.x").unwrap();
    let drift = declare::check_strimzi("topics.yaml", &strimzi, &newer);
    assert!(drift.iter().any(|d| d.topic == "platform.x.new-one" && d.problem == "missing"), "{drift:?}");
    assert!(drift.iter().any(|d| d.topic == "platform.x.busy" && d.problem.contains("partitions: 12")), "{drift:?}");
    let drift = declare::check_clowdapp("app.yaml", &written, &newer);
    assert!(drift.iter().any(|d| d.topic == "platform.x.new-one"), "{drift:?}");
    // Hand edits are named too.
    let edited = strimzi.replace("partitions: 12", "partitions: 24");
    assert_eq!(declare::check_strimzi("topics.yaml", &edited, &topics)[0].topic, "platform.x.busy");
    assert!(declare::check_clowdapp("app.yaml", "kafkaTopics: []\n", &topics)[0].problem.contains("no line"));
}

#[test]
fn declarations_refuse_keys_that_collide_or_are_not_topic_names() {
    let collide = set("now", &[("dlq.event.json", base())]);
    assert!(declare::topics(&collide, "p").unwrap_err().contains("the service's own topic"));
    let odd = set("now", &[("a b.event.json", base())]);
    assert!(declare::topics(&odd, "p").unwrap_err().contains("not a Kafka topic name"));
}
