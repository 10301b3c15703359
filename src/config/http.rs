//! `[http]`: the command API and the admin server.
//!
//! Guarantee: plain option types with their defaults (both servers on
//! loopback) and the checks of their own keys.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Command API address.
    pub listen: String,
    /// Admin server (/metrics, /health).
    pub admin_listen: String,
    /// When set, the command API requires `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// Worker threads of the command API (1..=512: actix-server's most).
    pub workers: usize,
}

/// Most `http.workers`: actix-server asserts `workers <= 512` (its
/// `MAX_WORKERS`) and would panic at startup beyond it.
const MAX_WORKERS: usize = 512;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            api_token: None,
            max_body_bytes: 64 * 1024,
            workers: 2,
        }
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        for (k, v) in [("http.listen", &self.listen), ("http.admin_listen", &self.admin_listen)] {
            if v.parse::<std::net::SocketAddr>().is_err() {
                return err(format!("{k} = {v:?}: expected ip:port, e.g. 127.0.0.1:8080"));
            }
        }
        if let (Ok(a), Ok(b)) =
            (self.listen.parse::<std::net::SocketAddr>(), self.admin_listen.parse::<std::net::SocketAddr>())
        {
            // The same port on the same address, or on a wildcard and another
            // address of its family (`[::]` takes IPv4 too): one bind fails.
            let dual = |x: &std::net::SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
            let overlap = a.ip() == b.ip()
                || dual(&a)
                || dual(&b)
                || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()));
            if a.port() != 0 && a.port() == b.port() && overlap {
                return err(format!(
                    "http.admin_listen = {:?}: the same port as http.listen = {:?}; the two servers need their own",
                    self.admin_listen, self.listen
                ));
            }
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return err(format!("http.workers = {}: must be 1..={MAX_WORKERS} (actix-server's most)", self.workers));
        }
        if self.max_body_bytes < 1024 {
            return err("http.max_body_bytes must be >= 1024".into());
        }
        if let Some(t) = &self.api_token {
            if t.len() < 16 {
                return err("http.api_token must be at least 16 characters".into());
            }
            // What a client can send in `Authorization: Bearer <token>` (the
            // header is trimmed; inner spaces survive).
            if t.as_str() != t.trim() || !t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                return err("http.api_token must be printable ASCII, without spaces at either end or newlines (a trailing newline from a secret file?): no request could match it".into());
            }
        }
        Ok(())
    }
}
