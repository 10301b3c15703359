//! The `OUTBOX_*` environment variables as figment reads them, checked
//! before they are: a variable figment would drop or misread is refused by
//! its own name.
//!
//! Guarantee: every `OUTBOX_*` variable (but `OUTBOX_CONFIG`, the file) is
//! either a configuration key or an error naming the variable. figment skips
//! a variable whose key has an empty part (`OUTBOX_HTTP__API_TOKEN__`,
//! `OUTBOX_HTTP____API_TOKEN`, `OUTBOX_HTTP__API_TOKEN.`) without a word: the
//! value would be lost (an API token: the API would run without one). Two
//! variables for one key (another case, `.` for `__`) are refused naming
//! both (figment kept whichever came last). `OUTBOX_KAFKA__EXTRA__<P>`
//! sets one librdkafka property `p` whole (`__` read as `.`).

use super::ConfigError;

/// The prefix of every configuration variable (matched as figment matches
/// it: in any case).
pub(super) const PREFIX: &str = "OUTBOX_";

/// The variable that names the config file (`--config`), not a key.
const CONFIG_FILE_VAR: &str = "OUTBOX_CONFIG";

/// [`CONFIG_FILE_VAR`] as figment names it (prefix off, lowercased), for
/// its `ignore`: it would otherwise read it as a top-level key `config`.
pub(super) const CONFIG_FILE_KEY: &str = "config";

/// The configuration variables in the environment: (name, key path as
/// figment reads it, lowercased and split on `__` and `.`).
/// Sorted by name, so the first one found is the same on every run.
fn config_vars() -> Vec<(String, Vec<String>)> {
    let mut vars: Vec<(String, Vec<String>)> = std::env::vars_os()
        .filter_map(|(name, _)| {
            let name = name.to_string_lossy().into_owned();
            let trimmed = name.trim();
            let head = trimmed.get(..PREFIX.len())?;
            if !head.eq_ignore_ascii_case(PREFIX) || trimmed.eq_ignore_ascii_case(CONFIG_FILE_VAR) {
                return None;
            }
            let key = trimmed[PREFIX.len()..].trim().replace("__", ".").to_ascii_lowercase();
            Some((name, key.split('.').map(str::to_string).collect()))
        })
        .collect();
    vars.sort();
    vars
}

/// Refuses a configuration variable whose key has an empty part: figment
/// would drop it silently.
pub(super) fn check_vars() -> Result<(), ConfigError> {
    // The file variable is read by its exact name only (the command line's
    // `-c`/`OUTBOX_CONFIG`): another spelling named no file, silently.
    if let Some(name) = std::env::vars_os()
        .map(|(n, _)| n.to_string_lossy().into_owned())
        .find(|n| n.trim().eq_ignore_ascii_case(CONFIG_FILE_VAR) && n != CONFIG_FILE_VAR)
    {
        return Err(ConfigError(format!(
            "environment variable {name}: the configuration file is named by {CONFIG_FILE_VAR}, in upper case; this spelling is not read"
        )));
    }
    let vars = config_vars();
    if let Some((name, _)) = vars.iter().find(|(_, path)| path.iter().any(String::is_empty)) {
        return Err(ConfigError(format!(
            "environment variable {name}: not a configuration key (an empty part: a key is OUTBOX_ then its \
             section and name joined with __, e.g. OUTBOX_HTTP__API_TOKEN; no leading, trailing or doubled __ or .)"
        )));
    }
    // Two spellings of one key (case, `.` for `__`): figment keeps whichever
    // the environment lists last, without a word.
    for (i, (name, path)) in vars.iter().enumerate() {
        if let Some((other, _)) = vars[i + 1..].iter().find(|(_, p)| p == path) {
            return Err(ConfigError(format!(
                "environment variables {name} and {other} both set {}: keep one",
                path.join(".")
            )));
        }
    }
    Ok(())
}

/// Whether figment's key for a variable (prefix off, in any case, its
/// parts joined by `__` or `.`) is one librdkafka property of
/// `kafka.extra` (`KAFKA__EXTRA__SASL__PASSWORD`): read by
/// [`extra_properties`], never by figment (which would nest it).
pub(super) fn is_extra_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace("__", ".");
    k.strip_prefix("kafka.extra.").is_some_and(|rest| !rest.is_empty())
}

/// `OUTBOX_KAFKA__EXTRA__<PROPERTY>` variables: (librdkafka property, value
/// as written). The property is the rest of the name, lowercased, its
/// parts joined by `.` (`SASL__PASSWORD` and `SASL.PASSWORD` are
/// `sasl.password`): librdkafka's names are lowercase, and `.` is not
/// allowed in a shell's variable names.
pub(super) fn extra_properties() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, path) in config_vars() {
        if path.len() < 3 || path[0] != "kafka" || path[1] != "extra" {
            continue;
        }
        let value = std::env::var(&name)
            .map_err(|_| ConfigError(format!("environment variable {name}: its value is not UTF-8")))?;
        out.push((path[2..].join("."), value));
    }
    Ok(out)
}

/// The variable that set `path` (or a key below it), if one did.
pub(super) fn variable_for(path: &[String]) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    config_vars()
        .into_iter()
        .find(|(_, key)| key.len() >= path.len() && key.iter().zip(path).all(|(k, p)| k.eq_ignore_ascii_case(p)))
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_key_is_the_variable_as_figment_names_it() {
        assert!(format!("{PREFIX}{CONFIG_FILE_KEY}").eq_ignore_ascii_case(CONFIG_FILE_VAR));
    }
}
