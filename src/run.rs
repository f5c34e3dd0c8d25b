//! One lens run, start to finish: a [`Session`] (model, tokenizer and chat
//! template, loaded once) answers [`LensRequest`]s with [`LensGrid`]s. The
//! CLI, `batch` and `serve` all go through here.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::grid::LensInfo;
use crate::grid::{
    Answer, LensGrid, ModelInfo, TokenInfo, TrackedRole, TrackedToken, FORMAT_VERSION,
};
use crate::lens::{apply_lens, Lens, LensPrecision, LensQuery, PositionSpec};
use crate::model::budget::MemoryRequest;
use crate::model::{Checkpoint, KvCache, Model, Precision, Recorder, ResidualTrace};
use crate::prompt::{build_prompt, Prompt, PromptSpec, DEFAULT_DUMMY_TEXT};
use crate::rehearsal::{self, AnswerSource};
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

/// Which token is "the answer" whose rehearsal is measured (`--answer`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AnswerSpec {
    /// No answer tracked, no rehearsal summary.
    #[default]
    None,
    /// The model's greedy answer (needs `generate > 0`): its token `skip`
    /// (0-based), since greedy answers often open with a generic token (` The`).
    Auto { skip: usize },
    /// A named answer; its first token is tracked.
    Text(String),
}

/// `--answer-skip` (the API's `answer_skip`) was given, but the answer is not
/// `auto`; each interface words the error in its own option names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkipWithoutAuto;

impl AnswerSpec {
    /// The answer as `--answer`, `--answer-skip` and `--generate` (the
    /// server's `answer`, `answer_skip`, `generate`) decide it: `auto` takes
    /// greedy token `skip`, any other text is a named answer, and no answer
    /// means `auto` when generating, else none. A non-zero `skip` needs an
    /// `auto` answer. (`auto` without generation is refused by [`Session::run`].)
    pub fn from_flags(
        answer: Option<&str>,
        skip: usize,
        generate: usize,
    ) -> std::result::Result<Self, SkipWithoutAuto> {
        let spec = match answer {
            Some("auto") => AnswerSpec::Auto { skip },
            Some(text) => AnswerSpec::Text(text.to_string()),
            None if generate > 0 => AnswerSpec::Auto { skip },
            None => AnswerSpec::None,
        };
        if skip > 0 && !matches!(spec, AnswerSpec::Auto { .. }) {
            return Err(SkipWithoutAuto);
        }
        Ok(spec)
    }
}

/// One prompt's worth of work.
#[derive(Debug, Clone)]
pub struct LensRequest {
    pub prompt: PromptSpec,
    /// `--top-k`, at least 1.
    pub top_k: usize,
    /// `--target` (tracked first, in order).
    pub track: Vec<TrackSpec>,
    /// `--generate N`: greedy tokens to append after the prompt (0 = none).
    pub generate: usize,
    /// `--answer`: tracked after `track` with role `Answer`.
    pub answer: AnswerSpec,
    /// `--answer-alt`: distractors, tracked after the answer with role `Alt`.
    pub alts: Vec<String>,
    /// A prompt limit tighter than the model's context (`serve --max-tokens`).
    pub max_tokens: Option<usize>,
    /// `--lens`: the lenses to read the trace through, at least one. The
    /// first makes the grid, the others its `more_lenses`.
    pub lenses: Vec<Lens>,
    /// `--lens-precision`: exact f32 (default) or bf16.
    pub lens_precision: LensPrecision,
    /// `--positions`: where the lens is computed (all by default).
    pub positions: PositionSpec,
}

/// The largest `--top-k` lensmap accepts.
pub const MAX_TOP_K: usize = 100;

/// Check `--top-k`; callers run it before loading a model, to fail fast.
pub fn check_top_k(k: usize) -> Result<()> {
    if k == 0 || k > MAX_TOP_K {
        return Err(Error::InvalidOption(format!(
            "`--top-k` must be between 1 and {MAX_TOP_K}, got `{k}`"
        )));
    }
    Ok(())
}

/// `--top-k` when not given.
pub const DEFAULT_TOP_K: usize = 5;

impl Default for LensRequest {
    fn default() -> Self {
        Self {
            prompt: PromptSpec::default(),
            top_k: DEFAULT_TOP_K,
            track: Vec::new(),
            generate: 0,
            answer: AnswerSpec::None,
            alts: Vec::new(),
            max_tokens: None,
            lenses: vec![Lens::Logit],
            lens_precision: LensPrecision::F32,
            positions: PositionSpec::All,
        }
    }
}

