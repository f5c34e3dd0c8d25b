//! Tokenizer, chat template and prompt labelling against the reference files
//! (computed with HF transformers/tokenizers, not lensmap).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use lensmap::grid::TokenKind;
use lensmap::prompt::{build_prompt, Prompt, PromptSpec};
use lensmap::template::{ChatTemplate, Message};
use lensmap::tokenize::TextTokenizer;
use lensmap::Error;
use serde_json::Value as Json;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference");
const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models");
const QUESTION: &str = "What is the capital of Australia?";
const TINY: [&str; 8] = [
    "llama",
    "llama3_rope",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma3",
    "gpt2",
    "phi3",
];

fn reference(rel: &str) -> Json {
    let path = Path::new(SHARED).join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids_of(j: &Json) -> Vec<u32> {
    j["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn strings_of(j: &Json, key: &str) -> Vec<String> {
    j[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn gguf_meta(file: &str) -> HashMap<String, gguf_file::Value> {
    let path = PathBuf::from(MODELS).join(file);
    let mut f = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-models)", path.display()));
    gguf_file::Content::read(&mut f).unwrap().metadata
}

fn smollm2() -> &'static TextTokenizer {
    static TOK: OnceLock<TextTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        TextTokenizer::from_gguf(&gguf_meta("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap()
    })
}

fn gemma3() -> &'static TextTokenizer {
    static TOK: OnceLock<TextTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let meta = gguf_meta("gemma-3-270m-q4_k_m.gguf");
        let t0 = Instant::now();
        let tok = TextTokenizer::from_gguf(&meta).unwrap();
        eprintln!(
            "gemma3 tokenizer built in {:.3} s",
            t0.elapsed().as_secs_f64()
        );
        tok
    })
}

fn question(dummy: usize) -> PromptSpec {
    PromptSpec {
        user: QUESTION.into(),
        dummy,
        ..Default::default()
    }
}

fn gguf_template(tok: &TextTokenizer) -> ChatTemplate {
    let (text, source) = tok.chat_template().expect("template in the GGUF");
    ChatTemplate::new(text, source)
}

// --- SmolLM2 (GGUF, byte-level BPE, template from the file) -----------------

#[test]
fn smollm2_chat_matches_reference() {
    let r = reference("smollm2_chat.json");
    let tok = smollm2();
    let template = gguf_template(tok);
    assert_eq!(template.source, "gguf:tokenizer.chat_template");
    assert_eq!(template.source, r["chat_template_source"].as_str().unwrap());
    assert_eq!(tok.bos(), Some((1, "<|im_start|>")));
    assert_eq!(tok.eos(), Some((2, "<|im_end|>")));
    assert!(!tok.add_bos());

    let p = build_prompt(tok, Some(&template), &question(0)).unwrap();
    assert_prompt_is_reference(tok, &p, &r);
    assert_eq!(tok.decode(&p.ids), p.text);
}

#[test]
fn smollm2_filler_ids_and_kinds() {
    let r = reference("smollm2_filler.json");
    let tok = smollm2();
    let p = build_prompt(tok, Some(&gguf_template(tok)), &question(8)).unwrap();
    assert_eq!(p.ids, ids_of(&r));
    assert_eq!(p.kinds.len(), p.ids.len());
    let texts: Vec<String> = p.ids.iter().map(|&id| tok.token_text(id)).collect();
    assert_eq!(texts, strings_of(&r, "token_texts"));

    // Positions 24..=30 are "What is the capital of Australia?"; 37.. are the dots.
    let question_pos = 24..=30;
    assert_eq!(texts[24], "What");
    assert_eq!(texts[30], "?");
    for (i, (kind, text)) in p.kinds.iter().zip(&texts).enumerate() {
        let expected = if i >= 37 {
            TokenKind::Dummy
        } else if question_pos.contains(&i) {
            TokenKind::Text
        } else {
            TokenKind::Template
        };
        assert_eq!(*kind, expected, "position {i} `{text}`");
    }
    // The default system prompt the template injects is template text.
    assert_eq!(texts[3], "You");
    assert_eq!(p.kinds[3], TokenKind::Template);
    assert_eq!(
        p.kinds.iter().filter(|k| **k == TokenKind::Dummy).count(),
        8
    );
}

