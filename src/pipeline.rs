//! What happens to consumed messages, from raw bytes to a final outcome.
//!
//! open (envelope) → handle (inbox row, handler writes and the enriched event's outbox row in one
//! transaction) → done; the outbox relay publishes the event. A rejection at any step
//! dead-letters the message. A transient failure (database or broker unavailable) is retried
//! with exponential backoff and jitter while the partition waits: its offset cannot pass the
//! message, and other partitions carry on. The pipeline only returns once the messages are
//! finished (or abandoned at shutdown), which is when the consumer may store their offsets.
//!
//! A partition's backlog goes through [`Pipeline::process_batch`]: the run of messages that pass
//! their checks is written in one transaction (set-based inbox and outbox rows, one handler call
//! each), because a commit per message is what limits throughput. Anything unusual (a rejection,
//! a handler's refusal, a retry) takes the single-message path, [`Pipeline::process`], so the
//! batch path never has to know about dead letters or retries.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::TopicConfig;
use crate::dead_letter::dead_letter_headers;
use crate::envelope::{self, Checked, Rejection, Validators};
use crate::kafka::Publisher;
use crate::message::{Header, RawMessage};
use crate::outbox::{self, OutgoingEvent};
use crate::replay;
use crate::router::{Context, DispatchError, Router};
use crate::store::dead_letters::{self, DeadLetter};
use crate::store::{self, InboxEntry, InboxKey};
use crate::stream;
use crate::telemetry::{HandlingTime, Telemetry};

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
}

/// A message that passed every check, ready for its database work.
struct Prepared<'m> {
    message: &'m RawMessage,
    checked: Checked,
    ctx: Context,
    /// The enriched stream event and its headers, when the stream is on.
    event: Option<(String, Vec<Header>)>,
}