/// The options of `lensmap run` that shape one request, by their CLI names
/// (the Python API's keyword arguments): both front ends fill this in and
/// turn it into a [`LensRequest`] with [`LensFlags::request`], so defaults
/// and checks live in one place.
#[derive(Debug, Clone)]
pub struct LensFlags {
    /// `--prompt`: the user message (the whole text with `raw`).
    pub prompt: String,
    /// `--system`.
    pub system: Option<String>,
    /// `--raw`: no chat template.
    pub raw: bool,
    /// `--dummy N`.
    pub dummy: usize,
    /// `--dummy-text`.
    pub dummy_text: String,
    /// `--top-k`.
    pub top_k: usize,
    /// `--target`.
    pub target: Option<String>,
    /// `--generate N`.
    pub generate: usize,
    /// `--answer auto|TEXT`.
    pub answer: Option<String>,
    /// `--answer-alt` (repeatable).
    pub answer_alt: Vec<String>,
    /// `--answer-skip N`.
    pub answer_skip: usize,
    /// `--lens`, already loaded ([`Lens::parse_list`]).
    pub lenses: Vec<Lens>,
    /// `--lens-precision`.
    pub lens_precision: LensPrecision,
    /// `--positions`.
    pub positions: PositionSpec,
}

impl Default for LensFlags {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            system: None,
            raw: false,
            dummy: 0,
            dummy_text: DEFAULT_DUMMY_TEXT.to_string(),
            top_k: DEFAULT_TOP_K,
            target: None,
            generate: 0,
            answer: None,
            answer_alt: Vec::new(),
            answer_skip: 0,
            lenses: vec![Lens::Logit],
            lens_precision: LensPrecision::F32,
            positions: PositionSpec::All,
        }
    }
}

impl LensFlags {
    /// The request these options describe (see [`AnswerSpec::from_flags`]).
    pub fn request(&self) -> std::result::Result<LensRequest, SkipWithoutAuto> {
        let answer =
            AnswerSpec::from_flags(self.answer.as_deref(), self.answer_skip, self.generate)?;
        let track = self
            .target
            .iter()
            .map(|t| TrackSpec {
                text: t.clone(),
                role: TrackedRole::Target,
            })
            .collect();
        Ok(LensRequest {
            prompt: PromptSpec {
                user: self.prompt.clone(),
                system: self.system.clone(),
                raw: self.raw,
                dummy: self.dummy,
                dummy_text: Some(self.dummy_text.clone()),
            },
            top_k: self.top_k,
            track,
            generate: self.generate,
            answer,
            alts: self.answer_alt.clone(),
            max_tokens: None,
            lenses: self.lenses.clone(),
            lens_precision: self.lens_precision,
            positions: self.positions,
        })
    }
}

/// A [`Recorder`] that keeps the trace and calls a check after every layer;
/// an error from the check aborts the forward pass.
struct CheckedTrace<'a> {
    trace: ResidualTrace,
    check: &'a mut dyn FnMut() -> Result<()>,
}

impl Recorder for CheckedTrace<'_> {
    fn record(&mut self, row: usize, residual: &candle_core::Tensor) -> Result<()> {
        (self.check)()?;
        self.trace.record(row, residual)
    }
}

impl Session {
    /// Open a model: a `.gguf` file, an HF directory, or an `org/name` in the HF cache.
    /// `chat_template` overrides the model's own template.
    pub fn open(spec: &str, precision: Precision, chat_template: Option<&Path>) -> Result<Self> {
        Self::open_within(spec, precision, None, chat_template, false)
    }

