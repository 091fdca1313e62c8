//! The Kafka consumer: group membership, one worker per partition, offsets.
//!
//! Messages of one partition are processed in order by that partition's worker; partitions
//! proceed concurrently. A worker stores a message's offset only after the pipeline finished it
//! (committed, or dead-lettered), so the stored offsets of a partition are always contiguous and
//! never pass an unfinished message. librdkafka commits stored offsets in the background; the
//! service also commits them when partitions are revoked and at shutdown.
//!
//! A revoke (rebalance) and shutdown go through the same steps, as in vector's Kafka source:
//! tell the affected workers to stop taking messages, let each finish the one in hand, abandon it
//! if the deadline passes (its offset is then not stored, and the new owner processes it again),
//! and commit. The rebalance callback waits for that before librdkafka hands the partitions on,
//! so the next owner starts after the last finished message, provided the broker accepts the
//! commit during the rebalance. (librdkafka's mock cluster does not: it answers
//! RebalanceInProgress, so there a handover redoes what was finished since the last background
//! commit, and the inbox makes that redo a no-op.)
//!
//! Memory is bounded in bytes, not only in messages: every message held in the service, from
//! the moment it is copied out of librdkafka until its batch is finished, holds its share of a
//! [`ByteBudget`]. When the budget is spent the loop pauses fetching and keeps polling (so the
//! group membership and rebalances go on) until finished messages give bytes back.
//!
//! A partition worker that dies (a bug: handlers' panics are caught by the router) ends the
//! consumer with an error, and with it the process, so that the orchestrator restarts it rather
//! than leaving the partition silently stopped; so does a fatal client error.
//!
//! The consumer knows nothing about schemas or tables: it hands [`RawMessage`]s to the
//! [`Pipeline`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Batching;
use crate::message::{Bytes, HeaderLimits, RawMessage};
use crate::pipeline::Pipeline;
use crate::telemetry::{RebalanceKind, Telemetry};

type Slot = (Arc<str>, i32);

/// The bytes that messages held in the service may take.
///
/// A message is charged its raw size (key, value, headers) plus [`ByteBudget::OPENED_FACTOR`]
/// times its value for what opening it makes: the parsed JSON tree (typically two to three times
/// the text) and the stream event (about the text again). The charge is taken before the message
/// is handed to its partition and given back when its batch is finished.
#[derive(Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl ByteBudget {
    pub const OPENED_FACTOR: usize = 3;

    pub fn new(total: usize) -> Self {
        ByteBudget { bytes: Arc::new(Semaphore::new(total)), total }
    }

    /// What `message` is charged; a message larger than the whole budget is charged all of it
    /// (it then goes through alone).
    pub fn cost(&self, message: &RawMessage) -> u32 {
        let value = message.payload.as_ref().map_or(0, Bytes::len);
        let cost = message.size().saturating_add(value.saturating_mul(Self::OPENED_FACTOR)).max(1);
        cost.min(self.total).min(u32::MAX as usize) as u32
    }

    fn try_charge(&self, cost: u32) -> Option<OwnedSemaphorePermit> {
        self.bytes.clone().try_acquire_many_owned(cost).ok()
    }

    async fn charge(&self, cost: u32) -> OwnedSemaphorePermit {
        self.bytes.clone().acquire_many_owned(cost).await.expect("the budget's semaphore is never closed")
    }

    /// Bytes not charged right now.
    pub(crate) fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// A message and its charges, given back when it is dropped: on the whole budget, and, while it
/// is in its partition's queue or batch, on that partition's share of it.
struct Charged {
    message: RawMessage,
    cost: u32,
    charge: OwnedSemaphorePermit,
    share: Option<OwnedSemaphorePermit>,
}

impl Charged {
    fn new(message: RawMessage, cost: u32, charge: OwnedSemaphorePermit) -> Self {
        Charged { message, cost, charge, share: None }
    }
}

/// A partition may hold at most this fraction of the byte budget (`1 / PARTITION_SHARES`), in
/// its queue and its batch; a message larger than that share takes all of it and goes alone.
/// So a partition that cannot go on (a handler retrying) pauses on its own share, and its
/// messages never spend the budget every other partition needs.
const PARTITION_SHARES: usize = 8;

