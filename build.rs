//! Turns `api/event/*.event.json` into Rust types and the topic registry (see `internal/event-codegen`).
fn main() {
    event_codegen::build_script(std::path::Path::new("api/event"));
}
