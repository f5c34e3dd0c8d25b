//! The interactive HTML page in a real browser: headless Chromium loads the
//! file via file://, and we check what its JavaScript drew.
//!
//! Needs Debian's `chromium` package (`/usr/bin/chromium`, or set `CHROMIUM`).
//! Without it the test fails: CI installs it.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::chromium::{file_url, unescape_html, Browser};
use crate::common::sample;
use lensmap::render::{self, colormap::StatScale, FigureOptions, Rgb, Stat};
use lensmap::LensGrid;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference");

fn seed_grid() -> LensGrid {
    let path = format!("{REFERENCE}/smollm2_filler.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    sample::grid_from_reference_json(&text).expect("convert reference")
}

/// The page's scripts are synchronous: a short virtual-time budget suffices.
const BROWSER: Browser = Browser {
    virtual_time_ms: 5000,
    window: (1600, 1200),
    timeout: Duration::from_secs(120),
};

/// Script added to a copy of the page: exercises the view like a user
/// (hover, click, statistic switch) and writes what it saw into `<pre id="selftest">`.
const SELF_TEST: &str = r#"
<script>
(function () {
  var out = { errors: window.__lvErrors };
  function cell(r, p) { return document.querySelector('rect.lv-cell[data-row="' + r + '"][data-pos="' + p + '"]'); }
  out.cells = document.querySelectorAll('rect.lv-cell').length;
  out.fills = {};
  out.rects = {};
  out.top1 = {};
  [[0, 27], [15, 37], [30, 44], [30, 37]].forEach(function (rp) {
    var c = cell(rp[0], rp[1]), k = rp[0] + ',' + rp[1];
    if (!c) return;
    out.fills[k] = c.getAttribute('fill');
    out.top1[k] = c.getAttribute('data-top1');
    var b = c.getBoundingClientRect();
    out.rects[k] = [b.left + window.scrollX, b.top + window.scrollY, b.width, b.height];
  });
  out.kindBoxes = Array.prototype.map.call(document.querySelectorAll('rect.lv-kind'), function (b) {
    return [+b.getAttribute('data-pos'), b.getAttribute('class')];
  });
  var c = cell(30, 37);
  c.dispatchEvent(new MouseEvent('mouseover', { bubbles: true, clientX: 200, clientY: 200 }));
  var tip = document.querySelector('.lv-tooltip');
  out.tip = tip.textContent;
  out.tipShown = tip.style.display;
  cell(3, 40).dispatchEvent(new MouseEvent('click', { bubbles: true }));
  out.zoomTitle = document.querySelector('.lv-zoomtitle').textContent;
  out.counts = Array.prototype.map.call(document.querySelectorAll('.lv-zoomcount'), function (g) {
    return [+g.getAttribute('data-token-id'), +g.getAttribute('data-count')];
  });
  var sel = document.querySelector('select.lv-stat');
  out.stats = Array.prototype.map.call(sel.options, function (o) { return o.value; });
  sel.value = 'kl';
  sel.dispatchEvent(new Event('change'));
  out.klFill = cell(15, 37).getAttribute('fill');
  var slider = document.querySelector('input.lv-slider');
  slider.value = 0;
  slider.dispatchEvent(new Event('input'));
  out.afterSlide = Array.prototype.map.call(document.querySelectorAll('rect.lv-cell[data-row="0"]'), function (e) {
    return +e.getAttribute('data-pos');
  });
  // The view's API: getState after the interactions above; a second view
  // with onChange, then destroyed.
  var v = window.lensmapView;
  out.state = v.getState();
  var host = document.createElement('div');
  document.body.appendChild(host);
  var changes = [];
  var v2 = LensView.mount(host, v.grid, Object.assign({}, v.spec, { onChange: function (s) { changes.push(s); } }));
  out.v2Start = v2.getState();
  out.tipsWithTwo = document.querySelectorAll('body > .lv-tooltip').length;
  v2.setZoom(3);
  v2.setZoom(3);
  v2.setStat('kl');
  out.changes = changes.slice();
  var copy = v2.getState();
  copy.window[0] = 99;
  out.stateIsACopy = v2.getState().window[0] !== 99;
  v2.destroy();
  out.tipsAfterDestroy = document.querySelectorAll('body > .lv-tooltip').length;
  out.hostChildren = host.children.length;
  v2.setZoom(5);
  out.changesAfterDestroy = changes.length;
  window.__lvReport(out);
})();
</script>
"#;

/// Collects script errors, and gives the self-tests `__lvReport(out)`, which
/// writes `out` as JSON into `<pre id="selftest">`.
const ERROR_HOOK: &str = "<script>window.__lvErrors = []; window.addEventListener('error', function (e) { window.__lvErrors.push(String(e.message)); });\nwindow.__lvReport = function (out) { var pre = document.createElement('pre'); pre.id = 'selftest'; pre.textContent = JSON.stringify(out); document.body.appendChild(pre); };</script>\n";

fn hex(s: &str) -> Rgb {
    Rgb::parse(s).unwrap_or_else(|| panic!("not a colour: {s}"))
}

#[test]
fn html_page_renders_and_reacts_in_chromium() {
    let grid = seed_grid();
    let opts = FigureOptions::default();
    let html = render::render_html(&grid, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("seed.html");
    std::fs::write(&page, &html).unwrap();
    let test_page = dir.path().join("seed_selftest.html");
    let with_hook = html.replacen("<head>\n", &format!("<head>\n{ERROR_HOOK}"), 1);
    std::fs::write(
        &test_page,
        with_hook.replace("</body>", &format!("{SELF_TEST}</body>")),
    )
    .unwrap();

    let dom = BROWSER.dump_dom(&file_url(&test_page), &dir.path().join("profile1"));
    let start = dom.find("<pre id=\"selftest\">").unwrap_or_else(|| {
        panic!(
            "self-test output missing: the page's script did not run\n{}",
            &dom[..dom.len().min(2000)]
        )
    }) + "<pre id=\"selftest\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&unescape_html(&dom[start..end])).expect("self-test JSON");

    assert_eq!(out["errors"], serde_json::json!([]), "JavaScript errors");
    // B drew every cell of the default window (27..45) with the entropy colours.
    assert_eq!(out["cells"], 31 * 18);
    let scale = StatScale::new(Stat::Entropy, &grid);
    for (r, p) in [(0, 27), (15, 37), (30, 44)] {
        let got = hex(out["fills"][format!("{r},{p}")].as_str().unwrap());
        let want = scale.color(Some(grid.entropy[r][p]));
        assert!(
            got.max_diff(want) <= 1,
            "cell ({r},{p}): browser {got:?}, figure {want:?}"
        );
    }
    // Hover data: the cell carries its top-1 token and the tooltip lists it with its probability.
    let top = grid.top1(30, 37).unwrap();
    assert_eq!(
        out["top1"]["30,37"],
        render::labels::token_display(&top.text)
    );
    let tip = out["tip"].as_str().unwrap();
    assert_eq!(out["tipShown"], "block");
    assert!(
        tip.contains("layer output") && tip.contains("pos 37"),
        "tooltip: {tip}"
    );
    assert!(
        tip.contains(&format!(
            "1. {}  {:.3}",
            render::labels::token_display(&top.text),
            top.prob
        )),
        "tooltip: {tip}"
    );
    assert!(
        tip.contains(&format!("entropy {:.3} nats", grid.entropy[30][37])),
        "tooltip: {tip}"
    );
    assert!(
        tip.contains(&format!("KL {:.3} nats", grid.kl_to_final[30][37])),
        "tooltip: {tip}"
    );
    let nt = grid.next_token[30][37].unwrap();
    assert!(tip.contains(&format!("rank {}", nt.rank)), "tooltip: {tip}");
    // Clicking column 40 opened the zoom panel on it, with the right counts.
    assert!(
        out["zoomTitle"].as_str().unwrap().contains("pos 40"),
        "{}",
        out["zoomTitle"]
    );
    let mut want: HashMap<u64, u64> = HashMap::new();
    for r in 0..grid.n_rows {
        *want.entry(grid.top1(r, 40).unwrap().id as u64).or_default() += 1;
    }
    let counts = out["counts"].as_array().unwrap();
    assert!(!counts.is_empty());
    for c in counts {
        assert_eq!(
            want[&c[0].as_u64().unwrap()],
            c[1].as_u64().unwrap(),
            "count of {c}"
        );
    }
    // Template and dummy columns are marked.
    let kinds: Vec<(u64, String)> = out["kindBoxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k[0].as_u64().unwrap(), k[1].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(kinds.len(), 14);
    assert!(kinds
        .iter()
        .filter(|k| k.1.contains("lv-kind-dummy"))
        .map(|k| k.0)
        .eq(37..45));
    // The statistic switch recolours with the KL scale; target stats are offered (a target is tracked).
    assert_eq!(
        out["stats"],
        serde_json::json!([
            "entropy",
            "kl",
            "target-prob",
            "target-rank",
            "next-token-prob"
        ])
    );
    let kl = StatScale::new(Stat::Kl, &grid).color(Some(grid.kl_to_final[15][37]));
    assert!(hex(out["klFill"].as_str().unwrap()).max_diff(kl) <= 1);
    // The window slider moved B to the start of the sequence.
    let after: Vec<u64> = out["afterSlide"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(after, (0..18).collect::<Vec<u64>>());
    // getState: the statistic and window chosen above, a zoom inside the window.
    let state = &out["state"];
    assert_eq!(state["stat"], "kl");
    assert_eq!(state["window"], serde_json::json!([0, 18]));
    let zoom = state["zoom"].as_u64().expect("zoom");
    assert!(zoom < 18, "zoom {zoom} outside the window");
    // onChange: once per real change (a repeated setZoom is none), with the state.
    let start = &out["v2Start"];
    assert_eq!(
        out["changes"],
        serde_json::json!([
            { "stat": start["stat"], "window": start["window"], "zoom": 3 },
            { "stat": "kl", "window": start["window"], "zoom": 3 },
        ])
    );
    assert_eq!(out["stateIsACopy"], true);
    // destroy: the second view's tooltip and elements are gone, and it stays quiet.
    assert_eq!(out["tipsWithTwo"], 2);
    assert_eq!(out["tipsAfterDestroy"], 1);
    assert_eq!(out["hostChildren"], 0);
    assert_eq!(out["changesAfterDestroy"], 2);

    // Painted pixels: a screenshot of the unmodified page has the cell colours
    // where the DOM put the cells.
    let shot = dir.path().join("shot.png");
    BROWSER.screenshot(&file_url(&page), &shot, &dir.path().join("profile2"));
    let pix = tiny_skia::Pixmap::load_png(&shot).expect("screenshot PNG");
    for (r, p) in [(0, 27), (15, 37), (30, 44)] {
        let rect = &out["rects"][format!("{r},{p}")];
        let (x, y, w) = (
            rect[0].as_f64().unwrap(),
            rect[1].as_f64().unwrap(),
            rect[2].as_f64().unwrap(),
        );
        let (px, py) = ((x + w / 2.0) as u32, (y + 2.5) as u32);
        let c = pix
            .pixel(px, py)
            .unwrap_or_else(|| panic!("({px},{py}) outside the screenshot"))
            .demultiply();
        let got = Rgb(c.red(), c.green(), c.blue());
        let want = scale.color(Some(grid.entropy[r][p]));
        assert!(
            got.max_diff(want) <= 2,
            "screenshot pixel of ({r},{p}) at ({px},{py}): {got:?}, want {want:?}"
        );
    }
}

/// Script added to a page that shows every position: for every statistic it
/// reads back every cell of B (fill, text colour, label, top-1), every pixel
/// of the overview canvas, the row labels, the colour bar, and the zoom the
/// view picks after moving the window to each start (width 5).
const PARITY_TEST: &str = r#"
<script>
(function () {
  var out = { errors: window.__lvErrors, stats: {}, zooms: [] };
  var v = window.lensmapView, n = v.grid.tokens.length, rows = v.grid.n_rows;
  v.spec.stats.forEach(function (s) {
    v.setStat(s.key);
    var cells = {};
    document.querySelectorAll('rect.lv-cell').forEach(function (c) {
      cells[c.getAttribute('data-row') + ',' + c.getAttribute('data-pos')] = [c.getAttribute('fill'), c.getAttribute('data-top1')];
    });
    document.querySelectorAll('text.lv-cell-text').forEach(function (t) {
      var k = t.getAttribute('data-row') + ',' + t.getAttribute('data-pos');
      cells[k].push(t.getAttribute('fill'), t.textContent);
    });
    var img = document.querySelector('canvas.lv-ov-canvas').getContext('2d').getImageData(0, 0, n, rows).data;
    var overview = [];
    for (var r = 0; r < rows; r++) {
      for (var p = 0; p < n; p++) {
        var o = ((rows - 1 - r) * n + p) * 4;
        overview.push([img[o], img[o + 1], img[o + 2]]);
      }
    }
    var ticks = Array.prototype.map.call(document.querySelectorAll('.lv-svg text.lv-muted'), function (t) { return t.textContent; });
    out.stats[s.key] = { cells: cells, overview: overview, ticks: ticks,
      title: document.querySelector('.lv-bartitle').textContent };
  });
  out.rowLabels = Array.prototype.map.call(document.querySelectorAll('.lv-svg > text.lv-rowlab'), function (t) { return t.textContent; });
  out.xlabels = Array.prototype.map.call(document.querySelectorAll('text.lv-xlabel'), function (t) { return t.textContent; });
  for (var s = 0; s + 5 <= n; s++) {
    v.setWindow(0, n);
    v.setZoom(s === 0 ? n - 1 : 0);
    v.setWindow(s, s + 5);
    out.zooms.push(v.getState().zoom);
  }
  window.__lvReport(out);
})();
</script>
"#;

/// Run a page with `script` added and return what the script wrote into `<pre id="selftest">`.
fn page_selftest(html: &str, script: &str, dir: &std::path::Path) -> serde_json::Value {
    let page = dir.join("selftest.html");
    let with_hook = html.replacen("<head>\n", &format!("<head>\n{ERROR_HOOK}"), 1);
    std::fs::write(
        &page,
        with_hook.replace("</body>", &format!("{script}</body>")),
    )
    .unwrap();
    let dom = BROWSER.dump_dom(&file_url(&page), &dir.join("profile"));
    let start = dom
        .find("<pre id=\"selftest\">")
        .unwrap_or_else(|| panic!("self-test output missing\n{}", &dom[..dom.len().min(2000)]))
        + "<pre id=\"selftest\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    serde_json::from_str(&unescape_html(&dom[start..end])).expect("self-test JSON")
}

/// The browser draws every cell of every statistic exactly as the static
/// figure colours and labels it (one source of view rules: the page draws
/// from the view spec Rust resolves; see "A house the next engineer can
/// change", part 5), and picks the static figure's zoom for every window.
fn check_view_parity(grid: &LensGrid) {
    use render::colormap::cell_value;
    use render::labels::{token_display, token_label};
    let n = grid.n_positions();
    let opts = FigureOptions {
        window: Some((0, n)),
        ..FigureOptions::labelled(grid)
    };
    let html = render::render_html(grid, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = page_selftest(&html, PARITY_TEST, dir.path());
    assert_eq!(out["errors"], serde_json::json!([]), "JavaScript errors");
    let spec = render::view_spec(grid, &opts).unwrap();
    let mut checked = 0;
    for sv in &spec.stats {
        let stat: Stat = sv.key.parse().unwrap();
        let scale = StatScale::new(stat, grid);
        let got = &out["stats"][sv.key];
        assert_eq!(got["title"], scale.title.as_str());
        let ticks: Vec<String> = scale.ticks().into_iter().map(|t| t.1).collect();
        for t in &ticks {
            assert!(
                got["ticks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == t.as_str()),
                "{}: tick {t} missing: {}",
                sv.key,
                got["ticks"]
            );
        }
        for r in 0..grid.n_rows {
            for p in 0..n {
                let want = scale.color(cell_value(grid, stat, r, p));
                let cell = &got["cells"][format!("{r},{p}")];
                let top = grid.topk[r][p].first();
                let (want_label, want_top1) = match top {
                    Some(t) => (token_label(&t.text), token_display(&t.text)),
                    None => (String::new(), String::new()),
                };
                let want_text = want.text_color().hex();
                assert_eq!(
                    (
                        cell[0].as_str().unwrap(),
                        cell[1].as_str().unwrap(),
                        cell[2].as_str().unwrap(),
                        cell[3].as_str().unwrap()
                    ),
                    (
                        want.hex().as_str(),
                        want_top1.as_str(),
                        want_text.as_str(),
                        want_label.as_str()
                    ),
                    "{} cell ({r},{p}): browser vs figure",
                    sv.key
                );
                let px = &got["overview"][r * n + p];
                let px = Rgb(
                    px[0].as_u64().unwrap() as u8,
                    px[1].as_u64().unwrap() as u8,
                    px[2].as_u64().unwrap() as u8,
                );
                assert_eq!(px, want, "{} overview pixel ({r},{p})", sv.key);
                checked += 1;
            }
        }
    }
    eprintln!(
        "{} statistics, {checked} cells equal in B and in the overview",
        spec.stats.len()
    );
    let rows: Vec<String> = (0..grid.n_rows).rev().map(|r| grid.row_label(r)).collect();
    let got_rows: Vec<String> = out["rowLabels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    // Drawn bottom row last: the DOM lists row 0 first.
    assert_eq!(got_rows.iter().rev().cloned().collect::<Vec<_>>(), rows);
    let xlabels: Vec<String> = grid.tokens.iter().map(|t| token_label(&t.text)).collect();
    assert_eq!(out["xlabels"], serde_json::json!(xlabels));
    let zooms: Vec<usize> = (0..=n - 5)
        .map(|s| render::resolve_zoom(grid, &FigureOptions::default(), (s, s + 5)).unwrap())
        .collect();
    assert_eq!(
        out["zooms"],
        serde_json::json!(zooms),
        "default zoom per window"
    );
}

#[test]
fn html_view_draws_every_cell_as_the_figure_seed_grid() {
    check_view_parity(&seed_grid());
}

/// A longer grid (60 positions, template, text and dummy runs, odd tokens
/// such as `&`, `<b>` and CJK).
#[test]
fn html_view_draws_every_cell_as_the_figure_synthetic_grid() {
    check_view_parity(&sample::synthetic_grid(60, 7));
}
