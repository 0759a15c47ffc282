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
