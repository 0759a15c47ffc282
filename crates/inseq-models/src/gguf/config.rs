//! The Hugging Face `config.json` equivalent of a GGUF file's metadata, per architecture, with
//! the values llama.cpp derives when a key is absent (`src/llama-model.cpp`). Every
//! `{arch}.*` key must be one this module reads (or one that does not change the computation);
//! any other is an error naming it, never silently ignored.

use inseq_core::{Error, Result};
use serde_json::{Value, json};

use super::{GgufModelFile, GgufValue};

/// `{arch}.*` keys every architecture reads or checks.
const COMMON_KEYS: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "vocab_size",
    "rope.dimension_count",
];

/// `{arch}.*` keys of the Llama-like architectures ([`GgufModelFile::llama_like`]).
const LLAMA_KEYS: &[&str] = &[
    "rope.freq_base",
    "attention.layer_norm_rms_epsilon",
    "attention.key_length",
    "attention.value_length",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.attn_factor",
    // Whether the model was fine-tuned with the scaling: informational.
    "rope.scaling.finetuned",
];

/// The further keys one architecture reads.
fn arch_keys(arch: &str) -> &'static [&'static str] {
    match arch {
        "gpt2" => &["attention.layer_norm_epsilon"],
        "gemma2" => &[
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "attention.sliding_window",
        ],
        "gemma3" => &["final_logit_softcapping", "attention.sliding_window"],
        "phi3" => &["attention.sliding_window"],
        "gptneox" => &[
            "attention.layer_norm_epsilon",
            "use_parallel_residual",
            "rope.freq_base",
        ],
        "falcon" => &[
            "attention.layer_norm_epsilon",
            "tensor_data_layout",
            "rope.freq_base",
        ],
        _ => &[],
    }
}

fn uses_llama_keys(arch: &str) -> bool {
    !matches!(arch, "gpt2" | "gptneox" | "falcon")
}

impl GgufModelFile {
    /// The Hugging Face `config.json` equivalent of the GGUF metadata.
    pub fn hf_config(&self) -> Result<Value> {
        self.check_known_keys()?;
        let vocab_size = self.vocab_size()?;
        let tied = self.file.tensor_info("output.weight").is_none();
        let arch = self.table.arch;
        let mut config = match arch {
            "llama" => self.plain_llama_like("llama", "LlamaForCausalLM", vocab_size, tied)?,
            "qwen2" => self.plain_llama_like("qwen2", "Qwen2ForCausalLM", vocab_size, tied)?,
            "qwen3" => self.plain_llama_like("qwen3", "Qwen3ForCausalLM", vocab_size, tied)?,
            "olmo2" => self.plain_llama_like("olmo2", "Olmo2ForCausalLM", vocab_size, tied)?,
            "gemma" => {
                let mut c = self.plain_llama_like("gemma", "GemmaForCausalLM", vocab_size, tied)?;
                c["hidden_act"] = json!("gelu_pytorch_tanh");
                c
            }
            "gemma2" | "gemma3" => self.gemma2_like(vocab_size, tied)?,
            "phi3" => self.phi3(vocab_size, tied)?,
            "gptneox" => self.gpt_neox(vocab_size, tied)?,
            "falcon" => self.falcon(vocab_size, tied)?,
            _ => self.gpt2(vocab_size, tied)?,
        };
        for (hf, ggml) in [("bos", "bos"), ("eos", "eos"), ("pad", "padding")] {
            if let Some(id) = self.token_id(ggml) {
                config[format!("{hf}_token_id")] = json!(id);
            }
        }
        Ok(config)
    }

    /// Errors on an `{arch}.*` metadata key this architecture does not read.
    fn check_known_keys(&self) -> Result<()> {
        let arch = self.table.arch;
        let prefix = format!("{arch}.");
        let mut keys: Vec<&String> = self.file.metadata().keys().collect();
        keys.sort();
        for key in keys {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let known = COMMON_KEYS.contains(&rest)
                || arch_keys(arch).contains(&rest)
                || (uses_llama_keys(arch) && LLAMA_KEYS.contains(&rest));
            if !known {
                return Err(Error::Unsupported(format!(
                    "metadata `{key}` in {} (not read by the {arch} GGUF loader)",
                    self.file.path().display()
                )));
            }
        }
        Ok(())
    }