/// What a batch transaction did.
enum BatchWrite {
    Committed(Vec<Handled>),
    /// The message at this index was refused; nothing was committed.
    RefusedAt(usize),
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
        }
    }

    fn prepared<'m>(&self, message: &'m RawMessage, checked: Checked, received_at: chrono::DateTime<Utc>) -> Prepared<'m> {
        let ctx = Context {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            key: message.key_text(),
            timestamp: message.timestamp_ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            identity: checked.identity.clone(),
            request_id: checked.request_id.clone(),
        };
        let event = self.topics.stream_enabled.then(|| {
            let payload = stream::enriched_event(&checked, message, received_at).to_string();
            (payload, stream::propagated_headers(message, &checked.request_id))
        });
        Prepared { message, checked, ctx, event }
    }

    /// `message` ready for the batch path, or `None` when it needs the single-message path (an
    /// own output topic, or a rejection to dead-letter).
    fn prepare<'m>(&self, message: &'m RawMessage) -> Option<Prepared<'m>> {
        if self.output_topics.contains(&message.topic) {
            return None;
        }
        let checked = envelope::open(message, &self.validators).result.ok()?;
        Some(self.prepared(message, checked, Utc::now()))
    }

    /// Processes the messages of one partition, in order. Runs of messages that pass their
    /// checks are written in one transaction each; anything else takes the single-message path.
    /// Returns how many messages, from the first, are finished: fewer than all only when the
    /// abandon token fired, and then the rest must not have their offsets stored.
    pub async fn process_batch(&self, messages: &[RawMessage], abandon: &CancellationToken) -> usize {
        let attempt = Attempt { pipeline: self, abandon };
        let mut done = 0;
        while done < messages.len() {
            let run: Vec<Prepared<'_>> = messages[done..].iter().map_while(|m| self.prepare(m)).collect();
            if run.len() < 2 {
                if self.process(&messages[done], abandon).await == Outcome::Abandoned {
                    return done;
                }
                done += 1;
                continue;
            }
            for p in &run {
                self.telemetry.message_started(p.message);
            }
            let written = attempt.retry("database", run[0].message, || attempt.write_batch(&run)).await;
            let handled = match written {
                Some(BatchWrite::Committed(handled)) => handled,
                Some(BatchWrite::RefusedAt(index)) => {
                    // Commit the messages before the refused one next time round; the refused one
                    // then reaches the single-message path (retries, dead letter).
                    for _ in &run {
                        self.telemetry.message_unstarted();
                    }
                    if index == 0 {
                        if self.process(&messages[done], abandon).await == Outcome::Abandoned {
                            return done;
                        }
                        done += 1;
                    } else {
                        let committed = attempt.retry("database", run[0].message, || attempt.write_batch(&run[..index])).await;
                        match committed {
                            Some(BatchWrite::Committed(handled)) => {
                                for p in &run[..index] {
                                    self.telemetry.message_started(p.message);
                                }
                                self.finish_batch(&run[..index], handled);
                                done += index;
                            }
                            // Refused again (the data changed meanwhile): the next round sorts it out.
                            Some(BatchWrite::RefusedAt(_)) => {}
                            None => return done,
                        }
                    }
                    continue;
                }
                None => {
                    for p in &run {
                        self.telemetry.message_abandoned(p.message);
                    }
                    return done;
                }
            };
            self.finish_batch(&run, handled);
            done += run.len();
        }
        done
    }

    fn finish_batch(&self, run: &[Prepared<'_>], handled: Vec<Handled>) {
        let mut wrote_events = false;
        for (p, result) in run.iter().zip(handled) {
            let (outcome, first_time, timing) = match result {
                Handled::FirstTime(timing) => (Outcome::Handled, true, timing),
                Handled::Duplicate => (Outcome::Duplicate, false, HandlingTime::default()),
            };
            wrote_events |= first_time && p.event.is_some();
            self.telemetry.message_handled(&p.ctx, &timing, first_time);
            self.telemetry.message_counted(p.message);
            self.telemetry.message_finished(&p.message.topic, outcome.as_str());
        }
        if wrote_events {
            self.relay_wake.notify_one();
        }
    }

    /// Processes `message` to a final outcome. When `abandon` is cancelled (the shutdown or
    /// revoke deadline passed), retries stop and the outcome is [`Outcome::Abandoned`].
    pub async fn process(&self, message: &RawMessage, abandon: &CancellationToken) -> Outcome {
        self.telemetry.message_started(message);
        self.telemetry.message_counted(message);
        // One span per message: every log line about it carries where it is from and, once the
        // headers are read, its request id and org id (never the identity itself).
        let span = tracing::info_span!(
            "message",
            topic = %message.topic,
            partition = message.partition,
            offset = message.offset,
            request_id = tracing::field::Empty,
            org_id = tracing::field::Empty,
        );
        let outcome = Attempt { pipeline: self, abandon }.process(message).instrument(span).await;
        match outcome {
            Outcome::Abandoned => self.telemetry.message_abandoned(message),
            finished => self.telemetry.message_finished(&message.topic, finished.as_str()),
        }
        outcome
    }
}

/// One message's trip through the pipeline, with the token that abandons it.
struct Attempt<'a> {
    pipeline: &'a Pipeline,
    abandon: &'a CancellationToken,
}

