//! Paths to the test fixtures committed in this repository, under `tests/fixtures/`:
//! the tiny seeded models (`models/tiny-{gpt2,llama,marian,bart}`) and Python Inseq 0.7.1's golden
//! outputs on them (`golden/*.json`). Every test of the workspace finds its data here, so a clone of
//! the repository alone runs its own tests. `tests/fixtures/README.md` says where the files come
//! from and how to make them again.
//!
//!
//! The tests compute on `burn::tensor::Device::default()`: the `flex` CPU backend, or the backend
//! `BURN_DEVICE` names. This crate brings burn's `ndarray` backend into every test build, so that
//! `BURN_DEVICE=ndarray cargo test` runs the numeric tests with other matrix-product kernels and
//! summation orders (as another CPU's vector width would): a tolerance that only holds for one
//! summation order fails there. CI runs the numeric tests both ways.
//!
//! ```
//! let gpt2 = inseq_fixtures::model_dir("tiny-gpt2");
//! assert!(gpt2.join("config.json").is_file());
//! assert!(inseq_fixtures::golden_dir().join("logits.json").is_file());
//! ```
//!
//! It also holds the helpers that the tests of several crates share: [`model_path`],
//! [`copy_model`] and [`smollm2_present`].

use std::path::{Path, PathBuf};

pub mod tolerance;

/// The repository's `tests/fixtures` folder.
pub fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

/// The folder of the tiny fixture models.
pub fn models_dir() -> PathBuf {
    root().join("models")
}

/// One tiny fixture model's `save_pretrained` folder (`tiny-gpt2`, `tiny-llama`, `tiny-marian`,
/// `tiny-bart`).
pub fn model_dir(name: &str) -> PathBuf {
    models_dir().join(name)
}

/// The folder of Python Inseq 0.7.1's golden outputs.
pub fn golden_dir() -> PathBuf {
    root().join("golden")
}

/// [`model_dir`] as the string `load_model` and the CLI's `--model` take.
///
/// ```
/// assert!(inseq_fixtures::model_path("tiny-llama").ends_with("tiny-llama"));
/// ```
pub fn model_path(name: &str) -> String {
    model_dir(name).to_string_lossy().into_owned()
}

/// A copy of the tiny fixture model `name` in a fresh temporary folder (named after `tag` and the
/// process id), for tests that edit its files.
///
/// ```
/// let dir = inseq_fixtures::copy_model("tiny-gpt2", "doc-copy");
/// assert!(dir.join("config.json").is_file());
/// std::fs::remove_dir_all(dir).unwrap();
/// ```
pub fn copy_model(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("inseq-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// The SmolLM2 file `cargo xtask fetch-models` downloads.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Whether SmolLM2 ([`SMOLLM2_FILE`]) is in `models_dir` (pass `inseq::models::models_dir()`).
/// Without it a test returns early after a note, or fails when `INSEQ_REQUIRE_MODELS` is set (as
/// in CI).
///
/// ```
/// let empty = std::env::temp_dir();
/// if std::env::var("INSEQ_REQUIRE_MODELS").is_err() {
///     assert!(!inseq_fixtures::smollm2_present(&empty));
/// }
/// ```
pub fn smollm2_present(models_dir: &Path) -> bool {
    if !models_dir.join(SMOLLM2_FILE).exists() {
        assert!(
            std::env::var("INSEQ_REQUIRE_MODELS").is_err(),
            "SmolLM2 missing: run cargo xtask fetch-models"
        );
        eprintln!("skipping: SmolLM2 not downloaded (cargo xtask fetch-models)");
        return false;
    }
    true
}
