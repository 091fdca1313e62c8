//! A consumed record's headers as raw bytes.
//!
//! rdkafka's `Headers::iter`/`get` build each header name with `CStr::to_str().unwrap()`, so a
//! record whose header name is not UTF-8 panics whoever reads it: one hostile record stopped the
//! service's consumer. librdkafka itself hands out the name as bytes
//! (`rd_kafka_header_get_all`); this crate is the one place that calls it, so the service crate
//! stays free of `unsafe` and every caller decides what a bad name means.
//!
//! Header names come back as librdkafka keeps them: up to the first NUL byte (librdkafka stores
//! names as C strings).

use std::ffi::CStr;
use std::ptr;

use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka_sys as rdsys;

/// One header, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader<'a> {
    pub name: &'a [u8],
    /// `None` for a null header value.
    pub value: Option<&'a [u8]>,
}

/// The headers of one consumed record, borrowed from it.
pub struct RawHeaders<'a> {
    headers: *const rdsys::rd_kafka_headers_t,
    count: usize,
    _message: std::marker::PhantomData<&'a BorrowedMessage<'a>>,
}

/// The headers of `message` (none when it has no header list).
pub fn headers<'a>(message: &'a BorrowedMessage<'a>) -> RawHeaders<'a> {
    let mut headers: *mut rdsys::rd_kafka_headers_t = ptr::null_mut();
    // SAFETY: `message.ptr()` is a live message for `'a`; librdkafka writes the message's own
    // header list (owned by the message, not by us) into `headers`, or returns an error and
    // leaves it null.
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut headers) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return RawHeaders { headers: ptr::null(), count: 0, _message: std::marker::PhantomData };
    }
    // SAFETY: `headers` is the message's live header list.
    let count = unsafe { rdsys::rd_kafka_header_cnt(headers) };
    RawHeaders { headers, count, _message: std::marker::PhantomData }
}

impl<'a> RawHeaders<'a> {
    /// How many headers the record has, known before any is read.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Header `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<RawHeader<'a>> {
        if index >= self.count {
            return None;
        }
        let mut name: *const std::os::raw::c_char = ptr::null();
        let mut value: *const std::os::raw::c_void = ptr::null();
        let mut size = 0usize;
        // SAFETY: `self.headers` is the live header list of a message borrowed for `'a`, and
        // `index` is within its count.
        let err = unsafe { rdsys::rd_kafka_header_get_all(self.headers, index, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka returns a NUL-terminated name and a value of `size` bytes (or null),
        // both owned by the header list, which lives as long as the message ('a).
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null()).then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        Some(RawHeader { name, value })
    }

    /// Every header, in order.
    pub fn iter(&self) -> impl Iterator<Item = RawHeader<'a>> + '_ {
        (0..self.count).filter_map(|index| self.get(index))
    }
}

/// `headers` with one more header whose name is any bytes, as librdkafka allows (rdkafka's
/// `OwnedHeaders::insert` takes only `&str` names). For tests and tools that must produce the
/// records a hostile producer could.
pub fn with_raw_header(headers: OwnedHeaders, name: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    let native = headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders as *mut rdsys::rd_kafka_headers_t;
    let (value_ptr, value_len) = match value {
        Some(value) => (value.as_ptr().cast(), value.len() as isize),
        None => (ptr::null(), 0),
    };
    // SAFETY: `BorrowedHeaders` is rdkafka's view of the native header list (rdkafka casts it
    // the same way); `headers` owns that list, and librdkafka copies the name and value.
    unsafe { rdsys::rd_kafka_header_add(native, name.as_ptr().cast(), name.len() as isize, value_ptr, value_len) };
    headers
}
