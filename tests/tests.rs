//! The integration tests: one binary with a module per area (as ripgrep's
//! `tests/tests.rs`), instead of one binary per file that each links the
//! whole crate. Run one area with `cargo test --release --test tests AREA::`.
//!
//! `at_rest_rss.rs` stays a binary of its own: it reads the peak RSS of all
//! of its process's children, which other tests' children would raise.

mod common;

mod at_rest;
mod bad_input;
mod batch;
mod cli_plot;
mod cli_reference;
mod engine_reference;
mod exit_codes;
mod forward_consistency;
mod hardening;
mod hf_loading;
mod html_chromium;
mod invariants;
mod rehearsal;
mod render;
mod serve;
mod serve_chromium;
mod synth_gguf;
mod tiny_fixtures;
mod tokenize;
mod train_lens;
mod tuned_lens;
