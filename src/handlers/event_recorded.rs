//! `event-recorded`: catalog events other services record through the recorder
//! (`producer::Recorder`, `event-router record`). Each is checked against the catalog as a
//! generated type would be: an unknown name is dead-lettered `event_unknown`, a missing, unknown
//! or mistyped property `event_properties_invalid`; a good one is stored like a handler's own
//! event, deduplication window and stream included, with who recorded it among its properties.

use serde_json::Value;

use crate::events::EventDefinition;
use crate::router::{Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::EventRecorded;

pub(crate) struct RecordEvent;

impl Handler<EventRecorded> for RecordEvent {
    const REASONS: &'static [&'static str] = &["event_unknown", "event_properties_invalid"];

    async fn handle(&self, recorded: EventRecorded, ctx: &Context, _: &mut Tx) -> Result<(), HandlerError> {
        let Some(definition) = EventDefinition::find(recorded.name.as_str()) else {
            let shown: String = recorded.name.chars().take(128).flat_map(char::escape_default).collect();
            return Err(HandlerError::rejected("event_unknown", format!("no event `{shown}` in api/events.yaml")));
        };
        let mut event = definition
            .instantiate(&recorded.properties)
            .map_err(|problem| HandlerError::rejected("event_properties_invalid", problem))?;
        if let Value::Object(properties) = &mut event.properties {
            properties.insert(
                "recorded_by".into(),
                serde_json::json!({"component": recorded.source.component.as_str(), "node": recorded.source.node.as_str()}),
            );
        }
        ctx.emit_checked(event);
        Ok(())
    }
}
