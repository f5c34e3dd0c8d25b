//! Static figure tests on real lens data: the SmolLM2 filler reference
//! (`shared/reference/smollm2_filler.json`, computed by HF transformers)
//! converted into a `LensGrid`, and a synthetic 1024-position grid.

use std::collections::HashMap;

use crate::common::sample;
use lensmap::grid::{LensGrid, TokenKind};
use lensmap::render::labels::token_label;
use lensmap::render::{
    self, colormap::StatScale, FigureOptions, OutputFormat, Rgb, Stat, PNG_SCALE,
};
use lensmap::Error;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference");

fn seed_grid() -> LensGrid {
    let path = format!("{REFERENCE}/smollm2_filler.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    sample::grid_from_reference_json(&text).expect("convert reference")
}

fn attr<'a>(n: &roxmltree::Node<'a, '_>, name: &str) -> &'a str {
    n.attribute(name)
        .unwrap_or_else(|| panic!("element without `{name}`"))
}

fn has_class(n: &roxmltree::Node, class: &str) -> bool {
    n.attribute("class")
        .is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

fn elements_with_class<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    class: &str,
) -> Vec<roxmltree::Node<'a, 'i>> {
    doc.descendants()
        .filter(|n| n.is_element() && has_class(n, class))
        .collect()
}

fn num(n: &roxmltree::Node, name: &str) -> usize {
    attr(n, name)
        .parse()
        .unwrap_or_else(|_| panic!("`{name}` is not a number"))
}

/// Text of a `<text>` element (all its text children).
fn text_of(n: &roxmltree::Node) -> String {
    n.descendants()
        .filter(|d| d.is_text())
        .map(|d| d.text().unwrap_or(""))
        .collect()
}

/// Independent implementation of matplotlib's RdBu_r (11 ColorBrewer points, linear).
fn rdbu_r_expected(t: f64) -> [f64; 3] {
    let pts = [
        0x053061, 0x2166ac, 0x4393c3, 0x92c5de, 0xd1e5f0, 0xf7f7f7, 0xfddbc7, 0xf4a582, 0xd6604d,
        0xb2182b, 0x67001f,
    ];
    let t = t.clamp(0.0, 1.0) * 10.0;
    let i = (t.floor() as usize).min(9);
    let f = t - i as f64;
    let ch = |c: u32, k: u32| ((c >> (16 - 8 * k)) & 0xff) as f64;
    [0, 1, 2].map(|k| ch(pts[i], k) + (ch(pts[i + 1], k) - ch(pts[i], k)) * f)
}

fn assert_close(got: Rgb, want: [f64; 3], what: &str) {
    let w = [want[0].round(), want[1].round(), want[2].round()];
    let g = [got.0 as f64, got.1 as f64, got.2 as f64];
    for k in 0..3 {
        assert!(
            (g[k] - w[k]).abs() <= 1.0,
            "{what}: got {got:?}, want {w:?} (within 1/255)"
        );
    }
}

#[test]
fn reference_grid_kinds_and_defaults() {
    let g = seed_grid();
    assert_eq!(g.n_rows, 31);
    assert_eq!(g.n_positions(), 45);
    let kinds: Vec<TokenKind> = g.tokens.iter().map(|t| t.kind).collect();
    assert!(
        kinds[..24].iter().all(|k| *k == TokenKind::Template),
        "system prompt is template"
    );
    assert!(
        kinds[24..31].iter().all(|k| *k == TokenKind::Text),
        "question words are text"
    );
    assert!(kinds[31..37].iter().all(|k| *k == TokenKind::Template));
    assert!(kinds[37..].iter().all(|k| *k == TokenKind::Dummy));
    // Default window: the template/dummy tail (31..45) plus 4 before it; zoom: first dummy.
    let lay = render::layout(&g, &FigureOptions::default()).unwrap();
    assert_eq!(lay.window, (27, 45));
    assert_eq!(lay.zoom, 37);
    assert!(!lay.merged());
}

#[test]
fn cell_count_is_rows_times_window() {
    let g = seed_grid();
    for (window, cols) in [(None, 18), (Some((10, 20)), 10), (Some((0, 45)), 45)] {
        let opts = FigureOptions {
            window,
            ..Default::default()
        };
        let svg = render::render_svg(&g, &opts).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let cells = elements_with_class(&doc, "cell");
        assert_eq!(cells.len(), 31 * cols, "window {window:?}");
        let (s, e) = window.unwrap_or((27, 45));
        let mut seen = std::collections::HashSet::new();
        for c in &cells {
            let (r, p) = (num(c, "data-row"), num(c, "data-pos"));
            assert!(
                r < 31 && p >= s && p < e,
                "cell ({r}, {p}) outside the window"
            );
            assert!(seen.insert((r, p)), "cell ({r}, {p}) drawn twice");
            // Every cell lies inside region B.
            assert!(c.ancestors().any(|a| a.attribute("id") == Some("region-b")));
        }
        let has_a = doc
            .descendants()
            .any(|n| n.attribute("id") == Some("region-a"));
        assert_eq!(
            has_a,
            window != Some((0, 45)),
            "region A only when B shows part of the sequence"
        );
    }
}

#[test]
fn short_prompt_merges_a_and_b() {
    let g = sample::synthetic_grid(30, 7);
    let lay = render::layout(&g, &FigureOptions::default()).unwrap();
    assert!(lay.merged());
    assert_eq!(lay.window, (0, 30));
    let svg = render::render_svg(&g, &FigureOptions::default()).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(elements_with_class(&doc, "cell").len(), 7 * 30);
    assert!(!doc
        .descendants()
        .any(|n| n.attribute("id") == Some("region-a")));
    assert!(doc
        .descendants()
        .any(|n| n.attribute("id") == Some("region-c")));
}

#[test]
fn sampled_cells_have_their_entropy_colour() {
    let g = seed_grid();
    let svg = render::render_svg(&g, &FigureOptions::default()).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let cells: HashMap<(usize, usize), Rgb> = elements_with_class(&doc, "cell")
        .iter()
        .map(|c| {
            (
                (num(c, "data-row"), num(c, "data-pos")),
                Rgb::parse(attr(c, "fill")).unwrap(),
            )
        })
        .collect();
    let texts: HashMap<(usize, usize), Rgb> = elements_with_class(&doc, "cell-text")
        .iter()
        .map(|c| {
            (
                (num(c, "data-row"), num(c, "data-pos")),
                Rgb::parse(attr(c, "fill")).unwrap(),
            )
        })
        .collect();
    let scale = StatScale::new(Stat::Entropy, &g);
    for (row, pos) in [(0, 27), (15, 37), (30, 44), (29, 32)] {
        let h = g.entropy[row][pos];
        let got = cells[&(row, pos)];
        assert_close(
            got,
            rdbu_r_expected(h / 10.0),
            &format!("cell ({row}, {pos}), entropy {h:.3}"),
        );
        assert_eq!(got, scale.color(Some(h)));
        // Text contrast: white on dark, black on light.
        let want_text = if got.luminance() < 0.179 {
            Rgb(255, 255, 255)
        } else {
            Rgb(0, 0, 0)
        };
        assert_eq!(
            texts[&(row, pos)],
            want_text,
            "text colour of ({row}, {pos})"
        );
    }
    // Both text colours occur in this figure.
    assert!(texts.values().any(|c| *c == Rgb(255, 255, 255)));
    assert!(texts.values().any(|c| *c == Rgb(0, 0, 0)));
    // The scale is fixed 0..10 and clips above.
    assert_eq!(scale.color(Some(25.0)), Rgb(0x67, 0x00, 0x1f));
    assert_eq!(scale.color(Some(0.0)), Rgb(0x05, 0x30, 0x61));
    assert_eq!(scale.color(Some(5.0)), Rgb(0xf7, 0xf7, 0xf7));
    let bar_title: Vec<String> = elements_with_class(&doc, "colorbar-title")
        .iter()
        .map(text_of)
        .collect();
    assert_eq!(bar_title, vec!["Entropy (nats)".to_string()]);
    assert_eq!(elements_with_class(&doc, "clip-marker").len(), 1);
}

#[test]
fn other_statistics_use_their_own_scale() {
    let g = seed_grid();
    // target-prob: the tracked " Canberra" (role target), Blues 0..1.
    let t = g.tracked.iter().find(|t| t.text == " Canberra").unwrap();
    let opts = FigureOptions {
        stat: Stat::TargetProb,
        ..Default::default()
    };
    let svg = render::render_svg(&g, &opts).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let blues = [
        0xf7fbffu32,
        0xdeebf7,
        0xc6dbef,
        0x9ecae1,
        0x6baed6,
        0x4292c6,
        0x2171b5,
        0x08519c,
        0x08306b,
    ];
    for c in elements_with_class(&doc, "cell") {
        let (r, p) = (num(&c, "data-row"), num(&c, "data-pos"));
        if (r, p) != (30, 44) && (r, p) != (20, 40) {
            continue;
        }
        let prob = t.cells[r][p].prob;
        let x = prob.clamp(0.0, 1.0) * 8.0;
        let i = (x.floor() as usize).min(7);
        let f = x - i as f64;
        let ch = |c: u32, k: u32| ((c >> (16 - 8 * k)) & 0xff) as f64;
        let want = [0, 1, 2].map(|k| ch(blues[i], k) + (ch(blues[i + 1], k) - ch(blues[i], k)) * f);
        assert_close(
            Rgb::parse(attr(&c, "fill")).unwrap(),
            want,
            &format!("target prob {prob} at ({r}, {p})"),
        );
    }
    let titles: Vec<String> = elements_with_class(&doc, "colorbar-title")
        .iter()
        .map(text_of)
        .collect();
    assert_eq!(titles, vec!["Target probability".to_string()]);

    // KL: fixed 0..10 on RdBu_r; the output row is exactly 0 (dark blue).
    let opts = FigureOptions {
        stat: Stat::Kl,
        ..Default::default()
    };
    let svg = render::render_svg(&g, &opts).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    for c in elements_with_class(&doc, "cell") {
        let (r, p) = (num(&c, "data-row"), num(&c, "data-pos"));
        let want = rdbu_r_expected(g.kl_to_final[r][p] / 10.0);
        assert_close(
            Rgb::parse(attr(&c, "fill")).unwrap(),
            want,
            &format!("KL at ({r}, {p})"),
        );
    }

    // Ranks: log scale 1..vocab, rank 1 darkest.
    let s = StatScale::new(Stat::TargetRank, &g);
    assert_eq!(s.color(Some(1.0)), Rgb(0x08, 0x30, 0x6b));
    assert_eq!(s.color(Some(49152.0)), Rgb(0xf7, 0xfb, 0xff));
    assert!((s.t(49152f64.sqrt()) - 0.5).abs() < 1e-9);
    // next-token-prob: the last position has no next token (grey).
    let opts = FigureOptions {
        stat: Stat::NextTokenProb,
        ..Default::default()
    };
    let svg = render::render_svg(&g, &opts).unwrap();
    assert!(svg.contains(r##"data-row="0" data-pos="44" "##));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let last = elements_with_class(&doc, "cell")
        .into_iter()
        .find(|c| num(c, "data-row") == 5 && num(c, "data-pos") == 44)
        .unwrap();
    assert_eq!(attr(&last, "fill"), render::colormap::MISSING.hex());
}

#[test]
fn labels_follow_truncation_and_underscore_rules() {
    let g = seed_grid();
    let svg = render::render_svg(&g, &FigureOptions::default()).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    // X labels: one per column, even for repeated tokens.
    let xl: Vec<(usize, String)> = elements_with_class(&doc, "xlabel")
        .iter()
        .map(|n| (num(n, "data-pos"), text_of(n)))
        .collect();
    assert_eq!(
        xl.iter().map(|x| x.0).collect::<Vec<_>>(),
        (27..45).collect::<Vec<_>>()
    );
    let by_pos: HashMap<usize, String> = xl.into_iter().collect();
    assert_eq!(by_pos[&27], "_capit...");
    assert_eq!(by_pos[&28], "_of");
    assert_eq!(by_pos[&29], "_Austr...");
    assert_eq!(by_pos[&31], "<|im_e...");
    assert_eq!(by_pos[&32], "\\n");
    assert_eq!(by_pos[&34], "ass");
    assert_eq!(by_pos[&35], "istant");
    assert_eq!((37..45).filter(|p| by_pos[p] == ".").count(), 8);
    // Cell text is the top-1 token under the same rules (pinned by the literal
    // spot values and unit rules below).
    let mut n = 0;
    for t in elements_with_class(&doc, "cell-text") {
        let (r, p) = (num(&t, "data-row"), num(&t, "data-pos"));
        assert_eq!(
            text_of(&t),
            token_label(&g.top1(r, p).unwrap().text),
            "cell ({r}, {p})"
        );
        n += 1;
    }
    assert_eq!(n, 31 * 18);
    // Spot values from the reference.
    let cell = |r: usize, p: usize| {
        elements_with_class(&doc, "cell-text")
            .into_iter()
            .find(|t| num(t, "data-row") == r && num(t, "data-pos") == p)
            .map(|t| text_of(&t))
            .unwrap()
    };
    assert_eq!(cell(30, 27), "_of");
    assert_eq!(cell(30, 37), "_Austr...");
    assert_eq!(cell(30, 28), "_France");
    // Escaping: special tokens appear escaped in the source, never raw.
    assert!(svg.contains("&lt;|im_e...") && !svg.contains("<|im"));
    // Unit rules (their one statement; `labels.rs` tests escaping and plain text).
    for (token, label) in [
        (" capital", "_capit..."),
        ("assistant", "assist..."),
        ("<|eot_id|>", "<|eot_..."),
        ("\u{120}Sydney", "_Sydney"),
        ("\u{2581}New", "_New"),
        ("\n", "\\n"),
        ("\n\n\n\n", "\\n\\n\\n..."),
        ("a\n\n\n\n", "a\\n\\n..."),
        ("", "\u{2205}"),
        ("\u{7}", "\\x07"),
        // Invisible characters and glyphs missing from the font are replaced.
        ("\u{200b}", "\u{fffd}"),
        ("中", "\u{fffd}"),
        ("東京", "\u{fffd}\u{fffd}"),
    ] {
        assert_eq!(token_label(token), label, "label of {token:?}");
    }
}

#[test]
fn template_and_dummy_columns_are_boxed() {
    let g = seed_grid();
    let svg = render::render_svg(&g, &FigureOptions::default()).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let boxes: HashMap<usize, String> = elements_with_class(&doc, "kind-box")
        .iter()
        .map(|b| (num(b, "data-pos"), attr(b, "class").to_string()))
        .collect();
    for pos in 27..45 {
        match g.tokens[pos].kind {
            TokenKind::Text => assert!(!boxes.contains_key(&pos), "text position {pos} boxed"),
            TokenKind::Template => assert!(boxes[&pos].contains("kind-template"), "pos {pos}"),
            TokenKind::Dummy => assert!(boxes[&pos].contains("kind-dummy"), "pos {pos}"),
        }
    }
    assert_eq!(boxes.len(), 14);
    for b in elements_with_class(&doc, "kind-box") {
        assert_eq!(attr(&b, "stroke"), "#1f5fbf", "boxed in blue");
    }
    let xk: Vec<(usize, String)> = elements_with_class(&doc, "xlabel")
        .iter()
        .map(|n| (num(n, "data-pos"), attr(n, "data-kind").to_string()))
        .collect();
    assert_eq!(xk.iter().filter(|x| x.1 == "dummy").count(), 8);
    assert_eq!(xk.iter().filter(|x| x.1 == "template").count(), 6);
    assert_eq!(elements_with_class(&doc, "dummy-bracket").len(), 1);
}

#[test]
fn zoom_counts_match_the_column() {
    let g = seed_grid();
    for zoom in [None, Some(40), Some(33)] {
        let opts = FigureOptions {
            zoom,
            ..Default::default()
        };
        let svg = render::render_svg(&g, &opts).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let z = zoom.unwrap_or(37);
        let col = doc
            .descendants()
            .find(|n| n.attribute("id") == Some("zoom-column"))
            .unwrap();
        assert_eq!(num(&col, "data-pos"), z);
        let mut want: HashMap<u32, usize> = HashMap::new();
        for r in 0..g.n_rows {
            *want.entry(g.top1(r, z).unwrap().id).or_default() += 1;
        }
        let shown: Vec<(u32, usize)> = elements_with_class(&doc, "zoom-count")
            .iter()
            .map(|c| {
                (
                    attr(c, "data-token-id").parse().unwrap(),
                    num(c, "data-count"),
                )
            })
            .collect();
        assert!(!shown.is_empty());
        for (id, count) in &shown {
            assert_eq!(want[id], *count, "count of token {id} in column {z}");
        }
        // Shown are the most frequent, in descending order.
        let mut sorted: Vec<usize> = want.values().copied().collect();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let counts: Vec<usize> = shown.iter().map(|s| s.1).collect();
        assert_eq!(counts, sorted[..counts.len()].to_vec());
        // One list row per lens row, each the top-1 of that row.
        let rows = elements_with_class(&doc, "zoom-row");
        assert_eq!(rows.len(), 31);
        for r in rows {
            let row = num(&r, "data-row");
            assert_eq!(
                attr(&r, "data-token-id").parse::<u32>().unwrap(),
                g.top1(row, z).unwrap().id
            );
            let p: f64 = attr(&r, "data-prob").parse().unwrap();
            assert!((p - g.top1(row, z).unwrap().prob).abs() < 1e-4);
        }
    }
    // The seed column: 8 rows predict " " (id of the space) and so on.
    let svg = render::render_svg(&g, &FigureOptions::default()).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let first = &elements_with_class(&doc, "zoom-count")[0];
    assert_eq!(num(first, "data-count"), 8);
    assert_eq!(attr(first, "data-label"), "_");
}

#[test]
fn png_pixels_match_cell_colours() {
    let g = seed_grid();
    let opts = FigureOptions::default();
    let lay = render::layout(&g, &opts).unwrap();
    let svg = render::render_svg(&g, &opts).unwrap();
    let png = render::render_png(&svg).unwrap();
    let pix = tiny_skia::Pixmap::decode_png(&png).expect("decode PNG");
    assert_eq!(pix.width(), (lay.width * PNG_SCALE as f64).round() as u32);
    assert_eq!(pix.height(), (lay.height * PNG_SCALE as f64).round() as u32);
    let at = |x: f64, y: f64| {
        let (px, py) = ((x * PNG_SCALE as f64) as u32, (y * PNG_SCALE as f64) as u32);
        let c = pix.pixel(px, py).unwrap().demultiply();
        Rgb(c.red(), c.green(), c.blue())
    };
    let scale = StatScale::new(Stat::Entropy, &g);
    for (row, pos) in [(0, 27), (15, 37), (30, 44)] {
        let r = lay.cell_rect(row, pos).unwrap();
        // Centre column, 2 units below the top edge: clear of the centred text.
        let got = at(r.center().0, r.y + 2.0);
        let want = rdbu_r_expected(g.entropy[row][pos] / 10.0);
        assert_close(got, want, &format!("PNG pixel of cell ({row}, {pos})"));
        assert_eq!(got.max_diff(scale.color(Some(g.entropy[row][pos]))), 0);
    }
    // Region A has no text: its cell centres are the cell colour.
    for (row, pos) in [(0, 0), (20, 10), (30, 44)] {
        let r = lay.overview_cell_rect(row, pos).unwrap();
        let (cx, cy) = r.center();
        assert_close(
            at(cx, cy),
            rdbu_r_expected(g.entropy[row][pos] / 10.0),
            &format!("A cell ({row}, {pos})"),
        );
    }
    // Text is drawn with the bundled font: the title area has dark pixels.
    let mut dark = 0;
    for y in (lay.title_y - 14.0) as u32..(lay.title_y + 2.0) as u32 {
        for x in 16..300u32 {
            let c = at(x as f64, y as f64);
            if c.0 < 100 && c.1 < 100 && c.2 < 100 {
                dark += 1;
            }
        }
    }
    assert!(dark > 200, "title glyphs not drawn ({dark} dark pixels)");
}

#[test]
fn long_prompt_stays_readable() {
    let g = sample::synthetic_grid(1024, 31);
    let opts = FigureOptions::default();
    let lay = render::layout(&g, &opts).unwrap();
    let a = lay.overview.expect("region A for 1024 positions");
    assert_eq!(a.n_cols, 1024);
    assert!(a.cell_w < 3.0, "A compresses: {} per position", a.cell_w);
    assert!(lay.width < 3000.0, "figure width {}", lay.width);
    let (s, e) = lay.window;
    assert_eq!(e, 1024);
    assert!(e - s <= 32 && e - s >= 12);
    // B and C keep full-size cells and labels.
    assert!(lay.detail.cell_w >= 9.0 * 0.6 * 9.5);
    let svg = render::render_svg(&g, &opts).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(elements_with_class(&doc, "cell").len(), 31 * (e - s));
    let region_a = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("region-a"))
        .unwrap();
    assert!(
        !region_a.descendants().any(|n| has_class(&n, "cell-text")),
        "no cell text in the compressed overview"
    );
    // Labels in A are sparse position ticks, not 1024 token labels.
    let a_texts = region_a
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .count();
    assert!(a_texts < 60, "{a_texts} texts in A");
    let png = render::render_png(&svg).unwrap();
    let pix = tiny_skia::Pixmap::decode_png(&png).unwrap();
    let r = lay.cell_rect(10, 1020).unwrap();
    let c = pix
        .pixel(
            (r.center().0 * PNG_SCALE as f64) as u32,
            ((r.y + 2.0) * PNG_SCALE as f64) as u32,
        )
        .unwrap()
        .demultiply();
    assert_close(
        Rgb(c.red(), c.green(), c.blue()),
        rdbu_r_expected(g.entropy[10][1020] / 10.0),
        "long B cell",
    );
}

#[test]
fn bad_window_zoom_and_stat_are_invalid_options() {
    let g = seed_grid();
    let cases = [
        FigureOptions {
            window: Some((40, 50)),
            ..Default::default()
        },
        FigureOptions {
            window: Some((20, 20)),
            ..Default::default()
        },
        FigureOptions {
            zoom: Some(45),
            ..Default::default()
        },
        FigureOptions {
            window: Some((0, 10)),
            zoom: Some(20),
            ..Default::default()
        },
    ];
    for opts in cases {
        match render::render_svg(&g, &opts) {
            Err(Error::InvalidOption(msg)) => {
                assert!(!msg.contains('\n') && !msg.is_empty(), "{msg}")
            }
            other => panic!("{opts:?}: expected InvalidOption, got {other:?}"),
        }
    }
    let mut no_target = g.clone();
    no_target
        .tracked
        .retain(|t| t.role != lensmap::grid::TrackedRole::Target);
    let opts = FigureOptions {
        stat: Stat::TargetProb,
        ..Default::default()
    };
    for drawn in [
        render::render_svg(&no_target, &opts).map(drop),
        render::render_html(&no_target, &opts).map(drop),
    ] {
        assert!(
            matches!(
                &drawn,
                Err(Error::BadOption { option: lensmap::OptionName::Stat, reason })
                    if reason.contains("the statistic `target-prob`")
            ),
            "{drawn:?}"
        );
    }
    // An explicit zoom outside the default window moves the window to it.
    let lay = render::layout(
        &g,
        &FigureOptions {
            zoom: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(lay.window, (3, 21), "default width (18), moved to the zoom");
    assert_eq!(lay.zoom, 5);
    assert!(matches!(
        "nope".parse::<Stat>(),
        Err(Error::InvalidOption(_))
    ));
    assert_eq!(
        "next-token-prob".parse::<Stat>().unwrap(),
        Stat::NextTokenProb
    );
    assert_eq!("html".parse::<OutputFormat>().unwrap(), OutputFormat::Html);
}

#[test]
fn title_and_subtitle() {
    let g = seed_grid();
    let svg = render::render_svg(&g, &FigureOptions::default()).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let title = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("title"))
        .unwrap();
    assert_eq!(text_of(&title), "Rehearsal at \"dummy tokens\"");
    let subs: Vec<String> = elements_with_class(&doc, "subtitle")
        .iter()
        .map(text_of)
        .collect();
    assert!(
        subs[0].contains("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{subs:?}"
    );
    assert!(
        subs[0].contains("What is the capital of Australia?"),
        "{subs:?}"
    );
    assert!(
        subs[1].contains("The capital of Australia is Canberra."),
        "{subs:?}"
    );
    let opts = FigureOptions {
        title: Some("A & B <c>".into()),
        model_label: "m.gguf".into(),
        prompt_label: "Hi".into(),
        ..Default::default()
    };
    let svg = render::render_svg(&g, &opts).unwrap();
    assert!(svg.contains("A &amp; B &lt;c&gt;"));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let title = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("title"))
        .unwrap();
    assert_eq!(text_of(&title), "A & B <c>");
}

#[test]
fn write_outputs_writes_every_format() {
    let g = seed_grid();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("nested/deeper/fig");
    let formats = [
        OutputFormat::Json,
        OutputFormat::Svg,
        OutputFormat::Png,
        OutputFormat::Html,
    ];
    let paths = render::write_outputs(&g, &base, &formats, &FigureOptions::default()).unwrap();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["fig.json", "fig.svg", "fig.png", "fig.html"]);
    let json = std::fs::read_to_string(&paths[0]).unwrap();
    assert_eq!(
        LensGrid::from_json(&json).unwrap(),
        g,
        "JSON round-trips exactly"
    );
    let svg = std::fs::read_to_string(&paths[1]).unwrap();
    assert_eq!(
        svg,
        render::render_svg(&g, &FigureOptions::default()).unwrap()
    );
    let png = std::fs::read(&paths[2]).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let html = std::fs::read_to_string(&paths[3]).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // A dotted base name keeps its dots.
    let paths = render::write_outputs(
        &g,
        &dir.path().join("run.v2"),
        &[OutputFormat::Svg],
        &FigureOptions::default(),
    )
    .unwrap();
    assert_eq!(paths[0].file_name().unwrap(), "run.v2.svg");
}

#[test]
fn html_is_self_contained_and_embeds_the_grid() {
    let mut g = seed_grid();
    // A hostile token must not end the script element.
    g.tokens[5].text = "</script><script>alert(1)</script>".into();
    let html = render::render_html(&g, &FigureOptions::default()).unwrap();
    assert_eq!(
        html.matches("</script>").count(),
        4,
        "only the page's own four script elements close"
    );
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "fetch(",
        "XMLHttpRequest",
    ] {
        assert!(!html.contains(external), "page loads `{external}`");
    }
    assert!(
        !html.contains("<script src") && !html.contains("<link"),
        "no external resources"
    );
    assert!(html.contains(render::LENSVIEW_JS) && html.contains(render::LENSVIEW_CSS));
    // The embedded grid parses back to the grid (floats to 5 significant digits).
    let start = html.find(r#"id="lensmap-grid">"#).unwrap() + r#"id="lensmap-grid">"#.len();
    let end = start + html[start..].find("</script>").unwrap();
    let back = LensGrid::from_json(&html[start..end]).unwrap();
    assert_eq!(back.tokens, g.tokens);
    assert_eq!(back.n_rows, g.n_rows);
    for r in 0..g.n_rows {
        for p in 0..g.n_positions() {
            assert!(
                (back.entropy[r][p] - g.entropy[r][p]).abs()
                    <= 1e-4 * g.entropy[r][p].abs().max(1e-3)
            );
            assert_eq!(back.topk[r][p][0].id, g.topk[r][p][0].id);
        }
    }
}

/// The view spec's zoom tables (what `lensview.js` reads when the window
/// moves) give `resolve_zoom`'s answer for every window of both sample grids.
#[test]
fn view_zoom_rule_matches_resolve_zoom_on_every_window() {
    use lensmap::render::view::ZoomRule;
    for grid in [seed_grid(), sample::synthetic_grid(60, 7)] {
        let rule = ZoomRule::new(&grid);
        let n = grid.n_positions();
        for s in 0..n {
            for e in s + 1..=n {
                let want = render::resolve_zoom(&grid, &FigureOptions::default(), (s, e)).unwrap();
                assert_eq!(rule.zoom(s, e), want, "window {s}..{e}");
            }
        }
    }
}