#[test]
fn smollm2_system_prompt_is_text() {
    let tok = smollm2();
    let spec = PromptSpec {
        user: QUESTION.into(),
        system: Some("Answer in one word.".into()),
        ..Default::default()
    };
    let p = build_prompt(tok, Some(&gguf_template(tok)), &spec).unwrap();
    assert_eq!(
        p.text,
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n\
         What is the capital of Australia?<|im_end|>\n<|im_start|>assistant\n"
    );
    let text_tokens = text_of(tok, &p);
    assert_eq!(text_tokens, format!("Answer in one word.{QUESTION}"));
}

#[test]
fn smollm2_raw_prompt() {
    let tok = smollm2();
    let spec = PromptSpec {
        user: "The capital of France is".into(),
        raw: true,
        ..Default::default()
    };
    let p = build_prompt(tok, Some(&gguf_template(tok)), &spec).unwrap();
    assert_eq!(p.text, "The capital of France is");
    assert_eq!(tok.decode(&p.ids), p.text); // no BOS: add_bos_token is false
    assert!(p.kinds.iter().all(|k| *k == TokenKind::Text));
}

#[test]
fn smollm2_digits_split_and_stop_ids() {
    let tok = smollm2();
    // The smollm pre-tokenizer splits every digit.
    let e = tok.encode("In 1901 it had 3 states.").unwrap();
    let texts: Vec<String> = e.ids.iter().map(|&id| tok.token_text(id)).collect();
    assert!(
        texts.contains(&"1".to_string()) && texts.contains(&"9".to_string()),
        "{texts:?}"
    );
    assert!(!texts.iter().any(|t| t.contains("19")), "{texts:?}");
    // Offsets are byte spans that tile the text.
    let text = "In 1901 it had 3 states.";
    let joined: String = e.offsets.iter().map(|&(s, e)| &text[s..e]).collect();
    assert_eq!(joined, text);
    assert_eq!(tok.stop_ids(), vec![2, 0]); // <|im_end|>, <|endoftext|>
    assert!(tok.is_special(1));
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.token_text(49152), "");
}

// --- Gemma 3 (GGUF SentencePiece, built-in template) ------------------------

#[test]
fn gemma3_chat_and_filler_match_reference() {
    let tok = gemma3();
    let template = ChatTemplate::builtin("gemma3").unwrap();
    assert_eq!(template.source, "builtin:gemma3");
    assert!(tok.chat_template().is_none());
    assert_eq!(tok.bos(), Some((2, "<bos>")));
    assert_eq!(tok.eos(), Some((1, "<eos>")));
    assert!(tok.add_bos());

    let r = reference("gemma3_chat.json");
    let p = build_prompt(tok, Some(&template), &question(0)).unwrap();
    assert_prompt_is_reference(tok, &p, &r);
    assert_eq!(&p.ids[..2], &[2, 105], "exactly one <bos>");
    let kinds_text: Vec<usize> = (0..p.kinds.len())
        .filter(|&i| p.kinds[i] == TokenKind::Text)
        .collect();
    assert_eq!(kinds_text, (4..=10).collect::<Vec<_>>()); // What … ?

    let r = reference("gemma3_filler.json");
    let p = build_prompt(tok, Some(&template), &question(8)).unwrap();
    assert_eq!(p.ids, ids_of(&r));
    assert_eq!(p.ids.iter().filter(|&&id| id == 2).count(), 1);
    assert_eq!(tok.stop_ids(), vec![1, 106]); // <eos>, <end_of_turn>
}

#[test]
fn gemma3_raw_prompt_gets_one_bos() {
    let tok = gemma3();
    let spec = PromptSpec {
        user: "The capital of France is Paris. The capital of Australia is".into(),
        raw: true,
        ..Default::default()
    };
    let p = build_prompt(tok, None, &spec).unwrap();
    assert_eq!(p.ids[0], 2);
    assert_ne!(p.ids[1], 2);
    assert_eq!(p.kinds[0], TokenKind::Template);
    assert!(p.kinds[1..].iter().all(|k| *k == TokenKind::Text));
    assert_eq!(tok.decode(&p.ids[1..]), spec.user);
}

#[test]
fn gemma3_whitespace_and_bytes() {
    let tok = gemma3();
    // Runs of spaces and newlines are user-defined tokens, matched whole.
    assert_eq!(tok.encode("  ").unwrap().ids, vec![138]);
    assert_eq!(tok.encode("\n\n").unwrap().ids, vec![108]);
    assert_eq!(tok.token_text(138), "  ");
    // A character outside the vocabulary falls back to byte tokens.
    let e = tok.encode("\u{10FFFD}").unwrap();
    assert_eq!(e.ids.len(), 4, "{:?}", e.ids);
    assert!(e.ids.iter().all(|&id| (238..494).contains(&id)));
    assert_eq!(tok.decode(&e.ids), "\u{10FFFD}");
}

