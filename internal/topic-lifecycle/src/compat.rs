//! Whether one version of a schema can read what another accepts.
//!
//! Both directions of a change reduce to one question, asked with the roles swapped: does the
//! *reader* schema accept every message the *writer* schema accepts? Backward compatibility (new
//! consumers read old messages) asks it with the new schema reading the old one; forward (old
//! consumers read new messages) with the old schema reading the new one. So there is one walk,
//! [`reads`], that finds every place where the reader is stricter than the writer, and each finding
//! is named by what changed from the old version to the new one in that direction: a reader that
//! requires a property the writer may leave out is `required-added` going backward and
//! `required-removed` going forward.
//!
//! The walk is structural and deliberately conservative. `$ref` (local) and `allOf` are folded
//! into one set of constraints per place in the message; `anyOf`/`oneOf` compare branch by branch;
//! keywords whose effect cannot be compared by structure (`not`, `if`, `contains`, ...) must be
//! unchanged or are reported as `unverifiable-change`. A pattern is compared as text: a changed
//! pattern is reported even when the new one happens to accept the same strings.
//!
//! One assumption is made on purpose: under an object that allows undeclared properties, a writer
//! is taken not to send a property it does not declare. Declaring a new optional property is then
//! compatible, as everyone expects; strictly, an open object already allowed that name with any
//! value.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::settings::Compatibility;

/// Which consumers a break hurts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// New consumers reading messages written under the old schema.
    Backward,
    /// Consumers still on the old schema reading messages written under the new one.
    Forward,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Backward => "backward",
            Self::Forward => "forward",
        })
    }
}

/// One change that breaks compatibility in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    pub direction: Direction,
    /// e.g. `required-added`, `bound-tightened`.
    pub rule: &'static str,
    /// Where in the schema, as a JSON Pointer through `properties`, `items`, ... (references and
    /// `allOf` are followed, so the path names the place in the message, not in `$defs`).
    pub path: String,
    /// The place in the message the change is about, e.g. `$.hosts[].role`.
    pub field: String,
    /// What the old and the new version say, and what breaks.
    pub detail: String,
    /// Whether the topic's `x-compatibility` holds it to this direction; a break in the other
    /// direction is reported for information and fails nothing.
    pub enforced: bool,
}

/// What the walk finds: the reader is stricter than the writer in this way.
#[derive(Debug, Clone, Copy)]
enum Finding {
    /// The reader accepts fewer types.
    TypeNarrower,
    /// The reader accepts other types: neither side's types include the other's.
    TypeChanged,
    /// The reader's enum lacks values the writer allows.
    EnumValueMissing,
    /// The reader has an enum where the writer has none.
    EnumAdded,
    /// A bound (length, value, items, properties, multipleOf, uniqueItems) is tighter.
    BoundTighter,
    FormatAdded,
    FormatChanged,
    PatternAdded,
    PatternChanged,
    RequiredAdded,
    /// The writer declares a property the closed reader does not know.
    PropertyUnknownToReader,
    /// The reader refuses undeclared properties the writer allows.
    AdditionalClosed,
    /// No branch of the reader's `anyOf`/`oneOf` accepts a branch of the writer.
    BranchMissing,
    /// The reader refuses everything.
    RejectsAll,
    /// Cannot be compared by structure and changed.
    Unverifiable,
}

impl Finding {
    /// The rule's name going backward (reader = new) and forward (reader = old).
    fn rule(self, direction: Direction) -> &'static str {
        let (backward, forward) = match self {
            Self::TypeNarrower => ("type-narrowed", "type-widened"),
            Self::TypeChanged => ("type-changed", "type-changed"),
            Self::EnumValueMissing => ("enum-value-removed", "enum-value-added"),
            Self::EnumAdded => ("enum-added", "enum-removed"),
            Self::BoundTighter => ("bound-tightened", "bound-widened"),
            Self::FormatAdded => ("format-added", "format-removed"),
            Self::FormatChanged => ("format-changed", "format-changed"),
            Self::PatternAdded => ("pattern-added", "pattern-removed"),
            Self::PatternChanged => ("pattern-changed", "pattern-changed"),
            Self::RequiredAdded => ("required-added", "required-removed"),
            Self::PropertyUnknownToReader => ("property-removed", "property-added"),
            Self::AdditionalClosed => ("additional-properties-closed", "additional-properties-opened"),
            Self::BranchMissing => ("branch-removed", "branch-added"),
            Self::RejectsAll => ("schema-false", "schema-false-removed"),
            Self::Unverifiable => ("unverifiable-change", "unverifiable-change"),
        };
        match direction {
            Direction::Backward => backward,
            Direction::Forward => forward,
        }
    }
}

