//! The command line, at the edge of the library: the clap structs of every
//! subcommand, what each subcommand prints, its progress bar, the exit code
//! of each error kind and the hints worded in flags. Nothing below this
//! module depends on clap or prints. Flags are grouped under help headings;
//! the first paragraph of each doc comment is its `-h` text. Flag groups
//! several subcommands take ([`HoldArgs`], [`TemplateArgs`], [`TopKArgs`],
//! [`LensChoiceArgs`]) are defined once and flattened into each.

pub mod batch;
pub mod serve;

pub use batch::BatchArgs;
pub use serve::ServeArgs;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::error::ErrorKind;
use crate::grid::{LensGrid, TokenKind};
use crate::lens::{LensPrecision, PositionSpec};
use crate::model::Precision;
use crate::prompt::DEFAULT_DUMMY_TEXT;
use crate::render::{self, FigureOptions, OutputFormat, Stat};
use crate::run::{LensFlags, LensRequest, Session, DEFAULT_TOP_K};

/// The logit lens for local language models: what every layer would predict,
/// at every token, and how sure it is.
#[derive(Debug, Parser)]
#[command(name = "lensmap", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the lens on one prompt and write JSON and figures
    Run(Box<RunArgs>),
    /// Redraw figures from a saved JSON file, without the model
    Plot(PlotArgs),
    /// Describe a model: architecture, sizes, template, special tokens
    Info(InfoArgs),
    /// Dequantise a GGUF model into an HF safetensors directory
    Convert(ConvertArgs),
    /// Run the lens over a JSONL file of prompts and measure rehearsal
    Batch(BatchArgs),
    /// Explore prompts live in a local web app
    Serve(ServeArgs),
    /// Train a tuned lens (tuned-lens format) on a text corpus
    TrainLens(crate::train::TrainArgs),
}

/// Which model and how to hold its weights.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A `.gguf` file, an HF model directory, or `org/name` in the HF cache
    #[arg(long, short = 'm', help_heading = "Model")]
    pub model: String,
    #[command(flatten)]
    pub hold: HoldArgs,
}

/// How to hold a model's weights (`run`, `batch`, `serve`).
#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    /// `auto` (`rest` on a CPU with AVX2 or AVX-512, else f32 copies while they
    /// fit the memory budget), `f32`, `rest` (weights stay in the mapped
    /// file; the same numbers), `f64`, or `quant` (at rest with llama.cpp's
    /// 8-bit products: faster, and the numbers move)
    #[arg(long, default_value = "auto", help_heading = "Model")]
    pub precision: Precision,
    /// Memory the model may hold, e.g. `6G` or `512M` (default: what is
    /// available; where `auto` picks f32 copies, only within half of it)
    #[arg(long, value_name = "SIZE", value_parser = crate::model::budget::parse_max_memory, help_heading = "Model")]
    pub max_memory: Option<u64>,
    /// Carry NaN or infinity in a weight or residual through, marking the cells it spoils invalid
    ///
    /// Without it such a value is an error naming the tensor or layer. With
    /// it the affected cells are listed in the JSON's `invalid`, hatched in
    /// the figures (never coloured as a value), and left out of the terminal
    /// table and the rehearsal summary.
    #[arg(long, help_heading = "Model")]
    pub allow_nonfinite: bool,
}

/// What to feed the model.
#[derive(Debug, Args)]
pub struct PromptArgs {
    /// The user message (or the whole text with `--raw`)
    #[arg(long, short = 'p', help_heading = "Prompt")]
    pub prompt: String,
    /// Feed the prompt as is, without the chat template
    #[arg(long, help_heading = "Prompt")]
    pub raw: bool,
    #[command(flatten)]
    pub template: TemplateArgs,
}

/// What goes around each prompt (`run`, `batch`).
#[derive(Debug, Clone, Args)]
pub struct TemplateArgs {
    /// A system message (in `batch`, for prompts without their own `system`)
    #[arg(long, help_heading = "Prompt")]
    pub system: Option<String>,
    /// Use this Jinja chat template instead of the model's own
    #[arg(long, value_name = "FILE", help_heading = "Prompt")]
    pub chat_template: Option<PathBuf>,
    /// Append N filler ("dummy") tokens after the generation prompt
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = "Prompt")]
    pub dummy: usize,
    /// The filler text; must be a single token
    #[arg(long, default_value = DEFAULT_DUMMY_TEXT, value_name = "TEXT", help_heading = "Prompt")]
    pub dummy_text: String,
}

