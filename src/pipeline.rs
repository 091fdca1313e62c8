//! What happens to consumed messages, from raw bytes to a final outcome.
//!
//! open (envelope) → handle (inbox row, handler writes and the enriched event's outbox row in one
//! transaction) → done; the outbox relay publishes the event. A rejection at any step
//! dead-letters the message. A transient failure (database or broker unavailable) is retried
//! with exponential backoff and jitter while the partition waits: its offset cannot pass the
//! message, and other partitions carry on. The pipeline only returns once the messages are
//! finished (or abandoned at shutdown), which is when the consumer may store their offsets.
//!
//! A partition's messages go through [`Pipeline::process_batch`]. Each is checked once; the run
//! of messages that pass is written in one transaction (set-based inbox and outbox rows, one
//! handler call for the run), merged with the runs other partitions have ready at the same time
//! (`GroupCommit`), because a commit, and then a round trip, per message is what limits
//! throughput. Anything unusual (a rejection, a handler's refusal, a retry) takes the
//! single-message path, whose transaction is the same write over a batch of one, so the batch
//! path never has to know about dead letters or retries.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::TopicConfig;
use crate::dead_letter;
use crate::envelope::{self, Checked, Reason, Rejection, Validators};
use crate::kafka::{self, Publisher};
use crate::message::{header_refs, RawMessage};
use crate::outbox::{self, OutgoingEvent};
use crate::replay;
use crate::router::{Context, DispatchError, Router};
use crate::store::dead_letters::{self, DeadLetter};
use crate::store::{self, InboxEntry, InboxKey};
use crate::stream;
use crate::telemetry::{HandlingTime, Telemetry};
use crate::topics::TopicSchema;

/// How a message finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled for the first time; its stream event is in the outbox.
    Handled,
    /// Already handled before (a redelivery): no new effects, no new event.
    Duplicate,
    DeadLettered,
    /// A message on one of the service's own output topics (pattern subscriptions only).
    Skipped,
    /// Shutdown came first; the offset must not advance.
    Abandoned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Duplicate => "duplicate",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Skipped => "skipped",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// Retry timing for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Full jitter: a random delay up to the exponential bound, so partitions that failed
    /// together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let bound = self.initial.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        bound.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

pub struct Pipeline {
    pub validators: Validators,
    pub router: Router,
    pub pool: sqlx::PgPool,
    pub publisher: Publisher,
    pub topics: TopicConfig,
    pub group_id: String,
    pub telemetry: Arc<Telemetry>,
    pub backoff: Backoff,
    /// Wakes the outbox relay after a commit that wrote an event.
    relay_wake: Arc<Notify>,
    /// Attempts a handler's retryable failure gets before the message is dead-lettered.
    max_attempts: u32,
    output_topics: [String; 2],
    group: GroupCommit,
    /// Partitions whose batch is opened at once (see [`Pipeline::MAX_OPEN_BATCHES`]).
    open_batches: tokio::sync::Semaphore,
}

/// A message that passed every check, ready for its database work. Owned (and shared through an
/// `Arc`) so that a write can be merged with other partitions' writes (see [`GroupCommit`]).
struct Prepared {
    message: RawMessage,
    schema: &'static TopicSchema,
    payload: serde_json::Value,
    /// Holds the message's identity and request id (moved here from the checks, not copied).
    ctx: Context,
    /// The enriched stream event, when the stream is on.
    event: Option<Vec<u8>>,
}

/// What the checks made of a message. Each message is opened once, whichever path it then takes.
enum Step {
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
    fn ready(&self) -> Option<&Arc<Prepared>> {
        match self {
            Step::Ready(prepared) => Some(prepared),
            _ => None,
        }
    }

    fn message(&self) -> &RawMessage {
        match self {
            Step::Skip(message) | Step::Reject { message, .. } => message,
            Step::Ready(prepared) => &prepared.message,
        }
    }
}