/// The whole Gemma 3 vocabulary builds from the GGUF. The build time is
/// printed, not asserted: timing goals live in benchmarks (a 5 s bound here
/// failed on a busy machine).
#[test]
fn gemma3_tokenizer_builds_from_gguf() {
    let meta = gguf_meta("gemma-3-270m-q4_k_m.gguf");
    let t0 = Instant::now();
    let tok = TextTokenizer::from_gguf(&meta).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("gemma3 tokenizer (262144 tokens) built in {secs:.3} s");
    assert_eq!(tok.vocab_size(), 262144);
}

#[test]
fn decode_round_trips() {
    let samples = [
        "What is the capital of Australia?",
        "In 1901, 6 colonies federated; 3.14159 ≈ π.",
        "Café, naïve, Ærøskøbing, Straße, Ελληνικά, 東京, 한국어",
        "emoji 🙂🇦🇺 and a ligature ﬁ",
        "line one\nline two\n\n\tindented   spaces  ",
        " leading space and trailing\n",
    ];
    for (name, tok) in [("smollm2", smollm2()), ("gemma3", gemma3())] {
        for s in samples {
            let e = tok.encode(s).unwrap();
            assert_eq!(tok.decode(&e.ids), s, "{name}: {s:?}");
            assert_eq!(e.offsets.len(), e.ids.len());
            assert!(e.offsets.iter().all(|&(a, b)| a <= b && b <= s.len()));
        }
    }
}

// --- tiny HF fixtures -------------------------------------------------------

#[test]
fn tiny_fixtures_match_reference() {
    for name in TINY {
        let dir = Path::new(SHARED).join("tiny").join(name);
        let r = reference(&format!("tiny/{name}/reference.json"));
        let tok = TextTokenizer::from_hf_dir(&dir).unwrap();
        let (text, source) = tok.chat_template().unwrap();
        assert_eq!(source, "tokenizer_config.json");
        let template = ChatTemplate::new(text, source);
        let p = build_prompt(&tok, Some(&template), &question(0)).unwrap();
        assert_eq!(
            p.text,
            r["prompt_text"].as_str().unwrap(),
            "{name}: prompt text"
        );
        assert_eq!(p.ids, ids_of(&r), "{name}: ids");
        assert_eq!(tok.decode(&p.ids), p.text, "{name}: decode");
        let texts: Vec<String> = p.ids.iter().map(|&id| tok.token_text(id)).collect();
        assert_eq!(texts, strings_of(&r, "token_texts"), "{name}: token texts");
        // The question itself is labelled text, and only it.
        let text_part = text_of(&tok, &p);
        assert_eq!(text_part.trim(), QUESTION, "{name}: text kinds");
    }
}

#[test]
fn tiny_special_tokens() {
    let dir = |n: &str| Path::new(SHARED).join("tiny").join(n);
    let qwen2 = TextTokenizer::from_hf_dir(&dir("qwen2")).unwrap();
    assert_eq!(qwen2.bos(), None);
    assert_eq!(qwen2.eos().map(|e| e.1), Some("<|im_end|>"));
    assert!(!qwen2.add_bos());
    // Qwen2 splits single digits (its own regex, not GPT-2's).
    let e = qwen2.encode(" 1901").unwrap();
    assert_eq!(e.ids.len(), 5, "{:?}", e.ids);
    // Ids past the tokenizer (the padded embedding rows) have no text.
    assert_eq!(qwen2.token_text(560), "");

    let gemma = TextTokenizer::from_hf_dir(&dir("gemma3")).unwrap();
    assert!(gemma.add_bos(), "the post-processor adds <bos>");
    assert_eq!(gemma.bos(), Some((2, "<bos>")));
    let llama3 = TextTokenizer::from_hf_dir(&dir("llama3_rope")).unwrap();
    assert_eq!(llama3.stop_ids()[0], llama3.eos().unwrap().0);
    assert!(llama3
        .stop_ids()
        .contains(&llama3.token_to_id("<|eot_id|>").unwrap()));
}

