//! The `config.json` of the GGUF architectures beyond the plain Llama-like ones: Gemma 2/3,
//! Phi-3, GPT-NeoX and Falcon, with the values llama.cpp derives from the layer count or fixes
//! in code (`src/llama-model.cpp`) written out as Hugging Face config fields.

use inseq_core::{Error, Result};
use serde_json::{Value, json};

use super::GgufModelFile;
use super::config::meta_str;

impl GgufModelFile {
    /// Gemma 2 (`gemma2`) and Gemma 3 text (`gemma3`). llama.cpp scales the attention by
    /// `1/sqrt(hidden/heads)` for the 27B models (46 and 62 layers) and by `1/sqrt(head_dim)`
    /// otherwise; Gemma 2 alternates sliding and full layers, Gemma 3 has five sliding layers
    /// (RoPE base 10000) per full one, or only full ones without `attention.sliding_window`.
    pub(super) fn gemma2_like(&self, vocab_size: usize, tied: bool) -> Result<Value> {
        let gemma2 = self.table.arch == "gemma2";
        let (model_type, class) = if gemma2 {
            ("gemma2", "Gemma2ForCausalLM")
        } else {
            ("gemma3_text", "Gemma3ForCausalLM")
        };
        let mut c = self.llama_like(model_type, class, vocab_size, tied)?;
        self.require_full_rotary()?;
        c["hidden_act"] = json!("gelu_pytorch_tanh");
        c["hidden_activation"] = json!("gelu_pytorch_tanh");
        let layers = self.meta_usize("block_count")?;
        let hidden = self.meta_usize("embedding_length")?;
        let is_27b = layers == if gemma2 { 46 } else { 62 };
        let scalar = if is_27b {
            hidden / self.n_head
        } else {
            self.head_dim()?
        };
        c["query_pre_attn_scalar"] = json!(scalar);
        let window = self.meta_usize_opt("attention.sliding_window")?;
        let final_cap = self.meta_f64("final_logit_softcapping")?;
        if gemma2 {
            c["attn_logit_softcapping"] =
                json!(self.meta_f64("attn_logit_softcapping")?.unwrap_or(50.0));
            c["final_logit_softcapping"] = json!(final_cap.unwrap_or(30.0));
            c["sliding_window"] = json!(window.ok_or_else(|| {
                self.corrupt("missing metadata `gemma2.attention.sliding_window`".into())
            })?);
            return Ok(c);
        }
        c["attn_logit_softcapping"] = Value::Null;
        c["final_logit_softcapping"] = json!(final_cap);
        c["rope_local_base_freq"] = json!(10000.0);
        match window.filter(|&w| w > 0) {
            Some(w) => {
                c["sliding_window"] = json!(w);
                c["sliding_window_pattern"] = json!(6);
            }
            None => c["layer_types"] = json!(vec!["full_attention"; layers]),
        }
        Ok(c)
    }

    /// Phi-3: partial rotary embeddings from `rope.dimension_count`, the sliding window (0: none),
    /// LongRoPE from the `rope_factors_long`/`rope_factors_short` tensors.
    pub(super) fn phi3(&self, vocab_size: usize, tied: bool) -> Result<Value> {
        let mut c = self.llama_like("phi3", "Phi3ForCausalLM", vocab_size, tied)?;
        c["partial_rotary_factor"] = json!(self.rotary_fraction()?);
        let window = self.meta_usize_opt("attention.sliding_window")?;
        c["sliding_window"] = json!(window.filter(|&w| w > 0));
        let original = self.meta_usize_opt("rope.scaling.original_context_length")?;
        c["original_max_position_embeddings"] = json!(original);
        let long = self.file.read_f32("rope_factors_long.weight")?;
        let short = self.file.read_f32("rope_factors_short.weight")?;
        match (long, short) {
            (Some(long), Some(short)) => {
                let mut s = json!({
                    "rope_type": "longrope",
                    "long_factor": long.data,
                    "short_factor": short.data,
                    "original_max_position_embeddings": original,
                });
                if let Some(a) = self.meta_f64("rope.scaling.attn_factor")? {
                    s["attention_factor"] = json!(a);
                }
                c["rope_scaling"] = s;
            }
            (None, None) if self.meta_f64("rope.scaling.attn_factor")?.is_some() => {
                return Err(Error::Unsupported(format!(
                    "`phi3.rope.scaling.attn_factor` without LongRoPE factors in {}",
                    self.file.path().display()
                )));
            }
            (None, None) => {}
            _ => {
                return Err(self.corrupt(
                    "only one of `rope_factors_long.weight` and `rope_factors_short.weight`".into(),
                ));
            }
        }
        Ok(c)
    }

