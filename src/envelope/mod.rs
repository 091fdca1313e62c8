//! Turns a raw Kafka message into a checked one, or a rejection with a reason code.
//!
//! This step is pure (no I/O), so every rule can be tested exhaustively without a broker. The
//! order is fixed: topic known → identity header → request id → payload is JSON → payload matches
//! the topic's schema. The payload is parsed once; the same JSON value is validated, handed to
//! the router for typing, and re-published in the stream envelope.

pub mod identity;
pub mod reason;
pub mod validate;

use std::sync::Arc;

use serde_json::Value;

pub use identity::{Identity, IdentityType};
pub use reason::{ErrorClass, Reason, Rejection, Stage};
pub use validate::Validators;

use crate::message::{HeaderLimits, HeaderProblem, RawMessage};
use crate::topics::TopicSchema;

pub const IDENTITY_HEADER: &str = "x-rh-identity";
pub const REQUEST_ID_HEADER: &str = "x-rh-insights-request-id";
/// Request ids longer than this are rejected rather than stored and logged.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 256;

/// A message that passed every check before its handler.
#[derive(Debug, Clone)]
pub struct Checked {
    pub schema: &'static TopicSchema,
    pub payload: Value,
    pub identity: Arc<Identity>,
    pub request_id: String,
}

/// What opening a message found: a checked message, or a rejection.
#[derive(Debug)]
pub struct Opened {
    pub result: Result<Checked, Rejection>,
    /// For a rejection, the request id where it was readable, so that even a rejection can be
    /// logged with it. A checked message carries its own ([`Checked::request_id`]), moved there
    /// rather than copied; this is then `None`.
    pub request_id: Option<String>,
}

/// The request id `message` carries, if it is acceptable (see [`check_request_id`]).
pub fn request_id(message: &RawMessage) -> Option<String> {
    check_request_id(header_values(message, REQUEST_ID_HEADER)).ok()
}

/// Every value of the header `name` (compared ignoring case); a header without a value counts
/// as an empty one.
fn header_values<'a>(message: &'a RawMessage, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    message.headers.iter().filter(move |h| h.key.eq_ignore_ascii_case(name)).map(|h| h.value.as_deref().unwrap_or_default())
}

/// The request id among `values`, every `x-rh-insights-request-id` header of a Kafka message or
/// an HTTP request: exactly one, UTF-8, not empty once trimmed, at most [`MAX_REQUEST_ID_LEN`]
/// bytes, no control character. One rule for both, so a request id the API accepts is one the
/// consumer accepts.
pub fn check_request_id<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<String, Rejection> {
    // Read as they come (no list is built: this runs for every message).
    let mut values = values.into_iter();
    let raw = match (values.next(), values.count()) {
        (None, _) => {
            return Err(Rejection::new(Reason::RequestIdMissing, format!("the {REQUEST_ID_HEADER} header is missing or empty")))
        }
        (Some(raw), 0) => raw,
        (Some(_), more) => {
            return Err(Rejection::new(
                Reason::RequestIdDuplicate,
                format!("the {REQUEST_ID_HEADER} header is given {} times (names compared ignoring case)", more + 1),
            ))
        }
    };
    match std::str::from_utf8(raw).map(str::trim) {
        Ok("") => Err(Rejection::new(Reason::RequestIdMissing, format!("the {REQUEST_ID_HEADER} header is missing or empty"))),
        Err(_) => Err(Rejection::new(Reason::RequestIdInvalid, format!("the {REQUEST_ID_HEADER} header is not UTF-8"))),
        Ok(text) if text.len() > MAX_REQUEST_ID_LEN => Err(Rejection::new(
            Reason::RequestIdInvalid,
            format!("the {REQUEST_ID_HEADER} header has {} bytes, over the limit of {MAX_REQUEST_ID_LEN}", text.len()),
        )),
        Ok(text) if text.chars().any(char::is_control) => {
            Err(Rejection::new(Reason::RequestIdInvalid, format!("the {REQUEST_ID_HEADER} header contains a control character")))
        }
        Ok(text) => Ok(text.to_owned()),
    }
}

