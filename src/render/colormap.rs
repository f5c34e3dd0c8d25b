//! Colour maps and the fixed scale of every statistic.
//!
//! The interactive view does not recompute them: `render::view` sends it every
//! cell's colour and the palette stops of its colour bar.

use super::Stat;
use crate::grid::{LensGrid, TrackedRole};
use crate::{Error, OptionName, Result};

/// An sRGB colour, 8 bits per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// `#rrggbb`.
    pub fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }

    /// Parse `#rrggbb` or `rgb(r, g, b)`.
    pub fn parse(s: &str) -> Option<Rgb> {
        let s = s.trim();
        if let Some(h) = s.strip_prefix('#') {
            if h.len() != 6 {
                return None;
            }
            let v = u32::from_str_radix(h, 16).ok()?;
            return Some(Rgb((v >> 16) as u8, (v >> 8) as u8, v as u8));
        }
        let inner = s.strip_prefix("rgb(")?.strip_suffix(')')?;
        let mut it = inner.split(',').map(|p| p.trim().parse::<u8>().ok());
        let c = Rgb(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(c)
    }

    /// WCAG relative luminance, 0 (black) to 1 (white).
    pub fn luminance(self) -> f64 {
        fn lin(c: u8) -> f64 {
            let c = c as f64 / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        }
        0.2126 * lin(self.0) + 0.7152 * lin(self.1) + 0.0722 * lin(self.2)
    }

    /// Black or white, whichever contrasts more with this background.
    pub fn text_color(self) -> Rgb {
        let l = self.luminance();
        // Contrast with white: 1.05/(l+.05); with black: (l+.05)/.05.
        if 1.05 / (l + 0.05) > (l + 0.05) / 0.05 {
            Rgb(255, 255, 255)
        } else {
            Rgb(0, 0, 0)
        }
    }

    /// Largest channel difference to another colour.
    pub fn max_diff(self, o: Rgb) -> u8 {
        let d = |a: u8, b: u8| a.abs_diff(b);
        d(self.0, o.0).max(d(self.1, o.1)).max(d(self.2, o.2))
    }
}

/// matplotlib `RdBu` (ColorBrewer, 11 classes), red to blue.
pub(crate) const RDBU: [&str; 11] = [
    "#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de",
    "#4393c3", "#2166ac", "#053061",
];

/// matplotlib `Blues` (ColorBrewer, 9 classes), white to dark blue.
pub(crate) const BLUES: [&str; 9] = [
    "#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c",
    "#08306b",
];

/// Colour for cells without a value (the next token at the last position).
pub const MISSING: Rgb = Rgb(0xbd, 0xbd, 0xbd);

/// A colour map: control points spaced evenly on `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Palette {
    /// `RdBu_r`: 0 is dark blue, 0.5 white, 1 dark red.
    RdBuR,
    /// `Blues`: 0 is white, 1 dark blue.
    Blues,
    /// `Blues_r`: 0 is dark blue, 1 white.
    BluesR,
}

impl Palette {
    /// Control points from `t = 0` to `t = 1`.
    pub fn stops(self) -> Vec<Rgb> {
        let p = |s: &&str| Rgb::parse(s).expect("palette constant");
        match self {
            Palette::RdBuR => RDBU.iter().rev().map(p).collect(),
            Palette::Blues => BLUES.iter().map(p).collect(),
            Palette::BluesR => BLUES.iter().rev().map(p).collect(),
        }
    }

    /// The colour at `t` (clamped to `0..=1`), linear between control points.
    pub fn at(self, t: f64) -> Rgb {
        let stops = self.stops();
        let [r, g, b] = interpolate(&stops, t);
        Rgb(round8(r), round8(g), round8(b))
    }
}

fn round8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Linear interpolation between evenly spaced stops, in 0..255 float channels.
fn interpolate(stops: &[Rgb], t: f64) -> [f64; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let x = t * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |a: u8, b: u8| a as f64 + (b as f64 - a as f64) * f;
    [mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2)]
}

/// `RdBu_r` at `t`.
pub fn rdbu_r(t: f64) -> Rgb {
    Palette::RdBuR.at(t)
}

/// The fixed scale of one statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct StatScale {
    pub stat: Stat,
    /// Value at the bottom of the colour bar.
    pub lo: f64,
    /// Value at the top; larger values are clipped.
    pub hi: f64,
    /// Log scale (ranks).
    pub log: bool,
    pub palette: Palette,
    /// Colour-bar title.
    pub title: String,
    /// Values can exceed `hi`: the colour bar shows a clip marker.
    pub clips: bool,
    /// The largest possible value, when known and above `hi` (`ln |V|` for entropy).
    pub max_possible: Option<f64>,
}

/// Entropy scale top, in nats.
const ENTROPY_MAX: f64 = 10.0;
/// KL scale top, in nats.
const KL_MAX: f64 = 10.0;