    /// The vocabulary size: the rows of `token_embd.weight`, checked against `{arch}.vocab_size`.
    fn vocab_size(&self) -> Result<usize> {
        let declared = self.meta_usize_opt("vocab_size")?;
        match (self.rows_of("token_embd.weight"), declared) {
            (Some(rows), Some(d)) if rows as usize != d => {
                let arch = self.table.arch;
                Err(self.corrupt(format!(
                    "metadata `{arch}.vocab_size` is {d} but `token_embd.weight` has {rows} rows"
                )))
            }
            (Some(rows), _) => Ok(rows as usize),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.corrupt("no `token_embd.weight` tensor".into())),
        }
    }

    /// Attention head size: `attention.key_length`, else `embedding_length / head_count`.
    pub(super) fn head_dim(&self) -> Result<usize> {
        if let Some(k) = self.meta_usize_opt("attention.key_length")? {
            return Ok(k);
        }
        Ok(self.meta_usize("embedding_length")? / self.n_head)
    }

    /// `rope.dimension_count` as a fraction of the head size (1 when absent).
    pub(super) fn rotary_fraction(&self) -> Result<f64> {
        let head_dim = self.head_dim()?;
        match self.meta_usize_opt("rope.dimension_count")? {
            Some(d) if d == 0 || d > head_dim || d % 2 == 1 => Err(self.corrupt(format!(
                "metadata `{}.rope.dimension_count` is {d} for heads of {head_dim}",
                self.table.arch
            ))),
            Some(d) => Ok(d as f64 / head_dim as f64),
            None => Ok(1.0),
        }
    }

    /// A Llama-like config whose rotary embedding covers the whole head and that has no
    /// sliding window (`llama`, `qwen2`, `qwen3`, `gemma`, `olmo2`).
    fn plain_llama_like(
        &self,
        model_type: &str,
        class: &str,
        vocab_size: usize,
        tied: bool,
    ) -> Result<Value> {
        let c = self.llama_like(model_type, class, vocab_size, tied)?;
        self.require_full_rotary()?;
        if let Some(window) = self.meta_usize_opt("attention.sliding_window")? {
            return Err(Error::Unsupported(format!(
                "sliding window {window} in a {model_type} GGUF file"
            )));
        }
        Ok(c)
    }

    /// The `config.json` of a Llama-like file: the same metadata keys under the architecture's
    /// prefix; attention biases where the file has them.
    pub(super) fn llama_like(
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
        let head_dim = self.head_dim()?;
        if let Some(v) = self.meta_usize_opt("attention.value_length")?
            && v != head_dim
        {
            return Err(Error::Unsupported(format!(
                "value heads of {v} and key heads of {head_dim} in {}",
                self.file.path().display()
            )));
        }
        if let Some(scaling) = self.rope_scaling()? {
            c["rope_scaling"] = scaling;
        }
        Ok(c)
    }

    /// `rope_scaling` from `rope.scaling.*` (absent or type `none`: no scaling).
    fn rope_scaling(&self) -> Result<Option<Value>> {
        let key = format!("{}.rope.scaling.type", self.table.arch);
        let kind = match self.file.get(&key) {
            None => return Ok(None),
            Some(v) => v.as_str().ok_or_else(|| {
                self.corrupt(format!("metadata `{key}` is {v:?}, expected a string"))
            })?,
        };
        if kind == "none" {
            return Ok(None);
        }
        let mut s = json!({
            "rope_type": kind,
            "factor": self.meta_f64("rope.scaling.factor")?,
            "original_max_position_embeddings":
                self.meta_usize_opt("rope.scaling.original_context_length")?,
        });
        if let Some(a) = self.meta_f64("rope.scaling.attn_factor")? {
            s["attention_factor"] = json!(a);
        }
        Ok(Some(s))
    }

    /// GPT-2: LayerNorm epsilon, learned positions of `context_length`.
    fn gpt2(&self, vocab_size: usize, tied: bool) -> Result<Value> {
        Ok(json!({
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
        }))
    }
}

/// `{arch}.{key}` as a string, if present.
pub(super) fn meta_str<'a>(model: &'a GgufModelFile, key: &str) -> Option<&'a str> {
    model
        .file
        .get(&format!("{}.{key}", model.table.arch))
        .and_then(GgufValue::as_str)
}
