//! `rehearsal.svg` / `rehearsal.png`: the batch's rehearsal curves against
//! lens row. Top panel: median answer probability (log scale) with the
//! interquartile band; middle: the answer's median best rank (log scale,
//! IQR band); bottom: the answer-in-top-k rate. One curve per position kind
//! (see [`super::summary`]); x runs over rows 0…L, with L labelled `output`.
//!
//! Drawn by hand as the heatmap figure is, in its font (`render::FONT_FAMILY`,
//! which the PNG embeds) and its palette (`render::colormap`).

use std::fmt::Write;

use super::summary::{Curve, CurveKind};
use crate::render::colormap::{BLUES, RDBU};
use crate::render::labels::xml_escape;
use crate::render::svg::n;
use crate::render::FONT_FAMILY;

const WIDTH: f64 = 980.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 104.0;
const PANEL_H: f64 = 190.0;
const GAP: f64 = 64.0;
const BOTTOM: f64 = 58.0;
const FONT: f64 = 12.0;
/// Advance width of the monospace font, in em.
const ADVANCE_EM: f64 = 1233.0 / 2048.0;
const GREY: &str = "#555555";
const GRID: &str = "#e3e3e3";

/// The colour of a kind: the user's text grey, the template tail red (from
/// `RdBu`), the dummies the blue of the heatmap's dummy markers (`Blues`).
fn kind_color(kind: CurveKind) -> &'static str {
    match kind {
        CurveKind::Text => "#737373",
        CurveKind::Template => RDBU[1],
        CurveKind::Dummy => BLUES[7],
    }
}

/// Cut `s` to `max` characters.
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Rows to label on the x axis: every 5th, and the last as `output`
/// (dropping a multiple of 5 that would crowd it).
fn x_ticks(n_rows: usize) -> Vec<(usize, String)> {
    let last = n_rows.saturating_sub(1);
    let step = if last > 40 { 10 } else { 5 };
    let mut t: Vec<(usize, String)> = (0..last)
        .step_by(step)
        .filter(|&r| last - r >= 2)
        .map(|r| (r, r.to_string()))
        .collect();
    t.push((last, crate::grid::row_label(last, n_rows)));
    t
}

/// A vertical axis mapping values to y within one panel.
struct Axis {
    y0: f64,
    /// `log10` range for log axes (`top`, `bottom`), or the linear range.
    top: f64,
    bottom: f64,
    log: bool,
}

impl Axis {
    fn y(&self, v: f64) -> f64 {
        let t = if self.log {
            let l = if v > 0.0 {
                v.log10()
            } else {
                f64::NEG_INFINITY
            };
            l.clamp(self.top.min(self.bottom), self.top.max(self.bottom))
        } else {
            v.clamp(self.top.min(self.bottom), self.top.max(self.bottom))
        };
        self.y0 + PANEL_H * (t - self.top) / (self.bottom - self.top)
    }
}

fn decade_label(d: i32) -> String {
    match d {
        0 => "1".into(),
        1 => "10".into(),
        2 => "100".into(),
        -1 => "0.1".into(),
        -2 => "0.01".into(),
        d => format!("1e{d}"),
    }
}

/// Decade ticks between `a` and `b` (inclusive), at most about 7.
fn decade_ticks(a: i32, b: i32) -> Vec<i32> {
    let (lo, hi) = (a.min(b), a.max(b));
    let step = ((hi - lo) as usize).div_ceil(7).max(1) as i32;
    (lo..=hi).filter(|d| (d - hi) % step == 0).collect()
}

