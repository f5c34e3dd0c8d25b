//! `lensmap._lensmap`: the Python bindings of lensmap (PyO3, built by maturin).
//!
//! A thin layer over the engine crate: [`Model`] holds a
//! [`lensmap::run::Session`], [`LensResult`] a [`lensmap::LensGrid`] and the
//! figure options. Options reach the engine through the same types the CLI
//! fills in ([`LensFlags`]; `LensChoiceArgs` and `BatchArgs` parsed by clap),
//! so defaults and checks are shared, not copied. The GIL is released during
//! the forward pass and the lens; Ctrl-C is checked after every layer through
//! the engine's one stop seam, [`lensmap::model::cancel`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Parser;
use numpy::ndarray::Array2;
use numpy::{PyArray2, PyArray3};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use lensmap::batch::input::PromptItem;
use lensmap::batch::record::PromptRecord;
use lensmap::cli::BatchArgs;
use lensmap::cli::LensChoiceArgs;
use lensmap::grid::{LensGrid, ModelInfo, TokenInfo, TokenKind, TopToken, TrackedRole};
use lensmap::lens::Lens;
use lensmap::model::{cancel, Precision};
use lensmap::render::{self, FigureOptions, OutputFormat, Stat};
use lensmap::run::{LensFlags, Session};

create_exception!(
    lensmap,
    LensmapError,
    PyException,
    "An error from lensmap: the one-line message `lensmap` prints, with the \
     hint (or None) in `.hint`."
);

/// A lensmap error as a Python exception: the CLI's one-line message
/// (`error: ...` without the prefix) and its hint in `.hint`.
fn py_err(e: lensmap::Error) -> PyErr {
    let hint = e.hint();
    let message = e.message();
    Python::attach(|py| {
        let err = LensmapError::new_err(message);
        let _ = err.value(py).setattr("hint", hint);
        err
    })
}

/// An error worded in the Python API's own terms.
fn option_err(message: impl Into<String>) -> PyErr {
    py_err(lensmap::Error::InvalidOption(message.into()))
}

/// A model loaded once, answering lens requests.
///
/// `Model(path, precision="auto", chat_template=None)`: `path` is anything
/// `lensmap run --model` takes (a `.gguf` file, an HF directory, `org/name`
/// in the HF cache); `precision` is `auto`, `f32`, `rest`, `f64` or `quant`;
/// `chat_template` a Jinja file to use instead of the model's own.
#[pyclass(module = "lensmap", frozen)]
pub struct Model {
    session: Session,
    spec: String,
    precision: String,
    chat_template: Option<PathBuf>,
    /// Lenses already read, by their `lens=` text: a tuned lens is read from
    /// its directory once per `Model`, as the CLI reads it once per process
    /// (re-reading 30 translators cost ~15 % of a seed-case call).
    lenses: std::sync::Mutex<std::collections::HashMap<String, Vec<Lens>>>,
}

/// Figure options as the Python API takes them.
fn figure_options(
    grid: &LensGrid,
    stat: Option<&str>,
    window: Option<(usize, usize)>,
    zoom: Option<usize>,
    title: Option<String>,
) -> PyResult<FigureOptions> {
    if let Some((a, b)) = window {
        if b <= a {
            return Err(option_err(format!(
                "`window` must be (START, END) with END greater than START, got `({a}, {b})`"
            )));
        }
    }
    Ok(FigureOptions {
        title,
        stat: match stat {
            Some(s) => s.parse::<Stat>().map_err(py_err)?,
            None => Stat::Entropy,
        },
        window,
        zoom,
        ..FigureOptions::labelled(grid)
    })
}

/// `BatchArgs` from the Python keyword arguments, parsed by the CLI's own
/// clap definition so defaults and checks are those of `lensmap batch`.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct BatchCommand {
    #[command(flatten)]
    args: BatchArgs,
}

/// `--lens`, `--lens-precision` and `--positions` from `Model.lens`'s
/// keywords, parsed by the definition `run` and `batch` flatten.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct LensChoiceCommand {
    #[command(flatten)]
    choice: LensChoiceArgs,
}

