//! Figures of a [`LensGrid`]: a static SVG (and a PNG drawn from it with
//! resvg and the bundled font only), and a self-contained interactive HTML page.
//!
//! The static figure has three regions (see `docs` and issue 3):
//!
//! * **A overview**: the whole sequence as a compact heatmap; a purple
//!   rectangle marks the window shown in B. Omitted when B already shows every
//!   position (short prompts).
//! * **B magnified window**: cells with their top-1 token, x labels with the
//!   template and dummy tokens boxed in blue.
//! * **C zoom of one column**: green border, joined to its column in B; top-1
//!   token and probability of every row, and the most frequent top-1 tokens.
//!
//! [`layout`] computes every rectangle once; [`render_svg`] draws from it and
//! tests use it to find cell centres in the PNG.

pub mod colormap;
mod font;
mod html;
pub mod labels;
mod layout;
mod png;
pub(crate) mod svg;
pub mod view;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::grid::{LensGrid, TokenKind};
use crate::{Error, Result};

pub use colormap::{Rgb, StatScale};
pub use font::{FONT_DATA, FONT_FAMILY};
pub use html::{render_html, view_spec_json, LENSVIEW_CSS, LENSVIEW_JS};
pub use layout::{layout, FigureLayout, GridGeom, Rect};
pub use png::{render_png, PNG_SCALE};
pub use svg::render_svg;
pub use view::{view_spec, ViewSpec};

/// The statistic that colours the cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Stat {
    /// Entropy of the lens distribution (nats), fixed 0–10 scale.
    #[default]
    Entropy,
    /// KL(final ‖ row) in nats, fixed 0–10 scale.
    Kl,
    /// Probability of the first tracked token with role `target`.
    TargetProb,
    /// Rank of the first tracked token with role `target` (log scale).
    TargetRank,
    /// Probability of the actual next input token.
    NextTokenProb,
}

impl Stat {
    /// Every statistic, in `--stat` order.
    pub const ALL: [Stat; 5] = [
        Stat::Entropy,
        Stat::Kl,
        Stat::TargetProb,
        Stat::TargetRank,
        Stat::NextTokenProb,
    ];

    /// The `--stat` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Stat::Entropy => "entropy",
            Stat::Kl => "kl",
            Stat::TargetProb => "target-prob",
            Stat::TargetRank => "target-rank",
            Stat::NextTokenProb => "next-token-prob",
        }
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Stat> {
        Stat::ALL
            .into_iter()
            .find(|st| st.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::InvalidOption(format!(
                    "unknown statistic `{s}` (expected entropy, kl, target-prob, target-rank or next-token-prob)"
                ))
            })
    }
}

/// What to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct FigureOptions {
    /// Figure title; `None` gives `Rehearsal at "dummy tokens"`.
    pub title: Option<String>,
    pub stat: Stat,
    /// Positions `START..END` (end exclusive) for region B; `None` picks the
    /// template and dummy tail plus 4 positions before it (at least the last 12).
    pub window: Option<(usize, usize)>,
    /// The column of region C; `None` picks the first dummy position, else the
    /// last template position after the last text token, else the last position.
    pub zoom: Option<usize>,
    /// Model name for the subtitle; empty uses the grid's model file.
    pub model_label: String,
    /// Prompt for the subtitle; empty uses the grid's text tokens.
    pub prompt_label: String,
}

impl FigureOptions {
    /// Options for a grid's figure: the model file and the user's words
    /// (the grid's `text` tokens) in the subtitle, everything else default.
    pub fn labelled(grid: &LensGrid) -> Self {
        FigureOptions {
            model_label: grid.model.file.clone(),
            prompt_label: grid.text_prompt(),
            ..FigureOptions::default()
        }
    }
}

/// The default title.
pub(crate) const DEFAULT_TITLE: &str = "Rehearsal at \"dummy tokens\"";

