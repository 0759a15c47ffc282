//! GGUF model files (llama.cpp): metadata, tensors, dequantization and tokenizer.
//!
//! [`GgufModelFile`] presents a GGUF file the way a Hugging Face checkpoint
//! looks: a `config.json` equivalent ([`GgufModelFile::hf_config`]), a
//! tokenizer ([`GgufModelFile::tokenizer`]) and, as a [`WeightSource`], `f32`
//! tensors under Hugging Face names and shapes, dequantized one at a time
//! from the memory map. The lower-level [`GgufFile`] reads any GGUF file
//! under llama.cpp's own tensor names.

mod file;
pub mod quants;
mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use inseq_core::{Error, Result};
use serde_json::{Value, json};

pub use file::{GgufFile, GgufTensorInfo, GgufValue};
pub use quants::{GgmlType, dequantize};

use crate::compact::StoredMatrix;
use crate::special_tokens::SpecialTokens;
use crate::weights::{RawTensor, WeightSource};

/// How a tensor is changed on its way from llama.cpp's layout to Hugging Face's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// Used as stored.
    None,
    /// Undo `convert_hf_to_gguf.py`'s RoPE row permutation with the query head count.
    UnpermuteQ,
    /// Undo the permutation with the key/value head count.
    UnpermuteK,
    /// Swap the two dimensions (GPT-2's `Conv1D` stores `[in, out]`).
    Transpose,
    /// Subtract 1 (Gemma's norm scales, stored by `convert_hf_to_gguf.py` as `1 + weight`).
    MinusOne,
}

/// llama.cpp -> Hugging Face tensor names for one architecture.
struct ArchTable {
    /// `general.architecture` value.
    arch: &'static str,
    /// Prefix of the Hugging Face base-model tensors (`model.`, `transformer.`).
    hf_prefix: &'static str,
    /// Hugging Face prefix of a decoder block, `{i}` standing for its index.
    hf_block: &'static str,
    /// Whole-model tensors: (llama.cpp name, Hugging Face name without `hf_prefix`).
    /// `lm_head.weight` is outside the base model and is never prefixed.
    global: &'static [(&'static str, &'static str)],
    /// Per-block tensors: (llama.cpp suffix after `blk.{i}.`, Hugging Face suffix, fix).
    block: &'static [(&'static str, &'static str, Fix)],
    /// Norm scales are stored as `1 + weight` (Gemma): every `*norm.weight` gets [`Fix::MinusOne`].
    norms_plus_one: bool,
}

const LLAMA: ArchTable = ArchTable {
    arch: "llama",
    hf_prefix: "model.",
    hf_block: "layers.{i}.",
    global: &[
        ("token_embd.weight", "embed_tokens.weight"),
        ("output_norm.weight", "norm.weight"),
        ("output.weight", "lm_head.weight"),
    ],
    block: &[
        ("attn_norm.weight", "input_layernorm.weight", Fix::None),
        ("attn_q.weight", "self_attn.q_proj.weight", Fix::UnpermuteQ),
        ("attn_q.bias", "self_attn.q_proj.bias", Fix::UnpermuteQ),
        ("attn_k.weight", "self_attn.k_proj.weight", Fix::UnpermuteK),
        ("attn_k.bias", "self_attn.k_proj.bias", Fix::UnpermuteK),
        ("attn_v.weight", "self_attn.v_proj.weight", Fix::None),
        ("attn_v.bias", "self_attn.v_proj.bias", Fix::None),
        ("attn_output.weight", "self_attn.o_proj.weight", Fix::None),
        ("attn_output.bias", "self_attn.o_proj.bias", Fix::None),
        (
            "ffn_norm.weight",
            "post_attention_layernorm.weight",
            Fix::None,
        ),
        ("ffn_gate.weight", "mlp.gate_proj.weight", Fix::None),
        ("ffn_up.weight", "mlp.up_proj.weight", Fix::None),
        ("ffn_down.weight", "mlp.down_proj.weight", Fix::None),
    ],
    norms_plus_one: false,
};

