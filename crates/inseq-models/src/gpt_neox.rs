//! GPT-NeoX (`GPTNeoXForCausalLM`, Pythia) on the block layer: LayerNorm, a fused
//! `query_key_value` laid out per head, partial rotary embeddings, a plain MLP and the parallel
//! residual (`use_parallel_residual`) or the sequential one.

use serde::Deserialize;

use crate::blocks::attention::FusedLayout;
use crate::blocks::block::Residual;
use crate::blocks::norm::NormKind;
use crate::blocks::{Decoder, Names, config::CommonConfig};
use crate::llama::base_spec;
use crate::weights::Weights;
use inseq_core::Result;

/// The GPT-NeoX fields beyond [`CommonConfig`].
#[derive(Debug, Clone, Deserialize)]
pub struct GptNeoxConfig {
    #[serde(flatten)]
    common: CommonConfig,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "yes")]
    use_parallel_residual: bool,
    /// Older configs: the rotated fraction and base at the top level.
    #[serde(default)]
    rotary_pct: Option<f64>,
    #[serde(default)]
    rotary_emb_base: Option<f64>,
    #[serde(default)]
    hidden_dropout: Option<f64>,
    /// Biases on the attention projections (default true).
    #[serde(default)]
    attention_bias: Option<bool>,
}

fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

const NAMES: Names = Names {
    embed: "embed_in.weight",
    positions: None,
    layers: "layers",
    attn_norm: Some("input_layernorm"),
    attn_post: None,
    mlp_norm: Some("post_attention_layernorm"),
    mlp_post: None,
    qkv: &["attention.query_key_value"],
    o: "attention.dense",
    q_norm: None,
    k_norm: None,
    mlp: &["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    final_norm: Some("final_layer_norm"),
    lm_head: "embed_out.weight",
};

/// Builds a GPT-NeoX model from its config and weights.
pub fn load(c: GptNeoxConfig, w: &mut Weights) -> Result<Decoder> {
    let mut common = c.common;
    let in_params = |k: &str| {
        common
            .rope_parameters
            .as_ref()
            .is_some_and(|p| p.get(k).is_some())
    };
    if !in_params("partial_rotary_factor") {
        common.partial_rotary_factor = Some(c.rotary_pct.unwrap_or(0.25));
    }
    if !in_params("rope_theta") && common.rope_theta.is_none() {
        common.rope_theta = c.rotary_emb_base;
    }
    common.attention_bias = c.attention_bias.unwrap_or(true);
    let mut spec = base_spec(&common, "GPTNeoXForCausalLM", "gelu")?;
    spec.names = NAMES;
    spec.norm = NormKind::Layer {
        eps: c.layer_norm_eps,
        bias: true,
        affine: true,
    };
    spec.residual = if c.use_parallel_residual {
        Residual::Parallel
    } else {
        Residual::Sequential
    };
    spec.fused_qkv = FusedLayout::Grouped;
    spec.kv_heads = spec.heads;
    (spec.gated_mlp, spec.mlp_bias) = (false, true);
    spec.dropout = c.hidden_dropout.unwrap_or(0.0);
    spec.load(w)
}
