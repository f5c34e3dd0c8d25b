//! The static figure as SVG, drawn from a [`FigureLayout`].
//!
//! Elements tests rely on:
//! * `g#region-a`, `g#region-b`, `g#region-c`, `g#colorbar`;
//! * B's cells: `rect.cell[data-row][data-pos]`, their text
//!   `text.cell-text[data-row][data-pos]`;
//! * B's x labels: `text.xlabel[data-pos][data-kind]`, and for template and
//!   dummy positions `rect.kind-box[data-pos]` (class `kind-template` / `kind-dummy`);
//! * C's rows: `g.zoom-row[data-row][data-token-id]`, counts:
//!   `g.zoom-count[data-token-id][data-count]`;
//! * invalid cells (`--allow-nonfinite`): filled with `url(#hatch)`, the
//!   `pattern#hatch` of diagonal lines; B's carry `data-invalid="true"`.

use std::collections::HashMap;
use std::fmt::Write;

use super::colormap::{cell_invalid, cell_value, Palette, Rgb, StatScale};
use super::font::{text_width, FONT_STACK};
use super::labels::{plain_text, token_label, xml_escape};
use super::layout::*;
use super::{top1_counts, FigureOptions, DEFAULT_TITLE};
use crate::grid::{LensGrid, TokenKind};
use crate::{Error, Result};

/// Purple of the window marker (A) and B's frame.
const WINDOW_COLOR: &str = "#7b2cbf";
/// Green of the zoom column and region C.
const ZOOM_COLOR: &str = "#1a9641";
/// Blue of template and dummy markers.
pub(crate) const KIND_COLOR: &str = "#1f5fbf";
/// Template positions in the overview's kind strip.
pub(crate) const TEMPLATE_STRIP_COLOR: &str = "#8fb3e8";
/// Fill of dummy boxes.
const DUMMY_FILL: &str = "#dbe8fb";
const GREY: &str = "#555555";
/// Fill of a cell with no value because its logits were not finite: diagonal
/// lines on white, which no colour scale contains ([`HATCH_PATTERN`]).
const HATCH_FILL: &str = "url(#hatch)";
/// The diagonal-line pattern behind [`HATCH_FILL`], defined once per panel
/// that has invalid cells.
const HATCH_PATTERN: &str = r##"<defs><pattern id="hatch" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="5" height="5" fill="#ffffff"/><path d="M0 0V5" stroke="#333333" stroke-width="2"/></pattern></defs>"##;

