//! The shared test helpers of `inseq-fixtures`, under the names these tests use.
#![allow(dead_code, unused_imports)]

pub use inseq_fixtures::{copy_model, model_path as model_dir};

/// Whether SmolLM2 is in the models folder (see `inseq_fixtures::smollm2_present`).
pub fn smollm2_present() -> bool {
    inseq_fixtures::smollm2_present(&inseq::models::models_dir())
}
