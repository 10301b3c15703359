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
    let plain = plain(&e.kind, &key);
    if let Some(var) = var {
        return ConfigError(match plain {
            Some(Plain::Unknown(what)) => format!("environment variable {var}: {what}"),
            Some(Plain::Type(what)) => format!("environment variable {var} ({key}): {what}"),
            None => format!("environment variable {var}: {}", e.kind),
        });
    }
    let file = e.metadata.as_ref().and_then(|m| match &m.source {
        Some(figment::Source::File(p)) => Some(p.display().to_string()),
        _ => None,
    });
    let what = match plain {
        Some(Plain::Unknown(what)) => what,
        Some(Plain::Type(what)) => format!("{key}: {what}"),
        None => return ConfigError(without_source_lines(&e.to_string())),
    };
    ConfigError(match file {
        Some(file) => format!("{what} (in {file})"),
        None => what,
    })
}

/// An unknown key or a wrong type in this file's words.
enum Plain {
    /// Names the key itself, as the configuration spells it (`kafka.bogus`,
    /// not figment's profile-prefixed `default.kafka.bogus`).
    Unknown(String),
    /// The type as a person says it ("an integer", not "i32"), without the
    /// key (each caller names it its way).
    Type(String),
}

/// None: another kind, left as figment says it.
fn plain(kind: &figment::error::Kind, key: &str) -> Option<Plain> {
    use figment::error::Kind;
    match kind {
        Kind::UnknownField(_, []) => Some(Plain::Unknown(format!("unknown key `{key}`: this table takes no keys"))),
        Kind::UnknownField(_, expected) => {
            Some(Plain::Unknown(format!("unknown key `{key}`; expected one of: {}", expected.join(", "))))
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
            Some(Plain::Type(format!("expected {expected}, found {actual}")))
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
