//! What a schema declares about its topic beyond the payload: the compatibility mode its changes
//! are held to, and the partitions and retention its Kafka topic is declared with.
//!
//! These live in the schema, as root keywords starting with `x-`, because the schema file is the
//! one thing a platform team adds for a topic: the build, the compatibility check and the
//! generated deploy files all read them from there, and JSON Schema validators ignore them.

use std::fmt;

use serde_json::Value;

/// `x-compatibility`: which direction of change is checked, as a schema registry does per subject.
pub const COMPATIBILITY: &str = "x-compatibility";
/// `x-partitions`: partitions of the topic in the generated declarations.
pub const PARTITIONS: &str = "x-partitions";
/// `x-retention-ms`: `retention.ms` of the topic in the generated declarations (-1: forever).
pub const RETENTION_MS: &str = "x-retention-ms";
/// Every root keyword this module reads; any other `x-` keyword is a typo.
pub const KEYWORDS: &[&str] = &[COMPATIBILITY, PARTITIONS, RETENTION_MS];

pub const DEFAULT_PARTITIONS: u32 = 3;
/// Seven days, Kafka's own default.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// More partitions than this is a typo rather than a plan.
pub const MAX_PARTITIONS: u32 = 1000;

/// Which changes a topic's schema must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compatibility {
    /// New consumers read old messages: what a service that consumes its own topics needs first,
    /// because a backlog written under the old schema is read after the deploy.
    #[default]
    Backward,
    /// Old consumers read new messages: producers may switch before every consumer has.
    Forward,
    /// Both.
    Full,
    /// Not checked (a topic still in development).
    None,
}

impl Compatibility {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "backward" => Self::Backward,
            "forward" => Self::Forward,
            "full" => Self::Full,
            "none" => Self::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "backward",
            Self::Forward => "forward",
            Self::Full => "full",
            Self::None => "none",
        }
    }

    pub fn checks_backward(self) -> bool {
        matches!(self, Self::Backward | Self::Full)
    }

    pub fn checks_forward(self) -> bool {
        matches!(self, Self::Forward | Self::Full)
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The settings of one schema, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    pub compatibility: Compatibility,
    pub partitions: u32,
    pub retention_ms: i64,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self { compatibility: Compatibility::default(), partitions: DEFAULT_PARTITIONS, retention_ms: DEFAULT_RETENTION_MS }
    }
}

impl TopicSettings {
    /// Reads the `x-` keywords at the root of `schema`. The error names the keyword and the rule.
    pub fn from_schema(schema: &Value) -> Result<Self, String> {
        let mut settings = Self::default();
        let Some(root) = schema.as_object() else { return Ok(settings) };
        for (keyword, value) in root.iter().filter(|(k, _)| k.starts_with("x-")) {
            match keyword.as_str() {
                COMPATIBILITY => {
                    settings.compatibility = value.as_str().and_then(Compatibility::parse).ok_or_else(|| {
                        format!("`{COMPATIBILITY}` must be one of \"backward\", \"forward\", \"full\", \"none\", not {value}")
                    })?
                }
                PARTITIONS => {
                    settings.partitions = value
                        .as_u64()
                        .filter(|n| (1..=u64::from(MAX_PARTITIONS)).contains(n))
                        .map(|n| n as u32)
                        .ok_or_else(|| format!("`{PARTITIONS}` must be an integer from 1 to {MAX_PARTITIONS}, not {value}"))?
                }
                RETENTION_MS => {
                    settings.retention_ms = value.as_i64().filter(|ms| *ms == -1 || *ms >= 60_000).ok_or_else(|| {
                        format!("`{RETENTION_MS}` must be -1 (forever) or at least 60000 (a minute), not {value}")
                    })?
                }
                unknown => {
                    return Err(format!("unknown keyword `{unknown}`: the keywords of a topic are {}", KEYWORDS.join(", ")))
                }
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_declared() {
        assert_eq!(TopicSettings::from_schema(&json!({"type": "object"})).unwrap(), TopicSettings::default());
        assert_eq!(TopicSettings::from_schema(&json!(true)).unwrap(), TopicSettings::default());
    }

    #[test]
    fn declared_values_are_read() {
        let settings =
            TopicSettings::from_schema(&json!({"x-compatibility": "full", "x-partitions": 12, "x-retention-ms": -1})).unwrap();
        assert_eq!(settings, TopicSettings { compatibility: Compatibility::Full, partitions: 12, retention_ms: -1 });
    }

    #[test]
    fn bad_values_name_the_keyword_and_the_rule() {
        for (schema, expected) in [
            (json!({"x-compatibility": "backwards"}), "`x-compatibility` must be one of"),
            (json!({"x-compatibility": 1}), "`x-compatibility` must be one of"),
            (json!({"x-partitions": 0}), "`x-partitions` must be an integer from 1 to 1000, not 0"),
            (json!({"x-partitions": 3.5}), "`x-partitions` must be an integer"),
            (json!({"x-partitions": "3"}), "`x-partitions` must be an integer"),
            (json!({"x-partitions": 1_000_000_000_000u64}), "`x-partitions` must be an integer"),
            (json!({"x-retention-ms": 5}), "`x-retention-ms` must be -1 (forever) or at least 60000"),
            (json!({"x-partition": 3}), "unknown keyword `x-partition`"),
        ] {
            let error = TopicSettings::from_schema(&schema).unwrap_err();
            assert!(error.contains(expected), "{schema}: {error}");
        }
    }
}