/// A running partition worker, as the fetch loop and the rebalance callback see it.
struct Worker {
    messages: mpsc::Sender<Charged>,
    /// The partition's share of the byte budget (see [`PARTITION_SHARES`]).
    share: Arc<Semaphore>,
    /// Set while the partition is paused because the worker's buffer was full: messages that
    /// were fetched before the pause took effect, in order, waiting for room.
    held_back: Option<mpsc::UnboundedSender<Charged>>,
    /// Stop taking messages; finish the one in hand.
    stop: CancellationToken,
    /// Give up on the one in hand (its offset is not stored).
    abandon: CancellationToken,
    /// Fires when the worker has exited.
    done: oneshot::Receiver<()>,
}

impl Worker {
    /// Stops the worker and waits for it, abandoning its message after `deadline`. Blocking:
    /// called from librdkafka's rebalance callback and from the shutdown path.
    fn stop_blocking(mut self, deadline: Duration) {
        self.stop.cancel();
        drop(self.messages);
        let wait = |done: &mut oneshot::Receiver<()>, limit: Duration| {
            let until = std::time::Instant::now() + limit;
            while std::time::Instant::now() < until {
                match done.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(5)),
                    _ => return true,
                }
            }
            false
        };
        if !wait(&mut self.done, deadline) {
            self.abandon.cancel();
            wait(&mut self.done, Duration::from_secs(5));
        }
    }
}

/// The partition workers of one consumer, shared by the fetch loop and the rebalance callback.
#[derive(Default)]
pub(crate) struct Workers {
    running: Mutex<HashMap<Slot, Worker>>,
    /// Messages fetched while the byte budget was spent, in fetch order, waiting for bytes.
    starved: Mutex<std::collections::VecDeque<RawMessage>>,
    /// Set while every partition is paused because the byte budget is spent. A partition whose
    /// held-back messages are handed over meanwhile stays paused; the budget's resume takes it up.
    /// (Resuming it at once let every busy partition fetch on while the budget was spent: at 384
    /// partitions a 1,000,000-message drain held hundreds of thousands waiting, bench/README.md, 17.)
    budget_paused: AtomicBool,
    /// Cancelled when a partition worker died; the reason is in `death`.
    died: CancellationToken,
    death: Mutex<Option<String>>,
}

impl Workers {
    fn take(&self, partitions: &TopicPartitionList) -> Vec<Worker> {
        let revoked: std::collections::HashSet<Slot> =
            partitions.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect();
        // Waiting messages of revoked partitions are the next owner's to read.
        self.starved.lock().expect("starved lock").retain(|m| !revoked.contains(&(m.topic.clone(), m.partition)));
        let mut running = self.running.lock().expect("workers lock");
        revoked.iter().filter_map(|slot| running.remove(slot)).collect()
    }

    fn worker_died(&self, slot: &Slot, why: String) {
        self.death.lock().expect("death lock").get_or_insert_with(|| format!("the worker of {}[{}] died: {why}", slot.0, slot.1));
        self.died.cancel();
    }

    fn take_all(&self) -> Vec<Worker> {
        self.running.lock().expect("workers lock").drain().map(|(_, worker)| worker).collect()
    }
}

/// Stops `workers` concurrently, each within `deadline`.
fn stop_all_blocking(workers: Vec<Worker>, deadline: Duration) {
    std::thread::scope(|scope| {
        for worker in workers {
            scope.spawn(move || worker.stop_blocking(deadline));
        }
    });
}

/// Runs blocking work from inside the async runtime without starving it: on a multi-threaded
/// runtime the current worker thread hands its other tasks away first.
fn block_in_runtime<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// librdkafka callbacks: revokes stop the affected workers and commit; rebalances and client
/// errors go to telemetry; assignment feeds readiness.
pub struct ConsumerEvents {
    telemetry: Arc<Telemetry>,
    joined: Arc<AtomicBool>,
    workers: Arc<Workers>,
    revoke_deadline: Duration,
    /// Set once [`run`] has stopped the workers and made its final commit, within its deadline.
    /// Closing the client then revokes the partitions once more; that revoke's commit would add
    /// nothing and, being librdkafka's synchronous commit, has no deadline: with two consumers
    /// of the mock broker closing at once it was seen to wait forever.
    finished: AtomicBool,
}

