//! The database work of one or more prepared messages, and the single-message path around it:
//! retries with backoff for transient failures, a handler's retryable refusals, dead letters.

use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use super::open::{Prepared, Step};
use super::{Outcome, Pipeline};
use crate::envelope::{Reason, Rejection};
use crate::error::ErrorChain;
use crate::events::stream::Cause;
use crate::events::{self, Emitted, Recorded, Severity};
use crate::kafka;
use crate::message::RawMessage;
use crate::outbox::{self, OutgoingEvent};
use crate::router::{BatchError, HandlerError};
use crate::store::dead_letters;
use crate::store::{self, InboxEntry, InboxKey};
use crate::stream;
use crate::telemetry::{HandlingTime, RetryStep};

/// What a transaction over one or more prepared messages did.
pub(super) enum BatchWrite {
    Committed(Vec<Handled>),
    /// The message at this index was refused (for good, or retryably: never a transient
    /// failure, which is the write's `Err`); nothing was committed.
    Refused(usize, HandlerError),
}

pub(super) enum Handled {
    FirstTime(HandlingTime),
    Duplicate,
}

/// What writing a transaction's catalog events did.
#[derive(Default)]
struct RecordedEvents {
    /// Name, severity and whether it was folded, per event, to count once committed.
    counted: Vec<(&'static str, Severity, bool)>,
    /// The stream records of the new events.
    stream: Vec<CatalogRecord>,
    /// Messages of the batch (by index) that emitted more events than are recorded, and how many
    /// more.
    dropped: Vec<(usize, usize)>,
}

/// A new catalog event's stream record.
struct CatalogRecord {
    payload: Vec<u8>,
    /// The id the event is about, as text.
    key: Option<[u8; 36]>,
    /// The message of the batch that caused it (its headers go with the record).
    source: usize,
}

/// Work on messages with the token that abandons it.
pub(super) struct Attempt<'a> {
    pub(super) pipeline: &'a Pipeline,
    pub(super) abandon: &'a CancellationToken,
}

