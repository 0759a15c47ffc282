//! GGUF model files (llama.cpp): metadata, tensors, dequantization and tokenizer.
//!
//! [`GgufModelFile`] presents a GGUF file the way a Hugging Face checkpoint
//! looks: a `config.json` equivalent ([`GgufModelFile::hf_config`]), a
//! tokenizer ([`GgufModelFile::tokenizer`]) and, as a [`WeightSource`], `f32`
//! tensors under Hugging Face names and shapes, dequantized one at a time
//! from the memory map. The lower-level [`GgufFile`] reads any GGUF file
//! under llama.cpp's own tensor names.

mod arch_config;
mod config;
mod file;
pub mod quants;
mod tables;
mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use inseq_core::{Error, Result};

pub use file::{GgufFile, GgufTensorInfo, GgufValue};
pub use quants::{GgmlType, dequantize};

use crate::special_tokens::SpecialTokens;
use crate::weights::{RawTensor, WeightSource};
use tables::{ArchTable, Fix, hf_name, regroup, unpermute};

/// An opened GGUF file exposing its tensors under Hugging Face names.
pub struct GgufModelFile {
    file: GgufFile,
    table: &'static ArchTable,
    /// Hugging Face name without the base-model prefix -> (llama.cpp name, fix).
    names: HashMap<String, (String, Fix)>,
    n_head: usize,
    n_head_kv: usize,
}

impl std::fmt::Debug for GgufModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModelFile")
            .field("file", &self.file)
            .field("architecture", &self.table.arch)
            .finish()
    }
}