impl ConsumerEvents {
    pub fn new(telemetry: Arc<Telemetry>, joined: Arc<AtomicBool>, revoke_deadline: Duration) -> Self {
        ConsumerEvents { telemetry, joined, workers: Arc::default(), revoke_deadline, finished: AtomicBool::new(false) }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

impl ClientContext for ConsumerEvents {
    fn error(&self, error: KafkaError, reason: &str) {
        self.telemetry.consumer_error(&format!("{error}: {reason}"));
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::kafka::log_librdkafka(level, fac, log_message);
    }

    /// librdkafka's periodic statistics: the lag of each owned partition, counted from the last
    /// *stored* offset (finished messages), so messages fetched but still queued count as lag.
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition < 0 {
                    continue; // librdkafka's internal "unassigned" partition
                }
                let lag = if p.fetch_state != "active" {
                    None
                } else if p.consumer_lag_stored >= 0 {
                    Some(p.consumer_lag_stored)
                } else {
                    (p.consumer_lag >= 0).then_some(p.consumer_lag)
                };
                self.telemetry.consumer_lag(topic, *partition, lag);
            }
        }
    }
}

impl ConsumerContext for ConsumerEvents {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if self.finished.load(Ordering::SeqCst) {
                return;
            }
            let workers = self.workers.take(partitions);
            block_in_runtime(|| stop_all_blocking(workers, self.revoke_deadline));
            // Synchronous, so the next owner reads the committed offset only after this commit.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => self.telemetry.commit_on_revoke_failed(&error),
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                // A partition paused under a previous owner's worker starts unpaused.
                if let Err(error) = consumer.resume(partitions) {
                    tracing::debug!(%error, "resuming newly assigned partitions");
                }
                self.joined.store(true, Ordering::Release);
                self.telemetry.rebalance(RebalanceKind::Assign, &describe(partitions));
            }
            // Not joined until the next assignment: a consumer out of its group shows in /readyz.
            Rebalance::Revoke(partitions) => {
                self.joined.store(false, Ordering::Release);
                self.telemetry.rebalance(RebalanceKind::Revoke, &describe(partitions));
            }
            Rebalance::Error(error) => {
                self.joined.store(false, Ordering::Release);
                self.telemetry.rebalance(RebalanceKind::Error, &error.to_string());
            }
        }
    }
}

pub type RouterConsumer = StreamConsumer<ConsumerEvents>;