/// Parse CLI flags with the CLI's clap definition; its first error line
/// becomes a [`LensmapError`].
fn parse_flags<T: Parser>(argv: Vec<String>) -> PyResult<T> {
    T::try_parse_from(argv).map_err(|e| {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or("");
        option_err(first.trim_start_matches("error: "))
    })
}

/// `--flag=value` for each option given.
fn given_flags<'a>(flags: impl IntoIterator<Item = (&'a str, Option<String>)>) -> Vec<String> {
    flags
        .into_iter()
        .filter_map(|(flag, v)| v.map(|v| format!("--{flag}={v}")))
        .collect()
}

/// Run `work` without the GIL, with a stop check between blocks that asks
/// Python for pending signals: Ctrl-C raises `KeyboardInterrupt` (the
/// handler's own exception) instead of a lensmap error.
fn interruptible<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> lensmap::Result<T> + Send,
) -> PyResult<T> {
    let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
    let slot = Arc::clone(&raised);
    let result = py.detach(move || {
        let check = move || {
            Python::attach(|py| py.check_signals()).map_err(|e| {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                lensmap::Error::Interrupted
            })
        };
        cancel::with_check(Box::new(check), work)
    });
    result.map_err(|e| {
        let pending = raised.lock().unwrap_or_else(|p| p.into_inner()).take();
        pending.unwrap_or_else(|| py_err(e))
    })
}

/// Keyword arguments gathered by `**kwargs`, taken out by name. What is
/// left at the end is refused as Python refuses an unexpected keyword, so
/// several methods share one keyword list (and one stub `TypedDict`).
struct Keywords<'py> {
    func: &'static str,
    rest: Option<Bound<'py, PyDict>>,
}

impl<'py> Keywords<'py> {
    /// `kwargs` is the dict PyO3 builds for `**kwargs` on each call (never
    /// the caller's own), so keywords are taken out of it in place.
    fn new(func: &'static str, kwargs: Option<&Bound<'py, PyDict>>) -> Self {
        Self {
            func,
            rest: kwargs.cloned(),
        }
    }

    /// The keyword `name`, or `None` when it is absent or `None`.
    fn take<T>(&self, name: &str) -> PyResult<Option<T>>
    where
        T: for<'a> FromPyObject<'a, 'py>,
    {
        let Some(d) = &self.rest else { return Ok(None) };
        let Some(v) = d.get_item(name)? else {
            return Ok(None);
        };
        d.del_item(name)?;
        if v.is_none() {
            return Ok(None);
        }
        v.extract::<T>().map(Some).map_err(|e| {
            let e: PyErr = e.into();
            PyTypeError::new_err(format!("{}(): `{name}`: {e}", self.func))
        })
    }

    /// Refuse the keywords nobody took.
    fn finish(self) -> PyResult<()> {
        match self.rest.as_ref().and_then(|d| d.keys().iter().next()) {
            Some(k) => Err(PyTypeError::new_err(format!(
                "{}() got an unexpected keyword argument {}",
                self.func,
                k.repr()?
            ))),
            None => Ok(()),
        }
    }
}

/// Keyword options of `Model.batch` and `Model.batch_cells` (the stub's
/// `BatchOptions`), as CLI flags.
struct BatchFlags {
    system: Option<String>,
    dummy: Option<usize>,
    dummy_text: Option<String>,
    top_k: Option<usize>,
    generate: Option<usize>,
    answer_skip: Option<usize>,
}

impl BatchFlags {
    fn take(kw: Keywords<'_>) -> PyResult<Self> {
        let flags = Self {
            system: kw.take("system")?,
            dummy: kw.take("dummy")?,
            dummy_text: kw.take("dummy_text")?,
            top_k: kw.take("top_k")?,
            generate: kw.take("generate")?,
            answer_skip: kw.take("answer_skip")?,
        };
        kw.finish()?;
        Ok(flags)
    }
}

/// Keyword options of `Result.svg`, `.html` and `.save` (the stub's
/// `ViewOptions`).
struct ViewKeywords {
    stat: Option<String>,
    window: Option<(usize, usize)>,
    zoom: Option<usize>,
    title: Option<String>,
}

