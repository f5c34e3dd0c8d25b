//! Loading Hugging Face checkpoints beyond the happy path of `tiny_fixtures`:
//! GGUF → HF conversion (SmolLM2, Gemma 3) giving the GGUF's own lens,
//! sharded and prefix-less checkpoints, both config.json layouts, the HF
//! cache layout, `info`, and one-line errors for broken inputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::*;
use lensmap::lens::{lens_of_ids, LensQuery};
use lensmap::model::arch::{config_from_hf, config_to_hf};
use lensmap::model::hf::HfConfig;
use lensmap::model::locate::{resolve_in, ModelLocation};
use lensmap::model::{Checkpoint, Model, Precision};
use lensmap::Error;
use safetensors::SafeTensors;

fn tiny(name: &str) -> PathBuf {
    reference_dir().join("tiny").join(name)
}

fn tiny_ids(name: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(tiny(name).join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    ids(&v["input_ids"])
}

fn lens(model: &Model, ids: &[u32]) -> LensCells {
    LensCells::of_grid(&lens_of_ids(model, ids, &LensQuery::top(5)).unwrap())
}

/// Compare two lenses after printing the per-row differences. Returns
/// (max |Δentropy|, max |ΔKL| / max(1, KL)): KL to the final row reaches
/// 200 nats in early rows of a real model, where float32 noise in the final
/// distribution alone moves it by ~1e-6 of its size.
fn compare(what: &str, a: &LensCells, b: &LensCells) -> (f64, f64) {
    report_rows(&format!("{what} entropy"), &a.entropy, &b.entropy);
    report_rows(&format!("{what} KL"), &a.kl, &b.kl);
    let (h, hr, hp) = max_abs_diff(&a.entropy, &b.entropy);
    let (kl, kr, kp) = max_abs_diff(&a.kl, &b.kl);
    let scaled: Vec<Vec<f64>> =
        a.kl.iter()
            .zip(&b.kl)
            .map(|(x, y)| {
                x.iter()
                    .zip(y)
                    .map(|(x, y)| (x - y).abs() / y.max(1.0))
                    .collect()
            })
            .collect();
    let zeros: Vec<Vec<f64>> = scaled.iter().map(|r| vec![0.0; r.len()]).collect();
    let (rel, rr, rp) = max_abs_diff(&scaled, &zeros);
    eprintln!(
        "{what}: max |Δentropy| {h:.2e} (row {hr} pos {hp}), max |ΔKL| {kl:.2e} (row {kr} pos {kp}, KL {:.1}), \
         max |ΔKL|/max(1, KL) {rel:.2e} (row {rr} pos {rp})",
        b.kl[kr][kp]
    );
    assert_eq!(a.top1, b.top1, "{what}: top-1 differs");
    (h, rel)
}

/// The error loading `dir` gives.
fn load_err(dir: &Path) -> Error {
    match Checkpoint::open(dir).and_then(|c| c.load(Precision::F32)) {
        Ok(_) => panic!("`{}` loaded", dir.display()),
        Err(e) => e,
    }
}

/// A rewritten copy of fixture `name` at `dir` must give exactly its lens.
fn assert_same_lens(name: &str, dir: &Path) {
    let ids = tiny_ids(name);
    let copy = Checkpoint::open(dir)
        .and_then(|c| c.load(Precision::F32))
        .unwrap();
    let original = Checkpoint::open(tiny(name))
        .and_then(|c| c.load(Precision::F32))
        .unwrap();
    let what = format!("{name} rewritten vs original");
    let (h, kl) = compare(&what, &lens(&copy, &ids), &lens(&original, &ids));
    assert_eq!((h, kl), (0.0, 0.0), "{what}");
}

/// A one-line error message (what `main` prints after `error: `).
fn one_line(e: &Error) -> String {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    msg
}

/// Copy a fixture's files, rewriting `model.safetensors` through `rename`
/// (`None` drops a tensor) and `config.json` through `edit`.
fn rewrite_fixture(
    name: &str,
    dst: &Path,
    rename: impl Fn(&str) -> Option<String>,
    edit: impl Fn(&mut serde_json::Value),
) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny(name).join(f), dst.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny(name).join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dst.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(tiny(name).join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| rename(&n).map(|n| (n, t)))
        .collect();
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        None,
        &dst.join("model.safetensors"),
    )
    .unwrap();
}

