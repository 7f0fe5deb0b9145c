//! Telegram-flavoured HTML: escaping, length as Telegram counts it, and
//! splitting or truncating without breaking a tag or an entity.
//!
//! Telegram limits a message to 4,096 characters *after entity parsing*:
//! tags count nothing, `&amp;` counts as the one character it stands for,
//! and characters are counted in UTF-16 code units (an emoji outside the
//! Basic Multilingual Plane counts 2).

/// Escapes `&`, `<`, `>` and `"` so `text` shows verbatim in `parse_mode =
/// HTML` (the four entities Telegram's HTML parser understands by name).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// `<b>`, `</b>`, `<a href="...">`: counts nothing.
    Open {
        raw: &'a str,
        name: &'a str,
    },
    Close {
        raw: &'a str,
    },
    /// `&amp;`, `&#128512;`: counts as the character it stands for.
    Entity {
        raw: &'a str,
        units: usize,
    },
    Char {
        raw: &'a str,
        units: usize,
    },
}

impl<'a> Token<'a> {
    fn raw(&self) -> &'a str {
        match *self {
            Token::Open { raw, .. }
            | Token::Close { raw }
            | Token::Entity { raw, .. }
            | Token::Char { raw, .. } => raw,
        }
    }

    fn units(&self) -> usize {
        match *self {
            Token::Open { .. } | Token::Close { .. } => 0,
            Token::Entity { units, .. } | Token::Char { units, .. } => units,
        }
    }
}

fn entity_units(body: &str) -> usize {
    let code = if let Some(hex) = body.strip_prefix("#x").or_else(|| body.strip_prefix("#X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if let Some(dec) = body.strip_prefix('#') {
        dec.parse().ok()
    } else {
        None
    };
    code.and_then(char::from_u32).map_or(1, char::len_utf16)
}

/// The token at the start of a non-empty `rest`. A stray `<` or `&` that
/// does not start a tag or an entity is a plain character (our own output
/// never has one: text is escaped).
fn next_token(rest: &str) -> Token<'_> {
    let c = rest.chars().next().expect("rest is not empty");
    let token = match c {
        '<' => rest.find('>').map(|end| {
            let raw = &rest[..=end];
            if raw.starts_with("</") {
                Token::Close { raw }
            } else {
                let inner = &raw[1..raw.len() - 1];
                let name_end = inner
                    .find(|c: char| c.is_whitespace() || c == '/')
                    .unwrap_or(inner.len());
                Token::Open {
                    raw,
                    name: &inner[..name_end],
                }
            }
        }),
        // Entities are short: look no further than `&#1114111;`.
        '&' => rest.as_bytes()[..rest.len().min(11)]
            .iter()
            .position(|&b| b == b';')
            .filter(|&end| {
                end > 1
                    && rest[1..end]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '#')
            })
            .map(|end| Token::Entity {
                raw: &rest[..=end],
                units: entity_units(&rest[1..end]),
            }),
        _ => None,
    };
    token.unwrap_or_else(|| Token::Char {
        raw: &rest[..c.len_utf8()],
        units: c.len_utf16(),
    })
}

/// The tokens of `html`, lazily.
fn tokens(html: &str) -> impl Iterator<Item = Token<'_>> {
    let mut rest = html;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let t = next_token(rest);
        rest = &rest[t.raw().len()..];
        Some(t)
    })
}

fn tokenize(html: &str) -> Vec<Token<'_>> {
    tokens(html).collect()
}

/// The length of `html` as Telegram counts it: UTF-16 code units of the
/// text after tags are removed and entities decoded.
pub fn visible_len(html: &str) -> usize {
    tokens(html).map(|t| t.units()).sum()
}

/// Open tags: (name, the opening tag as written).
type OpenTags<'a> = Vec<(&'a str, &'a str)>;

fn close_all(out: &mut String, open: &[(&str, &str)]) {
    for (name, _) in open.iter().rev() {
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }
}

fn reopen_all(out: &mut String, open: &[(&str, &str)]) {
    for (_, raw) in open {
        out.push_str(raw);
    }
}