/// Every break between `old` and `new` that `mode` holds the topic to: backward first, then
/// forward.
pub fn breaks(old: &Value, new: &Value, mode: Compatibility) -> Vec<Break> {
    all_breaks(old, new, mode).into_iter().filter(|b| b.enforced).collect()
}

/// Every break between `old` and `new` in both directions, those `mode` holds the topic to
/// marked `enforced`.
pub fn all_breaks(old: &Value, new: &Value, mode: Compatibility) -> Vec<Break> {
    let mut found = reads(new, old, Direction::Backward);
    found.extend(reads(old, new, Direction::Forward));
    for b in &mut found {
        b.enforced = match b.direction {
            Direction::Backward => mode.checks_backward(),
            Direction::Forward => mode.checks_forward(),
        };
    }
    found
}

/// Every place where `reader` refuses something `writer` accepts, named for `direction`.
pub fn reads(reader: &Value, writer: &Value, direction: Direction) -> Vec<Break> {
    let mut walk = Walk { reader_root: reader, writer_root: writer, direction, seen: HashSet::new(), found: Vec::new() };
    walk.compare(&[reader], &[writer], &Place::root());
    walk.found
}

/// A place in the schema and in the message.
#[derive(Clone)]
struct Place {
    path: String,
    field: String,
}

impl Place {
    fn root() -> Self {
        Self { path: String::new(), field: "$".into() }
    }
    fn property(&self, name: &str) -> Self {
        Self { path: format!("{}/properties/{}", self.path, pointer_escape(name)), field: format!("{}.{name}", self.field) }
    }
    fn child(&self, keyword: &str, field: &str) -> Self {
        Self { path: format!("{}/{keyword}", self.path), field: format!("{}{field}", self.field) }
    }
    fn keyword(&self, keyword: &str) -> String {
        format!("{}/{keyword}", self.path)
    }
}

fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// The JSON types, `integer` being a part of `number`.
const ALL_TYPES: [&str; 7] = ["array", "boolean", "integer", "null", "number", "object", "string"];

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A bound on one measure: its limit and whether the limit itself is excluded.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    limit: f64,
    exclusive: bool,
    keyword: &'static str,
}

/// The measures bounds apply to and the type they apply to.
const MEASURES: &[(&str, &str)] = &[("length", "string"), ("items", "array"), ("properties", "object"), ("value", "number")];

/// Every bound keyword: its measure, whether it is an upper bound, whether it excludes its limit.
const BOUNDS: &[(&str, &str, bool, bool)] = &[
    ("maxLength", "length", true, false),
    ("minLength", "length", false, false),
    ("maxItems", "items", true, false),
    ("minItems", "items", false, false),
    ("maxProperties", "properties", true, false),
    ("minProperties", "properties", false, false),
    ("maximum", "value", true, false),
    ("minimum", "value", false, false),
    ("exclusiveMaximum", "value", true, true),
    ("exclusiveMinimum", "value", false, true),
];

/// Keywords whose effect is not compared by structure: the reader's must appear unchanged in the
/// writer.
const OPAQUE: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "contains",
    "minContains",
    "maxContains",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "contentSchema",
    "$dynamicRef",
    "$recursiveRef",
];

/// How a schema treats properties it does not declare.
#[derive(Default)]
enum Additional<'a> {
    #[default]
    Open,
    Closed,
    Schemas(Vec<&'a Value>),
}

