//! An OAuth 2.0 token endpoint for the OIDC tests: HTTPS (the private
//! broker's certificate, under the CA `KAFKA_TLS=1 scripts/kafka-local.sh`
//! made), as librdkafka's `sasl.oauthbearer.method = oidc` calls it, with
//! either grant:
//! - `client_credentials` with HTTP Basic client authentication (RFC 6749
//!   §2.3.1, §4.4): wrong client credentials get 401 `invalid_client`;
//! - `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523): the client's
//!   assertion must be an RS256 JWT signed by the client's key (checked
//!   against its public key), issued by and for the client (`iss`, `sub`),
//!   addressed to this endpoint (`aud` = its URL) and valid now (`nbf`,
//!   `exp`); otherwise 400 `invalid_grant` with the reason.
//!
//! It hands out the JWT the script signed with the key the broker trusts,
//! and records every request it answered (never a secret: the Basic header
//! is not kept) so a test can show the token came from here.

use base64::Engine as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One request the endpoint answered: (its status, the form body).
pub type Answered = (u16, String);

/// How the endpoint authenticates its client.
#[derive(Clone)]
enum Client {
    /// `client_credentials`: the expected `Authorization: Basic ...` value.
    Basic(String),
    /// `jwt-bearer`: the client id (`iss`, `sub`) and its RSA public key
    /// (PKCS#1 DER) that must verify the assertion.
    JwtBearer { id: String, public_key: Vec<u8> },
}

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
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
        Self::serving(tls, Client::Basic(basic), token)
    }

    /// Serves `token` for a JWT-bearer assertion of client `id`, signed by the
    /// private key whose public half is `public_key` (PKCS#1 DER).
    pub fn start_jwt_bearer(tls: &Path, id: &str, public_key: Vec<u8>, token: String) -> TokenEndpoint {
        Self::serving(tls, Client::JwtBearer { id: id.to_string(), public_key }, token)
    }

    fn serving(tls: &Path, client: Client, token: String) -> TokenEndpoint {
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
        let answered = Arc::new(Mutex::new(Vec::new()));
        let log = answered.clone();
        let me = url.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (config, client, token, log, me) =
                    (config.clone(), client.clone(), token.clone(), log.clone(), me.clone());
                std::thread::spawn(move || {
                    if let Some(a) = serve(conn, config, &client, &me, &token) {
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
fn serve(
    conn: TcpStream,
    config: Arc<rustls::ServerConfig>,
    client: &Client,
    me: &str,
    token: &str,
) -> Option<Answered> {
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
    let granted = serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": 3600 });
    let (status, json) = match client {
        Client::Basic(expected) => {
            if auth.as_deref() == Some(expected.as_str()) && body.contains("grant_type=client_credentials") {
                (200, granted)
            } else {
                (401, serde_json::json!({ "error": "invalid_client" }))
            }
        }
        Client::JwtBearer { id, public_key } => match jwt_bearer(&body, id, public_key, me) {
            Ok(()) => (200, granted),
            Err(why) => (400, serde_json::json!({ "error": "invalid_grant", "error_description": why })),
        },
    };
    let text = json.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Unauthorized",
    };
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

/// Checks a JWT-bearer grant request (RFC 7523 §2.1, §3): Ok, or why not.
fn jwt_bearer(body: &str, id: &str, public_key: &[u8], me: &str) -> Result<(), String> {
    let field = |name: &str| body.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Err(format!("unsupported grant: {body}"));
    }
    let assertion = field("assertion").ok_or("no assertion")?;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else { return Err("the assertion is not a JWS".into()) };
    let decode = |part: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|e| e.to_string());
    let json = |part: &str| -> Result<serde_json::Value, String> {
        serde_json::from_slice(&decode(part)?).map_err(|e| e.to_string())
    };
    if json(header)?["alg"] != "RS256" {
        return Err("the assertion is not RS256".into());
    }
    let key =
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, public_key);
    key.verify(format!("{header}.{claims}").as_bytes(), &decode(signature)?)
        .map_err(|_| "the assertion's signature does not verify with the client's key".to_string())?;
    let c = json(claims)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    let number = |k: &str| c[k].as_f64().ok_or(format!("no {k} claim"));
    match () {
        _ if c["iss"] != id || c["sub"] != id => Err(format!("iss/sub are not {id}: {c}")),
        _ if c["aud"] != me => Err(format!("aud is not {me}: {c}")),
        _ if number("nbf")? > now + 5.0 => Err(format!("not valid yet: {c}")),
        _ if number("exp")? < now => Err(format!("expired: {c}")),
        _ => Ok(()),
    }
}
