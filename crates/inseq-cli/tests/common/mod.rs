//! Helpers of the tests that run the `inseq` binary; the fixture helpers come from
//! `inseq-fixtures`.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub use inseq_fixtures::{copy_model, model_path as model_dir};

/// The repository's `tests/fixtures` folder.
pub fn shared() -> PathBuf {
    inseq_fixtures::root().to_path_buf()
}

/// Runs `inseq ARGS` to the end, without colours and with the Hugging Face hub offline.
pub fn inseq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inseq"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run inseq")
}

/// Asserts a clean failure: exit status 1 (inseq errors) or 2 (clap usage errors), no panic, and
/// stderr mentioning `needle` (case-insensitive).
pub fn assert_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(matches!(out.status.code(), Some(1 | 2)), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr does not mention `{needle}`: {stderr}"
    );
}

/// Asserts success and returns stdout.
pub fn assert_ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "expected success, stderr: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