impl Attempt<'_> {
    /// The single-message path: a skip, a dead letter, or the database work with retries.
    pub(super) async fn process(&self, step: &Step) -> Outcome {
        let p = match step {
            Step::Skip(_) => return Outcome::Skipped,
            Step::Reject { message, rejection, request_id } => {
                return self.dead_letter(message, rejection, request_id.as_deref(), None).await;
            }
            Step::Ready(p) => &**p,
        };
        let alone = [p];
        let mut attempt = 1;
        let result = loop {
            // `write` turns every permanent failure into a refusal, so only the deadline stops it.
            let refusal = match self.retry(RetryStep::Database, &p.message, || self.write(&alone)).await {
                Err(_) => return Outcome::Abandoned,
                Ok(BatchWrite::Committed(mut handled)) => break handled.remove(0),
                Ok(BatchWrite::Refused(_, refusal)) => refusal,
            };
            let retryable = matches!(refusal, HandlerError::Retryable { .. });
            let rejection = refusal.into_rejection(&p.message.topic);
            if retryable && attempt < self.pipeline.max_attempts {
                let delay = self.pipeline.backoff.delay(attempt - 1);
                self.pipeline.telemetry.handler_retrying(&p.ctx, &rejection, attempt, self.pipeline.max_attempts, delay);
                if !self.sleep_unless_abandoned(delay).await {
                    return Outcome::Abandoned;
                }
                attempt += 1;
                continue;
            }
            let rejection = if retryable { rejection.retries_exhausted(attempt) } else { rejection };
            return self.dead_letter(&p.message, &rejection, Some(&p.ctx.request_id), p.ctx.org_id()).await;
        };
        let outcome = self.pipeline.handled(p, result);
        if outcome == Outcome::Handled && p.event.is_some() {
            self.pipeline.relay_wake.notify_one();
        }
        outcome
    }

    /// Writes `batch` in one transaction (see [`Attempt::write_once`]). The database refusing a
    /// value itself (a data exception) is no transient failure: retrying cannot help, so it is a
    /// refusal, pinned on the first message; the callers then write that message
    /// alone, which either succeeds or dead-letters it, and the rest goes on.
    pub(super) async fn write(&self, batch: &[&Prepared]) -> Result<BatchWrite, WriteError> {
        match self.write_once(batch).await {
            Err(error) if error.database().is_some_and(store::is_data_exception) => Ok(BatchWrite::Refused(
                0,
                HandlerError::Refused(Rejection::new(
                    Reason::DatabaseRejected,
                    format!("the database refused the message's rows: {}", ErrorChain(&error)),
                )),
            )),
            result => result,
        }
    }

    /// Writes `batch` in one transaction, in order: the inbox's entries (three statements), then
    /// the handler once per run of one topic, then the outbox row holding the events, so a
    /// partition's backlog costs one commit and a few round trips per batch. The first refusal
    /// undoes the whole transaction and names the message. `Err` is a transient failure, to be
    /// retried.
    async fn write_once(&self, batch: &[&Prepared]) -> Result<BatchWrite, WriteError> {
        let opened = Instant::now();
        let mut tx = self.pipeline.pool.begin().await?;
        let mut keys = Vec::with_capacity(batch.len());
        for p in batch {
            keys.push(self.inbox_key(&mut tx, &p.message).await?);
        }
        let entries = store::record_all_in_inbox(&mut tx, &keys).await?;
        // Redeliveries have no new effects; the rest go to their handlers, one call per topic.
        let mut fresh: Vec<usize> = Vec::with_capacity(batch.len());
        // Said once the transaction commits: a merged write that fails is written again.
        let mut reused: Vec<usize> = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            match entry {
                InboxEntry::Redelivery => continue,
                InboxEntry::OffsetReused => reused.push(index),
                InboxEntry::New => {}
            }
            fresh.push(index);
        }
        // Events are kept only from the attempt that commits: a refused or failed attempt's are
        // dropped with its transaction.
        for p in batch {
            drop(p.ctx.take_emitted());
        }
        let mut handler_time = Duration::ZERO;
        // A merged write holds several partitions' runs, often of different topics in turn; a
        // call per run made one statement per handler table per run (bench/README.md, 18.).
        // Sorted stably by topic, each partition's messages keep their order within the call.
        let mut by_topic = fresh.clone();
        by_topic.sort_by_key(|&i| batch[i].schema.key);
        for run in by_topic.chunk_by(|a, b| batch[*a].schema.key == batch[*b].schema.key) {
            let events: Vec<_> = run.iter().map(|&i| (&batch[i].payload, &batch[i].ctx)).collect();
            let started = Instant::now();
            let refusal = match self.pipeline.router.dispatch(batch[run[0]].schema.key, &events, &mut tx).await {
                Ok(()) => None,
                Err(BatchError { error: HandlerError::Transient(error), .. }) => return Err(WriteError::Handler(error)),
                Err(BatchError { index, error }) => Some((run[index], error)),
            };
            if let Some((index, refusal)) = refusal {
                tx.rollback().await?;
                return Ok(BatchWrite::Refused(index, refusal));
            }
            handler_time += started.elapsed();
        }
        // A set-based handler's time is shared out over the messages it wrote.
        let handler = handler_time / fresh.len().max(1) as u32;
        let recorded_events = self.record_events(&mut tx, batch, &fresh).await?;
        let stream_topic = self.pipeline.topics.stream();
        let mut handled = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut fresh = fresh.into_iter().peekable();
        for (index, p) in batch.iter().enumerate() {
            if fresh.next_if_eq(&index).is_none() {
                handled.push(Handled::Duplicate);
                continue;
            }
            handled.push(Handled::FirstTime(HandlingTime { handler, transaction: Duration::ZERO }));
            if let Some(payload) = &p.event {
                events.push(OutgoingEvent {
                    topic: &stream_topic,
                    key: p.message.key.as_deref(),
                    payload,
                    headers: stream::propagated_headers(&p.message, &p.ctx.request_id),
                });
            }
        }
        for record in &recorded_events.stream {
            let p = batch[record.source];
            events.push(OutgoingEvent {
                topic: &stream_topic,
                key: record.key.as_ref().map(|k| k.as_slice()),
                payload: &record.payload,
                headers: stream::propagated_headers(&p.message, &p.ctx.request_id),
            });
        }
        outbox::enqueue_all(&mut tx, &events).await?;
        tx.commit().await?;
        self.pipeline.telemetry.transaction_committed(batch.len());
        self.pipeline.telemetry.events_recorded(&recorded_events.counted);
        for &(index, dropped) in &recorded_events.dropped {
            self.pipeline.telemetry.events_dropped(&batch[index].ctx, dropped);
        }
        for index in reused {
            self.pipeline.telemetry.offset_reused(&batch[index].ctx);
        }
        let transaction = opened.elapsed();
        for result in &mut handled {
            if let Handled::FirstTime(timing) = result {
                timing.transaction = transaction;
            }
        }
        Ok(BatchWrite::Committed(handled))
    }

    /// Writes the events the handlers of `batch`'s `fresh` messages emitted, in `tx`, and renders
    /// the stream records of the new ones.
    async fn record_events(
        &self,
        tx: &mut store::Tx,
        batch: &[&Prepared],
        fresh: &[usize],
    ) -> Result<RecordedEvents, WriteError> {
        let mut result = RecordedEvents::default();
        let mut emitted: Vec<(usize, Vec<Emitted>)> = Vec::new();
        for &i in fresh {
            let emissions = batch[i].ctx.take_emitted();
            if emissions.dropped > 0 {
                result.dropped.push((i, emissions.dropped));
            }
            if !emissions.events.is_empty() {
                emitted.push((i, emissions.events));
            }
        }
        if emitted.is_empty() {
            return Ok(result);
        }
        let pending: Vec<(usize, events::Pending<'_>)> = emitted
            .iter()
            .flat_map(|(i, emitted)| {
                let (i, ctx) = (*i, &batch[*i].ctx);
                emitted.iter().map(move |event| {
                    let cause = Cause {
                        topic: &ctx.topic,
                        partition: ctx.partition,
                        offset: ctx.offset,
                        org_id: ctx.org_id(),
                        request_id: &ctx.request_id,
                    };
                    (i, events::Pending { event, time: events::event_time(ctx.timestamp), cause })
                })
            })
            .collect();
        let (sources, pending): (Vec<usize>, Vec<events::Pending<'_>>) = pending.into_iter().unzip();
        let recorded = events::record(tx, &pending, self.pipeline.event_dedup_window).await?;
        for ((pending, recorded), source) in pending.iter().zip(&recorded).zip(sources) {
            let event = pending.event;
            result.counted.push((event.name, event.severity, *recorded == Recorded::Folded));
            if let (Recorded::New(id), true) = (recorded, self.pipeline.topics.stream_enabled) {
                result.stream.push(CatalogRecord {
                    payload: events::stream::render(event, *id, pending.time, &pending.cause),
                    key: event.entity.key().map(|key| {
                        let mut text = [0; 36];
                        key.hyphenated().encode_lower(&mut text);
                        text
                    }),
                    source,
                });
            }
        }
        Ok(result)
    }

    /// What the inbox knows `message` by. A replayed dead letter counts as its original, so that
    /// replaying it twice has one effect.
    async fn inbox_key(&self, tx: &mut store::Tx, message: &RawMessage) -> Result<InboxKey, sqlx::Error> {
        let key = InboxKey::of(message);
        // A replay goes back to its original topic; a header naming another topic is not one.
        if let Some(original) = store::replay_of(message, &key).filter(|o| o.topic == message.topic) {
            if dead_letters::is_recorded(&mut **tx, &original).await? {
                return Ok(original);
            }
        }
        Ok(key)
    }

    /// Sleeps for `delay`; false when the shutdown deadline came first.
    pub(super) async fn sleep_unless_abandoned(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.abandon.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Runs `attempt` until it succeeds, backing off between failures. Stops early when the
    /// shutdown deadline passed, or when the failure can never succeed on retry (the database
    /// refusing the data, Kafka refusing the record): those would otherwise stop the partition.
    pub(super) async fn retry<T, F, Fut>(&self, step: RetryStep, message: &RawMessage, mut attempt: F) -> Result<T, Halt>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, WriteError>>,
    {
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                biased;
                _ = self.abandon.cancelled() => return Err(Halt::Abandoned),
                result = attempt() => result,
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) if is_permanent(&error) => return Err(Halt::Permanent(error)),
                Err(error) => {
                    let delay = self.pipeline.backoff.delay(failures);
                    failures += 1;
                    self.pipeline.telemetry.retrying(step, message, failures, delay, &ErrorChain(&error));
                    if !self.sleep_unless_abandoned(delay).await {
                        return Err(Halt::Abandoned);
                    }
                }
            }
        }
    }
}