impl ViewKeywords {
    fn take(kw: Keywords<'_>) -> PyResult<Self> {
        let view = Self {
            stat: kw.take("stat")?,
            window: kw.take("window")?,
            zoom: kw.take("zoom")?,
            title: kw.take("title")?,
        };
        kw.finish()?;
        Ok(view)
    }
}

impl Model {
    fn batch_args(
        &self,
        prompts: &Path,
        out: &Path,
        flags: &BatchFlags,
        extra: &[String],
    ) -> PyResult<BatchArgs> {
        let mut argv: Vec<String> = vec![
            "--model".into(),
            self.spec.clone(),
            "--precision".into(),
            self.precision.clone(),
            "--prompts".into(),
            prompts.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        if let Some(t) = &self.chat_template {
            argv.extend(["--chat-template".into(), t.display().to_string()]);
        }
        argv.extend(given_flags([
            ("system", flags.system.clone()),
            ("dummy", flags.dummy.map(|v| v.to_string())),
            ("dummy-text", flags.dummy_text.clone()),
            ("top-k", flags.top_k.map(|v| v.to_string())),
            ("generate", flags.generate.map(|v| v.to_string())),
            ("answer-skip", flags.answer_skip.map(|v| v.to_string())),
        ]));
        argv.extend(extra.iter().cloned());
        parse_flags::<BatchCommand>(argv).map(|c| c.args)
    }
}

/// The JSONL file for a batch: a path as given, or a list of dicts written
/// to `dir/prompts.jsonl`.
fn prompts_file(prompts: &Bound<'_, PyAny>, dir: &Path) -> PyResult<PathBuf> {
    if let Ok(p) = prompts.extract::<PathBuf>() {
        return Ok(p);
    }
    let json = prompts.py().import("json")?;
    let mut text = String::new();
    for item in prompts.try_iter()? {
        let line: String = json.call_method1("dumps", (item?,))?.extract()?;
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::create_dir_all(dir).map_err(|e| py_err(lensmap::Error::io(dir, e)))?;
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, text).map_err(|e| py_err(lensmap::Error::io(&path, e)))?;
    Ok(path)
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, precision = "auto", chat_template = None))]
    fn new(
        py: Python<'_>,
        path: String,
        precision: &str,
        chat_template: Option<PathBuf>,
    ) -> PyResult<Self> {
        let p: Precision = precision.parse().map_err(py_err)?;
        let session = py
            .detach(|| Session::open(&path, p, chat_template.as_deref()))
            .map_err(py_err)?;
        Ok(Model {
            session,
            spec: path,
            precision: precision.to_string(),
            chat_template,
            lenses: Default::default(),
        })
    }

    /// Run the logit lens on one prompt; the options are those of `lensmap run`.
    ///
    /// prompt: the user message (the whole text with `raw=True`).
    /// system: a system message. raw: skip the chat template.
    /// dummy: filler tokens appended after the generation prompt;
    /// dummy_text: the filler (one token, default ".").
    /// top_k: tokens listed per cell (default 5). target: a text whose first
    /// token is tracked in every cell. generate: greedy tokens to generate.
    /// answer: "auto" (the greedy answer; the default when generating) or a
    /// text (" Canberra") tracked in every cell, with its rehearsal summary.
    /// answer_alt: distractors tracked next to it. answer_skip: with an auto
    /// answer, track greedy token N+1.
    /// lens: "logit" (default), "tuned:DIR" (a tuned-lens directory) or
    /// "logit,tuned:DIR" (both; the second grid is in the JSON's
    /// `more_lenses` and the figure). lens_precision: "f32" (exact, default)
    /// or "bf16". positions: "all" (default), "tail" (the template's tail and
    /// the dummies) or "A..B"; cells outside are NaN.
    /// stat, window, zoom, title: the figure (`stat` one of entropy, kl,
    /// target-prob, target-rank, next-token-prob; `window` (START, END)
    /// positions of the magnified panel; `zoom` the position listed in the
    /// zoom panel).
    ///
    /// Releases the GIL while it runs; Ctrl-C stops it between layers.
    #[pyo3(signature = (
        prompt, *, system = None, raw = false, dummy = 0, dummy_text = None,
        top_k = None, target = None, generate = 0, answer = None,
        answer_alt = Vec::new(), answer_skip = 0,
        lens = None, lens_precision = None, positions = None,
        stat = None, window = None, zoom = None, title = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn lens(
        &self,
        py: Python<'_>,
        prompt: String,
        system: Option<String>,
        raw: bool,
        dummy: usize,
        dummy_text: Option<String>,
        top_k: Option<usize>,
        target: Option<String>,
        generate: usize,
        answer: Option<String>,
        answer_alt: Vec<String>,
        answer_skip: usize,
        lens: Option<String>,
        lens_precision: Option<String>,
        positions: Option<String>,
        stat: Option<String>,
        window: Option<(usize, usize)>,
        zoom: Option<usize>,
        title: Option<String>,
    ) -> PyResult<LensResult> {
        let choice = parse_flags::<LensChoiceCommand>(given_flags([
            ("lens", lens),
            ("lens-precision", lens_precision),
            ("positions", positions),
        ]))?
        .choice;
        let cached = self
            .lenses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&choice.lens)
            .cloned();
        let lenses = match cached {
            Some(lenses) => lenses,
            None => {
                let lenses = py
                    .detach(|| Lens::parse_list(&choice.lens))
                    .map_err(py_err)?;
                self.lenses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(choice.lens.clone(), lenses.clone());
                lenses
            }
        };
        let defaults = LensFlags::default();
        let flags = LensFlags {
            prompt,
            system,
            raw,
            dummy,
            dummy_text: dummy_text.unwrap_or(defaults.dummy_text),
            top_k: top_k.unwrap_or(defaults.top_k),
            target,
            generate,
            answer,
            answer_alt,
            answer_skip,
            lenses,
            lens_precision: choice.lens_precision,
            positions: choice.positions,
            max_tokens: None,
        };
        let req = flags.request().map_err(|_| {
            option_err("`answer_skip` applies to `answer=\"auto\"` (with `generate=N`) only")
        })?;
        let grid = interruptible(py, || self.session.run(&req))?;
        let options = figure_options(&grid, stat.as_deref(), window, zoom, title)?;
        Ok(LensResult { grid, options })
    }

    /// Run `lensmap batch` with this model's path, precision and template.
    ///
    /// prompts: a JSONL path, or a list of dicts `{id, prompt, system?,
    /// answer?, alts?, category?}` (written to `out/input/prompts.jsonl`).
    /// out: the results directory. shard: `"I/N"`. The other options are
    /// those of `lensmap batch` with its defaults (`generate` 12). Returns
    /// `summary.json` as a dict. The batch opens the model itself.
    #[pyo3(signature = (prompts, out, *, shard = None, csv = false, **options))]
    fn batch<'py>(
        &self,
        py: Python<'py>,
        prompts: &Bound<'py, PyAny>,
        out: PathBuf,
        shard: Option<String>,
        csv: bool,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let flags = BatchFlags::take(Keywords::new("batch", options))?;
        let input = prompts_file(prompts, &out.join("input"))?;
        let mut extra = vec!["--quiet".to_string()];
        if let Some(s) = shard.as_ref() {
            extra.push(format!("--shard={s}"));
        }
        if csv {
            extra.push("--csv".into());
        }
        let args = self.batch_args(&input, &out, &flags, &extra)?;
        let summary_dir = args.job().map_err(py_err)?.tables_dir();
        py.detach(|| lensmap::cli::batch::run(args))
            .map_err(py_err)?;
        let path = summary_dir.join("summary.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| py_err(lensmap::Error::io(&path, e)))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// The rows `lensmap batch` writes to `cells.parquet` for these prompts,
    /// computed in this process with this model, as a `pyarrow.Table`.
    ///
    /// items: dicts `{id, prompt, system?, answer?, alts?}` as in a batch's
    /// JSONL. The options are those of `Model.batch`. Used by
    /// `examples/ray_batch.py`: one Model per Ray actor.
    #[pyo3(signature = (items, **options))]
    fn batch_cells<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let flags = BatchFlags::take(Keywords::new("batch_cells", options))?;
        // The paths are not used: only the per-prompt settings are.
        let args = self.batch_args(Path::new("-"), Path::new("-"), &flags, &[])?;
        let job = args.job().map_err(py_err)?;
        let json = py.import("json")?;
        let mut records = Vec::new();
        for item in items.try_iter()? {
            let text: String = json.call_method1("dumps", (item?,))?.extract()?;
            let item: PromptItem = serde_json::from_str(&text)
                .map_err(|e| option_err(format!("bad prompt item {text}: {e}")))?;
            let req = lensmap::batch::request(&job, &item);
            let grid = interruptible(py, || self.session.run(&req))?;
            records.push(PromptRecord::from_grid(String::new(), &item, grid));
        }
        parquet_table(py, &records)
    }

    /// What `lensmap info` says about the model's size: `{file, arch,
    /// n_layers, d_model, vocab_size, precision}`.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cfg = &self.session.model.cfg;
        let d = PyDict::new(py);
        d.set_item("file", &self.session.label)?;
        d.set_item("arch", cfg.family.name())?;
        d.set_item("n_layers", cfg.sizes.n_layers)?;
        d.set_item("d_model", cfg.sizes.d_model)?;
        d.set_item("vocab_size", cfg.sizes.vocab_size)?;
        d.set_item("precision", self.session.model.precision.label())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "lensmap.Model({:?}, precision={:?})",
            self.spec, self.precision
        )
    }
}

