//! Times `render_svg`, `render_png` and `render_html` for the seed case (the
//! SmolLM2 filler reference, 31 rows x 45 positions) and a synthetic
//! 1024-position grid. Release mode:
//!
//!     cargo run --release --example render_bench [-- OUT_DIR]
//!
//! With OUT_DIR, also writes `seed.{svg,png,html}` and `long.{svg,png,html}` there.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lensmap::render::{self, FigureOptions, OutputFormat};
use lensmap::LensGrid;

// The sample grids are test fixtures, not library API: shared with the tests.
#[path = "../tests/common/sample.rs"]
mod sample;

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.expect("n > 0"))
}

fn bench(name: &str, grid: &LensGrid, out: Option<&PathBuf>) {
    let opts = FigureOptions::default();
    let reps = if grid.n_positions() > 200 { 3 } else { 10 };
    let (t_svg, svg) = best_of(reps, || render::render_svg(grid, &opts).expect("svg"));
    let (t_png, png) = best_of(reps, || render::render_png(&svg).expect("png"));
    let (t_html, html) = best_of(reps, || render::render_html(grid, &opts).expect("html"));
    let total = t_svg + t_png + t_html;
    println!(
        "{name:>5}: {} rows x {} positions | svg {:7.1} ms ({:6} KiB) | png {:7.1} ms ({:6} KiB) | html {:7.1} ms ({:6} KiB) | total {:7.1} ms",
        grid.n_rows,
        grid.n_positions(),
        t_svg.as_secs_f64() * 1e3,
        svg.len() / 1024,
        t_png.as_secs_f64() * 1e3,
        png.len() / 1024,
        t_html.as_secs_f64() * 1e3,
        html.len() / 1024,
        total.as_secs_f64() * 1e3,
    );
    if let Some(dir) = out {
        let formats = [OutputFormat::Svg, OutputFormat::Png, OutputFormat::Html];
        let paths = render::write_outputs(grid, &dir.join(name), &formats, &opts).expect("write");
        for p in paths {
            println!("       wrote {}", p.display());
        }
    }
}

fn main() {
    let out = std::env::args().nth(1).map(PathBuf::from);
    let reference = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/reference/smollm2_filler.json"
    );
    let text = std::fs::read_to_string(reference).expect("read the SmolLM2 filler reference");
    let seed = sample::grid_from_reference_json(&text).expect("convert reference");
    bench("seed", &seed, out.as_ref());
    let long = sample::synthetic_grid(1024, 31);
    bench("long", &long, out.as_ref());
}
