//! `lensmap run --out` and `lensmap plot`: the figure drawn from saved JSON,
//! without the model, is the figure the run drew; `--format` picks files.

use crate::common::{lensmap_cmd, model_file, output_ok};

fn lensmap(args: &[&str]) {
    output_ok(lensmap_cmd().args(args));
}

#[test]
fn plot_redraws_the_run_figure_and_format_picks_files() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("figs/australia");
    let model = model_file("SmolLM2-135M-Instruct.Q4_1.gguf");
    lensmap(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "What is the capital of Australia?",
        "--dummy",
        "8",
        "--generate",
        "8",
        "--out",
        base.to_str().unwrap(),
        "-q",
    ]);
    for ext in ["json", "svg", "png", "html"] {
        let p = base.with_extension(ext);
        assert!(
            std::fs::metadata(&p)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "{} missing or empty",
            p.display()
        );
    }
    let svg = std::fs::read_to_string(base.with_extension("svg")).unwrap();
    assert!(
        svg.contains("Rehearsal at &quot;dummy tokens&quot;")
            || svg.contains("Rehearsal at \"dummy tokens\"")
    );
    assert!(
        svg.contains("Canberra"),
        "the subtitle names the greedy answer"
    );

    // Redraw from JSON only: the same SVG, and only the requested format.
    let redraw = dir.path().join("redraw");
    lensmap(&[
        "plot",
        base.with_extension("json").to_str().unwrap(),
        "--out",
        redraw.to_str().unwrap(),
        "--format",
        "svg",
    ]);
    assert_eq!(
        std::fs::read_to_string(redraw.with_extension("svg")).unwrap(),
        svg
    );
    assert!(!redraw.with_extension("png").exists());
    assert!(!redraw.with_extension("html").exists());

    // Another statistic and title change the drawing.
    let kl = dir.path().join("kl");
    lensmap(&[
        "plot",
        base.with_extension("json").to_str().unwrap(),
        "--out",
        kl.to_str().unwrap(),
        "--format",
        "svg",
        "--stat",
        "kl",
        "--title",
        "KL to final",
    ]);
    let kl_svg = std::fs::read_to_string(kl.with_extension("svg")).unwrap();
    assert!(kl_svg.contains("KL to final"));
    assert_ne!(kl_svg, svg);
}
