//! Where everything goes in the static figure. One [`FigureLayout`] drives
//! the SVG; tests use the same struct to find cell centres in the PNG.

use super::font::text_width;
use super::labels::MAX_LABEL_CHARS;
use super::{check_grid, colormap, resolve_window, resolve_zoom, FigureOptions};
use crate::grid::LensGrid;
use crate::Result;

/// An axis-aligned rectangle in SVG user units (= PNG pixels / [`super::PNG_SCALE`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn new(x: f64, y: f64, w: f64, h: f64) -> Rect {
        Rect { x, y, w, h }
    }
    pub fn right(&self) -> f64 {
        self.x + self.w
    }
    pub fn bottom(&self) -> f64 {
        self.y + self.h
    }
    pub fn center(&self) -> (f64, f64) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }
}

/// A heatmap: `n_cols` positions from `first_pos`, `n_rows` rows, row 0 at the bottom.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridGeom {
    /// Left edge of the first column.
    pub x: f64,
    /// Top edge of the top row (the output row).
    pub y: f64,
    pub cell_w: f64,
    pub cell_h: f64,
    pub first_pos: usize,
    pub n_cols: usize,
    pub n_rows: usize,
}

impl GridGeom {
    pub fn width(&self) -> f64 {
        self.cell_w * self.n_cols as f64
    }
    pub fn height(&self) -> f64 {
        self.cell_h * self.n_rows as f64
    }
    pub fn rect(&self) -> Rect {
        Rect::new(self.x, self.y, self.width(), self.height())
    }
    pub fn bottom(&self) -> f64 {
        self.y + self.height()
    }
    pub fn right(&self) -> f64 {
        self.x + self.width()
    }
    /// Whether `pos` is one of this grid's columns.
    fn has_pos(&self, pos: usize) -> bool {
        pos >= self.first_pos && pos < self.first_pos + self.n_cols
    }
    /// Left edge of a position's column.
    pub(crate) fn col_x(&self, pos: usize) -> f64 {
        self.x + (pos as f64 - self.first_pos as f64) * self.cell_w
    }
    /// Top edge of a row (row 0 is the bottom row).
    pub(crate) fn row_y(&self, row: usize) -> f64 {
        self.y + (self.n_rows - 1 - row) as f64 * self.cell_h
    }
    /// The cell of `(row, pos)`, if this grid shows it.
    pub fn cell(&self, row: usize, pos: usize) -> Option<Rect> {
        (row < self.n_rows && self.has_pos(pos))
            .then(|| Rect::new(self.col_x(pos), self.row_y(row), self.cell_w, self.cell_h))
    }
}

/// A straight line, `(from, to)`.
type Segment = ((f64, f64), (f64, f64));

/// How region A labels its x axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OverviewAxis {
    /// One rotated token label per column.
    Tokens,
    /// A position number every `step` positions.
    Ticks { step: usize },
}

/// One entry of the legend under B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegendItem {
    Template,
    Dummy,
    Zoom,
    Note,
}

impl LegendItem {
    /// The legend text.
    pub fn label(self) -> &'static str {
        match self {
            LegendItem::Template => "template token",
            LegendItem::Dummy => "dummy token",
            LegendItem::Zoom => "zoomed column (C)",
            LegendItem::Note => "cell text: top-1 token of the lens at that layer",
        }
    }
    /// Width of swatch, gap and text.
    pub fn width(self) -> f64 {
        let swatch = if self == LegendItem::Note { 0.0 } else { 24.0 };
        swatch + text_width(self.label().chars().count(), LABEL_SIZE)
    }
}

/// Every rectangle of the static figure.
#[derive(Debug, Clone, PartialEq)]
pub struct FigureLayout {
    pub width: f64,
    pub height: f64,
    pub n_rows: usize,
    pub n_positions: usize,
    /// Positions shown in B, end exclusive.
    pub window: (usize, usize),
    /// The column shown in C.
    pub zoom: usize,
    /// Region A; `None` when B shows every position.
    pub overview: Option<GridGeom>,
    pub overview_axis: OverviewAxis,
    /// Bottom of A's axis labels.
    pub overview_bottom: f64,
    /// Region B.
    pub detail: GridGeom,
    /// Region C's green border (list and counts table).
    pub zoom_panel: Rect,
    /// Top of the counts table inside C.
    pub counts_y: f64,
    /// The colour bar's gradient.
    pub colorbar: Rect,
    /// Baselines of the title and the two subtitle lines.
    pub title_y: f64,
    pub subtitle_y: [f64; 2],
    /// Left edge of the figure's content (the y-axis title).
    pub left: f64,
    /// Top of B's x labels (the boxes).
    pub xlabel_y: f64,
    /// Baseline of the legend's first line.
    pub legend_y: f64,
    /// Legend entries and where each starts (x, baseline).
    pub legend: Vec<(LegendItem, f64, f64)>,
}

