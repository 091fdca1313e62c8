//! The dead-letter flow: publish a copy that fits, then record the row.
//!
//! A partition's rejected messages are dead-lettered together: one lookup of which are recorded
//! already, every copy queued at once and their acknowledgements awaited together, one insert of
//! the rows. One at a time, each cost two statements and a producer round trip (its linger
//! included) while the partition waited, so a flood of bad input on a topic with few partitions
//! crawled (bench/README.md, section 25).

use futures::future::join_all;

use super::write::{Attempt, Halt, WriteError};
use super::Outcome;
use crate::dead_letter;
use crate::envelope::Rejection;
use crate::kafka;
use crate::message::{header_refs, RawMessage};
use crate::store::dead_letters::{self, DeadLetter};
use crate::store::InboxKey;
use crate::telemetry::RetryStep;

/// A message to dead-letter, and what is known of it.
pub(super) struct Rejected<'a> {
    pub(super) message: &'a RawMessage,
    pub(super) rejection: &'a Rejection,
    pub(super) request_id: Option<&'a str>,
    pub(super) org_id: Option<&'a str>,
}

impl Attempt<'_> {
    /// Dead-letters one message (see [`Attempt::dead_letter_all`]).
    pub(super) async fn dead_letter(
        &self,
        message: &RawMessage,
        rejection: &Rejection,
        request_id: Option<&str>,
        org_id: Option<&str>,
    ) -> Outcome {
        let outcomes = self.dead_letter_all(&[Rejected { message, rejection, request_id, org_id }]).await;
        outcomes.into_iter().next().unwrap_or(Outcome::Abandoned)
    }

    /// Publishes each of `rejected` to the dead-letter topic and records it in `dead_letters`;
    /// the outcomes come back in the order given. A message already recorded (a redelivery) is
    /// not published again. Each copy is made to fit in a record ([`dead_letter::copy`]); the
    /// row keeps the full key and value. Once the deadline has passed, every message not yet
    /// recorded is abandoned: it will be redelivered, and a copy already published is then
    /// published again.
    pub(super) async fn dead_letter_all(&self, rejected: &[Rejected<'_>]) -> Vec<Outcome> {
        let Some(first) = rejected.first() else { return Vec::new() };
        let keys: Vec<InboxKey> = rejected.iter().map(|r| InboxKey::of(r.message)).collect();
        let recorded = match self
            .retry(RetryStep::Database, first.message, || async { Ok(dead_letters::recorded(&self.pipeline.pool, &keys).await?) })
            .await
        {
            Ok(recorded) => recorded,
            Err(Halt::Abandoned) => return vec![Outcome::Abandoned; rejected.len()],
            // A lookup cannot be refused for its data; publishing again is the safe side.
            Err(Halt::Permanent(_)) => vec![false; rejected.len()],
        };
        let fresh: Vec<usize> = (0..rejected.len()).filter(|&i| !recorded[i]).collect();
        let copies: Vec<dead_letter::Copy> = fresh
            .iter()
            .map(|&i| dead_letter::copy(rejected[i].message, rejected[i].rejection, &self.pipeline.group_id))
            .collect();
        let topic = self.pipeline.topics.dead_letter();
        // Every send is queued on the first poll, in order, so the copies keep their partition's
        // order; each is retried on its own, so a copy whose send failed comes after the others.
        let published = join_all(fresh.iter().zip(&copies).map(|(&i, copy)| {
            let headers = header_refs(&copy.headers);
            let topic = &topic;
            async move {
                self.retry(RetryStep::DeadLetter, rejected[i].message, || async {
                    self.pipeline.publisher.publish(topic, copy.key, copy.value, &headers).await.map_err(WriteError::Kafka)
                })
                .await
            }
        }))
        .await;
        let mut letters = Vec::with_capacity(fresh.len());
        for (&i, published) in fresh.iter().zip(published) {
            let delivery = match published {
                Ok(delivery) => delivery,
                Err(Halt::Abandoned) => return vec![Outcome::Abandoned; rejected.len()],
                Err(Halt::Permanent(error)) => {
                    // The broker refuses even the copy that fits the producer's limit (its own
                    // limit is lower): without a copy the message would block its partition for
                    // good, so the row alone records it, with no coordinates in the topic.
                    self.pipeline.telemetry.dead_letter_copy_refused(rejected[i].message, &error);
                    kafka::Delivery { partition: -1, offset: -1 }
                }
            };
            let r = &rejected[i];
            letters.push(DeadLetter {
                message: r.message,
                fingerprint: &keys[i].fingerprint,
                rejection: r.rejection,
                consumer_group: &self.pipeline.group_id,
                request_id: r.request_id,
                org_id: r.org_id,
                dead_letter_partition: delivery.partition,
                dead_letter_offset: delivery.offset,
            });
        }
        if !self.record(&letters).await {
            return vec![Outcome::Abandoned; rejected.len()];
        }
        for &i in &fresh {
            self.pipeline.telemetry.message_dead_lettered(rejected[i].message, rejected[i].rejection, rejected[i].request_id);
        }
        recorded.iter().map(|&done| if done { Outcome::Duplicate } else { Outcome::DeadLettered }).collect()
    }

    /// Records `letters` in one statement; false when the deadline passed first. Should the
    /// database refuse a value, each is recorded alone, so that only the refused row is missing.
    async fn record(&self, letters: &[DeadLetter<'_>]) -> bool {
        let Some(first) = letters.first() else { return true };
        let all = self
            .retry(RetryStep::Database, first.message, || async {
                Ok(dead_letters::record_all(&self.pipeline.pool, letters).await?)
            })
            .await;
        match all {
            Ok(()) => true,
            Err(Halt::Abandoned) => false,
            Err(Halt::Permanent(_)) => {
                for letter in letters.chunks(1) {
                    match self
                        .retry(RetryStep::Database, letter[0].message, || async {
                            Ok(dead_letters::record_all(&self.pipeline.pool, letter).await?)
                        })
                        .await
                    {
                        Ok(()) => {}
                        Err(Halt::Abandoned) => return false,
                        // Values are checked before they get here (rejection messages are
                        // escaped, request and org ids validated), so this is a bug; the copy in
                        // the topic is the record.
                        Err(Halt::Permanent(error)) => self.pipeline.telemetry.dead_letter_row_refused(letter[0].message, &error),
                    }
                }
                true
            }
        }
    }
}
