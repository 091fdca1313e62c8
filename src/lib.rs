pub mod config;
pub mod envelope;
pub mod message;
pub mod samples;
pub mod topics;
