//! Opening a message: every check once, then its handler context and stream event, whichever
//! path it then takes.

use std::sync::Arc;

use chrono::{TimeZone, Utc};

use super::Pipeline;
use crate::envelope::{self, Checked, Reason, Rejection};
use crate::kafka;
use crate::message::RawMessage;
use crate::router::Context;
use crate::stream;
use crate::topics::TopicSchema;

/// A message that passed every check, ready for its database work. Owned (and shared through an
/// `Arc`) so that a write can be merged with other partitions' writes (see [`GroupCommit`]).
pub(super) struct Prepared {
    pub(super) message: RawMessage,
    pub(super) schema: &'static TopicSchema,
    pub(super) payload: serde_json::Value,
    /// Holds the message's identity and request id (moved here from the checks, not copied).
    pub(super) ctx: Context,
    /// The enriched stream event, when the stream is on.
    pub(super) event: Option<Vec<u8>>,
}

/// What the checks made of a message. Each message is opened once, whichever path it then takes.
pub(super) enum Step {
    /// A message on one of the service's own output topics (pattern subscriptions only).
    Skip(RawMessage),
    /// Rejected by its headers, JSON or schema: dead-letter it.
    Reject {
        message: RawMessage,
        rejection: Rejection,
        request_id: Option<String>,
    },
    Ready(Arc<Prepared>),
}

impl Step {
    pub(super) fn ready(&self) -> Option<&Arc<Prepared>> {
        match self {
            Step::Ready(prepared) => Some(prepared),
            _ => None,
        }
    }

    pub(super) fn message(&self) -> &RawMessage {
        match self {
            Step::Skip(message) | Step::Reject { message, .. } => message,
            Step::Ready(prepared) => &prepared.message,
        }
    }
}

impl Pipeline {
    /// Runs every check on `message` and, when it passes, builds its context and stream event.
    pub(super) fn open(&self, message: RawMessage) -> Step {
        if self.output_topics.iter().any(|t| **t == *message.topic) {
            return Step::Skip(message);
        }
        let received_at = Utc::now();
        let opened = envelope::open(&message, &self.validators);
        let checked = match opened.result {
            Ok(checked) => checked,
            Err(rejection) => return Step::Reject { message, rejection, request_id: opened.request_id },
        };
        // An event that can never be published would stop the stream behind it: such a message
        // is refused before it has any effect.
        let event = match self.topics.stream_enabled.then(|| stream::enriched_event(&checked, &message, received_at)) {
            None => None,
            Some(Ok(event)) => Some(event),
            Some(Err(size)) => {
                let rejection = Rejection::new(
                    Reason::EventTooLarge,
                    format!(
                        "topic {}: the enriched stream event would be a {size}-byte record, over the limit of {} even without the key's text copy",
                        message.topic,
                        kafka::MAX_RECORD_BYTES
                    ),
                );
                return Step::Reject { message, rejection, request_id: Some(checked.request_id) };
            }
        };
        let Checked { schema, payload, identity, request_id } = checked;
        let ctx = Context {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            key: message.key_text(),
            timestamp: message.timestamp_ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            identity,
            request_id,
            emitted: std::sync::Mutex::default(),
        };
        Step::Ready(Arc::new(Prepared { message, schema, payload, ctx, event }))
    }
}
