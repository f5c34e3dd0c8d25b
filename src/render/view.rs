//! The interactive view's rules as data. `lensview.js` only draws: every
//! palette, statistic scale, token label, row label, default window and
//! zoom, top-1 count and layout number it uses comes from a [`ViewSpec`]
//! built here from the same functions the static figure uses. The HTML page
//! embeds it next to the grid; `lensmap serve` answers it at `POST /api/view`.
//!
//! Cell colours are sent resolved, not recomputed in the browser: the page
//! embeds its grid with floats cut to a few digits, which would move a
//! colour by one level. `tests/html_chromium.rs` reads every cell of every
//! statistic back from the browser's DOM and compares it with the static
//! figure's.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::colormap::{cell_value, check_stat, Rgb, StatScale};
use super::font::text_width;
use super::labels::{token_display, token_label};
use super::layout::{layout, B_CELL_H, COUNTS_SHOWN, MARGIN, SUBTITLE_SIZE};
use super::svg::{subtitle_lines, KIND_COLOR, TEMPLATE_STRIP_COLOR};
use super::{top1_counts, FigureOptions, Stat, DEFAULT_TITLE};
use crate::grid::{LensGrid, TokenKind};
use crate::Result;

/// Version of the [`ViewSpec`] layout; `lensview.js` refuses another.
pub const VIEW_SPEC_VERSION: u32 = 1;

/// Everything `lensview.js` needs besides the grid, resolved in Rust.
#[derive(Debug, Clone, Serialize)]
pub struct ViewSpec {
    /// [`VIEW_SPEC_VERSION`].
    pub version: u32,
    /// Heading.
    pub title: String,
    /// Lines under the heading.
    pub subtitle: Vec<String>,
    /// The statistic shown first (`--stat` spelling).
    pub stat: &'static str,
    /// Region B's positions `[start, end)`, as the static figure resolves them.
    pub window: [usize; 2],
    /// Region C's position, as the static figure resolves it.
    pub zoom: usize,
    /// The statistics this grid can show, in `--stat` order.
    pub stats: Vec<StatView>,
    /// Colours of the overview's kind strip: `template`, `dummy`.
    pub kind_colors: BTreeMap<&'static str, String>,
    /// The label of every row (`"0"` … `"output"`).
    pub row_labels: Vec<String>,
    /// `[display, label]` of every token text the grid holds (input tokens,
    /// top-k tokens, tracked tokens): the full display form for tooltips
    /// and the cut label for cells and axes.
    pub labels: BTreeMap<String, [String; 2]>,
    /// The most frequent top-1 tokens of every position (as many as region C
    /// of the static figure lists), most frequent first.
    pub top1_counts: Vec<Vec<Top1Count>>,
    /// Tables for the default zoom of any window, see [`ZoomRule`].
    pub zoom_rule: ZoomRule,
    /// Sizes of the interactive layout, in CSS pixels.
    pub layout: ViewLayout,
}

/// How one statistic is coloured and labelled.
#[derive(Debug, Clone, Serialize)]
pub struct StatView {
    /// `--stat` spelling.
    pub key: &'static str,
    /// Name in the statistic menu.
    pub name: &'static str,
    /// Colour-bar title.
    pub title: String,
    /// Palette stops, `#rrggbb`, evenly spaced from the bottom of the colour
    /// bar to its top.
    pub palette: Vec<String>,
    /// The clip marker's text when values above the top occur (`>10 clipped`).
    pub clip_label: Option<String>,
    /// Colour-bar ticks: height on the bar (`0..=1`, bottom to top) and label.
    pub ticks: Vec<(f64, String)>,
    /// Every cell's colours, one string per row: per position `rrggbb` (the
    /// fill, [`StatScale::color`]) and `w` or `k` (white or black text).
    pub cells: Vec<String>,
}

/// One entry of a position's top-1 counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Top1Count {
    pub id: u32,
    pub text: String,
    pub count: usize,
}

/// The default zoom of a window `[s, e)` ([`super::resolve_zoom`]) as two
/// lookups: `first_dummy[s]` if it is `< e`, else `tail_template[e - 1]` if
/// it is `>= s`, else `e - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoomRule {
    /// The first dummy position at or after each position (`n` if none).
    pub first_dummy: Vec<usize>,
    /// The last template position at or before each position with no text
    /// token between them (`None` if there is none).
    pub tail_template: Vec<Option<usize>>,
}

impl ZoomRule {
    /// The tables of a grid's tokens.
    pub fn new(grid: &LensGrid) -> ZoomRule {
        let n = grid.n_positions();
        let mut first_dummy = vec![n; n];
        let mut next = n;
        for p in (0..n).rev() {
            if grid.tokens[p].kind == TokenKind::Dummy {
                next = p;
            }
            first_dummy[p] = next;
        }
        let mut tail_template = Vec::with_capacity(n);
        let mut last: Option<usize> = None;
        for (p, t) in grid.tokens.iter().enumerate() {
            match t.kind {
                TokenKind::Text => last = None,
                TokenKind::Template => last = Some(p),
                _ => {}
            }
            tail_template.push(last);
        }
        ZoomRule {
            first_dummy,
            tail_template,
        }
    }

