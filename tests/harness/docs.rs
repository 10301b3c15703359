//! Code blocks of the project's Markdown documents, for the tests that run
//! what the documents show exactly as written.

/// The ```` ```lang ```` blocks of `text` in order, each with the 1-based
/// line number of its opening fence.
pub fn fenced_blocks(text: &str, lang: &str) -> Vec<(usize, String)> {
    let open = format!("```{lang}");
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut block, line.trim_start()) {
            (None, l) if l == open => block = Some((n + 1, String::new())),
            (Some(_), "```") => out.extend(block.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// The key paths of `shown` (a documented JSON example; `"..."` keys stand
/// for more) that `live` lacks: a documented field the code does not send.
pub fn keys_missing(shown: &serde_json::Value, live: &serde_json::Value, at: &str) -> Vec<String> {
    let (Some(shown), Some(live)) = (shown.as_object(), live.as_object()) else { return vec![] };
    let mut missing = Vec::new();
    for (k, v) in shown.iter().filter(|(k, _)| k.as_str() != "...") {
        let path = format!("{at}.{k}");
        match live.get(k) {
            None => missing.push(path),
            Some(l) => missing.extend(keys_missing(v, l, &path)),
        }
    }
    missing
}

/// The ```` ```json ```` block that follows `heading` in `doc` (a path under
/// the repository), parsed.
pub fn json_example(doc: &str, heading: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(super::repo_root().join(doc)).unwrap();
    let from = text.find(heading).unwrap_or_else(|| panic!("{doc}: no {heading:?}"));
    let (_, block) = fenced_blocks(&text[from..], "json").into_iter().next().expect("a json block after the heading");
    serde_json::from_str(&block).unwrap_or_else(|e| panic!("{doc}, {heading}: the example is not JSON: {e}"))
}
