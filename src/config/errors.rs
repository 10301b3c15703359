//! A configuration that figment could not load, as one line an operator
//! can act on: the key as the configuration spells it, the variable that
//! set it, the file it came from, a type in words ("an integer"), and
//! never the value of a secret (nor the source line a parser would quote).

use super::{env, is_secret_key, secrets, ConfigError};

/// figment's message, unless it is about a secret and may quote its value
/// (a wrong type or value): then only the key. An unknown, missing or
/// duplicate key is figment's message whatever its name: that names keys,
/// never a value. A file that does not parse is named with its line and
/// column, never its text: the parser quotes the line
/// (`2 | password = "..."`), whatever secret is on it.
pub(super) fn config_error(e: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let key = e.path.join(".");
    let names_keys_only = matches!(e.kind, Kind::UnknownField(..) | Kind::MissingField(_) | Kind::DuplicateField(_));
    if is_secret_key(&key) && !names_keys_only {
        return ConfigError(format!("{key}: invalid value (a secret: not shown); give it as a string"));
    }
    // From a variable (read by figment, or taken as written by `load`): named
    // by the variable, not by figment's source (a line of this file).
    let from_file = e.metadata.as_ref().is_some_and(|m| matches!(m.source, Some(figment::Source::File(_))));
    let var = (!from_file).then(|| env::variable_for(&e.path)).flatten();
    // A value given to a table that holds secrets (`kafka.extra` as one
    // string, `OUTBOX_HTTP='{api_token=...'`) is quoted whole by figment,
    // the secret in it too: shown without the value.
    // (A file that does not parse is a message whose quoted line is dropped below.)
    if let Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) = &e.kind {
        if secrets::mentions_secret(&e.kind.to_string()) {
            let name = var.map(|v| format!("environment variable {v}")).unwrap_or(key);
            return ConfigError(format!(
                "{name}: invalid value, expected {expected} (not shown: it holds a secret's name)"
            ));
        }
    }
    if let Some(var) = var {
        // "OUTBOX_X (x): expected ..." when the message starts with the key it sets.
        let what = match plain(&e.kind, &key) {
            Some(w) if w.starts_with(&format!("{key}: ")) => format!(" ({key}){}", &w[key.len()..]),
            Some(w) => format!(": {w}"),
            None => format!(": {}", e.kind),
        };
        return ConfigError(format!("environment variable {var}{what}"));
    }
    let file = e.metadata.as_ref().and_then(|m| match &m.source {
        Some(figment::Source::File(p)) => Some(p.display().to_string()),
        _ => None,
    });
    match (plain(&e.kind, &key), file) {
        (Some(what), Some(file)) => ConfigError(format!("{what} (in {file})")),
        (Some(what), None) => ConfigError(what),
        _ => ConfigError(without_source_lines(&e.to_string())),
    }
}

/// An unknown key or a wrong type in this file's words: the key as the
/// configuration spells it (`kafka.bogus`, not figment's profile-prefixed
/// `default.kafka.bogus`) and the type as a person says it ("an integer",
/// not "i32"). None: another kind, left as figment says it.
fn plain(kind: &figment::error::Kind, key: &str) -> Option<String> {
    use figment::error::Kind;
    match kind {
        Kind::UnknownField(_, []) => Some(format!("unknown key `{key}`: this table takes no keys")),
        Kind::UnknownField(_, expected) => {
            Some(format!("unknown key `{key}`; expected one of: {}", expected.join(", ")))
        }
        Kind::InvalidType(actual, expected) => {
            let expected = match expected.as_str() {
                "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
                    "an integer"
                }
                "f32" | "f64" => "a number",
                t if t.starts_with("struct ") || t == "a map" => "a table",
                other => other,
            };
            Some(format!("{key}: expected {expected}, found {actual}"))
        }
        _ => None,
    }
}

/// `message` on one line, without the source excerpt lines (`  |`, `2 | ...`).
fn without_source_lines(message: &str) -> String {
    let excerpt =
        |l: &str| l.trim_start().trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with('|');
    message.lines().filter(|l| !excerpt(l)).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}