/// A small serialisable value (metadata, not arrays) as Python dicts and lists.
fn to_python<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| option_err(format!("to JSON: {e}")))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// Parquet bytes read back by pyarrow.
fn read_parquet<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let reader = py
        .import("pyarrow")?
        .call_method1("BufferReader", (PyBytes::new(py, bytes),))?;
    py.import("pyarrow.parquet")?
        .call_method1("read_table", (reader,))
}

/// The cells table of these records as a `pyarrow.Table`.
fn parquet_table<'py>(py: Python<'py>, recs: &[PromptRecord]) -> PyResult<Bound<'py, PyAny>> {
    let bytes = lensmap::batch::tables::cells_parquet(recs).map_err(py_err)?;
    read_parquet(py, &bytes)
}

/// One lens result: numpy arrays of every statistic, tables, and the figure.
///
/// In Jupyter it shows as the interactive figure (the page of
/// `--format html`, self-contained).
#[pyclass(module = "lensmap", frozen, name = "Result")]
pub struct LensResult {
    grid: LensGrid,
    options: FigureOptions,
}

fn f32_grid<'py>(py: Python<'py>, rows: &[Vec<f64>]) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let n = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    let arr = Array2::from_shape_vec((rows.len(), n), flat)
        .map_err(|e| option_err(format!("ragged grid: {e}")))?;
    Ok(PyArray2::from_owned_array(py, arr))
}

