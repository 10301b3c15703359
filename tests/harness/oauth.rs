//! An OAuth 2.0 token endpoint for the OIDC tests: HTTPS (the private
//! broker's certificate, under the CA `KAFKA_TLS=1 scripts/kafka-local.sh`
//! made), `client_credentials` grant with HTTP Basic client authentication
//! (RFC 6749 §2.3.1, §4.4), as librdkafka's `sasl.oauthbearer.method = oidc`
//! calls it. It hands out the JWT the script signed with the key the broker
//! trusts; wrong client credentials get 401 `invalid_client`. It records
//! every request it answered (never the secret) so a test can show the
//! token came from here.

use base64::Engine as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One request the endpoint answered: (its status, the form body).
pub type Answered = (u16, String);

pub struct TokenEndpoint {
    /// `https://127.0.0.1:<port>/token`
    pub url: String,
    pub answered: Arc<Mutex<Vec<Answered>>>,
}

impl TokenEndpoint {
    /// Serves `token` to a client authenticating as `id`/`secret`, with the
    /// certificate and key in `tls` (the script's `tls/` directory:
    /// broker.pem, broker-key.pem). Runs until the test process ends.
    pub fn start(tls: &Path, id: &str, secret: &str, token: String) -> TokenEndpoint {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(tls.join("broker.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(tls.join("broker-key.pem")).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://127.0.0.1:{}/token", listener.local_addr().unwrap().port());
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let log = answered.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (config, expected, token, log) = (config.clone(), expected.clone(), token.clone(), log.clone());
                std::thread::spawn(move || {
                    if let Some(a) = serve(conn, config, &expected, &token) {
                        log.lock().unwrap().push(a);
                    }
                });
            }
        });
        TokenEndpoint { url, answered }
    }

    /// The statuses of the requests answered so far.
    pub fn statuses(&self) -> Vec<u16> {
        self.answered.lock().unwrap().iter().map(|a| a.0).collect()
    }
}

/// Answers one request on `conn` (None: not a readable HTTP request).
fn serve(conn: TcpStream, config: Arc<rustls::ServerConfig>, expected: &str, token: &str) -> Option<Answered> {
    let tls = rustls::ServerConnection::new(config).ok()?;
    let mut stream = BufReader::new(rustls::StreamOwned::new(tls, conn));
    let (mut auth, mut length) = (None, 0usize);
    let mut line = String::new();
    stream.read_line(&mut line).ok()?;
    if !line.starts_with("POST ") {
        return None;
    }
    loop {
        line.clear();
        stream.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "authorization" => auth = Some(value.trim().to_string()),
            "content-length" => length = value.trim().parse().ok()?,
            _ => {}
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    let body = String::from_utf8_lossy(&body).to_string();
    let (status, json) = if auth.as_deref() == Some(expected) && body.contains("grant_type=client_credentials") {
        (200, serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": 3600 }))
    } else {
        (401, serde_json::json!({ "error": "invalid_client" }))
    };
    let text = json.to_string();
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let stream = stream.get_mut();
    stream.write_all(response.as_bytes()).ok()?;
    stream.flush().ok()?;
    stream.conn.send_close_notify();
    let _ = stream.flush();
    Some((status, body))
}
