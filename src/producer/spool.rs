//! The producer's spool: messages Kafka could not take, kept on disk until they are delivered.
//!
//! A directory (`PRODUCER_SPOOL_DIR`) holds one log file of records and a small head file
//! saying where the first undelivered record is. Appending writes a record and syncs it before
//! the caller hears "spooled"; a re-sender reads records from the head, in order (so each key's
//! order is kept), and moves the head past them only after Kafka acknowledged them.
//!
//! - A record is `length (u32 LE) | CRC-32C of the body (u32 LE) | body` (the message in
//!   postcard). Opening reads every record after the head; a record that is cut short or whose
//!   checksum fails is the torn tail of a write a crash interrupted: the file is cut back to the
//!   last good record, which is kept, and the loss of the torn one is logged (its caller never
//!   heard "spooled").
//! - The head file (`head`, written to a temporary file, synced and renamed over) names the log
//!   file's generation and the offset; when everything is delivered, a new empty generation
//!   starts and the old file goes. A crash between any two of those steps leaves either the old
//!   state or the new one.
//! - The records not yet delivered are bounded (`PRODUCER_SPOOL_MAX_BYTES`): an append that
//!   would pass the bound fails with [`SpoolError::Full`], and nothing is dropped.
//! - One process at a time: the directory's lock file is locked for as long as the spool is
//!   open; a second process gets [`SpoolError::InUse`].
//!
//! Written here rather than with a crate: the file queues on crates.io either keep their
//! position in the same file they append to (Tape's QueueFile and its ports), with no checksum
//! to tell a torn tail from data, or are embedded databases far larger than two files need.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// CRC-32C (Castagnoli), as iSCSI and ext4 use it.
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// A record's header: length and checksum.
const RECORD_HEADER: u64 = 8;
/// The largest body a record may have: a message plus its headers.
const MAX_RECORD: u32 = 16 * 1024 * 1024;

/// A message waiting in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpooledMessage {
    pub topic: String,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub headers: Vec<(String, Option<serde_bytes::ByteBuf>)>,
    /// When it was spooled, in milliseconds since the epoch.
    pub spooled_at_ms: i64,
}

/// Why the spool could not take or give a message.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool in {dir} is in use by another process (its lock file is locked)")]
    InUse { dir: String },
    #[error("the spool in {dir} is full: {pending} bytes wait to be delivered and the limit is {max} (PRODUCER_SPOOL_MAX_BYTES); nothing was dropped")]
    Full { dir: String, pending: u64, max: u64 },
    #[error("a message of {0} bytes is too large for the spool")]
    TooLarge(usize),
    #[error("the spool in {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the first undelivered record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    generation: u64,
    offset: u64,
}