const GPT2: ArchTable = ArchTable {
    arch: "gpt2",
    hf_prefix: "transformer.",
    hf_block: "h.{i}.",
    global: &[
        ("token_embd.weight", "wte.weight"),
        ("position_embd.weight", "wpe.weight"),
        ("output_norm.weight", "ln_f.weight"),
        ("output_norm.bias", "ln_f.bias"),
        ("output.weight", "lm_head.weight"),
    ],
    block: &[
        ("attn_norm.weight", "ln_1.weight", Fix::None),
        ("attn_norm.bias", "ln_1.bias", Fix::None),
        ("attn_qkv.weight", "attn.c_attn.weight", Fix::Transpose),
        ("attn_qkv.bias", "attn.c_attn.bias", Fix::None),
        ("attn_output.weight", "attn.c_proj.weight", Fix::Transpose),
        ("attn_output.bias", "attn.c_proj.bias", Fix::None),
        ("ffn_norm.weight", "ln_2.weight", Fix::None),
        ("ffn_norm.bias", "ln_2.bias", Fix::None),
        ("ffn_up.weight", "mlp.c_fc.weight", Fix::Transpose),
        ("ffn_up.bias", "mlp.c_fc.bias", Fix::None),
        ("ffn_down.weight", "mlp.c_proj.weight", Fix::Transpose),
        ("ffn_down.bias", "mlp.c_proj.bias", Fix::None),
    ],
    norms_plus_one: false,
};

/// Qwen2's tensors: Llama's names with biases, stored unpermuted (llama.cpp's NEOX RoPE).
const QWEN2_BLOCK: &[(&str, &str, Fix)] = &[
    ("attn_norm.weight", "input_layernorm.weight", Fix::None),
    ("attn_q.weight", "self_attn.q_proj.weight", Fix::None),
    ("attn_q.bias", "self_attn.q_proj.bias", Fix::None),
    ("attn_k.weight", "self_attn.k_proj.weight", Fix::None),
    ("attn_k.bias", "self_attn.k_proj.bias", Fix::None),
    ("attn_v.weight", "self_attn.v_proj.weight", Fix::None),
    ("attn_v.bias", "self_attn.v_proj.bias", Fix::None),
    ("attn_output.weight", "self_attn.o_proj.weight", Fix::None),
    ("attn_output.bias", "self_attn.o_proj.bias", Fix::None),
    ("attn_q_norm.weight", "self_attn.q_norm.weight", Fix::None),
    ("attn_k_norm.weight", "self_attn.k_norm.weight", Fix::None),
    (
        "ffn_norm.weight",
        "post_attention_layernorm.weight",
        Fix::None,
    ),
    ("ffn_gate.weight", "mlp.gate_proj.weight", Fix::None),
    ("ffn_up.weight", "mlp.up_proj.weight", Fix::None),
    ("ffn_down.weight", "mlp.down_proj.weight", Fix::None),
];

const QWEN2: ArchTable = ArchTable {
    arch: "qwen2",
    block: QWEN2_BLOCK,
    ..LLAMA
};

/// Qwen3: Qwen2's names plus the per-head query/key norms.
const QWEN3: ArchTable = ArchTable {
    arch: "qwen3",
    block: QWEN2_BLOCK,
    ..LLAMA
};

/// Gemma: Qwen2's unpermuted names (NEOX RoPE), norm scales stored as `1 + weight`, tied head.
const GEMMA: ArchTable = ArchTable {
    arch: "gemma",
    block: QWEN2_BLOCK,
    norms_plus_one: true,
    ..LLAMA
};

