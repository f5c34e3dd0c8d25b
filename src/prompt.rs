//! The prompt: templated ids with a `kind` for every position.
//!
//! A position is `text` when its token covers bytes the user wrote (the user
//! message or `--system`), `template` when the chat template put it there
//! (special tokens, role names, a default system prompt, BOS), and `dummy`
//! for the filler appended by `--dummy N`.

use serde::{Deserialize, Serialize};

use crate::template::{ChatTemplate, Message};
use crate::tokenize::TextTokenizer;
use crate::{Error, OptionName, Result};

/// What put a token into the prompt.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Text the user wrote (the prompt or `--system`).
    Text,
    /// Special tokens and text the chat template inserted.
    Template,
    /// Filler appended after the generation prompt by `--dummy N`.
    Dummy,
}

impl TokenKind {
    /// The lowercase name, as in the JSON (`text`, `template`, `dummy`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Text => "text",
            TokenKind::Template => "template",
            TokenKind::Dummy => "dummy",
        }
    }
}

/// The first position after the user's text (the start of the template's
/// tail and dummies); 0 when there is no text, `len` when nothing follows it.
/// The one copy of this rule: [`crate::grid::LensGrid::tail_start`], the
/// rehearsal summary, `--positions tail`, the default figure window and the
/// batch curves all call it.
pub(crate) fn tail_start(
    mut kinds: impl DoubleEndedIterator<Item = TokenKind> + ExactSizeIterator,
) -> usize {
    kinds
        .rposition(|k| k == TokenKind::Text)
        .map_or(0, |i| i + 1)
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct PromptSpec {
    /// The user message (or the whole text with `raw`).
    pub user: String,
    /// `--system`.
    pub system: Option<String>,
    /// `--raw`: no chat template.
    pub raw: bool,
    /// `--dummy N`.
    pub dummy: usize,
    /// `--dummy-text`; must encode to exactly one token. Default ".".
    pub dummy_text: Option<String>,
}

/// Ids ready for the model, each labelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The templated text (without dummies).
    pub text: String,
    pub ids: Vec<u32>,
    pub kinds: Vec<TokenKind>,
}

/// The filler text when `--dummy-text` is not given.
pub(crate) const DEFAULT_DUMMY_TEXT: &str = ".";

/// Render, tokenise, add BOS if the model wants one and the template did not, append dummies.
///
/// Without a template (or with `spec.raw`) the user text is tokenised as is.
pub fn build_prompt(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    spec: &PromptSpec,
) -> Result<Prompt> {
    if spec.user.trim().is_empty() {
        return Err(Error::InvalidOption("the prompt is empty".into()));
    }
    // Check the filler first: a bad dummy text should fail before any work.
    let dummy_id = if spec.dummy > 0 || spec.dummy_text.is_some() {
        Some(dummy_token(
            tok,
            spec.dummy_text.as_deref().unwrap_or(DEFAULT_DUMMY_TEXT),
        )?)
    } else {
        None
    };

    let (text, spans) = match template.filter(|_| !spec.raw) {
        Some(template) => render(tok, template, spec)?,
        None => (spec.user.clone(), vec![(0, spec.user.len())]),
    };

    let enc = tok.encode(&text)?;
    let mut ids = enc.ids;
    let mut kinds: Vec<TokenKind> = enc
        .offsets
        .iter()
        .map(|&span| {
            if spans.iter().any(|&content| overlaps(span, content)) {
                TokenKind::Text
            } else {
                TokenKind::Template
            }
        })
        .collect();

    // BOS only where the model wants one and the template has not put it there
    // (Gemma's template starts with `<bos>`; adding another would double it).
    if let Some((bos, _)) = tok.bos() {
        if tok.add_bos() && ids.first() != Some(&bos) {
            ids.insert(0, bos);
            kinds.insert(0, TokenKind::Template);
        }
    }

    if let Some(id) = dummy_id {
        ids.extend(std::iter::repeat_n(id, spec.dummy));
        kinds.extend(std::iter::repeat_n(TokenKind::Dummy, spec.dummy));
    }
    Ok(Prompt { text, ids, kinds })
}

/// The single token of the filler text.
fn dummy_token(tok: &TextTokenizer, text: &str) -> Result<u32> {
    let ids = tok.encode(text)?.ids;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => Err(Error::option(
            OptionName::DummyText,
            format!(
                "the dummy text `{text}` must encode to exactly one token, but it gives {} tokens",
                ids.len()
            ),
        )),
    }
}

/// Whether a token's byte span touches a content span. A token straddling the
/// boundary counts; an empty span counts when it sits inside the content.
fn overlaps((s, e): (usize, usize), (cs, ce): (usize, usize)) -> bool {
    if s == e {
        cs <= s && s < ce
    } else {
        s < ce && e > cs
    }
}

