//! One prompt's result, `OUT/prompts/<stem>.json`: the unit of completion.
//!
//! A record is written to a temporary file in the same directory and renamed
//! into place, so it is either absent or whole. It carries a `key` (a hash of
//! the settings and the input line that produced it); a record whose key does
//! not match the current run, or that does not parse, counts as not done.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::input::PromptItem;
use crate::grid::{Answer, LensGrid, ModelInfo, TokenInfo, TrackedRole, TrackedToken};
use crate::rehearsal::RehearsalSummary;
use crate::{Error, Result};

/// Version of the record layout; part of every key.
const RECORD_VERSION: u32 = 1;

/// The reduced lens result of one prompt: what the tables need, nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRecord {
    /// Hash of the settings and the input item; see [`record_key`].
    pub key: String,
    pub item: PromptItem,
    pub model: ModelInfo,
    /// The prompt as tokenised (after the chat template, before dummies).
    pub prompt_text: String,
    pub tokens: Vec<TokenInfo>,
    pub n_rows: usize,
    /// `[row][pos]`, nats; NaN (`null`) outside `--positions`, here and below.
    #[serde(deserialize_with = "crate::grid::nan_grid")]
    pub entropy: Vec<Vec<f64>>,
    /// `[row][pos]`, nats.
    #[serde(deserialize_with = "crate::grid::nan_grid")]
    pub kl_to_final: Vec<Vec<f64>>,
    /// Top-1 token id, `[row][pos]`.
    pub top1: Vec<Vec<u32>>,
    /// Top-1 probability, `[row][pos]`.
    #[serde(deserialize_with = "crate::grid::nan_grid")]
    pub top1_prob: Vec<Vec<f64>>,
    /// Text of every id in `top1`.
    pub vocab: BTreeMap<u32, String>,
    /// The answer (role `answer`) and distractors (`alt`).
    pub tracked: Vec<TrackedToken>,
    /// The greedy continuation.
    pub greedy: Option<Answer>,
    pub rehearsal: Option<RehearsalSummary>,
    /// Whether the greedy text contains the expected answer (trimmed,
    /// case-insensitive); `None` without an expected answer or a greedy text.
    pub correct: Option<bool>,
}

impl PromptRecord {
    /// Reduce a grid.
    pub fn from_grid(key: String, item: &PromptItem, grid: LensGrid) -> Self {
        let top1: Vec<Vec<u32>> = grid
            .topk
            .iter()
            .map(|row| row.iter().map(|c| c.first().map_or(0, |t| t.id)).collect())
            .collect();
        let top1_prob = grid
            .topk
            .iter()
            .map(|row| {
                row.iter()
                    .map(|c| c.first().map_or(f64::NAN, |t| t.prob))
                    .collect()
            })
            .collect();
        let vocab = grid
            .topk
            .iter()
            .flatten()
            .filter_map(|c| c.first())
            .map(|t| (t.id, t.text.clone()))
            .collect();
        let correct = match (&item.answer, &grid.answer) {
            (Some(want), Some(got)) => Some(
                got.text
                    .to_lowercase()
                    .contains(&want.trim().to_lowercase()),
            ),
            _ => None,
        };
        PromptRecord {
            key,
            item: item.clone(),
            model: grid.model,
            prompt_text: grid.prompt_text,
            tokens: grid.tokens,
            n_rows: grid.n_rows,
            entropy: grid.entropy,
            kl_to_final: grid.kl_to_final,
            top1,
            top1_prob,
            vocab,
            tracked: grid
                .tracked
                .into_iter()
                .filter(|t| t.role != TrackedRole::Target)
                .collect(),
            greedy: grid.answer,
            rehearsal: grid.rehearsal,
            correct,
        }
    }

    /// The tracked answer token, if any.
    pub fn answer(&self) -> Option<&TrackedToken> {
        self.tracked.iter().find(|t| t.role == TrackedRole::Answer)
    }

    /// The distractors, in input order.
    pub fn alts(&self) -> Vec<&TrackedToken> {
        self.tracked
            .iter()
            .filter(|t| t.role == TrackedRole::Alt)
            .collect()
    }

    /// Text of a top-1 id.
    pub fn text(&self, id: u32) -> &str {
        self.vocab.get(&id).map_or("", String::as_str)
    }
}

/// The key of one prompt's result: SHA-256 of the settings that shape the
/// numbers (as canonical JSON) and the input item, in hex.
pub fn record_key(settings: &serde_json::Value, item: &PromptItem) -> String {
    let text = serde_json::to_string(&serde_json::json!({
        "record_version": RECORD_VERSION,
        "lensmap": env!("CARGO_PKG_VERSION"),
        "settings": settings,
        "item": item,
    }))
    .unwrap_or_default();
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where results live: `OUT/prompts/`.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub dir: PathBuf,
}

/// Marker in temporary file names; never the name of a finished file.
const TMP_MARK: &str = ".tmp.";

impl Store {
    pub fn new(out: &Path) -> Self {
        Store {
            dir: out.join("prompts"),
        }
    }

    pub fn path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.json"))
    }

    /// A finished record with this key, or `None` (absent, unreadable, or
    /// from other settings).
    pub(crate) fn load_done(&self, stem: &str, key: &str) -> Option<PromptRecord> {
        let text = std::fs::read_to_string(self.path(stem)).ok()?;
        let rec: PromptRecord = serde_json::from_str(&text).ok()?;
        (rec.key == key).then_some(rec)
    }

    /// Whether a finished record with this key exists, without keeping it.
    pub(crate) fn is_done(&self, stem: &str, key: &str) -> bool {
        self.load_done(stem, key).is_some()
    }

    /// Serialise a record.
    pub fn encode(rec: &PromptRecord) -> Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(rec).map_err(|source| Error::Serialize {
            what: "a prompt record",
            source,
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Write a record atomically.
    pub fn save(&self, stem: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path(stem), bytes)
    }

    /// Remove leftover temporary files (from a killed run). Only a run that
    /// is not one of several concurrent shards should call this.
    pub(crate) fn remove_temporaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains(TMP_MARK) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The temporary name for `path`: hidden, in the same directory (so the
/// rename is atomic), unique per process.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TMP_MARK}{}", std::process::id()))
}

/// Write `bytes` to `path` via a temporary file and a rename: readers (and a
/// later run after a kill) see the old file or the new one, never a part.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
