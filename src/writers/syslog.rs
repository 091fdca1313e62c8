//! The syslog writer: each event as an RFC 5424 message, to `SYSLOG_ADDR`.
//!
//! ```text
//! <PRI>1 2026-11-23T10:00:00.000Z host event-router 4242 host_failed [event@32473 id="42" org_id="12345"
//!   request_id="r-1" host_id="..." infra_env_id="..."] Host worker-7: moved from known to error: ...
//! ```
//!
//! PRI is the facility (`SYSLOG_FACILITY`, default `local0`) times 8 plus the event's severity:
//! critical 2, error 3, warning 4, info 6. MSGID is the event name; the structured data
//! `event@32473` (32473 is the enterprise number RFC 5612 reserves for examples) carries the
//! event id, org id, request id and entity ids, escaped as RFC 5424 §6.3.3 says; MSG is the
//! rendered message.
//!
//! Transports: `udp://host:port` (one datagram per event; an event over [`MAX_DATAGRAM`] bytes is
//! cut at a UTF-8 boundary and ends with `[truncated]`), `tcp://host:port` (RFC 6587 octet
//! counting: `LEN SP MESSAGE`; one connection, made again after a failure, the dispatcher backing
//! off and handing the batch over again), and `unix:///dev/log` (a datagram socket).
//!
//! Written here rather than with the `syslog` crate: that crate frames TCP with newlines, not
//! octet counting, writes through a blocking logger, and leaves structured-data escaping to the
//! caller; the format itself is a line of this file.

use std::fmt::Write as _;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};
use tokio::sync::Mutex;

use super::{WriterError, WrittenEvent};

/// The largest datagram sent; the message is cut to fit.
pub const MAX_DATAGRAM: usize = 8 * 1024;
/// What ends a message that was cut to fit a datagram.
pub const TRUNCATED: &str = " [truncated]";
/// The structured-data id of the event's fields.
pub const SD_ID: &str = "event@32473";

