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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::model::Precision;
use crate::prompt::{PromptSpec, DEFAULT_DUMMY_TEXT};
use crate::run::{AnswerSpec, LensRequest, Session, StageTimes};
use crate::{Error, Result};
use input::{InputLine, LineError, PromptItem, Shard};
use record::{record_key, write_atomic, PromptRecord, Store};
use summary::{BatchSummary, CurveBuilder, Tally};

/// Arguments of `lensmap batch`.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// A `.gguf` file, an HF model directory, or `org/name` in the HF cache
    #[arg(long, short = 'm', help_heading = "Model")]
    pub model: String,
    /// `auto` (fastest exact: f32 on CPU), `f32`, `f64` or `quant`
    #[arg(long, default_value = "auto", help_heading = "Model")]
    pub precision: Precision,
    /// Carry NaN or infinity in a weight or residual through, marking the cells it spoils invalid
    ///
    /// Without it such a value is an error naming the tensor or layer. With
    /// it the affected cells are `invalid` in each prompt's JSON, hatched in
    /// figures, and left out of the tables and curves.
    #[arg(long, help_heading = "Model")]
    pub allow_nonfinite: bool,
    /// JSONL input, one `{"id", "prompt", "system"?, "answer"?, "alts"?}` a line
    ///
    /// `answer` is the expected answer as the model would write it after "is",
    /// with its leading space (" Canberra"); its first token is tracked. Without
    /// it the greedy answer is tracked (see `--answer-skip`). `alts` are
    /// distractors (" Sydney"), tracked too. A bad line is reported with its
    /// line number and skipped; the exit code is then non-zero.
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub prompts: PathBuf,
    /// A system message for prompts without their own `system`
    #[arg(long, help_heading = "Input")]
    pub system: Option<String>,
    /// Use this Jinja chat template instead of the model's own
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub chat_template: Option<PathBuf>,
    /// Append N filler ("dummy") tokens after the generation prompt
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = "Input")]
    pub dummy: usize,
    /// The filler text; must be a single token
    #[arg(long, default_value = DEFAULT_DUMMY_TEXT, value_name = "TEXT", help_heading = "Input")]
    pub dummy_text: String,
    /// "In the top-k" means rank ≤ K
    #[arg(long, default_value_t = 5, value_name = "K", help_heading = "Lens")]
    pub top_k: usize,
    /// Greedy tokens to generate per prompt (answer check and `auto` answers)
    #[arg(long, default_value_t = 12, value_name = "N", help_heading = "Lens")]
    pub generate: usize,
    /// For prompts without `answer`: track token N+1 of the greedy answer
    ///
    /// Greedy answers often open with a generic token (" The"): SmolLM2 answers
    /// "What is the capital of Australia?" with " The capital of Australia is
    /// Canberra.", where " Canberra" is token 6 (`--answer-skip 5`).
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = "Lens")]
    pub answer_skip: usize,
    #[command(flatten)]
    pub choice: crate::lens::LensChoiceArgs,
    /// Results directory: `prompts/` (one file per prompt) and the tables
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub out: PathBuf,
    /// Process only the I-th of N contiguous blocks of input lines (1 ≤ I ≤ N)
    ///
    /// Run the N shards against the same `--out` (in parallel or on other
    /// machines, then copy `prompts/` together), then run once more without
    /// `--shard` to write the combined tables; that run computes nothing new.
    #[arg(long, value_name = "I/N", help_heading = "Output")]
    pub shard: Option<Shard>,
    /// Also write `cells.csv`
    #[arg(long, help_heading = "Output")]
    pub csv: bool,
    /// Print nothing but errors (no progress bar, no summary)
    #[arg(long, short = 'q', help_heading = "Output")]
    pub quiet: bool,
    /// Print the total wall time of each stage to stderr
    #[arg(long, help_heading = "Output")]
    pub timings: bool,
}

/// Test hook: after this many prompts, write half of the next result's
/// temporary file and exit, as a kill would leave it.
const STOP_AFTER_ENV: &str = "LENSMAP_BATCH_STOP_AFTER";
/// Debug aid: print the resident set size after every prompt.
const RSS_ENV: &str = "LENSMAP_BATCH_RSS";

