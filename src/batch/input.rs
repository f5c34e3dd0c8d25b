//! The batch input: a JSONL file of `{id, prompt, system?, answer?, alts?,
//! category?}`, one object a line. Parsing never stops at a bad line: each
//! problem becomes a [`LineError`] naming its line, and the good lines go on.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One prompt of the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptItem {
    /// Unique within the file; names the result file `prompts/<file>.json`.
    pub id: String,
    /// The user message.
    pub prompt: String,
    /// A system message for this prompt (else `--system`, else the template's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The expected answer, as the model would write it after "is" (`" Canberra"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Distractors (`" Sydney"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alts: Vec<String>,
    /// A free label, copied to `prompts.jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// A good line.
#[derive(Debug, Clone, PartialEq)]
pub struct InputLine {
    /// 1-based line number in the file.
    pub line: usize,
    pub item: PromptItem,
    /// File stem of the per-prompt result (see [`file_stem`]).
    pub stem: String,
}

/// A line that cannot be run, or a prompt that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineError {
    /// 1-based line number in the input file.
    pub line: usize,
    /// The id, when the line got as far as having one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub message: String,
}

/// A parsed input file.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Lines in the file (blank ones included): the basis of `--shard`.
    pub n_lines: usize,
    /// Good lines, in file order.
    pub items: Vec<InputLine>,
    /// Bad lines, in file order.
    pub errors: Vec<LineError>,
}

/// `--shard I/N`: the `I`-th of `N` contiguous blocks of input lines, `I`
/// counted from 1 as in `cargo nextest --partition count:I/N`, jest and
/// playwright (issue #13 item 8).
///
/// Line `l` (1-based) of a file of `n` lines belongs to shard
/// `⌊(l − 1)·N / n⌋ + 1`, so shard 1 takes the first lines, shard N the last,
/// and the shards' outputs, concatenated in shard order, are in input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based internally; `I − 1`.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether 1-based `line` of a file of `n_lines` lines is in this shard.
    pub fn contains(&self, line: usize, n_lines: usize) -> bool {
        n_lines > 0 && (line - 1) * self.count / n_lines == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, count) =
            crate::parse::usize_pair(s, "/", "I/N (e.g. 1/4)", ["shard index", "shard count"])?;
        if i == 0 && count > 0 {
            return Err(format!(
                "shard `{s}`: shards count from 1 (`1/{count}` … `{count}/{count}`), as in cargo nextest's `--partition count:I/N`"
            ));
        }
        if count == 0 || i > count {
            return Err(format!("shard `{s}` needs 1 <= I <= N"));
        }
        Ok(Shard {
            index: i - 1,
            count,
        })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// Longest file stem kept from an id before the hash suffix.
const STEM_MAX: usize = 80;

/// A file stem for an id: the id itself when it is made of `[A-Za-z0-9._-]`,
/// does not start with `.` and is short; otherwise its safe characters (others
/// become `_`) plus `-` and 8 hex digits of its SHA-256, so distinct ids keep
/// distinct files.
pub fn file_stem(id: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !id.is_empty() && id.len() <= STEM_MAX && !id.starts_with('.') && id.chars().all(safe) {
        return id.to_string();
    }
    let mut s: String = id
        .chars()
        .map(|c| if safe(c) { c } else { '_' })
        .take(STEM_MAX)
        .collect();
    if s.starts_with('.') {
        s.replace_range(0..1, "_");
    }
    let hash = Sha256::digest(id.as_bytes());
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{s}-{hex}")
}

/// Parse a whole input file. Blank lines are skipped; every other line must be
/// one JSON object.
pub fn parse_input(text: &str) -> Input {
    let mut input = Input::default();
    // Lower-cased stems, so ids differing only in case fail on a
    // case-insensitive file system too.
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    let mut seen_stems: HashMap<String, (usize, String)> = HashMap::new();
    // A byte-order mark (Windows editors write one) is not part of line 1.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        input.n_lines = line;
        if raw.trim().is_empty() {
            continue;
        }
        let item = match parse_line(raw) {
            Ok(item) => item,
            Err((id, message)) => {
                input.errors.push(LineError { line, id, message });
                continue;
            }
        };
        if let Some(&first) = seen_ids.get(&item.id) {
            input.errors.push(LineError {
                line,
                id: Some(item.id.clone()),
                message: format!("duplicate id `{}` (first on line {first})", item.id),
            });
            continue;
        }
        let stem = file_stem(&item.id);
        if let Some((first, other)) = seen_stems.get(&stem.to_lowercase()) {
            input.errors.push(LineError {
                line,
                id: Some(item.id.clone()),
                message: format!(
                    "id `{}` and id `{other}` (line {first}) would share a result file name",
                    item.id
                ),
            });
            continue;
        }
        seen_ids.insert(item.id.clone(), line);
        seen_stems.insert(stem.to_lowercase(), (line, item.id.clone()));
        input.items.push(InputLine { line, item, stem });
    }
    input
}

