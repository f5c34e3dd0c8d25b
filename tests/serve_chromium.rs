//! The `lensmap serve` page in a real browser: headless Chromium opens the
//! page with URL parameters that fill the prompt box, submit, and hover a
//! cell once the grid is drawn (see `src/serve/assets/app.js`); we check the
//! DOM it dumps (coloured cells, the tooltip's top-k) and a screenshot.
//!
//! Needs Debian's `chromium` (`/usr/bin/chromium`, or set `CHROMIUM`) and
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf`. Without Chromium the test fails.
//! `LENSMAP_UPDATE_SCREENSHOT=1` also writes the screenshot to `docs/serve.png`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::chromium::{chromium, unescape_html, Browser};
use lensmap::model::Precision;
use lensmap::render::colormap::StatScale;
use lensmap::render::{Rgb, Stat};
use lensmap::run::Session;
use lensmap::serve::{self, ServeConfig};
use lensmap::LensGrid;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);
const SEED: &str = "What is the capital of Australia?";
/// The hovered cell: a dummy position in a late layer, where the answer shows.
const HOVER: (usize, usize) = (27, 40);

/// Virtual time only runs while the page is idle, so the lens request (real
/// time) is waited for within the budget.
const BROWSER: Browser = Browser {
    virtual_time_ms: 60000,
    window: (1500, 1180),
    timeout: Duration::from_secs(180),
};

/// The grid the page will show, straight from the API.
fn api_grid(addr: SocketAddr) -> LensGrid {
    let body = serde_json::json!({ "prompt": SEED, "dummy": 8, "generate": 8 }).to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /api/lens HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw[..split])
    );
    serde_json::from_slice(&raw[split + 4..]).expect("grid JSON")
}

/// `name="value"` inside one tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')?;
    Some(&tag[i..i + j])
}

/// Every `<rect class="lv-cell" ...>` as (row, pos, fill).
fn cells(dom: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<rect class=\"lv-cell\"") {
        let tag_end = rest[i..].find('>').unwrap();
        let tag = &rest[i..i + tag_end];
        out.push((
            attr(tag, "data-row").unwrap().parse().unwrap(),
            attr(tag, "data-pos").unwrap().parse().unwrap(),
            attr(tag, "fill").unwrap_or("").to_string(),
        ));
        rest = &rest[i + tag_end..];
    }
    out
}

/// The tooltip `<div class="lv-tooltip" ...>TEXT</div>`: (tag, text).
fn tooltip(dom: &str) -> (String, String) {
    let i = dom
        .find("<div class=\"lv-tooltip\"")
        .unwrap_or_else(|| panic!("no tooltip element in the page"));
    let open_end = i + dom[i..].find('>').unwrap();
    let close = open_end + dom[open_end..].find("</div>").unwrap();
    (
        dom[i..open_end].to_string(),
        unescape_html(&dom[open_end + 1..close]),
    )
}

/// A token as the viewer shows it (`lensview.js` `display`), for plain tokens.
fn display(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' ' | '\u{120}' | '\u{2581}' => "_".to_string(),
            '\n' => "\\n".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn page_url(addr: SocketAddr, hover: (usize, usize)) -> String {
    format!(
        "http://{addr}/?prompt=What%20is%20the%20capital%20of%20Australia%3F&dummy=8&generate=8&autorun=1&hover={},{}",
        hover.0, hover.1
    )
}

#[test]
fn serve_page_runs_a_prompt_and_shows_top_k_in_chromium() {
    let chromium_path = chromium(); // fail first, and clearly, without a browser
    assert!(
        Path::new(MODEL).exists(),
        "{MODEL} is missing: run `scripts/fetch-models`"
    );
    let session = Arc::new(Session::open(MODEL, Precision::Auto, None).expect("load SmolLM2"));
    let server = serve::start(ServeConfig::new(vec![session])).expect("start server");
    let addr = server.local_addr();
    let grid = api_grid(addr);
    let dir = tempfile::tempdir().unwrap();
    eprintln!("chromium: {}", chromium_path.display());

    // 1. The DOM after typing, submitting, drawing and hovering.
    let dom = BROWSER.dump_dom(&page_url(addr, HOVER), &dir.path().join("p1"));
    let state = dom
        .find(" data-state=\"")
        .map(|i| &dom[i + 13..i + 13 + dom[i + 13..].find('"').unwrap()]);
    assert_eq!(
        state,
        Some("done"),
        "the page did not finish a run; status: {:?}",
        dom.find("id=\"status\"")
            .map(|i| &dom[i..(i + 300).min(dom.len())])
    );
    assert!(
        dom.contains("What is the capital of Australia?"),
        "the prompt box was not filled"
    );

    // Coloured cells, each with the colour of its entropy.
    let cells = cells(&dom);
    let window: HashSet<usize> = cells.iter().map(|c| c.1).collect();
    assert_eq!(
        cells.len(),
        grid.n_rows * window.len(),
        "one cell per row and column"
    );
    assert!(window.len() >= 12, "only {} columns drawn", window.len());
    assert!(window.contains(&HOVER.1));
    let scale = StatScale::new(Stat::Entropy, &grid);
    let mut colours = HashSet::new();
    for (r, p, fill) in &cells {
        let got =
            Rgb::parse(fill).unwrap_or_else(|| panic!("cell {r},{p} has no colour: `{fill}`"));
        assert_ne!(got, Rgb(255, 255, 255), "cell {r},{p} is white");
        let want = scale.color(Some(grid.entropy[*r][*p]));
        assert!(
            got.max_diff(want) <= 1,
            "cell {r},{p}: {fill} but its entropy gives {}",
            want.hex()
        );
        colours.insert(fill.clone());
    }
    assert!(
        colours.len() >= 20,
        "only {} distinct cell colours",
        colours.len()
    );

    // The hovered cell's tooltip: shown, for that cell, listing its top-k.
    let (tag, text) = tooltip(&dom);
    assert!(tag.contains("display: block"), "tooltip hidden: {tag}");
    assert_eq!(attr(&tag, "data-row"), Some(HOVER.0.to_string().as_str()));
    assert_eq!(attr(&tag, "data-pos"), Some(HOVER.1.to_string().as_str()));
    let top = &grid.topk[HOVER.0][HOVER.1];
    assert_eq!(top.len(), 5);
    for (i, t) in top.iter().enumerate() {
        let line = format!("{}. {}  ", i + 1, display(&t.text));
        assert!(text.contains(&line), "tooltip lacks `{line}`:\n{text}");
    }
    assert!(
        text.starts_with(&format!("layer {} \u{b7} pos {}", HOVER.0, HOVER.1)),
        "{text}"
    );
    eprintln!("tooltip:\n{text}");

    // 2. A screenshot of the same state.
    let shot = dir.path().join("serve.png");
    BROWSER.screenshot(&page_url(addr, HOVER), &shot, &dir.path().join("p2"));
    let png = std::fs::read(&shot).expect("screenshot written");
    let pix = tiny_skia::Pixmap::decode_png(&png).expect("screenshot is a PNG");
    assert_eq!((pix.width(), pix.height()), (1500, 1180));
    let (mut blue, mut tip) = (0usize, 0usize);
    for p in pix.pixels() {
        let (r, g, b) = (p.red() as i32, p.green() as i32, p.blue() as i32);
        if b > r + 60 && b > g + 20 {
            blue += 1; // low-entropy cells
        }
        if (r, g, b) == (255, 255, 244) {
            tip += 1; // the tooltip's background
        }
    }
    assert!(
        blue > 100_000,
        "the heatmap is missing from the screenshot ({blue} blue pixels)"
    );
    assert!(
        tip > 5_000,
        "the tooltip is missing from the screenshot ({tip} pixels)"
    );
    if std::env::var_os("LENSMAP_UPDATE_SCREENSHOT").is_some() {
        let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/serve.png");
        std::fs::copy(&shot, &dest).unwrap();
        eprintln!("wrote {}", dest.display());
    }
    server.shutdown().unwrap();
}
