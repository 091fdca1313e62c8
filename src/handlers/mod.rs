//! One handler per topic, one file each. Adding a topic: drop its schema (with `examples`) into
//! `api/event/`, write `src/handlers/<key>.rs` implementing [`Handler`](crate::router::Handler)
//! for the generated payload type, declare its module and add one `register` line below, and add
//! its migration. A schema without a handler stops start-up. `scripts/check-new-topic.sh` keeps
//! this list honest.

pub mod cluster_install_progressed;
pub mod event_recorded;
pub mod host_status_changed;
pub mod todo_created;

use crate::router::Router;
use crate::topics::{ClusterInstallProgressed, EventRecorded, HostStatusChanged, TodoCreated};

/// The service's routing table.
pub fn router() -> Router {
    let mut router = Router::new();
    router
        .register::<TodoCreated>(todo_created::StoreTodo)
        .register::<HostStatusChanged>(host_status_changed::TrackHostStatus)
        .register::<ClusterInstallProgressed>(cluster_install_progressed::RecordProgress)
        .register::<EventRecorded>(event_recorded::RecordEvent);
    router
}
