//! What happens to consumed messages, from raw bytes to a final outcome.
//!
//! open (envelope) → handle (inbox entry, handler writes and the enriched event's outbox row in
//! one transaction) → done; the outbox relay publishes the event. A rejection at any step
//! dead-letters the message. A transient failure (database or broker unavailable) is retried
//! with exponential backoff and jitter while the partition waits: its offset cannot pass the
//! message, and other partitions carry on. The pipeline only returns once the messages are
//! finished (or abandoned at shutdown), which is when the consumer may store their offsets.
//!
//! A partition's messages go through [`Pipeline::process_batch`]. Each is checked once; the run
//! of messages that pass is written in one transaction (an inbox run per partition, one outbox
//! row, one handler call for the run), merged with the runs other partitions have ready at the
//! same time (`GroupCommit`), because a commit, and then a round trip, per message is what limits
//! throughput. The messages the checks rejected are dead-lettered together meanwhile, so they
//! neither split the runs nor make the partition wait on a producer round trip each. A
//! handler's refusal or a retry takes the single-message path, whose transaction is the same
//! write over a batch of one, so the batch path never has to know about dead letters or
//! retries.
//!
//! The rooms: `open` (checks, context, stream event), `write` (the transaction over one or more
//! messages, and the single-message path with its retries), `group_commit` (runs of several
//! partitions merged into one transaction), `dead_letter` (publish the copies, record the
//! rows).

mod dead_letter;
mod group_commit;
mod open;
mod write;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use rdkafka::error::KafkaError;

use crate::config::{Config, TopicConfig};
use crate::envelope::validate::SchemaError;
use crate::envelope::Validators;
use crate::kafka::Publisher;
use crate::message::RawMessage;
use crate::router::{MissingHandler, Router};
use crate::telemetry::{HandlingTime, KnownTopic, RetryStep, Telemetry};

use crate::retry::Backoff;
use dead_letter::Rejected;
use group_commit::GroupCommit;
use open::{Prepared, Step};
use write::{Attempt, BatchWrite, Handled};

pub use crate::telemetry::Outcome;

/// Why [`Pipeline::from_config`] could not assemble the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A schema in `api/event/` has no registered handler.
    #[error(transparent)]
    MissingHandler(#[from] MissingHandler),
    /// A schema does not compile.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The producer for the dead-letter topic could not be created.
    #[error("KAFKA_BROKERS: cannot create the Kafka producer")]
    Producer(#[source] KafkaError),
}

pub struct Pipeline {
    pub(crate) validators: Validators,
    pub(crate) router: Router,
    pub(crate) pool: sqlx::PgPool,
    pub(crate) publisher: Publisher,
    pub(crate) topics: TopicConfig,
    pub(crate) group_id: String,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) backoff: Backoff,
    /// Wakes the outbox relay after a commit that wrote an event.
    relay_wake: Arc<Notify>,
    /// Attempts a handler's retryable failure gets before the message is dead-lettered.
    max_attempts: u32,
    /// Events seen again within this long are folded (see [`crate::events`]).
    event_dedup_window: std::time::Duration,
    output_topics: [String; 2],
    group: GroupCommit,
    /// Partitions whose batch is opened at once (see [`Pipeline::MAX_OPEN_BATCHES`]).
    open_batches: tokio::sync::Semaphore,
}

impl Pipeline {
    /// The pipeline `config` describes, with `router`'s handlers, writing through `pool`: the one
    /// place that assembles it, for the service, the tests and the benchmark. Fails when a schema
    /// has no handler or does not compile, or the producer cannot be created.
    pub fn from_config(config: &Config, router: Router, pool: sqlx::PgPool) -> Result<Self, PipelineError> {
        router.check_complete()?;
        let validators = Validators::compile(&config.topics)?.with_max_payload_bytes(config.max_message_bytes);
        let known_topics = validators
            .topics()
            .map(|(name, key)| KnownTopic { name: name.to_owned(), handler_reasons: router.reasons(key) })
            .collect();
        let publisher = Publisher::new(&config.kafka).map_err(PipelineError::Producer)?;
        let topics = config.topics.clone();
        Ok(Pipeline {
            output_topics: [topics.stream(), topics.dead_letter()],
            validators,
            router,
            pool,
            publisher,
            topics,
            group_id: config.kafka.group_id.clone(),
            telemetry: Arc::new(Telemetry::new(known_topics)),
            backoff: Backoff::for_config(config),
            relay_wake: Arc::default(),
            max_attempts: config.handler_max_attempts,
            event_dedup_window: config.event_dedup_window,
            group: GroupCommit::new(),
            open_batches: tokio::sync::Semaphore::new(Self::MAX_OPEN_BATCHES),
        })
    }

    /// What the outbox relay waits on: notified after each commit that wrote a stream event.
    pub(crate) fn relay_wake(&self) -> Arc<Notify> {
        self.relay_wake.clone()
    }

    /// How many partitions may hold their batch opened at once. An opened message (its JSON
    /// tree, context and stream event) takes several times its raw size, and under a backlog
    /// every partition has a full batch: with many partitions, opened batches were most of the
    /// service's peak memory in a large drain (bench/README.md). The other partitions wait with
    /// their raw messages. A batch gives its place up when it takes the single-message path (a
    /// dead letter or a refusal, either of which may wait on retries), so partitions waiting
    /// there do not hold up the rest.
    const MAX_OPEN_BATCHES: usize = 32;

