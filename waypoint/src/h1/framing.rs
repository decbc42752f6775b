//! Strict HTTP/1.1 request framing, checked before hyper sees a byte.
//!
//! hyper parses leniently where RFC 9112 allows it, and a proxy must not:
//! a request that two parsers frame differently is how requests are
//! smuggled past one of them. [`Framer`] walks the byte stream of a
//! connection (heads, bodies by `Content-Length` or chunks, trailers,
//! pipelined requests) and holds each request head back until it is
//! complete and acceptable. It refuses:
//!
//! | input | hyper alone | here |
//! |---|---|---|
//! | `Content-Length` and `Transfer-Encoding` together | drops the length, uses chunks | 400 |
//! | `Content-Length` twice with the same value | accepts | 400 |
//! | a bare LF (or CR) as a line ending | accepts | 400 |
//! | obs-fold (a line starting with a space or tab) | 400 | 400 |
//! | an invalid chunk size, or chunk data not ended by CRLF | body error | 400 |
//! | no `Host`, or two, in HTTP/1.1 | accepts | 400 (RFC 9112 §3.2) |
//! | a head over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] fields | 431 | 431 |
//!
//! A chunked request's head is held until its first chunk-size line has
//! been checked too (unless it sends `Expect: 100-continue`, whose client
//! waits for the head's answer first), so a bad first chunk is refused
//! before the request reaches an upstream. After a request that asks for
//! an upgrade (or CONNECT) the rest of the stream is the upgraded
//! protocol's and is passed through unexamined. Pure: bytes in, released
//! bytes out.

use bytes::BytesMut;
use http::StatusCode;

/// The largest request head (request line and fields) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields in one head.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section.
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a line ends in a bare LF or CR, not CRLF")]
    BareLineEnding,
    #[error("the request head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the request has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the request line or a header field is malformed")]
    Syntax,
    #[error("a header field uses obsolete line folding")]
    ObsFold,
    #[error("Content-Length appears more than once")]
    DuplicateContentLength,
    #[error("Content-Length is not a decimal number")]
    BadContentLength,
    #[error("Content-Length and Transfer-Encoding together")]
    LengthAndChunked,
    #[error("Transfer-Encoding does not end in exactly one chunked")]
    BadTransferEncoding,
    #[error("an HTTP/1.1 request needs exactly one Host")]
    BadHost,
    #[error("invalid chunk size line")]
    BadChunkSize,
    #[error("chunk data is not followed by CRLF")]
    BadChunkEnd,
    #[error("malformed trailer section")]
    BadTrailers,
}

impl Malformed {
    pub fn status(&self) -> StatusCode {
        match self {
            Malformed::HeadTooLarge | Malformed::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A low-cardinality reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Malformed::BareLineEnding => "bare_line_ending",
            Malformed::HeadTooLarge => "head_too_large",
            Malformed::TooManyHeaders => "too_many_headers",
            Malformed::Syntax => "syntax",
            Malformed::ObsFold => "obs_fold",
            Malformed::DuplicateContentLength => "duplicate_content_length",
            Malformed::BadContentLength => "bad_content_length",
            Malformed::LengthAndChunked => "length_and_chunked",
            Malformed::BadTransferEncoding => "bad_transfer_encoding",
            Malformed::BadHost => "bad_host",
            Malformed::BadChunkSize => "bad_chunk_size",
            Malformed::BadChunkEnd => "bad_chunk_end",
            Malformed::BadTrailers => "bad_trailers",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// After chunk data: how much of its CRLF was seen.
    ChunkEnd(u8),
    Trailers,
    /// An upgraded connection: not HTTP/1 any more.
    Passthrough,
    Failed(Malformed),
}

/// How a request's body is framed, and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Framing {
    body: Body,
    upgrade: bool,
    /// `Expect: 100-continue`: the client waits for an answer to the head.
    expect_continue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked,
}

/// Walks one connection's request bytes.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// Bytes of the head, chunk-size line or trailers not yet released.
    held: BytesMut,
    /// A chunked request's head, waiting for its first chunk-size line.
    withheld: BytesMut,
    /// Request heads released so far.
    heads: u64,
    /// The failure came before its request was released.
    failed_unreleased: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            state: State::Head,
            held: BytesMut::new(),
            withheld: BytesMut::new(),
            heads: 0,
            failed_unreleased: false,
        }
    }
}

