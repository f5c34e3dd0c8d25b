//! `lensmap batch`: its flags, the progress bar, the failed lines and the
//! summary on the terminal, around [`crate::batch::run`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::{HoldArgs, LensChoiceArgs, TemplateArgs, TopKArgs};
use crate::batch::input::{LineError, Shard};
use crate::batch::summary::BatchSummary;
use crate::batch::{record, BatchJob, BatchOutcome, BatchProgress, DEFAULT_GENERATE};
use crate::{Error, Result};

/// Arguments of `lensmap batch`.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// A `.gguf` file, an HF model directory, or `org/name` in the HF cache
    #[arg(long, short = 'm', help_heading = "Model")]
    pub model: String,
    #[command(flatten)]
    pub hold: HoldArgs,
    /// JSONL input, one `{"id", "prompt", "system"?, "answer"?, "alts"?}` a line
    ///
    /// `answer` is the expected answer as the model would write it after "is",
    /// with its leading space (" Canberra"); its first token is tracked. Without
    /// it the greedy answer is tracked (see `--answer-skip`). `alts` are
    /// distractors (" Sydney"), tracked too. A bad line is reported with its
    /// line number and skipped; the exit code is then non-zero.
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub prompts: PathBuf,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub top_k: TopKArgs,
    /// Greedy tokens to generate per prompt (answer check and `auto` answers)
    #[arg(long, default_value_t = DEFAULT_GENERATE, value_name = "N", help_heading = "Lens")]
    pub generate: usize,
    /// For prompts without `answer`: track token N+1 of the greedy answer
    ///
    /// Greedy answers often open with a generic token (" The"): SmolLM2 answers
    /// "What is the capital of Australia?" with " The capital of Australia is
    /// Canberra.", where " Canberra" is token 6 (`--answer-skip 5`).
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = "Lens")]
    pub answer_skip: usize,
    #[command(flatten)]
    pub choice: LensChoiceArgs,
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
    /// Prompts per block-major chunk (default: 8)
    ///
    /// Every prompt of a chunk goes through block i before block i+1 is
    /// read, so a model larger than memory is read from disk once per chunk
    /// instead of once per prompt, and the chunk's rows share each
    /// projection call. The numbers are the same for any N. A chunk holds N
    /// residual traces at once, and a kill loses at most the chunk in
    /// flight.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize), help_heading = "Model")]
    pub chunk: Option<usize>,
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

impl BatchArgs {
    /// The batch these flags describe (a tuned lens is loaded here).
    pub fn job(&self) -> Result<BatchJob> {
        let lens = match crate::lens::Lens::parse_list(&self.choice.lens)?.as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(Error::InvalidOption(
                    "`lensmap batch` takes one `--lens`; run it once per lens".into(),
                ))
            }
        };
        let t = &self.template;
        Ok(BatchJob {
            model: self.model.clone(),
            precision: self.hold.precision,
            max_memory: self.hold.max_memory,
            allow_nonfinite: self.hold.allow_nonfinite,
            prompts: self.prompts.clone(),
            system: t.system.clone(),
            chat_template: t.chat_template.clone(),
            dummy: t.dummy,
            dummy_text: t.dummy_text.clone(),
            top_k: self.top_k.top_k,
            generate: self.generate,
            answer_skip: self.answer_skip,
            lens,
            lens_precision: self.choice.lens_precision,
            positions: self.choice.positions,
            out: self.out.clone(),
            shard: self.shard,
            chunk: self.chunk,
            csv: self.csv,
        })
    }
}

/// Test hook: after this many prompts, write half of the next result's
/// temporary file and exit, as a kill would leave it.
const STOP_AFTER_ENV: &str = "LENSMAP_BATCH_STOP_AFTER";
/// Debug aid: print the resident set size after every prompt.
const RSS_ENV: &str = "LENSMAP_BATCH_RSS";

/// The terminal's view of a batch: a progress bar, failed lines on stderr,
/// and the two environment hooks above.
struct Terminal {
    quiet: bool,
    bar: ProgressBar,
    stop_after: Option<usize>,
    print_rss: bool,
}

impl BatchProgress for Terminal {
    fn bad_line(&mut self, input: &str, e: &LineError) {
        eprintln!("error: `{input}` line {}: {}", e.line, e.message);
    }

    fn start(&mut self, pending: usize) {
        self.bar = progress_bar(self.quiet, pending);
    }

    fn saving(&mut self, done: usize, record: &Path, bytes: &[u8]) {
        if self.stop_after == Some(done) {
            // As a kill mid-write would leave it: a partial temporary file.
            let _ = std::fs::write(record::temp_path(record), &bytes[..bytes.len() / 2]);
            self.bar.abandon();
            eprintln!("{STOP_AFTER_ENV}: stopping after {done} prompts");
            std::process::exit(137);
        }
    }

    fn prompt_failed(&mut self, input: &str, e: &LineError) {
        let id = e.id.as_deref().unwrap_or("");
        self.bar.suspend(|| {
            eprintln!(
                "error: `{input}` line {} (id `{id}`): {}",
                e.line, e.message
            )
        });
    }

    fn advanced(&mut self, done: usize) {
        self.bar.inc(1);
        if self.print_rss {
            self.bar
                .suspend(|| eprintln!("rss after {done} prompts: {}", rss().unwrap_or_default()));
        }
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// `lensmap batch` (and `lensmap.Model.batch`): run it, print the timings
/// and the summary; failed lines make the result an error.
pub fn run(args: BatchArgs) -> Result<()> {
    let clock = Instant::now();
    let job = args.job()?;
    let mut terminal = Terminal {
        quiet: args.quiet,
        bar: ProgressBar::hidden(),
        stop_after: std::env::var(STOP_AFTER_ENV)
            .ok()
            .and_then(|s| s.parse().ok()),
        print_rss: std::env::var_os(RSS_ENV).is_some(),
    };
    let done = crate::batch::run(&job, &mut terminal)?;
    if args.timings {
        print_timings(&done);
    }
    if !args.quiet {
        let mut out = std::io::stdout().lock();
        let _ = print_summary(&mut out, &done.summary, &done.written);
    }
    if done.ran > 0 && !args.quiet {
        let secs = done.run_time.as_secs_f64();
        eprintln!(
            "ran {} prompts in {secs:.1}s ({:.2} prompts/s); {} already done; total {:.1}s",
            done.ran,
            done.ran as f64 / secs.max(1e-9),
            done.already_done,
            clock.elapsed().as_secs_f64()
        );
    }
    let s = &done.summary;
    if s.failed > 0 {
        return Err(Error::InvalidOption(format!(
            "{} of {} input lines failed (listed above and in `{}`)",
            s.failed,
            done.entries,
            done.tables_dir.join("summary.json").display()
        )));
    }
    Ok(())
}

fn print_timings(done: &BatchOutcome) {
    let s = |d: std::time::Duration| d.as_secs_f64();
    let t = &done.times;
    eprintln!(
        "timings: {} prompts: prompt {:.2}s, forward {:.2}s, generate {:.2}s, lens {:.2}s, write {:.2}s; tables {:.2}s",
        done.ran,
        s(t.prompt),
        s(t.forward),
        s(t.generate),
        s(t.lens),
        s(done.write_time),
        s(done.tables_time)
    );
}

fn progress_bar(quiet: bool, n: usize) -> ProgressBar {
    if quiet {
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
        Some(r) => crate::grid::row_label(r, s.n_rows),
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
