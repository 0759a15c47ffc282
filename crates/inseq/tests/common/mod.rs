//! Paths to the repository's test fixtures (`tests/fixtures`).
#![allow(dead_code)]

use std::path::PathBuf;

pub fn shared() -> PathBuf {
    inseq_fixtures::root().to_path_buf()
}

pub fn model_dir(name: &str) -> String {
    shared()
        .join("models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

pub fn golden_dir() -> PathBuf {
    shared().join("golden")
}

/// Whether SmolLM2 (`cargo xtask fetch-models`) is there. Without it a test returns early after
/// a note, or fails when `INSEQ_REQUIRE_MODELS` is set (as in CI).
pub fn smollm2_present() -> bool {
    let path = inseq::models::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(
            std::env::var("INSEQ_REQUIRE_MODELS").is_err(),
            "SmolLM2 missing: run cargo xtask fetch-models"
        );
        eprintln!("skipping: SmolLM2 not downloaded (cargo xtask fetch-models)");
        return false;
    }
    true
}

/// A copy of the tiny fixture model `name` in a fresh temporary folder (named after `tag`), for
/// tests that edit its files.
pub fn copy_model(name: &str, tag: &str) -> PathBuf {
    let src = PathBuf::from(model_dir(name));
    let dir = std::env::temp_dir().join(format!("inseq-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}
