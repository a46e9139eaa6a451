//! The blocking HTTP driver against an in-process HTTPS server on loopback
//! (tests/certs: the server certificate names 127.0.0.1 and localhost).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tern::http::blocking::fetch_with_config;
use tern::http::{HttpError, HttpRequest, Method, Url};

fn certs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/certs")
}

/// Serves one connection: reads the request head and body, answers
/// `response`, returns the request bytes.
fn serve_once(response: &'static [u8]) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg =
        tern::tls::server_config(&certs().join("server.pem"), &certs().join("server.key")).unwrap();
    let h = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(cfg).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match tls.read(&mut buf) {
                Ok(n) => n,
                Err(_) => return req,
            };
            if n == 0 {
                return req;
            }
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.parse().unwrap());
                if body.len() >= len {
                    break;
                }
            }
        }
        for piece in response.chunks(7) {
            let _ = tls.write_all(piece);
            let _ = tls.flush();
        }
        tls.conn.send_close_notify();
        let _ = tls.flush();
        req
    });
    (port, h)
}

fn config(ca: &str) -> tern::config::Config {
    tern::config::Config {
        tls_ca_file: Some(certs().join(ca)),
        ..Default::default()
    }
}

fn post(port: u16) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: Url::parse(&format!("https://127.0.0.1:{port}/hook")).unwrap(),
        headers: vec![("Title".into(), "hi".into())],
        body: b"message".to_vec(),
    }
}

#[test]
fn chunked_response_over_tls() {
    let (port, h) = serve_once(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    );
    let r = fetch_with_config(&config("ca.pem"), &post(port), Duration::from_secs(10)).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
    let req = String::from_utf8(h.join().unwrap()).unwrap();
    assert!(req.starts_with(&format!(
        "POST /hook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    )));
    assert!(req.contains("\r\nTitle: hi\r\n"));
    assert!(req.ends_with("\r\n\r\nmessage"));
}

#[test]
fn untrusted_certificate_is_a_tls_error() {
    let (port, _h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let r = fetch_with_config(
        &config("other-ca.pem"),
        &post(port),
        Duration::from_secs(10),
    );
    assert!(matches!(r, Err(HttpError::Tls(_))), "{r:?}");
}

#[test]
fn silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let start = Instant::now();
    let r = fetch_with_config(&config("ca.pem"), &post(port), Duration::from_millis(400));
    assert_eq!(r, Err(HttpError::Timeout));
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[test]
fn refused_connection() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = fetch_with_config(&config("ca.pem"), &post(port), Duration::from_secs(5));
    assert!(matches!(r, Err(HttpError::Connect(_))), "{r:?}");
}
