//! The Kafka consumer: group membership, one worker per partition, offsets.
//!
//! Messages of one partition are processed in order by that partition's worker; partitions
//! proceed concurrently. A worker stores a message's offset only after the pipeline finished it
//! (handled and published, or dead-lettered), and librdkafka commits stored offsets in the
//! background and on rebalance. So an offset never passes an unfinished message: delivery is at
//! least once, and the database inbox turns redelivery into a no-op.
//!
//! The consumer knows nothing about schemas or tables: it hands [`RawMessage`]s to the
//! [`Pipeline`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::message::RawMessage;
use crate::pipeline::{Outcome, Pipeline};
use crate::telemetry::Telemetry;

/// Messages buffered per partition between the fetch loop and the partition's worker.
const PARTITION_BUFFER: usize = 256;

/// librdkafka callbacks: rebalances and client errors go to telemetry; assignment feeds readiness.
pub struct ConsumerEvents {
    telemetry: Arc<Telemetry>,
    joined: Arc<AtomicBool>,
}

impl ConsumerEvents {
    pub fn new(telemetry: Arc<Telemetry>, joined: Arc<AtomicBool>) -> Self {
        ConsumerEvents { telemetry, joined }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

impl ClientContext for ConsumerEvents {
    fn error(&self, error: KafkaError, reason: &str) {
        self.telemetry.consumer_error(&format!("{error}: {reason}"));
    }
}

impl ConsumerContext for ConsumerEvents {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.joined.store(true, Ordering::Release);
                self.telemetry.rebalance("assign", &describe(partitions));
            }
            Rebalance::Revoke(partitions) => self.telemetry.rebalance("revoke", &describe(partitions)),
            Rebalance::Error(error) => self.telemetry.rebalance("error", &error.to_string()),
        }
    }
}

pub type RouterConsumer = StreamConsumer<ConsumerEvents>;

/// Reads messages until `stop` is cancelled, then lets workers finish (the pipeline gives up on
/// retries when its own abandon token fires) and commits what was stored.
pub async fn run(consumer: Arc<RouterConsumer>, pipeline: Arc<Pipeline>, stop: CancellationToken) {
    let mut workers: HashMap<(String, i32), mpsc::Sender<RawMessage>> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let received = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => RawMessage::from_kafka(&message),
            Err(error) => {
                pipeline.telemetry.consumer_error(&error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = (message.topic.clone(), message.partition);
        let sender = workers.entry(slot).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(PARTITION_BUFFER);
            tasks.spawn(partition_worker(consumer.clone(), pipeline.clone(), receiver));
            sender
        });
        // A full buffer makes the fetch loop wait: memory stays bounded.
        if sender.send(message).await.is_err() {
            tracing::error!("a partition worker stopped unexpectedly; restart the service");
            break;
        }
    }
    drop(workers);
    while tasks.join_next().await.is_some() {}
    commit_stored(consumer, COMMIT_DEADLINE).await;
}

/// How long the final commit may wait for the broker.
const COMMIT_DEADLINE: Duration = Duration::from_secs(10);

/// Processes one partition's messages in order, storing each offset once it is finished.
async fn partition_worker(consumer: Arc<RouterConsumer>, pipeline: Arc<Pipeline>, mut messages: mpsc::Receiver<RawMessage>) {
    while let Some(message) = messages.recv().await {
        match pipeline.process(&message).await {
            Outcome::Abandoned => return,
            _ => {
                if let Err(error) = consumer.store_offset(&message.topic, message.partition, message.offset) {
                    // The partition was revoked meanwhile: its new owner reprocesses from the last
                    // commit, and the inbox makes that a no-op for what was handled here.
                    tracing::debug!(%error, topic = %message.topic, partition = message.partition, "offset not stored");
                }
            }
        }
    }
}

/// Commits stored offsets, waiting at most `deadline`. librdkafka's synchronous commit waits
/// without a bound when no coordinator answers, so it runs on its own thread and shutdown goes on
/// without it after the deadline (uncommitted messages are redelivered; the inbox makes that a
/// no-op). Nothing new to commit is not an error.
pub async fn commit_stored(consumer: Arc<RouterConsumer>, deadline: Duration) {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(consumer.commit_consumer_state(CommitMode::Sync));
    });
    match tokio::time::timeout(deadline, result).await {
        Ok(Ok(Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)))) => {}
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "final offset commit failed; the last messages may be redelivered")
        }
        Ok(Err(_)) => tracing::warn!("final offset commit thread ended without a result"),
        Err(_) => {
            tracing::warn!(deadline_s = deadline.as_secs(), "final offset commit timed out; the last messages may be redelivered")
        }
    }
}

/// Subscribes to the schema topics and, if configured, a pattern.
pub fn subscribe(consumer: &RouterConsumer, topics: &[String], pattern: Option<&str>) -> KafkaResult<()> {
    let mut subscription: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Some(pattern) = pattern {
        subscription.push(pattern);
    }
    consumer.subscribe(&subscription)
}