/// Reads messages until `stop` is cancelled, then stops every worker (each finishes its message
/// in hand, or abandons it after `shutdown_deadline`) and commits what was stored.
///
/// Each partition queues up to `batching.max_messages` messages (the largest batch its worker
/// writes in one transaction) between this loop and its worker, within its share of the byte
/// budget ([`PARTITION_SHARES`]). A partition whose queue or share is full is paused (see
/// `dispatch`); all of them are paused while the byte budget (`batching.max_buffered_bytes`) is
/// spent. librdkafka's own pre-fetch queue is bounded separately (`queued.max.messages.kbytes`),
/// and it also bounds what a pause holds back.
///
/// `Err` when the consumer died: a partition worker ended unexpectedly or librdkafka reported a
/// fatal error. The offsets of finished messages are committed first all the same.
pub async fn run(
    consumer: Arc<RouterConsumer>,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    shutdown_deadline: Duration,
    batching: Batching,
) -> Result<(), ConsumerError> {
    let budget = ByteBudget::new(batching.max_buffered_bytes);
    let workers = consumer.context().workers.clone();
    // Partitions paused again, one by one, since the budget paused them all (see below).
    let mut paused_again: std::collections::HashSet<Slot> = std::collections::HashSet::new();
    let mut topic_names = crate::message::TopicNames::default();
    let mut died = None;
    loop {
        let waiting = workers.starved.lock().expect("starved lock").front().map(|m| budget.cost(m));
        if waiting.is_none() && workers.budget_paused.load(Ordering::SeqCst) {
            // A revoke took what waited (it is the next owner's to read): nothing waits for bytes
            // any more, so the partitions still assigned fetch again.
            feed_starved(&consumer, &pipeline, batching, &budget);
            paused_again.clear();
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = workers.died.cancelled() => {
                died = workers.death.lock().expect("death lock").clone();
                break;
            }
            charge = budget.charge(waiting.unwrap_or(0)), if waiting.is_some() => {
                // A revoke may have taken the front message meanwhile: then this charge is
                // given back and the next round charges the new front.
                let front = {
                    let mut starved = workers.starved.lock().expect("starved lock");
                    match starved.front() {
                        Some(m) if Some(budget.cost(m)) == waiting => starved.pop_front(),
                        _ => None,
                    }
                };
                if let (Some(message), Some(cost)) = (front, waiting) {
                    dispatch(&consumer, &pipeline, batching, Charged::new(message, cost, charge));
                }
                if feed_starved(&consumer, &pipeline, batching, &budget) {
                    paused_again.clear();
                }
            }
            received = consumer.recv() => {
                let message = match received {
                    Ok(message) => RawMessage::from_kafka(&message, HeaderLimits::SERVICE, &mut topic_names),
                    // librdkafka raises a fatal error once and then refuses to work; it reaches
                    // `recv` as `MessageConsumptionFatal` with the underlying error's code.
                    Err(error @ KafkaError::MessageConsumptionFatal(_)) => {
                        pipeline.telemetry.consumer_error(&error);
                        died = Some(format!("librdkafka reported a fatal error: {error}"));
                        break;
                    }
                    Err(error) => {
                        pipeline.telemetry.consumer_error(&error);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let mut starved = workers.starved.lock().expect("starved lock");
                let cost = budget.cost(&message);
                let charge = if starved.is_empty() { budget.try_charge(cost) } else { None };
                match charge {
                    Some(charge) => {
                        drop(starved);
                        dispatch(&consumer, &pipeline, batching, Charged::new(message, cost, charge));
                    }
                    None => {
                        let slot = (message.topic.clone(), message.partition);
                        // Behind the others that wait, in fetch order.
                        starved.push_back(message);
                        drop(starved);
                        if !workers.budget_paused.swap(true, Ordering::SeqCst) {
                            set_all_paused(&consumer, &workers, true);
                            pipeline.telemetry.budget_spent(budget.available(), batching.max_buffered_bytes);
                        } else if paused_again.insert(slot.clone()) {
                            // Fetched after the pause: what librdkafka had queued, or a partition
                            // a hand-over resumed just as the budget ran out. Paused once more, so
                            // that what waits stays bounded by what was in flight.
                            set_paused(&consumer, &slot, true);
                        }
                    }
                }
            }
        }
    }
    let running = workers.take_all();
    // An error here means the runtime is shutting down under us; there is nothing left to wait for.
    let _ = tokio::task::spawn_blocking(move || stop_all_blocking(running, shutdown_deadline)).await;
    commit_stored(consumer.clone(), COMMIT_DEADLINE).await;
    consumer.context().finished.store(true, Ordering::SeqCst);
    match died {
        None => Ok(()),
        Some(why) => Err(ConsumerError { why }),
    }
}

/// Why the consumer stopped without being asked to: a partition worker died, or librdkafka
/// reported a fatal error.
#[derive(Debug, thiserror::Error)]
#[error("the Kafka consumer stopped: {why}")]
pub struct ConsumerError {
    /// What ended it, as one line.
    pub why: String,
}

/// Hands waiting messages to their partitions while the budget has room for them, in order;
/// resumes fetching once none waits. Returns whether none waits any more.
fn feed_starved(consumer: &Arc<RouterConsumer>, pipeline: &Arc<Pipeline>, batching: Batching, budget: &ByteBudget) -> bool {
    let workers = &consumer.context().workers;
    loop {
        let next = {
            let mut starved = workers.starved.lock().expect("starved lock");
            let Some(front) = starved.front() else { break };
            let cost = budget.cost(front);
            match budget.try_charge(cost) {
                Some(charge) => starved.pop_front().map(|message| Charged::new(message, cost, charge)),
                None => return false,
            }
        };
        if let Some(charged) = next {
            dispatch(consumer, pipeline, batching, charged);
        }
    }
    if workers.budget_paused.swap(false, Ordering::SeqCst) {
        set_all_paused(consumer, workers, false);
    }
    true
}

/// Hands `message` to its partition's worker, starting one if needed. When the worker's queue
/// is full, or the partition's share of the byte budget is spent (a handler retrying, a slow
/// write), the partition is paused instead of waiting here, which would hold up every other
/// partition; the messages fetched before the pause took effect are held back in order and
/// handed over as room appears, then the partition is resumed. So memory stays bounded and one
/// slow partition slows only itself.
fn dispatch(consumer: &Arc<RouterConsumer>, pipeline: &Arc<Pipeline>, batching: Batching, mut message: Charged) {
    let slot = (message.message.topic.clone(), message.message.partition);
    let mut running = consumer.context().workers.running.lock().expect("workers lock");
    // The slot's topic is a shared name, so the key `entry` takes costs a reference count.
    let worker =
        running.entry(slot.clone()).or_insert_with(|| spawn_worker(consumer.clone(), pipeline.clone(), batching, slot.clone()));
    if let Some(held_back) = &worker.held_back {
        // Behind the messages already waiting; the forwarding task hands them over in order.
        let _ = held_back.send(message);
        return;
    }
    let behind = match worker.share.clone().try_acquire_many_owned(share_cost(batching, message.cost)) {
        Err(_) => message,
        Ok(share) => {
            message.share = Some(share);
            match worker.messages.try_send(message) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(mut message)) => {
                    message.share = None;
                    message
                }
                Err(mpsc::error::TrySendError::Closed(message)) => {
                    dropped(&message.message);
                    return;
                }
            }
        }
    };
    set_paused(consumer, &slot, true);
    let (held_back, waiting) = mpsc::unbounded_channel();
    let _ = held_back.send(behind);
    worker.held_back = Some(held_back);
    let (to_worker, share) = (worker.messages.clone(), worker.share.clone());
    tokio::spawn(hand_over_held_back(consumer.clone(), slot, batching, to_worker, share, waiting));
}

