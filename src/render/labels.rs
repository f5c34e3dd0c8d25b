//! How a token is written in a figure.
//!
//! * a space, byte-level `Ġ` and SentencePiece `▁` become `_`;
//! * newline, tab and carriage return become `\n`, `\t`, `\r`; other control
//!   characters become `\xNN`;
//! * a character the bundled font cannot draw becomes `�` (never a blank box);
//! * an empty token (an id beyond the tokenizer's vocab) is `∅`;
//! * a label longer than [`MAX_LABEL`] characters is cut to
//!   [`MAX_LABEL`]` - 1` characters plus `...` (`_capit...`, `<|eot_...`).

use super::font::has_glyph;

/// Longest label kept whole.
pub const MAX_LABEL: usize = 7;

/// Widest label after truncation, in characters (`_capit...`).
pub const MAX_LABEL_CHARS: usize = MAX_LABEL - 1 + 3;

/// What is drawn for a character the font lacks.
const REPLACEMENT: char = '\u{fffd}';

/// Zero-width and bidi formatting characters: covered by fonts but invisible.
fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00ad | 0x034f | 0x061c | 0x115f | 0x1160 | 0x17b4 | 0x17b5 | 0x180b..=0x180f
        | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x206f | 0x3164 | 0xfe00..=0xfe0f
        | 0xfeff | 0xffa0 | 0xfff0..=0xfff8 | 0xe0000..=0xe0fff)
}

/// The display form of one character (one "unit": truncation never splits it).
fn unit(c: char, out: &mut String) {
    match c {
        ' ' | '\u{120}' | '\u{2581}' => out.push('_'),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
            out.push_str(&format!("\\x{:02x}", c as u32))
        }
        c if c.is_whitespace() => out.push('_'),
        c if is_invisible(c) || !has_glyph(c) => out.push(REPLACEMENT),
        c => out.push(c),
    }
}

/// A token's full display text, without truncation.
pub fn token_display(text: &str) -> String {
    if text.is_empty() {
        return "\u{2205}".to_string();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        unit(c, &mut out);
    }
    out
}

/// A token's label: [`token_display`] cut to at most [`MAX_LABEL_CHARS`] characters.
pub fn token_label(text: &str) -> String {
    let full = token_display(text);
    if full.chars().count() <= MAX_LABEL {
        return full;
    }
    // Cut on unit boundaries so that `\n` is never split into `\`.
    let mut out = String::new();
    let mut n = 0;
    let mut buf = String::new();
    for c in text.chars() {
        buf.clear();
        unit(c, &mut buf);
        let len = buf.chars().count();
        if n + len > MAX_LABEL - 1 {
            break;
        }
        out.push_str(&buf);
        n += len;
    }
    out.push_str("...");
    out
}

/// Free text (title, prompt, answer): control characters escaped and missing
/// glyphs replaced, spaces kept. Cut to `max_chars` with `…` when longer.
pub(crate) fn plain_text(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' ' => out.push(' '),
            c if c.is_whitespace() && !c.is_control() => out.push(' '),
            c => unit(c, &mut out),
        }
    }
    if out.chars().count() > max_chars {
        let mut cut: String = out.chars().take(max_chars.saturating_sub(1)).collect();
        cut.push('\u{2026}');
        cut
    } else {
        out
    }
}

/// Escape text for XML character data and attribute values.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all; labels never carry them, but be safe.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(REPLACEMENT),
            '\u{fffe}' | '\u{ffff}' => out.push(REPLACEMENT),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // `token_label`'s cases are in `tests/render.rs`
    // (`labels_follow_truncation_and_underscore_rules`), next to the figure's labels.
    #[test]
    fn escaping_and_plain_text() {
        assert_eq!(
            xml_escape("<|im_end|> & \"x\""),
            "&lt;|im_end|&gt; &amp; &quot;x&quot;"
        );
        assert_eq!(plain_text("a b\nc", 10), "a b\\nc");
        assert_eq!(plain_text("abcdefghijkl", 5), "abcd\u{2026}");
    }
}
