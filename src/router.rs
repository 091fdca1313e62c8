//! Maps a topic to its handler and calls it with the typed payload.
//!
//! Registration is one line, typed by the generated payload:
//! `router.register::<TodoCreated>(todo_created::Handler)` compiles only when the handler
//! implements [`Handler<TodoCreated>`]. The router is built once at start-up and then checked
//! against the registry, so a schema without a handler stops the service before the first message
//! instead of dead-lettering every message of that topic.
//!
//! The compiler enforces the schema. This handler for `todo-created` compiles:
//!
//! ```
//! use event_router::router::{Context, Handler, HandlerError, Router};
//! use event_router::store::Tx;
//! use event_router::topics::TodoCreated;
//!
//! struct CountTitle;
//! impl Handler<TodoCreated> for CountTitle {
//!     async fn handle(&self, todo: TodoCreated, _: &Context, _: &mut Tx) -> Result<(), HandlerError> {
//!         let _chars = todo.title.chars().count();
//!         Ok(())
//!     }
//! }
//! Router::new().register::<TodoCreated>(CountTitle);
//! ```
//!
//! Registering it for another topic does not:
//!
//! ```compile_fail,E0277
//! # use event_router::router::{Context, Handler, HandlerError, Router};
//! # use event_router::store::Tx;
//! # use event_router::topics::{HostStatusChanged, TodoCreated};
//! # struct CountTitle;
//! # impl Handler<TodoCreated> for CountTitle {
//! #     async fn handle(&self, todo: TodoCreated, _: &Context, _: &mut Tx) -> Result<(), HandlerError> { Ok(()) }
//! # }
//! Router::new().register::<HostStatusChanged>(CountTitle);
//! ```
//!
//! and neither does reading a field the schema does not have:
//!
//! ```compile_fail,E0609
//! # use event_router::router::{Context, Handler, HandlerError};
//! # use event_router::store::Tx;
//! # use event_router::topics::TodoCreated;
//! # struct CountTitle;
//! impl Handler<TodoCreated> for CountTitle {
//!     async fn handle(&self, todo: TodoCreated, _: &Context, _: &mut Tx) -> Result<(), HandlerError> {
//!         let _chars = todo.headline.chars().count();
//!         Ok(())
//!     }
//! }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt as _;
use serde_json::Value;

use crate::envelope::{Identity, Reason, Rejection};
use crate::error::ErrorChain;
use crate::events::{CatalogEvent, Emissions};
use crate::store::Tx;
use crate::topics::{Topic, REGISTRY};

/// What a handler knows about the message besides its payload, and where it emits events.
#[derive(Debug)]
pub struct Context {
    /// Shared with the message and every other of its topic.
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    /// Shared with the other messages that carried the same `x-rh-identity` header.
    pub identity: Arc<Identity>,
    pub request_id: String,
    /// Events emitted while handling this message, waiting for its transaction.
    pub(crate) emitted: std::sync::Mutex<Emissions>,
}

impl Context {
    /// Records `event` (one of [`crate::events::catalog`]) as a consequence of this message. It
    /// is written in the handler's transaction when that commits, and only then: a batch that is
    /// rolled back and handled again emits its events once. A message causes at most
    /// [`crate::events::MAX_PER_MESSAGE`] events; the rest are counted and logged.
    pub fn emit<E: CatalogEvent>(&self, event: E) {
        self.emitted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(&event);
    }

    /// Records an event that arrived as data, checked against the catalog
    /// ([`crate::events::EventDefinition::instantiate`]): the recorder's ingest topic.
    pub fn emit_checked(&self, event: crate::events::Emitted) {
        self.emitted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_emitted(event);
    }