/// What a message of budget cost `cost` takes of its partition's share: the same, or the whole
/// share for a message larger than it.
fn share_cost(batching: Batching, cost: u32) -> u32 {
    cost.min(partition_share(batching))
}

fn partition_share(batching: Batching) -> u32 {
    (batching.max_buffered_bytes / PARTITION_SHARES).clamp(1, u32::MAX as usize) as u32
}

/// A message of a partition whose worker has stopped: a revoke after it was fetched (the
/// partition's next owner reads it again from the committed offset), or a worker that died,
/// which ends the consumer (see `run`).
fn dropped(message: &RawMessage) {
    tracing::debug!(
        topic = %message.topic, partition = message.partition, offset = message.offset,
        "dropped a message of a partition whose worker has stopped"
    );
}

/// Feeds a paused partition's held-back messages to its worker as room appears (in its queue and
/// in its share of the byte budget), then resumes fetching the partition, unless the byte budget
/// has paused every partition meanwhile (its resume then takes this one up). Ends without
/// resuming when the worker was stopped (a revoke): the partition's next owner reads those
/// messages again.
async fn hand_over_held_back(
    consumer: Arc<RouterConsumer>,
    slot: Slot,
    batching: Batching,
    to_worker: mpsc::Sender<Charged>,
    share: Arc<Semaphore>,
    mut waiting: mpsc::UnboundedReceiver<Charged>,
) {
    loop {
        let next = {
            // Under the workers lock, which `dispatch` holds while it adds: an empty queue here
            // means nothing more can arrive once `held_back` is cleared.
            let mut running = consumer.context().workers.running.lock().expect("workers lock");
            match waiting.try_recv() {
                Ok(message) => Some(message),
                Err(_) => match running.get_mut(&slot) {
                    // The same worker, not a later one for the partition (after a revoke).
                    Some(worker) if worker.messages.same_channel(&to_worker) => {
                        worker.held_back = None;
                        None
                    }
                    _ => return,
                },
            }
        };
        match next {
            Some(mut message) => {
                // The share is given back as the worker finishes batches, or drops what it
                // held when it stops; so this wait ends, and a stopped worker's closed queue
                // then ends the task.
                let cost = share_cost(batching, message.cost);
                message.share = Some(share.clone().acquire_many_owned(cost).await.expect("a share is never closed"));
                if to_worker.send(message).await.is_err() {
                    return;
                }
            }
            None => {
                // Read after `held_back` was cleared: if the budget's resume came first, it
                // skipped this partition (still held back) and the flag is clear by now.
                if !consumer.context().workers.budget_paused.load(Ordering::SeqCst) {
                    set_paused(&consumer, &slot, false);
                }
                return;
            }
        }
    }
}

