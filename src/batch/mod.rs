//! `lensmap batch`: the lens over a JSONL file of prompts, with rehearsal
//! statistics.
//!
//! # How a run goes
//!
//! 1. [`input`] parses every line; a bad line becomes an error naming its
//!    line number, and the run carries on.
//! 2. Every prompt of this run (all of them, or one `--shard`) whose result
//!    `OUT/prompts/<id>.json` is missing or stale goes through
//!    `Session::run`, and its [`record::PromptRecord`] is written atomically
//!    (temporary file + rename). That file is the unit of completion: a rerun
//!    skips finished ids, and a kill loses at most the prompt in flight.
//! 3. The tables are rebuilt from the records, in input order, at the end of
//!    every run ([`tables`], [`summary`], [`figure`]). So an interrupted and
//!    resumed run, or shards followed by an unsharded run over the same
//!    `OUT`, give byte-identical outputs.
//!
//! # Shards
//!
//! `--shard I/N` takes the I-th of N contiguous blocks of input lines (see
//! [`input::Shard`]). A shard writes its records to `OUT/prompts/` as usual
//! and its tables to `OUT/shards/I-of-N/`; concatenated in shard order, those
//! equal the unsharded tables (`prompts.jsonl` and `cells.csv` rows, after one
//! header, and `cells.parquet` rows). A final run without `--shard` finds
//! every prompt done, skips loading the model and writes the tables of the
//! whole file to `OUT/`.

pub mod figure;
pub mod input;
pub mod record;
pub mod summary;
pub mod tables;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::lens::{Lens, LensPrecision, PositionSpec};
use crate::model::Precision;
use crate::run::{AnswerSpec, LensFlags, LensRequest, Session, StageTimes};
use crate::{Error, OptionName, Result};
use input::{InputLine, LineError, PromptItem, Shard};
use record::{record_key, write_atomic, PromptRecord, Store};
use summary::{BatchSummary, CurveBuilder, Tally};

/// Greedy tokens generated per prompt when not given: enough for the
/// answer check and for `auto` answers that open with a generic token.
pub(crate) const DEFAULT_GENERATE: usize = 12;

/// One batch, as `lensmap batch` (or `lensmap.Model.batch`) asks for it.
#[derive(Debug, Clone)]
pub struct BatchJob {
    /// A `.gguf` file, an HF model directory, or `org/name` in the HF cache.
    pub model: String,
    pub precision: Precision,
    /// Memory the model may hold (`None`: what the machine allows).
    pub max_memory: Option<u64>,
    /// Carry NaN or infinity through, marking the cells it spoils invalid
    /// (hatched in figures, left out of the tables and curves) instead of failing.
    pub allow_nonfinite: bool,
    /// The JSONL input, one `{"id", "prompt", "system"?, "answer"?, "alts"?}` a line.
    pub prompts: PathBuf,
    /// The system message of prompts without their own.
    pub system: Option<String>,
    /// A Jinja chat template to use instead of the model's own.
    pub chat_template: Option<PathBuf>,
    /// Filler tokens after the generation prompt, and their text.
    pub dummy: usize,
    pub dummy_text: String,
    /// "In the top-k" means rank ≤ `top_k`.
    pub top_k: usize,
    /// Greedy tokens to generate per prompt.
    pub generate: usize,
    /// For prompts without a named answer: track greedy token `answer_skip`.
    pub answer_skip: usize,
    /// The one lens every prompt is read through.
    pub lens: Lens,
    pub lens_precision: LensPrecision,
    pub positions: PositionSpec,
    /// Results directory: `prompts/` (one file per prompt) and the tables.
    pub out: PathBuf,
    /// Only this block of input lines.
    pub shard: Option<Shard>,
    /// Prompts per block-major chunk (`None`: 8). Every prompt of a chunk
    /// goes through block i before block i+1 is read, so a model larger than
    /// memory is read once per chunk instead of once per prompt, and at rest
    /// the chunk's rows share each projection call; the numbers are the same
    /// for any N.
    pub chunk: Option<usize>,
    /// Also write `cells.csv`.
    pub csv: bool,
}

/// Default chunk size: a streamed file is read once per 8 prompts, and at
/// rest 8 prompts of ~45 tokens share each projection call (360 rows, inside
/// the kernel's row-independent range), which took a SmolLM2 `batch` forward
/// pass from 0.14 to 0.10 s a prompt. 8 traces stay small next to the
/// budget (8 × 24 MB at 8B, 45 tokens).
const DEFAULT_CHUNK: usize = 8;

