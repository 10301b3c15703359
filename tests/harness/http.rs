//! A tiny HTTP/1.1 client on `std::net::TcpStream`, so tests can send raw,
//! hostile bytes and read exactly what the server answered.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {} {:?}", self.status, self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(&name.to_ascii_lowercase()).cloned()
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    try_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`). The
/// body is written from a second thread while the response is read, so a
/// server that answers early (413) and closes is handled.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
    }
    head.push_str("\r\n");
    raw(addr, head.as_bytes(), body.unwrap_or_default())
}

/// Sends raw bytes (head + body) and reads the whole response. The
/// response to a HEAD request is read to the end of the connection and its
/// `body` is every byte after the header block (none, from a correct server).
pub fn raw(addr: SocketAddr, head: &[u8], body: &[u8]) -> std::io::Result<Resp> {
    let head_only = head.starts_with(b"HEAD ");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    s.write_all(head)?;
    let writer = if body.is_empty() {
        None
    } else {
        let mut w = s.try_clone()?;
        let body = body.to_vec();
        Some(std::thread::spawn(move || {
            for chunk in body.chunks(64 * 1024) {
                if w.write_all(chunk).is_err() {
                    break;
                }
            }
        }))
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && response_complete(&buf) => break,
            Err(e) => return Err(e),
        }
        if !head_only && response_complete(&buf) {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    if let Some(w) = writer {
        let _ = w.join();
    }
    parse_response(&buf, head_only)
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {:?}", String::from_utf8_lossy(&buf))))
}

fn split_head(buf: &[u8]) -> Option<(usize, &[u8])> {
    let i = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((i + 4, &buf[..i]))
}

fn response_complete(buf: &[u8]) -> bool {
    let Some((start, head)) = split_head(buf) else { return false };
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    match head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) => buf.len() >= start + n,
        None => false, // chunked or close-delimited: read to EOF
    }
}

fn parse_response(buf: &[u8], head_only: bool) -> Option<Resp> {
    let (start, head) = split_head(buf)?;
    let head = String::from_utf8_lossy(head).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let rest = &buf[start..];
    let body = if head_only {
        rest.to_vec()
    } else if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(n) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..n)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Resp { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).split(';').next()?.trim(), 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// An RFC 9457 problem: `application/problem+json` with type, title,
/// status, detail, and the `error` kind extension.
pub fn assert_error(r: &Resp, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(r.status, status, "expected {status} {kind}, got {} {}", r.status, r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/problem+json"), "{:?}", r.headers);
    let v = r.json();
    assert_eq!(v["error"], kind, "{v}");
    assert_eq!(v["type"], format!("urn:outboxd:problem:{kind}"), "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert!(v["detail"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

/// One order item as the command API takes it (any JSON in each place, so
/// a test can put a wrong type there).
pub fn item(
    sku: serde_json::Value,
    qty: serde_json::Value,
    amount: serde_json::Value,
    currency: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({"sku": sku, "quantity": qty, "unit_price": {"amount_minor": amount, "currency": currency}})
}