impl Framer {
    /// Consumes `input`, appending what may go on to `out`. On error, what
    /// preceded the bad bytes stays in `out`, and every later call returns
    /// the same error.
    pub fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), Malformed> {
        while !input.is_empty() {
            let used = match self.state {
                State::Failed(m) => return Err(m),
                State::Passthrough => {
                    out.extend_from_slice(input);
                    input.len()
                }
                State::Body(left) | State::ChunkData(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[..n]);
                    let left = left - n as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd(0),
                        (_, l) => State::ChunkData(l),
                    };
                    n
                }
                State::ChunkEnd(seen) => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if input[0] != want {
                        return self.fail(Malformed::BadChunkEnd);
                    }
                    out.extend_from_slice(&input[..1]);
                    self.state = if seen == 0 {
                        State::ChunkEnd(1)
                    } else {
                        State::ChunkSize
                    };
                    1
                }
                State::Head | State::ChunkSize | State::Trailers => {
                    match self.hold_line_or_head(input, out) {
                        Ok(n) => n,
                        Err(m) => return self.fail(m),
                    }
                }
            };
            input = &input[used..];
        }
        match self.state {
            State::Failed(m) => Err(m),
            _ => Ok(()),
        }
    }

    /// A request head has begun and is not complete yet: what a header
    /// read timeout measures.
    pub fn in_partial_head(&self) -> bool {
        (self.state == State::Head && !self.held.is_empty()) || !self.withheld.is_empty()
    }

    /// After a failure: whether the bad request was never released (so
    /// nothing downstream of the framer has seen any of it).
    pub fn failed_before_release(&self) -> bool {
        self.failed_unreleased
    }

    /// Request heads released so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    fn fail(&mut self, m: Malformed) -> Result<(), Malformed> {
        self.failed_unreleased = self.state == State::Head || !self.withheld.is_empty();
        self.state = State::Failed(m);
        self.held = BytesMut::new();
        self.withheld = BytesMut::new();
        Err(m)
    }

    /// Accumulates a head, chunk-size line or trailer section; returns how
    /// much of `input` it took.
    fn hold_line_or_head(&mut self, input: &[u8], out: &mut BytesMut) -> Result<usize, Malformed> {
        let (end, limit, too_long) = match self.state {
            State::Head => (&b"\r\n\r\n"[..], MAX_HEAD_BYTES, Malformed::HeadTooLarge),
            State::ChunkSize => (&b"\r\n"[..], MAX_CHUNK_LINE, Malformed::BadChunkSize),
            _ => (&b"\r\n"[..], MAX_TRAILER_BYTES, Malformed::BadTrailers),
        };
        let mut taken = 0;
        let mut complete = false;
        for &b in input {
            taken += 1;
            let prev = self.held.last().copied();
            if b == b'\n' && prev != Some(b'\r') {
                return Err(match self.state {
                    State::Head => Malformed::BareLineEnding,
                    State::ChunkSize => Malformed::BadChunkSize,
                    _ => Malformed::BadTrailers,
                });
            }
            if prev == Some(b'\r') && b != b'\n' {
                return Err(match self.state {
                    State::Head => Malformed::BareLineEnding,
                    State::ChunkSize => Malformed::BadChunkSize,
                    _ => Malformed::BadTrailers,
                });
            }
            self.held.extend_from_slice(&[b]);
            if self.held.len() > limit {
                return Err(too_long);
            }
            if self.held.ends_with(end) && self.section_ends() {
                complete = true;
                break;
            }
        }
        if complete {
            let section = std::mem::take(&mut self.held);
            self.state = match self.state {
                State::Head => {
                    let (next, hold) = self.after_head(&section)?;
                    if hold {
                        self.withheld = section;
                        self.state = next;
                        return Ok(taken);
                    }
                    next
                }
                State::ChunkSize => {
                    let next = match chunk_size(&section)? {
                        0 => State::Trailers,
                        n => State::ChunkData(n),
                    };
                    out.extend_from_slice(&std::mem::take(&mut self.withheld));
                    next
                }
                _ => {
                    check_trailers(&section)?;
                    State::Head
                }
            };
            out.extend_from_slice(&section);
        }
        Ok(taken)
    }

    /// Whether the CRLF just held ends the section: a head or chunk-size
    /// line ends at its terminator; trailers end at an empty line (and
    /// each line before it is checked as it completes).
    fn section_ends(&self) -> bool {
        if self.state != State::Trailers {
            return true;
        }
        let body = &self.held[..self.held.len() - 2];
        match body.iter().rposition(|&b| b == b'\n') {
            // The line just ended is empty: end of the trailers.
            Some(i) => i + 1 == body.len(),
            None => body.is_empty(),
        }
    }

    /// The state after a complete head, and whether to withhold the head
    /// until the first chunk-size line is checked.
    fn after_head(&mut self, head: &[u8]) -> Result<(State, bool), Malformed> {
        let framing = parse_head(head)?;
        self.heads += 1;
        let after_body = if framing.upgrade {
            State::Passthrough
        } else {
            State::Head
        };
        Ok(match framing.body {
            Body::Chunked => (State::ChunkSize, !framing.expect_continue),
            Body::Length(0) => (after_body, false),
            // An upgrade with a body: pass the body on with the rest.
            Body::Length(_) if framing.upgrade => (State::Passthrough, false),
            Body::Length(n) => (State::Body(n), false),
        })
    }
}