/// An open spool directory.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    _lock: File,
    head: Head,
    log: File,
    /// The log's length: where the next record goes.
    end: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, bounded to `max_bytes` of undelivered records.
    /// A torn or corrupt tail is cut off here, keeping every record before it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io { dir: dir.display().to_string(), source };
        fs::create_dir_all(dir).map_err(io)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).map_err(io)?;
        if lock.try_lock().is_err() {
            return Err(SpoolError::InUse { dir: dir.display().to_string() });
        }
        let head = read_head(dir).map_err(io)?;
        // Logs of other generations are leftovers of a crash during a change of generation.
        for entry in fs::read_dir(dir).map_err(io)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("log-") && name != log_name(head.generation) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let path = dir.join(log_name(head.generation));
        let log = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        let length = log.metadata().map_err(io)?.len();
        let mut spool = Spool { dir: dir.to_path_buf(), max_bytes, _lock: lock, head, log, end: length };
        if spool.head.offset > length {
            // The log was cut and the crash came before the head was reset.
            spool.head.offset = length;
        }
        let good_end = spool.scan_from_head().map_err(io)?;
        if good_end < length {
            tracing::warn!(
                dir = %dir.display(), kept_until = good_end, length,
                "the spool's last record was torn or corrupt (a crash during a write); cut back to the last good record"
            );
            spool.log.set_len(good_end).map_err(io)?;
            spool.log.sync_all().map_err(io)?;
            spool.end = good_end;
        }
        Ok(spool)
    }

    /// Bytes of records not yet delivered.
    pub fn pending_bytes(&self) -> u64 {
        self.end - self.head.offset
    }

    pub fn is_empty(&self) -> bool {
        self.pending_bytes() == 0
    }

    /// Appends `message`, synced to disk before this returns.
    pub fn append(&mut self, message: &SpooledMessage) -> Result<(), SpoolError> {
        let body = postcard::to_allocvec(message).map_err(|e| self.io(std::io::Error::other(e)))?;
        let length = u32::try_from(body.len()).ok().filter(|l| *l <= MAX_RECORD).ok_or(SpoolError::TooLarge(body.len()))?;
        let record_bytes = RECORD_HEADER + u64::from(length);
        if self.pending_bytes() + record_bytes > self.max_bytes {
            return Err(SpoolError::Full {
                dir: self.dir.display().to_string(),
                pending: self.pending_bytes(),
                max: self.max_bytes,
            });
        }
        let mut record = Vec::with_capacity(record_bytes as usize);
        record.extend_from_slice(&length.to_le_bytes());
        record.extend_from_slice(&CRC.checksum(&body).to_le_bytes());
        record.extend_from_slice(&body);
        let end = self.end;
        let written = (|| {
            self.log.seek(SeekFrom::Start(end))?;
            self.log.write_all(&record)?;
            self.log.sync_data()
        })();
        if let Err(error) = written {
            // Whatever part of the record got out is cut off again, so the log stays whole.
            let _ = self.log.set_len(end);
            return Err(self.io(error));
        }
        self.end += record_bytes;
        Ok(())
    }

    /// Up to `count` messages from the head, oldest first, each with the offset after it.
    pub fn peek(&mut self, count: usize) -> Result<Vec<(SpooledMessage, u64)>, SpoolError> {
        let mut messages = Vec::new();
        let mut at = self.head.offset;
        while messages.len() < count && at < self.end {
            let (body, next) = read_record(&mut self.log, at, self.end).map_err(|e| self.io(e))?.ok_or_else(|| {
                self.io(std::io::Error::new(std::io::ErrorKind::InvalidData, "a record that was whole at opening is not"))
            })?;
            let message =
                postcard::from_bytes(&body).map_err(|e| self.io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            messages.push((message, next));
            at = next;
        }
        Ok(messages)
    }

    /// Marks everything before `offset` (a value [`Spool::peek`] gave) delivered. When nothing is
    /// left, a new empty generation starts.
    pub fn delivered_until(&mut self, offset: u64) -> Result<(), SpoolError> {
        let offset = offset.min(self.end);
        if offset == self.end {
            let next = Head { generation: self.head.generation + 1, offset: 0 };
            let path = self.dir.join(log_name(next.generation));
            let log =
                OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).map_err(|e| self.io(e))?;
            log.sync_all().map_err(|e| self.io(e))?;
            write_head(&self.dir, next).map_err(|e| self.io(e))?;
            let old = self.dir.join(log_name(self.head.generation));
            self.head = next;
            self.log = log;
            self.end = 0;
            let _ = fs::remove_file(old);
        } else {
            let next = Head { offset, ..self.head };
            write_head(&self.dir, next).map_err(|e| self.io(e))?;
            self.head = next;
        }
        Ok(())
    }

    /// The offset after the last whole record from the head.
    fn scan_from_head(&mut self) -> std::io::Result<u64> {
        let mut at = self.head.offset;
        while let Some((_, next)) = read_record(&mut self.log, at, self.end)? {
            at = next;
        }
        Ok(at)
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io { dir: self.dir.display().to_string(), source }
    }
}

fn log_name(generation: u64) -> String {
    format!("log-{generation:020}")
}

/// The record at `at`: its body and the offset after it; `None` when it is cut short or corrupt.
fn read_record(log: &mut File, at: u64, end: u64) -> std::io::Result<Option<(Vec<u8>, u64)>> {
    if at + RECORD_HEADER > end {
        return Ok(None);
    }
    let mut header = [0u8; RECORD_HEADER as usize];
    log.seek(SeekFrom::Start(at))?;
    log.read_exact(&mut header)?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let checksum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let next = at + RECORD_HEADER + u64::from(length);
    if length > MAX_RECORD || next > end {
        return Ok(None);
    }
    let mut body = vec![0u8; length as usize];
    log.read_exact(&mut body)?;
    Ok((CRC.checksum(&body) == checksum).then_some((body, next)))
}

fn read_head(dir: &Path) -> std::io::Result<Head> {
    match fs::read_to_string(dir.join("head")) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(generation)), Some(Ok(offset))) => Ok(Head { generation, offset }),
                _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the head file is not `<generation> <offset>`")),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Head { generation: 0, offset: 0 }),
        Err(error) => Err(error),
    }
}