/// `--top-k` (`run`, `batch`), its default set once: [`DEFAULT_TOP_K`].
#[derive(Debug, Clone, Args)]
pub struct TopKArgs {
    /// Tokens listed per cell; "in the top-k" (rehearsal) means rank ≤ K
    #[arg(long, default_value_t = DEFAULT_TOP_K, value_name = "K", help_heading = "Lens",
          allow_negative_numbers = true, value_parser = top_k_value)]
    pub top_k: usize,
}

/// What to measure in every cell.
#[derive(Debug, Args)]
pub struct LensArgs {
    #[command(flatten)]
    pub top_k: TopKArgs,
    /// Track the probability and rank of this text's first token in every cell
    #[arg(long, value_name = "TEXT", help_heading = "Lens")]
    pub target: Option<String>,
    /// Greedily generate N tokens after the prompt and record the answer
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = "Lens")]
    pub generate: usize,
    /// Track the answer in every cell and summarise its rehearsal: `auto` or a TEXT
    ///
    /// `auto` (the default when `--generate` is given) takes the model's greedy
    /// answer; TEXT names it (`--answer " Canberra"`, with the leading space the
    /// model writes after "is"); its first token is tracked. The terminal summary
    /// and the JSON (`rehearsal`) then give, for every template and dummy
    /// position, the row where the answer enters the top-k, its best row and rank,
    /// and whether it is still in the top-k at the output row.
    #[arg(long, value_name = "auto|TEXT", help_heading = "Answer")]
    pub answer: Option<String>,
    /// A distractor to track next to the answer (repeatable): `--answer-alt " Sydney"`
    #[arg(long, value_name = "TEXT", help_heading = "Answer")]
    pub answer_alt: Vec<String>,
    /// With `--answer auto`, track token N+1 of the greedy answer instead of the first
    ///
    /// Greedy answers often open with a generic token (" The"). SmolLM2 answers
    /// the seed question with " The capital of Australia is Canberra.", where
    /// " Canberra" is token 6: `--answer auto --answer-skip 5` tracks it.
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = "Answer")]
    pub answer_skip: usize,
    #[command(flatten)]
    pub choice: LensChoiceArgs,
}

/// Which lens reads the trace, how its product is computed, and where
/// (`run`, `batch`, `serve`).
#[derive(Debug, Clone, Args)]
pub struct LensChoiceArgs {
    /// `f32` (exact, default) or `bf16`: round the normed residual and the unembedding to bf16
    ///
    /// bf16 products are summed in f32 on AVX512-BF16 where the CPU has it
    /// (else in plain f32 on the rounded values); statistics stay f64. About
    /// twice as fast; the error against f32 is in the README ("Precision").
    #[arg(
        long,
        default_value = "f32",
        value_name = "f32|bf16",
        help_heading = "Lens"
    )]
    pub lens_precision: LensPrecision,
    /// Compute the lens only at these positions: `all`, `tail` or `A..B` (B exclusive)
    ///
    /// `tail` is the chat template's tail and the dummies after the user's
    /// text. Other cells are `null` in the JSON and drawn as absent (grey).
    #[arg(
        long,
        default_value = "all",
        value_name = "all|tail|A..B",
        help_heading = "Lens"
    )]
    pub positions: PositionSpec,
    /// `logit`, `tuned:DIR` (a tuned-lens directory), or `logit,tuned:DIR` side by side
    ///
    /// DIR holds tuned-lens's `config.json` and `params.pt` (or
    /// `params.safetensors`). Row i < L goes through translator i
    /// (`h + h·W_iᵀ + b_i`) before the final norm and unembedding; the output
    /// row is the model's own. With two lenses the JSON holds both grids
    /// (`more_lenses`) and the figure shows them side by side on one scale
    /// (`batch` takes one lens).
    #[arg(
        long,
        default_value = "logit",
        value_name = "LENS",
        help_heading = "Lens"
    )]
    pub lens: String,
}

