//! Driver for the HTTP client (`http_response`): the sans-IO `Exchange`
//! fed arbitrary response bytes, the chunked decoder alone and on
//! encodings built from the input, the `https://` URL parser, and the
//! webhook's message reader (`delivery::webhook::notice_of`).
//!
//! Separate from the other groups of targets: see the parent module for what
//! the drivers share.

use std::time::{Duration, Instant};

use crate::delivery::webhook::{notice_of, MAX_TEXT, MAX_TITLE};
use crate::http::{
    ChunkedDecoder, Exchange, HttpError, HttpRequest, HttpResponse, Method, Url, MAX_RESPONSE_BODY,
    MAX_RESPONSE_HEADERS,
};

use super::Input;

fn exchange(response: &[u8], split: usize) -> Result<HttpResponse, HttpError> {
    let t0 = Instant::now();
    let req = HttpRequest {
        method: Method::Post,
        url: Url::parse("https://hook.example/x").unwrap(),
        headers: vec![("Title".into(), "t".into())],
        body: b"body".to_vec(),
    };
    let mut x = Exchange::new(&req, t0, Duration::from_secs(30)).unwrap();
    let n = x.poll_transmit().len();
    x.consume_transmit(n);
    for piece in response.chunks(split.max(1)) {
        x.handle_input(piece, t0);
    }
    x.handle_eof(t0);
    assert!(x.is_done());
    assert!(x.poll_transmit().is_empty());
    assert_eq!(x.poll_timeout(), None);
    let r = x.take_result().expect("one result");
    assert!(x.take_result().is_none(), "a second result");
    r
}

fn chunked(
    data: &[u8],
    split: usize,
    limit: usize,
) -> (Result<usize, crate::http::ChunkedError>, Vec<u8>, bool) {
    let mut d = ChunkedDecoder::new(limit);
    let mut out = Vec::new();
    let mut used = 0;
    for piece in data.chunks(split.max(1)) {
        let n = match d.feed(piece, &mut out) {
            Ok(n) => n,
            Err(e) => return (Err(e), out, false),
        };
        used += n;
        if d.is_done() {
            break;
        }
        assert_eq!(n, piece.len(), "input left unused before the end");
    }
    assert!(out.len() <= limit, "decoded past the limit");
    (Ok(used), out, d.is_done())
}

pub fn http_response(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let split = usize::from(input.byte()).max(1);
    let rest = input.rest();
    match mode % 5 {
        0 => {
            let whole = exchange(rest, rest.len().max(1));
            let cut = exchange(rest, split);
            assert_eq!(whole, cut, "the result depends on how the bytes arrive");
            if let Ok(r) = whole {
                assert!((200..=999).contains(&r.status), "status {}", r.status);
                assert!(r.body.len() <= MAX_RESPONSE_BODY);
                assert!(r.headers.len() <= MAX_RESPONSE_HEADERS);
            }
        }
        1 => {
            let limit = split * 64;
            let (r1, o1, d1) = chunked(rest, rest.len().max(1), limit);
            let (r2, o2, d2) = chunked(rest, split, limit);
            assert_eq!(r1.is_ok(), r2.is_ok());
            if r1.is_ok() {
                assert_eq!((o1, d1), (o2, d2));
            }
        }
        2 => {
            // A valid encoding of `rest` in chunks of `split` bytes, with
            // extensions and a trailer, decodes back to it.
            let mut enc = Vec::new();
            for c in rest.chunks(split) {
                enc.extend_from_slice(format!("{:X};x=y\r\n", c.len()).as_bytes());
                enc.extend_from_slice(c);
                enc.extend_from_slice(b"\r\n");
            }
            enc.extend_from_slice(b"0\r\nT: v\r\n\r\nAFTER");
            let (r, out, done) = chunked(&enc, 7, rest.len());
            assert!(done, "valid encoding not finished");
            assert_eq!(r, Ok(enc.len() - 5));
            assert_eq!(out, rest);
        }
        3 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(u) = Url::parse(&text) {
                let again = Url::parse(&u.to_string()).expect("a printed URL parses");
                assert_eq!(again, u);
                assert!(u.path.starts_with('/'));
                assert!(u.path.bytes().all(|b| b.is_ascii_graphic()));
                assert!(u.port > 0);
            }
        }
        _ => {
            let n = notice_of(rest);
            assert!(n.title.len() <= MAX_TITLE);
            assert!(n.message.len() <= MAX_TEXT);
            assert!(!n.title.chars().any(char::is_control));
            assert!(!n.message.contains('\r'));
        }
    }
}
