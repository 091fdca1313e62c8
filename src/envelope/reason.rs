//! Why a message was rejected: a stable reason code, the stage that found it, and a message.
//!
//! Reason codes are part of the service's interface: they travel in dead-letter headers, label
//! metrics and are what producers search for. Never rename one; add new ones.

use std::fmt;

/// The step of processing that rejected a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Headers,
    Payload,
    Schema,
    Routing,
    Handler,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Headers => "headers",
            Stage::Payload => "payload",
            Stage::Schema => "schema",
            Stage::Routing => "routing",
            Stage::Handler => "handler",
        }
    }
}

/// A stable, machine-readable rejection reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    HeadersTooLarge,
    HeaderNameNotUtf8,
    IdentityDuplicate,
    RequestIdDuplicate,
    IdentityMissing,
    IdentityNotBase64,
    IdentityNotJson,
    IdentityMemberMissing,
    IdentityOrgIdMissing,
    IdentityTypeMissing,
    IdentityTypeUnknown,
    IdentitySchemaViolation,
    RequestIdMissing,
    RequestIdInvalid,
    PayloadMissing,
    PayloadTooLarge,
    PayloadNotJson,
    SchemaViolation,
    PayloadTypeMismatch,
    /// Valid, but its enriched stream event would be larger than a Kafka record may be.
    EventTooLarge,
    UnknownTopic,
    /// A handler refused the message; the code is the handler's own (e.g. `todo_id_taken`).
    Handler(&'static str),
    /// The database refused the handler's writes as invalid data (constraint or data exception).
    DatabaseRejected,
    /// The handler panicked on the message.
    HandlerPanicked,
}

impl Reason {
    /// Every reason that does not depend on a handler, for initialising metric label sets.
    pub(crate) const BUILT_IN: &'static [Reason] = &[
        Reason::HeadersTooLarge,
        Reason::HeaderNameNotUtf8,
        Reason::IdentityDuplicate,
        Reason::RequestIdDuplicate,
        Reason::IdentityMissing,
        Reason::IdentityNotBase64,
        Reason::IdentityNotJson,
        Reason::IdentityMemberMissing,
        Reason::IdentityOrgIdMissing,
        Reason::IdentityTypeMissing,
        Reason::IdentityTypeUnknown,
        Reason::IdentitySchemaViolation,
        Reason::RequestIdMissing,
        Reason::RequestIdInvalid,
        Reason::PayloadMissing,
        Reason::PayloadTooLarge,
        Reason::PayloadNotJson,
        Reason::SchemaViolation,
        Reason::PayloadTypeMismatch,
        Reason::EventTooLarge,
        Reason::UnknownTopic,
        Reason::DatabaseRejected,
        Reason::HandlerPanicked,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::HeaderNameNotUtf8 => "header_name_not_utf8",
            Reason::IdentityDuplicate => "identity_duplicate",
            Reason::RequestIdDuplicate => "request_id_duplicate",
            Reason::IdentityMissing => "identity_missing",
            Reason::IdentityNotBase64 => "identity_not_base64",
            Reason::IdentityNotJson => "identity_not_json",
            Reason::IdentityMemberMissing => "identity_member_missing",
            Reason::IdentityOrgIdMissing => "identity_org_id_missing",
            Reason::IdentityTypeMissing => "identity_type_missing",
            Reason::IdentityTypeUnknown => "identity_type_unknown",
            Reason::IdentitySchemaViolation => "identity_schema_violation",
            Reason::RequestIdMissing => "request_id_missing",
            Reason::RequestIdInvalid => "request_id_invalid",
            Reason::PayloadMissing => "payload_missing",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::PayloadNotJson => "payload_not_json",
            Reason::SchemaViolation => "schema_violation",
            Reason::PayloadTypeMismatch => "payload_type_mismatch",
            Reason::EventTooLarge => "event_too_large",
            Reason::UnknownTopic => "unknown_topic",
            Reason::Handler(code) => code,
            Reason::DatabaseRejected => "database_rejected",
            Reason::HandlerPanicked => "handler_panicked",
        }
    }

    pub fn stage(self) -> Stage {
        match self {
            Reason::HeadersTooLarge
            | Reason::HeaderNameNotUtf8
            | Reason::IdentityDuplicate
            | Reason::RequestIdDuplicate
            | Reason::IdentityMissing
            | Reason::IdentityNotBase64
            | Reason::IdentityNotJson
            | Reason::IdentityMemberMissing
            | Reason::IdentityOrgIdMissing
            | Reason::IdentityTypeMissing
            | Reason::IdentityTypeUnknown
            | Reason::IdentitySchemaViolation
            | Reason::RequestIdMissing
            | Reason::RequestIdInvalid => Stage::Headers,
            Reason::PayloadMissing | Reason::PayloadTooLarge | Reason::PayloadNotJson | Reason::EventTooLarge => Stage::Payload,
            Reason::SchemaViolation | Reason::PayloadTypeMismatch => Stage::Schema,
            Reason::UnknownTopic => Stage::Routing,
            Reason::Handler(_) | Reason::DatabaseRejected | Reason::HandlerPanicked => Stage::Handler,
        }
    }
}