    /// GPT-NeoX: LayerNorm, partial rotary embeddings, the parallel or sequential residual.
    pub(super) fn gpt_neox(&self, vocab_size: usize, tied: bool) -> Result<Value> {
        self.require_mha()?;
        let parallel = self.meta_bool("use_parallel_residual")?.unwrap_or(true);
        Ok(json!({
            "model_type": "gpt_neox",
            "architectures": ["GPTNeoXForCausalLM"],
            "vocab_size": vocab_size,
            "hidden_size": self.meta_usize("embedding_length")?,
            "intermediate_size": self.meta_usize("feed_forward_length")?,
            "num_hidden_layers": self.meta_usize("block_count")?,
            "num_attention_heads": self.n_head,
            "rotary_pct": self.rotary_fraction()?,
            "rotary_emb_base": self.meta_f64("rope.freq_base")?.unwrap_or(10000.0),
            "layer_norm_eps": self.meta_f64("attention.layer_norm_epsilon")?.unwrap_or(1e-5),
            "use_parallel_residual": parallel,
            "max_position_embeddings": self.meta_usize("context_length")?,
            "tie_word_embeddings": tied,
            "attention_bias": self.file.tensor_info("blk.0.attn_qkv.bias").is_some(),
            "hidden_act": "gelu",
        }))
    }

    /// Falcon as llama.cpp runs it (parallel attention and MLP, rotary embeddings): a second
    /// block norm (`attn_norm_2`) or several key/value heads mean the new decoder architecture,
    /// one key/value head and one norm multi-query Falcon-7B.
    pub(super) fn falcon(&self, vocab_size: usize, tied: bool) -> Result<Value> {
        self.require_full_rotary()?;
        match meta_str(self, "tensor_data_layout") {
            None | Some("jploski") => {}
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "falcon tensor data layout `{other}` in {} (supported: jploski)",
                    self.file.path().display()
                )));
            }
        }
        let two_norms = self.file.tensor_info("blk.0.attn_norm_2.weight").is_some();
        let new_decoder = two_norms || self.n_head_kv > 1;
        Ok(json!({
            "model_type": "falcon",
            "architectures": ["FalconForCausalLM"],
            "vocab_size": vocab_size,
            "hidden_size": self.meta_usize("embedding_length")?,
            "ffn_hidden_size": self.meta_usize("feed_forward_length")?,
            "num_hidden_layers": self.meta_usize("block_count")?,
            "num_attention_heads": self.n_head,
            "num_kv_heads": self.n_head_kv,
            "new_decoder_architecture": new_decoder,
            "multi_query": self.n_head_kv == 1,
            "num_ln_in_parallel_attn": if two_norms { 2 } else { 1 },
            "parallel_attn": true,
            "alibi": false,
            "bias": self.file.tensor_info("blk.0.attn_qkv.bias").is_some(),
            "layer_norm_epsilon": self.meta_f64("attention.layer_norm_epsilon")?.unwrap_or(1e-5),
            "rope_theta": self.meta_f64("rope.freq_base")?.unwrap_or(10000.0),
            "max_position_embeddings": self.meta_usize("context_length")?,
            "tie_word_embeddings": tied,
        }))
    }

    /// Errors unless the rotary embedding covers the whole head.
    pub(super) fn require_full_rotary(&self) -> Result<()> {
        if self.rotary_fraction()? != 1.0 {
            let arch = self.table.arch;
            return Err(Error::Unsupported(format!(
                "partial rotary embeddings (`{arch}.rope.dimension_count`) in a {arch} GGUF file"
            )));
        }
        Ok(())
    }

    /// Errors unless there are as many key/value heads as query heads.
    pub(super) fn require_mha(&self) -> Result<()> {
        if self.n_head_kv != self.n_head {
            let arch = self.table.arch;
            return Err(Error::Unsupported(format!(
                "{} key/value heads for {} query heads in a {arch} GGUF file",
                self.n_head_kv, self.n_head
            )));
        }
        Ok(())
    }
}