/// What a transaction over one or more prepared messages did.
enum BatchWrite {
    Committed(Vec<Handled>),
    /// The message at this index was refused; nothing was committed.
    Refused(usize, Refusal),
}

enum Handled {
    FirstTime(HandlingTime),
    Duplicate,
}

/// A handler's refusal: for good, or for now.
enum Refusal {
    Rejected(Rejection),
    Retryable(Rejection),
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        validators: Validators,
        router: Router,
        pool: sqlx::PgPool,
        publisher: Publisher,
        topics: TopicConfig,
        group_id: String,
        telemetry: Arc<Telemetry>,
        backoff: Backoff,
        relay_wake: Arc<Notify>,
        max_attempts: u32,
    ) -> Self {
        let output_topics = [topics.stream(), topics.dead_letter()];
        Pipeline {
            validators,
            router,
            pool,
            publisher,
            topics,
            group_id,
            telemetry,
            backoff,
            relay_wake,
            max_attempts,
            output_topics,
            group: GroupCommit::new(),
            open_batches: tokio::sync::Semaphore::new(Self::MAX_OPEN_BATCHES),
        }
    }

    /// How many partitions may hold their batch opened at once. An opened message (its JSON
    /// tree, context and stream event) takes several times its raw size, and under a backlog
    /// every partition has a full batch: 192 partitions of opened batches of 64 were most of the
    /// service's 159 MiB peak while 1,000,000 messages drained. The other partitions wait with
    /// their raw messages. The limit is released when a batch leaves the merged write for the
    /// single-message path, so partitions that are retrying do not hold up the rest.
    const MAX_OPEN_BATCHES: usize = 32;

    /// Runs every check on `message` and, when it passes, builds its context and stream event.
    fn open(&self, message: RawMessage) -> Step {
        if self.output_topics.contains(&message.topic) {
            return Step::Skip(message);
        }
        let received_at = Utc::now();
        let opened = envelope::open(&message, &self.validators);
        let checked = match opened.result {
            Ok(checked) => checked,
            Err(rejection) => return Step::Reject { message, rejection, request_id: opened.request_id },
        };
        let event = self.topics.stream_enabled.then(|| stream::enriched_event(&checked, &message, received_at));
        if let Some(event) = &event {
            // An event that can never be published would stop the stream behind it: such a
            // message is refused before it has any effect.
            let size = stream::record_size(&message, &checked.request_id, event);
            if size > kafka::MAX_RECORD_BYTES {
                let rejection = Rejection::new(
                    Reason::EventTooLarge,
                    format!(
                        "topic {}: the enriched stream event would be a {size}-byte record, over the limit of {} (it carries the key twice and the identity header)",
                        message.topic,
                        kafka::MAX_RECORD_BYTES
                    ),
                );
                return Step::Reject { message, rejection, request_id: Some(checked.request_id) };
            }
        }
        let Checked { schema, payload, identity, request_id } = checked;
        let ctx = Context {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            key: message.key_text(),
            timestamp: message.timestamp_ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            identity,
            request_id,
        };
        Step::Ready(Arc::new(Prepared { message, schema, payload, ctx, event }))
    }

    /// Processes the messages of one partition, in order, each to a final outcome. Runs of
    /// messages that pass their checks are written in one transaction each; anything else (a
    /// rejection, a handler's refusal, a lone message) takes the single-message path, with its
    /// retries and dead letters. Returns how many messages, from the first, are finished: fewer
    /// than all only when `abandon` fired (the shutdown or revoke deadline passed), and then the
    /// rest must not have their offsets stored.
    pub async fn process_batch(&self, messages: Vec<RawMessage>, abandon: &CancellationToken) -> usize {
        for message in &messages {
            self.telemetry.message_consumed(message);
        }
        let mut opened = tokio::select! {
            biased;
            _ = abandon.cancelled() => {
                messages.iter().for_each(|m| self.telemetry.message_abandoned(m));
                return 0;
            }
            permit = self.open_batches.acquire() => permit.ok(),
        };
        let steps: Vec<Step> = messages.into_iter().map(|m| self.open(m)).collect();
        let attempt = Attempt { pipeline: self, abandon };
        let mut done = 0;
        while done < steps.len() {
            let run: Vec<Arc<Prepared>> = steps[done..].iter().map_while(Step::ready).cloned().collect();
            if !run.is_empty() && opened.is_some() {
                // First, one try merged with whatever other partitions are writing now.
                let merged = tokio::select! {
                    biased;
                    _ = abandon.cancelled() => return self.abandoned_from(&steps, done),
                    merged = self.group.write(&attempt, run.clone()) => merged,
                };
                if let Some(handled) = merged {
                    self.finish_handled(&run, handled);
                    done += run.len();
                    continue;
                }
            }
            // From here on the batch may wait (retries, dead letters): let another partition open.
            opened.take();
            let run: Vec<&Prepared> = run.iter().map(|p| &**p).collect();
            if run.len() >= 2 {
                // The first refusal names a message; the messages before it are written again
                // without it, until a prefix commits. The refused message then takes the
                // single-message path below.
                let mut end = run.len();
                while end > 0 {
                    match attempt.retry("database", &run[0].message, || attempt.write(&run[..end])).await {
                        Err(_) => return self.abandoned_from(&steps, done),
                        Ok(BatchWrite::Committed(handled)) => {
                            self.finish_handled(&run[..end], handled);
                            done += end;
                            break;
                        }
                        Ok(BatchWrite::Refused(index, _)) => end = index.min(end - 1),
                    }
                }
                if end == run.len() {
                    continue;
                }
            }
            let outcome = attempt.process(&steps[done]).instrument(message_span(&steps[done])).await;
            if outcome == Outcome::Abandoned {
                return self.abandoned_from(&steps, done);
            }
            self.telemetry.message_finished(&steps[done].message().topic, outcome.as_str());
            done += 1;
        }
        done
    }

    fn finish_handled<P: std::ops::Deref<Target = Prepared>>(&self, run: &[P], handled: Vec<Handled>) {
        let mut wrote_events = false;
        for (p, result) in run.iter().zip(handled) {
            let outcome = self.handled(p, result);
            wrote_events |= outcome == Outcome::Handled && p.event.is_some();
            self.telemetry.message_finished(&p.message.topic, outcome.as_str());
        }
        if wrote_events {
            self.relay_wake.notify_one();
        }
    }

    /// Records a committed message; its outcome.
    fn handled(&self, p: &Prepared, result: Handled) -> Outcome {
        match result {
            Handled::FirstTime(timing) => {
                self.telemetry.message_handled(&p.ctx, &timing, true);
                Outcome::Handled
            }
            Handled::Duplicate => {
                self.telemetry.message_handled(&p.ctx, &HandlingTime::default(), false);
                Outcome::Duplicate
            }
        }
    }

    /// Counts the messages from `done` on as abandoned; returns `done`.
    fn abandoned_from(&self, steps: &[Step], done: usize) -> usize {
        for step in &steps[done..] {
            self.telemetry.message_abandoned(step.message());
        }
        done
    }
}