/// The keys a line may have.
const KEYS: [&str; 6] = ["id", "prompt", "system", "answer", "alts", "category"];

/// One line: `Err((id if known, message))`.
fn parse_line(raw: &str) -> Result<PromptItem, (Option<String>, String)> {
    let v: Value = serde_json::from_str(raw).map_err(|e| (None, format!("not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        (
            None,
            "expected a JSON object `{\"id\": ..., \"prompt\": ...}`".to_string(),
        )
    })?;
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(Value::String(_)) => return Err((None, "`id` is empty".into())),
        Some(_) => return Err((None, "`id` must be a string or an integer".into())),
        None => return Err((None, "`id` is missing".into())),
    };
    let fail = |msg: String| (Some(id.clone()), msg);
    // A misspelt key would otherwise be dropped and its default used (an
    // `"anwser"` quietly tracks the greedy answer): refuse it by name.
    if let Some(key) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(fail(format!(
            "unknown key `{key}` (expected: {})",
            KEYS.join(", ")
        )));
    }
    let opt_str = |key: &str| -> Result<Option<String>, (Option<String>, String)> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(fail(format!("`{key}` must be a string"))),
        }
    };
    let prompt = match opt_str("prompt")? {
        Some(p) if !p.trim().is_empty() => p,
        Some(_) => return Err(fail("`prompt` is empty".into())),
        None => return Err(fail("`prompt` is missing".into())),
    };
    let answer = opt_str("answer")?;
    if answer.as_deref().is_some_and(|a| a.trim().is_empty()) {
        return Err(fail(
            "`answer` is empty (leave it out to use the greedy answer)".into(),
        ));
    }
    let alts = match obj.get("alts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                _ => Err(fail("`alts` must be an array of non-empty strings".into())),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(fail("`alts` must be an array of strings".into())),
    };
    Ok(PromptItem {
        system: opt_str("system")?,
        category: opt_str("category")?,
        id,
        prompt,
        answer,
        alts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_lines() {
        let text = r#"{"id": "a", "prompt": "P?", "answer": " A", "alts": [" B"]}

{"id": 7, "prompt": "Q?"}
not json
{"id": "a", "prompt": "dup"}
{"prompt": "no id"}
{"id": "x", "prompt": ""}
{"id": "y", "prompt": "ok", "alts": " B"}
{"id": "A", "prompt": "case"}
"#;
        let input = parse_input(text);
        assert_eq!(input.n_lines, 9);
        let ids: Vec<(&str, usize)> = input
            .items
            .iter()
            .map(|l| (l.item.id.as_str(), l.line))
            .collect();
        assert_eq!(ids, [("a", 1), ("7", 3)]);
        assert_eq!(input.items[0].item.alts, [" B"]);
        let lines: Vec<usize> = input.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5, 6, 7, 8, 9]);
        assert!(input.errors[1]
            .message
            .contains("duplicate id `a` (first on line 1)"));
        assert!(input.errors[2].message.contains("`id` is missing"));
        assert!(input.errors[5].message.contains("share a result file name"));
    }

    #[test]
    fn stems_are_safe_and_distinct() {
        assert_eq!(
            file_stem("capital-australia_1.v2"),
            "capital-australia_1.v2"
        );
        let a = file_stem("a/b");
        let b = file_stem("a_b");
        assert!(a.starts_with("a_b-") && a.len() == 12, "{a}");
        assert_ne!(a, b);
        assert!(file_stem("..").starts_with("_.-"));
        assert!(file_stem("Zürich").starts_with("Z_rich-"));
        assert!(file_stem(&"x".repeat(300)).len() <= STEM_MAX + 9);
    }

    #[test]
    fn shards_partition_lines_in_order() {
        for n in [1usize, 2, 5, 7, 150] {
            for count in 1..=4 {
                let mut owners = Vec::new();
                for line in 1..=n {
                    let s: Vec<usize> = (0..count)
                        .filter(|&i| Shard { index: i, count }.contains(line, n))
                        .collect();
                    assert_eq!(s.len(), 1, "line {line} of {n}, {count} shards");
                    owners.push(s[0]);
                }
                assert!(
                    owners.windows(2).all(|w| w[0] <= w[1]),
                    "blocks are contiguous"
                );
            }
        }
        // `I/N` is 1-based, as in cargo nextest's `--partition count:I/N`.
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 0, count: 4 }
        );
        assert_eq!(
            "4/4".parse::<Shard>().unwrap(),
            Shard { index: 3, count: 4 }
        );
        assert!("0/4".parse::<Shard>().unwrap_err().contains("count from 1"));
        assert!("5/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }
}
