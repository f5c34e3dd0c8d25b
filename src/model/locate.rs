//! Model specs: what `--model M` points at.
//!
//! `M` is one of
//! - a GGUF file (`models/x.gguf`);
//! - a Hugging Face model directory (with `config.json`), or a directory
//!   holding exactly one `.gguf` file;
//! - `org/name` (or `org/name@revision`) in the Hugging Face cache:
//!   `$HF_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub` or
//!   `~/.cache/huggingface/hub`, as `huggingface_hub` lays it out:
//!   `models--org--name/snapshots/<commit>/`, the commit read from
//!   `refs/main`, else the only snapshot.
//!
//! Nothing is downloaded. A spec that matches nothing fails with one line
//! that names every place looked at.

use std::io::Read;
use std::path::{Path, PathBuf};

use std::collections::{BTreeSet, HashMap};

use crate::{Error, Result};

/// The file HF tokenizers are read from.
pub(crate) const TOKENIZER_FILE: &str = "tokenizer.json";
/// The config file of an HF directory.
pub const CONFIG_FILE: &str = "config.json";
/// The single-file safetensors checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded safetensors checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where a model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A directory with `config.json`, safetensors weights and `tokenizer.json`.
    HfDir(PathBuf),
}

impl ModelLocation {
    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Gguf(p) | ModelLocation::HfDir(p) => p,
        }
    }

    /// A short name for messages and figures: the file name, the directory
    /// name, or `org/name` for a snapshot in the HF cache.
    pub fn label(&self) -> String {
        label(self.path())
    }
}

/// Resolve a spec against the default Hugging Face cache.
pub(crate) fn resolve(spec: &str) -> Result<ModelLocation> {
    resolve_in(spec, &cache_roots())
}

/// The Hugging Face hub caches to search, in `huggingface_hub`'s order of
/// precedence (only the first that applies is used there; we try each).
fn cache_roots() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut roots = Vec::new();
    if let Some(p) = env("HF_HUB_CACHE") {
        roots.push(p);
    }
    if let Some(p) = env("HF_HOME") {
        roots.push(p.join("hub"));
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        roots.push(p.join("huggingface/hub"));
    }
    if let Some(p) = env("HOME") {
        roots.push(p.join(".cache/huggingface/hub"));
    }
    roots.dedup();
    roots
}

/// Resolve a spec, looking for `org/name` under the given hub cache roots.
pub fn resolve_in(spec: &str, cache_roots: &[PathBuf]) -> Result<ModelLocation> {
    let path = Path::new(spec);
    if path.is_file() {
        return file(path);
    }
    if path.is_dir() {
        return directory(path);
    }
    let mut looked = vec![format!("`{spec}` (no such file or directory)")];
    if let Some((org, name, rev)) = repo_id(spec) {
        let repo = format!("models--{org}--{name}");
        for root in cache_roots {
            let dir = root.join(&repo);
            if dir.is_dir() {
                return snapshot(&dir, rev);
            }
            looked.push(format!("`{}`", dir.display()));
        }
        if cache_roots.is_empty() {
            looked.push("no Hugging Face cache (set `HF_HOME`)".into());
        }
    }
    Err(Error::ModelNotFoundIn {
        spec: spec.to_string(),
        looked: looked.join(", "),
    })
}

/// A file: GGUF by its magic, or an HF directory's `config.json`.
fn file(path: &Path) -> Result<ModelLocation> {
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF";
    if is_gguf {
        return Ok(ModelLocation::Gguf(path.to_path_buf()));
    }
    match path.parent() {
        Some(dir) if path.file_name().is_some_and(|n| n == CONFIG_FILE) => hf_dir(dir),
        _ => Err(Error::BadCheckpoint {
            path: path.to_path_buf(),
            reason: "neither a GGUF file (no `GGUF` magic) nor a model directory".into(),
        }),
    }
}

