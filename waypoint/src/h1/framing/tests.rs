use super::*;

/// Feeds `input` whole; returns what was released and the verdict.
fn run(input: &[u8]) -> (Vec<u8>, Result<(), Malformed>) {
    let mut f = Framer::default();
    let mut out = BytesMut::new();
    let r = f.feed(input, &mut out);
    (out.to_vec(), r)
}

#[test]
fn well_formed_requests_pass_through_byte_for_byte() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x?y=1 HTTP/1.0\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        // Pipelined: a body, then the next head.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        // Chunked, with an extension and trailers.
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
        // An empty line before the request line (RFC 9112 §2.2).
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for input in cases {
        let (out, r) = run(input);
        assert_eq!(r, Ok(()), "{:?}", String::from_utf8_lossy(input));
        assert_eq!(out, *input);
    }
}

#[test]
fn malformed_requests_table() {
    use Malformed::*;
    let cases: &[(&[u8], Malformed, &str)] = &[
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            LengthAndChunked,
            "CL then TE",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            LengthAndChunked,
            "TE then CL",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            DuplicateContentLength,
            "the same length twice",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            BadContentLength,
            "a list",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            BadContentLength,
            "a sign",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            BadTransferEncoding,
            "chunked not last",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            BadTransferEncoding,
            "chunked twice",
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            BadTransferEncoding,
            "chunks in HTTP/1.0",
        ),
        (
            b"GET / HTTP/1.1\nHost: a\n\n",
            BareLineEnding,
            "bare LF",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            BareLineEnding,
            "one bare LF",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            BareLineEnding,
            "bare CR",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  continued\r\n\r\n",
            ObsFold,
            "obs-fold",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tcontinued\r\n\r\n",
            ObsFold,
            "obs-fold with a tab",
        ),
        (b"GET / HTTP/1.1\r\n\r\n", BadHost, "no Host"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            BadHost,
            "two Hosts",
        ),
        (
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            Syntax,
            "space before the colon",
        ),
        (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", Syntax, "a control byte"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Syntax, "not HTTP/1.x"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            BadChunkSize,
            "a chunk size that is not hex",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
            BadChunkSize,
            "a negative chunk size",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\n",
            BadChunkSize,
            "a space after the size",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            BadChunkSize,
            "a size over 64 bits",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\n",
            BadChunkSize,
            "a bare LF after the size",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX",
            BadChunkEnd,
            "chunk data too long",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n",
            BadTrailers,
            "a bare LF in the trailers",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnot a field\r\n\r\n",
            BadTrailers,
            "a trailer that is not a field",
        ),
    ];
    for (input, want, what) in cases {
        let (_, r) = run(input);
        assert_eq!(r, Err(*want), "{what}");
    }
}

#[test]
fn nothing_of_a_bad_head_is_released_but_what_came_before_is() {
    let good = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
    let bad = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
    let (out, r) = run(&[&good[..], &bad[..]].concat());
    assert_eq!(r, Err(Malformed::DuplicateContentLength));
    assert_eq!(out, good);
    // And the framer stays failed.
    let mut f = Framer::default();
    let mut out = BytesMut::new();
    assert!(f.feed(bad, &mut out).is_err());
    assert_eq!(
        f.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &mut out),
        Err(Malformed::DuplicateContentLength)
    );
    assert!(out.is_empty());
}

#[test]
fn heads_are_held_until_complete() {
    let mut f = Framer::default();
    let mut out = BytesMut::new();
    f.feed(b"GET / HTTP/1.1\r\nHo", &mut out).unwrap();
    assert!(out.is_empty());
    assert!(f.in_partial_head());
    f.feed(b"st: a\r\n\r\n", &mut out).unwrap();
    assert_eq!(&out[..], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(!f.in_partial_head());
    assert_eq!(f.heads(), 1);
}

#[test]
fn limits() {
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    big.resize(MAX_HEAD_BYTES + 10, b'a');
    assert_eq!(run(&big).1, Err(Malformed::HeadTooLarge));
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(run(&many).1, Err(Malformed::TooManyHeaders));
    assert_eq!(Malformed::TooManyHeaders.status().as_u16(), 431);
    assert_eq!(Malformed::BadHost.status().as_u16(), 400);
}

#[test]
fn after_an_upgrade_anything_goes() {
    let head = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    let frames = b"\x81\x05hello\nGET nonsense\n";
    let (out, r) = run(&[&head[..], &frames[..]].concat());
    assert_eq!(r, Ok(()));
    assert_eq!(out.len(), head.len() + frames.len());
}

proptest::proptest! {
    /// However the bytes are split across reads, the framer releases the
    /// same bytes and reaches the same verdict as when fed at once.
    #[test]
    fn split_invariant(cut in proptest::collection::vec(0usize..200, 0..6), which in 0usize..4) {
        let inputs: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nx\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: ws\r\n\r\n\n\n\rbinary",
        ];
        let input = inputs[which];
        let whole = run(input);
        let mut cuts: Vec<usize> = cut.into_iter().map(|c| c.min(input.len())).collect();
        cuts.sort();
        let mut f = Framer::default();
        let mut out = BytesMut::new();
        let mut last = 0;
        let mut verdict = Ok(());
        for c in cuts.into_iter().chain([input.len()]) {
            verdict = f.feed(&input[last..c], &mut out);
            last = c;
            if verdict.is_err() { break; }
        }
        proptest::prop_assert_eq!(verdict, whole.1);
        proptest::prop_assert_eq!(out.to_vec(), whole.0);
    }

    #[test]
    fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let mut f = Framer::default();
        let mut out = BytesMut::new();
        let _ = f.feed(&bytes, &mut out);
        proptest::prop_assert!(out.len() <= bytes.len());
    }
}

#[test]
fn a_chunked_head_waits_for_its_first_chunk_size() {
    let head = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut f = Framer::default();
    let mut out = BytesMut::new();
    f.feed(head, &mut out).unwrap();
    assert!(out.is_empty(), "withheld until the first chunk line");
    assert!(f.in_partial_head(), "the head timeout still runs");
    f.feed(b"5\r\nhel", &mut out).unwrap();
    assert_eq!(&out[..], [&head[..], b"5\r\nhel"].concat().as_slice());

    // A bad first chunk: the request never left the framer.
    let mut f = Framer::default();
    let mut out = BytesMut::new();
    assert_eq!(
        f.feed(&[&head[..], b"zz\r\n"].concat(), &mut out),
        Err(Malformed::BadChunkSize)
    );
    assert!(out.is_empty());
    assert!(f.failed_before_release());

    // A bad later chunk: the request was already released.
    let mut f = Framer::default();
    let mut out = BytesMut::new();
    let r = f.feed(&[&head[..], b"1\r\na\r\nzz\r\n"].concat(), &mut out);
    assert_eq!(r, Err(Malformed::BadChunkSize));
    assert!(!out.is_empty());
    assert!(!f.failed_before_release());
}

#[test]
fn expect_continue_releases_the_head_at_once() {
    let head = b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut f = Framer::default();
    let mut out = BytesMut::new();
    f.feed(head, &mut out).unwrap();
    assert_eq!(
        &out[..],
        &head[..],
        "its client waits for 100 Continue first"
    );
}
