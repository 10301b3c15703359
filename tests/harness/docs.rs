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