/// One span per message on the single-message path: every log line about it carries where it is
/// from, its request id and org id (never the identity itself).
fn message_span(step: &Step) -> tracing::Span {
    let message = step.message();
    let (request_id, org_id) = match step {
        Step::Ready(p) => (Some(p.ctx.request_id.as_str()), Some(p.ctx.org_id().unwrap_or("-"))),
        Step::Reject { request_id, .. } => (request_id.as_deref(), None),
        Step::Skip(_) => (None, None),
    };
    tracing::info_span!(
        "message",
        topic = %message.topic,
        partition = message.partition,
        offset = message.offset,
        request_id = request_id,
        org_id = org_id,
    )
}

/// Work on messages with the token that abandons it.
struct Attempt<'a> {
    pipeline: &'a Pipeline,
    abandon: &'a CancellationToken,
}

impl Attempt<'_> {
    /// The single-message path: a skip, a dead letter, or the database work with retries.
    async fn process(&self, step: &Step) -> Outcome {
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
            let refusal = match self.retry("database", &p.message, || self.write(&alone)).await {
                Err(_) => return Outcome::Abandoned,
                Ok(BatchWrite::Committed(mut handled)) => break handled.remove(0),
                Ok(BatchWrite::Refused(_, refusal)) => refusal,
            };
            let rejection = match refusal {
                Refusal::Retryable(rejection) if attempt < self.pipeline.max_attempts => {
                    let delay = self.pipeline.backoff.delay(attempt - 1);
                    self.pipeline.telemetry.handler_retrying(&p.ctx, &rejection, attempt, self.pipeline.max_attempts, delay);
                    if !self.sleep_unless_abandoned(delay).await {
                        return Outcome::Abandoned;
                    }
                    attempt += 1;
                    continue;
                }
                Refusal::Retryable(rejection) => rejection.retries_exhausted(attempt),
                Refusal::Rejected(rejection) => rejection,
            };
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
    async fn write(&self, batch: &[&Prepared]) -> anyhow::Result<BatchWrite> {
        match self.write_once(batch).await {
            Err(error) if error.downcast_ref::<sqlx::Error>().is_some_and(store::is_data_exception) => Ok(BatchWrite::Refused(
                0,
                Refusal::Rejected(Rejection::new(
                    Reason::DatabaseRejected,
                    format!("the database refused the message's rows: {error:#}"),
                )),
            )),
            result => result,
        }
    }

    /// Writes `batch` in one transaction, in order: the inbox rows with one statement, then the
    /// handler once per run of one topic, then the outbox row holding the events, so a
    /// partition's backlog costs one commit and a few round trips per batch. The first refusal undoes the
    /// whole transaction and names the message. `Err` is a transient failure, to be retried.
    async fn write_once(&self, batch: &[&Prepared]) -> anyhow::Result<BatchWrite> {
        let opened = Instant::now();
        let mut tx = self.pipeline.pool.begin().await?;
        let mut keys = Vec::with_capacity(batch.len());
        for p in batch {
            keys.push(self.inbox_key(&mut tx, &p.message).await?);
        }
        let request_ids: Vec<&str> = batch.iter().map(|p| p.ctx.request_id.as_str()).collect();
        let org_ids: Vec<Option<&str>> = batch.iter().map(|p| p.ctx.org_id()).collect();
        let entries = store::record_all_in_inbox(&mut tx, &keys, &request_ids, &org_ids).await?;
        // Redeliveries have no new effects; the rest go to their handlers, a call per run of
        // consecutive messages of the same topic (a partition's batch is one run).
        let mut fresh: Vec<usize> = Vec::with_capacity(batch.len());
        for (index, (p, entry)) in batch.iter().zip(entries).enumerate() {
            match entry {
                InboxEntry::Redelivery => continue,
                InboxEntry::OffsetReused => self.pipeline.telemetry.offset_reused(&p.ctx),
                InboxEntry::New => {}
            }
            fresh.push(index);
        }
        let mut handler_time = Duration::ZERO;
        for run in fresh.chunk_by(|a, b| batch[*a].schema.key == batch[*b].schema.key) {
            let events: Vec<_> = run.iter().map(|&i| (&batch[i].payload, &batch[i].ctx)).collect();
            let started = Instant::now();
            let refusal = match self.pipeline.router.dispatch(batch[run[0]].schema.key, &events, &mut tx).await {
                Ok(()) => None,
                Err((i, DispatchError::Rejected(rejection))) => Some((run[i], Refusal::Rejected(rejection))),
                Err((i, DispatchError::Retryable(rejection))) => Some((run[i], Refusal::Retryable(rejection))),
                Err((_, DispatchError::Transient(error))) => return Err(error),
            };
            if let Some((index, refusal)) = refusal {
                tx.rollback().await?;
                return Ok(BatchWrite::Refused(index, refusal));
            }
            handler_time += started.elapsed();
        }
        // A set-based handler's time is shared out over the messages it wrote.
        let handler = handler_time / fresh.len().max(1) as u32;
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
        outbox::enqueue_all(&mut tx, &events).await?;
        tx.commit().await?;
        self.pipeline.telemetry.transaction_committed(batch.len());
        let transaction = opened.elapsed();
        for result in &mut handled {
            if let Handled::FirstTime(timing) = result {
                timing.transaction = transaction;
            }
        }
        Ok(BatchWrite::Committed(handled))
    }

    /// What the inbox knows `message` by. A replayed dead letter counts as its original, so that
    /// replaying it twice has one effect.
    async fn inbox_key(&self, tx: &mut store::Tx, message: &RawMessage) -> anyhow::Result<InboxKey> {
        let key = InboxKey::of(message);
        // A replay goes back to its original topic; a header naming another topic is not one.
        if let Some(original) = replay::replay_of(message, &key).filter(|o| o.topic == message.topic) {
            if dead_letters::is_recorded(&mut **tx, &original).await? {
                return Ok(original);
            }
        }
        Ok(key)
    }

    /// Publishes `message` to the dead-letter topic and records it in `dead_letters`. A message
    /// already recorded (a redelivery) is not published again. The copy is made to fit in a
    /// record ([`dead_letter::copy`]); the row keeps the full key and value.
    async fn dead_letter(
        &self,
        message: &RawMessage,
        rejection: &Rejection,
        request_id: Option<&str>,
        org_id: Option<&str>,
    ) -> Outcome {
        let key = InboxKey::of(message);
        let fingerprint = key.fingerprint;
        match self.retry("database", message, || async { Ok(dead_letters::is_recorded(&self.pipeline.pool, &key).await?) }).await
        {
            Err(Halt::Abandoned) => return Outcome::Abandoned,
            Err(Halt::Permanent(_)) | Ok(false) => {}
            Ok(true) => return Outcome::Duplicate,
        }
        let copy = dead_letter::copy(message, rejection, &self.pipeline.group_id);
        let headers = header_refs(&copy.headers);
        let topic = self.pipeline.topics.dead_letter();
        let published = self
            .retry("dead_letter", message, || async {
                self.pipeline.publisher.publish(&topic, copy.key, copy.value, &headers).await.map_err(anyhow::Error::from)
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
        match self.retry("database", message, || async { Ok(dead_letters::record(&self.pipeline.pool, &record).await?) }).await {
            Ok(()) => {}
            Err(Halt::Abandoned) => return Outcome::Abandoned,
            // Values are checked before they get here (rejection messages are escaped, request
            // and org ids validated), so this is a bug; the copy in the topic is the record.
            Err(Halt::Permanent(error)) => self.pipeline.telemetry.dead_letter_row_refused(message, &error),
        }
        self.pipeline.telemetry.message_dead_lettered(message, rejection, request_id);
        Outcome::DeadLettered
    }

    /// Sleeps for `delay`; false when the shutdown deadline came first.
    async fn sleep_unless_abandoned(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.abandon.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Runs `attempt` until it succeeds, backing off between failures. Stops early when the
    /// shutdown deadline passed, or when the failure can never succeed on retry (the database
    /// refusing the data, Kafka refusing the record): those would otherwise stop the partition.
    async fn retry<T, F, Fut>(&self, step: &'static str, message: &RawMessage, mut attempt: F) -> Result<T, Halt>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
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
                    self.pipeline.telemetry.retrying(step, message, failures, delay, &format!("{error:#}"));
                    if !self.sleep_unless_abandoned(delay).await {
                        return Err(Halt::Abandoned);
                    }
                }
            }
        }
    }
}