/// Run a batch.
pub fn run(args: BatchArgs) -> Result<()> {
    crate::run::check_top_k(args.top_k)?;
    let clock = Instant::now();
    let text = std::fs::read_to_string(&args.prompts).map_err(|e| Error::io(&args.prompts, e))?;
    let input = input::parse_input(&text);
    if input.items.is_empty() && input.errors.is_empty() {
        return Err(Error::InvalidOption(format!(
            "`{}` holds no prompts: expected one JSON object a line",
            args.prompts.display()
        )));
    }
    let input_name = file_name(&args.prompts);
    let in_run = |line: usize| args.shard.is_none_or(|s| s.contains(line, input.n_lines));
    let mut errors: Vec<LineError> = input
        .errors
        .iter()
        .filter(|e| in_run(e.line))
        .cloned()
        .collect();
    for e in &errors {
        eprintln!("error: `{input_name}` line {}: {}", e.line, e.message);
    }
    let lines: Vec<&InputLine> = input.items.iter().filter(|l| in_run(l.line)).collect();
    let n_entries = lines.len() + errors.len();

    let lens = match crate::lens::Lens::parse_list(&args.choice.lens)?.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(Error::InvalidOption(
                "`lensmap batch` takes one `--lens`; run it once per lens".into(),
            ))
        }
    };
    let settings = settings(&args, &lens)?;
    let store = Store::new(&args.out);
    std::fs::create_dir_all(&store.dir).map_err(|e| Error::io(&store.dir, e))?;
    if args.shard.is_none() {
        store.remove_temporaries();
    }
    let keys: Vec<String> = lines
        .iter()
        .map(|l| item_key(&args, &settings, &l.item))
        .collect();
    let pending: Vec<usize> = (0..lines.len())
        .filter(|&i| !store.is_done(&lines[i].stem, &keys[i]))
        .collect();

    let mut ran = 0usize;
    let mut times = StageTimes::default();
    let mut write_time = std::time::Duration::ZERO;
    let run_clock = Instant::now();
    if !pending.is_empty() {
        let session = Session::open_within(
            &args.model,
            args.precision,
            None,
            args.chat_template.as_deref(),
            args.allow_nonfinite,
        )?;
        let pb = progress_bar(&args, pending.len());
        let stop_after: Option<usize> = std::env::var(STOP_AFTER_ENV)
            .ok()
            .and_then(|s| s.parse().ok());
        for &i in &pending {
            let line = lines[i];
            let req = request(&args, &line.item, &lens);
            match session.run_timed(&req) {
                Ok((grid, t)) => {
                    times.prompt += t.prompt;
                    times.forward += t.forward;
                    times.generate += t.generate;
                    times.lens += t.lens;
                    let clock = Instant::now();
                    let rec = PromptRecord::from_grid(keys[i].clone(), &line.item, grid);
                    let bytes = Store::encode(&rec)?;
                    if stop_after == Some(ran) {
                        // As a kill mid-write would leave it: a partial temporary file.
                        let tmp = record::temp_path(&store.path(&line.stem));
                        let _ = std::fs::write(&tmp, &bytes[..bytes.len() / 2]);
                        pb.abandon();
                        eprintln!("{STOP_AFTER_ENV}: stopping after {ran} prompts");
                        std::process::exit(137);
                    }
                    store.save(&line.stem, &bytes)?;
                    write_time += clock.elapsed();
                }
                Err(e) => {
                    let message = e.to_string();
                    pb.suspend(|| {
                        eprintln!(
                            "error: `{input_name}` line {} (id `{}`): {message}",
                            line.line, line.item.id
                        )
                    });
                    errors.push(LineError {
                        line: line.line,
                        id: Some(line.item.id.clone()),
                        message,
                    });
                }
            }
            ran += 1;
            pb.inc(1);
            if std::env::var_os(RSS_ENV).is_some() {
                pb.suspend(|| eprintln!("rss after {ran} prompts: {}", rss().unwrap_or_default()));
            }
        }
        pb.finish_and_clear();
    }
    let run_time = run_clock.elapsed();
    errors.sort_by_key(|e| e.line);
    let assemble_clock = Instant::now();

    let out_dir = match args.shard {
        Some(s) => args
            .out
            .join("shards")
            .join(format!("{}-of-{}", s.index + 1, s.count)),
        None => args.out.clone(),
    };
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
    let assembled = assemble(
        &args,
        &store,
        &lines,
        &keys,
        &out_dir,
        &input_name,
        input.n_lines,
        settings,
        errors,
    )?;
    if args.timings {
        let s = |d: std::time::Duration| d.as_secs_f64();
        eprintln!(
            "timings: {ran} prompts: prompt {:.2}s, forward {:.2}s, generate {:.2}s, lens {:.2}s, write {:.2}s; tables {:.2}s",
            s(times.prompt),
            s(times.forward),
            s(times.generate),
            s(times.lens),
            s(write_time),
            s(assemble_clock.elapsed())
        );
    }

    if !args.quiet {
        let mut out = std::io::stdout().lock();
        let _ = print_summary(&mut out, &assembled.summary, &assembled.written);
    }
    if ran > 0 && !args.quiet {
        let secs = run_time.as_secs_f64();
        eprintln!(
            "ran {ran} prompts in {secs:.1}s ({:.2} prompts/s); {} already done; total {:.1}s",
            ran as f64 / secs.max(1e-9),
            lines.len() - pending.len(),
            clock.elapsed().as_secs_f64()
        );
    }
    let s = &assembled.summary;
    if s.failed > 0 {
        return Err(Error::InvalidOption(format!(
            "{} of {n_entries} input lines failed (listed above and in `{}`)",
            s.failed,
            out_dir.join("summary.json").display()
        )));
    }
    Ok(())
}