/// The longest human-readable rejection message we keep; longer ones are cut at a char boundary.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// What kind of failure put a message in the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The message itself broke a rule (headers, JSON, schema, unknown topic). Never retried.
    InvalidInput,
    /// Its handler refused it for good.
    HandlerRejected,
    /// Its handler kept failing with a retryable error until the attempts ran out.
    HandlerRetriesExhausted,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::InvalidInput => "invalid_input",
            ErrorClass::HandlerRejected => "handler_rejected",
            ErrorClass::HandlerRetriesExhausted => "handler_retries_exhausted",
        }
    }
}

/// A message the service will not process, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    /// Human-readable, bounded to [`MAX_MESSAGE_LEN`] bytes, never containing the raw identity,
    /// NUL or any other control character (they are written as `\u{..}` escapes: PostgreSQL
    /// refuses NUL in text, and a message that echoes input could carry one).
    pub message: String,
    pub class: ErrorClass,
    /// How many times the message was tried (1 unless a handler asked for retries).
    pub attempts: u32,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        let mut message = escape_control(message.into());
        if message.len() > MAX_MESSAGE_LEN {
            let mut cut = MAX_MESSAGE_LEN - 3;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        let class = if reason.stage() == Stage::Handler { ErrorClass::HandlerRejected } else { ErrorClass::InvalidInput };
        Rejection { reason, message, class, attempts: 1 }
    }

    /// A handler's retryable failure that ran out of attempts.
    pub(crate) fn retries_exhausted(self, attempts: u32) -> Self {
        Rejection { class: ErrorClass::HandlerRetriesExhausted, attempts, ..self }
    }

    pub fn stage(&self) -> Stage {
        self.reason.stage()
    }
}

/// `text` with every control character (NUL, newlines, escapes) written as `\u{..}`, so that it
/// can be stored as PostgreSQL text, sent as a header and logged on one line.
pub(crate) fn escape_control(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.reason.code(), self.stage().as_str(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_bounded_on_a_char_boundary() {
        let rejection = Rejection::new(Reason::SchemaViolation, "é".repeat(2000));
        assert!(rejection.message.len() <= MAX_MESSAGE_LEN);
        assert!(rejection.message.ends_with("..."));
    }

    #[test]
    fn control_characters_never_reach_the_message() {
        let rejection = Rejection::new(Reason::SchemaViolation, "property `a\0b` at line\n2");
        assert_eq!(rejection.message, "property `a\\u{0}b` at line\\u{a}2");
        assert!(!rejection.message.chars().any(char::is_control));
        // Escaping happens before the length bound, so a message full of NULs is still bounded.
        let long = Rejection::new(Reason::SchemaViolation, "\0".repeat(5000));
        assert!(long.message.len() <= MAX_MESSAGE_LEN && !long.message.contains('\0'));
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = Reason::BUILT_IN.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::BUILT_IN.len());
    }
}