/// Checks a complete head (ending in CRLF CRLF) and reads its framing.
fn parse_head(head: &[u8]) -> Result<Framing, Malformed> {
    // Fields only: skip the request line; a continuation line is obs-fold.
    if head
        .split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.first().is_some_and(|&b| b == b' ' || b == b'\t'))
    {
        return Err(Malformed::ObsFold);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed::TooManyHeaders),
        _ => return Err(Malformed::Syntax),
    }
    let http11 = req.version == Some(1);
    let method = req.method.unwrap_or_default();
    let mut lengths = 0;
    let mut length = 0u64;
    let mut codings: Vec<String> = Vec::new();
    let mut hosts = 0;
    let mut expect_continue = false;
    let mut upgrade = method.eq_ignore_ascii_case("CONNECT");
    for f in req.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = content_length(f.value)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let text = std::str::from_utf8(f.value).map_err(|_| Malformed::BadTransferEncoding)?;
            codings.extend(text.split(',').map(|c| c.trim().to_ascii_lowercase()));
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= http11;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= f.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if lengths > 1 {
        return Err(Malformed::DuplicateContentLength);
    }
    if http11 && hosts != 1 {
        return Err(Malformed::BadHost);
    }
    if codings.is_empty() {
        return Ok(Framing {
            body: Body::Length(length),
            upgrade,
            expect_continue,
        });
    }
    if lengths > 0 {
        return Err(Malformed::LengthAndChunked);
    }
    let chunked_last = codings.last().is_some_and(|c| c == "chunked");
    let chunked_once = codings.iter().filter(|c| *c == "chunked").count() == 1;
    if !http11 || !chunked_last || !chunked_once || codings.iter().any(String::is_empty) {
        return Err(Malformed::BadTransferEncoding);
    }
    Ok(Framing {
        body: Body::Chunked,
        upgrade,
        expect_continue,
    })
}

/// A complete trailer section (fields, then an empty line).
fn check_trailers(section: &[u8]) -> Result<(), Malformed> {
    if section
        .split(|&b| b == b'\n')
        .any(|line| line.first().is_some_and(|&b| b == b' ' || b == b'\t'))
    {
        return Err(Malformed::BadTrailers);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((n, _))) if n == section.len() => Ok(()),
        _ => Err(Malformed::BadTrailers),
    }
}

/// `1*DIGIT`, at most 19 digits (no sign, no list, no spaces).
fn content_length(v: &[u8]) -> Result<u64, Malformed> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Malformed::BadContentLength);
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed::BadContentLength)
}

/// `1*HEXDIG [ BWS ";" chunk-ext ] CRLF`, the size at most 16 hex digits.
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let line = &line[..line.len() - 2];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Malformed::BadChunkSize);
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !rest.is_empty() && !ext.starts_with(b";") {
        return Err(Malformed::BadChunkSize);
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Malformed::BadChunkSize);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| Malformed::BadChunkSize)?;
    u64::from_str_radix(hex, 16).map_err(|_| Malformed::BadChunkSize)
}

#[cfg(test)]
mod tests;