#[test]
fn missing_tokenizer_json_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = TextTokenizer::from_hf_dir(dir.path()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tokenizer(_)));
    assert!(
        msg.contains("tokenizer.json") && !msg.contains('\n'),
        "{msg}"
    );
}

// --- templates --------------------------------------------------------------

#[test]
fn builtin_gemma3_is_the_official_template() {
    let cfg = reference("tiny/gemma3/tokenizer_config.json");
    let t = ChatTemplate::builtin("gemma3").unwrap();
    assert_eq!(t.text, cfg["chat_template"].as_str().unwrap());
    assert_eq!(
        ChatTemplate::builtin("gemma3_text").unwrap().source,
        "builtin:gemma3"
    );
    assert_eq!(
        ChatTemplate::builtin("chatml").unwrap().source,
        "builtin:chatml"
    );
    assert_eq!(
        ChatTemplate::builtin("llama3").unwrap().source,
        "builtin:llama3"
    );
    assert!(ChatTemplate::builtin("no-such-arch").is_none());
}

#[test]
fn gemma3_template_system_and_errors() {
    let t = ChatTemplate::builtin("gemma3").unwrap();
    let out = t
        .render(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "  Hi  "),
            ],
            "<bos>",
            "<eos>",
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    // Two user turns in a row: the template raises its own message.
    let err = t
        .render(
            &[Message::new("user", "a"), Message::new("user", "b")],
            "<bos>",
            "<eos>",
            true,
        )
        .unwrap_err();
    match err {
        Error::Template(msg) => {
            assert_eq!(
                msg,
                "Conversation roles must alternate user/assistant/user/assistant/..."
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn template_errors_are_template_errors() {
    let msgs = [Message::new("user", "hi")];
    let syntax = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "file:bad.jinja");
    match syntax.render(&msgs, "", "", true).unwrap_err() {
        Error::Template(msg) => {
            assert!(msg.contains("syntax error"), "{msg}");
            assert!(msg.contains("unexpected end of input"), "{msg}");
            assert!(!msg.contains('\n'));
        }
        other => panic!("{other:?}"),
    }
    let raise = ChatTemplate::new("{{ raise_exception('boom') }}", "file:raise.jinja");
    match raise.render(&msgs, "", "", true).unwrap_err() {
        Error::Template(msg) => assert_eq!(msg, "boom"),
        other => panic!("{other:?}"),
    }
    let missing = ChatTemplate::from_file(Path::new("/nonexistent/t.jinja")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }));
}

#[test]
fn template_python_compat() {
    let msgs = [
        Message::new("system", "  Sys  "),
        Message::new("user", "Héllo \"there\"\n"),
    ];
    let render = |src: &str| {
        ChatTemplate::new(src, "test")
            .render(&msgs, "<s>", "</s>", true)
            .unwrap()
    };
    // HF's tojson: Python separators, no HTML escaping, non-ASCII kept.
    assert_eq!(
        render("{{ messages | tojson }}"),
        r#"[{"role": "system", "content": "  Sys  "}, {"role": "user", "content": "Héllo \"there\"\n"}]"#
    );
    assert_eq!(
        render("{{ {'a': [1, 2.5, none, true], 'b': {}, 'c': '<&>'} | tojson(indent=2) }}"),
        "{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"b\": {},\n  \"c\": \"<&>\"\n}"
    );
    assert_eq!(
        render("{{ 'é' | tojson(ensure_ascii=true) }}"),
        r#""\u00e9""#
    );
    assert_eq!(
        render("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}"),
        r#"{"a": 2, "b": 1}"#
    );
    // Python string methods, trim/capitalize filters, context variables.
    assert_eq!(
        render("{{ messages[0].content.strip() }}|{{ messages[0].content | trim }}"),
        "Sys|Sys"
    );
    // Booleans print as Python's (Jinja2 renders `True`).
    assert_eq!(render("{{ messages[1].content.startswith('Hé') }}"), "True");
    assert_eq!(render("{{ 'hELLO wORLD' | capitalize }}"), "Hello world");
    assert_eq!(
        render("{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}"),
        "<s></s>True"
    );
    assert_eq!(
        render("{{ tools is none }}{{ enable_thinking is defined }}"),
        "TrueFalse"
    );
    // trim_blocks / lstrip_blocks as in transformers.
    assert_eq!(render("{% if true %}\n  x\n    {% endif %}\ny"), "  x\ny");
    let year = render("{{ strftime_now('%Y') }}");
    assert!(year.len() == 4 && year.starts_with("20"), "{year}");
}

