//! GGUF model files (llama.cpp): metadata, tensors, dequantization and tokenizer.

use std::path::Path;

use inseq_core::{Error, Result};

use crate::weights::{RawTensor, WeightSource};

/// An opened GGUF file exposing its tensors under Hugging Face names.
pub struct GgufModelFile {
    path: std::path::PathBuf,
}

impl GgufModelFile {
    /// Opens and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let _ = path;
        Err(Error::Unsupported("GGUF loading is not implemented yet".into()))
    }

    /// The Hugging Face `config.json` equivalent of the GGUF metadata.
    pub fn hf_config(&self) -> Result<serde_json::Value> {
        Err(Error::Unsupported("GGUF".into()))
    }

    /// The tokenizer described by the `tokenizer.ggml.*` metadata.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        Err(Error::Unsupported("GGUF".into()))
    }
}

impl WeightSource for GgufModelFile {
    fn read(&mut self, _name: &str) -> Result<Option<RawTensor>> {
        Ok(None)
    }
    fn names(&self) -> Vec<String> {
        vec![]
    }
    fn origin(&self) -> std::path::PathBuf {
        self.path.clone()
    }
}