impl LensResult {
    fn tracked(&self, role: TrackedRole) -> Option<&lensmap::grid::TrackedToken> {
        self.grid.tracked.iter().find(|t| t.role == role)
    }

    fn topk_array<T: numpy::Element + Clone>(
        &self,
        py: Python<'_>,
        f: impl Fn(&TopToken) -> T,
        fill: T,
    ) -> PyResult<Py<PyArray3<T>>> {
        let g = &self.grid;
        let k = g.topk.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let (r, n) = (g.n_rows, g.n_positions());
        let mut flat = vec![fill; r * n * k];
        for (ri, row) in g.topk.iter().enumerate() {
            for (pi, cell) in row.iter().enumerate() {
                for (ki, t) in cell.iter().enumerate() {
                    flat[(ri * n + pi) * k + ki] = f(t);
                }
            }
        }
        let arr = numpy::ndarray::Array3::from_shape_vec((r, n, k), flat)
            .map_err(|e| option_err(format!("ragged top-k: {e}")))?;
        Ok(numpy::PyArray3::from_owned_array(py, arr).unbind())
    }

    /// The result's figure options with the view keywords applied.
    fn with_options(&self, kw: Keywords<'_>) -> PyResult<FigureOptions> {
        let ViewKeywords {
            stat,
            window,
            zoom,
            title,
        } = ViewKeywords::take(kw)?;
        let mut o = self.options.clone();
        if let Some(s) = &stat {
            o.stat = s.parse::<Stat>().map_err(py_err)?;
        }
        if window.is_some() {
            o.window = figure_options(&self.grid, None, window, None, None)?.window;
        }
        o.zoom = zoom.or(o.zoom);
        o.title = title.or(o.title);
        Ok(o)
    }
}