/// The constraints that hold at one place, folded from the schema there, its `$ref` targets and
/// its `allOf` branches.
#[derive(Default)]
struct Shape<'a> {
    rejects_all: bool,
    types: Option<BTreeSet<&'static str>>,
    values: Option<Vec<Value>>,
    /// `enum` or `const`, whichever the values came from last.
    values_keyword: &'static str,
    upper: BTreeMap<&'static str, Bound>,
    lower: BTreeMap<&'static str, Bound>,
    multiple_of: Vec<f64>,
    formats: BTreeSet<String>,
    patterns: BTreeSet<String>,
    unique_items: bool,
    required: BTreeSet<String>,
    properties: BTreeMap<String, Vec<&'a Value>>,
    pattern_properties: BTreeMap<String, Vec<&'a Value>>,
    additional: Additional<'a>,
    items: Option<Vec<&'a Value>>,
    prefix_items: Vec<Vec<&'a Value>>,
    branches: Vec<(&'static str, Vec<&'a Value>)>,
    opaque: Vec<(&'static str, &'a Value)>,
}

/// The schema `true`, for a writer that allows anything at a place.
static ANYTHING: Value = Value::Bool(true);

/// Depth of `$ref` and `allOf` nesting followed when folding; deeper is a cycle.
const MAX_FOLD_DEPTH: usize = 32;

impl<'a> Shape<'a> {
    fn of(root: &'a Value, schemas: &[&'a Value]) -> Self {
        let mut shape = Shape::default();
        for schema in schemas {
            shape.fold(root, schema, 0);
        }
        shape
    }

    fn fold(&mut self, root: &'a Value, schema: &'a Value, depth: usize) {
        let object = match schema {
            Value::Bool(true) => return,
            Value::Object(object) => object,
            _ => {
                self.rejects_all = true;
                return;
            }
        };
        if depth > MAX_FOLD_DEPTH {
            return;
        }
        if let Some(target) = object.get("$ref").and_then(Value::as_str).and_then(|r| resolve(root, r)) {
            self.fold(root, target, depth + 1);
        }
        for branch in object.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.fold(root, branch, depth + 1);
        }
        if let Some(declared) = object.get("type") {
            let types: BTreeSet<&'static str> = match declared {
                Value::String(t) => ALL_TYPES.iter().copied().filter(|k| k == t).collect(),
                Value::Array(list) => ALL_TYPES.iter().copied().filter(|k| list.iter().any(|t| t.as_str() == Some(k))).collect(),
                _ => BTreeSet::new(),
            };
            // `number` admits integers.
            let types = if types.contains("number") { types.into_iter().chain(["integer"]).collect() } else { types };
            self.types = Some(match self.types.take() {
                Some(before) => before.intersection(&types).copied().collect(),
                None => types,
            });
        }
        let listed = match (object.get("enum"), object.get("const")) {
            (_, Some(constant)) => Some((vec![constant.clone()], "const")),
            (Some(Value::Array(values)), None) => Some((values.clone(), "enum")),
            _ => None,
        };
        if let Some((listed, keyword)) = listed {
            self.values_keyword = keyword;
            self.values = Some(match self.values.take() {
                Some(before) => before.into_iter().filter(|v| listed.iter().any(|l| json_eq(l, v))).collect(),
                None => listed,
            });
        }
        for &(keyword, measure, is_upper, exclusive) in BOUNDS {
            let Some(limit) = object.get(keyword).and_then(Value::as_f64) else { continue };
            let bound = Bound { limit, exclusive, keyword };
            let map = if is_upper { &mut self.upper } else { &mut self.lower };
            match map.get(measure) {
                Some(before) if !tighter(bound, *before, is_upper) => {}
                _ => {
                    map.insert(measure, bound);
                }
            }
        }
        if let Some(step) = object.get("multipleOf").and_then(Value::as_f64) {
            self.multiple_of.push(step);
        }
        if let Some(format) = object.get("format").and_then(Value::as_str) {
            self.formats.insert(format.to_string());
        }
        if let Some(pattern) = object.get("pattern").and_then(Value::as_str) {
            self.patterns.insert(pattern.to_string());
        }
        self.unique_items |= object.get("uniqueItems") == Some(&Value::Bool(true));
        for name in object.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = name.as_str() {
                self.required.insert(name.to_string());
            }
        }
        for (name, sub) in object.get("properties").and_then(Value::as_object).into_iter().flatten() {
            self.properties.entry(name.clone()).or_default().push(sub);
        }
        for (pattern, sub) in object.get("patternProperties").and_then(Value::as_object).into_iter().flatten() {
            self.pattern_properties.entry(pattern.clone()).or_default().push(sub);
        }
        match object.get("additionalProperties") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => self.additional = Additional::Closed,
            Some(sub) => match &mut self.additional {
                Additional::Closed => {}
                Additional::Schemas(list) => list.push(sub),
                open => *open = Additional::Schemas(vec![sub]),
            },
        }
        match object.get("items") {
            Some(Value::Array(tuple)) => self.add_prefix(tuple),
            Some(sub) => self.items.get_or_insert_with(Vec::new).push(sub),
            None => {}
        }
        if let Some(Value::Array(tuple)) = object.get("prefixItems") {
            self.add_prefix(tuple);
        }
        for keyword in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = object.get(keyword) {
                self.branches.push((keyword, branches.iter().collect()));
            }
        }
        for keyword in OPAQUE {
            if let Some(value) = object.get(*keyword) {
                self.opaque.push((keyword, value));
            }
        }
    }

    fn add_prefix(&mut self, tuple: &'a [Value]) {
        for (i, sub) in tuple.iter().enumerate() {
            if self.prefix_items.len() <= i {
                self.prefix_items.push(Vec::new());
            }
            self.prefix_items[i].push(sub);
        }
    }

    /// The types of the messages this shape accepts.
    fn accepted_types(&self) -> BTreeSet<&'static str> {
        let declared: BTreeSet<&'static str> = self.types.clone().unwrap_or_else(|| ALL_TYPES.into_iter().collect());
        match &self.values {
            Some(values) => values.iter().map(type_of).filter(|t| declared.contains(t)).collect(),
            None => declared,
        }
    }

    fn accepts_type(&self, t: &str) -> bool {
        match &self.types {
            None => true,
            Some(types) => types.contains(t),
        }
    }

    /// The writer's subschemas for a property the writer does not declare by name.
    fn undeclared(&self, name: &str) -> Option<Vec<&'a Value>> {
        let by_pattern: Vec<&Value> = self
            .pattern_properties
            .iter()
            .filter(|(pattern, _)| simple_match(pattern, name))
            .flat_map(|(_, subs)| subs.iter().copied())
            .collect();
        if !by_pattern.is_empty() {
            return Some(by_pattern);
        }
        match &self.additional {
            Additional::Closed => None,
            Additional::Schemas(list) => Some(list.clone()),
            Additional::Open => Some(Vec::new()),
        }
    }
}