pub(crate) const MARGIN: f64 = 16.0;
pub(crate) const TITLE_SIZE: f64 = 18.0;
pub(crate) const SUBTITLE_SIZE: f64 = 11.0;
/// Cell text, x labels and row labels of B and C.
pub(crate) const LABEL_SIZE: f64 = 9.5;
/// Labels of A.
pub(crate) const SMALL_SIZE: f64 = 8.0;
/// Region titles.
pub(crate) const REGION_SIZE: f64 = 11.0;
pub(crate) const B_CELL_H: f64 = 15.0;
pub(crate) const XLABEL_H: f64 = 15.0;
/// Widest A cell.
const A_CELL_W_MAX: f64 = 14.0;
/// Rows shown in C's counts table.
pub(crate) const COUNTS_SHOWN: usize = 6;
/// C's inner columns: row label, token, probability, bar.
pub(crate) const C_PAD: f64 = 8.0;
pub(crate) const C_BAR_W: f64 = 30.0;

/// Width of a B cell: the widest label plus padding.
fn b_cell_w() -> f64 {
    (text_width(MAX_LABEL_CHARS, LABEL_SIZE) + 6.0).ceil()
}

/// Width of region C.
fn c_width() -> f64 {
    let row_label = text_width(6, LABEL_SIZE);
    let token = text_width(MAX_LABEL_CHARS, LABEL_SIZE);
    let prob = text_width(4, LABEL_SIZE);
    (C_PAD + row_label + C_PAD + token + C_PAD + prob + 6.0 + C_BAR_W + C_PAD).ceil()
}

