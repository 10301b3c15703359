//! `outboxd config`: prints the effective configuration as JSON.
//!
//! Guarantee: every secret is redacted (`Config::redacted`: the CQL
//! password, the API token, secret `kafka.extra` keys).

use outboxd::config::Config;

use super::Failure;

pub fn print(cfg: &Config) -> Result<u8, Failure> {
    out!("{}", serde_json::to_string_pretty(&cfg.redacted())?);
    Ok(0)
}