/// Format a coordinate: integers bare, else two decimals without trailing zeros.
/// (Also the batch's rehearsal figure's.)
pub(crate) fn n(v: f64) -> String {
    if (v - v.round()).abs() < 0.005 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Baseline that centres text of `size` on `cy`.
fn baseline(cy: f64, size: f64) -> f64 {
    cy + 0.36 * size
}

/// Subtitle lines: model and prompt; greedy answer.
pub(super) fn subtitle_lines(
    grid: &LensGrid,
    opts: &FigureOptions,
    max_chars: usize,
) -> [String; 2] {
    let model = if opts.model_label.is_empty() {
        grid.model.file.clone()
    } else {
        opts.model_label.clone()
    };
    let prompt = if opts.prompt_label.is_empty() {
        let text = grid.text_prompt();
        if text.is_empty() {
            grid.prompt_text.clone()
        } else {
            text
        }
    } else {
        opts.prompt_label.clone()
    };
    let n_dummy = grid
        .tokens
        .iter()
        .filter(|t| t.kind == TokenKind::Dummy)
        .count();
    let mut line1 = format!("model: {model} \u{b7} prompt: \u{201c}{prompt}\u{201d}");
    if n_dummy > 0 {
        line1.push_str(&format!(" + {n_dummy} dummy tokens"));
    }
    let mut line2 = match &grid.answer {
        Some(a) => format!("greedy answer: \u{201c}{}\u{201d}", a.text),
        None => String::new(),
    };
    if let Some(note) = grid.model.bf16_note() {
        // Put first: the answer may be cut to fit, the precision never.
        line2 = if line2.is_empty() {
            note
        } else {
            format!("{note} \u{b7} {line2}")
        };
    }
    [plain_text(&line1, max_chars), plain_text(&line2, max_chars)]
}

/// Draw the figure: one panel, or with `more_lenses` one panel per lens side
/// by side (same positions, same fixed colour scale of the statistic).
pub fn render_svg(grid: &LensGrid, opts: &FigureOptions) -> Result<String> {
    if grid.more_lenses.is_empty() {
        return render_panel(grid, opts);
    }
    render_side_by_side(grid, opts)
}

/// Each lens's panel, titled with its lens, placed left to right in one SVG.
fn render_side_by_side(grid: &LensGrid, opts: &FigureOptions) -> Result<String> {
    let first = LensGrid {
        more_lenses: Vec::new(),
        ..grid.clone()
    };
    let panels: Vec<&LensGrid> = std::iter::once(&first)
        .chain(grid.more_lenses.iter())
        .collect();
    let title = opts
        .title
        .clone()
        .unwrap_or_else(|| DEFAULT_TITLE.to_string());
    let (mut body, mut x, mut height) = (String::new(), 0.0f64, 0.0f64);
    for (i, g) in panels.iter().enumerate() {
        if g.tokens != grid.tokens || g.n_rows != grid.n_rows {
            return Err(Error::Render(format!(
                "lens {} of the grid has other positions or rows than the first",
                i + 1
            )));
        }
        let o = FigureOptions {
            title: Some(format!("{title} \u{b7} {}", g.lens.title())),
            ..opts.clone()
        };
        let lay = layout(g, &o)?;
        let panel = render_panel(g, &o)?;
        // Drop the panel's own <svg> wrapper and background; keep ids unique.
        let inner = panel
            .splitn(3, '\n')
            .nth(2)
            .unwrap_or("")
            .trim_end()
            .trim_end_matches("</svg>");
        let inner = if i == 0 {
            inner.to_string()
        } else {
            inner
                .replace(" id=\"", &format!(" id=\"lens{i}-"))
                .replace("url(#", &format!("url(#lens{i}-"))
        };
        let _ = writeln!(
            body,
            r#"<g class="lens-panel" data-lens="{}" transform="translate({},0)">
{inner}</g>"#,
            xml_escape(&g.lens.kind),
            n(x)
        );
        x += lay.width;
        height = height.max(lay.height);
    }
    Ok(format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{fam}" font-size="{fs}">
<rect width="100%" height="100%" fill="#ffffff"/>
{body}</svg>
"##,
        w = n(x),
        h = n(height),
        fam = FONT_STACK.replace('\'', "&apos;"),
        fs = LABEL_SIZE
    ))
}

/// Draw one lens's figure.
fn render_panel(grid: &LensGrid, opts: &FigureOptions) -> Result<String> {
    let lay = layout(grid, opts)?;

    let scale = StatScale::new(opts.stat, grid);
    let mut s = String::with_capacity(64 * 1024 + grid.n_rows * grid.n_positions() * 40);
    let (w, h) = (lay.width, lay.height);
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{fam}" font-size="{fs}">
<rect width="100%" height="100%" fill="#ffffff"/>
"##,
        w = n(w),
        h = n(h),
        fam = FONT_STACK.replace('\'', "&apos;"),
        fs = LABEL_SIZE
    );
    if grid.n_invalid() > 0 {
        s.push_str(HATCH_PATTERN);
        s.push('\n');
    }

    // Title and subtitle.
    let title = opts
        .title
        .clone()
        .unwrap_or_else(|| DEFAULT_TITLE.to_string());
    let max_title = ((w - 2.0 * MARGIN) / text_width(1, TITLE_SIZE)) as usize;
    let _ = writeln!(
        s,
        r#"<text id="title" x="{}" y="{}" font-size="{}">{}</text>"#,
        n(lay.left),
        n(lay.title_y),
        TITLE_SIZE,
        xml_escape(&plain_text(&title, max_title))
    );
    let max_sub = ((w - 2.0 * MARGIN) / text_width(1, SUBTITLE_SIZE)) as usize;
    for (i, line) in subtitle_lines(grid, opts, max_sub).iter().enumerate() {
        if !line.is_empty() {
            let _ = writeln!(
                s,
                r#"<text class="subtitle" x="{}" y="{}" font-size="{}" fill="{GREY}">{}</text>"#,
                n(lay.left),
                n(lay.subtitle_y[i]),
                SUBTITLE_SIZE,
                xml_escape(line)
            );
        }
    }

    if let Some(a) = lay.overview {
        draw_overview(&mut s, grid, &lay, &a, &scale);
    }
    draw_detail(&mut s, grid, &lay, &scale);
    draw_zoom(&mut s, grid, &lay);
    draw_colorbar(&mut s, &lay, &scale);
    if grid.n_invalid() > 0 {
        draw_hatch_key(&mut s, &lay);
    }
    s.push_str("</svg>\n");
    Ok(s)
}

