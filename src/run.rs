//! One lens run, start to finish: a [`Session`] (model, tokenizer and chat
//! template, loaded once) answers [`LensRequest`]s with [`LensGrid`]s. The
//! CLI, `batch` and `serve` all go through here.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::grid::{Answer, LensGrid, ModelInfo, TokenInfo, TrackedRole, TrackedToken, FORMAT_VERSION};
use crate::lens::{apply_lens, LensQuery};
use crate::model::weights::file_name;
use crate::model::{GgufFile, KvCache, Model, Precision, ResidualTrace};
use crate::prompt::{build_prompt, Prompt, PromptSpec};
use crate::template::ChatTemplate;
use crate::tokenize::TextTokenizer;
use crate::{Error, Result};

/// A model ready to answer lens requests.
pub struct Session {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    /// `None` when the model has no template and none was given (`--raw` only).
    pub template: Option<ChatTemplate>,
    /// What `model.file` says in the JSON.
    pub label: String,
}

/// Wall time of each stage of one request (`--timings`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub prompt: Duration,
    pub forward: Duration,
    pub lens: Duration,
    pub generate: Duration,
}

/// A token to follow through every cell, by text (its first token is used).
#[derive(Debug, Clone)]
pub struct TrackSpec {
    pub text: String,
    pub role: TrackedRole,
}

/// One prompt's worth of work.
#[derive(Debug, Clone)]
pub struct LensRequest {
    pub prompt: PromptSpec,
    /// `--top-k`, at least 1.
    pub top_k: usize,
    /// `--target`, `--answer`, `--answer-alt`.
    pub track: Vec<TrackSpec>,
    /// `--generate N`: greedy tokens to append after the prompt (0 = none).
    pub generate: usize,
}

impl Default for LensRequest {
    fn default() -> Self {
        Self {
            prompt: PromptSpec::default(),
            top_k: 5,
            track: Vec::new(),
            generate: 0,
        }
    }
}

impl Session {
    /// Open a model: a `.gguf` file, an HF directory, or an `org/name` in the HF cache.
    /// `chat_template` overrides the model's own template.
    pub fn open(spec: &str, precision: Precision, chat_template: Option<&Path>) -> Result<Self> {
        let path = Path::new(spec);
        let (model, tokenizer) = if path.is_dir() || !spec.ends_with(".gguf") && !path.exists() {
            open_hf(spec, precision)?
        } else {
            let file = GgufFile::open(path)?;
            let cfg = crate::model::arch::config_from_gguf(&file)?;
            let tokenizer = TextTokenizer::from_gguf(&file.content.metadata)?;
            let model = Model::load(cfg, &file, &crate::model::arch::GgufNames, precision)?;
            (model, tokenizer)
        };
        let template = match chat_template {
            Some(p) => Some(ChatTemplate::from_file(p)?),
            None => match tokenizer.chat_template() {
                Some((text, source)) => Some(ChatTemplate {
                    source: source.to_string(),
                    text: text.to_string(),
                }),
                None => ChatTemplate::builtin(model.cfg.family.name()),
            },
        };
        Ok(Self {
            label: file_name(path),
            model,
            tokenizer,
            template,
        })
    }

    /// Render and tokenise a prompt, checking it fits the context.
    pub fn prompt(&self, spec: &PromptSpec) -> Result<Prompt> {
        if !spec.raw && self.template.is_none() {
            return Err(Error::Template(format!(
                "`{}` carries no chat template and lensmap has no built-in one for `{}`",
                self.label,
                self.model.cfg.family.name()
            )));
        }
        let template = if spec.raw { None } else { self.template.as_ref() };
        let prompt = build_prompt(&self.tokenizer, template, spec)?;
        if prompt.ids.is_empty() {
            return Err(Error::InvalidOption("the prompt is empty".into()));
        }
        if prompt.ids.len() > self.model.cfg.context_len {
            return Err(Error::PromptTooLong {
                tokens: prompt.ids.len(),
                context: self.model.cfg.context_len,
            });
        }
        Ok(prompt)
    }

    /// The id of a text's first token (for `--target` and answers).
    pub fn first_token(&self, text: &str) -> Result<u32> {
        let enc = self.tokenizer.encode(text)?;
        enc.ids
            .first()
            .copied()
            .ok_or_else(|| Error::InvalidOption(format!("`{text}` encodes to no tokens")))
    }