const ARCHS: &[&ArchTable] = &[&LLAMA, &GPT2, &QWEN2, &QWEN3, &GEMMA];

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
    /// `qwen3`, `gemma`).
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let arch = file
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| Error::CorruptFile {
                path: path.to_path_buf(),
                reason: "no `general.architecture` metadata".into(),
            })?;
        let table = ARCHS
            .iter()
            .copied()
            .find(|t| t.arch == arch)
            .ok_or_else(|| {
                Error::UnsupportedArchitecture(format!(
                    "GGUF architecture `{arch}` (supported: llama, gpt2, qwen2, qwen3, gemma)"
                ))
            })?;
        let mut names = HashMap::new();
        for info in file.tensors() {
            if let Some((hf, fix)) = hf_name(table, &info.name) {
                names.insert(hf, (info.name.clone(), fix));
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

    /// The Hugging Face `config.json` equivalent of the GGUF metadata.
    pub fn hf_config(&self) -> Result<Value> {
        let declared = self.meta_usize_opt("vocab_size")?;
        let vocab_size = match (self.rows_of("token_embd.weight"), declared) {
            (Some(rows), Some(d)) if rows as usize != d => {
                let arch = self.table.arch;
                return Err(self.corrupt(format!(
                    "metadata `{arch}.vocab_size` is {d} but `token_embd.weight` has {rows} rows"
                )));
            }
            (Some(rows), _) => rows as usize,
            (None, Some(d)) => d,
            (None, None) => return Err(self.corrupt("no `token_embd.weight` tensor".into())),
        };
        let tied = self.file.tensor_info("output.weight").is_none();
        let mut config = match self.table.arch {
            "llama" => self.llama_like("llama", "LlamaForCausalLM", vocab_size, tied)?,
            "qwen2" => self.llama_like("qwen2", "Qwen2ForCausalLM", vocab_size, tied)?,
            "qwen3" => self.llama_like("qwen3", "Qwen3ForCausalLM", vocab_size, tied)?,
            "gemma" => {
                let mut c = self.llama_like("gemma", "GemmaForCausalLM", vocab_size, tied)?;
                c["hidden_act"] = json!("gelu_pytorch_tanh");
                c
            }
            _ => json!({
                "model_type": "gpt2",
                "n_positions": self.meta_usize("context_length")?,
                "n_ctx": self.meta_usize("context_length")?,
                "architectures": ["GPT2LMHeadModel"],
                "vocab_size": vocab_size,
                "n_embd": self.meta_usize("embedding_length")?,
                "n_layer": self.meta_usize("block_count")?,
                "n_head": self.n_head,
                "n_inner": self.meta_usize_opt("feed_forward_length")?,
                "layer_norm_epsilon": self.meta_f64("attention.layer_norm_epsilon")?.unwrap_or(1e-5),
                "activation_function": "gelu_new",
                "tie_word_embeddings": tied,
            }),
        };
        for (hf, ggml) in [("bos", "bos"), ("eos", "eos"), ("pad", "padding")] {
            if let Some(id) = self.token_id(ggml) {
                config[format!("{hf}_token_id")] = json!(id);
            }
        }
        Ok(config)
    }

    /// The `config.json` of a Llama-like file (`llama`, `qwen2`, `qwen3`): the same metadata keys
    /// under the architecture's prefix; attention biases where the file has them.
    fn llama_like(
        &self,
        model_type: &str,
        class: &str,
        vocab_size: usize,
        tied: bool,
    ) -> Result<Value> {
        let mut c = json!({
            "model_type": model_type,
            "architectures": [class],
            "vocab_size": vocab_size,
            "hidden_size": self.meta_usize("embedding_length")?,
            "intermediate_size": self.meta_usize("feed_forward_length")?,
            "num_hidden_layers": self.meta_usize("block_count")?,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_head_kv,
            "rms_norm_eps": self.meta_f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            "rope_theta": self.meta_f64("rope.freq_base")?.unwrap_or(10000.0),
            "max_position_embeddings": self.meta_usize("context_length")?,
            "tie_word_embeddings": tied,
            "hidden_act": "silu",
            "attention_bias": self.file.tensor_info("blk.0.attn_q.bias").is_some(),
        });
        if let Some(head_dim) = self.meta_usize_opt("attention.key_length")? {
            c["head_dim"] = json!(head_dim);
        }
        let key = format!("{}.rope.scaling.type", self.table.arch);
        let scaling = self
            .file
            .get(&key)
            .and_then(GgufValue::as_str)
            .filter(|s| *s != "none");
        if let Some(kind) = scaling {
            c["rope_scaling"] = json!({
                "rope_type": kind,
                "factor": self.meta_f64("rope.scaling.factor")?,
                "original_max_position_embeddings": self.meta_usize_opt("rope.scaling.original_context_length")?,
            });
        }
        if let Some(window) = self.meta_usize_opt("attention.sliding_window")? {
            return Err(Error::Unsupported(format!(
                "sliding window {window} in a {model_type} GGUF file"
            )));
        }
        Ok(c)
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

/// The Hugging Face name (without base-model prefix) of a llama.cpp tensor.
fn hf_name(table: &ArchTable, gguf: &str) -> Option<(String, Fix)> {
    let (hf, fix) = hf_name_as_stored(table, gguf)?;
    let plus_one = table.norms_plus_one && hf.ends_with("norm.weight");
    Some((hf, if plus_one { Fix::MinusOne } else { fix }))
}

/// [`hf_name`] before the table-wide fixes.
fn hf_name_as_stored(table: &ArchTable, gguf: &str) -> Option<(String, Fix)> {
    if let Some(&(_, hf)) = table.global.iter().find(|(g, _)| *g == gguf) {
        return Some((hf.to_string(), Fix::None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    let &(_, hf, fix) = table.block.iter().find(|(g, _, _)| *g == suffix)?;
    Some((
        format!("{}{hf}", table.hf_block.replace("{i}", &i.to_string())),
        fix,
    ))
}

/// Row `dst` of the unpermuted tensor is row `order[dst]` of the stored one ([`unpermute`]).
fn unpermuted_order(rows: usize, heads: usize) -> std::result::Result<Vec<usize>, String> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(format!(
            "{rows} rows cannot be split into {heads} heads of rotary pairs"
        ));
    }
    let half = rows / heads / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                order[h * 2 * half + s * half + j] = h * 2 * half + 2 * j + s;
            }
        }
    }
    Ok(order)
}

/// Inverts `convert_hf_to_gguf.py`'s `LlamaModel.permute`, which reorders the rows
/// of each head from `[half0; half1]` to interleaved pairs for llama.cpp's RoPE.
fn unpermute(t: RawTensor, heads: usize) -> std::result::Result<RawTensor, String> {
    let rows = *t.shape.first().ok_or("scalar tensor")?;
    let order = unpermuted_order(rows, heads)?;
    let cols = t.data.len().checked_div(rows).unwrap_or(0);
    let mut data = vec![0f32; t.data.len()];
    for (dst, &src) in order.iter().enumerate() {
        data[dst * cols..(dst + 1) * cols].copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
    }
    Ok(RawTensor {
        shape: t.shape,
        data,
    })
}

impl WeightSource for GgufModelFile {
    fn read(&mut self, name: &str) -> Result<Option<RawTensor>> {
        self.read_hf(name)
    }

    fn stored(&self, name: &str) -> Result<Option<StoredMatrix>> {
        let bare = name.strip_prefix(self.table.hf_prefix).unwrap_or(name);
        let Some((gguf_name, fix)) = self.names.get(bare) else {
            return Ok(None);
        };
        let Some(info) = self.file.tensor_info(gguf_name) else {
            return Ok(None);
        };
        let &[rows, cols] = &info.shape()[..] else {
            return Ok(None);
        };
        let bytes = self.file.tensor_mapped(info);
        let Some(stored) = StoredMatrix::new(bytes, info.ty, [rows, cols]) else {
            return Ok(None);
        };
        let heads = match fix {
            Fix::None => return Ok(Some(stored)),
            Fix::Transpose => return Ok(Some(stored.transposed())),
            Fix::MinusOne => return Ok(None),
            Fix::UnpermuteQ => self.n_head,
            Fix::UnpermuteK => self.n_head_kv,
        };
        let order = unpermuted_order(rows, heads)
            .map_err(|reason| self.corrupt(format!("tensor `{gguf_name}`: {reason}")))?;
        Ok(Some(stored.reordered(order)))
    }

    fn f32_bytes(&self) -> u64 {
        self.file
            .tensors()
            .iter()
            .map(|t| 4 * t.numel() as u64)
            .sum()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .names
            .keys()
            .map(|n| {
                if n == "lm_head.weight" {
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