/// Region A: compact heatmap, kind strip, axis, window marker and connectors.
fn draw_overview(
    s: &mut String,
    grid: &LensGrid,
    lay: &FigureLayout,
    a: &GridGeom,
    scale: &StatScale,
) {
    let n_pos = grid.n_positions();
    s.push_str("<g id=\"region-a\">\n");
    let _ = writeln!(
        s,
        r#"<text class="region-title" x="{}" y="{}" font-size="{}">A&#160;&#160;overview: all {} positions</text>"#,
        n(a.x),
        n(a.y - 8.0),
        REGION_SIZE,
        n_pos
    );
    // Row labels: output, and every 10th row when there is room.
    let every = if a.cell_h * 10.0 >= SMALL_SIZE + 2.0 {
        10
    } else {
        usize::MAX
    };
    let _ = writeln!(
        s,
        r#"<g font-size="{SMALL_SIZE}" text-anchor="end" fill="{GREY}">"#
    );
    for row in 0..a.n_rows {
        let last = row + 1 == a.n_rows;
        if !(last || row == 0 || (every != usize::MAX && row % every == 0 && row + 3 < a.n_rows)) {
            continue;
        }
        let cy = a.row_y(row) + a.cell_h / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            n(a.x - 4.0),
            n(baseline(cy, SMALL_SIZE)),
            grid.row_label(row)
        );
    }
    s.push_str("</g>\n");

    // Cells: one path per colour.
    let mut paths: HashMap<Rgb, String> = HashMap::new();
    let mut order: Vec<Rgb> = Vec::new();
    let mut hatched = String::new();
    for row in 0..a.n_rows {
        let y = a.row_y(row);
        for pos in 0..n_pos {
            let d = if cell_invalid(grid, scale.stat, row, pos) {
                &mut hatched
            } else {
                let c = scale.color(cell_value(grid, scale.stat, row, pos));
                paths.entry(c).or_insert_with(|| {
                    order.push(c);
                    String::new()
                })
            };
            let _ = write!(
                d,
                "M{} {}h{}v{}h-{}z",
                n(a.col_x(pos)),
                n(y),
                n(a.cell_w),
                n(a.cell_h),
                n(a.cell_w)
            );
        }
    }
    s.push_str("<g class=\"overview-cells\" shape-rendering=\"crispEdges\">\n");
    for c in order {
        let _ = writeln!(s, r#"<path fill="{}" d="{}"/>"#, c.hex(), paths[&c]);
    }
    if !hatched.is_empty() {
        let _ = writeln!(
            s,
            r#"<path class="invalid-cells" fill="{HATCH_FILL}" d="{hatched}"/>"#
        );
    }
    s.push_str("</g>\n");

    // Kind strip: runs of template / dummy positions.
    let strip_y = a.bottom() + 2.0;
    let mut pos = 0;
    while pos < n_pos {
        let k = grid.tokens[pos].kind;
        let mut end = pos + 1;
        while end < n_pos && grid.tokens[end].kind == k {
            end += 1;
        }
        if k != TokenKind::Text {
            let fill = if k == TokenKind::Dummy {
                KIND_COLOR
            } else {
                TEMPLATE_STRIP_COLOR
            };
            let _ = writeln!(
                s,
                r#"<rect class="kind-strip kind-{}" x="{}" y="{}" width="{}" height="4" fill="{fill}"/>"#,
                k.as_str(),
                n(a.col_x(pos)),
                n(strip_y),
                n(a.cell_w * (end - pos) as f64)
            );
        }
        pos = end;
    }

    // Axis.
    let axis_top = a.bottom() + 8.0;
    match lay.overview_axis {
        OverviewAxis::Tokens => {
            let _ = writeln!(s, r#"<g font-size="{SMALL_SIZE}" text-anchor="end">"#);
            for (pos, t) in grid.tokens.iter().enumerate() {
                let cx = a.col_x(pos) + a.cell_w / 2.0;
                let x = cx + 0.36 * SMALL_SIZE;
                let fill = if t.kind == TokenKind::Text {
                    "#000000"
                } else {
                    KIND_COLOR
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{x}" y="{y}" transform="rotate(-90 {x} {y})" fill="{fill}">{}</text>"#,
                    xml_escape(&token_label(&t.text)),
                    x = n(x),
                    y = n(axis_top + 1.0),
                );
            }
            s.push_str("</g>\n");
        }
        OverviewAxis::Ticks { step } => {
            let _ = writeln!(
                s,
                r#"<g font-size="{SMALL_SIZE}" text-anchor="middle" fill="{GREY}">"#
            );
            let mut pos = 0;
            while pos < n_pos {
                let cx = a.col_x(pos) + a.cell_w / 2.0;
                let _ = writeln!(
                    s,
                    r#"<path d="M{} {}v3" stroke="{GREY}" stroke-width="0.8"/><text x="{}" y="{}">{}</text>"#,
                    n(cx),
                    n(axis_top),
                    n(cx),
                    n(axis_top + 3.0 + SMALL_SIZE),
                    pos
                );
                pos += step;
            }
            s.push_str("</g>\n");
        }
    }

    // Window marker and connectors to B.
    let (w0, w1) = lay.window;
    let x0 = a.col_x(w0);
    let x1 = a.col_x(w1);
    let (y0, y1) = (a.y - 3.0, lay.overview_bottom + 2.0);
    let b = &lay.detail;
    let _ = writeln!(
        s,
        r#"<rect id="window-marker" x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{WINDOW_COLOR}" stroke-width="2"/>"#,
        n(x0 - 1.0),
        n(y0),
        n(x1 - x0 + 2.0),
        n(y1 - y0)
    );
    let _ = writeln!(
        s,
        r#"<path class="connector" d="M{} {}L{} {}M{} {}L{} {}" stroke="{WINDOW_COLOR}" stroke-width="1" stroke-dasharray="4 3" fill="none" opacity="0.8"/>"#,
        n(x0 - 1.0),
        n(y1),
        n(b.x - 1.0),
        n(b.y - 1.0),
        n(x1 + 1.0),
        n(y1),
        n(b.right() + 1.0),
        n(b.y - 1.0)
    );
    s.push_str("</g>\n");
}

/// Region B: labelled cells, axes, kind boxes, dummy brackets, legend.
fn draw_detail(s: &mut String, grid: &LensGrid, lay: &FigureLayout, scale: &StatScale) {
    let b = &lay.detail;
    let (w0, w1) = lay.window;
    s.push_str("<g id=\"region-b\">\n");

    // Region title, placed between the A-to-B connectors and clear of the
    // zoom elbow's vertical segment.
    let title = if lay.merged() {
        format!("positions 0\u{2013}{} (all)", w1 - 1)
    } else {
        format!("B\u{a0}\u{a0}positions {}\u{2013}{}", w0, w1 - 1)
    };
    let tw = text_width(title.chars().count(), REGION_SIZE);
    let zoom_cx = b.col_x(lay.zoom) + b.cell_w / 2.0;
    let text_top = b.y - 18.0;
    let (xl, xr) = match lay.window_connectors() {
        Some([(p, q), (p2, q2)]) => {
            let at =
                |p: (f64, f64), q: (f64, f64)| q.0 + (p.0 - q.0) * (q.1 - text_top) / (q.1 - p.1);
            (at(p, q) + 8.0, at(p2, q2) - 8.0)
        }
        None => (b.x, b.right()),
    };
    let tx = if zoom_cx - 10.0 - xl >= tw {
        xl + ((zoom_cx - 10.0 - xl) - tw) / 2.0
    } else if xr - (zoom_cx + 10.0) >= tw {
        zoom_cx + 10.0
    } else {
        b.x
    };
    let tx = if lay.merged() && zoom_cx - 10.0 - b.x >= tw {
        b.x
    } else {
        tx
    };
    let anchor = "start";
    let _ = writeln!(
        s,
        r#"<text class="region-title" x="{}" y="{}" font-size="{}" text-anchor="{anchor}">{}</text>"#,
        n(tx),
        n(b.y - 6.0),
        REGION_SIZE,
        xml_escape(&title)
    );

    // Y axis title and row labels.
    let cy = b.y + b.height() / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="{x}" y="{y}" transform="rotate(-90 {x} {y})" text-anchor="middle" font-size="{}" fill="{GREY}">layer</text>"#,
        REGION_SIZE,
        x = n(lay.left + 9.0),
        y = n(cy),
    );
    let _ = writeln!(s, r#"<g text-anchor="end" fill="{GREY}">"#);
    for row in 0..b.n_rows {
        let cy = b.row_y(row) + b.cell_h / 2.0;
        let _ = writeln!(
            s,
            r#"<text class="row-label" x="{}" y="{}">{}</text>"#,
            n(b.x - 5.0),
            n(baseline(cy, LABEL_SIZE)),
            grid.row_label(row)
        );
    }
    s.push_str("</g>\n");

    // Cells, then their text.
    s.push_str("<g class=\"cells\" shape-rendering=\"crispEdges\">\n");
    let mut text = String::new();
    for row in 0..b.n_rows {
        for pos in w0..w1 {
            let r = b.cell(row, pos).expect("cell in window");
            if cell_invalid(grid, scale.stat, row, pos) {
                let _ = writeln!(
                    s,
                    r#"<rect class="cell" data-row="{row}" data-pos="{pos}" data-invalid="true" x="{}" y="{}" width="{}" height="{}" fill="{HATCH_FILL}"/>"#,
                    n(r.x),
                    n(r.y),
                    n(r.w),
                    n(r.h),
                );
                continue;
            }
            let c = scale.color(cell_value(grid, scale.stat, row, pos));
            let _ = writeln!(
                s,
                r#"<rect class="cell" data-row="{row}" data-pos="{pos}" x="{}" y="{}" width="{}" height="{}" fill="{}"/>"#,
                n(r.x),
                n(r.y),
                n(r.w),
                n(r.h),
                c.hex()
            );
            if let Some(t) = grid.topk[row][pos].first() {
                let (cx, cy) = r.center();
                let _ = writeln!(
                    text,
                    r#"<text class="cell-text" data-row="{row}" data-pos="{pos}" x="{}" y="{}" fill="{}">{}</text>"#,
                    n(cx),
                    n(baseline(cy, LABEL_SIZE)),
                    c.text_color().hex(),
                    xml_escape(&token_label(&t.text))
                );
            }
        }
    }
    s.push_str("</g>\n<g text-anchor=\"middle\">\n");
    s.push_str(&text);
    s.push_str("</g>\n");
    // Thin white column separators keep neighbouring labels apart.
    let mut d = String::new();
    for pos in w0 + 1..w1 {
        let _ = write!(d, "M{} {}v{}", n(b.col_x(pos)), n(b.y), n(b.height()));
    }
    if !d.is_empty() {
        let _ = writeln!(
            s,
            r##"<path d="{d}" stroke="#ffffff" stroke-width="1" opacity="0.7"/>"##
        );
    }

    // Frame: purple when it magnifies part of A.
    let frame = if lay.merged() {
        "#888888"
    } else {
        WINDOW_COLOR
    };
    let _ = writeln!(
        s,
        r#"<rect class="frame" x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{frame}" stroke-width="{}"/>"#,
        n(b.x - 1.0),
        n(b.y - 1.0),
        n(b.width() + 2.0),
        n(b.height() + 2.0),
        if lay.merged() { 0.8 } else { 2.0 }
    );

    // X labels, with template and dummy boxes.
    let ly = lay.xlabel_y;
    for pos in w0..w1 {
        let t = &grid.tokens[pos];
        let x = b.col_x(pos);
        if t.kind != TokenKind::Text {
            let fill = if t.kind == TokenKind::Dummy {
                DUMMY_FILL
            } else {
                "none"
            };
            let _ = writeln!(
                s,
                r#"<rect class="kind-box kind-{k}" data-pos="{pos}" x="{}" y="{}" width="{}" height="{}" rx="2" fill="{fill}" stroke="{KIND_COLOR}" stroke-width="1"/>"#,
                n(x + 2.0),
                n(ly),
                n(b.cell_w - 4.0),
                n(XLABEL_H),
                k = t.kind.as_str()
            );
        }
        let fill = if t.kind == TokenKind::Text {
            "#000000"
        } else {
            KIND_COLOR
        };
        let _ = writeln!(
            s,
            r#"<text class="xlabel" data-pos="{pos}" data-kind="{}" x="{}" y="{}" text-anchor="middle" fill="{fill}">{}</text>"#,
            t.kind.as_str(),
            n(x + b.cell_w / 2.0),
            n(baseline(ly + XLABEL_H / 2.0, LABEL_SIZE)),
            xml_escape(&token_label(&t.text))
        );
    }
    // Brackets under runs of dummy tokens.
    let mut pos = w0;
    while pos < w1 {
        if grid.tokens[pos].kind != TokenKind::Dummy {
            pos += 1;
            continue;
        }
        let start = pos;
        while pos < w1 && grid.tokens[pos].kind == TokenKind::Dummy {
            pos += 1;
        }
        let (x0, x1) = (b.col_x(start) + 3.0, b.col_x(pos) - 3.0);
        let by = ly + XLABEL_H + 4.0;
        let label = if pos - start == 1 {
            "dummy token"
        } else {
            "dummy tokens"
        };
        let _ = writeln!(
            s,
            r#"<path class="dummy-bracket" d="M{} {}v5H{}v-5" stroke="{KIND_COLOR}" stroke-width="1.2" fill="none"/><text x="{}" y="{}" text-anchor="middle" fill="{KIND_COLOR}" font-size="{}">{label}</text>"#,
            n(x0),
            n(by),
            n(x1),
            n((x0 + x1) / 2.0),
            n(by + 5.0 + 12.0),
            REGION_SIZE - 1.0
        );
    }

    // Legend.
    let _ = writeln!(s, r#"<g class="legend" fill="{GREY}">"#);
    for &(item, x, y) in &lay.legend {
        let swatch = match item {
            LegendItem::Template => format!(r#" rx="2" fill="none" stroke="{KIND_COLOR}""#),
            LegendItem::Dummy => format!(r#" rx="2" fill="{DUMMY_FILL}" stroke="{KIND_COLOR}""#),
            LegendItem::Zoom => format!(r#" fill="none" stroke="{ZOOM_COLOR}" stroke-width="2""#),
            LegendItem::Note => String::new(),
        };
        let tx = if swatch.is_empty() {
            x
        } else {
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="18" height="11"{swatch}/>"#,
                n(x),
                n(y - 9.0)
            );
            x + 24.0
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            n(tx),
            n(y),
            item.label()
        );
    }
    s.push_str("</g>\n");
    s.push_str("</g>\n");
}

/// Region C: the zoomed column's top-1 list and counts, and its connector.
fn draw_zoom(s: &mut String, grid: &LensGrid, lay: &FigureLayout) {
    let b = &lay.detail;
    let c = lay.zoom_panel;
    let z = lay.zoom;
    s.push_str("<g id=\"region-c\">\n");
    // Column highlight in B and elbow connector to C.
    let cx0 = b.col_x(z);
    let _ = writeln!(
        s,
        r#"<rect id="zoom-column" data-pos="{z}" x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{ZOOM_COLOR}" stroke-width="2"/>"#,
        n(cx0),
        n(b.y - 1.0),
        n(b.cell_w),
        n(b.height() + 2.0)
    );
    let elbow_y = b.y - 22.0;
    let _ = writeln!(
        s,
        r#"<path class="connector" d="M{} {}V{}H{}" stroke="{ZOOM_COLOR}" stroke-width="1.5" fill="none"/>"#,
        n(cx0 + b.cell_w / 2.0),
        n(b.y - 2.0),
        n(elbow_y),
        n(c.x)
    );
    let _ = writeln!(
        s,
        r##"<rect class="zoom-panel" x="{}" y="{}" width="{}" height="{}" rx="3" fill="#ffffff" stroke="{ZOOM_COLOR}" stroke-width="2"/>"##,
        n(c.x),
        n(c.y),
        n(c.w),
        n(c.h)
    );
    let tok = &grid.tokens[z];
    let mut head = format!("C\u{a0}\u{a0}pos {z}: {}", token_label(&tok.text));
    let kind = format!(" ({})", tok.kind.as_str());
    if text_width(head.chars().count() + kind.len(), REGION_SIZE) <= c.w - 2.0 * C_PAD {
        head.push_str(&kind);
    }
    let _ = writeln!(
        s,
        r#"<text class="region-title" x="{}" y="{}" font-size="{}">{}</text>"#,
        n(c.x + C_PAD),
        n(c.y + 14.0),
        REGION_SIZE,
        xml_escape(&head)
    );
    let x_label = c.x + C_PAD + text_width(6, LABEL_SIZE);
    let x_tok = x_label + C_PAD;
    let x_prob = x_tok
        + text_width(super::labels::MAX_LABEL_CHARS, LABEL_SIZE)
        + C_PAD
        + text_width(4, LABEL_SIZE);
    let x_bar = x_prob + 6.0;
    for row in 0..b.n_rows {
        let cy = b.row_y(row) + b.cell_h / 2.0;
        let by = baseline(cy, LABEL_SIZE);
        let Some(t) = grid.topk[row][z].first() else {
            if grid.is_invalid(row, z) {
                let _ = writeln!(
                    s,
                    r#"<g class="zoom-row zoom-invalid" data-row="{row}"><text x="{}" y="{by}" text-anchor="end" fill="{GREY}">{}</text><text x="{}" y="{by}" fill="{GREY}">non-finite</text></g>"#,
                    n(x_label),
                    grid.row_label(row),
                    n(x_tok),
                    by = n(by),
                );
            }
            continue;
        };
        let _ = writeln!(
            s,
            r##"<g class="zoom-row" data-row="{row}" data-token-id="{}" data-prob="{:.4}"><text x="{}" y="{}" text-anchor="end" fill="{GREY}">{}</text><text x="{}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{:.2}</text><rect x="{}" y="{}" width="{C_BAR_W}" height="7" fill="#eeeeee"/><rect x="{}" y="{}" width="{}" height="7" fill="{ZOOM_COLOR}" opacity="0.75"/></g>"##,
            t.id,
            t.prob,
            n(x_label),
            n(by),
            grid.row_label(row),
            n(x_tok),
            n(by),
            xml_escape(&token_label(&t.text)),
            n(x_prob),
            n(by),
            t.prob,
            n(x_bar),
            n(cy - 3.5),
            n(x_bar),
            n(cy - 3.5),
            n(C_BAR_W * t.prob.clamp(0.0, 1.0)),
        );
    }
    // Counts table.
    let counts = top1_counts(grid, z);
    let y0 = lay.counts_y;
    let _ = writeln!(
        s,
        r#"<path d="M{} {}h{}" stroke="{ZOOM_COLOR}" stroke-width="0.8"/><text x="{}" y="{}" fill="{GREY}">most frequent top-1:</text>"#,
        n(c.x + C_PAD),
        n(y0),
        n(c.w - 2.0 * C_PAD),
        n(c.x + C_PAD),
        n(y0 + 14.0)
    );
    for (i, (id, text, count)) in counts.iter().take(COUNTS_SHOWN).enumerate() {
        let y = y0 + 14.0 + 14.0 * (i + 1) as f64;
        let label = token_label(text);
        let _ = writeln!(
            s,
            r#"<g class="zoom-count" data-token-id="{id}" data-count="{count}" data-label="{l}"><text x="{}" y="{}">{l}</text><text x="{}" y="{}" fill="{GREY}">&#xd7;{count}</text></g>"#,
            n(c.x + C_PAD + 8.0),
            n(y),
            n(c.x + C_PAD + 8.0 + text_width(super::labels::MAX_LABEL_CHARS + 1, LABEL_SIZE)),
            n(y),
            l = xml_escape(&label),
        );
    }
    if counts.len() > COUNTS_SHOWN {
        let rest: usize = counts[COUNTS_SHOWN..].iter().map(|c| c.2).sum();
        let y = y0 + 14.0 + 14.0 * (COUNTS_SHOWN + 1) as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{GREY}">+{} others (&#xd7;{rest})</text>"#,
            n(c.x + C_PAD + 8.0),
            n(y),
            counts.len() - COUNTS_SHOWN
        );
    }
    s.push_str("</g>\n");
}

/// The key of the hatched cells, under the colour bar and its notes.
fn draw_hatch_key(s: &mut String, lay: &FigureLayout) {
    let r = lay.colorbar;
    let y = r.bottom() + 32.0;
    let _ = writeln!(
        s,
        r#"<g id="hatch-key"><rect x="{}" y="{}" width="{}" height="10" fill="{HATCH_FILL}" stroke="{GREY}" stroke-width="0.6"/><text x="{}" y="{}" fill="{GREY}" font-size="{}">non-finite</text></g>"#,
        n(r.x),
        n(y),
        n(r.w),
        n(r.right() + 5.0),
        n(y + 8.0),
        SMALL_SIZE
    );
}

/// The colour bar: gradient, ticks, title, clip marker.
fn draw_colorbar(s: &mut String, lay: &FigureLayout, scale: &StatScale) {
    let r = lay.colorbar;
    s.push_str("<g id=\"colorbar\">\n<defs><linearGradient id=\"cbar\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">");
    let stops = scale.palette.stops();
    for (i, c) in stops.iter().enumerate() {
        let _ = write!(
            s,
            r#"<stop offset="{}" stop-color="{}"/>"#,
            n(i as f64 / (stops.len() - 1) as f64 * 100.0) + "%",
            c.hex()
        );
    }
    s.push_str("</linearGradient></defs>\n");
    let _ = writeln!(
        s,
        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="url(#cbar)" stroke="{GREY}" stroke-width="0.6"/>"#,
        n(r.x),
        n(r.y),
        n(r.w),
        n(r.h)
    );
    let _ = writeln!(s, r#"<g fill="{GREY}">"#);
    for (v, label) in scale.ticks() {
        let y = r.bottom() - scale.t(v) * r.h;
        let _ = writeln!(
            s,
            r#"<path d="M{} {}h3" stroke="{GREY}" stroke-width="0.8"/><text x="{}" y="{}">{}</text>"#,
            n(r.right()),
            n(y),
            n(r.right() + 5.0),
            n(baseline(y, LABEL_SIZE)),
            label
        );
    }
    s.push_str("</g>\n");
    let tx = r.right() + 6.0 + text_width(5, LABEL_SIZE) + 8.0;
    let ty = r.y + r.h / 2.0;
    let _ = writeln!(
        s,
        r#"<text class="colorbar-title" x="{tx}" y="{ty}" transform="rotate(-90 {tx} {ty})" text-anchor="middle" font-size="{}">{}</text>"#,
        REGION_SIZE,
        xml_escape(&scale.title),
        tx = n(tx),
        ty = n(ty),
    );
    if scale.clips {
        let top = scale.palette.at(1.0);
        let _ = writeln!(
            s,
            r#"<path class="clip-marker" d="M{} {}L{} {}L{} {}Z" fill="{}" stroke="{GREY}" stroke-width="0.6"/><text x="{}" y="{}" fill="{GREY}" font-size="{}">&gt;{} clipped</text>"#,
            n(r.x),
            n(r.y),
            n(r.x + r.w / 2.0),
            n(r.y - 11.0),
            n(r.right()),
            n(r.y),
            top.hex(),
            n(r.x - 2.0),
            n(r.y - 15.0),
            SMALL_SIZE,
            n(scale.hi)
        );
        if let Some(m) = scale.max_possible {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" fill="{GREY}" font-size="{}">max ln|V|</text><text x="{}" y="{}" fill="{GREY}" font-size="{}">= {:.2}</text>"#,
                n(r.x - 2.0),
                n(r.bottom() + 14.0),
                SMALL_SIZE,
                n(r.x - 2.0),
                n(r.bottom() + 24.0),
                SMALL_SIZE,
                m
            );
        }
    }
    if scale.palette == Palette::Blues || scale.palette == Palette::BluesR {
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="{}" height="8" fill="{}" stroke="{GREY}" stroke-width="0.6"/><text x="{}" y="{}" fill="{GREY}" font-size="{}">n/a</text>"#,
            n(r.x),
            n(r.bottom() + 8.0),
            n(r.w),
            super::colormap::MISSING.hex(),
            n(r.right() + 5.0),
            n(r.bottom() + 15.0),
            SMALL_SIZE
        );
    }
    s.push_str("</g>\n");
}