/// The identity among `values`, every `x-rh-identity` header of a Kafka message or an HTTP
/// request: exactly one, passing [`identity::check_identity`].
pub fn check_identity_headers(values: &[&[u8]], schema: &jsonschema::Validator) -> Result<Identity, Rejection> {
    if values.len() > 1 {
        return Err(identity_duplicate(values.len()));
    }
    identity::check_identity(values.first().copied(), schema)
}

fn identity_duplicate(count: usize) -> Rejection {
    Rejection::new(
        Reason::IdentityDuplicate,
        format!("the {IDENTITY_HEADER} header is given {count} times (names compared ignoring case)"),
    )
}

/// A problem the consumer found in the record's headers, as a rejection.
fn header_rejection(problem: HeaderProblem, limits: HeaderLimits) -> Rejection {
    match problem {
        HeaderProblem::TooMany { count } => Rejection::new(
            Reason::HeadersTooLarge,
            format!("the record has {count} headers, over the limit of {}; none were read", limits.max_count),
        ),
        HeaderProblem::TooLarge { bytes } => Rejection::new(
            Reason::HeadersTooLarge,
            format!("the record's headers hold {bytes} bytes, over the limit of {}; none were read", limits.max_bytes),
        ),
        HeaderProblem::NameNotUtf8 { index } => Rejection::new(
            Reason::HeaderNameNotUtf8,
            format!("header #{index} has a name that is not UTF-8 (kept with U+FFFD in the dead-letter copy)"),
        ),
    }
}

/// Runs every check on `message`.
pub fn open(message: &RawMessage, validators: &Validators) -> Opened {
    let mut request_id = request_id(message);
    let result = check(message, validators, &mut request_id);
    Opened { result, request_id }
}

/// Checks `message`; when it passes, its request id moves out of `request_id` into [`Checked`].
fn check(message: &RawMessage, validators: &Validators, request_id: &mut Option<String>) -> Result<Checked, Rejection> {
    let topic = validators
        .for_topic(&message.topic)
        .ok_or_else(|| Rejection::new(Reason::UnknownTopic, format!("topic {} has no schema in api/event/", message.topic)))?;
    if let Some(problem) = message.header_problem {
        return Err(header_rejection(problem, HeaderLimits::SERVICE));
    }
    let identities = message.header_count(IDENTITY_HEADER);
    if identities > 1 {
        return Err(identity_duplicate(identities));
    }
    let identity = validators.identities.check(message.header(IDENTITY_HEADER), &validators.identity)?;
    if request_id.is_none() {
        return Err(check_request_id(header_values(message, REQUEST_ID_HEADER)).err().unwrap_or_else(|| {
            Rejection::new(Reason::RequestIdInvalid, format!("the {REQUEST_ID_HEADER} header was not accepted"))
        }));
    }
    let bytes = message
        .payload
        .as_deref()
        .ok_or_else(|| Rejection::new(Reason::PayloadMissing, format!("topic {}: the message has no value", message.topic)))?;
    if bytes.len() > validators.max_payload_bytes {
        return Err(Rejection::new(
            Reason::PayloadTooLarge,
            format!(
                "topic {}: the value has {} bytes, over the limit of {} (MAX_MESSAGE_BYTES)",
                message.topic,
                bytes.len(),
                validators.max_payload_bytes
            ),
        ));
    }
    let payload: Value = serde_json::from_slice(bytes)
        .map_err(|e| Rejection::new(Reason::PayloadNotJson, format!("topic {}: the value is not JSON: {e}", message.topic)))?;
    validators.check_payload(&message.topic, &topic.validator, &payload)?;
    let request_id = request_id.take().expect("a message without a request id was refused above");
    Ok(Checked { schema: topic.schema, payload, identity, request_id })
}

#[cfg(test)]
mod tests;
