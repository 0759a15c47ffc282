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
