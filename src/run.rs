//! One lens run, start to finish: a [`Session`] (model, tokenizer and chat
//! template, loaded once) answers [`LensRequest`]s with [`LensGrid`]s. The
//! CLI, `batch` and `serve` all go through here.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::grid::{Answer, LensGrid, LensInfo, ModelInfo, TrackedHead, TrackedRole};
use crate::lens::{apply_lens, Lens, LensPrecision, LensQuery, PositionSpec};
use crate::model::budget::MemoryRequest;
use crate::model::{cancel, Checkpoint, KvCache, Model, Precision, ResidualTrace, Sequence};
use crate::prompt::{build_prompt, Prompt, PromptSpec, DEFAULT_DUMMY_TEXT};
use crate::rehearsal::{self, AnswerSource};
use crate::template::ChatTemplate;
use crate::tokenize::TextTokenizer;
use crate::{Error, OptionName, Result};

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

impl StageTimes {
    /// Add another request's times to these.
    pub fn add(&mut self, t: &StageTimes) {
        self.prompt += t.prompt;
        self.forward += t.forward;
        self.lens += t.lens;
        self.generate += t.generate;
    }
}

/// A request checked and tokenised ([`Session::prepare`]): what the lens
/// stage needs besides the trace and the generated answer.
struct Prepared {
    prompt: Prompt,
    positions: Option<std::ops::Range<usize>>,
    track: Vec<TrackSpec>,
    tracked_ids: Vec<u32>,
    /// Where an `auto` answer goes in `track` once generated.
    auto_slot: usize,
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
pub(crate) const MAX_TOP_K: usize = 100;

/// Check a top-k; callers run it before loading a model, to fail fast. (The
/// CLI's own check names its flag; this message is for the other front ends.)
pub(crate) fn check_top_k(k: usize) -> Result<()> {
    if k == 0 || k > MAX_TOP_K {
        return Err(Error::InvalidOption(format!(
            "top-k must be between 1 and {MAX_TOP_K}, got `{k}`"
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
    /// A prompt limit tighter than the model's context (`serve --max-tokens`).
    pub max_tokens: Option<usize>,
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
            max_tokens: None,
        }
    }
}

impl LensFlags {
    /// The request these options describe (see [`AnswerSpec::from_flags`]).
    pub fn request(&self) -> std::result::Result<LensRequest, SkipWithoutAuto> {
        let answer =
            AnswerSpec::from_flags(self.answer.as_deref(), self.answer_skip, self.generate)?;
        Ok(self.request_with(answer))
    }

    /// The request these options describe, with the answer already decided
    /// (`answer` and `answer_skip` are not read). Every [`LensRequest`] the
    /// CLI, `batch`, `serve` and Python make is built here.
    pub(crate) fn request_with(&self, answer: AnswerSpec) -> LensRequest {
        let track = self
            .target
            .iter()
            .map(|t| TrackSpec {
                text: t.clone(),
                role: TrackedRole::Target,
            })
            .collect();
        LensRequest {
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
            max_tokens: self.max_tokens,
            lenses: self.lenses.clone(),
            lens_precision: self.lens_precision,
            positions: self.positions,
        }
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
    pub(crate) fn open_within(
        spec: &str,
        precision: Precision,
        max_memory: Option<u64>,
        chat_template: Option<&Path>,
        allow_nonfinite: bool,
    ) -> Result<Self> {
        let ckpt = Checkpoint::open(spec)?;
        let req = MemoryRequest {
            max_memory,
            run_bytes: crate::lens::working_bytes(ckpt.cfg.sizes.vocab_size),
        };
        // The tokenizer is built while the model loads: for Gemma 3's 262k
        // pieces it takes most of the load time. A tokenizer error is still
        // the one reported first.
        let (tokenizer, model) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| TextTokenizer::from_checkpoint(&ckpt));
            let model = ckpt.load_within(precision, req, allow_nonfinite);
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (tokenizer, model)
        });
        let (tokenizer, model) = (tokenizer?, model?);
        let location = ckpt.location;
        let template = match chat_template {
            Some(p) => Some(ChatTemplate::from_file(p)?),
            None => match tokenizer.chat_template() {
                Some((text, source)) => Some(ChatTemplate {
                    source: source.to_string(),
                    text: text.to_string(),
                }),
                None => model
                    .cfg
                    .family
                    .spec()
                    .template
                    .and_then(ChatTemplate::builtin),
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
        if prompt.ids.len() > self.model.cfg.sizes.context_len {
            return Err(Error::PromptTooLong {
                tokens: prompt.ids.len(),
                context: self.model.cfg.sizes.context_len,
            });
        }
        Ok(prompt)
    }

    /// The id of a text's first token (for `--target` and answers).
    fn first_token(&self, text: &str) -> Result<u32> {
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
    pub(crate) fn check_figure_positions(
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
    /// The thread's stop condition ([`crate::model::cancel`]) is checked
    /// after every block and before generation and the lens.
    pub(crate) fn run_timed(&self, req: &LensRequest) -> Result<(LensGrid, StageTimes)> {
        let mut times = StageTimes::default();
        let clock = Instant::now();
        let prepared = self.prepare(req)?;
        times.prompt = clock.elapsed();

        let clock = Instant::now();
        let mut trace = ResidualTrace::default();
        let mut cache = KvCache::default();
        let last = self
            .model
            .forward(&prepared.prompt.ids, &mut cache, Some(&mut trace))?;
        times.forward = clock.elapsed();
        // Generate before the lens (the trace stays alive meanwhile) so an
        // `auto` answer can be tracked in every cell.
        let clock = Instant::now();
        let answer = if req.generate > 0 {
            Some(self.model.generate_greedy(
                &mut cache,
                &last,
                req.generate,
                &self.tokenizer.stop_ids(),
            )?)
        } else {
            None
        };
        drop(cache);
        cancel::check()?;
        times.generate = clock.elapsed();

        let clock = Instant::now();
        let grid = self.read_lens(req, prepared, trace, answer)?;
        times.lens = clock.elapsed();
        Ok((grid, times))
    }

    /// Several requests as one block-major chunk (`batch --chunk N`): every
    /// prompt goes through block `i` before block `i + 1` is read, in the
    /// forward pass and in each generation step ([`Model::forward_many`]),
    /// so a streamed model's file is read once per chunk instead of once per
    /// prompt. Each grid equals what [`Session::run`] gives for its request
    /// alone. Returns one result per request and the chunk's stage times.
    pub(crate) fn run_chunk(
        &self,
        reqs: &[LensRequest],
    ) -> Result<(Vec<Result<LensGrid>>, StageTimes)> {
        let mut times = StageTimes::default();
        // Lockstep generation needs one length; mixed chunks go one by one.
        if reqs.iter().any(|r| r.generate != reqs[0].generate) {
            let mut grids = Vec::with_capacity(reqs.len());
            for req in reqs {
                grids.push(self.run_timed(req).map(|(grid, t)| {
                    times.add(&t);
                    grid
                }));
            }
            return Ok((grids, times));
        }
        let clock = Instant::now();
        let prepared: Vec<Result<Prepared>> = reqs.iter().map(|r| self.prepare(r)).collect();
        times.prompt = clock.elapsed();

        let clock = Instant::now();
        let ok: Vec<usize> = (0..reqs.len()).filter(|&k| prepared[k].is_ok()).collect();
        let mut caches: Vec<KvCache> = ok.iter().map(|_| KvCache::default()).collect();
        let mut traces: Vec<ResidualTrace> = ok.iter().map(|_| ResidualTrace::default()).collect();
        let mut seqs: Vec<Sequence> = ok
            .iter()
            .zip(caches.iter_mut().zip(traces.iter_mut()))
            .filter_map(|(&k, (cache, trace))| {
                let p = prepared[k].as_ref().ok()?;
                Some(Sequence {
                    ids: &p.prompt.ids,
                    cache,
                    recorder: Some(trace),
                })
            })
            .collect();
        let lasts = self.model.forward_many(&mut seqs)?;
        drop(seqs);
        times.forward = clock.elapsed();

        let clock = Instant::now();
        let generate = reqs.first().map_or(0, |r| r.generate);
        let mut answers: Vec<Option<Result<Vec<u32>>>> = ok.iter().map(|_| None).collect();
        let mut gen_seqs = Vec::new();
        let mut gen_slots = Vec::new();
        for (j, (cache, last)) in caches.iter_mut().zip(lasts).enumerate() {
            match last {
                Ok(last) if generate > 0 => {
                    gen_seqs.push((cache, last));
                    gen_slots.push(j);
                }
                Ok(_) => {}
                Err(e) => answers[j] = Some(Err(e)),
            }
        }
        if !gen_seqs.is_empty() {
            let ids = self.model.generate_greedy_many(
                &mut gen_seqs,
                generate,
                &self.tokenizer.stop_ids(),
            )?;
            for (j, ids) in gen_slots.into_iter().zip(ids) {
                answers[j] = Some(ids);
            }
        }
        drop(gen_seqs);
        drop(caches);
        times.generate = clock.elapsed();

        let clock = Instant::now();
        let mut finished = traces.into_iter().zip(answers);
        let mut grids = Vec::with_capacity(reqs.len());
        for (req, prepared) in reqs.iter().zip(prepared) {
            grids.push(prepared.and_then(|p| {
                let Some((trace, answer)) = finished.next() else {
                    return Err(Error::Config("a chunk lost a prompt".into()));
                };
                let answer = answer.transpose()?;
                self.read_lens(req, p, trace, answer)
            }));
        }
        times.lens = clock.elapsed();
        Ok((grids, times))
    }

    /// A request's checks and its prompt, tokenised, before any forward pass.
    fn prepare(&self, req: &LensRequest) -> Result<Prepared> {
        check_top_k(req.top_k)?;
        for lens in &req.lenses {
            lens.check(&self.model)?;
        }
        if matches!(req.answer, AnswerSpec::Auto { .. }) && req.generate == 0 {
            return Err(Error::option(
                OptionName::Answer,
                "the answer `auto` takes the greedy answer, so it needs generated tokens",
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
        // only known after generation; it is filled in by `read_lens`.
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
        let tracked_ids = track
            .iter()
            .map(|t| self.first_token(&t.text))
            .collect::<Result<Vec<_>>>()?;
        Ok(Prepared {
            prompt,
            positions,
            track,
            tracked_ids,
            auto_slot,
        })
    }

    /// The lens stage: the trace read through every requested lens, with the
    /// greedy answer's tokens (`answer`) if any were generated.
    fn read_lens(
        &self,
        req: &LensRequest,
        prepared: Prepared,
        trace: ResidualTrace,
        answer: Option<Vec<u32>>,
    ) -> Result<LensGrid> {
        let Prepared {
            prompt,
            positions,
            mut track,
            mut tracked_ids,
            auto_slot,
        } = prepared;
        let answer = answer.map(|ids| Answer {
            text: self.tokenizer.decode(&ids),
            ids,
        });
        if let (AnswerSpec::Auto { skip }, Some(a)) = (&req.answer, &answer) {
            let id = *a.ids.get(*skip).ok_or_else(|| {
                Error::option(
                    OptionName::AnswerSkip,
                    format!(
                        "the greedy answer {:?} has {} tokens, so skipping {skip} leaves none to track",
                        a.text,
                        a.ids.len()
                    ),
                )
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
        let heads: Vec<TrackedHead> = track
            .iter()
            .zip(&tracked_ids)
            .map(|(spec, &id)| TrackedHead {
                text: spec.text.clone(),
                role: spec.role,
                id,
            })
            .collect();
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
            let mut grid = LensGrid::from_cells(
                self.model_info(req),
                self.template_source(req),
                prompt.clone(),
                &cells,
                &heads,
                answer.clone(),
                &|id| self.tokenizer.token_text(id),
            );
            grid.lens = LensInfo::of(lens);
            grid.rehearsal = rehearsal::summarize(&grid, req.top_k, source, skip);
            grids.push(grid);
        }
        drop(trace);
        let mut grid = grids.remove(0);
        grid.more_lenses = grids;
        Ok(grid)
    }

    /// What the grid says about the model behind it.
    fn model_info(&self, req: &LensRequest) -> ModelInfo {
        let cfg = &self.model.cfg;
        ModelInfo {
            file: self.label.clone(),
            arch: cfg.family.name().to_string(),
            n_layers: cfg.sizes.n_layers,
            d_model: cfg.sizes.d_model,
            vocab_size: cfg.sizes.vocab_size,
            precision: self.model.precision.label().to_string(),
            lens_precision: req.lens_precision.label().to_string(),
            lens_kernel: req.lens_precision.kernel().map(|k| k.label().to_string()),
        }
    }

    /// Where the template came from, `none` for `--raw` or no template.
    fn template_source(&self, req: &LensRequest) -> String {
        match (&self.template, req.prompt.raw) {
            (Some(t), false) => t.source.clone(),
            _ => "none".to_string(),
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