impl GgufModelFile {
    /// Opens and parses a GGUF file of a supported architecture (`llama`, `gpt2`, `qwen2`,
    /// `qwen3`, `gemma`, `gemma2`, `gemma3`, `phi3`, `olmo2`, `gptneox`, `falcon`).
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let arch = file
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| Error::CorruptFile {
                path: path.to_path_buf(),
                reason: "no `general.architecture` metadata".into(),
            })?;
        let table =
            tables::table_for(arch, |name| file.tensor_info(name).is_some()).ok_or_else(|| {
                Error::UnsupportedArchitecture(format!(
                    "GGUF architecture `{arch}` (supported: {})",
                    tables::supported()
                ))
            })?;
        let mut names = HashMap::new();
        for info in file.tensors() {
            if let Some((hf, fix)) = hf_name(table, &info.name) {
                names.insert(hf, (info.name.clone(), fix));
            } else if !tables::read_by_config(table, &info.name) {
                return Err(Error::Unsupported(format!(
                    "tensor `{}` in {} (not read by the {} GGUF loader)",
                    info.name,
                    path.display(),
                    table.arch
                )));
            }
        }
        let mut model = Self {
            file,
            table,
            names,
            n_head: 0,
            n_head_kv: 0,
        };
        model.n_head = model.meta_usize("attention.head_count")?;
        model.n_head_kv = model
            .meta_usize_opt("attention.head_count_kv")?
            .unwrap_or(model.n_head);
        if model.n_head == 0 || model.n_head_kv == 0 {
            return Err(model.corrupt("attention head count is 0".into()));
        }
        Ok(model)
    }

    /// The underlying GGUF file (metadata and tensors under llama.cpp names).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The `general.architecture` of the file.
    pub fn architecture(&self) -> &'static str {
        self.table.arch
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::CorruptFile {
            path: self.file.path().to_path_buf(),
            reason,
        }
    }

    /// `{arch}.{key}` as a non-negative integer, if present.
    fn meta_usize_opt(&self, key: &str) -> Result<Option<usize>> {
        let full = format!("{}.{key}", self.table.arch);
        match self.file.get(&full) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.corrupt(format!(
                        "metadata `{full}` is {v:?}, expected a non-negative integer"
                    ))
                }),
        }
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        self.meta_usize_opt(key)?
            .ok_or_else(|| self.corrupt(format!("missing metadata `{}.{key}`", self.table.arch)))
    }

    /// `{arch}.{key}` as a float, if present; `f32` values are widened through their
    /// shortest decimal form so `1e-5f32` becomes `1e-5`, as in `config.json`.
    /// A finite number of the metadata (NaN and infinities are corrupt values: JSON, where the
    /// config goes next, cannot hold them, so they would silently become defaults).
    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        let full = format!("{}.{key}", self.table.arch);
        let value = match self.file.get(&full) {
            None => return Ok(None),
            Some(GgufValue::F32(x)) => x.to_string().parse::<f64>().unwrap_or(f64::from(*x)),
            Some(v) => v.as_f64().ok_or_else(|| {
                self.corrupt(format!("metadata `{full}` is {v:?}, expected a number"))
            })?,
        };
        if !value.is_finite() {
            return Err(self.corrupt(format!(
                "metadata `{full}` is {value}, expected a finite number"
            )));
        }
        Ok(Some(value))
    }

    /// `{arch}.{key}` as a boolean, if present.
    fn meta_bool(&self, key: &str) -> Result<Option<bool>> {
        let full = format!("{}.{key}", self.table.arch);
        match self.file.get(&full) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                self.corrupt(format!("metadata `{full}` is {v:?}, expected a boolean"))
            }),
        }
    }

    fn token_id(&self, which: &str) -> Option<u64> {
        self.file
            .get(&format!("tokenizer.ggml.{which}_token_id"))
            .and_then(GgufValue::as_u64)
    }

    /// Row count of a llama.cpp tensor (the outermost dimension).
    fn rows_of(&self, gguf_name: &str) -> Option<u64> {
        self.file
            .tensor_info(gguf_name)
            .and_then(|t| t.dims.last().copied())
    }

    /// The special tokens as transformers' GGUF loader resolves them: the tokenizer's
    /// unk/pad/bos/eos are the tokens at the `tokenizer.ggml.{unknown,padding,bos,eos}_token_id`
    /// metadata ids, the config ids those of [`Self::hf_config`]. An id outside the
    /// vocabulary is an error.
    pub fn special_tokens(&self) -> Result<SpecialTokens> {
        let vocab = match self.file.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(tokens)) => tokens.len(),
            _ => return Err(self.corrupt("no `tokenizer.ggml.tokens` metadata".into())),
        };
        let id = |which: &str| -> Result<Option<usize>> {
            match self.token_id(which) {
                Some(i) if i as usize >= vocab => Err(self.corrupt(format!(
                    "`tokenizer.ggml.{which}_token_id` is {i}, outside the vocabulary of {vocab}"
                ))),
                i => Ok(i.map(|i| i as usize)),
            }
        };
        Ok(SpecialTokens {
            unk: id("unknown")?,
            pad: id("padding")?,
            bos: id("bos")?,
            eos: id("eos")?,
            ..SpecialTokens::from_config(&self.hf_config()?, self.file.path())?
        })
    }

    /// The tokenizer described by the `tokenizer.ggml.*` metadata.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        tokenizer::build(&self.file).map_err(|reason| self.corrupt(format!("tokenizer: {reason}")))
    }

    /// Reads a tensor under its Hugging Face name (with or without the base-model
    /// prefix), in Hugging Face layout, as `f32`.
    fn read_hf(&self, name: &str) -> Result<Option<RawTensor>> {
        let bare = name.strip_prefix(self.table.hf_prefix).unwrap_or(name);
        let Some((gguf_name, fix)) = self.names.get(bare) else {
            return Ok(None);
        };
        let Some(t) = self.file.read_f32(gguf_name)? else {
            return Ok(None);
        };
        match fix {
            Fix::None => Ok(Some(t)),
            Fix::MinusOne => Ok(Some(RawTensor {
                data: t.data.iter().map(|x| x - 1.0).collect(),
                ..t
            })),
            Fix::Transpose => match t.shape[..] {
                [rows, cols] => {
                    let mut data = vec![0f32; t.data.len()];
                    for r in 0..rows {
                        for c in 0..cols {
                            data[c * rows + r] = t.data[r * cols + c];
                        }
                    }
                    Ok(Some(RawTensor {
                        shape: vec![cols, rows],
                        data,
                    }))
                }
                _ => Err(self.corrupt(format!(
                    "tensor `{gguf_name}` has shape {:?}, expected 2-D",
                    t.shape
                ))),
            },
            Fix::Regroup => regroup(t, self.n_head, self.n_head_kv)
                .map(Some)
                .map_err(|reason| self.corrupt(format!("tensor `{gguf_name}`: {reason}"))),
            Fix::UnpermuteQ | Fix::UnpermuteK => {
                let heads = if *fix == Fix::UnpermuteQ {
                    self.n_head
                } else {
                    self.n_head_kv
                };
                unpermute(t, heads)
                    .map(Some)
                    .map_err(|reason| self.corrupt(format!("tensor `{gguf_name}`: {reason}")))
            }
        }
    }
}

impl WeightSource for GgufModelFile {
    fn read(&mut self, name: &str) -> Result<Option<RawTensor>> {
        self.read_hf(name)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .names
            .keys()
            .map(|n| {
                if n == self.table.head {
                    n.clone()
                } else {
                    format!("{}{n}", self.table.hf_prefix)
                }
            })
            .collect();
        names.sort();
        names
    }

    fn origin(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }
}