/// Where the messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddr {
    Udp(String),
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl SyslogAddr {
    /// `udp://host:port`, `tcp://host:port` or `unix:///path`.
    pub fn parse(text: &str) -> Result<SyslogAddr, String> {
        let bad = || format!("`{}` is not udp://host:port, tcp://host:port or unix:///path", text.escape_default());
        if let Some(path) = text.strip_prefix("unix://") {
            return if path.starts_with('/') { Ok(SyslogAddr::Unix(path.into())) } else { Err(bad()) };
        }
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) || rest.contains('/') {
            return Err(bad());
        }
        match scheme {
            "udp" => Ok(SyslogAddr::Udp(rest.to_owned())),
            "tcp" => Ok(SyslogAddr::Tcp(rest.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// The facility from its name (`local0`…`local7`, `user`, `daemon`, …) or number (0–23).
pub fn parse_facility(text: &str) -> Result<u8, String> {
    const NAMES: [&str; 24] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "ntp", "audit",
        "alert", "clock", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
    ];
    NAMES
        .iter()
        .position(|name| *name == text)
        .map(|code| code as u8)
        .or_else(|| text.parse::<u8>().ok().filter(|code| *code < 24))
        .ok_or_else(|| format!("`{}` is not a facility (local0 to local7, user, daemon, ... or 0 to 23)", text.escape_default()))
}

/// The syslog severity of an event's severity.
fn syslog_severity(severity: &str) -> u8 {
    match severity {
        "critical" => 2,
        "error" => 3,
        "warning" => 4,
        _ => 6,
    }
}

/// `text` as a header field: printable ASCII without spaces, at most `max` characters; `-` when
/// nothing is left.
fn header_field(text: &str, max: usize) -> String {
    let field: String = text.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if field.is_empty() {
        "-".into()
    } else {
        field
    }
}

/// A structured-data parameter value, escaped (RFC 5424 §6.3.3: `"`, `\` and `]`).
fn escape_param(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The RFC 5424 message of `event`.
pub fn format(event: &WrittenEvent, facility: u8, hostname: &str, pid: u32) -> String {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(&event.severity));
    let mut line = format!(
        "<{pri}>1 {} {} event-router {pid} {} [{SD_ID} id=\"{}\"",
        event.event_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        header_field(hostname, 255),
        header_field(&event.name, 32),
        event.id,
    );
    let params = [
        ("org_id", event.org_id.clone()),
        ("request_id", Some(event.request_id.clone())),
        ("cluster_id", event.cluster_id.map(|id| id.to_string())),
        ("host_id", event.host_id.map(|id| id.to_string())),
        ("infra_env_id", event.infra_env_id.map(|id| id.to_string())),
    ];
    for (name, value) in params {
        if let Some(value) = value {
            let _ = write!(line, " {name}=\"{}\"", escape_param(&value));
        }
    }
    line.push_str("] ");
    line.push_str(&event.message);
    line
}

/// `message` cut at a UTF-8 boundary to fit `max` bytes, ending with [`TRUNCATED`] if it was cut.
pub fn fit(message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let mut end = max.saturating_sub(TRUNCATED.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &message[..end])
}

enum Transport {
    Udp(UdpSocket),
    Tcp(Option<TcpStream>),
    Unix(UnixDatagram),
}

/// The syslog writer.
pub struct SyslogWriter {
    addr: SyslogAddr,
    facility: u8,
    hostname: String,
    transport: Mutex<Option<Transport>>,
}

impl SyslogWriter {
    pub fn new(addr: SyslogAddr, facility: u8) -> SyslogWriter {
        let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "-".into());
        SyslogWriter { addr, facility, hostname, transport: Mutex::new(None) }
    }

    async fn connect(&self) -> std::io::Result<Transport> {
        match &self.addr {
            SyslogAddr::Udp(target) => {
                let socket = UdpSocket::bind("0.0.0.0:0").await?;
                socket.connect(target).await?;
                Ok(Transport::Udp(socket))
            }
            SyslogAddr::Tcp(target) => {
                let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target))
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting took over 5 s"))??;
                stream.set_nodelay(true)?;
                Ok(Transport::Tcp(Some(stream)))
            }
            SyslogAddr::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                socket.connect(path)?;
                Ok(Transport::Unix(socket))
            }
        }
    }

    async fn send_all(&self, events: &[WrittenEvent]) -> std::io::Result<()> {
        let mut guard = self.transport.lock().await;
        // A TCP peer that closed its side (a restarted receiver) is noticed before writing: a
        // write into a closed connection can succeed locally and be lost.
        if let Some(Transport::Tcp(Some(stream))) = guard.as_ref() {
            let mut probe = [0u8; 1];
            let closed = match stream.try_read(&mut probe) {
                Ok(0) => true,
                // A receiver does not talk back; whatever it sent is not ours to read.
                Ok(_) => false,
                Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
            };
            if closed {
                *guard = None;
            }
        }
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        let pid = std::process::id();
        let result = async {
            match guard.as_mut() {
                Some(Transport::Udp(socket)) => {
                    for event in events {
                        socket.send(fit(format(event, self.facility, &self.hostname, pid), MAX_DATAGRAM).as_bytes()).await?;
                    }
                }
                Some(Transport::Unix(socket)) => {
                    for event in events {
                        socket.send(fit(format(event, self.facility, &self.hostname, pid), MAX_DATAGRAM).as_bytes()).await?;
                    }
                }
                Some(Transport::Tcp(Some(stream))) => {
                    let mut frames = Vec::new();
                    for event in events {
                        let message = format(event, self.facility, &self.hostname, pid);
                        frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
                        frames.extend_from_slice(message.as_bytes());
                    }
                    stream.write_all(&frames).await?;
                    stream.flush().await?;
                }
                Some(Transport::Tcp(None)) | None => {}
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        if result.is_err() {
            *guard = None;
        }
        result
    }
}

impl super::Writer for SyslogWriter {
    fn name(&self) -> &str {
        "syslog"
    }

    fn deliver<'a>(&'a self, events: &'a [WrittenEvent]) -> BoxFuture<'a, Result<(), WriterError>> {
        async move { self.send_all(events).await.map_err(|error| WriterError(format!("syslog {:?}: {error}", self.addr))) }
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn event() -> WrittenEvent {
        WrittenEvent {
            id: 42,
            tx_id: 7,
            name: "host_failed".into(),
            severity: "error".into(),
            message: "Host w\u{e9}: \"broken\" ]".into(),
            event_time: chrono::Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
            cluster_id: None,
            host_id: Some(uuid::Uuid::from_u128(1)),
            infra_env_id: Some(uuid::Uuid::from_u128(2)),
            properties: sqlx::types::Json(serde_json::json!({})),
            org_id: Some("org \"x\" ]\\".into()),
            request_id: "r-1".into(),
        }
    }

    #[test]
    fn an_event_is_one_rfc5424_line_with_escaped_structured_data() {
        let line = format(&event(), 16, "node 1", 99);
        assert_eq!(
            line,
            "<131>1 2026-11-23T10:00:00.000Z node1 event-router 99 host_failed [event@32473 id=\"42\" \
             org_id=\"org \\\"x\\\" \\]\\\\\" request_id=\"r-1\" host_id=\"00000000-0000-0000-0000-000000000001\" \
             infra_env_id=\"00000000-0000-0000-0000-000000000002\"] Host w\u{e9}: \"broken\" ]"
        );
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary_and_says_so() {
        let long = "é".repeat(MAX_DATAGRAM);
        let cut = fit(long, MAX_DATAGRAM);
        assert!(cut.len() <= MAX_DATAGRAM && cut.ends_with(TRUNCATED));
        assert_eq!(fit("short".into(), MAX_DATAGRAM), "short");
    }

    #[tokio::test]
    async fn a_unix_socket_gets_the_line_and_a_datagram_too_large_is_cut() {
        use super::super::Writer as _;
        let path = std::env::temp_dir().join(format!("syslog-{}.sock", uuid::Uuid::new_v4().simple()));
        let receiver = UnixDatagram::bind(&path).unwrap();
        let writer = SyslogWriter::new(SyslogAddr::Unix(path.clone()), 16);
        writer.deliver(&[event()]).await.unwrap();
        let mut buffer = vec![0u8; 65536];
        let size = receiver.recv(&mut buffer).await.unwrap();
        assert_eq!(std::str::from_utf8(&buffer[..size]).unwrap(), format(&event(), 16, &writer.hostname, std::process::id()));

        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let writer = SyslogWriter::new(SyslogAddr::Udp(udp.local_addr().unwrap().to_string()), 16);
        let mut long = event();
        long.message = "é".repeat(10_000);
        writer.deliver(&[long]).await.unwrap();
        let size = udp.recv(&mut buffer).await.unwrap();
        let text = std::str::from_utf8(&buffer[..size]).expect("cut at a character boundary");
        assert!(size <= MAX_DATAGRAM && text.ends_with(TRUNCATED), "{size} bytes");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn addresses_and_facilities_are_read_strictly() {
        assert_eq!(SyslogAddr::parse("udp://127.0.0.1:514"), Ok(SyslogAddr::Udp("127.0.0.1:514".into())));
        assert_eq!(SyslogAddr::parse("tcp://logs.example.com:6514"), Ok(SyslogAddr::Tcp("logs.example.com:6514".into())));
        assert_eq!(SyslogAddr::parse("unix:///dev/log"), Ok(SyslogAddr::Unix("/dev/log".into())));
        for bad in ["127.0.0.1:514", "http://x:1", "udp://:514", "tcp://x:0", "tcp://x:99999", "unix://dev/log", "udp://x:1/path"]
        {
            assert!(SyslogAddr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!((parse_facility("local0"), parse_facility("3"), parse_facility("user")), (Ok(16), Ok(3), Ok(1)));
        assert!(parse_facility("local9").is_err() && parse_facility("24").is_err());
    }
}