    /// As [`Session::open`], holding the model within `max_memory` bytes
    /// (`--max-memory`; `None`: what the machine and process limits allow).
    /// With `allow_nonfinite` (`--allow-nonfinite`), NaN or infinity in a
    /// weight or residual marks the lens cells it spoils as invalid
    /// (`LensGrid::invalid`) instead of being an error.
    pub fn open_within(
        spec: &str,
        precision: Precision,
        max_memory: Option<u64>,
        chat_template: Option<&Path>,
        allow_nonfinite: bool,
    ) -> Result<Self> {
        let ckpt = Checkpoint::open(spec)?;
        let tokenizer = TextTokenizer::from_checkpoint(&ckpt)?;
        let req = MemoryRequest {
            max_memory,
            run_bytes: crate::lens::working_bytes(ckpt.cfg.vocab_size),
        };
        let model = ckpt.load_within(precision, req, allow_nonfinite)?;
        let location = ckpt.location;
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
            label: location.label(),
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
        let template = if spec.raw {
            None
        } else {
            self.template.as_ref()
        };
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

    /// Check a figure's window and zoom against the prompt's length before
    /// any forward pass, so `--zoom 9999` fails in milliseconds rather than
    /// after the whole lens (issue #13 item 9). The grid has the prompt's
    /// positions plus at most `req.generate` more.
    pub fn check_figure_positions(
        &self,
        req: &LensRequest,
        window: Option<(usize, usize)>,
        zoom: Option<usize>,
    ) -> Result<()> {
        if window.is_none() && zoom.is_none() {
            return Ok(());
        }
        let n = self.prompt(&req.prompt)?.ids.len() + req.generate;
        if let Some((s, e)) = window.filter(|&(s, e)| s >= e || e > n) {
            return Err(Error::InvalidOption(format!(
                "window `{s}..{e}` is outside the prompt's {n} positions (need START < END <= {n})"
            )));
        }
        if let Some(z) = zoom.filter(|&z| z >= n) {
            return Err(Error::InvalidOption(format!(
                "zoom position `{z}` is outside the prompt's {n} positions (0..{n})"
            )));
        }
        Ok(())
    }

    /// Run the lens for one request.
    pub fn run(&self, req: &LensRequest) -> Result<LensGrid> {
        self.run_timed(req).map(|(grid, _)| grid)
    }

    /// Run the lens for one request and report how long each stage took.
    pub fn run_timed(&self, req: &LensRequest) -> Result<(LensGrid, StageTimes)> {
        self.run_checked(req, &mut || Ok(()))
    }

    /// [`Session::run_timed`], calling `check` after every layer of the
    /// forward pass and before generation and the lens; an error from it
    /// ends the run with that error (the Python bindings stop on Ctrl-C so).
    pub fn run_checked(
        &self,
        req: &LensRequest,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(LensGrid, StageTimes)> {
        let mut times = StageTimes::default();
        let mut clock = Instant::now();
        let mut lap = |slot: &mut Duration| {
            *slot = clock.elapsed();
            clock = Instant::now();
        };
        check_top_k(req.top_k)?;
        for lens in &req.lenses {
            lens.check(&self.model)?;
        }
        if matches!(req.answer, AnswerSpec::Auto { .. }) && req.generate == 0 {
            return Err(Error::InvalidOption(
                "`--answer auto` takes the greedy answer, so it needs `--generate N`".into(),
            ));
        }
        let prompt = self.prompt(&req.prompt)?;
        let positions = req.positions.resolve(&prompt.kinds)?;
        if let Some(limit) = req.max_tokens.filter(|&l| prompt.ids.len() > l) {
            return Err(Error::PromptOverLimit {
                tokens: prompt.ids.len(),
                limit,
            });
        }
        // Targets, then the answer, then distractors. An `auto` answer is
        // only known after generation; it is filled in below.
        let mut track = req.track.clone();
        if let AnswerSpec::Text(text) = &req.answer {
            track.push(TrackSpec {
                text: text.clone(),
                role: TrackedRole::Answer,
            });
        }
        let auto_slot = track.len();
        track.extend(req.alts.iter().map(|text| TrackSpec {
            text: text.clone(),
            role: TrackedRole::Alt,
        }));
        let mut tracked_ids = track
            .iter()
            .map(|t| self.first_token(&t.text))
            .collect::<Result<Vec<_>>>()?;
        lap(&mut times.prompt);

        let mut checked = CheckedTrace {
            trace: ResidualTrace::default(),
            check,
        };
        let mut cache = KvCache::default();
        let last = self
            .model
            .forward(&prompt.ids, &mut cache, Some(&mut checked))?;
        let CheckedTrace { trace, check } = checked;
        check()?;
        lap(&mut times.forward);
        // Generate before the lens (the trace stays alive meanwhile) so an
        // `auto` answer can be tracked in every cell.
        let answer = if req.generate > 0 {
            let ids = self.model.generate_greedy(
                &mut cache,
                &last,
                req.generate,
                &self.tokenizer.stop_ids(),
            )?;
            Some(Answer {
                text: self.tokenizer.decode(&ids),
                ids,
            })
        } else {
            None
        };
        drop(cache);
        check()?;
        lap(&mut times.generate);
        if let (AnswerSpec::Auto { skip }, Some(a)) = (&req.answer, &answer) {
            let id = *a.ids.get(*skip).ok_or_else(|| {
                Error::InvalidOption(format!(
                    "the greedy answer {:?} has {} tokens, so `--answer-skip {skip}` leaves none to track",
                    a.text,
                    a.ids.len()
                ))
            })?;
            track.insert(
                auto_slot,
                TrackSpec {
                    text: self.tokenizer.token_text(id),
                    role: TrackedRole::Answer,
                },
            );
            tracked_ids.insert(auto_slot, id);
        }
        let (source, skip) = match req.answer {
            AnswerSpec::Auto { skip } => (AnswerSource::Auto, skip),
            _ => (AnswerSource::Given, 0),
        };
        let default_lens = [Lens::Logit];
        let lenses = if req.lenses.is_empty() {
            &default_lens[..]
        } else {
            &req.lenses[..]
        };
        // One trace, read through every lens; the first lens's grid holds the others.
        let mut grids = Vec::with_capacity(lenses.len());
        for lens in lenses {
            let cells = apply_lens(
                &self.model,
                &trace,
                &prompt.ids,
                &LensQuery {
                    top_k: req.top_k,
                    tracked: tracked_ids.clone(),
                    lens: lens.clone(),
                    precision: req.lens_precision,
                    positions: positions.clone(),
                },
            )?;
            let mut grid = self.assemble(
                prompt.clone(),
                cells,
                req,
                &track,
                tracked_ids.clone(),
                answer.clone(),
            );
            grid.lens = LensInfo::of(lens);
            grid.rehearsal = rehearsal::summarize(&grid, req.top_k, source, skip);
            grids.push(grid);
        }
        drop(trace);
        lap(&mut times.lens);
        let mut grid = grids.remove(0);
        grid.more_lenses = grids;
        Ok((grid, times))
    }

    /// Turn per-cell statistics into the serialisable grid.
    fn assemble(
        &self,
        prompt: Prompt,
        cells: crate::lens::CellGrid,
        req: &LensRequest,
        track: &[TrackSpec],
        tracked_ids: Vec<u32>,
        answer: Option<Answer>,
    ) -> LensGrid {
        let cfg = &self.model.cfg;
        let text = |id: u32| self.tokenizer.token_text(id);
        let tokens = prompt
            .ids
            .iter()
            .zip(&prompt.kinds)
            .map(|(&id, &kind)| TokenInfo {
                id,
                text: text(id),
                kind,
            })
            .collect();
        let map = |f: &dyn Fn(&crate::stats::CellStats) -> f64| -> Vec<Vec<f64>> {
            cells
                .iter()
                .map(|row| row.iter().map(f).collect())
                .collect()
        };
        let tracked = track
            .iter()
            .zip(&tracked_ids)
            .enumerate()
            .map(|(i, (spec, &id))| TrackedToken {
                text: spec.text.clone(),
                id,
                token_text: text(id),
                role: spec.role,
                cells: cells
                    .iter()
                    .map(|row| row.iter().map(|c| c.tracked[i]).collect())
                    .collect(),
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
                lens_precision: req.lens_precision.label().to_string(),
                lens_kernel: req.lens_precision.kernel().map(|k| k.label().to_string()),
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
                                .map(|&(id, prob)| crate::grid::TopToken {
                                    id,
                                    text: text(id),
                                    prob,
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect(),
            next_token: cells
                .iter()
                .map(|row| row.iter().map(|c| c.next).collect())
                .collect(),
            invalid: if cells.iter().flatten().any(|c| c.invalid) {
                cells
                    .iter()
                    .map(|row| row.iter().map(|c| c.invalid).collect())
                    .collect()
            } else {
                Vec::new()
            },
            tracked,
            answer,
            rehearsal: None,
            lens: LensInfo::default(),
            more_lenses: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_flags() {
        let spec = |a, skip, generate| AnswerSpec::from_flags(a, skip, generate);
        assert_eq!(spec(None, 0, 0), Ok(AnswerSpec::None));
        assert_eq!(spec(None, 2, 8), Ok(AnswerSpec::Auto { skip: 2 }));
        assert_eq!(spec(Some("auto"), 1, 0), Ok(AnswerSpec::Auto { skip: 1 }));
        assert_eq!(
            spec(Some(" Canberra"), 0, 8),
            Ok(AnswerSpec::Text(" Canberra".into()))
        );
        assert_eq!(spec(Some(" Canberra"), 1, 8), Err(SkipWithoutAuto));
        assert_eq!(spec(None, 1, 0), Err(SkipWithoutAuto));
    }
}