/// What [`assemble`] wrote.
struct Assembled {
    summary: BatchSummary,
    written: Vec<PathBuf>,
}

/// Rebuild every table from the records of `lines`, in order.
#[allow(clippy::too_many_arguments)]
fn assemble(
    args: &BatchArgs,
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
    let mut csv = if args.csv {
        Some(tables::CsvWriter::create(&out_dir.join("cells.csv"))?)
    } else {
        None
    };
    #[cfg(feature = "parquet")]
    let mut parquet = tables::ParquetWriter::create(&out_dir.join("cells.parquet"))?;
    let mut curves = CurveBuilder::new(args.top_k);
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
        shard: args.shard.map(|s| s.to_string()),
        settings,
        lines: n_lines,
        prompts: lines.len(),
        done,
        failed: errors.len(),
        errors,
        answers,
        top_k: args.top_k,
        n_rows,
        last_position,
        curves,
    };
    let path = out_dir.join("summary.json");
    let mut json = serde_json::to_string_pretty(&summary)
        .map_err(|e| Error::InvalidOption(format!("summary to JSON: {e}")))?;
    json.push('\n');
    write_atomic(&path, json.as_bytes())?;
    written.push(path);

    let svg = figure::render_svg(
        &summary.curves,
        n_rows,
        args.top_k,
        &figure_subtitle(&summary, args),
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

fn figure_subtitle(s: &BatchSummary, args: &BatchArgs) -> Vec<String> {
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
            args.dummy, args.dummy_text
        ),
    ]
}

/// The request for one prompt: its named answer, else its greedy answer.
pub fn request(args: &BatchArgs, item: &PromptItem, lens: &crate::lens::Lens) -> LensRequest {
    LensRequest {
        prompt: PromptSpec {
            user: item.prompt.clone(),
            system: item.system.clone().or_else(|| args.system.clone()),
            raw: false,
            dummy: args.dummy,
            dummy_text: Some(args.dummy_text.clone()),
        },
        top_k: args.top_k,
        track: Vec::new(),
        generate: args.generate,
        answer: match &item.answer {
            Some(a) => AnswerSpec::Text(a.clone()),
            None if args.generate > 0 => AnswerSpec::Auto {
                skip: args.answer_skip,
            },
            None => AnswerSpec::None,
        },
        alts: item.alts.clone(),
        max_tokens: None,
        lens_precision: args.choice.lens_precision,
        positions: args.choice.positions,
        lenses: vec![lens.clone()],
    }
}

