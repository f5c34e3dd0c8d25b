//! The exit code is chosen by the kind of error (`Error::kind()`; README,
//! "Exit codes"): one run of the binary per kind, and the not-found hint by
//! what was passed. See: issue 10, "A house the next engineer can change",
//! part 4 ("Errors by kind").

use std::path::Path;
use std::process::Output;

use crate::common::{assert_error, lensmap, lensmap_cmd, model_file, run_hi};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `hint:` line of a failure.
fn hint(out: &Output) -> String {
    let text = stderr(out);
    let line = text.lines().find(|l| l.starts_with("hint: "));
    line.unwrap_or_else(|| panic!("no hint in: {text}"))
        .to_string()
}

#[test]
fn usage_error_exits_2() {
    let out = lensmap(&["run", "--no-such-flag"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
}

#[test]
fn user_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.gguf");
    std::fs::write(&p, "just some text, not a model\n").unwrap();
    let out = run_hi(&p, &[]);
    assert_error(&out, "no `GGUF` magic");
    assert_eq!(code(&out), Some(2));
}

#[test]
fn missing_resource_exits_3_with_a_hint_by_what_was_passed() {
    // A path: check it.
    let out = run_hi(Path::new("/nonexistent/model.gguf"), &[]);
    assert_error(&out, "not found");
    assert_eq!(code(&out), Some(3));
    assert!(
        hint(&out).starts_with("hint: check the path"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("fetch-models"), "{}", stderr(&out));
    // One of the default models: fetch it.
    let out = run_hi(
        Path::new("/nonexistent/models").join(SMOLLM2).as_path(),
        &[],
    );
    assert_eq!(code(&out), Some(3));
    assert!(
        hint(&out).contains("scripts/fetch-models"),
        "{}",
        stderr(&out)
    );
    // An `org/name` not in an (empty) HF cache: how to download it there.
    let cache = tempfile::tempdir().unwrap();
    let out = lensmap_cmd()
        .args(["run", "--model", "SomeOrg/no-such-model", "--prompt", "Hi"])
        .env("HF_HOME", cache.path())
        .env("HF_HUB_CACHE", cache.path().join("hub"))
        .output()
        .unwrap();
    assert_error(&out, "not found");
    assert_eq!(code(&out), Some(3));
    assert!(
        hint(&out).contains("`huggingface-cli download SomeOrg/no-such-model`"),
        "{}",
        stderr(&out)
    );
    // A missing input file of `plot` is missing too.
    let out = lensmap(&["plot", "/nonexistent/grid.json"]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
}

#[test]
fn out_of_memory_exits_4() {
    let out = run_hi(&model_file(SMOLLM2), &["--max-memory", "1M"]);
    assert_error(&out, "the memory limit");
    assert_eq!(code(&out), Some(4));
    assert!(
        hint(&out).contains("`--max-memory`"),
        "the CLI words the hint in its flags"
    );
}

/// An I/O failure that is neither a missing file nor the user's to fix:
/// the JSON goes to a Unix socket, which cannot be opened as a file.
#[cfg(unix)]
#[test]
fn internal_error_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("out.json");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = run_hi(&model_file(SMOLLM2), &["--json", sock.to_str().unwrap()]);
    assert_error(&out, "out.json");
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
}