/// A directory: an HF model directory, or one holding a single GGUF file.
fn directory(dir: &Path) -> Result<ModelLocation> {
    if dir.join(CONFIG_FILE).is_file() {
        return hf_dir(dir);
    }
    let ggufs = gguf_files(dir);
    match ggufs.as_slice() {
        [one] => Ok(ModelLocation::Gguf(one.clone())),
        [] => Err(Error::BadCheckpoint {
            path: dir.to_path_buf(),
            reason: format!("no `{CONFIG_FILE}` and no `.gguf` file: not a model directory"),
        }),
        many => Err(Error::BadCheckpoint {
            path: dir.to_path_buf(),
            reason: format!(
                "several `.gguf` files ({}); pass one of them",
                many.iter()
                    .map(|p| format!("`{}`", file_name(p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Check that an HF directory has what a lens run needs.
fn hf_dir(dir: &Path) -> Result<ModelLocation> {
    weight_files(dir)?;
    if !dir.join(TOKENIZER_FILE).is_file() {
        return Err(Error::BadCheckpoint {
            path: dir.to_path_buf(),
            reason: format!("no `{TOKENIZER_FILE}` (lensmap reads the fast-tokenizer file; `tokenizer.model` alone is not enough)"),
        });
    }
    Ok(ModelLocation::HfDir(dir.to_path_buf()))
}

/// The snapshot of a cached repo: `revision` (a branch under `refs/` or a
/// commit under `snapshots/`), else `refs/main`, else the only snapshot.
fn snapshot(repo: &Path, revision: Option<&str>) -> Result<ModelLocation> {
    let bad = |reason: String| Error::BadCheckpoint {
        path: repo.to_path_buf(),
        reason,
    };
    let snapshots = repo.join("snapshots");
    let branch = revision.unwrap_or("main");
    let commit = std::fs::read_to_string(repo.join("refs").join(branch))
        .ok()
        .map(|s| s.trim().to_string())
        .or_else(|| revision.map(str::to_string));
    let dir = match commit {
        Some(c) => snapshots.join(c),
        None => {
            let mut all: Vec<PathBuf> = read_dir(&snapshots)
                .into_iter()
                .filter(|p| p.is_dir())
                .collect();
            match all.len() {
                1 => all.remove(0),
                0 => return Err(bad("no snapshot in the cache (download incomplete?)".into())),
                _ => {
                    return Err(bad(format!(
                        "{} snapshots and no `refs/main`; pass `org/name@<commit>` or the snapshot directory",
                        all.len()
                    )))
                }
            }
        }
    };
    if !dir.is_dir() {
        return Err(bad(format!(
            "snapshot `{}` is missing (download incomplete?)",
            dir.display()
        )));
    }
    directory(&dir)
}

/// `org/name` or `org/name@rev`, if the spec has that shape.
fn repo_id(spec: &str) -> Option<(&str, &str, Option<&str>)> {
    let (id, rev) = match spec.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, Some(rev)),
        Some(_) => return None,
        None => (spec, None),
    };
    let (org, name) = id.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (ok(org) && ok(name)).then_some((org, name, rev))
}

/// The files `scripts/fetch-models` downloads into `models/`.
const FETCHED_MODELS: [&str; 2] = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m-q4_k_m.gguf",
];

/// How to get a model that was not found, by what was passed: one of the
/// default models gets `scripts/fetch-models`, an `org/name` how to download
/// it into the Hugging Face cache, anything else is a path to check.
pub(crate) fn not_found_hint(spec: &str) -> String {
    let path = Path::new(spec);
    if path
        .file_name()
        .is_some_and(|n| FETCHED_MODELS.iter().any(|f| n == *f))
    {
        return "run `scripts/fetch-models` to download the default models into `models/`".into();
    }
    let looks_like_file = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf") || e.eq_ignore_ascii_case("json"));
    match repo_id(spec) {
        Some((org, name, rev)) if !looks_like_file => {
            let rev = rev.map_or(String::new(), |r| format!(" --revision {r}"));
            format!(
                "check the path; or, for the Hugging Face model `{org}/{name}`, download it into \
                 the cache with `huggingface-cli download {org}/{name}{rev}`"
            )
        }
        _ => "check the path: no file or directory has this name".into(),
    }
}

/// A short name for a model path: `org/name` inside the HF cache, else the
/// last path component.
pub fn label(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let repo = parts.iter().rposition(|p| p.starts_with("models--"));
    if let Some(i) = repo.filter(|&i| parts.get(i + 1).is_some_and(|s| s == "snapshots")) {
        let id = parts[i]["models--".len()..].replacen("--", "/", 1);
        // Keep a file name inside the snapshot (a GGUF repo holds several).
        return match parts.get(i + 3) {
            Some(f) => format!("{id}/{f}"),
            None => id,
        };
    }
    file_name(path)
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    read_dir(dir)
        .into_iter()
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect()
}

/// The safetensors files of an HF directory: `model.safetensors`, or every
/// shard `model.safetensors.index.json` names. Checks they exist; reads
/// nothing else.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    if single.is_file() {
        Ok(vec![single])
    } else if index.is_file() {
        shard_files(&index)
    } else {
        let reason = if dir.join("pytorch_model.bin").exists() {
            format!("only `pytorch_model.bin`, which lensmap cannot read; save the model as safetensors (`{SINGLE_FILE}`)")
        } else {
            format!("no `{SINGLE_FILE}` or `{INDEX_FILE}`")
        };
        Err(Error::BadCheckpoint {
            path: dir.to_path_buf(),
            reason,
        })
    }
}

/// The distinct shard files an index names, in order, checked to exist.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let bad = |reason: String| Error::BadCheckpoint {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a shard index: {e}")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<&String> = parsed.weight_map.values().collect();
    if names.is_empty() {
        return Err(bad("`weight_map` lists no files".into()));
    }
    names
        .into_iter()
        .map(|n| {
            let p = dir.join(n);
            if p.is_file() {
                Ok(p)
            } else {
                Err(bad(format!(
                    "shard `{n}` is missing (incomplete download?)"
                )))
            }
        })
        .collect()
}

/// The last component of a path, for messages.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The first line of a multi-line message: our errors are one line.
pub(crate) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert_eq!(
            repo_id("HuggingFaceTB/SmolLM2-135M"),
            Some(("HuggingFaceTB", "SmolLM2-135M", None))
        );
        assert_eq!(repo_id("a/b@v1.0"), Some(("a", "b", Some("v1.0"))));
        assert_eq!(repo_id("./a/b"), None);
        assert_eq!(repo_id("a/b/c"), None);
        assert_eq!(repo_id("model.gguf"), None);
    }

    #[test]
    fn not_found_hints() {
        assert!(not_found_hint("models/SmolLM2-135M-Instruct.Q4_1.gguf")
            .contains("scripts/fetch-models"));
        assert!(not_found_hint("/x/gemma-3-270m-q4_k_m.gguf").contains("scripts/fetch-models"));
        assert!(not_found_hint("/nonexistent/model.gguf").starts_with("check the path"));
        assert!(not_found_hint("models/typo.gguf").starts_with("check the path:"));
        let hf = not_found_hint("HuggingFaceTB/SmolLM2-135M@main");
        assert!(
            hf.contains("`huggingface-cli download HuggingFaceTB/SmolLM2-135M --revision main`"),
            "{hf}"
        );
    }

    #[test]
    fn labels() {
        let p = Path::new("/c/hub/models--org--name/snapshots/abc123");
        assert_eq!(label(p), "org/name");
        assert_eq!(label(&p.join("x.gguf")), "org/name/x.gguf");
        assert_eq!(label(Path::new("/m/tiny/llama")), "llama");
    }
}