    /// The events emitted so far, leaving none.
    pub(crate) fn take_emitted(&self) -> Emissions {
        std::mem::take(&mut *self.emitted.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The identity's org id, which every sample table records.
    pub fn org_id(&self) -> Option<&str> {
        self.identity.org_id.as_deref()
    }
}

/// Why a handler did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The message is valid by schema but not acceptable (e.g. a todo id already taken).
    /// Dead-lettered with the handler's reason code; never retried.
    #[error("{code}: {message}")]
    Rejected { code: &'static str, message: String },
    /// The handler cannot finish now but may later (e.g. something it depends on has not
    /// arrived yet). Retried with backoff up to `HANDLER_MAX_ATTEMPTS` attempts, then
    /// dead-lettered with this code.
    #[error("{code} (retryable): {message}")]
    Retryable { code: &'static str, message: String },
    /// Something outside the message failed (database, network); the message is retried.
    #[error("transient failure: {0}")]
    Transient(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Refused with this very rejection, decided by the router rather than by a handler: the
    /// handler panicked, the payload did not fit its generated type, the topic has no handler.
    #[error("{0}")]
    Refused(Rejection),
}

impl HandlerError {
    pub fn rejected(code: &'static str, message: impl Into<String>) -> Self {
        HandlerError::Rejected { code, message: message.into() }
    }

    pub fn retryable(code: &'static str, message: impl Into<String>) -> Self {
        HandlerError::Retryable { code, message: message.into() }
    }

    /// What a message of `topic` is dead-lettered with for this error. (A transient failure is
    /// retried until it passes, never dead-lettered; its rejection exists only for completeness.)
    pub(crate) fn into_rejection(self, topic: &str) -> Rejection {
        match self {
            HandlerError::Rejected { code, message } | HandlerError::Retryable { code, message } => {
                Rejection::new(Reason::Handler(code), format!("topic {topic}: {message}"))
            }
            HandlerError::Refused(rejection) => rejection,
            HandlerError::Transient(error) => {
                Rejection::new(Reason::Handler("transient_failure"), format!("topic {topic}: {}", ErrorChain(&*error)))
            }
        }
    }
}

/// A database error is retried unless it is about the data itself (constraint, bad value), in
/// which case retrying would block the partition forever: that is dead-lettered.
impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        if crate::store::is_data_error(&error) {
            HandlerError::Rejected {
                code: Reason::DatabaseRejected.code(),
                message: format!("the database refused the data: {error}"),
            }
        } else {
            HandlerError::Transient(error.into())
        }
    }
}

/// A topic's handler. It sees the typed payload, the context and the transaction its writes
/// belong to; it never touches Kafka.
pub trait Handler<T: Topic>: Send + Sync + 'static {
    /// Every reason code this handler may reject with, so that metrics carry a zero for each
    /// from the first scrape. A code not listed here still works; its series appears on first use.
    const REASONS: &'static [&'static str] = &[];

    fn handle(&self, event: T, ctx: &Context, tx: &mut Tx) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Handles consecutive events of one partition, in order, in one transaction. The default
    /// calls [`handle`](Handler::handle) for each, a round trip per event; under a backlog that
    /// round trip is what limits throughput, so a handler may override this with set-based
    /// statements (and let `handle` call it with one event, so there is one code path).
    ///
    /// The effects must be those of calling `handle` for each event in order. On failure, name the
    /// *first* event that failed: the pipeline rolls the transaction back, commits the events
    /// before it and retries that one alone. An error that cannot be pinned on one event (a set
    /// statement the database refused) is named with [`BatchError::unattributed`], which names
    /// the first event: it is retried alone, then the rest as a batch again.
    fn handle_batch<'a>(
        &'a self,
        events: Vec<(T, &'a Context)>,
        tx: &'a mut Tx,
    ) -> impl Future<Output = Result<(), BatchError>> + Send + 'a {
        async move {
            for (index, (event, ctx)) in events.into_iter().enumerate() {
                self.handle(event, ctx, tx).await.map_err(|error| BatchError { index, error })?;
            }
            Ok(())
        }
    }
}

/// Why [`Handler::handle_batch`] did not complete: the first event that failed, and why.
#[derive(Debug)]
pub struct BatchError {
    /// Index into the batch.
    pub index: usize,
    pub error: HandlerError,
}

impl BatchError {
    pub fn at(index: usize, error: HandlerError) -> Self {
        BatchError { index, error }
    }

    /// A failure of the batch as a whole, pinned on its first event.
    pub fn unattributed(error: impl Into<HandlerError>) -> Self {
        BatchError { index: 0, error: error.into() }
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        BatchError::unattributed(error)
    }
}

trait ErasedHandler: Send + Sync {
    fn call<'a>(&'a self, events: &'a [(&'a Value, &'a Context)], tx: &'a mut Tx) -> BoxFuture<'a, Result<(), BatchError>>;
}

