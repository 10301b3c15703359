//! Runs the built `outboxd` with an environment exactly as a document or the
//! compose file writes it, and checks that what was written took effect in
//! the effective configuration `outboxd config` prints.
//!
//! Guarantee: a value counts as "taken" only when it shows in the JSON at the
//! key the variable or file names (`OUTBOX_A__B_C` -> `a.b_c`); a secret
//! shows redacted, and then counts only because it differs from the output
//! without it.
#![allow(dead_code)]

use figment::providers::Format;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// The marker `outboxd config` prints instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// `outboxd ARGS` in `cwd` with exactly `env` (plus PATH), nothing inherited.
pub fn outboxd(args: &[&str], env: &[(String, String)], cwd: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outboxd"));
    cmd.args(args).current_dir(cwd).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("outboxd runs")
}

/// The effective configuration, or the exit code and stderr.
pub fn effective_config(env: &[(String, String)], cwd: &Path) -> Result<Value, String> {
    let out = outboxd(&["config"], env, cwd);
    if !out.status.success() {
        return Err(format!("exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// `OUTBOX_KAFKA__BROKERS` -> ["kafka", "brokers"].
pub fn env_key_path(var: &str) -> Vec<String> {
    let rest = var.strip_prefix("OUTBOX_").unwrap_or(var);
    rest.split("__").map(|s| s.to_ascii_lowercase()).collect()
}

pub fn json_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k.as_str()))
}

/// A JSON leaf as the text an environment variable would hold.
pub fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Same value, allowing `1` vs `1.0` for floats written as integers.
fn same(got: &Value, want: &str) -> bool {
    if as_text(got) == want {
        return true;
    }
    match (got.as_f64(), want.parse::<f64>()) {
        (Some(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Asserts that `OUTBOX_...=value` shows in `cfg`; `baseline` is the output
/// without the variable (for secrets, which show redacted).
pub fn assert_env_taken(var: &str, value: &str, cfg: &Value, baseline: &Value, context: &str) {
    let path = env_key_path(var);
    let got = json_at(cfg, &path)
        .unwrap_or_else(|| panic!("{context}: {var}: no key {} in `outboxd config`", path.join(".")));
    if got.as_str() == Some(REDACTED) {
        assert_ne!(json_at(baseline, &path), Some(got), "{context}: {var} (a secret) made no difference");
        return;
    }
    assert!(same(got, value), "{context}: {var}={value} did not take effect: {} = {got}", path.join("."));
}

/// Every leaf of a TOML file, as (key path, JSON value).
pub fn toml_leaves(file: &Path) -> Vec<(Vec<String>, Value)> {
    let v: Value = figment::Figment::from(figment::providers::Toml::file(file))
        .extract()
        .unwrap_or_else(|e| panic!("{} is valid TOML: {e}", file.display()));
    let mut out = Vec::new();
    leaves(&v, &mut Vec::new(), &mut out);
    out
}

fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                path.push(k.clone());
                leaves(v, path, out);
                path.pop();
            }
        }
        other => out.push((path.clone(), other.clone())),
    }
}

/// Asserts every value of the config file shows in `cfg`, except the keys an
/// environment variable overrides (`overridden` holds their key paths).
pub fn assert_file_taken(file: &Path, cfg: &Value, overridden: &[Vec<String>], context: &str) {
    let all = toml_leaves(file);
    assert!(!all.is_empty(), "{context}: {} has values", file.display());
    for (path, want) in all {
        if overridden.contains(&path) {
            continue;
        }
        let got = json_at(cfg, &path)
            .unwrap_or_else(|| panic!("{context}: {}: key {} missing", file.display(), path.join(".")));
        if got.as_str() == Some(REDACTED) {
            continue;
        }
        assert!(
            same(got, &as_text(&want)),
            "{context}: {} sets {} = {want}, `outboxd config` shows {got}",
            file.display(),
            path.join(".")
        );
    }
}