// --- GGUF → HF conversion ---------------------------------------------------------

/// A GGUF model converted into a temporary HF directory, both loaded in f32,
/// with the lens of each on the reference's input ids.
struct Conversion {
    out: tempfile::TempDir,
    gguf: Checkpoint,
    from_gguf: Model,
    from_hf: Model,
    reference: serde_json::Value,
    ids: Vec<u32>,
}

fn convert(model: &str, reference_name: &str) -> Conversion {
    let reference = reference(reference_name);
    let ids = ids(&reference["input_ids"]);
    let gguf = model_file(model);
    let out = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let converted = lensmap::convert::to_safetensors(&gguf, out.path()).unwrap();
    eprintln!(
        "{model}: converted {} tensors, {} MB in {:.1}s; skipped {:?}",
        converted.tensors,
        converted.bytes >> 20,
        t.elapsed().as_secs_f64(),
        converted.skipped
    );
    assert!(converted.skipped.is_empty());
    let gguf = Checkpoint::open(&gguf).unwrap();
    let from_gguf = gguf.load(Precision::F32).unwrap();
    let from_hf = Checkpoint::open(out.path())
        .and_then(|c| c.load(Precision::F32))
        .unwrap();
    // The same model, up to how RoPE pairs are stored and norm gains written.
    let mut expected = from_gguf.cfg.clone();
    expected.rope.as_mut().unwrap().style = from_hf.cfg.rope.as_ref().unwrap().style;
    expected.norm_weight_offset = from_hf.cfg.norm_weight_offset;
    assert_eq!(from_hf.cfg, expected, "{model}: config read back");
    Conversion {
        out,
        gguf,
        from_gguf,
        from_hf,
        reference,
        ids,
    }
}

/// SmolLM2 (Llama, interleaved-permuted q/k in GGUF) converted to an HF
/// directory gives the GGUF's own lens, and transformers' within the usual tolerance.
#[test]
fn convert_smollm2_matches_gguf() {
    let c = convert("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2_filler.json");
    let a = lens(&c.from_hf, &c.ids);
    // Measured 5.7e-5 nats and 1.9e-5 (summation order of the f32 copies).
    let (h, kl) = compare("smollm2 hf vs gguf", &a, &lens(&c.from_gguf, &c.ids));
    assert!(h <= 1e-4 && kl <= 4e-5, "{h:.2e} {kl:.2e}");
    // And against transformers within the GGUF's own bounds (`engine_reference`).
    let (max_h, max_kl) = SMOLLM2_F32_TOL;
    compare_cells(&a, &c.reference, 1e-3).assert_within(
        "smollm2 hf vs transformers",
        max_h,
        max_kl,
    );

    // The tokenizer files round-trip: same ids, same specials and template.
    let tok_gguf = lensmap::tokenize::TextTokenizer::from_checkpoint(&c.gguf).unwrap();
    let tok_hf = lensmap::tokenize::TextTokenizer::from_hf_dir(c.out.path()).unwrap();
    let text = c.reference["prompt_text"].as_str().unwrap();
    let encoded = tok_hf.encode(text).unwrap().ids;
    assert_eq!(encoded, tok_gguf.encode(text).unwrap().ids);
    // The reference appends filler tokens after the rendered prompt.
    assert!(c.ids.starts_with(&encoded));
    assert_eq!(tok_hf.bos(), tok_gguf.bos());
    assert_eq!(tok_hf.eos(), tok_gguf.eos());
    assert_eq!(tok_hf.add_bos(), tok_gguf.add_bos());
    assert_eq!(
        tok_hf.chat_template().map(|t| t.0),
        tok_gguf.chat_template().map(|t| t.0)
    );

    let loc = resolve_in(c.out.path().to_str().unwrap(), &[]).unwrap();
    let info = lensmap::info::describe(&loc).unwrap();
    eprintln!("{info}");
    assert_eq!(
        (info.arch.as_str(), info.n_layers, info.dtype.as_str()),
        ("llama", 30, "F32 100%")
    );
}

