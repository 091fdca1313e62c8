//! The events filters, read strictly from the query string.
//!
//! Each parameter is checked on its own, and a bad one is a 400 naming it: a limit outside its
//! range, a UUID that is not one, an unknown severity or event name, text with control
//! characters (PostgreSQL refuses NUL, which would otherwise surface as a server error), a
//! parameter given twice or one the API does not know (a typo would otherwise silently widen the
//! result).

use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;
use uuid::Uuid;

use super::ApiError;
use crate::events::{EventDefinition, Severity};

/// The most events one page holds.
pub const MAX_LIMIT: u32 = 1000;
/// Events per page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;
/// The deepest page: beyond it, narrow the filters (`since`, `until`) instead.
pub const MAX_OFFSET: u64 = 1_000_000;
/// The longest `message` substring.
pub const MAX_MESSAGE_FILTER: usize = 256;
/// The longest query string read.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;

/// Newest first (`desc`, the default) or oldest first (`asc`), by event time then id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

/// What a request asks for; every filter is combined with AND, within the caller's org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub cluster_id: Option<Uuid>,
    pub host_id: Option<Uuid>,
    pub infra_env_id: Option<Uuid>,
    pub name: Option<&'static str>,
    pub severities: Option<Vec<Severity>>,
    /// Case-insensitive substring of the message.
    pub message: Option<String>,
    /// Events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events before this time.
    pub until: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u64,
    pub order: Order,
}

impl Default for EventFilter {
    fn default() -> Self {
        EventFilter {
            cluster_id: None,
            host_id: None,
            infra_env_id: None,
            name: None,
            severities: None,
            message: None,
            since: None,
            until: None,
            limit: DEFAULT_LIMIT,
            offset: 0,
            order: Order::Desc,
        }
    }
}

/// The parameters [`EventFilter::parse`] knows.
const PARAMETERS: &[&str] =
    &["cluster_id", "host_id", "infra_env_id", "name", "severities", "message", "since", "until", "limit", "offset", "order"];

