//! Paths to the shared fixtures (`../shared` beside the repository root).
#![allow(dead_code)]

use std::path::PathBuf;

pub fn shared() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
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
