//! The one bundled font (DejaVu Sans Mono, `assets/fonts/`), its metrics, and a
//! glyph-coverage check read straight from its `cmap` table.
//!
//! Every figure is laid out for this font and the PNG is drawn with it alone,
//! so a figure looks the same on every machine.

use std::sync::{Arc, OnceLock};

/// The TTF bytes, compiled into the binary.
pub const FONT_DATA: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

/// Family name the SVG asks for.
pub const FONT_FAMILY: &str = "DejaVu Sans Mono";

/// CSS `font-family` value used in SVG and HTML.
pub(crate) const FONT_STACK: &str = "'DejaVu Sans Mono', 'Menlo', 'Consolas', monospace";

/// Advance width of every glyph, in em (1233 / 2048 font units).
pub(crate) const ADVANCE_EM: f64 = 1233.0 / 2048.0;

/// Width of `chars` characters at `font_size`.
pub(crate) fn text_width(chars: usize, font_size: f64) -> f64 {
    chars as f64 * ADVANCE_EM * font_size
}

/// Sorted, disjoint, inclusive ranges of code points the font has a glyph for.
struct Coverage {
    ranges: Vec<(u32, u32)>,
}

fn coverage() -> &'static Coverage {
    static COVERAGE: OnceLock<Coverage> = OnceLock::new();
    COVERAGE.get_or_init(|| Coverage {
        ranges: parse_cmap(FONT_DATA).unwrap_or_else(|| vec![(0x20, 0x7e)]),
    })
}

/// Whether the bundled font draws `c` with a real glyph (not `.notdef`).
pub(crate) fn has_glyph(c: char) -> bool {
    let c = c as u32;
    let r = &coverage().ranges;
    r.binary_search_by(|&(lo, hi)| {
        if hi < c {
            std::cmp::Ordering::Less
        } else if lo > c {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    })
    .is_ok()
}

/// A font database holding only the bundled font, shared by every PNG render.
pub(crate) fn fontdb() -> Arc<usvg::fontdb::Database> {
    static DB: OnceLock<Arc<usvg::fontdb::Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = usvg::fontdb::Database::new();
        db.load_font_data(FONT_DATA.to_vec());
        db.set_monospace_family(FONT_FAMILY);
        db.set_sans_serif_family(FONT_FAMILY);
        db.set_serif_family(FONT_FAMILY);
        Arc::new(db)
    })
    .clone()
}

fn u16_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u16::from_be_bytes(d.get(o..o + 2)?.try_into().ok()?) as u32)
}

fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(o..o + 4)?.try_into().ok()?))
}

/// Code-point ranges mapped to a non-zero glyph, from a Unicode `cmap`
/// subtable of format 12 (preferred) or 4.
fn parse_cmap(font: &[u8]) -> Option<Vec<(u32, u32)>> {
    let num_tables = u16_at(font, 4)? as usize;
    let mut cmap = None;
    for i in 0..num_tables {
        let rec = 12 + 16 * i;
        if font.get(rec..rec + 4)? == b"cmap" {
            cmap = Some(u32_at(font, rec + 8)? as usize);
        }
    }
    let cmap = cmap?;
    let n_sub = u16_at(font, cmap + 2)? as usize;
    let (mut f4, mut f12) = (None, None);
    for i in 0..n_sub {
        let rec = cmap + 4 + 8 * i;
        let (platform, encoding) = (u16_at(font, rec)?, u16_at(font, rec + 2)?);
        let off = cmap + u32_at(font, rec + 4)? as usize;
        let unicode = platform == 0 || (platform == 3 && (encoding == 1 || encoding == 10));
        if !unicode {
            continue;
        }
        match u16_at(font, off)? {
            4 => f4 = f4.or(Some(off)),
            12 => f12 = f12.or(Some(off)),
            _ => {}
        }
    }
    let mut chars: Vec<(u32, u32)> = Vec::new();
    let mut push = |c: u32| match chars.last_mut() {
        Some((_, hi)) if *hi + 1 == c => *hi = c,
        _ => chars.push((c, c)),
    };
    if let Some(off) = f12 {
        let n = u32_at(font, off + 12)? as usize;
        let mut groups = Vec::with_capacity(n);
        for g in 0..n {
            let o = off + 16 + 12 * g;
            groups.push((u32_at(font, o)?, u32_at(font, o + 4)?, u32_at(font, o + 8)?));
        }
        groups.sort_unstable();
        for (start, end, glyph) in groups {
            for c in start..=end.min(0x10ffff) {
                if glyph + (c - start) != 0 {
                    push(c);
                }
            }
        }
    } else if let Some(off) = f4 {
        let seg_count = (u16_at(font, off + 6)? / 2) as usize;
        let ends = off + 14;
        let starts = ends + 2 * seg_count + 2;
        let deltas = starts + 2 * seg_count;
        let range_offsets = deltas + 2 * seg_count;
        for s in 0..seg_count {
            let end = u16_at(font, ends + 2 * s)?;
            let start = u16_at(font, starts + 2 * s)?;
            let delta = u16_at(font, deltas + 2 * s)?;
            let ro_pos = range_offsets + 2 * s;
            let ro = u16_at(font, ro_pos)? as usize;
            if start > end || start == 0xffff {
                continue;
            }
            for c in start..=end {
                let glyph = if ro == 0 {
                    (c + delta) & 0xffff
                } else {
                    let g = u16_at(font, ro_pos + ro + 2 * (c - start) as usize).unwrap_or(0);
                    if g == 0 {
                        0
                    } else {
                        (g + delta) & 0xffff
                    }
                };
                if glyph != 0 {
                    push(c);
                }
            }
        }
    } else {
        return None;
    }
    Some(chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_of_bundled_font() {
        for c in [
            'a', 'Z', '_', '<', '|', '\u{d7}', '\u{2026}', '\u{fffd}', '\u{25b2}', 'ж',
        ] {
            assert!(has_glyph(c), "{c:?} should be covered");
        }
        for c in ['中', '\u{1f600}', 'あ', '\u{0}'] {
            assert!(!has_glyph(c), "{c:?} should not be covered");
        }
    }
}