/// Splits `html` into parts of at most `limit` visible units each
/// (`limit` ≥ 2). Parts end at a line break when one falls in the second
/// half of the part, else wherever the limit falls; never inside a tag or an
/// entity, and never inside a character. Tags open at a cut are closed at the
/// end of the part and reopened at the start of the next, so every part is
/// well-formed on its own.
pub fn split(html: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(2);
    let tokens = tokenize(html);
    let mut parts = Vec::new();
    // The current part: its tokens, visible length, and the last line-break
    // cut point (token index after the '\n', units, open tags there).
    let mut start = 0usize;
    let mut open: OpenTags<'_> = Vec::new();
    let mut reopened: OpenTags<'_> = Vec::new();
    let mut units = 0usize;
    let mut cut: Option<(usize, usize, OpenTags<'_>)> = None;
    let mut i = 0usize;
    while i < tokens.len() {
        let t = tokens[i];
        if units + t.units() > limit && units > 0 {
            let (end, end_units, end_open) = match cut.take() {
                Some((at, at_units, at_open)) if at_units * 2 >= limit => (at, at_units, at_open),
                _ => (i, units, open.clone()),
            };
            let mut part = String::new();
            reopen_all(&mut part, &reopened);
            for t in &tokens[start..end] {
                part.push_str(t.raw());
            }
            close_all(&mut part, &end_open);
            parts.push(part);
            // The next part starts at the cut, with the tags open there
            // reopened; tokens after the cut are scanned again.
            debug_assert!(end_units > 0, "every part makes progress");
            start = end;
            open = end_open.clone();
            reopened = end_open;
            units = 0;
            i = start;
            continue;
        }
        match t {
            Token::Open { raw, name } => open.push((name, raw)),
            Token::Close { .. } => {
                open.pop();
            }
            _ => {}
        }
        units += t.units();
        i += 1;
        if t.raw() == "\n" {
            cut = Some((i, units, open.clone()));
        }
    }
    if start < tokens.len() || parts.is_empty() {
        let mut part = String::new();
        reopen_all(&mut part, &reopened);
        for t in &tokens[start..] {
            part.push_str(t.raw());
        }
        parts.push(part);
    }
    parts
}

/// Cuts `html` to at most `limit` visible units (`limit` ≥ 1), ending with
/// `…` when anything was cut, with open tags closed.
pub fn truncate(html: &str, limit: usize) -> String {
    let limit = limit.max(1);
    if visible_len(html) <= limit {
        return html.to_owned();
    }
    let mut out = String::new();
    let mut open: OpenTags<'_> = Vec::new();
    let mut units = 0usize;
    // Keep one unit for the ellipsis.
    for t in tokens(html) {
        if units + t.units() > limit - 1 {
            break;
        }
        match t {
            Token::Open { raw, name } => open.push((name, raw)),
            Token::Close { .. } => {
                open.pop();
            }
            _ => {}
        }
        units += t.units();
        out.push_str(t.raw());
    }
    out.push('…');
    close_all(&mut out, &open);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_the_four_entities() {
        assert_eq!(
            escape(r#"a < b && c > "d" 'e'"#),
            "a &lt; b &amp;&amp; c &gt; &quot;d&quot; 'e'"
        );
    }

    #[test]
    fn counts_like_telegram() {
        assert_eq!(visible_len("<b>ab</b>"), 2);
        assert_eq!(visible_len("&amp;&lt;"), 2);
        assert_eq!(visible_len("é"), 1, "one BMP char is one unit");
        assert_eq!(visible_len("😀"), 2, "astral chars are two UTF-16 units");
        assert_eq!(visible_len("&#128512;"), 2);
        assert_eq!(visible_len("&#x41;"), 1);
        assert_eq!(visible_len("a & b"), 5, "a stray ampersand is a character");
    }

    #[test]
    fn split_prefers_line_breaks_and_rebalances_tags() {
        let html = "<b>title</b>\nline one\nline two is longer";
        let parts = split(html, 20);
        assert_eq!(parts, ["<b>title</b>\nline one\n", "line two is longer"]);

        // A cut inside <b> closes it and reopens it in the next part.
        let parts = split("<b>abcdefghij</b>", 4);
        assert_eq!(
            parts,
            ["<b>abcd</b>", "<b>efgh</b>", "<b>ij</b>"],
            "every part is well-formed"
        );
    }

    #[test]
    fn split_never_cuts_entities_or_surrogates() {
        let parts = split("ab&amp;cd😀e", 3);
        assert_eq!(parts, ["ab&amp;", "cd", "😀e"]);
        for p in &parts {
            assert!(visible_len(p) <= 3);
        }
    }

    #[test]
    fn truncate_marks_and_closes() {
        assert_eq!(truncate("<b>abc</b>", 3), "<b>abc</b>", "fits: unchanged");
        assert_eq!(truncate("<b>abcdef</b>", 4), "<b>abc…</b>");
        assert_eq!(truncate("x&amp;&amp;&amp;", 3), "x&amp;…");
        assert_eq!(visible_len(&truncate(&"😀".repeat(10), 5)), 5);
    }

    fn arb_html() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-z ]{0,12}".prop_map(|s| escape(&s)),
            Just("\n".to_owned()),
            Just("&amp;".to_owned()),
            Just("😀".to_owned()),
            "[a-zé<>&]{1,8}".prop_map(|s| format!("<b>{}</b>", escape(&s))),
            "[a-z]{1,8}".prop_map(|s| format!("<a href=\"https://x/{s}\">{s}</a>")),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    /// Strips tags, keeps entities raw: what the reader sees, modulo
    /// decoding, which is the same on both sides of a comparison.
    fn text_only(html: &str) -> String {
        tokenize(html)
            .into_iter()
            .filter(|t| matches!(t, Token::Char { .. } | Token::Entity { .. }))
            .map(|t| t.raw())
            .collect()
    }

    fn balanced(html: &str) -> bool {
        let mut stack = Vec::new();
        for t in tokenize(html) {
            match t {
                Token::Open { name, .. } => stack.push(name),
                Token::Close { raw } => {
                    let matches = stack.pop() == Some(&raw[2..raw.len() - 1]);
                    if !matches {
                        return false;
                    }
                }
                _ => {}
            }
        }
        stack.is_empty()
    }

    proptest! {
        /// Splitting loses and adds no visible text, keeps every part within
        /// the limit and well-formed.
        #[test]
        fn split_is_lossless_bounded_and_balanced(html in arb_html(), limit in 2usize..40) {
            let parts = split(&html, limit);
            prop_assert!(!parts.is_empty());
            for p in &parts {
                prop_assert!(visible_len(p) <= limit, "part {p:?} over {limit}");
                prop_assert!(balanced(p), "part {p:?} unbalanced");
            }
            let joined: String = parts.iter().map(|p| text_only(p)).collect();
            prop_assert_eq!(joined, text_only(&html));
        }

        /// Truncating keeps within the limit, stays well-formed, and keeps a
        /// prefix of the text.
        #[test]
        fn truncate_is_bounded_prefix(html in arb_html(), limit in 1usize..40) {
            let t = truncate(&html, limit);
            prop_assert!(visible_len(&t) <= limit);
            prop_assert!(balanced(&t));
            let kept = text_only(&t);
            let kept = kept.strip_suffix('…').unwrap_or(&kept);
            prop_assert!(text_only(&html).starts_with(kept));
        }
    }
}
