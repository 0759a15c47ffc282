//! Falcon (`FalconForCausalLM`) on the block layer: LayerNorm, a fused `query_key_value`
//! (grouped per key/value head in the new decoder architecture, `[q | k | v]` with one key/value
//! head for multi-query, per head otherwise), rotary embeddings or ALiBi biases (`alibi`,
//! falcon-rw), a plain MLP and the parallel or sequential residual.

use serde::Deserialize;

use crate::blocks::attention::FusedLayout;
use crate::blocks::block::Residual;
use crate::blocks::norm::NormKind;
use crate::blocks::{Decoder, Names, config::CommonConfig};
use crate::llama::base_spec;
use crate::weights::Weights;
use inseq_core::Result;

/// The Falcon fields beyond [`CommonConfig`] (whose `intermediate_size` is `ffn_hidden_size`).
#[derive(Debug, Clone, Deserialize)]
pub struct FalconConfig {
    #[serde(flatten)]
    common: CommonConfig,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default)]
    num_kv_heads: Option<usize>,
    #[serde(default)]
    alibi: bool,
    #[serde(default)]
    new_decoder_architecture: bool,
    #[serde(default = "yes")]
    multi_query: bool,
    #[serde(default = "yes")]
    parallel_attn: bool,
    #[serde(default)]
    bias: bool,
    #[serde(default)]
    num_ln_in_parallel_attn: Option<usize>,
    #[serde(default = "default_act")]
    activation: String,
    #[serde(default)]
    hidden_dropout: Option<f64>,
}

fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn default_act() -> String {
    "gelu".into()
}

const NAMES: Names = Names {
    embed: "word_embeddings.weight",
    positions: None,
    layers: "h",
    attn_norm: Some("input_layernorm"),
    attn_post: None,
    mlp_norm: None,
    mlp_post: None,
    qkv: &["self_attention.query_key_value"],
    o: "self_attention.dense",
    q_norm: None,
    k_norm: None,
    mlp: &["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    final_norm: Some("ln_f"),
    lm_head: "lm_head.weight",
};

/// Reads a Falcon config: `ffn_hidden_size` (default `4·hidden_size`) as `intermediate_size`.
pub fn parse(mut v: serde_json::Value) -> serde_json::Result<FalconConfig> {
    if let Some(map) = v.as_object_mut() {
        let hidden = map
            .get("hidden_size")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let ffn = map.get("ffn_hidden_size").filter(|f| !f.is_null()).cloned();
        map.insert(
            "intermediate_size".into(),
            ffn.unwrap_or((4 * hidden).into()),
        );
        map.remove("num_key_value_heads");
    }
    serde_json::from_value(v)
}

/// Builds a Falcon model from its config and weights.
pub fn load(c: FalconConfig, w: &mut Weights) -> Result<Decoder> {
    let mut spec = base_spec(&c.common, "FalconForCausalLM", "gelu")?;
    if c.alibi {
        // transformers' FalconAttention rotates only without ALiBi.
        (spec.alibi, spec.ropes) = (true, vec![]);
        spec.layer_rope = vec![None; c.common.num_hidden_layers];
    }
    spec.names = NAMES;
    spec.norm = NormKind::Layer {
        eps: c.layer_norm_epsilon,
        bias: true,
        affine: true,
    };
    spec.act = c.activation.clone();
    (spec.qkv_bias, spec.o_bias, spec.mlp_bias, spec.gated_mlp) = (c.bias, c.bias, c.bias, false);
    spec.tied = c.common.tie_word_embeddings.unwrap_or(true);
    spec.dropout = c.hidden_dropout.unwrap_or(0.0);
    let heads = spec.heads;
    (spec.kv_heads, spec.fused_qkv) = if c.new_decoder_architecture {
        (c.num_kv_heads.unwrap_or(heads), FusedLayout::Grouped)
    } else if c.multi_query {
        (1, FusedLayout::Blocks)
    } else {
        (heads, FusedLayout::Grouped)
    };
    let two_norms = c.new_decoder_architecture && c.num_ln_in_parallel_attn.unwrap_or(2) == 2;
    spec.residual = if c.new_decoder_architecture || c.parallel_attn {
        Residual::Parallel
    } else {
        Residual::Sequential
    };
    if two_norms {
        (spec.names.attn_norm, spec.names.mlp_norm) = (Some("ln_attn"), Some("ln_mlp"));
    } else if spec.residual == Residual::Sequential {
        spec.names.mlp_norm = Some("post_attention_layernorm");
    }
    spec.load(w)
}