/// Settings that shape every prompt's numbers.
fn settings(args: &BatchArgs, lens: &crate::lens::Lens) -> Result<serde_json::Value> {
    let model_path = Path::new(&args.model);
    let model_bytes = std::fs::metadata(model_path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let template = match &args.chat_template {
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
        "precision": args.precision.label(),
        "top_k": args.top_k,
        "dummy": args.dummy,
        "dummy_text": args.dummy_text,
        "generate": args.generate,
        "chat_template": template,
        "lens": crate::grid::LensInfo::of(lens),
    });
    // Only when not the default, so f32 keys stay those of earlier runs.
    if args.choice.lens_precision != crate::lens::LensPrecision::F32 {
        settings["lens_precision"] = args.choice.lens_precision.label().into();
    }
    if args.choice.positions != crate::lens::PositionSpec::All {
        settings["positions"] = format!("{:?}", args.choice.positions).into();
    }
    if args.allow_nonfinite {
        settings["allow_nonfinite"] = true.into();
    }
    Ok(settings)
}

/// The key of one prompt: the settings plus what applies to this item (its
/// effective system message; `--answer-skip` only for a greedy answer).
fn item_key(args: &BatchArgs, settings: &serde_json::Value, item: &PromptItem) -> String {
    let mut s = settings.clone();
    s["system"] = serde_json::json!(item.system.clone().or_else(|| args.system.clone()));
    if item.answer.is_none() {
        s["answer_skip"] = serde_json::json!(args.answer_skip);
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

fn progress_bar(args: &BatchArgs, n: usize) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    // Hidden by indicatif itself when stderr is not a terminal.
    let pb = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{wide_bar} {pos}/{len} prompts · {rate} · ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.2} prompts/s", s.per_sec());
        });
    pb.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
    pb
}

/// `VmRSS` from `/proc/self/status` (Linux).
fn rss() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l["VmRSS:".len()..].trim().to_string())
}

/// The terminal summary.
fn print_summary(
    out: &mut impl Write,
    s: &BatchSummary,
    written: &[PathBuf],
) -> std::io::Result<()> {
    let shard = s
        .shard
        .as_ref()
        .map_or(String::new(), |sh| format!(" (shard {sh})"));
    writeln!(
        out,
        "batch     {}{shard}: {} prompts, {} done, {} failed",
        s.input, s.prompts, s.done, s.failed
    )?;
    if let Some(m) = &s.model {
        writeln!(
            out,
            "model     {} ({}, {} layers, {})",
            m.file, m.arch, m.n_layers, m.precision
        )?;
        if let Some(note) = m.bf16_note() {
            writeln!(out, "lens      {note}, not the exact f32 path")?;
        }
    }
    let a = &s.answers;
    write!(
        out,
        "answers   {} named, {} greedy, {} none",
        a.given, a.auto, a.none
    )?;
    if a.checked > 0 {
        write!(
            out,
            "; greedy text has the expected answer in {}/{} ({:.0}%)",
            a.correct,
            a.checked,
            100.0 * a.correct as f64 / a.checked as f64
        )?;
    }
    writeln!(out)?;
    let lp = &s.last_position;
    if lp.prompts > 0 {
        writeln!(
            out,
            "last pos  answer in top-{} at output {}/{}, at some row {}/{}, median output rank {}",
            s.top_k,
            lp.in_topk_at_output,
            lp.prompts,
            lp.in_topk_at_some_row,
            lp.prompts,
            lp.median_output_rank.map_or("-".into(), |r| format!("{r}"))
        )?;
    }
    let row = |r: Option<usize>| match r {
        Some(r) if r + 1 == s.n_rows => "output".to_string(),
        Some(r) => r.to_string(),
        None => "never".to_string(),
    };
    writeln!(
        out,
        "\n{:<9} {:>7} {:>10} {:>11} {:>17} {:>14}",
        "positions",
        "prompts",
        "onset row",
        "peak median",
        "median p (output)",
        format!("top-{} (output)", s.top_k)
    )?;
    for c in &s.curves {
        let Some(last) = c.points.last() else {
            continue;
        };
        writeln!(
            out,
            "{:<9} {:>7} {:>10} {:>11} {:>17.2e} {:>14.2}",
            c.kind.name(),
            last.prompts,
            row(c.onset_row),
            row(c.peak_median_row),
            last.median,
            last.topk_rate
        )?;
    }
    writeln!(
        out,
        "(onset row: first row where the answer is in the top-{} at half the positions)",
        s.top_k
    )?;
    for p in written {
        writeln!(out, "wrote {}", p.display())?;
    }
    Ok(())
}
