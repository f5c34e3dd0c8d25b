//! The interactive HTML page: one self-contained file (no network), the grid
//! embedded as JSON next to its [`ViewSpec`](super::ViewSpec) (every rule the view draws by),
//! drawn by `assets/lensview.js`, the same script the `lensmap serve` page uses.

use super::labels::xml_escape;
use super::view::view_spec;
use super::{FigureOptions, DEFAULT_TITLE};
use crate::grid::LensGrid;
use crate::{Error, Result};

/// The viewer script: `LensView.mount(element, gridJson, options)`.
pub const LENSVIEW_JS: &str = include_str!("assets/lensview.js");
/// The viewer's styles.
pub const LENSVIEW_CSS: &str = include_str!("assets/lensview.css");

/// JSON made safe inside `<script>`: `<`, `>`, `&` and the JS line
/// separators are written as `\uXXXX` escapes (they only occur in strings).
fn script_safe_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Significant digits of the probabilities and statistics embedded in the page
/// (the tooltip shows three).
const EMBED_DIGITS: usize = 5;

fn round_floats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(num) if !num.is_u64() && !num.is_i64() => {
            if let Some(x) = num.as_f64() {
                let r: f64 = format!("{:.*e}", EMBED_DIGITS - 1, x).parse().unwrap_or(x);
                if let Some(nn) = serde_json::Number::from_f64(r) {
                    *num = nn;
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(round_floats),
        serde_json::Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// The grid as JSON for embedding: floats rounded to [`EMBED_DIGITS`]
/// significant digits (the file is a view, `--format json` keeps full precision).
fn embedded_grid_json(grid: &LensGrid) -> Result<String> {
    let mut v = serde_json::to_value(grid).map_err(|source| Error::Serialize {
        what: "the grid",
        source,
    })?;
    round_floats(&mut v);
    Ok(v.to_string())
}

/// The page's view for `LensView.mount`, as JSON: the [`ViewSpec`](super::ViewSpec) with
/// window and zoom resolved as the static figure resolves them.
pub fn view_spec_json(grid: &LensGrid, opts: &FigureOptions) -> Result<String> {
    let spec = view_spec(grid, opts)?;
    serde_json::to_string(&spec).map_err(|e| Error::Render(format!("view to JSON: {e}")))
}

/// Draw the interactive page.
pub fn render_html(grid: &LensGrid, opts: &FigureOptions) -> Result<String> {
    let options = view_spec_json(grid, opts)?;
    let grid_json = embedded_grid_json(grid)?;
    let title = opts
        .title
        .clone()
        .unwrap_or_else(|| DEFAULT_TITLE.to_string());
    let mut s = String::with_capacity(grid_json.len() + LENSVIEW_JS.len() + 4096);
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    s.push_str(&format!(
        "<title>{} \u{2014} {}</title>\n",
        xml_escape(&title),
        xml_escape(&grid.model.file)
    ));
    s.push_str("<style>\n");
    s.push_str(LENSVIEW_CSS);
    s.push_str("</style>\n</head>\n<body>\n<div id=\"lensview\"></div>\n");
    s.push_str("<script type=\"application/json\" id=\"lensmap-grid\">");
    s.push_str(&script_safe_json(&grid_json));
    s.push_str("</script>\n<script type=\"application/json\" id=\"lensmap-options\">");
    s.push_str(&script_safe_json(&options));
    s.push_str("</script>\n<script>\n");
    s.push_str(LENSVIEW_JS);
    s.push_str(
        "</script>\n<script>\nvar lensmapView = LensView.mount(document.getElementById('lensview'),\n  \
         JSON.parse(document.getElementById('lensmap-grid').textContent),\n  \
         JSON.parse(document.getElementById('lensmap-options').textContent));\n</script>\n</body>\n</html>\n",
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_script_safe() {
        for a in [LENSVIEW_JS, LENSVIEW_CSS] {
            let lower = a.to_ascii_lowercase();
            assert!(
                !lower.contains("</script")
                    && !lower.contains("<!--")
                    && !lower.contains("</style")
            );
        }
        let j = script_safe_json(r#"{"t":"</script><b>&"}"#);
        assert_eq!(j, r#"{"t":"\u003c/script\u003e\u003cb\u003e\u0026"}"#);
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["t"], "</script><b>&");
    }
}