/// Why [`Attempt::retry`] stopped without a result.
enum Halt {
    /// The shutdown or revoke deadline passed.
    Abandoned,
    /// Retrying cannot help.
    Permanent(anyhow::Error),
}

/// Whether `error` is one that no retry can mend.
fn is_permanent(error: &anyhow::Error) -> bool {
    error.downcast_ref::<sqlx::Error>().is_some_and(store::is_data_exception)
        || error.downcast_ref::<rdkafka::error::KafkaError>().is_some_and(kafka::is_permanent)
}

/// Writes that several partitions have ready at the same time, merged into one transaction.
///
/// A partition's batch holds only what that partition has waiting. At a steady 2,000 messages/s
/// over 192 partitions that is one message, so every message was a transaction of its own
/// (begin, inbox, handler, outbox, commit), and PostgreSQL spent most of the machine on
/// per-transaction work (bench/README.md). Here a partition's ready run joins a queue; up to
/// [`GroupCommit::WRITERS`] writers at a time each take what is queued and write it in one
/// transaction, so the transactions get larger exactly when the database is busy, and a lone
/// message waits for nothing.
///
/// It is one try. If the merged write fails (a handler's refusal, a transient error), every
/// partition in it gets `None` and writes its run itself, with the usual retries and dead letters;
/// so a message another partition's handler refuses costs a second write and nothing else.
/// Each partition has at most one run queued and waits for it, so its order is kept.
struct GroupCommit {
    queue: std::sync::Mutex<std::collections::VecDeque<GroupRequest>>,
    writers: tokio::sync::Semaphore,
}