/// Replaces the head file atomically: a temporary file, synced, renamed over, the directory synced.
fn write_head(dir: &Path, head: Head) -> std::io::Result<()> {
    let temporary = dir.join("head.tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(format!("{} {}\n", head.generation, head.offset).as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join("head"))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u32) -> SpooledMessage {
        SpooledMessage {
            topic: "t".into(),
            key: Some(format!("k{}", n % 3).into_bytes()),
            value: format!("{{\"n\": {n}}}").into_bytes(),
            headers: vec![("x-rh-insights-request-id".into(), Some(serde_bytes::ByteBuf::from(format!("r{n}"))))],
            spooled_at_ms: i64::from(n),
        }
    }

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("spool-{}", uuid::Uuid::new_v4().simple()))
    }

    fn values(spool: &mut Spool) -> Vec<String> {
        spool.peek(usize::MAX).unwrap().into_iter().map(|(m, _)| String::from_utf8(m.value).unwrap()).collect()
    }

    #[test]
    fn messages_come_back_in_order_across_a_reopen_and_go_once_delivered() {
        let dir = scratch();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        for n in 0..5 {
            spool.append(&message(n)).unwrap();
        }
        let first_two = spool.peek(2).unwrap();
        assert_eq!(first_two[1].0, message(1));
        spool.delivered_until(first_two[1].1).unwrap();
        drop(spool);
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(values(&mut spool), ["{\"n\": 2}", "{\"n\": 3}", "{\"n\": 4}"]);
        let all = spool.peek(10).unwrap();
        spool.delivered_until(all.last().unwrap().1).unwrap();
        assert!(spool.is_empty());
        drop(spool);
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert!(spool.is_empty() && values(&mut spool).is_empty());
        let logs =
            fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("log-")).count();
        assert_eq!(logs, 1, "the delivered generation's log is gone");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_everything_before_it_kept() {
        let dir = scratch();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        for n in 0..3 {
            spool.append(&message(n)).unwrap();
        }
        drop(spool);
        let log = dir.join(log_name(0));
        let whole = fs::read(&log).unwrap();
        // A torn write: the last record cut short.
        fs::write(&log, &whole[..whole.len() - 3]).unwrap();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(values(&mut spool), ["{\"n\": 0}", "{\"n\": 1}"]);
        spool.append(&message(9)).unwrap();
        assert_eq!(values(&mut spool), ["{\"n\": 0}", "{\"n\": 1}", "{\"n\": 9}"], "appends go after the good records");
        drop(spool);
        // A flipped byte in the last record's body, and garbage after it.
        let mut bytes = fs::read(&log).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        bytes.extend_from_slice(&[0xde, 0xad]);
        fs::write(&log, bytes).unwrap();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(values(&mut spool), ["{\"n\": 0}", "{\"n\": 1}"]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_spool_refuses_and_a_second_process_is_turned_away() {
        let dir = scratch();
        let mut spool = Spool::open(&dir, 200).unwrap();
        let mut appended = 0;
        let full = loop {
            match spool.append(&message(appended)) {
                Ok(()) => appended += 1,
                Err(error) => break error,
            }
        };
        assert!(matches!(full, SpoolError::Full { max: 200, .. }), "{full}");
        assert!(appended > 0);
        assert_eq!(values(&mut spool).len(), appended as usize, "nothing dropped");
        assert!(matches!(Spool::open(&dir, 200), Err(SpoolError::InUse { .. })));
        drop(spool);
        assert!(Spool::open(&dir, 200).is_ok(), "free again once the first one closed");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_crash_during_a_change_of_generation_leaves_one_consistent_state() {
        let dir = scratch();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(&message(1)).unwrap();
        drop(spool);
        // The next generation's file was made but the head not yet moved: the old state holds.
        fs::write(dir.join(log_name(1)), b"").unwrap();
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(values(&mut spool), ["{\"n\": 1}"]);
        assert!(!dir.join(log_name(1)).exists(), "the orphan is removed");
        drop(spool);
        // A head file that is not `<generation> <offset>` (bytes not UTF-8 too) is a clear error.
        for garbage in [&b"not a head"[..], &[0xff, 0xfe, 0x00][..]] {
            fs::write(dir.join("head"), garbage).unwrap();
            let error = Spool::open(&dir, 1 << 20).err().expect("refused");
            assert!(error.to_string().contains(&dir.display().to_string()), "{error}");
        }
        // A head past the end of its log (cut, then the crash): nothing is left to send.
        write_head(&dir, Head { generation: 0, offset: 10_000 }).unwrap();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert!(spool.is_empty());
        let _ = fs::remove_dir_all(dir);
    }
}
