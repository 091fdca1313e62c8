//! Group commit: runs that several partitions have ready at the same time, in one transaction.

use std::sync::Arc;

use super::open::Prepared;
use super::write::{Attempt, BatchWrite, Handled};

/// Writes that several partitions have ready at the same time, merged into one transaction.
///
/// A partition's batch holds only what that partition has waiting. At a steady load spread over
/// many partitions that is one message, so every message was a transaction of its own
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
pub(super) struct GroupCommit {
    queue: std::sync::Mutex<std::collections::VecDeque<GroupRequest>>,
    writers: tokio::sync::Semaphore,
}

pub(super) struct GroupRequest {
    run: Vec<Arc<Prepared>>,
    reply: tokio::sync::oneshot::Sender<Option<Vec<Handled>>>,
}

impl GroupCommit {
    /// Merged transactions in progress at once.
    const WRITERS: usize = 2;
    /// The most messages a writer takes into one transaction (it takes at least one run).
    const MAX_MESSAGES: usize = 512;
    /// The most bytes of messages (as received) a writer takes into one transaction (it takes at
    /// least one run). A transaction's statements are about that size again (the outbox row
    /// holds a stream event per message), and each database connection keeps a buffer as large
    /// as the largest statement it ever sent; unbounded, large messages would make every
    /// connection hold megabytes for good (bench/README.md, 21.).
    const MAX_BYTES: usize = 256 * 1024;

    pub(super) fn new() -> Self {
        GroupCommit { queue: Default::default(), writers: tokio::sync::Semaphore::new(Self::WRITERS) }
    }

    /// Writes `run` merged with the other runs waiting. `None`: not written; write it alone.
    pub(super) async fn write(&self, attempt: &Attempt<'_>, run: Vec<Arc<Prepared>>) -> Option<Vec<Handled>> {
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

    /// Takes queued runs, oldest first, up to [`GroupCommit::MAX_MESSAGES`] and
    /// [`GroupCommit::MAX_BYTES`].
    fn take(&self) -> Vec<GroupRequest> {
        let mut queue = self.queue.lock().expect("group commit queue");
        let mut taken: Vec<GroupRequest> = Vec::new();
        let (mut messages, mut bytes) = (0, 0);
        while let Some(next) = queue.front() {
            let next_bytes: usize = next.run.iter().map(|p| p.message.size()).sum();
            if !taken.is_empty() && (messages + next.run.len() > Self::MAX_MESSAGES || bytes + next_bytes > Self::MAX_BYTES) {
                break;
            }
            messages += next.run.len();
            bytes += next_bytes;
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