/// The rendered prompt and the byte spans of the user-written content in it.
fn render(
    tok: &TextTokenizer,
    template: &ChatTemplate,
    spec: &PromptSpec,
) -> Result<(String, Vec<(usize, usize)>)> {
    let bos = tok.bos().map_or("", |(_, s)| s);
    let eos = tok.eos().map_or("", |(_, s)| s);
    let messages = |system: Option<&str>, user: &str| {
        let mut m = Vec::new();
        if let Some(sys) = system {
            m.push(Message::new("system", sys));
        }
        m.push(Message::new("user", user));
        m
    };
    let system = spec.system.as_deref();
    let text = template.render(&messages(system, &spec.user), bos, eos, true)?;
    let spans = locate_by_markers(template, spec, bos, eos, &text, &messages)
        .unwrap_or_else(|| locate_by_search(&text, system, &spec.user));
    Ok((text, spans))
}

// Private-use characters: no template transforms them and no user types them.
const USER_MARKER: &str = "\u{F8F0}lensmap-user\u{F8F1}";
const SYSTEM_MARKER: &str = "\u{F8F0}lensmap-system\u{F8F1}";

/// Render again with markers in place of the contents: the text around each
/// marker is what the template wrote. If putting the contents (or, for
/// templates that `| trim` them, the trimmed contents) back in gives exactly
/// the real rendering, the content spans are known exactly.
fn locate_by_markers(
    template: &ChatTemplate,
    spec: &PromptSpec,
    bos: &str,
    eos: &str,
    rendered: &str,
    messages: &dyn Fn(Option<&str>, &str) -> Vec<Message>,
) -> Option<Vec<(usize, usize)>> {
    let system_marker = spec.system.as_ref().map(|_| SYSTEM_MARKER);
    let marked = template
        .render(&messages(system_marker, USER_MARKER), bos, eos, true)
        .ok()?;

    // Split the marked rendering into template text and marker slots, in order.
    let mut slots: Vec<(usize, bool)> = Vec::new(); // (position, is_user)
    for (marker, is_user) in [(Some(USER_MARKER), true), (system_marker, false)] {
        if let Some(marker) = marker {
            let found: Vec<usize> = marked.match_indices(marker).map(|(i, _)| i).collect();
            if found.len() != 1 {
                return None; // dropped or repeated content: fall back to searching
            }
            slots.push((found[0], is_user));
        }
    }
    slots.sort();

    let system = spec.system.as_deref().unwrap_or("");
    for trim in [false, true] {
        let content = |is_user: bool| {
            let c = if is_user { spec.user.as_str() } else { system };
            if trim {
                c.trim()
            } else {
                c
            }
        };
        let mut rebuilt = String::with_capacity(rendered.len());
        let mut spans = Vec::new();
        let mut pos = 0;
        for &(at, is_user) in &slots {
            rebuilt.push_str(&marked[pos..at]);
            let start = rebuilt.len();
            rebuilt.push_str(content(is_user));
            spans.push((start, rebuilt.len()));
            pos = at
                + if is_user {
                    USER_MARKER.len()
                } else {
                    SYSTEM_MARKER.len()
                };
        }
        rebuilt.push_str(&marked[pos..]);
        if rebuilt == rendered {
            return Some(spans);
        }
    }
    None
}

/// Fallback for templates whose output depends on the content: the system
/// content's first occurrence and the user content's last (the question comes
/// after any default system prompt that might repeat it).
fn locate_by_search(rendered: &str, system: Option<&str>, user: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut after = 0;
    if let Some(sys) = system {
        for needle in [sys, sys.trim()] {
            if let Some(i) = rendered.find(needle).filter(|_| !needle.is_empty()) {
                spans.push((i, i + needle.len()));
                after = i + needle.len();
                break;
            }
        }
    }
    for needle in [user, user.trim()] {
        if let Some(i) = rendered[after..]
            .rfind(needle)
            .filter(|_| !needle.is_empty())
        {
            spans.push((after + i, after + i + needle.len()));
            break;
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rules() {
        assert!(overlaps((0, 5), (4, 10)));
        assert!(!overlaps((0, 4), (4, 10)));
        assert!(overlaps((9, 12), (4, 10)));
        assert!(!overlaps((10, 12), (4, 10)));
        assert!(overlaps((5, 5), (4, 10)));
        assert!(!overlaps((10, 10), (4, 10)));
    }

    #[test]
    fn search_fallback() {
        let r = "sys: be nice\nuser: hi there\nassistant:";
        assert_eq!(
            locate_by_search(r, Some("be nice"), " hi there "),
            vec![(5, 12), (19, 27)]
        );
    }
}