/// Only literal names are decided for `patternProperties` (`^name$`); anything else counts as a
/// match, which errs towards comparing.
fn simple_match(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$')) {
        Some(literal) if literal.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') => literal == name,
        _ => true,
    }
}

/// Whether `a` admits less than `b` (for an upper bound: a lower limit, or the same limit
/// excluded).
fn tighter(a: Bound, b: Bound, upper: bool) -> bool {
    if a.limit == b.limit {
        return a.exclusive && !b.exclusive;
    }
    if upper {
        a.limit < b.limit
    } else {
        a.limit > b.limit
    }
}

fn describe_bound(bound: Option<Bound>) -> String {
    match bound {
        Some(b) => format!("{} {}", b.keyword, number(b.limit)),
        None => "no limit".into(),
    }
}

fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Integers written as `1` and `1.0` are the same value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Resolves a local reference (`#`, `#/$defs/x`, JSON Pointer escapes and percent-encoding of
/// `%25`/`%22` are not expected in our schemas and fail to resolve, which leaves the reference
/// unfollowed).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

/// Text as a JSON string: quoted, control characters escaped.
fn quoted(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// Joins a set of names for a message.
fn list<'s>(items: impl IntoIterator<Item = &'s str>) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}

struct Walk<'a> {
    reader_root: &'a Value,
    writer_root: &'a Value,
    direction: Direction,
    /// Pairs of subschemas already compared: recursive schemas end here.
    seen: HashSet<(Vec<*const Value>, Vec<*const Value>)>,
    found: Vec<Break>,
}

