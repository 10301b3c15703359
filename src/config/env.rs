//! The `OUTBOX_*` environment variables as figment reads them, checked
//! before they are: a variable figment would drop or misread is refused by
//! its own name.
//!
//! Guarantee: every `OUTBOX_*` variable (but `OUTBOX_CONFIG`, the file) is
//! either a configuration key or an error naming the variable. figment skips
//! a variable whose key has an empty part (`OUTBOX_HTTP__API_TOKEN__`,
//! `OUTBOX_HTTP____API_TOKEN`, `OUTBOX_HTTP__API_TOKEN.`) without a word: the
//! value would be lost (an API token: the API would run without one).

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
    match config_vars().into_iter().find(|(_, path)| path.iter().any(String::is_empty)) {
        None => Ok(()),
        Some((name, _)) => Err(ConfigError(format!(
            "environment variable {name}: not a configuration key (an empty part: a key is OUTBOX_ then its \
             section and name joined with __, e.g. OUTBOX_HTTP__API_TOKEN; no leading, trailing or doubled __ or .)"
        ))),
    }
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