/// Gemma 3 (norms stored `1 + w` in GGUF, `w` in HF) converts too.
#[test]
fn convert_gemma3_matches_gguf() {
    let c = convert("gemma-3-270m-q4_k_m.gguf", "gemma3_filler.json");
    assert_eq!(
        (
            c.from_gguf.cfg.norm_weight_offset,
            c.from_hf.cfg.norm_weight_offset
        ),
        (0.0, 1.0)
    );
    let (h, kl) = compare(
        "gemma3 hf vs gguf",
        &lens(&c.from_hf, &c.ids),
        &lens(&c.from_gguf, &c.ids),
    );
    assert!(h <= 1e-4 && kl <= 1e-4);
}

/// Writing a config and reading it back is the identity, for every family
/// lensmap can write.
#[test]
fn config_json_round_trips() {
    let dirs = std::fs::read_dir(reference_dir().join("tiny")).unwrap();
    let mut names: Vec<String> = dirs
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| tiny(n).join("config.json").is_file())
        .collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in names.iter().map(String::as_str) {
        let model_cfg = Checkpoint::open(tiny(name))
            .and_then(|c| c.load(Precision::F32))
            .unwrap()
            .cfg;
        let json = match config_to_hf(&model_cfg) {
            Ok(j) => j,
            Err(e) => {
                assert_eq!(name, "gpt2", "{name}: {e}");
                continue;
            }
        };
        let raw = HfConfig::parse(&json.to_string()).unwrap();
        assert_eq!(
            config_from_hf(&raw, !model_cfg.tied_embeddings).unwrap(),
            model_cfg,
            "{name}"
        );
    }
}

// --- checkpoint layouts --------------------------------------------------------------

/// Two shards and an index give the same model as the single file.
#[test]
fn sharded_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_fixture("mistral", dir.path(), |n| Some(n.to_string()), |_| {});
    // Split by layer: layer 0 and the embeddings in one file, the rest in another.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut shards: [Vec<(String, safetensors::tensor::TensorView)>; 2] = [vec![], vec![]];
    let mut weight_map = HashMap::new();
    for (name, t) in st.tensors() {
        let i = usize::from(name.contains("layers.") && !name.contains("layers.0."));
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        weight_map.insert(name.clone(), file);
        shards[i].push((name, t));
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = dir
            .path()
            .join(format!("model-0000{}-of-00002.safetensors", i + 1));
        safetensors::serialize_to_file(shard.iter().map(|(n, t)| (n.as_str(), t)), None, &path)
            .unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    assert_same_lens("mistral", dir.path());

    // A shard the index names but the directory lacks.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(
        one_line(&e).contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

/// The original OpenAI GPT-2 checkpoint has no `transformer.` prefix.
#[test]
fn gpt2_without_prefix_loads() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_fixture(
        "gpt2",
        dir.path(),
        |n| Some(n.trim_start_matches("transformer.").to_string()),
        |_| {},
    );
    assert_same_lens("gpt2", dir.path());
}