impl StatScale {
    /// The scale of `stat` for this grid (ranks run up to the vocab size).
    pub fn new(stat: Stat, grid: &LensGrid) -> StatScale {
        let vocab = grid.model.vocab_size.max(2) as f64;
        match stat {
            Stat::Entropy => StatScale {
                stat,
                lo: 0.0,
                hi: ENTROPY_MAX,
                log: false,
                palette: Palette::RdBuR,
                title: "Entropy (nats)".into(),
                clips: true,
                max_possible: (vocab.ln() > ENTROPY_MAX).then(|| vocab.ln()),
            },
            Stat::Kl => StatScale {
                stat,
                lo: 0.0,
                hi: KL_MAX,
                log: false,
                palette: Palette::RdBuR,
                title: "KL to final (nats)".into(),
                clips: true,
                max_possible: None,
            },
            Stat::TargetProb => StatScale {
                stat,
                lo: 0.0,
                hi: 1.0,
                log: false,
                palette: Palette::Blues,
                title: "Target probability".into(),
                clips: false,
                max_possible: None,
            },
            Stat::NextTokenProb => StatScale {
                stat,
                lo: 0.0,
                hi: 1.0,
                log: false,
                palette: Palette::Blues,
                title: "Next-token probability".into(),
                clips: false,
                max_possible: None,
            },
            Stat::TargetRank => StatScale {
                stat,
                lo: 1.0,
                hi: vocab,
                log: true,
                palette: Palette::BluesR,
                title: "Target rank (log)".into(),
                clips: false,
                max_possible: None,
            },
        }
    }

    /// Position of a value on the colour bar, `0..=1` (clipped).
    pub fn t(&self, v: f64) -> f64 {
        let t = if self.log {
            let v = v.max(self.lo);
            (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        t.clamp(0.0, 1.0)
    }

    /// The colour of a value; [`MISSING`] for none or NaN.
    pub fn color(&self, v: Option<f64>) -> Rgb {
        match v {
            Some(v) if !v.is_nan() => self.palette.at(self.t(v)),
            _ => MISSING,
        }
    }

    /// Colour-bar ticks: value and label.
    pub fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            let mut out = vec![];
            let mut v = 1.0;
            while v <= self.hi {
                let label = match v as u64 {
                    1 => "1".to_string(),
                    10 => "10".to_string(),
                    100 => "100".to_string(),
                    n => format!("1e{}", (n as f64).log10().round() as i32),
                };
                out.push((v, label));
                v *= 10.0;
            }
            out
        } else if self.hi <= 1.0 {
            (0..=5)
                .map(|i| (i as f64 * 0.2, format!("{:.1}", i as f64 * 0.2)))
                .collect()
        } else {
            (0..=5)
                .map(|i| (i as f64 * 2.0, format!("{}", i * 2)))
                .collect()
        }
    }
}

/// The value of `stat` in one cell; `None` where the grid has none (next token
/// at the last position, or a short row in a malformed grid).
pub fn cell_value(grid: &LensGrid, stat: Stat, row: usize, pos: usize) -> Option<f64> {
    let g = |v: &Vec<Vec<f64>>| v.get(row).and_then(|r| r.get(pos)).copied();
    match stat {
        Stat::Entropy => g(&grid.entropy),
        Stat::Kl => g(&grid.kl_to_final),
        Stat::NextTokenProb => grid
            .next_token
            .get(row)
            .and_then(|r| r.get(pos))
            .copied()
            .flatten()
            .map(|p| p.prob),
        Stat::TargetProb | Stat::TargetRank => {
            let t = grid
                .tracked
                .iter()
                .find(|t| t.role == TrackedRole::Target)?;
            let c = t.cells.get(row)?.get(pos)?;
            if c.prob.is_nan() {
                return None; // outside `--positions`
            }
            Some(if stat == Stat::TargetProb {
                c.prob
            } else {
                c.rank as f64
            })
        }
    }
}

/// Whether a cell has no value because logits were not finite
/// (`--allow-nonfinite`): figures hatch it, never colour it from the scale.
/// For `kl` a cell is also invalid when its position's output row is, since
/// the KL has no reference there.
pub(crate) fn cell_invalid(grid: &LensGrid, stat: Stat, row: usize, pos: usize) -> bool {
    grid.is_invalid(row, pos)
        || (stat == Stat::Kl && grid.is_invalid(grid.n_rows.saturating_sub(1), pos))
}

/// Check that `stat` can be drawn for this grid (target stats need a target).
pub(crate) fn check_stat(grid: &LensGrid, stat: Stat) -> Result<()> {
    if matches!(stat, Stat::TargetProb | Stat::TargetRank)
        && !grid.tracked.iter().any(|t| t.role == TrackedRole::Target)
    {
        return Err(Error::option(
            OptionName::Stat,
            format!(
                "the statistic `{}` needs a tracked token with role target",
                stat.as_str()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdbu_r_control_points() {
        assert_eq!(rdbu_r(0.0), Rgb(0x05, 0x30, 0x61));
        assert_eq!(rdbu_r(0.5), Rgb(0xf7, 0xf7, 0xf7));
        assert_eq!(rdbu_r(1.0), Rgb(0x67, 0x00, 0x1f));
        assert_eq!(rdbu_r(2.0), Rgb(0x67, 0x00, 0x1f));
        // Halfway between #053061 and #2166ac.
        assert_eq!(rdbu_r(0.05), Rgb(0x13, 0x4b, 0x87));
        assert_eq!(Rgb(0, 0, 0).text_color(), Rgb(255, 255, 255));
        assert_eq!(Rgb(0xf7, 0xf7, 0xf7).text_color(), Rgb(0, 0, 0));
        assert_eq!(Rgb::parse("rgb(5, 48, 97)"), Some(Rgb(5, 48, 97)));
    }
}