// --- prompt options ---------------------------------------------------------

#[test]
fn dummy_text_must_be_one_token() {
    let tok = smollm2();
    let spec = PromptSpec {
        user: QUESTION.into(),
        dummy: 4,
        dummy_text: Some(" Canberra is".into()),
        ..Default::default()
    };
    match build_prompt(tok, Some(&gguf_template(tok)), &spec).unwrap_err() {
        Error::BadOption {
            option: lensmap::OptionName::DummyText,
            reason: msg,
        } => {
            assert!(
                msg.contains("the dummy text ` Canberra is`") && msg.contains("2 tokens"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A custom one-token filler works.
    let spec = PromptSpec {
        dummy_text: Some(" the".into()),
        ..spec
    };
    let p = build_prompt(tok, Some(&gguf_template(tok)), &spec).unwrap();
    assert_eq!(&p.ids[p.ids.len() - 4..], &[260; 4]);
}

#[test]
fn empty_prompt_is_rejected() {
    let tok = smollm2();
    let spec = PromptSpec {
        user: "  ".into(),
        ..Default::default()
    };
    assert!(matches!(
        build_prompt(tok, Some(&gguf_template(tok)), &spec),
        Err(Error::InvalidOption(_))
    ));
}

// --- GGUF byte-level BPE against HF tokenizer.json --------------------------

/// GGUF `tokenizer.ggml.*` metadata holding the vocabulary of a tiny fixture's
/// tokenizer.json, as llama.cpp's converter would write it.
fn gguf_meta_from_tokenizer_json(name: &str, pre: &str) -> HashMap<String, gguf_file::Value> {
    use gguf_file::Value as V;
    let tj = reference(&format!("tiny/{name}/tokenizer.json"));
    let mut pieces: Vec<(u32, String, i32)> = tj["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (v.as_u64().unwrap() as u32, k.clone(), 1))
        .collect();
    for t in tj["added_tokens"].as_array().unwrap() {
        let id = t["id"].as_u64().unwrap() as u32;
        let ty = if t["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
        match pieces.iter_mut().find(|p| p.0 == id) {
            Some(p) => p.2 = ty,
            None => pieces.push((id, t["content"].as_str().unwrap().to_string(), ty)),
        }
    }
    pieces.sort();
    assert!(
        pieces.iter().enumerate().all(|(i, p)| p.0 as usize == i),
        "dense ids"
    );
    let merges: Vec<V> = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Json::String(s) => V::String(s.clone()),
            Json::Array(ab) => V::String(format!(
                "{} {}",
                ab[0].as_str().unwrap(),
                ab[1].as_str().unwrap()
            )),
            _ => panic!("merge {m}"),
        })
        .collect();
    HashMap::from([
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(pieces.iter().map(|p| V::String(p.1.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            V::Array(pieces.iter().map(|p| V::I32(p.2)).collect()),
        ),
        ("tokenizer.ggml.merges".into(), V::Array(merges)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(5)),
        ("tokenizer.ggml.add_bos_token".into(), V::Bool(false)),
    ])
}

#[test]
fn gguf_byte_level_pre_tokenizers_match_tokenizer_json() {
    let probes = [
        "What is the capital of Australia?",
        "In 1901, 6 colonies federated; they'd've said \"it's 12345\".",
        "runs   of    spaces\n\n\nand\r\nnewlines\t\ttabs",
        "Café naïve Ærø ﬁne 東京 🙂🇦🇺",
        "<|im_start|>user\nHi<|im_end|>\n",
    ];
    for (name, pre) in [("llama", "gpt-2"), ("qwen2", "qwen2")] {
        let hf = TextTokenizer::from_hf_dir(&Path::new(SHARED).join("tiny").join(name)).unwrap();
        let gguf = TextTokenizer::from_gguf(&gguf_meta_from_tokenizer_json(name, pre)).unwrap();
        for p in probes {
            let (a, b) = (hf.encode(p).unwrap(), gguf.encode(p).unwrap());
            assert_eq!(a.ids, b.ids, "{name}/{pre}: {p:?}");
            assert_eq!(a.offsets, b.offsets, "{name}/{pre}: {p:?}");
            assert_eq!(gguf.decode(&b.ids), p, "{name}/{pre}: {p:?}");
        }
    }
}

#[test]
fn unknown_pre_tokenizer_names_the_supported_ones() {
    let meta = gguf_meta_from_tokenizer_json("llama", "no-such-pre");
    let msg = TextTokenizer::from_gguf(&meta).err().unwrap().to_string();
    assert!(msg.contains("`tokenizer.ggml.pre` `no-such-pre`"), "{msg}");
    assert!(
        msg.contains("smollm") && msg.contains("llama-bpe") && msg.contains("qwen2"),
        "{msg}"
    );
}

#[test]
fn reference_single_tokens_and_greedy_text() {
    for (file, tok) in [
        ("smollm2_chat.json", smollm2()),
        ("gemma3_chat.json", gemma3()),
    ] {
        let r = reference(file);
        for (text, t) in r["tracked"].as_object().unwrap() {
            let id = t["id"].as_u64().unwrap() as u32;
            assert_eq!(tok.encode(text).unwrap().ids, vec![id], "{file}: {text:?}");
            assert_eq!(tok.token_text(id), *text);
        }
        let g = &r["greedy"];
        let ids: Vec<u32> = g["manual_greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.decode(&ids),
            g["manual_greedy_text"].as_str().unwrap(),
            "{file}"
        );
    }
}

// --- GGUF SentencePiece with a prefix space (Llama-2 style) ------------------

#[test]
fn gguf_sentencepiece_with_space_prefix() {
    use gguf_file::Value as V;
    let mut tokens: Vec<(String, f32, i32)> = vec![
        ("<unk>".into(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    tokens.extend((0..=255).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "ll", "▁h", "he", "▁he", "llo", "▁hello", "▁w",
        "or", "▁wor", "ld", "▁world",
    ];
    // SentencePiece scores: the earlier a piece was learnt, the higher.
    tokens.extend(
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), -(i as f32), 1)),
    );
    let id = |p: &str| tokens.iter().position(|t| t.0 == p).unwrap() as u32;
    let meta: HashMap<String, V> = HashMap::from([
        ("tokenizer.ggml.model".into(), V::String("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(tokens.iter().map(|t| V::String(t.0.clone())).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            V::Array(tokens.iter().map(|t| V::F32(t.1)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            V::Array(tokens.iter().map(|t| V::I32(t.2)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), V::U32(0)),
    ]);
    let tok = TextTokenizer::from_gguf(&meta).unwrap();
    assert!(tok.add_bos(), "SentencePiece adds BOS by default");
    assert_eq!(
        tok.encode("hello world").unwrap().ids,
        vec![id("▁hello"), id("▁world")]
    );
    assert_eq!(tok.decode(&[id("▁hello"), id("▁world")]), "hello world");
    assert_eq!(tok.encode("<s>hello").unwrap().ids, vec![1, id("▁hello")]);
    // "é" is not a piece: byte fallback, and back.
    let e = tok.encode("héllo").unwrap();
    assert!(
        e.ids.contains(&id("<0xC3>")) && e.ids.contains(&id("<0xA9>")),
        "{:?}",
        e.ids
    );
    assert_eq!(tok.decode(&e.ids), "héllo");

    let spec = PromptSpec {
        user: "hello world".into(),
        raw: true,
        ..Default::default()
    };
    let p = build_prompt(&tok, None, &spec).unwrap();
    assert_eq!(p.ids, vec![1, id("▁hello"), id("▁world")]);
    assert_eq!(
        p.kinds,
        vec![TokenKind::Template, TokenKind::Text, TokenKind::Text]
    );
}

/// The prompt's text, ids, per-id texts and vocabulary pieces all equal the
/// reference's.
fn assert_prompt_is_reference(tok: &TextTokenizer, p: &Prompt, r: &Json) {
    assert_eq!(p.text, r["prompt_text"].as_str().unwrap());
    assert_eq!(p.ids, ids_of(r));
    let texts: Vec<String> = p.ids.iter().map(|&id| tok.token_text(id)).collect();
    assert_eq!(texts, strings_of(r, "token_texts"));
    let pieces: Vec<String> = p
        .ids
        .iter()
        .map(|&id| tok.token_piece(id).unwrap())
        .collect();
    assert_eq!(pieces, strings_of(r, "tokens"));
}

/// The tokens labelled `text`, decoded and joined.
fn text_of(tok: &TextTokenizer, p: &Prompt) -> String {
    p.ids
        .iter()
        .zip(&p.kinds)
        .filter(|(_, k)| **k == TokenKind::Text)
        .map(|(&id, _)| tok.token_text(id))
        .collect()
}