/// transformers 4 and 5 write RoPE settings differently; both read the same.
#[test]
fn config_layouts_agree() {
    let read = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tiny(name).join("config.json")).unwrap())
                .unwrap();
        edit(&mut v);
        config_from_hf(&HfConfig::parse(&v.to_string()).unwrap(), false).unwrap()
    };
    // llama3 scaling: legacy `rope_theta` + `rope_scaling` vs v5 `rope_parameters`.
    let legacy = read("llama3_rope", &|_| {});
    let v5 = read("llama3_rope", &|v| {
        let mut p = v["rope_scaling"].take();
        p["rope_theta"] = v["rope_theta"].take();
        v["rope_parameters"] = p;
        v.as_object_mut().unwrap().remove("rope_scaling");
        v.as_object_mut().unwrap().remove("rope_theta");
    });
    assert!(legacy.rope.as_ref().unwrap().llama3.is_some());
    assert_eq!(legacy, v5);
    // Gemma 3: per-layer-type `rope_parameters` vs `rope_theta` + `rope_local_base_freq`,
    // and `sliding_window_pattern` vs `layer_types`.
    let legacy = read("gemma3", &|_| {});
    let v5 = read("gemma3", &|v| {
        v["rope_parameters"] = serde_json::json!({
            "full_attention": {"rope_type": "default", "rope_theta": v["rope_theta"].take()},
            "sliding_attention": {"rope_type": "default", "rope_theta": v["rope_local_base_freq"].take()},
        });
        v.as_object_mut().unwrap().remove("layer_types");
    });
    let rope = legacy.rope.as_ref().unwrap();
    assert_eq!((rope.theta, rope.local_theta), (1e6, Some(1e4)));
    assert_eq!(legacy, v5);
    // qwen3 is stored in the v5 layout; written the legacy way it reads the same.
    let v5 = read("qwen3", &|_| {});
    let legacy = read("qwen3", &|v| {
        v["rope_theta"] = v["rope_parameters"]["rope_theta"].take();
        v.as_object_mut().unwrap().remove("rope_parameters");
    });
    assert_eq!(legacy, v5);
    // Qwen's window counts only with `use_sliding_window`.
    let on = read("qwen2", &|v| v["use_sliding_window"] = true.into());
    assert_eq!(on.sliding_window, Some(8));
    assert!(read("qwen2", &|_| {}).sliding_window.is_none());
}

// --- the HF cache ---------------------------------------------------------------------

/// `models--org--name/{refs/main, snapshots/<rev>/…}` with files linked in,
/// as `huggingface_hub` leaves them (blobs behind symlinks).
fn fake_repo(
    root: &Path,
    repo: &str,
    revs: &[&str],
    main: Option<&str>,
    files: &[(&str, PathBuf)],
) -> PathBuf {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    for rev in revs {
        let snap = repo_dir.join("snapshots").join(rev);
        std::fs::create_dir_all(&snap).unwrap();
        for (name, target) in files {
            std::os::unix::fs::symlink(target, snap.join(name)).unwrap();
        }
    }
    if let Some(main) = main {
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), main).unwrap();
    }
    repo_dir
}

