//! The event catalog: `api/events.yaml` turned into one Rust type per event.
//!
//! Events are what people read to understand how a cluster, a host or an infra-env reached its
//! state. Declaring them in one file, and generating a type per event from it, is what keeps them
//! constant for the readers: a handler emits `HostStatusUpdated { .. }`, so an event that is not
//! in the catalog, or one without a required property, does not compile, and the message a reader
//! sees is the catalog's template, not whatever a call site formatted. The checks here turn a
//! mistake in the catalog into one build line naming the file, the event and the problem.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::CodegenError;

/// Severities, mildest first; the guidelines for each are in README.md.
pub const SEVERITIES: &[&str] = &["info", "warning", "error", "critical"];

/// Event types and the id properties each requires.
pub const EVENT_TYPES: &[(&str, &[&str])] =
    &[("cluster", &["cluster_id"]), ("host", &["host_id", "infra_env_id"]), ("infra_env", &["infra_env_id"])];

/// The ids that tie an event to what it is about; typed `uuid` wherever they are declared.
pub const ENTITY_IDS: &[&str] = &["cluster_id", "host_id", "infra_env_id"];

/// Property types and the Rust type each becomes.
const PROPERTY_TYPES: &[(&str, &str)] = &[
    ("string", "::std::string::String"),
    ("integer", "i64"),
    ("boolean", "bool"),
    ("uuid", "::uuid::Uuid"),
    ("date-time", "::chrono::DateTime<::chrono::Utc>"),
];

/// Last words of an event name that are past tense without ending in `-ed`.
const IRREGULAR_PAST: &[&str] = &[
    "begun", "broken", "built", "chosen", "cut", "done", "found", "frozen", "given", "gone", "held", "hidden", "hit", "kept",
    "known", "left", "lost", "made", "met", "put", "quit", "read", "reset", "run", "seen", "sent", "set", "shown", "shut",
    "split", "taken", "thrown", "undone", "woken", "won", "written",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    events: Vec<EventEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventEntry {
    name: String,
    message: String,
    event_type: String,
    severity: String,
    #[serde(default)]
    properties: serde_yaml_ng::Mapping,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PropertySpec {
    Short(String),
    Long(LongProperty),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongProperty {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    optional: bool,
}

/// One property of an event, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub name: String,
    /// One of the catalog's property types (`string`, `uuid`, ...).
    pub kind: String,
    pub optional: bool,
}

/// A piece of a message template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Placeholder(String),
}

/// One event of the catalog, checked.
#[derive(Debug, Clone)]
pub struct CatalogEvent {
    pub name: String,
    /// `HostStatusUpdated` for `host_status_updated`.
    pub type_name: String,
    pub message: String,
    pub pieces: Vec<Piece>,
    pub event_type: String,
    pub severity: String,
    pub properties: Vec<Property>,
}

/// Reads and checks the catalog at `path`. The first problem found is the error.
pub fn read_catalog(path: &Path) -> Result<Vec<CatalogEvent>, CodegenError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CodegenError { file: path.to_path_buf(), problem: format!("cannot read: {e}") })?;
    parse_catalog(&text).map_err(|problem| CodegenError { file: path.to_path_buf(), problem })
}

/// Checks catalog text; the error names the event (when there is one) and the problem.
pub fn parse_catalog(text: &str) -> Result<Vec<CatalogEvent>, String> {
    let file: CatalogFile = serde_yaml_ng::from_str(text).map_err(|e| format!("not a valid catalog: {e}"))?;
    if file.events.is_empty() {
        return Err("the catalog declares no events".into());
    }
    let mut names = BTreeSet::new();
    let mut events = Vec::with_capacity(file.events.len());
    for entry in file.events {
        let event = check_event(entry)?;
        if !names.insert(event.name.clone()) {
            return Err(format!("event `{}`: duplicate name: event names are unique", event.name));
        }
        events.push(event);
    }
    Ok(events)
}