    /// Run the lens for one request.
    pub fn run(&self, req: &LensRequest) -> Result<LensGrid> {
        self.run_timed(req).map(|(grid, _)| grid)
    }

    /// Run the lens for one request and report how long each stage took.
    pub fn run_timed(&self, req: &LensRequest) -> Result<(LensGrid, StageTimes)> {
        let mut times = StageTimes::default();
        let mut clock = Instant::now();
        let mut lap = |slot: &mut Duration| {
            *slot = clock.elapsed();
            clock = Instant::now();
        };
        if req.top_k == 0 || req.top_k > 100 {
            return Err(Error::InvalidOption(format!(
                "`--top-k` must be between 1 and 100, got `{}`",
                req.top_k
            )));
        }
        let prompt = self.prompt(&req.prompt)?;
        let tracked_ids = req
            .track
            .iter()
            .map(|t| self.first_token(&t.text))
            .collect::<Result<Vec<_>>>()?;
        lap(&mut times.prompt);

        let mut trace = ResidualTrace::default();
        let mut cache = KvCache::default();
        let last = self.model.forward(&prompt.ids, &mut cache, Some(&mut trace))?;
        lap(&mut times.forward);
        let cells = apply_lens(
            &self.model,
            &trace,
            &prompt.ids,
            &LensQuery {
                top_k: req.top_k,
                tracked: tracked_ids.clone(),
            },
        )?;
        drop(trace);
        lap(&mut times.lens);
        let answer = if req.generate > 0 {
            let ids = self
                .model
                .generate_greedy(&mut cache, &last, req.generate, &self.tokenizer.stop_ids())?;
            Some(Answer {
                text: self.tokenizer.decode(&ids),
                ids,
            })
        } else {
            None
        };
        lap(&mut times.generate);
        Ok((self.assemble(prompt, cells, req, tracked_ids, answer), times))
    }

    /// Turn per-cell statistics into the serialisable grid.
    fn assemble(
        &self,
        prompt: Prompt,
        cells: crate::lens::CellGrid,
        req: &LensRequest,
        tracked_ids: Vec<u32>,
        answer: Option<Answer>,
    ) -> LensGrid {
        let cfg = &self.model.cfg;
        let text = |id: u32| self.tokenizer.token_text(id);
        let tokens = prompt
            .ids
            .iter()
            .zip(&prompt.kinds)
            .map(|(&id, &kind)| TokenInfo { id, text: text(id), kind })
            .collect();
        let map = |f: &dyn Fn(&crate::stats::CellStats) -> f64| -> Vec<Vec<f64>> {
            cells.iter().map(|row| row.iter().map(f).collect()).collect()
        };
        let tracked = req
            .track
            .iter()
            .zip(&tracked_ids)
            .enumerate()
            .map(|(i, (spec, &id))| TrackedToken {
                text: spec.text.clone(),
                id,
                token_text: text(id),
                role: spec.role,
                cells: cells.iter().map(|row| row.iter().map(|c| c.tracked[i]).collect()).collect(),
            })
            .collect();
        LensGrid {
            format_version: FORMAT_VERSION,
            lensmap_version: env!("CARGO_PKG_VERSION").to_string(),
            model: ModelInfo {
                file: self.label.clone(),
                arch: cfg.family.name().to_string(),
                n_layers: cfg.n_layers,
                d_model: cfg.d_model,
                vocab_size: cfg.vocab_size,
                precision: self.model.precision.label().to_string(),
            },
            template_source: match (&self.template, req.prompt.raw) {
                (Some(t), false) => t.source.clone(),
                _ => "none".to_string(),
            },
            prompt_text: prompt.text,
            tokens,
            n_rows: cells.len(),
            entropy: map(&|c| c.entropy),
            kl_to_final: map(&|c| c.kl_to_final),
            topk: cells
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|c| {
                            c.topk
                                .iter()
                                .map(|&(id, prob)| crate::grid::TopToken { id, text: text(id), prob })
                                .collect()
                        })
                        .collect()
                })
                .collect(),
            next_token: cells.iter().map(|row| row.iter().map(|c| c.next).collect()).collect(),
            tracked,
            answer,
        }
    }
}

/// An HF directory or cache entry. Filled in by the HF loader (issue 4).
fn open_hf(spec: &str, _precision: Precision) -> Result<(Model, TextTokenizer)> {
    Err(Error::ModelNotFound(Path::new(spec).to_path_buf()))
}