impl BatchJob {
    /// Where the tables go: `out`, or `out/shards/I-of-N` for a shard.
    pub fn tables_dir(&self) -> PathBuf {
        match self.shard {
            Some(s) => self
                .out
                .join("shards")
                .join(format!("{}-of-{}", s.index + 1, s.count)),
            None => self.out.clone(),
        }
    }
}

/// What a front end hears while a batch runs; every method does nothing by
/// default. The CLI draws its progress bar and prints failed lines here.
pub trait BatchProgress {
    /// An input line that could not be read as a prompt (before any runs).
    fn bad_line(&mut self, _input: &str, _error: &LineError) {}
    /// The model is loaded and `pending` prompts are about to run.
    fn start(&mut self, _pending: usize) {}
    /// A prompt ran and its record, `bytes`, is about to be written to
    /// `record` (`done` prompts of this run are finished before it).
    fn saving(&mut self, _done: usize, _record: &Path, _bytes: &[u8]) {}
    /// A prompt failed; it is listed in the summary and the batch carries on.
    fn prompt_failed(&mut self, _input: &str, _error: &LineError) {}
    /// `done` prompts of this run are finished (failed ones included).
    fn advanced(&mut self, _done: usize) {}
    /// Every pending prompt has run; the tables are next.
    fn finish(&mut self) {}
}

/// A [`BatchProgress`] that hears nothing.
pub struct Silent;

impl BatchProgress for Silent {}

/// What a finished batch did: its summary, the files written and the time
/// each stage took. A batch with failed lines still finishes
/// (`summary.failed`); the front end decides what that means.
#[derive(Debug)]
pub struct BatchOutcome {
    pub summary: BatchSummary,
    /// Every table and figure written, in order.
    pub written: Vec<PathBuf>,
    /// Where the tables went ([`BatchJob::tables_dir`]).
    pub tables_dir: PathBuf,
    /// Input entries of this run (prompts and unreadable lines).
    pub entries: usize,
    /// Prompts run now, and prompts found already done.
    pub ran: usize,
    pub already_done: usize,
    /// Summed over the prompts run now.
    pub times: StageTimes,
    /// Writing records, running every pending prompt, and building the tables.
    pub write_time: Duration,
    pub run_time: Duration,
    pub tables_time: Duration,
}

