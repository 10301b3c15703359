//! `outboxd config`: prints the effective configuration as JSON.
//!
//! Guarantee: secrets are redacted (`http.api_token`).

use outboxd::config::Config;

use super::Failure;

pub fn print(cfg: &Config) -> Result<u8, Failure> {
    println!("{}", serde_json::to_string_pretty(&redacted(cfg))?);
    Ok(0)
}

fn redacted(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    if c.http.api_token.is_some() {
        c.http.api_token = Some("<redacted>".into());
    }
    c
}