/// How the figure looks.
#[derive(Debug, Args)]
pub struct FigureArgs {
    /// Colour cells by `entropy`, `kl`, `target-prob`, `target-rank` or `next-token-prob`
    #[arg(long, default_value = "entropy", help_heading = "Figure")]
    pub stat: Stat,
    /// Positions of the magnified window, `START..END` (END exclusive)
    #[arg(long, value_name = "START..END", value_parser = crate::parse::window, help_heading = "Figure")]
    pub window: Option<(usize, usize)>,
    /// The position whose column is listed in the zoom panel
    #[arg(long, value_name = "POS", help_heading = "Figure")]
    pub zoom: Option<usize>,
    /// Figure title
    #[arg(long, help_heading = "Figure")]
    pub title: Option<String>,
    /// Formats to write with `--out`, comma-separated: json,svg,png,html
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "json,svg,png,html",
        help_heading = "Output"
    )]
    pub format: Vec<OutputFormat>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub lens: LensArgs,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Write the JSON result to FILE
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub json: Option<PathBuf>,
    /// Write BASE.{json,svg,png,html} (see `--format`)
    #[arg(long, value_name = "BASE", help_heading = "Output")]
    pub out: Option<PathBuf>,
    /// Print nothing but errors
    #[arg(long, short = 'q', help_heading = "Output")]
    pub quiet: bool,
    /// Print the wall time of each stage, the precision used and the peak
    /// resident memory to stderr
    #[arg(long, help_heading = "Output")]
    pub timings: bool,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A JSON file written by `lensmap run`
    pub input: PathBuf,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Write BASE.{svg,png,html}; defaults to the input path without `.json`
    #[arg(long, value_name = "BASE", help_heading = "Output")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// A `.gguf` file, an HF model directory, or `org/name` in the HF cache
    #[arg(long, short = 'm')]
    pub model: String,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The GGUF file to convert
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Target format; only `safetensors` (an HF directory in f32)
    #[arg(long, default_value = "safetensors", value_parser = ["safetensors"])]
    pub to: String,
    /// The directory to write (created if needed)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl RunArgs {
    /// The lens request these flags describe.
    fn request(&self, lenses: Vec<crate::lens::Lens>) -> crate::Result<LensRequest> {
        let (p, l) = (&self.prompt, &self.lens);
        LensFlags {
            prompt: p.prompt.clone(),
            system: p.template.system.clone(),
            raw: p.raw,
            dummy: p.template.dummy,
            dummy_text: p.template.dummy_text.clone(),
            top_k: l.top_k.top_k,
            target: l.target.clone(),
            generate: l.generate,
            answer: l.answer.clone(),
            answer_alt: l.answer_alt.clone(),
            answer_skip: l.answer_skip,
            lenses,
            lens_precision: l.choice.lens_precision,
            positions: l.choice.positions,
            max_tokens: None,
        }
        .request()
        .map_err(|_| {
            crate::Error::InvalidOption(
                "`--answer-skip` applies to `--answer auto` (with `--generate N`) only".into(),
            )
        })
    }
}

impl FigureArgs {
    fn options(&self, grid: &LensGrid) -> FigureOptions {
        FigureOptions {
            title: self.title.clone(),
            stat: self.stat,
            window: self.window,
            zoom: self.zoom,
            ..FigureOptions::labelled(grid)
        }
    }
}

/// Run the parsed command.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Plot(args) => plot(args),
        Command::Info(args) => info(args),
        Command::Convert(args) => convert(args),
        Command::Batch(args) => Ok(batch::run(args)?),
        Command::Serve(args) => Ok(serve::run(args)?),
        Command::TrainLens(args) => Ok(crate::train::run(args)?),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::run::check_top_k(args.lens.top_k.top_k)?;
    let lenses = crate::lens::Lens::parse_list(&args.lens.choice.lens)?;
    let clock = std::time::Instant::now();
    let session = Session::open_within(
        &args.model.model,
        args.model.hold.precision,
        args.model.hold.max_memory,
        args.prompt.template.chat_template.as_deref(),
        args.model.hold.allow_nonfinite,
    )?;
    let load = clock.elapsed();
    let req = args.request(lenses)?;
    session.check_figure_positions(&req, args.figure.window, args.figure.zoom)?;
    let (grid, times) = session.run_timed(&req)?;
    let clock = std::time::Instant::now();
    if let Some(path) = &args.json {
        write_json(&grid, path)?;
    }
    if let Some(base) = &args.out {
        let opts = args.figure.options(&grid);
        let written = render::write_outputs(&grid, base, &args.figure.format, &opts)?;
        if !args.quiet {
            for p in written {
                eprintln!("wrote {}", p.display());
            }
        }
    }
    if args.timings {
        eprintln!(
            "timings: load {:.3}s, prompt {:.3}s, forward {:.3}s, lens {:.3}s, generate {:.3}s, output {:.3}s",
            load.as_secs_f64(),
            times.prompt.as_secs_f64(),
            times.forward.as_secs_f64(),
            times.lens.as_secs_f64(),
            times.generate.as_secs_f64(),
            clock.elapsed().as_secs_f64()
        );
        if let Some(memory) = crate::model::budget::resident_report() {
            eprintln!(
                "memory: precision {}{}, {memory}",
                session.model.precision.label(),
                if session.model.streaming {
                    " (streaming)"
                } else {
                    ""
                }
            );
        }
    }
    if !args.quiet {
        let mut out = std::io::stdout().lock();
        print_summary(
            &mut out,
            &grid,
            session.template.as_ref().map(|t| t.source.as_str()),
        )?;
    }
    Ok(())
}