/// Run a batch: every pending prompt, then the tables from every record.
pub fn run(job: &BatchJob, progress: &mut dyn BatchProgress) -> Result<BatchOutcome> {
    crate::run::check_top_k(job.top_k)?;
    if job.chunk == Some(0) {
        return Err(Error::option(
            OptionName::Chunk,
            "the chunk size must be at least 1",
        ));
    }
    let text = std::fs::read_to_string(&job.prompts).map_err(|e| Error::io(&job.prompts, e))?;
    let input = input::parse_input(&text);
    if input.items.is_empty() && input.errors.is_empty() {
        return Err(Error::InvalidOption(format!(
            "`{}` holds no prompts: expected one JSON object a line",
            job.prompts.display()
        )));
    }
    let input_name = file_name(&job.prompts);
    let in_run = |line: usize| job.shard.is_none_or(|s| s.contains(line, input.n_lines));
    let mut errors: Vec<LineError> = input
        .errors
        .iter()
        .filter(|e| in_run(e.line))
        .cloned()
        .collect();
    for e in &errors {
        progress.bad_line(&input_name, e);
    }
    let lines: Vec<&InputLine> = input.items.iter().filter(|l| in_run(l.line)).collect();
    let entries = lines.len() + errors.len();

    let settings = settings(job)?;
    let store = Store::new(&job.out);
    std::fs::create_dir_all(&store.dir).map_err(|e| Error::io(&store.dir, e))?;
    if job.shard.is_none() {
        store.remove_temporaries();
    }
    let keys: Vec<String> = lines
        .iter()
        .map(|l| item_key(job, &settings, &l.item))
        .collect();
    let pending: Vec<usize> = (0..lines.len())
        .filter(|&i| !store.is_done(&lines[i].stem, &keys[i]))
        .collect();

    let mut ran = 0usize;
    let mut times = StageTimes::default();
    let mut write_time = Duration::ZERO;
    let run_clock = Instant::now();
    if !pending.is_empty() {
        let session = Session::open_within(
            &job.model,
            job.precision,
            job.max_memory,
            job.chat_template.as_deref(),
            job.allow_nonfinite,
        )?;
        progress.start(pending.len());
        let chunk = job.chunk.unwrap_or(DEFAULT_CHUNK);
        for part in pending.chunks(chunk) {
            let reqs: Vec<LensRequest> =
                part.iter().map(|&i| request(job, &lines[i].item)).collect();
            let (grids, t) = session.run_chunk(&reqs)?;
            times.add(&t);
            for (&i, result) in part.iter().zip(grids) {
                let line = lines[i];
                match result {
                    Ok(grid) => {
                        let clock = Instant::now();
                        let rec = PromptRecord::from_grid(keys[i].clone(), &line.item, grid);
                        let bytes = Store::encode(&rec)?;
                        progress.saving(ran, &store.path(&line.stem), &bytes);
                        store.save(&line.stem, &bytes)?;
                        write_time += clock.elapsed();
                    }
                    Err(e) => {
                        let error = LineError {
                            line: line.line,
                            id: Some(line.item.id.clone()),
                            message: e.message(),
                        };
                        progress.prompt_failed(&input_name, &error);
                        errors.push(error);
                    }
                }
                ran += 1;
                progress.advanced(ran);
            }
        }
        progress.finish();
    }
    let run_time = run_clock.elapsed();
    errors.sort_by_key(|e| e.line);
    let tables_clock = Instant::now();

    let tables_dir = job.tables_dir();
    std::fs::create_dir_all(&tables_dir).map_err(|e| Error::io(&tables_dir, e))?;
    let assembled = assemble(
        job,
        &store,
        &lines,
        &keys,
        &tables_dir,
        &input_name,
        input.n_lines,
        settings,
        errors,
    )?;
    Ok(BatchOutcome {
        summary: assembled.summary,
        written: assembled.written,
        tables_dir,
        entries,
        ran,
        already_done: lines.len() - pending.len(),
        times,
        write_time,
        run_time,
        tables_time: tables_clock.elapsed(),
    })
}

/// What [`assemble`] wrote.
struct Assembled {
    summary: BatchSummary,
    written: Vec<PathBuf>,
}

/// Rebuild every table from the records of `lines`, in order.
#[allow(clippy::too_many_arguments)]
fn assemble(
    job: &BatchJob,
    store: &Store,
    lines: &[&InputLine],
    keys: &[String],
    out_dir: &Path,
    input_name: &str,
    n_lines: usize,
    settings: serde_json::Value,
    errors: Vec<LineError>,
) -> Result<Assembled> {
    let mut prompts = tables::PromptsWriter::create(&out_dir.join("prompts.jsonl"))?;
    let mut csv = if job.csv {
        Some(tables::CsvWriter::create(&out_dir.join("cells.csv"))?)
    } else {
        None
    };
    #[cfg(feature = "parquet")]
    let mut parquet = tables::ParquetWriter::create(&out_dir.join("cells.parquet"))?;
    let mut curves = CurveBuilder::new(job.top_k);
    let mut tally = Tally::default();
    let mut model = None;
    let mut n_rows = 0;
    let mut done = 0;
    for (line, key) in lines.iter().zip(keys) {
        // Missing here means it failed in this run (already in `errors`).
        let Some(rec) = store.load_done(&line.stem, key) else {
            continue;
        };
        done += 1;
        prompts.push(&tables::PromptLine::new(line, &rec))?;
        if let Some(csv) = csv.as_mut() {
            csv.push(&rec)?;
        }
        #[cfg(feature = "parquet")]
        parquet.push(&rec)?;
        curves.push(&rec);
        tally.push(&rec);
        n_rows = n_rows.max(rec.n_rows);
        if model.is_none() {
            model = Some(rec.model.clone());
        }
    }
    let mut written = vec![prompts.finish()?];
    if let Some(csv) = csv {
        written.push(csv.finish()?);
    }
    #[cfg(feature = "parquet")]
    written.push(parquet.finish()?);

    let curves = curves.finish();
    let (answers, last_position) = tally.finish();
    let summary = BatchSummary {
        lensmap_version: env!("CARGO_PKG_VERSION").to_string(),
        model,
        input: input_name.to_string(),
        shard: job.shard.map(|s| s.to_string()),
        settings,
        lines: n_lines,
        prompts: lines.len(),
        done,
        failed: errors.len(),
        errors,
        answers,
        top_k: job.top_k,
        n_rows,
        last_position,
        curves,
    };
    let path = out_dir.join("summary.json");
    let mut json = serde_json::to_string_pretty(&summary).map_err(|source| Error::Serialize {
        what: "summary",
        source,
    })?;
    json.push('\n');
    write_atomic(&path, json.as_bytes())?;
    written.push(path);

    let svg = figure::render_svg(
        &summary.curves,
        n_rows,
        job.top_k,
        &figure_subtitle(&summary, job),
    );
    let path = out_dir.join("rehearsal.svg");
    write_atomic(&path, svg.as_bytes())?;
    written.push(path);
    let png = crate::render::render_png(&svg)?;
    let path = out_dir.join("rehearsal.png");
    write_atomic(&path, &png)?;
    written.push(path);
    Ok(Assembled { summary, written })
}

