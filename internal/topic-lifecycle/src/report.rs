//! The compatibility check over every schema of two versions, and how it is shown.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::compat::{self, Break};
use crate::settings::{Compatibility, TopicSettings};
use crate::source::{SchemaFile, SchemaKind, SchemaSet};

/// What happened to one schema between the versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unchanged,
    Compatible,
    Incompatible,
    /// New schema: nothing to be compatible with.
    Added,
    /// The schema is gone: its producers' messages would be dead-lettered as unknown.
    Removed,
}

/// The result for one schema.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaReport {
    pub key: String,
    pub kind: &'static str,
    pub file: String,
    /// The mode the new version declares (the old one's for a removed schema).
    pub compatibility: &'static str,
    pub status: Status,
    pub breaks: Vec<Break>,
    /// Things worth knowing that break nothing, e.g. a changed mode.
    pub notes: Vec<String>,
}

/// The result for every schema.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub against: String,
    pub current: String,
    pub compatible: bool,
    pub schemas: Vec<SchemaReport>,
}

/// Topic keys whose removal is intended (retiring a topic is a decision, not an accident).
pub type AllowedRemovals = BTreeSet<String>;

fn parse(file: &SchemaFile) -> Result<Value, String> {
    let text = file.text.as_ref().map_err(Clone::clone)?;
    crate::json::parse_strict(text).map_err(|e| format!("not JSON: {e}"))
}

fn invalid(key: &str, problem: String) -> Break {
    Break {
        direction: compat::Direction::Backward,
        rule: "schema-invalid",
        path: "/".into(),
        field: "$".into(),
        detail: format!("the new version of `{key}` cannot be checked: {problem}"),
        enforced: true,
    }
}

/// Compares every schema of `current` with its version in `previous`.
pub fn check(previous: &SchemaSet, current: &SchemaSet, allowed_removals: &AllowedRemovals) -> Report {
    let mut schemas = Vec::new();
    for file in &current.files {
        schemas.push(check_one(previous.find(file.kind, &file.key), file));
    }
    for old in &previous.files {
        if current.find(old.kind, &old.key).is_some() {
            continue;
        }
        let mode = parse(old).ok().and_then(|v| TopicSettings::from_schema(&v).ok()).unwrap_or_default().compatibility;
        let allowed = allowed_removals.contains(&old.key);
        let mut report = SchemaReport {
            key: old.key.clone(),
            kind: old.kind.as_str(),
            file: old.name.clone(),
            compatibility: mode.as_str(),
            status: Status::Removed,
            breaks: Vec::new(),
            notes: Vec::new(),
        };
        if allowed {
            report.notes.push("removal allowed (--allow-removal)".into());
        } else {
            report.breaks.push(Break {
                direction: compat::Direction::Backward,
                rule: "schema-removed",
                path: "/".into(),
                field: "$".into(),
                detail: match old.kind {
                    SchemaKind::Topic => format!(
                        "the schema of topic `{}` was deleted: its messages would be dead-lettered as unknown_topic; \
                         retire a topic on purpose with --allow-removal {}",
                        old.key, old.key
                    ),
                    SchemaKind::Header => format!("the header schema `{}` was deleted", old.key),
                },
                enforced: true,
            });
        }
        schemas.push(report);
    }
    schemas.sort_by(|a, b| (a.kind == "header", &a.key).cmp(&(b.kind == "header", &b.key)));
    let compatible = schemas.iter().all(|s| s.breaks.iter().all(|b| !b.enforced));
    Report { against: previous.origin.clone(), current: current.origin.clone(), compatible, schemas }
}

fn check_one(old: Option<&SchemaFile>, new: &SchemaFile) -> SchemaReport {
    let mut report = SchemaReport {
        key: new.key.clone(),
        kind: new.kind.as_str(),
        file: new.name.clone(),
        compatibility: Compatibility::default().as_str(),
        status: Status::Compatible,
        breaks: Vec::new(),
        notes: Vec::new(),
    };
    let new_schema = match parse(new) {
        Ok(schema) => schema,
        Err(problem) => {
            report.breaks.push(invalid(&new.key, problem));
            report.status = Status::Incompatible;
            return report;
        }
    };
    let settings = match TopicSettings::from_schema(&new_schema) {
        Ok(settings) => settings,
        Err(problem) => {
            report.breaks.push(invalid(&new.key, problem));
            report.status = Status::Incompatible;
            return report;
        }
    };
    report.compatibility = settings.compatibility.as_str();
    let Some(old) = old else {
        report.status = Status::Added;
        return report;
    };
    let old_schema = match parse(old) {
        Ok(schema) => schema,
        Err(problem) => {
            report.notes.push(format!("the old version cannot be read ({problem}); nothing to compare with"));
            return report;
        }
    };
    if old_schema == new_schema {
        report.status = Status::Unchanged;
        return report;
    }
    if let Ok(before) = TopicSettings::from_schema(&old_schema) {
        if before.compatibility != settings.compatibility {
            report.notes.push(format!("compatibility changed from {} to {}", before.compatibility, settings.compatibility));
        }
    }
    if settings.compatibility == Compatibility::None {
        report.notes.push("not enforced: x-compatibility is \"none\"".into());
    }
    report.breaks = compat::all_breaks(&old_schema, &new_schema, settings.compatibility);
    if report.breaks.iter().any(|b| b.enforced) {
        report.status = Status::Incompatible;
    }
    report
}

/// A line for a terminal: control characters (a property name may hold one) escaped.
fn printable(line: &str) -> String {
    line.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

impl Report {
    /// One block per schema that changed, then a verdict.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "comparing {} with {}", self.current, self.against);
        for schema in &self.schemas {
            let status = match schema.status {
                Status::Unchanged => "unchanged",
                Status::Compatible => "compatible",
                Status::Incompatible => "INCOMPATIBLE",
                Status::Added => "new",
                Status::Removed => "REMOVED",
            };
            let _ = writeln!(out, "{} {} ({}, {}): {status}", schema.kind, schema.key, schema.file, schema.compatibility);
            for b in &schema.breaks {
                let unenforced = if b.enforced { "" } else { " [not enforced]" };
                let line = format!("  {} {} at {} ({}): {}{unenforced}", b.direction, b.rule, b.path, b.field, b.detail);
                let _ = writeln!(out, "{}", printable(&line));
            }
            for note in &schema.notes {
                let _ = writeln!(out, "{}", printable(&format!("  note: {note}")));
            }
        }
        let broken = self.schemas.iter().filter(|s| s.breaks.iter().any(|b| b.enforced)).count();
        if self.compatible {
            let _ = writeln!(out, "compatible: {} schema(s) checked", self.schemas.len());
        } else {
            let _ = writeln!(
                out,
                "incompatible: {broken} schema(s) break compatibility; to ship a breaking change, add a new topic \
                 version (e.g. todo-created.v2) instead (README, \"Changing a schema\")"
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        serde_json::to_value(self).expect("a report serializes")
    }
}