/// Draw the figure. `subtitle`: lines under the title (model, prompts, settings).
pub fn render_svg(curves: &[Curve], n_rows: usize, top_k: usize, subtitle: &[String]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let height = TOP + 3.0 * PANEL_H + 2.0 * GAP + BOTTOM;
    let last = n_rows.saturating_sub(1).max(1) as f64;
    let x = |row: usize| LEFT + plot_w * row as f64 / last;
    let mut s = String::with_capacity(48 * 1024);
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="&apos;{FONT_FAMILY}&apos;, monospace" font-size="{FONT}">
<rect width="100%" height="100%" fill="#ffffff"/>"##,
        w = n(WIDTH),
        h = n(height),
    );
    let max_chars = ((WIDTH - 2.0 * 16.0) / (ADVANCE_EM * FONT)) as usize;
    let _ = writeln!(
        s,
        r#"<text id="title" x="16" y="28" font-size="18">Is the answer rehearsed?</text>"#
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text class="subtitle" x="16" y="{}" fill="{GREY}">{}</text>"#,
            n(50.0 + 16.0 * i as f64),
            xml_escape(&fit(line, max_chars))
        );
    }
    let points = || curves.iter().flat_map(|c| c.points.iter());

    // Probability: from the lowest quartile shown, in whole decades.
    let lowest = points()
        .map(|p| p.q1.min(p.median))
        .filter(|v| *v > 0.0)
        .fold(1.0f64, f64::min);
    let lo_dec = (lowest.log10().floor() as i32).clamp(-12, -1);
    let prob = Axis {
        y0: TOP,
        top: 0.0,
        bottom: lo_dec as f64,
        log: true,
    };
    // Rank: 1 at the top, down to the worst upper quartile shown.
    let worst = points()
        .map(|p| p.rank_q3.max(p.rank_median))
        .fold(10.0f64, f64::max);
    let hi_dec = (worst.log10().ceil() as i32).clamp(1, 7);
    let rank = Axis {
        y0: TOP + PANEL_H + GAP,
        top: 0.0,
        bottom: hi_dec as f64,
        log: true,
    };
    let rate = Axis {
        y0: TOP + 2.0 * (PANEL_H + GAP),
        top: 1.0,
        bottom: 0.0,
        log: false,
    };

    let panel = |s: &mut String, id: &str, axis: &Axis, title: &str, yticks: &[(f64, String)]| {
        let y0 = axis.y0;
        let _ = writeln!(s, r#"<g id="{id}">"#);
        for (v, label) in yticks {
            let y = n(axis.y(*v));
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{GRID}"/><text x="{}" y="{}" text-anchor="end" fill="{GREY}">{}</text>"#,
                n(LEFT),
                n(LEFT + plot_w),
                n(LEFT - 6.0),
                n(axis.y(*v) + 4.0),
                xml_escape(label),
            );
        }
        for (row, label) in x_ticks(n_rows) {
            let _ = writeln!(
                s,
                r#"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="{GRID}"/><text class="xtick" x="{x}" y="{}" text-anchor="middle" fill="{GREY}">{label}</text>"#,
                n(y0),
                n(y0 + PANEL_H),
                n(y0 + PANEL_H + 15.0),
                x = n(x(row))
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{GREY}"/>"#,
            n(LEFT),
            n(y0),
            n(plot_w),
            n(PANEL_H)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="13">{}</text>"#,
            n(LEFT),
            n(y0 - 9.0),
            xml_escape(title)
        );
        let _ = writeln!(s, "</g>");
    };
    // Values below the axis are drawn on it: label the floor so.
    let floor_label = |d: i32| {
        if d == lo_dec && lowest < 10f64.powi(lo_dec) {
            format!("≤{}", decade_label(d))
        } else {
            decade_label(d)
        }
    };
    let prob_ticks: Vec<(f64, String)> = decade_ticks(lo_dec, 0)
        .into_iter()
        .map(|d| (10f64.powi(d), floor_label(d)))
        .collect();
    panel(
        &mut s,
        "panel-prob",
        &prob,
        "answer probability: median over prompts of the mean over positions (band: IQR)",
        &prob_ticks,
    );
    let rank_ticks: Vec<(f64, String)> = decade_ticks(0, hi_dec)
        .into_iter()
        .map(|d| (10f64.powi(d), decade_label(d)))
        .collect();
    panel(
        &mut s,
        "panel-rank",
        &rank,
        "answer rank: median over prompts of the best rank among positions (band: IQR)",
        &rank_ticks,
    );
    let rate_ticks: Vec<(f64, String)> = [0.0, 0.25, 0.5, 0.75, 1.0]
        .iter()
        .map(|&r| (r, format!("{r}")))
        .collect();
    panel(
        &mut s,
        "panel-topk",
        &rate,
        &format!("answer in the top-{top_k}: fraction of positions (mean over prompts)"),
        &rate_ticks,
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" fill="{GREY}">lens row (0 = embeddings, output = the model's own logits)</text>"#,
        n(LEFT + plot_w / 2.0),
        n(rate.y0 + PANEL_H + 40.0)
    );
    // Reference lines: rank k and half rate.
    for (axis, v) in [(&rank, top_k as f64), (&rate, 0.5)] {
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{GREY}" stroke-dasharray="4 3"/>"#,
            n(LEFT),
            n(LEFT + plot_w),
            y = n(axis.y(v))
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end" fill="{GREY}" font-size="11">rank {top_k}</text>"#,
        n(LEFT + plot_w - 4.0),
        n(rank.y(top_k as f64) - 4.0)
    );

    let live: Vec<&Curve> = curves.iter().filter(|c| !c.points.is_empty()).collect();
    // Bands first, then lines and points.
    for c in &live {
        let color = kind_color(c.kind);
        let kind = c.kind.name();
        for (axis, lo, hi) in [
            (
                &prob,
                (|p: &CurvePointRef| p.q1) as fn(&CurvePointRef) -> f64,
                (|p: &CurvePointRef| p.q3) as fn(&CurvePointRef) -> f64,
            ),
            (
                &rank,
                |p: &CurvePointRef| p.rank_q1,
                |p: &CurvePointRef| p.rank_q3,
            ),
        ] {
            let upper: Vec<String> = c
                .points
                .iter()
                .map(|p| format!("{},{}", n(x(p.row)), n(axis.y(hi(p)))))
                .collect();
            let lower: Vec<String> = c
                .points
                .iter()
                .rev()
                .map(|p| format!("{},{}", n(x(p.row)), n(axis.y(lo(p)))))
                .collect();
            let _ = writeln!(
                s,
                r#"<polygon class="iqr" data-kind="{kind}" points="{} {}" fill="{color}" fill-opacity="0.15" stroke="none"/>"#,
                upper.join(" "),
                lower.join(" ")
            );
        }
    }
    for c in &live {
        let color = kind_color(c.kind);
        let kind = c.kind.name();
        for (class, axis, v) in [
            (
                "median",
                &prob,
                (|p: &CurvePointRef| p.median) as fn(&CurvePointRef) -> f64,
            ),
            ("rank", &rank, |p: &CurvePointRef| p.rank_median),
            ("topk-rate", &rate, |p: &CurvePointRef| p.topk_rate),
        ] {
            let pts: Vec<(String, String)> = c
                .points
                .iter()
                .map(|p| (n(x(p.row)), n(axis.y(v(p)))))
                .collect();
            let line: Vec<String> = pts.iter().map(|(a, b)| format!("{a},{b}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline class="{class}" data-kind="{kind}" points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                line.join(" ")
            );
            for (cx, cy) in pts {
                let _ = write!(s, r#"<circle cx="{cx}" cy="{cy}" r="2.2" fill="{color}"/>"#);
            }
            s.push('\n');
        }
        // The onset, where there is one: a dashed line through all panels.
        if let Some(r) = c.onset_row {
            let _ = writeln!(
                s,
                r#"<line class="onset-line" data-kind="{kind}" x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="{color}" stroke-dasharray="2 3"/>"#,
                n(prob.y0),
                n(rate.y0 + PANEL_H),
                x = n(x(r))
            );
        }
    }

    // Legend, right of the panels: kind, prompts, onset row.
    let lx = LEFT + plot_w + 18.0;
    let mut ly = TOP + 8.0;
    let _ = writeln!(s, r#"<g id="legend">"#);
    for c in curves {
        let color = kind_color(c.kind);
        let prompts = c.points.first().map_or(0, |p| p.prompts);
        let label = match c.kind {
            CurveKind::Text => "text",
            CurveKind::Template => "template tail",
            CurveKind::Dummy => "dummy",
        };
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{label}</text>"#,
            n(lx),
            n(lx + 22.0),
            n(lx + 28.0),
            n(ly + 4.0),
            y = n(ly)
        );
        let onset = match (prompts, c.onset_row) {
            (0, _) => "no positions".to_string(),
            (_, Some(r)) => format!("onset: row {}", crate::grid::row_label(r, n_rows)),
            (_, None) => "onset: none".to_string(),
        };
        let _ = writeln!(
            s,
            r#"<text class="onset" data-kind="{}" x="{}" y="{}" fill="{GREY}" font-size="11">{}</text>"#,
            c.kind.name(),
            n(lx + 28.0),
            n(ly + 19.0),
            xml_escape(&onset)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{GREY}" font-size="11">{prompts} prompts</text>"#,
            n(lx + 28.0),
            n(ly + 33.0)
        );
        if let Some(peak) = c
            .points
            .iter()
            .max_by(|a, b| a.topk_rate.total_cmp(&b.topk_rate).then(b.row.cmp(&a.row)))
        {
            let _ = writeln!(
                s,
                r#"<text class="peak-rate" data-kind="{}" x="{}" y="{}" fill="{GREY}" font-size="11">top-{top_k} max {:.2} ({})</text>"#,
                c.kind.name(),
                n(lx + 28.0),
                n(ly + 47.0),
                peak.topk_rate,
                xml_escape(&peak.label)
            );
        }
        ly += 70.0;
    }
    let notes = [
        "text: the user's words".to_string(),
        "template tail: template".to_string(),
        "  tokens after the text".to_string(),
        String::new(),
        "onset: the first row".to_string(),
        format!("where the top-{top_k} rate").to_string(),
        "reaches 1/2 (dotted)".to_string(),
    ];
    for (i, t) in notes.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{GREY}" font-size="11" xml:space="preserve">{}</text>"#,
            n(lx),
            n(ly + 8.0 + 14.0 * i as f64),
            xml_escape(t)
        );
    }
    let _ = writeln!(s, "</g>\n</svg>");
    s
}