    /// The default zoom of window `[s, e)`, exactly as `lensview.js` reads the tables.
    pub fn zoom(&self, s: usize, e: usize) -> usize {
        if self.first_dummy[s] < e {
            return self.first_dummy[s];
        }
        match self.tail_template[e - 1] {
            Some(t) if t >= s => t,
            _ => e - 1,
        }
    }
}

/// Sizes of the interactive layout (CSS pixels).
#[derive(Debug, Clone, Serialize)]
pub struct ViewLayout {
    /// Width of a cell in region B (fits a [`super::labels::MAX_LABEL_CHARS`] label).
    pub cell_w: f64,
    /// Height of a cell (the static figure's).
    pub cell_h: f64,
    /// Room for the row labels left of B.
    pub row_label_w: f64,
    /// Width of the zoom panel C.
    pub zoom_w: f64,
    /// Top-1 counts listed in C.
    pub counts_shown: usize,
    /// Narrowest window the width box allows.
    pub window_min: usize,
    /// Widest window the width box allows.
    pub window_max: usize,
}

/// The interactive layout.
const VIEW_LAYOUT: ViewLayout = ViewLayout {
    cell_w: 58.0,
    cell_h: B_CELL_H,
    row_label_w: 48.0,
    zoom_w: 190.0,
    counts_shown: COUNTS_SHOWN,
    window_min: 2,
    window_max: 64,
};

/// The menu name of a statistic.
fn stat_name(stat: Stat) -> &'static str {
    match stat {
        Stat::Entropy => "entropy",
        Stat::Kl => "KL to final",
        Stat::TargetProb => "target prob",
        Stat::TargetRank => "target rank",
        Stat::NextTokenProb => "next-token prob",
    }
}

/// How `stat` is drawn for this grid: the static figure's scale and the
/// colour of every cell.
fn stat_view(grid: &LensGrid, stat: Stat) -> StatView {
    let scale = StatScale::new(stat, grid);
    let cells = (0..grid.n_rows)
        .map(|row| {
            let mut line = String::with_capacity(7 * grid.n_positions());
            for pos in 0..grid.n_positions() {
                let c = scale.color(cell_value(grid, stat, row, pos));
                let text = if c.text_color() == Rgb(255, 255, 255) {
                    'w'
                } else {
                    'k'
                };
                let _ = write!(line, "{:02x}{:02x}{:02x}{text}", c.0, c.1, c.2);
            }
            line
        })
        .collect();
    StatView {
        key: stat.as_str(),
        name: stat_name(stat),
        title: scale.title.clone(),
        palette: scale.palette.stops().iter().map(|c| c.hex()).collect(),
        clip_label: scale
            .clips
            .then(|| format!(">{} clipped", super::svg::n(scale.hi))),
        ticks: scale
            .ticks()
            .into_iter()
            .map(|(v, label)| (scale.t(v), label))
            .collect(),
        cells,
    }
}

/// `[display, label]` of every token text in the grid.
fn grid_labels(grid: &LensGrid) -> BTreeMap<String, [String; 2]> {
    let mut texts: Vec<&str> = grid.tokens.iter().map(|t| t.text.as_str()).collect();
    for row in &grid.topk {
        for cell in row {
            texts.extend(cell.iter().map(|t| t.text.as_str()));
        }
    }
    texts.extend(grid.tracked.iter().map(|t| t.token_text.as_str()));
    texts
        .into_iter()
        .map(|t| (t.to_string(), [token_display(t), token_label(t)]))
        .collect()
}

/// Resolve the view of `grid` under `opts`: the same window, zoom, title and
/// subtitle as the static figure, and every rule `lensview.js` draws by.
pub fn view_spec(grid: &LensGrid, opts: &FigureOptions) -> Result<ViewSpec> {
    // Refuses a statistic the grid cannot show, as the static figure does.
    let lay = layout(grid, opts)?;
    let max_sub = ((lay.width - 2.0 * MARGIN) / text_width(1, SUBTITLE_SIZE)) as usize;
    let subtitle = subtitle_lines(grid, opts, max_sub.max(120)).to_vec();
    let stats = Stat::ALL
        .into_iter()
        .filter(|&s| check_stat(grid, s).is_ok())
        .map(|s| stat_view(grid, s))
        .collect();
    let top1 = (0..grid.n_positions())
        .map(|p| {
            top1_counts(grid, p)
                .into_iter()
                .take(COUNTS_SHOWN)
                .map(|(id, text, count)| Top1Count { id, text, count })
                .collect()
        })
        .collect();
    let kind_colors = BTreeMap::from([
        ("template", TEMPLATE_STRIP_COLOR.to_string()),
        ("dummy", KIND_COLOR.to_string()),
    ]);
    Ok(ViewSpec {
        version: VIEW_SPEC_VERSION,
        title: opts
            .title
            .clone()
            .unwrap_or_else(|| DEFAULT_TITLE.to_string()),
        subtitle,
        stat: opts.stat.as_str(),
        window: [lay.window.0, lay.window.1],
        zoom: lay.zoom,
        stats,
        kind_colors,
        row_labels: (0..grid.n_rows).map(|r| grid.row_label(r)).collect(),
        labels: grid_labels(grid),
        top1_counts: top1,
        zoom_rule: ZoomRule::new(grid),
        layout: VIEW_LAYOUT,
    })
}
