//! Keyword checks that run before typify sees a schema.
//!
//! A JSON Schema validator ignores keywords it does not know, so a typo such as `minValue` (for
//! `minimum`) would silently enforce nothing. We walk every subschema and reject unknown keywords,
//! and reject the constructs typify 0.8 cannot turn into types. Keywords that typify silently
//! drops but jsonschema still enforces at run time only produce a warning.

use serde_json::Value;

/// What a schema walk found: errors stop the build, warnings are shown by cargo.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SchemaProblems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Keywords of JSON Schema draft 2020-12 (core, applicator, validation, meta-data, format,
/// content, unevaluated) plus the draft-07 spellings still in wide use.
const KNOWN: &[&str] = &[
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "$comment",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$vocabulary",
    "$recursiveRef",
    "$recursiveAnchor",
    "definitions",
    "type",
    "enum",
    "const",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxContains",
    "minContains",
    "maxProperties",
    "minProperties",
    "required",
    "dependentRequired",
    "properties",
    "patternProperties",
    "additionalProperties",
    "propertyNames",
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "dependencies",
    "unevaluatedItems",
    "unevaluatedProperties",
    "title",
    "description",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "examples",
    "format",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
];

/// Constructs that make typify 0.8 panic or generate wrong types.
const TYPIFY_UNSUPPORTED: &[(&str, &str)] = &[
    ("if", "`if`/`then`/`else` is not supported by the type generator; express it with `oneOf` or `anyOf`"),
    ("then", "`if`/`then`/`else` is not supported by the type generator; express it with `oneOf` or `anyOf`"),
    ("else", "`if`/`then`/`else` is not supported by the type generator; express it with `oneOf` or `anyOf`"),
    ("$anchor", "`$anchor` is not supported by the type generator; refer to `#/$defs/...` instead"),
    ("$dynamicRef", "`$dynamicRef` is not supported by the type generator"),
    ("$dynamicAnchor", "`$dynamicAnchor` is not supported by the type generator"),
    ("$recursiveRef", "`$recursiveRef` is not supported by the type generator"),
    ("$recursiveAnchor", "`$recursiveAnchor` is not supported by the type generator"),
];

/// Keywords typify drops without a word; jsonschema still enforces them at run time.
const TYPIFY_IGNORED: &[&str] =
    &["prefixItems", "dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems"];

/// Walks `schema` and reports unknown keywords and, when `for_types` is set, constructs the type
/// generator cannot handle.
pub fn check_schema(schema: &Value, for_types: bool) -> SchemaProblems {
    let mut problems = SchemaProblems::default();
    walk(schema, "#", for_types, &mut problems);
    problems
}

fn walk(schema: &Value, at: &str, for_types: bool, problems: &mut SchemaProblems) {
    let object = match schema {
        Value::Bool(_) => return,
        Value::Object(object) => object,
        _ => {
            problems.errors.push(format!("at `{at}`: a schema must be an object or a boolean"));
            return;
        }
    };
    for (keyword, value) in object {
        let here = format!("{at}/{keyword}");
        // A topic's own keywords (`x-compatibility`, ...) sit at the root; topic_lifecycle
        // checks their values.
        if at == "#" && keyword.starts_with("x-") {
            if let Err(problem) = topic_lifecycle::settings::TopicSettings::from_schema(&Value::Object(
                [(keyword.clone(), value.clone())].into_iter().collect(),
            )) {
                problems.errors.push(format!("at `{here}`: {problem}"));
            }
            continue;
        }
        if !KNOWN.contains(&keyword.as_str()) {
            problems.errors.push(match suggestion(keyword) {
                Some(known) => {
                    format!("at `{here}`: unknown keyword `{keyword}` (did you mean `{known}`?)")
                }
                None => format!("at `{here}`: unknown keyword `{keyword}`"),
            });
            continue;
        }
        if for_types {
            if let Some((_, why)) = TYPIFY_UNSUPPORTED.iter().find(|(k, _)| k == keyword) {
                problems.errors.push(format!("at `{here}`: {why}"));
            }
            if TYPIFY_IGNORED.contains(&keyword.as_str()) {
                problems
                    .warnings
                    .push(format!("at `{here}`: `{keyword}` is enforced at run time but not reflected in the generated type"));
            }
            if keyword == "patternProperties" && object.contains_key("properties") {
                problems.warnings.push(format!(
                    "at `{here}`: `patternProperties` beside `properties` is enforced at run time but not reflected in the generated type"
                ));
            }
        }
        if keyword == "$ref" {
            match value.as_str() {
                Some(target) if target == "#" || target.starts_with("#/") => {}
                Some(target) => problems.errors.push(format!(
                    "at `{here}`: external reference `{target}`: schemas must be self-contained (use `#/$defs/...`)"
                )),
                None => problems.errors.push(format!("at `{here}`: `$ref` must be a string")),
            }
        }
        match keyword.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => match value.as_object() {
                Some(map) => {
                    for (name, sub) in map {
                        walk(sub, &format!("{here}/{name}"), for_types, problems);
                    }
                }
                None => problems.errors.push(format!("at `{here}`: `{keyword}` must be an object")),
            },
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => match value.as_array() {
                Some(items) => {
                    for (i, sub) in items.iter().enumerate() {
                        walk(sub, &format!("{here}/{i}"), for_types, problems);
                    }
                }
                None => problems.errors.push(format!("at `{here}`: `{keyword}` must be an array")),
            },
            "items" | "additionalItems" => match value {
                Value::Array(items) => {
                    for (i, sub) in items.iter().enumerate() {
                        walk(sub, &format!("{here}/{i}"), for_types, problems);
                    }
                }
                sub => walk(sub, &here, for_types, problems),
            },
            "not"
            | "additionalProperties"
            | "contains"
            | "propertyNames"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "if"
            | "then"
            | "else"
            | "contentSchema" => walk(value, &here, for_types, problems),
            _ => {}
        }
    }
}

/// A known keyword close to an unknown one, for the error message.
fn suggestion(unknown: &str) -> Option<&'static str> {
    let aliases: &[(&str, &str)] = &[
        ("minValue", "minimum"),
        ("maxValue", "maximum"),
        ("min", "minimum"),
        ("max", "maximum"),
        ("minLen", "minLength"),
        ("maxLen", "maxLength"),
        ("optional", "required"),
        ("regex", "pattern"),
        ("enumValues", "enum"),
    ];
    if let Some((_, known)) = aliases.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(unknown)) {
        return Some(known);
    }
    KNOWN.iter().copied().find(|known| known.eq_ignore_ascii_case(unknown))
}