impl Default for FigureOptions {
    fn default() -> Self {
        FigureOptions {
            title: None,
            stat: Stat::Entropy,
            window: None,
            zoom: None,
            model_label: String::new(),
            prompt_label: String::new(),
        }
    }
}

/// An output file type of `lensmap run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Json,
    Svg,
    Png,
    Html,
}

impl OutputFormat {
    /// File extension, also the `--format` spelling.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Json => "json",
            OutputFormat::Svg => "svg",
            OutputFormat::Png => "png",
            OutputFormat::Html => "html",
        }
    }
}

impl FromStr for OutputFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<OutputFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(OutputFormat::Json),
            "svg" => Ok(OutputFormat::Svg),
            "png" => Ok(OutputFormat::Png),
            "html" => Ok(OutputFormat::Html),
            _ => Err(Error::InvalidOption(format!(
                "unknown output format `{s}` (expected json, svg, png or html)"
            ))),
        }
    }
}

/// Write `base.json`, `base.svg`, `base.png`, `base.html` (those asked for),
/// creating parent directories. Returns the paths written, in `formats` order.
pub fn write_outputs(
    grid: &LensGrid,
    base: &Path,
    formats: &[OutputFormat],
    opts: &FigureOptions,
) -> Result<Vec<PathBuf>> {
    if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let path_for = |ext: &str| {
        let mut s = base.as_os_str().to_owned();
        s.push(".");
        s.push(ext);
        PathBuf::from(s)
    };
    // Draw the SVG once if both SVG and PNG are wanted.
    let mut svg_text: Option<String> = None;
    let svg = |svg_text: &mut Option<String>| -> Result<String> {
        if svg_text.is_none() {
            *svg_text = Some(render_svg(grid, opts)?);
        }
        Ok(svg_text.clone().unwrap_or_default())
    };
    let mut written = Vec::new();
    for &f in formats {
        let path = path_for(f.extension());
        let bytes: Vec<u8> = match f {
            OutputFormat::Json => {
                let mut s = serde_json::to_string(grid).map_err(|source| Error::Serialize {
                    what: "the grid",
                    source,
                })?;
                s.push('\n');
                s.into_bytes()
            }
            OutputFormat::Svg => svg(&mut svg_text)?.into_bytes(),
            OutputFormat::Png => render_png(&svg(&mut svg_text)?)?,
            OutputFormat::Html => render_html(grid, opts)?.into_bytes(),
        };
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

/// Check the grid's arrays agree with its sizes, so drawing never indexes out of range.
pub(crate) fn check_grid(grid: &LensGrid) -> Result<()> {
    let (rows, n) = (grid.n_rows, grid.n_positions());
    if rows == 0 || n == 0 {
        return Err(Error::Render(
            "the grid is empty (no rows or no positions)".into(),
        ));
    }
    let bad = |what: &str| {
        Err(Error::Render(format!(
            "grid field `{what}` does not have {rows} rows of {n} positions"
        )))
    };
    if grid.entropy.len() != rows || grid.entropy.iter().any(|r| r.len() != n) {
        return bad("entropy");
    }
    if grid.topk.len() != rows || grid.topk.iter().any(|r| r.len() != n) {
        return bad("topk");
    }
    if grid.kl_to_final.len() != rows || grid.kl_to_final.iter().any(|r| r.len() != n) {
        return bad("kl_to_final");
    }
    if grid.next_token.len() != rows || grid.next_token.iter().any(|r| r.len() != n) {
        return bad("next_token");
    }
    for t in &grid.tracked {
        if t.cells.len() != rows || t.cells.iter().any(|r| r.len() != n) {
            return bad("tracked.cells");
        }
    }
    Ok(())
}

/// Positions up to which A and B are drawn as one grid.
const MERGE_MAX_POSITIONS: usize = 40;
/// Widest default window.
const MAX_DEFAULT_WINDOW: usize = 32;

/// The window of region B: explicit, or the default (see [`FigureOptions::window`]).
pub(crate) fn resolve_window(grid: &LensGrid, opts: &FigureOptions) -> Result<(usize, usize)> {
    let n = grid.n_positions();
    if let Some((s, e)) = opts.window {
        if s >= e || e > n {
            return Err(Error::InvalidOption(format!(
                "window `{s}..{e}` is outside the grid's {n} positions (need START < END <= {n})"
            )));
        }
        return Ok((s, e));
    }
    if let Some(z) = opts.zoom {
        check_zoom(z, n)?;
    }
    let (s, e) = if n <= MERGE_MAX_POSITIONS {
        (0, n)
    } else {
        let tail_start = grid.tail_start();
        let mut s = n.saturating_sub(12);
        if tail_start < n {
            s = s.min(tail_start.saturating_sub(4));
        }
        (s.max(n.saturating_sub(MAX_DEFAULT_WINDOW)), n)
    };
    // An explicit zoom outside the default window: same width, moved to it.
    if let Some(z) = opts.zoom {
        if z < s {
            let width = e - s;
            let start = z.saturating_sub(2);
            let end = (start + width).min(n);
            return Ok((end - width, end));
        }
    }
    Ok((s, e))
}

fn check_zoom(z: usize, n: usize) -> Result<()> {
    if z >= n {
        return Err(Error::InvalidOption(format!(
            "zoom position `{z}` is outside the grid's {n} positions (0..{n})"
        )));
    }
    Ok(())
}

/// The column of region C, inside `window`.
pub fn resolve_zoom(
    grid: &LensGrid,
    opts: &FigureOptions,
    window: (usize, usize),
) -> Result<usize> {
    let n = grid.n_positions();
    let (s, e) = window;
    if let Some(z) = opts.zoom {
        check_zoom(z, n)?;
        if z < s || z >= e {
            return Err(Error::InvalidOption(format!(
                "zoom position `{z}` is outside the window `{s}..{e}`"
            )));
        }
        return Ok(z);
    }
    let kinds = &grid.tokens[s..e];
    // A template position before the last text token (a BOS in `--raw`
    // mode) says little about the answer: use the last position instead.
    let last_text = kinds.iter().rposition(|t| t.kind == TokenKind::Text);
    let z = kinds
        .iter()
        .position(|t| t.kind == TokenKind::Dummy)
        .or_else(|| {
            kinds
                .iter()
                .rposition(|t| t.kind == TokenKind::Template)
                .filter(|i| last_text.is_none_or(|l| *i > l))
        })
        .map(|i| s + i)
        .unwrap_or(e - 1);
    Ok(z)
}

/// Top-1 tokens of one column and how often each appears, most frequent first
/// (ties: the one nearer the output row first). `(id, text, count)`.
pub fn top1_counts(grid: &LensGrid, pos: usize) -> Vec<(u32, String, usize)> {
    let mut out: Vec<(u32, String, usize, usize)> = Vec::new();
    for row in 0..grid.n_rows {
        let Some(t) = grid
            .topk
            .get(row)
            .and_then(|r| r.get(pos))
            .and_then(|c| c.first())
        else {
            continue;
        };
        match out.iter_mut().find(|o| o.0 == t.id) {
            Some(o) => {
                o.2 += 1;
                o.3 = row;
            }
            None => out.push((t.id, t.text.clone(), 1, row)),
        }
    }
    out.sort_by(|a, b| b.2.cmp(&a.2).then(b.3.cmp(&a.3)));
    out.into_iter()
        .map(|(id, text, c, _)| (id, text, c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_options() {
        assert_eq!("target-prob".parse::<Stat>().unwrap(), Stat::TargetProb);
        assert_eq!("KL".parse::<Stat>().unwrap(), Stat::Kl);
        assert!("foo".parse::<Stat>().is_err());
        assert_eq!("png".parse::<OutputFormat>().unwrap(), OutputFormat::Png);
        assert!("pdf".parse::<OutputFormat>().is_err());
    }
}