fn write_json(grid: &LensGrid, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    }
    let text = serde_json::to_string(grid).map_err(|source| crate::Error::Serialize {
        what: "the grid",
        source,
    })?;
    std::fs::write(path, text).with_context(|| format!("writing `{}`", path.display()))?;
    Ok(())
}

fn plot(args: PlotArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading `{}`", args.input.display()))?;
    let grid = LensGrid::from_json(&text).map_err(|e| {
        crate::Error::InvalidOption(format!(
            "`{}` is not a lensmap JSON file: {e}",
            args.input.display()
        ))
    })?;
    let base = args
        .out
        .clone()
        .unwrap_or_else(|| args.input.with_extension(""));
    let formats: Vec<OutputFormat> = args
        .figure
        .format
        .iter()
        .copied()
        .filter(|f| *f != OutputFormat::Json)
        .collect();
    for p in render::write_outputs(&grid, &base, &formats, &args.figure.options(&grid))? {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let location = crate::model::locate::resolve(&args.model)?;
    let summary = crate::info::describe(&location)?;
    // Through a handle, not println!, so a closed pipe is an error, not a panic.
    writeln!(std::io::stdout().lock(), "{summary}")?;
    Ok(())
}

fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    let done = crate::convert::to_safetensors(&args.model, &args.out)?;
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB)",
        done.out_dir.display(),
        done.tensors,
        done.bytes as f64 / 1e6
    );
    if !done.skipped.is_empty() {
        eprintln!("left out (no HF counterpart): {}", done.skipped.join(", "));
    }
    Ok(())
}

/// The exit code of a failed command, by the kind of its error
/// ([`ErrorKind::exit_code`]): the first lensmap or OS error in the chain
/// decides; an error of neither kind is internal (1).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<crate::Error>() {
            return e.kind().exit_code();
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return ErrorKind::of_io(e).exit_code();
        }
    }
    ErrorKind::Internal.exit_code()
}

/// The hint printed after an error: the library's, worded in this
/// command line's flags where it is about an option.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    use crate::Error as E;
    let e = err.chain().find_map(|c| c.downcast_ref::<crate::Error>())?;
    let flags = match e {
        E::PromptTooLong { .. } => "shorten the prompt or lower `--dummy`",
        E::Template(_) => {
            "pass `--chat-template FILE` to use another template, or `--raw` to skip it"
        }
        E::OutOfMemory { precision, .. } if matches!(*precision, "rest" | "quant") => {
            "raise `--max-memory` or the process limit, or free memory: at rest only the small \
             tensors and one block's weights need to be resident"
        }
        E::OutOfMemory { .. } => {
            "pass `--precision rest` (weights stay in the mapped file) or a larger `--max-memory`"
        }
        E::NonFinite { .. } => {
            "pass `--allow-nonfinite` to mark the cells it spoils invalid instead"
        }
        E::BadOption { option, .. } => option_hint(*option),
        _ => return e.hint(),
    };
    Some(flags.to_string())
}

/// The flag that sets a library option, as a hint for a [`crate::Error::BadOption`].
fn option_hint(option: crate::OptionName) -> &'static str {
    use crate::OptionName as O;
    match option {
        O::Lens => "`--lens` takes `logit`, `tuned:DIR` or both joined by a comma",
        O::LensPrecision => "`--lens-precision` takes `f32` or `bf16`",
        O::Positions => "choose other positions with `--positions`",
        O::MemoryLimit => "`--max-memory` sets the memory limit",
        O::DummyText => "pass a `--dummy-text` that is one token",
        O::Answer => "pass `--generate N`, or a named `--answer TEXT`",
        O::Chunk => "`--chunk` takes a chunk size of at least 1",
        O::AnswerSkip => "lower `--answer-skip` or raise `--generate`",
        O::Stat => "pass `--target TEXT`, or another `--stat`",
        O::ChunkOrder => "list enough chunk indices in the `--chunk-order` file",
        O::SeqLen => "raise `--seq-len`",
        O::Heldout => "pass `--heldout FILE`",
        O::TrainTokens => "lower `--tokens` or `--seq-len`, or use a larger corpus",
        O::StepSizes => "`--positions-per-step` and `--steps-per-chunk` must be at least 1",
    }
}