impl<'a> Walk<'a> {
    /// Records a finding; `reader` and `writer` say what each side has there.
    fn report(&mut self, finding: Finding, path: String, place: &Place, reader: String, writer: String) {
        let (old, new) = match self.direction {
            Direction::Backward => (writer, reader),
            Direction::Forward => (reader, writer),
        };
        let consequence = match self.direction {
            Direction::Backward => "a message valid under the old schema can be refused by the new one",
            Direction::Forward => "a message valid under the new schema can be refused by consumers still on the old one",
        };
        self.found.push(Break {
            direction: self.direction,
            rule: finding.rule(self.direction),
            path: if path.is_empty() { "/".into() } else { path },
            field: place.field.clone(),
            detail: format!("old: {old}; new: {new}; {consequence}"),
            enforced: true,
        });
    }

    fn compare(&mut self, reader: &[&'a Value], writer: &[&'a Value], place: &Place) {
        let key = (reader.iter().map(|v| *v as *const Value).collect(), writer.iter().map(|v| *v as *const Value).collect());
        if !self.seen.insert(key) {
            return;
        }
        let r = Shape::of(self.reader_root, reader);
        let w = Shape::of(self.writer_root, writer);
        if w.rejects_all {
            return;
        }
        if r.rejects_all {
            self.report(Finding::RejectsAll, place.path.clone(), place, "refuses everything".into(), "accepts messages".into());
            return;
        }
        let writer_types = w.accepted_types();
        if writer_types.is_empty() {
            return;
        }
        self.compare_types(&r, &writer_types, place);
        self.compare_values(&r, &w, &writer_types, place);
        self.compare_bounds(&r, &w, &writer_types, place);
        if writer_types.contains("object") && r.accepts_type("object") {
            self.compare_objects(&r, &w, place);
        }
        if writer_types.contains("array") && r.accepts_type("array") {
            self.compare_arrays(&r, &w, place);
        }
        self.compare_branches(&r, &w, writer, place);
        for (keyword, value) in &r.opaque {
            if !w.opaque.iter().any(|(k, v)| k == keyword && json_eq(v, value)) {
                let writer_side = match w.opaque.iter().find(|(k, _)| k == keyword) {
                    Some((_, v)) => format!("`{keyword}`: {v}"),
                    None => format!("no `{keyword}`"),
                };
                self.report(Finding::Unverifiable, place.keyword(keyword), place, format!("`{keyword}`: {value}"), writer_side);
            }
        }
    }