fn hf_files(name: &str) -> Vec<(&'static str, PathBuf)> {
    [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .into_iter()
    .map(|f| (f, tiny(name).join(f)))
    .collect()
}

#[test]
fn hf_cache_resolution() {
    let tmp = tempfile::tempdir().unwrap();
    let (empty, root) = (tmp.path().join("empty"), tmp.path().join("hub"));
    std::fs::create_dir_all(&empty).unwrap();

    // refs/main picks the snapshot among several.
    let repo = fake_repo(
        &root,
        "tiny-org/tiny-llama",
        &["aaa", "bbb"],
        Some("bbb\n"),
        &hf_files("llama"),
    );
    let loc = resolve_in("tiny-org/tiny-llama", &[empty.clone(), root.clone()]).unwrap();
    assert_eq!(loc, ModelLocation::HfDir(repo.join("snapshots/bbb")));
    assert_eq!(loc.label(), "tiny-org/tiny-llama");
    let model = Checkpoint::open(loc.path())
        .and_then(|c| c.load(Precision::F32))
        .unwrap();
    assert_eq!(model.label, "tiny-org/tiny-llama");
    // An explicit revision.
    let loc = resolve_in("tiny-org/tiny-llama@aaa", std::slice::from_ref(&root)).unwrap();
    assert_eq!(loc, ModelLocation::HfDir(repo.join("snapshots/aaa")));

    // No refs/main: the only snapshot; several: an error that says what to do.
    let repo = fake_repo(&root, "org/one", &["c0ffee"], None, &hf_files("gpt2"));
    assert_eq!(
        resolve_in("org/one", std::slice::from_ref(&root)).unwrap(),
        ModelLocation::HfDir(repo.join("snapshots/c0ffee"))
    );
    fake_repo(&root, "org/two", &["r1", "r2"], None, &hf_files("gpt2"));
    let e = resolve_in("org/two", std::slice::from_ref(&root)).unwrap_err();
    assert!(one_line(&e).contains("2 snapshots"), "{e}");

    // A GGUF repo: the snapshot holds one .gguf and no config.json.
    let gguf = model_file("SmolLM2-135M-Instruct.Q4_1.gguf");
    let repo = fake_repo(
        &root,
        "org/smol-GGUF",
        &["f00"],
        Some("f00"),
        &[("smol.Q4_1.gguf", gguf)],
    );
    assert_eq!(
        resolve_in("org/smol-GGUF", std::slice::from_ref(&root)).unwrap(),
        ModelLocation::Gguf(repo.join("snapshots/f00/smol.Q4_1.gguf"))
    );

    // Not found: every place looked at is named.
    let e = resolve_in("nobody/nothing", &[empty.clone(), root.clone()]).unwrap_err();
    let msg = one_line(&e);
    for p in [&empty, &root] {
        assert!(
            msg.contains(&p.join("models--nobody--nothing").display().to_string()),
            "{msg}"
        );
    }
    assert!(
        msg.contains("`nobody/nothing` (no such file or directory)"),
        "{msg}"
    );

    // Plain paths: a directory, its config.json, a GGUF file.
    assert_eq!(
        resolve_in(tiny("qwen3").to_str().unwrap(), &[]).unwrap(),
        ModelLocation::HfDir(tiny("qwen3"))
    );
    let cfg = tiny("qwen3").join("config.json");
    assert_eq!(
        resolve_in(cfg.to_str().unwrap(), &[]).unwrap(),
        ModelLocation::HfDir(tiny("qwen3"))
    );
    let gguf = model_file("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(
        resolve_in(gguf.to_str().unwrap(), &[]).unwrap(),
        ModelLocation::Gguf(gguf)
    );
}

// --- info ---------------------------------------------------------------------------------

#[test]
fn info_describes_without_loading() {
    let s = lensmap::info::describe(&ModelLocation::HfDir(tiny("gemma3"))).unwrap();
    eprintln!("{s}");
    assert_eq!(
        (s.arch.as_str(), s.file_arch.as_str()),
        ("gemma3", "gemma3_text")
    );
    assert_eq!(
        (s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.head_dim),
        (3, 64, 4, 2, 32)
    );
    assert_eq!(
        (s.vocab_size, s.context_len, s.tied_embeddings),
        (512, 256, true)
    );
    assert_eq!(s.dtype, "BF16 100%");
    assert_eq!(s.sliding_window, Some((6, 2)));
    assert_eq!(s.chat_template.as_deref(), Some("tokenizer_config.json"));
    assert_eq!(
        s.bos.as_ref().map(|t| (t.id, t.text.as_str())),
        Some((2, "<bos>"))
    );
    assert_eq!(
        s.eos.as_ref().map(|t| (t.id, t.text.as_str())),
        Some((1, "<eos>"))
    );

    let gguf = model_file("SmolLM2-135M-Instruct.Q4_1.gguf");
    let t = std::time::Instant::now();
    let s = lensmap::info::describe(&ModelLocation::Gguf(gguf)).unwrap();
    eprintln!("{s}(in {:.0} ms)", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(
        (
            s.arch.as_str(),
            s.n_layers,
            s.d_model,
            s.n_heads,
            s.n_kv_heads
        ),
        ("llama", 30, 576, 9, 3)
    );
    assert!(s.dtype.starts_with("Q4_1"), "{}", s.dtype);
    assert!(s
        .chat_template
        .as_deref()
        .is_some_and(|c| c.contains("gguf")));
    assert_eq!(s.eos.as_ref().map(|t| t.text.as_str()), Some("<|im_end|>"));
}

// --- errors -----------------------------------------------------------------------------------

#[test]
fn unknown_model_type_names_supported() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_fixture(
        "llama",
        dir.path(),
        |n| Some(n.into()),
        |v| v["model_type"] = "bert".into(),
    );
    let e = load_err(dir.path());
    let msg = one_line(&e);
    assert!(matches!(e, Error::UnsupportedArch { .. }), "{msg}");
    for t in [
        "`bert`", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3", "gpt2",
    ] {
        assert!(msg.contains(t), "{msg}");
    }
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_fixture("llama", dir.path(), |n| Some(n.into()), |_| {});
    let spec = dir.path().to_str().unwrap();

    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = resolve_in(spec, &[]).unwrap_err();
    assert!(one_line(&e).contains("no `tokenizer.json`"), "{e}");

    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join("x")).unwrap();
    let e = load_err(dir.path());
    assert!(one_line(&e).contains("no `model.safetensors`"), "{e}");
    std::fs::rename(dir.path().join("x"), dir.path().join("model.safetensors")).unwrap();

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = load_err(dir.path());
    assert!(one_line(&e).contains("no `config.json`"), "{e}");
    let e = resolve_in(spec, &[]).unwrap_err();
    assert!(one_line(&e).contains("no `config.json`"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let gone = "model.layers.1.mlp.down_proj.weight";
    rewrite_fixture(
        "llama",
        dir.path(),
        |n| (n != gone).then(|| n.into()),
        |_| {},
    );
    let e = load_err(dir.path());
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert!(one_line(&e).contains(gone), "{e}");

    // Untied by the config, but no lm_head in the file.
    let dir = tempfile::tempdir().unwrap();
    rewrite_fixture(
        "llama",
        dir.path(),
        |n| Some(n.into()),
        |v| v["tie_word_embeddings"] = false.into(),
    );
    let e = load_err(dir.path());
    assert!(one_line(&e).contains("`lm_head.weight` missing"), "{e}");
}

#[test]
fn shape_mismatch_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_fixture(
        "qwen3",
        dir.path(),
        |n| Some(n.into()),
        |v| v["head_dim"] = 16.into(),
    );
    let e = load_err(dir.path());
    let msg = one_line(&e);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("q_proj.weight") && msg.contains("[128, 64]") && msg.contains("[64, 64]"),
        "{msg}"
    );
}