impl EventFilter {
    /// Reads a raw query string (`a=1&b=2`, percent-encoded, `+` for space).
    pub fn parse(query: &str) -> Result<EventFilter, ApiError> {
        if query.len() > MAX_QUERY_BYTES {
            return Err(ApiError::bad_parameter("query", format!("the query string is over {MAX_QUERY_BYTES} bytes")));
        }
        let mut filter = EventFilter::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode("query", raw_name)?;
            let Some(&parameter) = PARAMETERS.iter().find(|p| **p == name) else {
                let shown: String = name.chars().take(64).flat_map(char::escape_default).collect();
                return Err(ApiError::bad_parameter(
                    "query",
                    format!("unknown parameter `{shown}` (known: {})", PARAMETERS.join(", ")),
                ));
            };
            if seen.contains(&parameter) {
                return Err(ApiError::bad_parameter(parameter, "given more than once"));
            }
            seen.push(parameter);
            let value = decode(parameter, raw_value)?;
            filter.set(parameter, &value)?;
        }
        // `until` before `since` is an empty range, answered with no events rather than refused:
        // each is a valid time, and a script that narrows a window should not break on it.
        Ok(filter)
    }

    fn set(&mut self, parameter: &'static str, value: &str) -> Result<(), ApiError> {
        let bad = |message: String| ApiError::bad_parameter(parameter, message);
        match parameter {
            "cluster_id" => self.cluster_id = Some(uuid(parameter, value)?),
            "host_id" => self.host_id = Some(uuid(parameter, value)?),
            "infra_env_id" => self.infra_env_id = Some(uuid(parameter, value)?),
            "name" => {
                let event = EventDefinition::find(value).ok_or_else(|| bad("no event of that name in the catalog".into()))?;
                self.name = Some(event.name);
            }
            "severities" => {
                let severities = value
                    .split(',')
                    .map(|s| {
                        Severity::ALL
                            .into_iter()
                            .find(|known| known.as_str() == s.trim())
                            .ok_or_else(|| bad(format!("`{}` is not a severity (info, warning, error, critical)", shown(s))))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.severities = Some(severities);
            }
            "message" => {
                if value.chars().count() > MAX_MESSAGE_FILTER {
                    return Err(bad(format!("is longer than {MAX_MESSAGE_FILTER} characters")));
                }
                self.message = Some(value.to_owned());
            }
            "since" => self.since = Some(time(parameter, value)?),
            "until" => self.until = Some(time(parameter, value)?),
            "limit" => {
                self.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                    .ok_or_else(|| bad(format!("must be a whole number from 1 to {MAX_LIMIT}")))?;
            }
            "offset" => {
                self.offset = value
                    .parse()
                    .ok()
                    .filter(|offset| *offset <= MAX_OFFSET)
                    .ok_or_else(|| bad(format!("must be a whole number from 0 to {MAX_OFFSET}")))?;
            }
            "order" => {
                self.order = match value {
                    "asc" => Order::Asc,
                    "desc" => Order::Desc,
                    _ => return Err(bad("must be `asc` or `desc`".into())),
                }
            }
            _ => unreachable!("every known parameter is handled"),
        }
        Ok(())
    }
}

/// Percent-decoded text without control characters.
fn decode(parameter: &'static str, raw: &str) -> Result<String, ApiError> {
    let spaced = raw.replace('+', " ");
    let text = percent_decode_str(&spaced)
        .decode_utf8()
        .map_err(|_| ApiError::bad_parameter(parameter, "is not UTF-8 once percent-decoded"))?;
    if text.chars().any(char::is_control) {
        return Err(ApiError::bad_parameter(parameter, "contains a control character"));
    }
    Ok(text.into_owned())
}

/// At most 64 characters of client input, escaped, for an error message.
fn shown(text: &str) -> String {
    text.chars().take(64).flat_map(char::escape_default).collect()
}

fn uuid(parameter: &'static str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|_| ApiError::bad_parameter(parameter, format!("`{}` is not a UUID", shown(value))))
}

fn time(parameter: &'static str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        ApiError::bad_parameter(parameter, format!("`{}` is not an RFC 3339 time such as 2026-11-23T10:00:00Z", shown(value)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter_of(query: &str) -> &'static str {
        EventFilter::parse(query).unwrap_err().parameter.unwrap()
    }

    #[test]
    fn every_filter_is_read() {
        let filter = EventFilter::parse(
            "cluster_id=0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b&name=host_failed&severities=error,critical\
             &message=disk+full%21&since=2026-11-23T10:00:00Z&until=2026-11-24T00:00:00%2B01:00&limit=5&offset=10&order=asc",
        )
        .unwrap();
        assert_eq!(filter.cluster_id, Uuid::parse_str("0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b").ok());
        assert_eq!(filter.name, Some("host_failed"));
        assert_eq!(filter.severities, Some(vec![Severity::Error, Severity::Critical]));
        assert_eq!(filter.message.as_deref(), Some("disk full!"));
        assert_eq!(filter.until.map(|t| t.to_rfc3339()), Some("2026-11-23T23:00:00+00:00".into()));
        assert_eq!((filter.limit, filter.offset, filter.order), (5, 10, Order::Asc));
        assert_eq!(EventFilter::parse("").unwrap(), EventFilter::default());
    }

    #[test]
    fn hostile_parameters_are_refused_by_name() {
        let cases = [
            ("limit=0", "limit"),
            ("limit=-1", "limit"),
            ("limit=1001", "limit"),
            ("limit=99999999999999999999999", "limit"),
            ("offset=-5", "offset"),
            ("offset=1000001", "offset"),
            ("cluster_id=1%27%20OR%20%271%27=%271", "cluster_id"),
            ("host_id=", "host_id"),
            ("severities=info,fatal", "severities"),
            ("severities=", "severities"),
            ("name=host_failed%27;DROP%20TABLE%20events;--", "name"),
            ("message=a%00b", "message"),
            ("message=%ff", "message"),
            ("since=yesterday", "since"),
            ("order=sideways", "order"),
            ("limit=5&limit=6", "limit"),
            ("colour=red", "query"),
        ];
        for (query, parameter) in cases {
            assert_eq!(parameter_of(query), parameter, "{query}");
        }
        assert_eq!(parameter_of(&format!("message={}", "x".repeat(MAX_MESSAGE_FILTER + 1))), "message");
        assert_eq!(parameter_of(&format!("message={}", "x".repeat(MAX_QUERY_BYTES))), "query");
        // SQL metacharacters in a substring are just text.
        assert_eq!(EventFilter::parse("message=%25_%5C%27").unwrap().message.as_deref(), Some("%_\\'"));
    }
}
