//! A client of the events API: what `event-router events list | watch | wait` talk through.
//!
//! Plain HTTP/1.1 over hyper, the same stack the server uses, so the CLI adds no HTTP library.
//! The feed is read as it arrives and parsed as Server-Sent Events; a dropped connection is
//! resumed with `Last-Event-ID`, so `watch` and `wait` see every event once.

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::envelope::{IDENTITY_HEADER, REQUEST_ID_HEADER};

/// Why a call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not a URL such as http://127.0.0.1:8000")]
    BadUrl(String),
    #[error("the events API at {url} cannot be reached: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("the events API answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("reading the events API's answer failed: {0}")]
    Read(String),
}

/// A page of events and the totals the API counted.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<Value>,
    /// `Event-Count`.
    pub total: u64,
}

/// One event of the feed: its id and its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub id: i64,
    pub event: Value,
}

/// Talks to one API address as one identity.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    identity: String,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl ApiClient {
    /// `base` such as `http://127.0.0.1:8000`; `identity` is the `x-rh-identity` value.
    pub fn new(base: &str, identity: String) -> Result<ApiClient, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") || base.parse::<hyper::Uri>().is_err() {
            return Err(ClientError::BadUrl(base));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Ok(ApiClient { base, identity, http: Client::builder(TokioExecutor::new()).build(connector) })
    }

    async fn get(
        &self,
        path_and_query: &str,
        last_event_id: Option<i64>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let url = format!("{}{}{path_and_query}", self.base, super::BASE_PATH);
        let mut request = Request::get(&url)
            .header(IDENTITY_HEADER, &self.identity)
            .header(REQUEST_ID_HEADER, uuid::Uuid::new_v4().to_string());
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let request = request.body(Empty::new()).map_err(|_| ClientError::BadUrl(url.clone()))?;
        let response =
            self.http.request(request).await.map_err(|source| ClientError::Unreachable { url: self.base.clone(), source })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v["message"].as_str().map(|m| match v["parameter"].as_str() {
                    Some(parameter) => format!("{parameter}: {m}"),
                    None => m.to_owned(),
                })
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        Err(ClientError::Refused { status, message })
    }

    /// `GET /events?<query>` (`query` already encoded, without `?`).
    pub async fn list(&self, query: &str) -> Result<Page, ClientError> {
        let response = self.get(&format!("/events?{query}"), None).await?;
        let total = response
            .headers()
            .get(super::EVENT_COUNT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        let body = response.into_body().collect().await.map_err(|e| ClientError::Read(e.to_string()))?.to_bytes();
        let events = serde_json::from_slice(&body).map_err(|e| ClientError::Read(e.to_string()))?;
        Ok(Page { events, total })
    }

    /// `GET /state`.
    pub async fn state(&self) -> Result<Value, ClientError> {
        let response = self.get("/state", None).await?;
        let body = response.into_body().collect().await.map_err(|e| ClientError::Read(e.to_string()))?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| ClientError::Read(e.to_string()))
    }

    /// Opens the feed (`query` as for [`ApiClient::list`]), after event `last_event_id` if given.
    pub async fn feed(&self, query: &str, last_event_id: Option<i64>) -> Result<Feed, ClientError> {
        let response = self.get(&format!("/events/feed?{query}"), last_event_id).await?;
        Ok(Feed { body: response.into_body(), buffer: Vec::new(), last_id: last_event_id })
    }
}

/// An open feed.
pub struct Feed {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    /// The id of the last event read, to resume after.
    pub last_id: Option<i64>,
}

impl Feed {
    /// The next event; `None` when the server closed the feed.
    pub async fn next(&mut self) -> Result<Option<FeedEvent>, ClientError> {
        loop {
            if let Some(end) = find_blank_line(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end.1).collect();
                if let Some(event) = parse_block(&block[..end.0]) {
                    self.last_id = Some(event.id);
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(error)) => return Err(ClientError::Read(error.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Where the first SSE block of `buffer` ends: (end of its text, end including the blank line).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|at| (at, at + 2))
}

/// An SSE block with an `id` and JSON `data` (comments and heartbeats are not events).
fn parse_block(block: &[u8]) -> Option<FeedEvent> {
    let text = std::str::from_utf8(block).ok()?;
    let (mut id, mut data) = (None, String::new());
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    Some(FeedEvent { id: id?, event: serde_json::from_str(&data).ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_are_events_and_comments_are_not() {
        assert_eq!(
            parse_block(b"id: 7\nevent: event\ndata: {\"a\":1}"),
            Some(FeedEvent { id: 7, event: serde_json::json!({"a": 1}) })
        );
        assert_eq!(parse_block(b": heartbeat"), None);
        assert_eq!(parse_block(b"id: x\ndata: {}"), None);
        assert_eq!(find_blank_line(b"id: 1\ndata: {}\n\nid: 2"), Some((14, 16)));
    }
}