/// Pauses every assigned partition (the byte budget is spent), or resumes every one whose worker
/// is not itself behind (those resume when their held-back messages are handed over).
fn set_all_paused(consumer: &RouterConsumer, workers: &Workers, paused: bool) {
    let Ok(assignment) = consumer.assignment() else { return };
    let mut partitions = TopicPartitionList::new();
    {
        let running = workers.running.lock().expect("workers lock");
        for element in assignment.elements() {
            let slot: Slot = (Arc::from(element.topic()), element.partition());
            if paused || running.get(&slot).is_none_or(|worker| worker.held_back.is_none()) {
                partitions.add_partition(&slot.0, slot.1);
            }
        }
    }
    let result = if paused { consumer.pause(&partitions) } else { consumer.resume(&partitions) };
    if let Err(error) = result {
        tracing::debug!(%error, paused, "pause or resume of all partitions refused");
    }
}

fn set_paused(consumer: &RouterConsumer, (topic, partition): &Slot, paused: bool) {
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, *partition);
    let result = if paused { consumer.pause(&partitions) } else { consumer.resume(&partitions) };
    match result {
        Ok(()) => tracing::debug!(%topic, partition, paused, "partition's worker is behind; fetching paused or resumed"),
        Err(error) => tracing::debug!(%error, %topic, partition, paused, "pause or resume refused"),
    }
}

fn spawn_worker(consumer: Arc<RouterConsumer>, pipeline: Arc<Pipeline>, batching: Batching, slot: Slot) -> Worker {
    // One batch of room. More room paused busy partitions less often (librdkafka then keeps
    // its pre-fetch instead of discarding it at each pause) for a little less CPU, but held more
    // messages at once: at four batches, peak RSS over a million messages came to within a few
    // MiB of the 150 MB it must stay under (bench/README.md, 29.).
    let (messages, receiver) = mpsc::channel(batching.max_messages);
    let share = Arc::new(Semaphore::new(partition_share(batching) as usize));
    let (stop, abandon) = (CancellationToken::new(), CancellationToken::new());
    let (finished, done) = oneshot::channel();
    let workers = consumer.context().workers.clone();
    let work = tokio::spawn(partition_worker(consumer, pipeline, receiver, batching, stop.clone(), abandon.clone()));
    // Watches the worker: one that panicked ends the consumer instead of leaving its partition
    // stopped while the group thinks it is owned.
    tokio::spawn(async move {
        if let Err(error) = work.await {
            let why = match error.try_into_panic() {
                Ok(panic) => crate::router::panic_message(panic.as_ref()),
                Err(error) => error.to_string(),
            };
            workers.worker_died(&slot, why);
        }
        let _ = finished.send(());
    });
    Worker { messages, share, held_back: None, stop, abandon, done }
}