struct GroupRequest {
    run: Vec<Arc<Prepared>>,
    reply: tokio::sync::oneshot::Sender<Option<Vec<Handled>>>,
}

impl GroupCommit {
    /// Merged transactions in progress at once.
    const WRITERS: usize = 2;
    /// The most messages a writer takes into one transaction (it takes at least one run).
    const MAX_MESSAGES: usize = 512;

    fn new() -> Self {
        GroupCommit { queue: Default::default(), writers: tokio::sync::Semaphore::new(Self::WRITERS) }
    }

    /// Writes `run` merged with the other runs waiting. `None`: not written; write it alone.
    async fn write(&self, attempt: &Attempt<'_>, run: Vec<Arc<Prepared>>) -> Option<Vec<Handled>> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.queue.lock().expect("group commit queue").push_back(GroupRequest { run, reply });
        loop {
            let permit = tokio::select! {
                biased;
                written = &mut answer => return written.ok().flatten(),
                permit = self.writers.acquire() => permit.ok()?,
            };
            let taken = self.take();
            if taken.is_empty() {
                // A writer took this run already and is writing it.
                drop(permit);
                return answer.await.ok().flatten();
            }
            Self::write_taken(attempt, taken).await;
            drop(permit);
            if let Ok(written) = answer.try_recv() {
                return written;
            }
        }
    }