type CurvePointRef = super::summary::CurvePoint;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::summary::CurvePoint;

    #[test]
    fn ticks_label_output_and_avoid_crowding() {
        let t = x_ticks(31);
        assert_eq!(t.last().unwrap(), &(30, "output".to_string()));
        assert!(!t.iter().any(|(r, l)| *r == 30 && l == "30"));
        let t = x_ticks(19);
        let rows: Vec<usize> = t.iter().map(|(r, _)| *r).collect();
        assert_eq!(rows, [0, 5, 10, 15, 18]);
    }

    #[test]
    fn svg_parses_and_has_a_curve_per_kind() {
        let pts = |f: f64| {
            (0..19)
                .map(|r| CurvePoint {
                    row: r,
                    label: r.to_string(),
                    prompts: 3,
                    q1: f * 1e-6 * (r + 1) as f64,
                    median: f * 1e-5 * (r + 1) as f64,
                    q3: f * 1e-4 * (r + 1) as f64,
                    rank_q1: 10.0,
                    rank_median: 100.0 / (r + 1) as f64,
                    rank_q3: 3000.0,
                    topk_rate: r as f64 / 18.0,
                })
                .collect::<Vec<_>>()
        };
        let curves: Vec<Curve> = [CurveKind::Text, CurveKind::Template, CurveKind::Dummy]
            .iter()
            .enumerate()
            .map(|(i, &kind)| Curve {
                kind,
                points: pts(1.0 + i as f64),
                onset_row: Some(9),
                peak_median_row: Some(18),
            })
            .collect();
        let svg = render_svg(&curves, 19, 5, &["model: m <x> & y".into()]);
        let png = crate::render::render_png(&svg).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert_eq!(svg.matches("class=\"median\"").count(), 3);
        assert_eq!(svg.matches("class=\"rank\"").count(), 3);
        assert_eq!(svg.matches("class=\"onset-line\"").count(), 3);
        assert!(svg.contains("onset: row 9"));
        assert!(svg.contains("&lt;x&gt; &amp; y"));
    }
}
