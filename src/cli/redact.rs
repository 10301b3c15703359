//! Keeps secrets out of everything the process prints: log lines (a
//! tracing writer) and the final error line scrub the configuration's
//! secret values (`Config::secret_values`), known once the config loaded.
//!
//! Guarantee: after [`set_secrets`], no log line or error printed through
//! this module contains a secret value (of at least
//! `outboxd::config::scrub`'s minimum length) in clear; before it, there are
//! none to leak (the config has not been read).

use std::io::Write;
use std::sync::RwLock;

use outboxd::config::scrub;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers the secrets of the loaded configuration.
pub fn set_secrets(values: Vec<String>) {
    if let Ok(mut s) = SECRETS.write() {
        *s = values;
    }
}

/// `text` without the registered secrets.
pub fn clean(text: &str) -> String {
    match SECRETS.read() {
        Ok(s) if !s.is_empty() => scrub(text, &s),
        _ => text.to_string(),
    }
}

/// A stderr writer for tracing that scrubs every line it is handed (the
/// fmt layer writes each event in one call).
pub struct ScrubbingStderr;

impl Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(clean(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_cleaned() {
        set_secrets(vec!["hunter2-secret".into()]);
        assert_eq!(clean("login with hunter2-secret failed"), "login with <redacted> failed");
        assert_eq!(clean("nothing here"), "nothing here");
    }
}
