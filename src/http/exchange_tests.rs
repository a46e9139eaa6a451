use super::*;
use crate::http::{Url, MAX_RESPONSE_BODY};

const TIMEOUT: Duration = Duration::from_secs(30);

fn post(body: &[u8]) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: Url::parse("https://ntfy.example:8443/alerts?x=1").unwrap(),
        headers: vec![("Title".into(), "Disk full".into())],
        body: body.to_vec(),
    }
}

fn exchange() -> (Exchange, Instant) {
    let t0 = Instant::now();
    (Exchange::new(&post(b"hello"), t0, TIMEOUT).unwrap(), t0)
}

/// Feeds `resp` in pieces of `split` bytes; returns the result.
fn run(resp: &[u8], split: usize) -> Result<HttpResponse, HttpError> {
    let (mut x, t0) = exchange();
    let n = x.poll_transmit().len();
    x.consume_transmit(n);
    for piece in resp.chunks(split.max(1)) {
        x.handle_input(piece, t0);
        if x.is_done() {
            break;
        }
    }
    if !x.is_done() {
        x.handle_eof(t0);
    }
    let r = x.take_result().expect("a result");
    assert_eq!(x.take_result(), None, "exactly one result");
    r
}

#[test]
fn request_bytes() {
    let (x, _) = exchange();
    assert_eq!(
        x.poll_transmit(),
        b"POST /alerts?x=1 HTTP/1.1\r\nHost: ntfy.example:8443\r\nUser-Agent: tern\r\n\
          Connection: close\r\nContent-Length: 5\r\nTitle: Disk full\r\n\r\nhello"
    );
    let get = HttpRequest {
        method: Method::Get,
        url: Url::parse("https://h/").unwrap(),
        headers: vec![],
        body: vec![],
    };
    let x = Exchange::new(&get, Instant::now(), TIMEOUT).unwrap();
    assert_eq!(
        x.poll_transmit(),
        b"GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: tern\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn partial_transmit() {
    let (mut x, _) = exchange();
    let all = x.poll_transmit().to_vec();
    x.consume_transmit(10);
    assert_eq!(x.poll_transmit(), &all[10..]);
    x.consume_transmit(1000);
    assert!(x.poll_transmit().is_empty());
}

#[test]
fn invalid_request_headers() {
    for (name, value) in [
        ("Title", "a\r\nX-Evil: 1"),
        ("Bad Name", "v"),
        ("", "v"),
        ("Content-Length", "3"),
        ("host", "other"),
    ] {
        let mut req = post(b"");
        req.headers = vec![(name.into(), value.into())];
        assert!(
            matches!(
                Exchange::new(&req, Instant::now(), TIMEOUT),
                Err(HttpError::InvalidRequest(_))
            ),
            "{name:?}: {value:?}"
        );
    }
    let mut req = post(b"");
    req.headers = vec![("A".into(), "b".into()); MAX_REQUEST_HEADERS + 1];
    assert!(Exchange::new(&req, Instant::now(), TIMEOUT).is_err());
}

#[test]
fn content_length_every_split() {
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello worldTRAILING";
    for split in 1..resp.len() {
        let r = run(resp, split).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.header("content-type"), Some(&b"text/plain"[..]));
    }
}

#[test]
fn chunked_every_split() {
    let resp = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    for split in 1..resp.len() {
        let r = run(resp, split).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"hello world"[..]));
    }
}

#[test]
fn until_close_and_bodiless() {
    let r = run(b"HTTP/1.0 200 OK\r\n\r\n{\"ok\":true}", 7).unwrap();
    assert_eq!(r.body, b"{\"ok\":true}");
    // 204 is complete with its head, no close needed.
    let (mut x, t0) = exchange();
    x.handle_input(b"HTTP/1.1 204 No Content\r\n\r\n", t0);
    assert_eq!(x.take_result().unwrap().unwrap().status, 204);
    let (mut x, t0) = exchange();
    x.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", t0);
    assert!(x.take_result().unwrap().unwrap().body.is_empty());
}

#[test]
fn interim_responses_are_skipped() {
    let resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
    for split in [1, 5, resp.len()] {
        let r = run(resp, split).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"no"[..]));
    }
}

#[test]
fn closed_early() {
    assert_eq!(
        run(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 100),
        Err(HttpError::Closed)
    );
    assert_eq!(
        run(b"HTTP/1.1 200 OK\r\nContent-", 100),
        Err(HttpError::Closed)
    );
    assert_eq!(run(b"", 100), Err(HttpError::Closed));
    assert_eq!(
        run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            100
        ),
        Err(HttpError::Closed)
    );
}

#[test]
fn oversized() {
    let declared = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        MAX_RESPONSE_BODY + 1
    );
    assert_eq!(run(declared.as_bytes(), 100), Err(HttpError::TooLarge));
    let huge = "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
    assert_eq!(run(huge.as_bytes(), 100), Err(HttpError::TooLarge));
    let mut close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    close.extend(std::iter::repeat_n(b'a', MAX_RESPONSE_BODY + 1));
    assert_eq!(run(&close, 4096), Err(HttpError::TooLarge));
    let mut exact = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    exact.extend(std::iter::repeat_n(b'a', MAX_RESPONSE_BODY));
    assert_eq!(run(&exact, 4096).unwrap().body.len(), MAX_RESPONSE_BODY);
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..(MAX_RESPONSE_BODY / 1024 + 1) {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend(std::iter::repeat_n(b'b', 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    assert_eq!(run(&chunked, 1000), Err(HttpError::TooLarge));
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    while head.len() < MAX_RESPONSE_HEAD {
        head.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    assert_eq!(run(&head, 333), Err(HttpError::TooLarge));
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_RESPONSE_HEADERS {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(run(&many, 100), Err(HttpError::TooLarge));
}

#[test]
fn malformed() {
    for bad in [
        &b"SMTP/1.1 200 OK\r\n\r\n"[..],
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"220 mail.example ESMTP\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        assert!(
            matches!(run(bad, 3), Err(HttpError::Malformed(_))),
            "{:?}: {:?}",
            String::from_utf8_lossy(bad),
            run(bad, 3)
        );
    }
    // Equal repeated lengths are fine.
    let r = run(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        3,
    );
    assert_eq!(r.unwrap().body, b"ok");
}

#[test]
fn timeout() {
    let (mut x, t0) = exchange();
    assert_eq!(x.poll_timeout(), Some(t0 + TIMEOUT));
    x.handle_input(b"HTTP/1.1 200 OK\r\n", t0 + TIMEOUT / 2);
    x.handle_timeout(t0 + TIMEOUT - Duration::from_millis(1));
    assert!(!x.is_done());
    x.handle_timeout(t0 + TIMEOUT);
    assert_eq!(x.take_result(), Some(Err(HttpError::Timeout)));
    assert_eq!(x.poll_timeout(), None);
    assert!(x.poll_transmit().is_empty());
    // Input arriving after the deadline does not win over it.
    let (mut x, t0) = exchange();
    x.handle_input(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        t0 + TIMEOUT,
    );
    assert_eq!(x.take_result(), Some(Err(HttpError::Timeout)));
}

#[test]
fn driver_failure_and_one_result() {
    let (mut x, t0) = exchange();
    x.fail(HttpError::Tls("certificate unknown".into()));
    x.fail(HttpError::Timeout);
    x.handle_input(b"HTTP/1.1 200 OK\r\n\r\n", t0);
    x.handle_eof(t0);
    assert_eq!(
        x.take_result(),
        Some(Err(HttpError::Tls("certificate unknown".into())))
    );
    assert_eq!(x.take_result(), None);
}