/// Show a label on the terminal: visible newlines, cut to `width` characters.
fn show(text: &str, width: usize) -> String {
    let s = text.replace('\n', "\\n");
    if s.chars().count() > width {
        let cut: String = s.chars().take(width - 1).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// The terminal summary: model, tokens, answer, and for every template and
/// dummy position after the user's text, the top-1 token of every 5th row.
pub(crate) fn print_summary(
    out: &mut impl Write,
    grid: &LensGrid,
    template: Option<&str>,
) -> std::io::Result<()> {
    let m = &grid.model;
    writeln!(
        out,
        "model     {} ({}, {} layers, d={}, vocab {}, {})",
        m.file, m.arch, m.n_layers, m.d_model, m.vocab_size, m.precision
    )?;
    if let Some(note) = m.bf16_note() {
        writeln!(out, "lens      {note}, not the exact f32 path")?;
    }
    writeln!(out, "template  {}", template.unwrap_or("none"))?;
    let toks: Vec<String> = grid
        .tokens
        .iter()
        .map(|t| match t.kind {
            TokenKind::Text => show(&t.text, 16),
            TokenKind::Template => format!("[{}]", show(&t.text, 16)),
            TokenKind::Dummy => format!("{{{}}}", show(&t.text, 16)),
        })
        .collect();
    writeln!(
        out,
        "tokens    {} ([template] {{dummy}})",
        grid.tokens.len()
    )?;
    writeln!(out, "          {}", toks.join(" "))?;
    if let Some(a) = &grid.answer {
        writeln!(out, "answer    {:?}", a.text)?;
    }
    let invalid = grid.n_invalid();
    if invalid > 0 {
        writeln!(
            out,
            "invalid   {invalid} of {} cells hold NaN or infinity (--allow-nonfinite): \
             shown as `non-finite`, hatched in figures, left out of the rehearsal summary",
            grid.n_rows * grid.n_positions()
        )?;
    }
    // Positions after the last text token: the chat template's tail and dummies.
    let start = grid.tail_start();
    if start >= grid.tokens.len() {
        return Ok(());
    }
    let rows: Vec<usize> = (0..grid.n_rows)
        .step_by(5)
        .chain(std::iter::once(grid.n_rows - 1))
        .collect();
    let mut rows = rows;
    rows.dedup();
    writeln!(out)?;
    write!(out, "{:>4} {:<12}", "pos", "token")?;
    for &r in &rows {
        write!(out, " {:>16}", grid.row_label(r))?;
    }
    writeln!(out)?;
    for pos in start..grid.tokens.len() {
        let t = &grid.tokens[pos];
        write!(out, "{:>4} {:<12}", pos, show(&t.text, 12))?;
        for &r in &rows {
            let cell = match grid.top1(r, pos) {
                Some(top) => format!("{} {:.1}", show(&top.text, 10), grid.entropy[r][pos]),
                None if grid.is_invalid(r, pos) => "non-finite".to_string(),
                None => "-".to_string(), // outside `--positions`
            };
            write!(out, " {:>16}", cell)?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "\n(each cell: top-1 token and entropy in nats, by lens row)"
    )?;
    if let Some(r) = &grid.rehearsal {
        writeln!(out)?;
        write!(out, "{}", crate::rehearsal::format_table(r))?;
    }
    Ok(())
}

/// `--top-k`: a negative number is a value out of range, not an unknown
/// flag (issue #13 item 7), so it gets the same message as `0`.
fn top_k_value(s: &str) -> Result<usize, String> {
    let k = s
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("`{s}` is not a number"))?;
    let max = crate::run::MAX_TOP_K;
    match usize::try_from(k) {
        Ok(k) if (1..=max).contains(&k) => Ok(k),
        _ => Err(format!("`--top-k` must be between 1 and {max}, got `{k}`")),
    }
}