fn figure_subtitle(s: &BatchSummary, job: &BatchJob) -> Vec<String> {
    let model = s.model.as_ref().map_or("(no results)".to_string(), |m| {
        format!("{} ({} layers)", m.file, m.n_layers)
    });
    let answers = match (s.answers.given, s.answers.auto) {
        (g, 0) => format!("{g} named answers"),
        (0, a) => format!("{a} greedy answers"),
        (g, a) => format!("{g} named + {a} greedy answers"),
    };
    vec![
        format!(
            "model: {model} · {} prompts from {} · {answers}",
            s.done, s.input
        ),
        format!(
            "{} dummy tokens \"{}\" · answer token's rank and probability in every lens cell",
            job.dummy, job.dummy_text
        ),
    ]
}

/// The request for one prompt: its named answer, else its greedy answer
/// (`answer_skip` applies to greedy answers only).
pub fn request(job: &BatchJob, item: &PromptItem) -> LensRequest {
    let answer = match &item.answer {
        Some(a) => AnswerSpec::Text(a.clone()),
        None if job.generate > 0 => AnswerSpec::Auto {
            skip: job.answer_skip,
        },
        None => AnswerSpec::None,
    };
    LensFlags {
        prompt: item.prompt.clone(),
        system: item.system.clone().or_else(|| job.system.clone()),
        dummy: job.dummy,
        dummy_text: job.dummy_text.clone(),
        top_k: job.top_k,
        generate: job.generate,
        answer_alt: item.alts.clone(),
        lenses: vec![job.lens.clone()],
        lens_precision: job.lens_precision,
        positions: job.positions,
        ..LensFlags::default()
    }
    .request_with(answer)
}

/// Settings that shape every prompt's numbers.
fn settings(job: &BatchJob) -> Result<serde_json::Value> {
    let model_path = Path::new(&job.model);
    let model_bytes = std::fs::metadata(model_path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let template = match &job.chat_template {
        Some(p) => {
            let text = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            let hash: String = Sha256::digest(&text)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Some(serde_json::json!({"file": file_name(p), "sha256": hash}))
        }
        None => None,
    };
    let mut settings = serde_json::json!({
        "model_file": file_name(model_path),
        "model_bytes": model_bytes,
        "precision": job.precision.label(),
        "top_k": job.top_k,
        "dummy": job.dummy,
        "dummy_text": job.dummy_text,
        "generate": job.generate,
        "chat_template": template,
        "lens": crate::grid::LensInfo::of(&job.lens),
    });
    // Only when not the default, so f32 keys stay those of earlier runs.
    if job.lens_precision != LensPrecision::F32 {
        settings["lens_precision"] = job.lens_precision.label().into();
    }
    if job.positions != PositionSpec::All {
        settings["positions"] = format!("{:?}", job.positions).into();
    }
    if job.allow_nonfinite {
        settings["allow_nonfinite"] = true.into();
    }
    Ok(settings)
}

/// The key of one prompt: the settings plus what applies to this item (its
/// effective system message; `--answer-skip` only for a greedy answer).
fn item_key(job: &BatchJob, settings: &serde_json::Value, item: &PromptItem) -> String {
    let mut s = settings.clone();
    s["system"] = serde_json::json!(item.system.clone().or_else(|| job.system.clone()));
    if item.answer.is_none() {
        s["answer_skip"] = serde_json::json!(job.answer_skip);
    }
    let item = PromptItem {
        category: None,
        system: None,
        ..item.clone()
    };
    record_key(&s, &item)
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