struct Typed<T, H> {
    handler: H,
    _topic: PhantomData<fn() -> T>,
}

impl<T: Topic, H: Handler<T>> ErasedHandler for Typed<T, H> {
    fn call<'a>(&'a self, events: &'a [(&'a Value, &'a Context)], tx: &'a mut Tx) -> BoxFuture<'a, Result<(), BatchError>> {
        Box::pin(async move {
            let mut typed = Vec::with_capacity(events.len());
            for (index, (payload, ctx)) in events.iter().enumerate() {
                // Schema-valid but not typeable means the schema and the generated type disagree.
                let event = T::deserialize(*payload).map_err(|e| {
                    let rejection = Rejection::new(
                        Reason::PayloadTypeMismatch,
                        format!("topic {}: the payload passed its schema but not its type: {e}", ctx.topic),
                    );
                    BatchError { index, error: HandlerError::Refused(rejection) }
                })?;
                typed.push((event, *ctx));
            }
            // A handler that panics is a bug in the handler, triggered by this input: the
            // message is dead-lettered (`handler_panicked`) instead of the panic taking the
            // partition's worker, and with it the consumer, down on every redelivery.
            let handled = std::panic::AssertUnwindSafe(self.handler.handle_batch(typed, tx)).catch_unwind().await;
            let handled = handled.unwrap_or_else(|panic| {
                let rejection = Rejection::new(
                    Reason::HandlerPanicked,
                    format!("topic {}: the handler panicked: {}", events[0].1.topic, panic_message(panic.as_ref())),
                );
                Err(BatchError { index: 0, error: HandlerError::Refused(rejection) })
            });
            // An index past the run (a handler's mistake) names its last message.
            handled.map_err(|BatchError { index, error }| BatchError { index: index.min(events.len() - 1), error })
        })
    }
}

/// The text a panic carried, if any.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn declared_reasons<T: Topic, H: Handler<T>>(_: &H) -> &'static [&'static str] {
    H::REASONS
}

/// A schema in `api/event/` that has no registered handler.
#[derive(Debug, thiserror::Error)]
#[error("topic `{0}` has a schema (api/event/{0}.event.json) but no handler: register one in src/handlers/mod.rs")]
pub struct MissingHandler(pub &'static str);

/// Topic key → handler.
#[derive(Default)]
pub struct Router {
    handlers: HashMap<&'static str, Box<dyn ErasedHandler>>,
    reasons: HashMap<&'static str, &'static [&'static str]>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler for topic `T`. A second registration for the same topic replaces
    /// the first.
    pub fn register<T: Topic>(&mut self, handler: impl Handler<T>) -> &mut Self {
        self.reasons.insert(T::KEY, declared_reasons(&handler));
        self.handlers.insert(T::KEY, Box::new(Typed::<T, _> { handler, _topic: PhantomData }));
        self
    }

    /// The reason codes the handler of topic key `key` declared.
    pub fn reasons(&self, key: &str) -> &'static [&'static str] {
        self.reasons.get(key).copied().unwrap_or_default()
    }

    /// Fails when any schema in the registry has no handler.
    pub(crate) fn check_complete(&self) -> Result<(), MissingHandler> {
        match REGISTRY.iter().find(|t| !self.handlers.contains_key(t.key)) {
            Some(missing) => Err(MissingHandler(missing.key)),
            None => Ok(()),
        }
    }

    /// Calls the handler registered for topic key `key` with `events` (payload and context), in
    /// order, in one transaction. On failure: the index of the first event that failed, and why,
    /// as the handler said it (the one error type from the handler to the write's outcome).
    pub async fn dispatch(&self, key: &str, events: &[(&Value, &Context)], tx: &mut Tx) -> Result<(), BatchError> {
        if events.is_empty() {
            return Ok(());
        }
        match self.handlers.get(key) {
            Some(handler) => handler.call(events, tx).await,
            None => {
                let rejection = Rejection::new(Reason::UnknownTopic, format!("topic {} has no handler", events[0].1.topic));
                Err(BatchError { index: 0, error: HandlerError::Refused(rejection) })
            }
        }
    }
}
