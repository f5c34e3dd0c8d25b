//! `lensmap plot`'s input: a grid JSON, parsed and drawn as SVG.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(grid) = lensmap::LensGrid::from_json(text) {
        let _ = lensmap::render::render_svg(&grid, &lensmap::render::FigureOptions::default());
    }
});