/// Why [`Attempt::retry`] stopped without a result.
pub(super) enum Halt {
    /// The shutdown or revoke deadline passed.
    Abandoned,
    /// Retrying cannot help.
    Permanent(WriteError),
}

/// A failure of the work [`Attempt::retry`] runs: the database's, the broker's, or a handler's
/// transient failure (whatever the handler wrapped; it may be either of the others).
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Handler(Box<dyn std::error::Error + Send + Sync>),
}

impl WriteError {
    /// The database's error, whether it came from the write itself or through a handler.
    fn database(&self) -> Option<&sqlx::Error> {
        match self {
            WriteError::Database(error) => Some(error),
            WriteError::Handler(error) => error.downcast_ref(),
            WriteError::Kafka(_) => None,
        }
    }

    /// The broker's error, whether it came from a publish or through a handler.
    fn kafka(&self) -> Option<&KafkaError> {
        match self {
            WriteError::Kafka(error) => Some(error),
            WriteError::Handler(error) => error.downcast_ref(),
            WriteError::Database(_) => None,
        }
    }
}

/// Whether `error` is one that no retry can mend.
fn is_permanent(error: &WriteError) -> bool {
    error.database().is_some_and(store::is_data_exception) || error.kafka().is_some_and(kafka::is_permanent)
}