impl Attempt<'_> {
    async fn process(&self, message: &RawMessage) -> Outcome {
        if self.pipeline.output_topics.contains(&message.topic) {
            return Outcome::Skipped;
        }
        let received_at = Utc::now();
        let opened = envelope::open(message, &self.pipeline.validators);
        let span = tracing::Span::current();
        if let Some(request_id) = &opened.request_id {
            span.record("request_id", request_id.as_str());
        }
        if let Ok(checked) = &opened.result {
            span.record("org_id", checked.identity.org_id.as_deref().unwrap_or("-"));
        }
        let checked = match opened.result {
            Ok(checked) => checked,
            Err(rejection) => return self.dead_letter(message, &rejection, opened.request_id.as_deref(), None).await,
        };
        let Prepared { ctx, event, .. } = self.pipeline.prepared(message, checked.clone(), received_at);
        let mut attempt = 1;
        let (first_time, timing) = loop {
            let handled = self.retry("database", message, || self.handle_once(message, &checked, &ctx, event.as_ref())).await;
            let refusal = match handled {
                None => return Outcome::Abandoned,
                Some(Ok(Handled::FirstTime(timing))) => break (true, timing),
                Some(Ok(Handled::Duplicate)) => break (false, HandlingTime::default()),
                Some(Err(refusal)) => refusal,
            };
            let rejection = match refusal {
                Refusal::Retryable(rejection) if attempt < self.pipeline.max_attempts => {
                    let delay = self.pipeline.backoff.delay(attempt - 1);
                    self.pipeline.telemetry.handler_retrying(&ctx, &rejection, attempt, self.pipeline.max_attempts, delay);
                    if !self.sleep_unless_abandoned(delay).await {
                        return Outcome::Abandoned;
                    }
                    attempt += 1;
                    continue;
                }
                Refusal::Retryable(rejection) => rejection.retries_exhausted(attempt),
                Refusal::Rejected(rejection) => rejection,
            };
            return self.dead_letter(message, &rejection, Some(&checked.request_id), ctx.org_id()).await;
        };
        self.pipeline.telemetry.message_handled(&ctx, &timing, first_time);
        if first_time && event.is_some() {
            self.pipeline.relay_wake.notify_one();
        }
        if first_time {
            Outcome::Handled
        } else {
            Outcome::Duplicate
        }
    }

    /// One attempt at the database work: inbox row, handler writes and outbox row in one
    /// transaction.
    /// `Ok(Err(refusal))` is the handler's refusal; `Err` is transient and retried.
    async fn handle_once(
        &self,
        message: &RawMessage,
        checked: &Checked,
        ctx: &Context,
        event: Option<&(String, Vec<Header>)>,
    ) -> anyhow::Result<Result<Handled, Refusal>> {
        let opened = Instant::now();
        let mut tx = self.pipeline.pool.begin().await?;
        match self.write_effects(&mut tx, message, checked, ctx, event).await? {
            Ok(Handled::FirstTime(timing)) => {
                tx.commit().await?;
                self.pipeline.telemetry.transaction_committed(1);
                Ok(Ok(Handled::FirstTime(HandlingTime { transaction: opened.elapsed(), ..timing })))
            }
            other => {
                tx.rollback().await?;
                Ok(other)
            }
        }
    }

    /// Writes every message of `batch` in one transaction, in order, so that a partition's
    /// backlog costs one commit per batch instead of one per message. The first refusal undoes the
    /// whole transaction and names the message: the caller commits the ones before it again and
    /// sends that one down the single-message path (retries, dead letters).
    async fn write_batch(&self, batch: &[Prepared<'_>]) -> anyhow::Result<BatchWrite> {
        let opened = Instant::now();
        let mut tx = self.pipeline.pool.begin().await?;
        // The inbox rows of the whole batch in one statement, then each handler, then the outbox
        // rows in one statement: round trips per batch, not per message, where SQL allows.
        let mut keys = Vec::with_capacity(batch.len());
        for p in batch {
            keys.push(self.inbox_key(&mut tx, p.message).await?);
        }
        let request_ids: Vec<&str> = batch.iter().map(|p| p.ctx.request_id.as_str()).collect();
        let org_ids: Vec<Option<&str>> = batch.iter().map(|p| p.ctx.org_id()).collect();
        let entries = store::record_all_in_inbox(&mut tx, &keys, &request_ids, &org_ids).await?;
        let stream_topic = self.pipeline.topics.stream();
        let mut handled = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        for (index, (p, entry)) in batch.iter().zip(entries).enumerate() {
            match entry {
                InboxEntry::Redelivery => {
                    handled.push(Handled::Duplicate);
                    continue;
                }
                InboxEntry::OffsetReused => self.pipeline.telemetry.offset_reused(&p.ctx),
                InboxEntry::New => {}
            }
            let started = Instant::now();
            match self.pipeline.router.dispatch(p.checked.schema.key, &p.checked.payload, &p.ctx, &mut tx).await {
                Ok(()) => handled.push(Handled::FirstTime(HandlingTime { handler: started.elapsed(), transaction: Duration::ZERO })),
                Err(DispatchError::Rejected(_) | DispatchError::Retryable(_)) => {
                    tx.rollback().await?;
                    return Ok(BatchWrite::RefusedAt(index));
                }
                Err(DispatchError::Transient(error)) => return Err(error),
            }
            if let Some((payload, headers)) = &p.event {
                let event = OutgoingEvent { topic: &stream_topic, key: p.message.key.as_deref(), payload: payload.as_bytes(), headers };
                events.push((event, p.message));
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
        if let Some(original) = replay::replay_of(message, key.fingerprint) {
            if dead_letters::is_recorded(&mut **tx, &original).await? {
                return Ok(original);
            }
        }
        Ok(key)
    }

    /// One message's database work inside `tx`: inbox row, handler writes, outbox row. Commits
    /// nothing; on a refusal the caller must roll `tx` back.
    async fn write_effects(
        &self,
        tx: &mut store::Tx,
        message: &RawMessage,
        checked: &Checked,
        ctx: &Context,
        event: Option<&(String, Vec<Header>)>,
    ) -> anyhow::Result<Result<Handled, Refusal>> {
        let key = self.inbox_key(tx, message).await?;
        match store::record_in_inbox(tx, &key, &ctx.request_id, ctx.org_id()).await? {
            InboxEntry::New => {}
            InboxEntry::OffsetReused => self.pipeline.telemetry.offset_reused(ctx),
            InboxEntry::Redelivery => return Ok(Ok(Handled::Duplicate)),
        }
        let handler_started = Instant::now();
        let dispatched = self.pipeline.router.dispatch(checked.schema.key, &checked.payload, ctx, tx).await;
        let handler = handler_started.elapsed();
        match dispatched {
            Ok(()) => {
                if let Some((payload, headers)) = event {
                    let topic = self.pipeline.topics.stream();
                    let event =
                        OutgoingEvent { topic: &topic, key: message.key.as_deref(), payload: payload.as_bytes(), headers };
                    outbox::enqueue(tx, &event, message).await?;
                }
                Ok(Ok(Handled::FirstTime(HandlingTime { handler, transaction: Duration::ZERO })))
            }
            Err(DispatchError::Rejected(rejection)) => Ok(Err(Refusal::Rejected(rejection))),
            Err(DispatchError::Retryable(rejection)) => Ok(Err(Refusal::Retryable(rejection))),
            Err(DispatchError::Transient(error)) => Err(error),
        }
    }

    /// Publishes `message` to the dead-letter topic and records it in `dead_letters`. A message
    /// already recorded (a redelivery) is not published again.
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
            None => return Outcome::Abandoned,
            Some(true) => return Outcome::Duplicate,
            Some(false) => {}
        }
        let headers = dead_letter_headers(message, rejection, &self.pipeline.group_id);
        let topic = self.pipeline.topics.dead_letter();
        let payload = message.payload.as_deref().unwrap_or_default();
        let published = self
            .retry("dead_letter", message, || async {
                self.pipeline
                    .publisher
                    .publish(&topic, message.key.as_deref(), payload, &headers)
                    .await
                    .map_err(anyhow::Error::from)
            })
            .await;
        let Some(delivery) = published else { return Outcome::Abandoned };
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
        if self
            .retry("database", message, || async { Ok(dead_letters::record(&self.pipeline.pool, &record).await?) })
            .await
            .is_none()
        {
            return Outcome::Abandoned;
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

    /// Runs `attempt` until it succeeds, backing off between failures. `None` when the shutdown
    /// deadline passed first.
    async fn retry<T, F, Fut>(&self, step: &'static str, message: &RawMessage, mut attempt: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                biased;
                _ = self.abandon.cancelled() => return None,
                result = attempt() => result,
            };
            match result {
                Ok(value) => return Some(value),
                Err(error) => {
                    let delay = self.pipeline.backoff.delay(failures);
                    failures += 1;
                    self.pipeline.telemetry.retrying(step, message, failures, delay, &format!("{error:#}"));
                    if !self.sleep_unless_abandoned(delay).await {
                        return None;
                    }
                }
            }
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