fn check_event(entry: EventEntry) -> Result<CatalogEvent, String> {
    let name = entry.name;
    let err = |problem: String| format!("event `{name}`: {problem}");
    check_name(&name).map_err(err)?;
    if !SEVERITIES.contains(&entry.severity.as_str()) {
        return Err(err(format!("unknown severity `{}` (one of: {})", entry.severity, SEVERITIES.join(", "))));
    }
    let Some((_, required_ids)) = EVENT_TYPES.iter().find(|(t, _)| *t == entry.event_type) else {
        let types: Vec<&str> = EVENT_TYPES.iter().map(|(t, _)| *t).collect();
        return Err(err(format!("unknown event_type `{}` (one of: {})", entry.event_type, types.join(", "))));
    };
    let mut properties: Vec<Property> = Vec::with_capacity(entry.properties.len());
    for (key, spec) in entry.properties {
        let Some(property) = key.as_str() else {
            return Err(err(format!("property name `{key:?}` is not text")));
        };
        if !is_snake_case(property) {
            return Err(err(format!("property `{property}`: names are snake case (`host_name`)")));
        }
        if properties.iter().any(|p| p.name == property) {
            return Err(err(format!("property `{property}` is declared twice")));
        }
        let spec: PropertySpec = serde_yaml_ng::from_value(spec).map_err(|_| {
            err(format!("property `{property}`: write a type (`{property}: string`) or `{{type: string, optional: true}}`"))
        })?;
        let (kind, optional) = match spec {
            PropertySpec::Short(kind) => (kind, false),
            PropertySpec::Long(long) => (long.kind, long.optional),
        };
        if !PROPERTY_TYPES.iter().any(|(t, _)| *t == kind) {
            let types: Vec<&str> = PROPERTY_TYPES.iter().map(|(t, _)| *t).collect();
            return Err(err(format!("property `{property}`: unknown type `{kind}` (one of: {})", types.join(", "))));
        }
        if ENTITY_IDS.contains(&property) && kind != "uuid" {
            return Err(err(format!("property `{property}` identifies an entity and must have type `uuid`, not `{kind}`")));
        }
        properties.push(Property { name: property.to_owned(), kind, optional });
    }
    for id in *required_ids {
        match properties.iter().find(|p| p.name == *id) {
            None => return Err(err(format!("a `{}` event requires the property `{id}` (`{id}: uuid`)", entry.event_type))),
            Some(p) if p.optional => return Err(err(format!("`{id}` cannot be optional in a `{}` event", entry.event_type))),
            Some(_) => {}
        }
    }
    let pieces = parse_template(&entry.message).map_err(err)?;
    for piece in &pieces {
        if let Piece::Placeholder(placeholder) = piece {
            match properties.iter().find(|p| p.name == *placeholder) {
                None => return Err(err(format!("unknown placeholder `{{{placeholder}}}`: no property of that name"))),
                Some(p) if p.optional => {
                    return Err(err(format!(
                        "placeholder `{{{placeholder}}}` names an optional property: a message must render in full"
                    )))
                }
                Some(_) => {}
            }
        }
    }
    Ok(CatalogEvent {
        type_name: crate::pascal_case(&name),
        name,
        message: entry.message,
        pieces,
        event_type: entry.event_type,
        severity: entry.severity,
        properties,
    })
}

fn is_snake_case(name: &str) -> bool {
    let mut words = name.split('_');
    words.next().is_some_and(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
        && name.split('_').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// `<context>_<past_tense>`: snake case, at least two words, the last one past tense.
fn check_name(name: &str) -> Result<(), String> {
    let shape = "names are `<context>_<past_tense>` in snake case, e.g. `host_status_updated`";
    if !is_snake_case(name) || !name.contains('_') {
        return Err(format!("bad name shape: {shape}"));
    }
    let last = name.rsplit('_').next().unwrap_or_default();
    if !(last.ends_with("ed") || IRREGULAR_PAST.contains(&last)) {
        return Err(format!("bad name shape: `{last}` is not past tense; {shape}"));
    }
    Ok(())
}

/// Splits `"Host {host_name}: {{literal}}"` into text and placeholders; `{{` and `}}` are literal
/// braces.
pub fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("message: `{{{name}` is not closed (write `{{{{` for a literal brace)")),
                    }
                }
                if !is_snake_case(&name) {
                    return Err(format!("message: `{{{name}}}` is not a placeholder (write `{{{{` for a literal brace)"));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Placeholder(name));
            }
            '}' => return Err("message: a lone `}` (write `}}` for a literal brace)".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The Rust source of the catalog module, ready to be `include!`d by `src/events/catalog.rs`.
pub fn catalog_source(events: &[CatalogEvent], file: &str, digest: &str) -> String {
    let mut out = format!("// @generated by event-codegen from {file}. Do not edit.\n\n");
    let _ = writeln!(
        out,
        "/// `sha256:…` of `{file}`: the catalog's version in streamed events.\npub const CATALOG_DIGEST: &str = {digest:?};\n"
    );
    for event in events {
        write_event(&mut out, event);
    }
    out.push_str("/// Every event of the catalog, in the file's order.\n");
    out.push_str("pub static CATALOG: &[crate::events::EventDefinition] = &[\n");
    for event in events {
        let properties: Vec<String> = event
            .properties
            .iter()
            .map(|p| {
                format!(
                    "crate::events::PropertyDefinition {{ name: {:?}, kind: {:?}, optional: {} }}",
                    p.name, p.kind, p.optional
                )
            })
            .collect();
        let template: Vec<String> = event
            .pieces
            .iter()
            .map(|piece| match piece {
                Piece::Text(text) => format!("crate::events::TemplatePiece::Text({text:?})"),
                Piece::Placeholder(name) => format!("crate::events::TemplatePiece::Placeholder({name:?})"),
            })
            .collect();
        let _ = writeln!(
            out,
            "    crate::events::EventDefinition {{ name: {name:?}, severity: crate::events::Severity::{severity}, \
             event_type: crate::events::EventType::{event_type}, message: {message:?}, template: &[{template}], \
             properties: &[{properties}] }},",
            name = event.name,
            severity = crate::pascal_case(&event.severity),
            event_type = crate::pascal_case(&event.event_type),
            message = event.message,
            template = template.join(", "),
            properties = properties.join(", "),
        );
    }
    out.push_str("];\n");
    out
}

fn rust_type(kind: &str) -> &'static str {
    PROPERTY_TYPES.iter().find(|(t, _)| *t == kind).map(|(_, rust)| *rust).unwrap_or("()")
}

