//! The `config.json` fields shared by the Llama-like architectures (Llama, Mistral, Qwen 2/3,
//! Gemma 1/2/3, Phi-3, OLMo 2), with the helpers that turn them into a [`DecoderSpec`]'s parts.
//! Fields whose default differs between architectures are `Option`s resolved by each
//! architecture file.

use serde::{Deserialize, Deserializer};

use super::rope::{RopeParameters, RopeSpec};
use crate::model::ModelInfo;
use inseq_core::{Error, Result};

/// `Some(None)` for an explicit `null`, `None` for an absent field.
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The fields of a Llama-like `config.json` this crate reads.
#[derive(Debug, Clone, Deserialize)]
pub struct CommonConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// One set of parameters, or (Gemma 3) one per layer type.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// The pretraining context of a scaled RoPE (Phi-3 keeps it at the top level).
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub hidden_activation: Option<String>,
    #[serde(default)]
    pub attention_dropout: Option<f64>,
    #[serde(default)]
    pub resid_pdrop: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    #[serde(default, alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<usize>,
    #[serde(default, deserialize_with = "crate::special_tokens::first_token_id")]
    pub eos_token_id: Option<usize>,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
}

fn default_ctx() -> usize {
    2048
}

impl CommonConfig {
    /// Features per head (`hidden_size / num_attention_heads` unless given).
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Key/value heads (all heads unless given).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The activation name (`hidden_activation` or `hidden_act`, else `default`).
    pub fn act(&self, default: &str) -> String {
        self.hidden_activation
            .clone()
            .or_else(|| self.hidden_act.clone())
            .unwrap_or_else(|| default.into())
    }

    /// The model facts, with the Hugging Face class `hf_class`.
    pub fn info(&self, hf_class: &str) -> ModelInfo {
        ModelInfo {
            architecture: self.model_type.clone(),
            hf_class: hf_class.into(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            max_positions: self.max_position_embeddings,
            bos_token_id: self.bos_token_id,
            eos_token_id: self.eos_token_id,
            pad_token_id: self.pad_token_id,
            decoder_start_token_id: None,
        }
    }

    /// RoPE parameters (of layer type `layer_type` where the config keys them by type), with
    /// `rope_theta` resolved (`theta` when absent everywhere).
    pub fn rope_parameters(&self, layer_type: Option<&str>, theta: f64) -> Result<RopeParameters> {
        let value = match (&self.rope_parameters, layer_type) {
            (Some(v), Some(t)) if v.get(t).is_some() => v.get(t).cloned(),
            (v, _) => v.clone(),
        };
        let mut p = match value {
            Some(v) => parse_rope_parameters(v)?,
            None => self.rope_scaling.clone().unwrap_or_default(),
        };
        p.rope_theta = p.rope_theta.or(self.rope_theta).or(Some(theta));
        p.original_max_position_embeddings = p
            .original_max_position_embeddings
            .or(self.original_max_position_embeddings);
        Ok(p)
    }

    /// The rotary embedding of this config (`partial_rotary_factor` from the parameters or the
    /// top level).
    pub fn rope(&self, layer_type: Option<&str>, theta: f64) -> Result<RopeSpec> {
        let p = self.rope_parameters(layer_type, theta)?;
        let partial = p
            .partial_rotary_factor
            .or(self.partial_rotary_factor)
            .unwrap_or(1.0);
        Ok(RopeSpec {
            params: p,
            head_dim: self.head_dim(),
            partial,
            max_positions: self.max_position_embeddings,
        })
    }

    /// Per layer the sliding window, from `layer_types` where given, else Qwen's rule (layers
    /// from `max_window_layers` on slide when `use_sliding_window`).
    pub fn qwen_windows(
        &self,
        default_window: usize,
        default_max_layers: usize,
    ) -> Result<Vec<Option<usize>>> {
        let window = match self.sliding_window {
            Some(w) => w,
            None => Some(default_window),
        }
        .filter(|_| self.use_sliding_window);
        if let Some(types) = &self.layer_types {
            return super::DecoderSpec::windows_from_layer_types(types, window);
        }
        let from = self.max_window_layers.unwrap_or(default_max_layers);
        Ok((0..self.num_hidden_layers)
            .map(|i| window.filter(|_| i >= from))
            .collect())
    }

    /// Rejects `use_bidirectional_attention` (a decoder here is causal).
    pub fn check_causal(&self) -> Result<()> {
        if self.use_bidirectional_attention == Some(true) {
            return Err(Error::Unsupported(format!(
                "`use_bidirectional_attention` in a {} config",
                self.model_type
            )));
        }
        Ok(())
    }
}

/// `rope_parameters` as [`RopeParameters`]; a value of the wrong type is an error naming its key
/// (`rope_parameters.rope_theta`), found by parsing each key alone.
pub(crate) fn parse_rope_parameters(value: serde_json::Value) -> Result<RopeParameters> {
    serde_json::from_value(value.clone()).map_err(|e| {
        let bad_key = value.as_object().and_then(|fields| {
            fields.iter().find_map(|(key, v)| {
                let alone = serde_json::json!({ key: v });
                serde_json::from_value::<RopeParameters>(alone)
                    .is_err()
                    .then(|| key.clone())
            })
        });
        match bad_key {
            Some(key) => Error::invalid_arg(format!("rope_parameters.{key}"), e.to_string()),
            None => Error::invalid_arg("rope_parameters", e.to_string()),
        }
    })
}