/// Lay out the figure for this grid and options (validates window and zoom).
pub fn layout(grid: &LensGrid, opts: &FigureOptions) -> Result<FigureLayout> {
    check_grid(grid)?;
    colormap::check_stat(grid, opts.stat)?;
    let n = grid.n_positions();
    let rows = grid.n_rows;
    let window = resolve_window(grid, opts)?;
    let zoom = resolve_zoom(grid, opts, window)?;
    let merged = window == (0, n);

    let left = MARGIN;
    let row_label_w = text_width(6, LABEL_SIZE) + 8.0;
    let grid_x = (left + 14.0 + row_label_w).round();
    let title_y = MARGIN + TITLE_SIZE - 2.0;
    let subtitle_y = [title_y + 19.0, title_y + 34.0];
    let header_bottom = subtitle_y[1] + 10.0;

    let cell_w = b_cell_w();
    let b_w = cell_w * (window.1 - window.0) as f64;
    let c_w = c_width();
    let gap_bc = 44.0;

    let mut y = header_bottom;
    let mut overview = None;
    let mut overview_axis = OverviewAxis::Ticks { step: 1 };
    let mut overview_bottom = y;
    if !merged {
        let a_top = (y + 24.0).round();
        let max_a_w = (b_w + gap_bc + c_w).max(720.0);
        let a_cell_w = A_CELL_W_MAX.min(max_a_w / n as f64);
        let a_cell_h = (150.0 / rows as f64).clamp(2.5, 6.0);
        let geom = GridGeom {
            x: grid_x,
            y: a_top,
            cell_w: a_cell_w,
            cell_h: a_cell_h,
            first_pos: 0,
            n_cols: n,
            n_rows: rows,
        };
        // Kind strip (5) then labels.
        let axis_top = geom.bottom() + 8.0;
        let axis_h = if a_cell_w >= 10.0 {
            overview_axis = OverviewAxis::Tokens;
            text_width(MAX_LABEL_CHARS, SMALL_SIZE) + 4.0
        } else {
            let step = [
                1usize, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000,
            ]
            .into_iter()
            .find(|s| *s as f64 * a_cell_w >= 40.0)
            .unwrap_or(10000);
            overview_axis = OverviewAxis::Ticks { step };
            SMALL_SIZE + 6.0
        };
        overview_bottom = axis_top + axis_h;
        overview = Some(geom);
        y = overview_bottom + 34.0;
    }
    let b_top = (y + 22.0).round();
    let detail = GridGeom {
        x: grid_x,
        y: b_top,
        cell_w,
        cell_h: B_CELL_H,
        first_pos: window.0,
        n_cols: window.1 - window.0,
        n_rows: rows,
    };
    let xlabel_y = detail.bottom() + 4.0;
    let has_dummy_in_window = grid.tokens[window.0..window.1]
        .iter()
        .any(|t| t.kind == crate::grid::TokenKind::Dummy);
    let bracket_h = if has_dummy_in_window { 26.0 } else { 4.0 };
    let legend_y = xlabel_y + XLABEL_H + bracket_h + 14.0;
    // Legend: kinds present in the window, wrapped to stay left of C.
    let kinds_in = |k| grid.tokens[window.0..window.1].iter().any(|t| t.kind == k);
    let mut items = vec![];
    if kinds_in(crate::grid::TokenKind::Template) {
        items.push(LegendItem::Template);
    }
    if kinds_in(crate::grid::TokenKind::Dummy) {
        items.push(LegendItem::Dummy);
    }
    items.extend([LegendItem::Zoom, LegendItem::Note]);
    let legend_right = detail.right() + gap_bc - 12.0;
    let (mut lx, mut ly) = (grid_x, legend_y);
    let mut legend = vec![];
    for it in items {
        if lx > grid_x && lx + it.width() > legend_right {
            lx = grid_x;
            ly += 16.0;
        }
        legend.push((it, lx, ly));
        lx += it.width() + 24.0;
    }
    let legend_bottom = ly;

    let c_x = detail.right() + gap_bc;
    let c_top = b_top - 30.0;
    let counts_y = detail.bottom() + 8.0;
    let n_counts = super::top1_counts(grid, zoom).len().min(COUNTS_SHOWN) + 1;
    let c_bottom = counts_y + 16.0 + n_counts as f64 * 14.0 + 4.0;
    let zoom_panel = Rect::new(c_x, c_top, c_w, c_bottom - c_top);

    let bar_x = zoom_panel.right() + 30.0;
    let colorbar = Rect::new(bar_x, b_top + 14.0, 14.0, detail.height() - 14.0);
    let bar_right = bar_x + 14.0 + 6.0 + text_width(5, LABEL_SIZE) + 6.0 + 14.0;

    let a_right = overview.map(|a| a.right()).unwrap_or(0.0);
    let width = (bar_right.max(a_right) + MARGIN).ceil().max(480.0);
    let height = (legend_bottom + 8.0).max(zoom_panel.bottom()) + MARGIN;
    Ok(FigureLayout {
        width,
        height: height.ceil(),
        n_rows: rows,
        n_positions: n,
        window,
        zoom,
        overview,
        overview_axis,
        overview_bottom,
        detail,
        zoom_panel,
        counts_y,
        colorbar,
        title_y,
        subtitle_y,
        left,
        xlabel_y,
        legend_y,
        legend,
    })
}

impl FigureLayout {
    /// A cell of region B.
    pub fn cell_rect(&self, row: usize, pos: usize) -> Option<Rect> {
        self.detail.cell(row, pos)
    }
    /// A cell of region A (`None` when A is merged into B).
    pub fn overview_cell_rect(&self, row: usize, pos: usize) -> Option<Rect> {
        self.overview.and_then(|a| a.cell(row, pos))
    }
    /// The two dashed lines joining A's window marker to B's frame:
    /// `[(from, to); 2]`, left then right. `None` when A is merged into B.
    pub(crate) fn window_connectors(&self) -> Option<[Segment; 2]> {
        let a = self.overview?;
        let b = &self.detail;
        let y1 = self.overview_bottom + 2.0;
        let (x0, x1) = (a.col_x(self.window.0) - 1.0, a.col_x(self.window.1) + 1.0);
        Some([
            ((x0, y1), (b.x - 1.0, b.y - 1.0)),
            ((x1, y1), (b.right() + 1.0, b.y - 1.0)),
        ])
    }

    /// Whether A and B are one grid.
    pub fn merged(&self) -> bool {
        self.overview.is_none()
    }
}