fn write_event(out: &mut String, event: &CatalogEvent) {
    let _ = writeln!(out, "/// `{}` ({}, {} event): \"{}\"", event.name, event.severity, event.event_type, event.message);
    out.push_str("#[derive(Debug, Clone, PartialEq, ::serde::Serialize)]\npub struct ");
    out.push_str(&event.type_name);
    out.push_str(" {\n");
    for p in &event.properties {
        if p.optional {
            let _ = writeln!(
                out,
                "    #[serde(skip_serializing_if = \"Option::is_none\")]\n    pub {}: Option<{}>,",
                p.name,
                rust_type(&p.kind)
            );
        } else {
            let _ = writeln!(out, "    pub {}: {},", p.name, rust_type(&p.kind));
        }
    }
    out.push_str("}\n\n");

    let entity = |id: &str| match event.properties.iter().find(|p| p.name == id) {
        Some(p) if p.optional => format!("self.{id}"),
        Some(_) => format!("Some(self.{id})"),
        None => "None".into(),
    };
    let mut format_string = String::new();
    let mut arguments = Vec::new();
    for piece in &event.pieces {
        match piece {
            Piece::Text(text) => format_string.push_str(&text.replace('{', "{{").replace('}', "}}")),
            Piece::Placeholder(name) => {
                format_string.push_str("{}");
                let kind = event.properties.iter().find(|p| p.name == *name).map(|p| p.kind.as_str());
                arguments.push(match kind {
                    Some("date-time") => format!("self.{name}.to_rfc3339_opts(::chrono::SecondsFormat::AutoSi, true)"),
                    _ => format!("self.{name}"),
                });
            }
        }
    }
    let _ = write!(
        out,
        "impl crate::events::CatalogEvent for {type_name} {{\n\
         \x20   const NAME: &'static str = {name:?};\n\
         \x20   const SEVERITY: crate::events::Severity = crate::events::Severity::{severity};\n\
         \x20   const EVENT_TYPE: crate::events::EventType = crate::events::EventType::{event_type};\n\n\
         \x20   fn entity(&self) -> crate::events::Entity {{\n\
         \x20       crate::events::Entity {{ cluster_id: {cluster}, host_id: {host}, infra_env_id: {infra_env} }}\n\
         \x20   }}\n\n\
         \x20   fn message(&self) -> String {{\n\
         \x20       format!({format_string:?}{comma}{arguments})\n\
         \x20   }}\n\
         }}\n\n",
        type_name = event.type_name,
        name = event.name,
        severity = crate::pascal_case(&event.severity),
        event_type = crate::pascal_case(&event.event_type),
        cluster = entity("cluster_id"),
        host = entity("host_id"),
        infra_env = entity("infra_env_id"),
        comma = if arguments.is_empty() { "" } else { ", " },
        arguments = arguments.join(", "),
    );
}