    fn compare_types(&mut self, r: &Shape<'a>, writer_types: &BTreeSet<&'static str>, place: &Place) {
        let Some(reader_types) = &r.types else { return };
        let refused: Vec<&str> = writer_types.iter().copied().filter(|t| !reader_types.contains(t)).collect();
        // Types only the reader has: `string` → `integer` is a change, not a narrowing.
        let numeric = |t: &&str| *t == "integer" && writer_types.contains("number");
        let extra = reader_types.iter().any(|t| !writer_types.contains(t) && !numeric(t));
        if !refused.is_empty() {
            let finding = if extra { Finding::TypeChanged } else { Finding::TypeNarrower };
            let shown = |types: &BTreeSet<&'static str>| {
                // `integer` is implied by `number`; naming both reads as noise.
                list(types.iter().copied().filter(|t| !(*t == "integer" && types.contains("number"))))
            };
            self.report(
                finding,
                place.keyword("type"),
                place,
                format!("type {}", shown(reader_types)),
                format!("type {}", shown(writer_types)),
            );
        }
    }

    fn compare_values(&mut self, r: &Shape<'a>, w: &Shape<'a>, writer_types: &BTreeSet<&'static str>, place: &Place) {
        let Some(reader_values) = &r.values else { return };
        match &w.values {
            Some(writer_values) => {
                let missing: Vec<String> = writer_values
                    .iter()
                    .filter(|v| writer_types.contains(type_of(v)) && !reader_values.iter().any(|r| json_eq(r, v)))
                    .map(Value::to_string)
                    .collect();
                for value in missing {
                    self.report(
                        Finding::EnumValueMissing,
                        place.keyword(r.values_keyword),
                        place,
                        format!("no {value}"),
                        format!("{value} allowed"),
                    );
                }
            }
            None => self.report(
                Finding::EnumAdded,
                place.keyword(r.values_keyword),
                place,
                format!("only {}", list(reader_values.iter().map(|v| v.as_str().unwrap_or("…")))),
                "any value".into(),
            ),
        }
    }

    fn compare_bounds(&mut self, r: &Shape<'a>, w: &Shape<'a>, writer_types: &BTreeSet<&'static str>, place: &Place) {
        for (measure, applies_to) in MEASURES {
            let applies = writer_types.contains(applies_to) || (*applies_to == "number" && writer_types.contains("integer"));
            if !applies {
                continue;
            }
            for (reader_bounds, writer_bounds, upper) in [(&r.upper, &w.upper, true), (&r.lower, &w.lower, false)] {
                let Some(reader) = reader_bounds.get(measure).copied() else { continue };
                let writer = writer_bounds.get(measure).copied();
                if writer.is_none_or(|writer| tighter(reader, writer, upper)) {
                    self.report(
                        Finding::BoundTighter,
                        place.keyword(reader.keyword),
                        place,
                        describe_bound(Some(reader)),
                        describe_bound(writer),
                    );
                }
            }
        }
        if writer_types.contains("integer") || writer_types.contains("number") {
            for step in &r.multiple_of {
                let covered = w.multiple_of.iter().any(|other| {
                    let ratio = other / step;
                    ratio >= 1.0 && (ratio - ratio.round()).abs() < 1e-9
                });
                if !covered {
                    let writer = w.multiple_of.iter().map(|s| number(*s)).collect::<Vec<_>>();
                    self.report(
                        Finding::BoundTighter,
                        place.keyword("multipleOf"),
                        place,
                        format!("multipleOf {}", number(*step)),
                        if writer.is_empty() { "no multipleOf".into() } else { format!("multipleOf {}", writer.join(", ")) },
                    );
                }
            }
        }
        if writer_types.contains("string") {
            for format in r.formats.difference(&w.formats) {
                let (finding, writer) = if w.formats.is_empty() {
                    (Finding::FormatAdded, "no format".to_string())
                } else {
                    (Finding::FormatChanged, format!("format {}", list(w.formats.iter().map(String::as_str))))
                };
                self.report(finding, place.keyword("format"), place, format!("format {format}"), writer);
            }
            for pattern in r.patterns.difference(&w.patterns) {
                let (finding, writer) = if w.patterns.is_empty() {
                    (Finding::PatternAdded, "no pattern".to_string())
                } else {
                    (
                        Finding::PatternChanged,
                        format!("pattern {}", w.patterns.iter().map(|p| quoted(p)).collect::<Vec<_>>().join(", ")),
                    )
                };
                self.report(finding, place.keyword("pattern"), place, format!("pattern {}", quoted(pattern)), writer);
            }
        }
        if writer_types.contains("array") && r.unique_items && !w.unique_items {
            self.report(
                Finding::BoundTighter,
                place.keyword("uniqueItems"),
                place,
                "uniqueItems".into(),
                "duplicates allowed".into(),
            );
        }
    }

    fn compare_objects(&mut self, r: &Shape<'a>, w: &Shape<'a>, place: &Place) {
        for name in r.required.difference(&w.required) {
            // A writer that cannot send the property at all never satisfies the reader either;
            // either way old messages lack it.
            self.report(
                Finding::RequiredAdded,
                place.keyword("required"),
                &place.property(name),
                format!("`{name}` required"),
                format!("`{name}` optional"),
            );
        }
        for (name, reader_subs) in &r.properties {
            let here = place.property(name);
            match w.properties.get(name) {
                Some(writer_subs) => self.compare(reader_subs, writer_subs, &here),
                // Undeclared by the writer: see the module's documented assumption.
                None => {
                    if let Some(writer_subs) = w.undeclared(name).filter(|s| !s.is_empty()) {
                        self.compare(reader_subs, &writer_subs, &here);
                    }
                }
            }
        }
        for (name, writer_subs) in &w.properties {
            if r.properties.contains_key(name) {
                continue;
            }
            let here = place.property(name);
            match r.undeclared(name) {
                None => self.report(
                    Finding::PropertyUnknownToReader,
                    here.path.clone(),
                    &here,
                    format!("`{name}` not declared, additionalProperties false"),
                    format!("`{name}` declared"),
                ),
                Some(reader_subs) if !reader_subs.is_empty() => self.compare(&reader_subs, writer_subs, &here),
                Some(_) => {}
            }
        }
        // Properties neither side declares.
        let writer_open = !matches!(w.additional, Additional::Closed) || !w.pattern_properties.is_empty();
        if writer_open {
            let any = place.child("additionalProperties", ".*");
            match (&r.additional, &w.additional) {
                (Additional::Closed, Additional::Open | Additional::Schemas(_)) => self.report(
                    Finding::AdditionalClosed,
                    any.path.clone(),
                    &any,
                    "additionalProperties false".into(),
                    "undeclared properties allowed".into(),
                ),
                (Additional::Schemas(reader_subs), Additional::Schemas(writer_subs)) => {
                    let (reader_subs, writer_subs) = (reader_subs.clone(), writer_subs.clone());
                    self.compare(&reader_subs, &writer_subs, &any)
                }
                (Additional::Schemas(reader_subs), Additional::Open) => {
                    let reader_subs = reader_subs.clone();
                    self.compare(&reader_subs, &[&ANYTHING], &any)
                }
                _ => {}
            }
            for (pattern, reader_subs) in &r.pattern_properties {
                let here = place.child(&format!("patternProperties/{}", pointer_escape(pattern)), ".*");
                match w.pattern_properties.get(pattern) {
                    Some(writer_subs) => self.compare(reader_subs, writer_subs, &here),
                    None => self.report(
                        Finding::Unverifiable,
                        here.path.clone(),
                        &here,
                        format!("patternProperties {pattern}"),
                        "no such pattern".into(),
                    ),
                }
            }
        }
    }

    fn compare_arrays(&mut self, r: &Shape<'a>, w: &Shape<'a>, place: &Place) {
        for (i, reader_subs) in r.prefix_items.iter().enumerate() {
            let here = place.child(&format!("prefixItems/{i}"), &format!("[{i}]"));
            let writer_subs = w.prefix_items.get(i).or(w.items.as_ref()).cloned().unwrap_or_default();
            self.compare(reader_subs, &writer_subs, &here);
        }
        if let Some(reader_subs) = &r.items {
            let here = place.child("items", "[]");
            let writer_subs = w.items.clone().unwrap_or_default();
            self.compare(reader_subs, &writer_subs, &here);
            // Writer tuple positions past the reader's own tuple meet the reader's `items`.
            for writer_subs in w.prefix_items.iter().skip(r.prefix_items.len()) {
                self.compare(reader_subs, writer_subs, &here);
            }
        }
    }

    fn compare_branches(&mut self, r: &Shape<'a>, w: &Shape<'a>, writer: &[&'a Value], place: &Place) {
        for (keyword, reader_branches) in &r.branches {
            let here = place.child(keyword, "");
            // What the writer may send, branch by branch when it has branches of its own.
            let writer_cases: Vec<Vec<&'a Value>> = match w.branches.first() {
                Some((_, writer_branches)) => writer_branches.iter().map(|b| vec![*b]).collect(),
                None => vec![writer.to_vec()],
            };
            for case in writer_cases {
                let accepted = reader_branches.iter().any(|branch| {
                    let mut trial = Walk {
                        reader_root: self.reader_root,
                        writer_root: self.writer_root,
                        direction: self.direction,
                        seen: HashSet::new(),
                        found: Vec::new(),
                    };
                    trial.compare(&[*branch], &case, &here);
                    trial.found.is_empty()
                });
                if !accepted {
                    let shown = case.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" and ");
                    let shown = if shown.chars().count() > 120 {
                        format!("{}…", shown.chars().take(120).collect::<String>())
                    } else {
                        shown
                    };
                    self.report(
                        Finding::BranchMissing,
                        here.path.clone(),
                        &here,
                        format!("no branch accepts {shown}"),
                        "accepted".into(),
                    );
                }
            }
        }
    }
}
