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
    IdentityMissing,
    IdentityNotBase64,
    IdentityNotJson,
    IdentityMemberMissing,
    IdentityOrgIdMissing,
    IdentityTypeMissing,
    IdentityTypeUnknown,
    IdentitySchemaViolation,
    RequestIdMissing,
    PayloadMissing,
    PayloadTooLarge,
    PayloadNotJson,
    SchemaViolation,
    PayloadTypeMismatch,
    UnknownTopic,
    /// A handler refused the message; the code is the handler's own (e.g. `todo_id_taken`).
    Handler(&'static str),
    /// The database refused the handler's writes as invalid data (constraint or data exception).
    DatabaseRejected,
}

impl Reason {
    /// Every reason that does not depend on a handler, for initialising metric label sets.
    pub const BUILT_IN: &'static [Reason] = &[
        Reason::IdentityMissing,
        Reason::IdentityNotBase64,
        Reason::IdentityNotJson,
        Reason::IdentityMemberMissing,
        Reason::IdentityOrgIdMissing,
        Reason::IdentityTypeMissing,
        Reason::IdentityTypeUnknown,
        Reason::IdentitySchemaViolation,
        Reason::RequestIdMissing,
        Reason::PayloadMissing,
        Reason::PayloadTooLarge,
        Reason::PayloadNotJson,
        Reason::SchemaViolation,
        Reason::PayloadTypeMismatch,
        Reason::UnknownTopic,
        Reason::DatabaseRejected,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::IdentityMissing => "identity_missing",
            Reason::IdentityNotBase64 => "identity_not_base64",
            Reason::IdentityNotJson => "identity_not_json",
            Reason::IdentityMemberMissing => "identity_member_missing",
            Reason::IdentityOrgIdMissing => "identity_org_id_missing",
            Reason::IdentityTypeMissing => "identity_type_missing",
            Reason::IdentityTypeUnknown => "identity_type_unknown",
            Reason::IdentitySchemaViolation => "identity_schema_violation",
            Reason::RequestIdMissing => "request_id_missing",
            Reason::PayloadMissing => "payload_missing",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::PayloadNotJson => "payload_not_json",
            Reason::SchemaViolation => "schema_violation",
            Reason::PayloadTypeMismatch => "payload_type_mismatch",
            Reason::UnknownTopic => "unknown_topic",
            Reason::Handler(code) => code,
            Reason::DatabaseRejected => "database_rejected",
        }
    }

    pub fn stage(self) -> Stage {
        match self {
            Reason::IdentityMissing
            | Reason::IdentityNotBase64
            | Reason::IdentityNotJson
            | Reason::IdentityMemberMissing
            | Reason::IdentityOrgIdMissing
            | Reason::IdentityTypeMissing
            | Reason::IdentityTypeUnknown
            | Reason::IdentitySchemaViolation
            | Reason::RequestIdMissing => Stage::Headers,
            Reason::PayloadMissing | Reason::PayloadTooLarge | Reason::PayloadNotJson => Stage::Payload,
            Reason::SchemaViolation | Reason::PayloadTypeMismatch => Stage::Schema,
            Reason::UnknownTopic => Stage::Routing,
            Reason::Handler(_) | Reason::DatabaseRejected => Stage::Handler,
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
    /// Human-readable, bounded to [`MAX_MESSAGE_LEN`] bytes, never containing the raw identity.
    pub message: String,
    pub class: ErrorClass,
    /// How many times the message was tried (1 unless a handler asked for retries).
    pub attempts: u32,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        let mut message = message.into();
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
    pub fn retries_exhausted(self, attempts: u32) -> Self {
        Rejection { class: ErrorClass::HandlerRetriesExhausted, attempts, ..self }
    }

    pub fn stage(&self) -> Stage {
        self.reason.stage()
    }
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
    fn codes_are_unique() {
        let mut codes: Vec<_> = Reason::BUILT_IN.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::BUILT_IN.len());
    }
}