/// A safetensors file from a header and a data section.
fn raw_file(header: &serde_json::Value, data_len: usize) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(vec![0u8; data_len]);
    out
}

/// Headers that lie about offsets or sizes are refused at open, in one line,
/// without reading past the map.
#[test]
fn corrupt_safetensors_headers_are_refused() {
    let t = |off: [usize; 2], shape: &[usize]| serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": off});
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "offsets past the end",
            raw_file(&serde_json::json!({"a": t([0, 4096], &[1024])}), 64),
        ),
        (
            "overlapping tensors",
            raw_file(
                &serde_json::json!({"a": t([0, 32], &[8]), "b": t([16, 48], &[8])}),
                48,
            ),
        ),
        (
            "size disagrees with shape",
            raw_file(&serde_json::json!({"a": t([0, 32], &[16])}), 32),
        ),
        (
            "data left uncovered",
            raw_file(&serde_json::json!({"a": t([0, 32], &[8])}), 40),
        ),
        (
            "shape overflows",
            raw_file(&serde_json::json!({"a": t([0, 32], &[usize::MAX, 4])}), 32),
        ),
        ("header length past the end", {
            let mut f = raw_file(&serde_json::json!({"a": t([0, 32], &[8])}), 32);
            f[..8].copy_from_slice(&1000u64.to_le_bytes());
            f
        }),
        ("header length absurd", {
            let mut f = raw_file(&serde_json::json!({"a": t([0, 32], &[8])}), 32);
            f[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            f
        }),
        ("not JSON", {
            let mut f = b"\x05\0\0\0\0\0\0\0{{{{{".to_vec();
            f.extend([0u8; 8]);
            f
        }),
        ("shorter than 8 bytes", b"\x01\x02".to_vec()),
        ("truncated download", {
            let mut f = std::fs::read(tiny("llama").join("model.safetensors")).unwrap();
            f.truncate(f.len() / 2);
            f
        }),
    ];
    for (what, bytes) in cases {
        let dir = tempfile::tempdir().unwrap();
        rewrite_fixture("llama", dir.path(), |n| Some(n.into()), |_| {});
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        let e = load_err(dir.path());
        let msg = one_line(&e);
        eprintln!("{what}: {msg}");
        assert!(matches!(e, Error::BadCheckpoint { .. }), "{what}: {msg}");
        assert!(
            msg.contains("not a valid safetensors file"),
            "{what}: {msg}"
        );
    }
}

