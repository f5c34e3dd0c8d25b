//! PNG from the SVG, with resvg and the bundled font only (no system fonts).

use super::font::{fontdb, FONT_FAMILY};
use crate::{Error, Result};

/// PNG pixels per SVG unit. A cell centre `(x, y)` from [`super::layout`] is
/// at pixel `(x * PNG_SCALE, y * PNG_SCALE)`.
pub const PNG_SCALE: f32 = 1.5;

/// Rasterise an SVG (normally from [`super::render_svg`]) to PNG bytes.
pub fn render_png(svg: &str) -> Result<Vec<u8>> {
    let mut opt = usvg::Options {
        font_family: FONT_FAMILY.to_string(),
        ..usvg::Options::default()
    };
    opt.fontdb = fontdb();
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| Error::Output {
        what: "render: parse SVG".into(),
        source: e.into(),
    })?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(PNG_SCALE)
        .ok_or_else(|| Error::Render("figure size is zero".to_string()))?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).ok_or_else(|| {
        Error::Render(format!(
            "cannot allocate a {}x{} image",
            size.width(),
            size.height()
        ))
    })?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(PNG_SCALE, PNG_SCALE),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| Error::Output {
        what: "render: encode PNG".into(),
        source: e.into(),
    })
}