    /// Takes queued runs, oldest first, up to [`GroupCommit::MAX_MESSAGES`].
    fn take(&self) -> Vec<GroupRequest> {
        let mut queue = self.queue.lock().expect("group commit queue");
        let mut taken: Vec<GroupRequest> = Vec::new();
        let mut messages = 0;
        while let Some(next) = queue.front() {
            if !taken.is_empty() && messages + next.run.len() > Self::MAX_MESSAGES {
                break;
            }
            messages += next.run.len();
            taken.extend(queue.pop_front());
        }
        taken
    }

    /// One transaction over all `taken` runs; each gets its share of the result, or `None`.
    async fn write_taken(attempt: &Attempt<'_>, taken: Vec<GroupRequest>) {
        let batch: Vec<&Prepared> = taken.iter().flat_map(|r| r.run.iter().map(|p| &**p)).collect();
        let mut handled = match attempt.write(&batch).await {
            Ok(BatchWrite::Committed(handled)) => Some(handled.into_iter()),
            _ => None,
        };
        for request in taken {
            let share = handled.as_mut().map(|h| h.by_ref().take(request.run.len()).collect());
            // A partition that stopped waiting (abandoned) has its messages redelivered later;
            // the inbox makes that a no-op.
            let _ = request.reply.send(share);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2) };
        for _ in 0..100 {
            let first = backoff.delay(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = backoff.delay(30);
            assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        }
    }
}
