//! Turns `api/event/*.event.json` into Rust types and the topic registry, and `api/events.yaml`
//! into one type per catalog event (see `internal/event-codegen`).
fn main() {
    event_codegen::build_script(std::path::Path::new("api/event"));
    event_codegen::build_catalog(std::path::Path::new("api/events.yaml"));
}