// --- GGUF readers for the llama kin ------------------------------------------------------

/// llama.cpp's `permute`: rows of each head reordered so adjacent pairs
/// rotate together (what its converter does to Llama's q and k).
fn permute_rows(t: &candle_core::Tensor, heads: usize) -> candle_core::Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// llama.cpp's `rope_freqs` for a Llama 3 scaling: one divisor per frequency.
fn llama3_rope_freqs(rope: &lensmap::model::config::RopeConfig) -> Vec<f32> {
    let s = rope.llama3.as_ref().unwrap();
    let (low, high) = (
        s.original_max_position_embeddings / s.low_freq_factor,
        s.original_max_position_embeddings / s.high_freq_factor,
    );
    (0..rope.dim / 2)
        .map(|i| {
            let freq = 1.0 / rope.theta.powf((2 * i) as f64 / rope.dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let factor = if wavelen < high {
                1.0
            } else if wavelen > low {
                s.factor
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            };
            factor as f32
        })
        .collect()
}

/// A GGUF file with llama.cpp's names and keys, written from a fixture (f32).
fn write_gguf(name: &str, arch: &str, path: &Path) {
    write_gguf_with(name, arch, path, false)
}

/// As `write_gguf`; with `llama_cpp_rope`, also what llama.cpp's converter
/// does to a Llama: q/k rows permuted, Llama 3 scaling as `rope_freqs.weight`.
fn write_gguf_with(name: &str, arch: &str, path: &Path, llama_cpp_rope: bool) {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use lensmap::model::arch::{all_names, GgufNames, Part, TensorNames};

    let ckpt = Checkpoint::open(tiny(name)).unwrap();
    let weights = ckpt.source();
    let cfg = &ckpt.cfg;
    let mut tensors = Vec::new();
    for ((part, layer, bias), hf_name) in all_names(ckpt.names(), cfg.sizes.n_layers) {
        // GGUF keeps Phi-3's fused gate|up under llama's `ffn_up`.
        let clash =
            part == Part::FfnUp && weights.contains(&ckpt.name(Part::FfnGateUp, layer, bias));
        if weights.contains(&hf_name) && !clash {
            let mut t = weights.f32(&hf_name).unwrap();
            if llama_cpp_rope && part == Part::AttnQ {
                t = permute_rows(&t, cfg.sizes.n_heads);
            } else if llama_cpp_rope && part == Part::AttnK {
                t = permute_rows(&t, cfg.sizes.n_kv_heads);
            }
            let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
            tensors.push((GgufNames.name(part, layer, bias), q));
        }
    }
    let rope = cfg.rope.as_ref().unwrap();
    if llama_cpp_rope && rope.llama3.is_some() {
        let factors = llama3_rope_freqs(rope);
        let n = factors.len();
        let t = candle_core::Tensor::from_vec(factors, n, &candle_core::Device::Cpu).unwrap();
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| Value::U32(v as u32);
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (k("block_count"), u(cfg.sizes.n_layers)),
        (k("embedding_length"), u(cfg.sizes.d_model)),
        (k("feed_forward_length"), u(cfg.sizes.d_ff)),
        (k("attention.head_count"), u(cfg.sizes.n_heads)),
        (k("attention.head_count_kv"), u(cfg.sizes.n_kv_heads)),
        (k("attention.key_length"), u(cfg.sizes.head_dim)),
        (k("context_length"), u(cfg.sizes.context_len)),
        (k("vocab_size"), u(cfg.sizes.vocab_size)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.sizes.norm_eps as f32),
        ),
        (k("rope.freq_base"), Value::F32(rope.theta as f32)),
        (k("rope.dimension_count"), u(rope.dim)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

/// qwen2 (q/k/v biases), qwen3 (q/k norm, head_dim ≠ d/heads) and phi3
/// (fused qkv and gate|up) read from GGUF give the HF lens.
#[test]
fn gguf_readers_match_hf() {
    for (name, arch) in [("qwen2", "qwen2"), ("qwen3", "qwen3"), ("phi3", "phi3")] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{name}.gguf"));
        write_gguf(name, arch, &path);
        let from_gguf = Checkpoint::open(&path)
            .and_then(|c| c.load(Precision::F32))
            .unwrap();
        let from_hf = Checkpoint::open(tiny(name))
            .and_then(|c| c.load(Precision::F32))
            .unwrap();
        let mut expected = from_hf.cfg.clone();
        expected.sizes.norm_eps = expected.sizes.norm_eps as f32 as f64;
        assert_eq!(from_gguf.cfg, expected, "{name}");
        let ids = tiny_ids(name);
        let (h, kl) = compare(
            &format!("{name} gguf vs hf"),
            &lens(&from_gguf, &ids),
            &lens(&from_hf, &ids),
        );
        assert!(h <= 1e-5 && kl <= 1e-5, "{name}");
    }
}

/// A Llama 3.1-style GGUF (q/k permuted, scaling stored as `rope_freqs`)
/// gives transformers' numbers for the `llama3_rope` fixture; without the
/// factors the logits would move by up to 5.4 (tiny/README.md).
#[test]
fn llama3_rope_freqs_gguf_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama3_rope.gguf");
    write_gguf_with("llama3_rope", "llama", &path, true);
    let model = Checkpoint::open(&path)
        .and_then(|c| c.load(Precision::F32))
        .unwrap();
    let rope = model.cfg.rope.as_ref().unwrap();
    assert!(rope.freq_factors.is_some() && rope.llama3.is_none());
    let reference = crate::common::reference("tiny/llama3_rope/reference.json");
    let got = lens(&model, &tiny_ids("llama3_rope"));
    let want = crate::common::grid_f64(&reference["entropy"]);
    let (max, r, p) = crate::common::max_abs_diff(&got.entropy, &want);
    eprintln!("llama3_rope via GGUF rope_freqs: max |Δentropy| {max:.2e} at row {r} pos {p}");
    // Measured 2.9e-6, as the fixture read from its HF directory (`tiny_fixtures`).
    assert!(max <= 1e-5, "max |Δentropy| {max}");
    // Conversion back to safetensors refuses rather than dropping the scaling.
    let err = lensmap::convert::to_safetensors(&path, &dir.path().join("out")).unwrap_err();
    assert!(err.to_string().contains("rope_freqs"), "{err}");
}