    /// Processes the messages of one partition, each to a final outcome. Runs of messages that
    /// pass their checks are written in one transaction each, in order; a handler's refusal or a
    /// lone message takes the single-message path, with its retries and dead letters. Messages
    /// rejected by their checks are dead-lettered together, while the rest is written. Returns
    /// how many messages, from the first, are finished: fewer than all only when `abandon` fired
    /// (the shutdown or revoke deadline passed), and then the rest must not have their offsets
    /// stored.
    pub async fn process_batch(&self, messages: Vec<RawMessage>, abandon: &CancellationToken) -> usize {
        for message in &messages {
            self.telemetry.message_consumed(message);
        }
        let opened = tokio::select! {
            biased;
            _ = abandon.cancelled() => {
                messages.iter().for_each(|m| self.telemetry.message_abandoned(m));
                return 0;
            }
            permit = self.open_batches.acquire() => permit.ok(),
        };
        let steps: Vec<Step> = messages.into_iter().map(|m| self.open(m)).collect();
        let (rejected, others): (Vec<usize>, Vec<usize>) =
            (0..steps.len()).partition(|&i| matches!(steps[i], Step::Reject { .. }));
        let attempt = Attempt { pipeline: self, abandon };
        let (dead_lettered, written) = tokio::join!(
            self.dead_letter_rejected(&attempt, &steps, &rejected),
            self.write_in_order(&attempt, &steps, &others, opened)
        );
        // The offsets may advance up to the first message not finished.
        let unfinished: Vec<usize> = rejected
            .iter()
            .zip(&dead_lettered)
            .filter(|(_, outcome)| **outcome == Outcome::Abandoned)
            .map(|(&i, _)| i)
            .chain(others[written..].iter().copied())
            .collect();
        for &i in &unfinished {
            self.telemetry.message_abandoned(steps[i].message());
        }
        unfinished.into_iter().min().unwrap_or(steps.len())
    }

    /// Dead-letters the messages of `steps` at `rejected` (all rejections) together; their
    /// outcomes, in that order.
    async fn dead_letter_rejected(&self, attempt: &Attempt<'_>, steps: &[Step], rejected: &[usize]) -> Vec<Outcome> {
        let letters: Vec<Rejected> = rejected
            .iter()
            .filter_map(|&i| match &steps[i] {
                Step::Reject { message, rejection, request_id } => {
                    Some(Rejected { message, rejection, request_id: request_id.as_deref(), org_id: None })
                }
                _ => None,
            })
            .collect();
        let Some(first) = letters.first() else { return Vec::new() };
        let span = tracing::info_span!("dead_letters", topic = %first.message.topic, partition = first.message.partition);
        let outcomes = attempt.dead_letter_all(&letters).instrument(span).await;
        for (letter, outcome) in letters.iter().zip(&outcomes) {
            if *outcome != Outcome::Abandoned {
                self.telemetry.message_finished(&letter.message.topic, *outcome);
            }
        }
        outcomes
    }

    /// Writes the messages of `steps` at `order`, in that order; how many of them, from the
    /// first, are finished. `opened` is the batch's place among the opened batches, given up
    /// when the batch takes the single-message path, which may wait on retries.
    async fn write_in_order(
        &self,
        attempt: &Attempt<'_>,
        steps: &[Step],
        order: &[usize],
        mut opened: Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> usize {
        // Each run is tried merged with other partitions' first, until one such try fails.
        let mut merge = true;
        let mut done = 0;
        while done < order.len() {
            let run: Vec<Arc<Prepared>> = order[done..].iter().map_while(|&i| steps[i].ready()).cloned().collect();
            if !run.is_empty() && merge {
                // First, one try merged with whatever other partitions are writing now.
                let merged = tokio::select! {
                    biased;
                    _ = attempt.abandon.cancelled() => return done,
                    merged = self.group.write(attempt, run.clone()) => merged,
                };
                if let Some(handled) = merged {
                    self.finish_handled(&run, handled);
                    done += run.len();
                    continue;
                }
            }
            // From here on the batch may wait (retries): let another partition open. After a
            // skip its next run is still merged; after a failed merged write its runs go alone.
            opened.take();
            merge &= run.is_empty();
            let run: Vec<&Prepared> = run.iter().map(|p| &**p).collect();
            if run.len() >= 2 {
                // The first refusal names a message; the messages before it are written again
                // without it, until a prefix commits. The refused message then takes the
                // single-message path below.
                let mut end = run.len();
                while end > 0 {
                    match attempt.retry(RetryStep::Database, &run[0].message, || attempt.write(&run[..end])).await {
                        Err(_) => return done,
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
            let step = &steps[order[done]];
            let outcome = attempt.process(step).instrument(message_span(step)).await;
            if outcome == Outcome::Abandoned {
                return done;
            }
            self.telemetry.message_finished(&step.message().topic, outcome);
            done += 1;
        }
        done
    }

    fn finish_handled<P: std::ops::Deref<Target = Prepared>>(&self, run: &[P], handled: Vec<Handled>) {
        let mut wrote_events = false;
        for (p, result) in run.iter().zip(handled) {
            let outcome = self.handled(p, result);
            wrote_events |= outcome == Outcome::Handled && p.event.is_some();
            self.telemetry.message_finished(&p.message.topic, outcome);
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