#[pymethods]
impl LensResult {
    /// Entropy of every lens cell in nats, float32 `[rows, positions]`.
    #[getter]
    fn entropy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        f32_grid(py, &self.grid.entropy)
    }

    /// KL(final ‖ row) in nats, float32 `[rows, positions]`.
    #[getter]
    fn kl_to_final<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        f32_grid(py, &self.grid.kl_to_final)
    }

    /// Probability of the answer token in every cell, float32 `[rows,
    /// positions]`; None without an answer.
    #[getter]
    fn answer_prob<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        self.tracked(TrackedRole::Answer)
            .map(|t| {
                let rows: Vec<Vec<f64>> = t
                    .cells
                    .iter()
                    .map(|r| r.iter().map(|c| c.prob).collect())
                    .collect();
                f32_grid(py, &rows)
            })
            .transpose()
    }

    /// Rank of the answer token in every cell (1 = top), uint32 `[rows,
    /// positions]`; None without an answer.
    #[getter]
    fn answer_rank<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyArray2<u32>>>> {
        self.tracked(TrackedRole::Answer)
            .map(|t| {
                let n = self.grid.n_positions();
                let flat: Vec<u32> = t.cells.iter().flatten().map(|c| c.rank).collect();
                let arr = Array2::from_shape_vec((t.cells.len(), n), flat)
                    .map_err(|e| option_err(format!("ragged grid: {e}")))?;
                Ok(PyArray2::from_owned_array(py, arr))
            })
            .transpose()
    }

    /// Top-k token ids, uint32 `[rows, positions, k]`.
    #[getter]
    fn top_ids(&self, py: Python<'_>) -> PyResult<Py<PyArray3<u32>>> {
        self.topk_array(py, |t| t.id, 0)
    }

    /// Top-k probabilities, float32 `[rows, positions, k]`.
    #[getter]
    fn top_probs(&self, py: Python<'_>) -> PyResult<Py<PyArray3<f32>>> {
        self.topk_array(py, |t| t.prob as f32, 0.0)
    }

    /// Top-k token texts, a numpy object array `[rows, positions, k]`.
    #[getter]
    fn top_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let nested: Vec<Vec<Vec<&str>>> = self
            .grid
            .topk
            .iter()
            .map(|row| {
                row.iter()
                    .map(|c| c.iter().map(|t| t.text.as_str()).collect())
                    .collect()
            })
            .collect();
        let np = py.import("numpy")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("dtype", "object")?;
        np.call_method("array", (nested,), Some(&kwargs))
    }

    /// The input positions: `[(id, text, kind)]`, kind `text`, `template` or `dummy`.
    #[getter]
    fn tokens(&self) -> Vec<(u32, String, &'static str)> {
        self.grid
            .tokens
            .iter()
            .map(|t| (t.id, t.text.clone(), t.kind.as_str()))
            .collect()
    }

    /// The greedy continuation's text (with `generate=N`), else None.
    #[getter]
    fn answer(&self) -> Option<String> {
        self.grid.answer.as_ref().map(|a| a.text.clone())
    }

    /// The greedy continuation's token ids, else None.
    #[getter]
    fn answer_ids(&self) -> Option<Vec<u32>> {
        self.grid.answer.as_ref().map(|a| a.ids.clone())
    }

    /// The rehearsal summary (as in the JSON's `rehearsal`), a dict, or None.
    #[getter]
    fn rehearsal<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.grid.rehearsal)
    }

    /// Lens rows: `n_layers + 1` (row 0 the embeddings, the last the model's output).
    #[getter]
    fn n_rows(&self) -> usize {
        self.grid.n_rows
    }

    /// The model behind the result: `{file, arch, n_layers, d_model, vocab_size, precision}`.
    #[getter]
    fn model<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.grid.model)
    }

    /// The prompt exactly as tokenised (after the chat template, before dummies).
    #[getter]
    fn prompt_text(&self) -> String {
        self.grid.prompt_text.clone()
    }

    /// The result as `lensmap run --json` writes it.
    fn to_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.grid).map_err(|e| option_err(format!("grid to JSON: {e}")))
    }

    /// The cells table of `lensmap batch` (`cells.parquet`'s columns) as a
    /// `pyarrow.Table`; `id` fills the `id` column.
    #[pyo3(signature = (id = "prompt"))]
    fn to_arrow<'py>(&self, py: Python<'py>, id: &str) -> PyResult<Bound<'py, PyAny>> {
        let item = PromptItem {
            id: id.to_string(),
            prompt: self.grid.text_prompt(),
            system: None,
            answer: None,
            alts: Vec::new(),
            category: None,
        };
        let rec = PromptRecord::from_grid(String::new(), &item, self.grid.clone());
        parquet_table(py, &[rec])
    }

    /// [`to_arrow`] as a pandas DataFrame: one row per cell.
    #[pyo3(signature = (id = "prompt"))]
    fn to_pandas<'py>(&self, py: Python<'py>, id: &str) -> PyResult<Bound<'py, PyAny>> {
        self.to_arrow(py, id)?.call_method0("to_pandas")
    }

    /// [`to_arrow`] as a polars DataFrame (needs `polars`).
    #[pyo3(signature = (id = "prompt"))]
    fn to_polars<'py>(&self, py: Python<'py>, id: &str) -> PyResult<Bound<'py, PyAny>> {
        let table = self.to_arrow(py, id)?;
        py.import("polars")?.call_method1("from_arrow", (table,))
    }

    /// The static figure as SVG text (the CLI's `--format svg`).
    #[pyo3(signature = (**view))]
    fn svg(&self, py: Python<'_>, view: Option<&Bound<'_, PyDict>>) -> PyResult<String> {
        let o = self.with_options(Keywords::new("svg", view))?;
        py.detach(|| render::render_svg(&self.grid, &o))
            .map_err(py_err)
    }

    /// The interactive page (the CLI's `--format html`): one self-contained file.
    #[pyo3(signature = (**view))]
    fn html(&self, view: Option<&Bound<'_, PyDict>>) -> PyResult<String> {
        let o = self.with_options(Keywords::new("html", view))?;
        render::render_html(&self.grid, &o).map_err(py_err)
    }

    /// Write `base.json`, `.svg`, `.png`, `.html` (those in `formats`, default
    /// all four, as `lensmap run --out`); returns the paths written.
    #[pyo3(signature = (base, formats = None, **view))]
    fn save(
        &self,
        py: Python<'_>,
        base: PathBuf,
        formats: Option<Vec<String>>,
        view: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<PathBuf>> {
        let o = self.with_options(Keywords::new("save", view))?;
        let formats = formats
            .unwrap_or_else(|| ["json", "svg", "png", "html"].map(String::from).to_vec())
            .iter()
            .map(|f| f.parse::<OutputFormat>())
            .collect::<lensmap::Result<Vec<_>>>()
            .map_err(py_err)?;
        py.detach(|| render::write_outputs(&self.grid, &base, &formats, &o))
            .map_err(py_err)
    }

    /// Jupyter: the interactive figure in an `<iframe srcdoc>`, which needs
    /// no server or network and is stored with the notebook.
    fn _repr_html_(&self) -> PyResult<String> {
        let page = render::render_html(&self.grid, &self.options).map_err(py_err)?;
        let height = render::layout(&self.grid, &self.options)
            .map(|l| l.height)
            .unwrap_or(600.0)
            + 140.0;
        let escaped = page
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        Ok(format!(
            "<iframe class=\"lensmap-figure\" srcdoc=\"{escaped}\" \
             style=\"width:100%;height:{height:.0}px;border:0\" \
             sandbox=\"allow-scripts\"></iframe>"
        ))
    }

    fn __repr__(&self) -> String {
        format!(
            "<lensmap.Result {} rows × {} positions, {}>",
            self.grid.n_rows,
            self.grid.n_positions(),
            self.grid.model.file
        )
    }
}

