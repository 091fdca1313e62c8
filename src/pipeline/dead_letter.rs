//! The dead-letter flow of one message: publish a copy that fits, then record the row.

use super::write::{Attempt, Halt, WriteError};
use super::Outcome;
use crate::dead_letter;
use crate::envelope::Rejection;
use crate::kafka;
use crate::message::{header_refs, RawMessage};
use crate::store::dead_letters::{self, DeadLetter};
use crate::store::InboxKey;
use crate::telemetry::RetryStep;

impl Attempt<'_> {
    /// Publishes `message` to the dead-letter topic and records it in `dead_letters`. A message
    /// already recorded (a redelivery) is not published again. The copy is made to fit in a
    /// record ([`dead_letter::copy`]); the row keeps the full key and value.
    pub(super) async fn dead_letter(
        &self,
        message: &RawMessage,
        rejection: &Rejection,
        request_id: Option<&str>,
        org_id: Option<&str>,
    ) -> Outcome {
        let key = InboxKey::of(message);
        let fingerprint = key.fingerprint;
        match self
            .retry(RetryStep::Database, message, || async { Ok(dead_letters::is_recorded(&self.pipeline.pool, &key).await?) })
            .await
        {
            Err(Halt::Abandoned) => return Outcome::Abandoned,
            Err(Halt::Permanent(_)) | Ok(false) => {}
            Ok(true) => return Outcome::Duplicate,
        }
        let copy = dead_letter::copy(message, rejection, &self.pipeline.group_id);
        let headers = header_refs(&copy.headers);
        let topic = self.pipeline.topics.dead_letter();
        let published = self
            .retry(RetryStep::DeadLetter, message, || async {
                self.pipeline.publisher.publish(&topic, copy.key, copy.value, &headers).await.map_err(WriteError::Kafka)
            })
            .await;
        let delivery = match published {
            Ok(delivery) => delivery,
            Err(Halt::Abandoned) => return Outcome::Abandoned,
            Err(Halt::Permanent(error)) => {
                // The broker refuses even the copy that fits the producer's limit (its own
                // limit is lower): without a copy the message would block its partition for
                // good, so the row alone records it, with no coordinates in the topic.
                self.pipeline.telemetry.dead_letter_copy_refused(message, &error);
                kafka::Delivery { partition: -1, offset: -1 }
            }
        };
        let record = DeadLetter {
            message,
            fingerprint: &fingerprint,
            rejection,
            consumer_group: &self.pipeline.group_id,
            request_id,
            org_id,
            dead_letter_partition: delivery.partition,
            dead_letter_offset: delivery.offset,
        };
        match self
            .retry(RetryStep::Database, message, || async { Ok(dead_letters::record(&self.pipeline.pool, &record).await?) })
            .await
        {
            Ok(()) => {}
            Err(Halt::Abandoned) => return Outcome::Abandoned,
            // Values are checked before they get here (rejection messages are escaped, request
            // and org ids validated), so this is a bug; the copy in the topic is the record.
            Err(Halt::Permanent(error)) => self.pipeline.telemetry.dead_letter_row_refused(message, &error),
        }
        self.pipeline.telemetry.message_dead_lettered(message, rejection, request_id);
        Outcome::DeadLettered
    }
}