/// Processes one partition's messages in order, storing each offset once it is finished.
async fn partition_worker(
    consumer: Arc<RouterConsumer>,
    pipeline: Arc<Pipeline>,
    mut messages: mpsc::Receiver<Charged>,
    batching: Batching,
    stop: CancellationToken,
    abandon: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            message = messages.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        // Whatever else is already waiting joins the batch: under load a partition's backlog is
        // written a batch per transaction; a lone message goes through at once, unless a linger
        // is configured, in which case the batch waits that long to fill.
        // Room for what is waiting, not for a full batch: most batches are small, and a full
        // batch's worth of slots per transaction showed in the allocator's profile.
        batch.reserve((messages.len() + 1).min(batching.max_messages));
        batch.push(first);
        let linger_until = tokio::time::Instant::now() + batching.linger;
        while batch.len() < batching.max_messages {
            match messages.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) if batching.linger.is_zero() => break,
                Err(_) => {
                    let more = tokio::select! {
                        biased;
                        _ = stop.cancelled() => None,
                        _ = tokio::time::sleep_until(linger_until) => None,
                        message = messages.recv() => message,
                    };
                    match more {
                        Some(message) => batch.push(message),
                        None => break,
                    }
                }
            }
        }
        let (topic, partition) = (batch[0].message.topic.clone(), batch[0].message.partition);
        let offsets: Vec<i64> = batch.iter().map(|m| m.message.offset).collect();
        // The charges are given back when the batch is finished, not when its messages move on.
        let (messages, charges): (Vec<RawMessage>, Vec<_>) =
            batch.drain(..).map(|Charged { message, charge, share, .. }| (message, (charge, share))).unzip();
        let finished = pipeline.process_batch(messages, &abandon).await;
        drop(charges);
        if let Some(&last) = finished.checked_sub(1).map(|i| &offsets[i]) {
            if let Err(error) = consumer.store_offset(&topic, partition, last) {
                // Only possible if the partition was revoked without this worker being stopped
                // first; its new owner reprocesses from the last commit, and the inbox makes that
                // a no-op for what was handled here.
                tracing::debug!(%error, %topic, partition, "offset not stored");
            }
        }
        if finished < offsets.len() {
            return; // abandoned: nothing after the last finished message may be stored
        }
    }
}

/// How long the final commit may wait for the broker.
const COMMIT_DEADLINE: Duration = Duration::from_secs(10);

/// Runs `work` on a thread of its own and waits for it at most `deadline`; `None` when the
/// deadline passed (or the thread died). For librdkafka calls that can wait without a bound:
/// they must neither hold up shutdown nor block a runtime thread.
async fn within_deadline<T: Send + 'static>(deadline: Duration, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    tokio::time::timeout(deadline, result).await.ok()?.ok()
}

/// Commits stored offsets, waiting at most `deadline`. librdkafka's synchronous commit waits
/// without a bound when no coordinator answers, so shutdown goes on without it after the
/// deadline (uncommitted messages are redelivered; the inbox makes that a no-op). Nothing new to
/// commit is not an error.
pub(crate) async fn commit_stored(consumer: Arc<RouterConsumer>, deadline: Duration) {
    match within_deadline(deadline, move || consumer.commit_consumer_state(CommitMode::Sync)).await {
        Some(Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
        Some(Err(error)) => tracing::warn!(%error, "final offset commit failed; the last messages may be redelivered"),
        None => {
            tracing::warn!(deadline_s = deadline.as_secs(), "final offset commit timed out; the last messages may be redelivered")
        }
    }
}

/// Leaves the group and destroys the consumer (when this is its last handle), waiting at most
/// `deadline`. Destroying it closes it, and the close can wait without a bound: rdkafka's
/// rebalance handling asks the group for its rebalance protocol with no timeout, and a closing
/// group may never answer (librdkafka issue 4041, rust-rdkafka issue 509). A clean-clone CI run
/// hung there, in a runtime thread, at the end of a test's graceful stop. Offsets are committed
/// before this; after the deadline shutdown goes on without the close.
pub(crate) async fn close(consumer: Arc<RouterConsumer>, deadline: Duration) {
    let closed = within_deadline(deadline, move || {
        consumer.unsubscribe();
        drop(consumer);
    })
    .await;
    if closed.is_none() {
        tracing::warn!(deadline_s = deadline.as_secs(), "closing the Kafka consumer timed out; shutting down without it");
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