/// Read a result back from the JSON `lensmap run --json` (or `Result.save`) wrote.
#[pyfunction]
fn load(path: PathBuf) -> PyResult<LensResult> {
    let text = std::fs::read_to_string(&path).map_err(|e| py_err(lensmap::Error::io(&path, e)))?;
    let grid = LensGrid::from_json(&text).map_err(|e| {
        option_err(format!(
            "`{}` is not a lensmap JSON file: {e}",
            path.display()
        ))
    })?;
    let options = FigureOptions::labelled(&grid);
    Ok(LensResult { grid, options })
}

/// Build a result from arrays computed elsewhere (called by `lensmap.figure`,
/// which converts numpy arrays to lists first).
#[pyfunction]
#[pyo3(signature = (entropy, top_tokens, tokens, kinds, top_probs, top_ids, kl_to_final, model, vocab_size, stat, window, zoom, title))]
#[allow(clippy::too_many_arguments)]
fn _figure(
    entropy: Vec<Vec<f64>>,
    top_tokens: Vec<Vec<Vec<String>>>,
    tokens: Vec<String>,
    kinds: Vec<String>,
    top_probs: Vec<Vec<Vec<f64>>>,
    top_ids: Vec<Vec<Vec<u32>>>,
    kl_to_final: Vec<Vec<f64>>,
    model: String,
    vocab_size: usize,
    stat: Option<String>,
    window: Option<(usize, usize)>,
    zoom: Option<usize>,
    title: Option<String>,
) -> PyResult<LensResult> {
    let n_rows = entropy.len();
    let kind = |k: &str| match k {
        "text" => Ok(TokenKind::Text),
        "template" => Ok(TokenKind::Template),
        "dummy" => Ok(TokenKind::Dummy),
        _ => Err(option_err(format!(
            "unknown token kind `{k}` (expected text, template or dummy)"
        ))),
    };
    let tokens = tokens
        .into_iter()
        .zip(&kinds)
        .enumerate()
        .map(|(i, (text, k))| {
            Ok(TokenInfo {
                id: i as u32,
                text,
                kind: kind(k)?,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let topk = top_tokens
        .into_iter()
        .zip(&top_probs)
        .zip(&top_ids)
        .map(|((row, probs), ids)| {
            row.into_iter()
                .zip(probs)
                .zip(ids)
                .map(|((cell, p), i)| {
                    cell.into_iter()
                        .zip(p)
                        .zip(i)
                        .map(|((text, &prob), &id)| TopToken { id, text, prob })
                        .collect()
                })
                .collect()
        })
        .collect();
    let n = tokens.len();
    let grid = LensGrid {
        format_version: lensmap::grid::FORMAT_VERSION,
        lensmap_version: env!("CARGO_PKG_VERSION").to_string(),
        model: ModelInfo {
            file: model,
            arch: String::new(),
            n_layers: n_rows.saturating_sub(1),
            d_model: 0,
            vocab_size,
            precision: String::new(),
            lens_precision: "f32".into(),
            lens_kernel: None,
        },
        template_source: "none".into(),
        prompt_text: String::new(),
        tokens,
        n_rows,
        entropy,
        topk,
        kl_to_final,
        next_token: vec![vec![None; n]; n_rows],
        invalid: Vec::new(),
        tracked: Vec::new(),
        answer: None,
        rehearsal: None,
        lens: Default::default(),
        more_lenses: Vec::new(),
    };
    // The same size checks the renderers make, before anything is drawn.
    render::render_svg(&grid, &FigureOptions::default()).map_err(py_err)?;
    let options = figure_options(&grid, stat.as_deref(), window, zoom, title)?;
    Ok(LensResult { grid, options })
}

/// The lensmap engine, for Python.
#[pymodule]
fn _lensmap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<LensResult>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(_figure, m)?)?;
    m.add("LensmapError", m.py().get_type::<LensmapError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
