//! The events of `api/events.yaml`, one type each, generated at build time.
//!
//! Emitting `HostStatusUpdated { host_id, infra_env_id, .. }` is the only way to record a
//! `host_status_updated` event, so an event missing from the catalog, or one without a required
//! property, does not compile. [`CATALOG`] lists every event (for metrics and readers).

include!(concat!(env!("OUT_DIR"), "/events.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CatalogEvent, Entity, Severity};

    #[test]
    fn a_generated_event_renders_its_template_and_carries_its_ids() {
        let host_id = uuid::Uuid::from_u128(1);
        let infra_env_id = uuid::Uuid::from_u128(2);
        let event = HostValidationFailed {
            host_id,
            infra_env_id,
            cluster_id: None,
            host_name: "worker-0".into(),
            validation_id: "ntp-synced".into(),
            validation_message: "Host clock is not synchronized".into(),
        };
        assert_eq!(event.message(), "Host worker-0: validation 'ntp-synced' is now failing: Host clock is not synchronized");
        assert_eq!(HostValidationFailed::SEVERITY, Severity::Warning);
        assert_eq!(event.entity(), Entity { cluster_id: None, host_id: Some(host_id), infra_env_id: Some(infra_env_id) });
        let properties = serde_json::to_value(&event).unwrap();
        assert!(properties.get("cluster_id").is_none(), "an absent optional property is left out: {properties}");
        assert_eq!(properties["validation_id"], "ntp-synced");
    }

    #[test]
    fn the_catalog_lists_every_event_once() {
        let names: std::collections::HashSet<_> = CATALOG.iter().map(|e| e.name).collect();
        assert_eq!(names.len(), CATALOG.len());
        assert!(names.contains("cluster_install_failed"));
        assert_eq!(crate::events::EventDefinition::find("cluster_install_failed").map(|e| e.severity), Some(Severity::Critical));
    }
}
