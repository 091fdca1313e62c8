//! Turns `api/event/*.event.json` into Rust types and the topic registry, and `api/events.yaml`
//! into one type per catalog event (see `internal/event-codegen`).
fn main() {
    // `sqlx::migrate!` embeds `migrations/` at compile time but cannot tell cargo to look there on
    // stable Rust: without this, a new migration is left out until something else changes.
    println!("cargo:rerun-if-changed=migrations");
    event_codegen::build_script(std::path::Path::new("api/event"));
    event_codegen::build_catalog(std::path::Path::new("api/events.yaml"));
}
