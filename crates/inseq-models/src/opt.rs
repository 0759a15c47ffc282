//! OPT (`OPTForCausalLM`) on the block layer: learned positions read at `position + 2`,
//! LayerNorm before (`do_layer_norm_before`) or after each sublayer, a plain MLP, a tied head, and
//! token embeddings of `word_embed_proj_dim` projected in and out (`project_in`/`project_out`)
//! when that differs from `hidden_size` (OPT-350m).

use serde::Deserialize;

use crate::blocks::block::Residual;
use crate::blocks::norm::NormKind;
use crate::blocks::spec::Projections;
use crate::blocks::{Decoder, DecoderSpec, Names};
use crate::model::ModelInfo;
use crate::weights::Weights;
use inseq_core::Result;

/// The fields of an OPT `config.json` this implementation uses.
#[derive(Debug, Clone, Deserialize)]
pub struct OptConfig {
    vocab_size: usize,
    hidden_size: usize,
    ffn_dim: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_ctx")]
    max_position_embeddings: usize,
    #[serde(default = "yes")]
    do_layer_norm_before: bool,
    #[serde(default)]
    _remove_final_layer_norm: bool,
    #[serde(default)]
    word_embed_proj_dim: Option<usize>,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default = "default_act")]
    activation_function: String,
    #[serde(default = "yes")]
    enable_bias: bool,
    #[serde(default = "yes")]
    layer_norm_elementwise_affine: bool,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default)]
    bos_token_id: Option<usize>,
    #[serde(default, deserialize_with = "crate::special_tokens::first_token_id")]
    eos_token_id: Option<usize>,
    #[serde(default)]
    pad_token_id: Option<usize>,
}

fn default_ctx() -> usize {
    2048
}
fn default_act() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}

const NAMES: Names = Names {
    embed: "decoder.embed_tokens.weight",
    positions: Some("decoder.embed_positions.weight"),
    layers: "decoder.layers",
    attn_norm: Some("self_attn_layer_norm"),
    attn_post: None,
    mlp_norm: Some("final_layer_norm"),
    mlp_post: None,
    qkv: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    o: "self_attn.out_proj",
    q_norm: None,
    k_norm: None,
    mlp: &["fc1", "fc2"],
    final_norm: Some("decoder.final_layer_norm"),
    lm_head: "lm_head.weight",
};

/// Builds an OPT model from its config and weights.
pub fn load(c: OptConfig, w: &mut Weights) -> Result<Decoder> {
    let (d, h, layers) = (c.hidden_size, c.num_attention_heads, c.num_hidden_layers);
    let mut names = NAMES;
    if !c.do_layer_norm_before || c._remove_final_layer_norm {
        names.final_norm = None;
    }
    let info = ModelInfo {
        architecture: "opt".into(),
        hf_class: "OPTForCausalLM".into(),
        vocab_size: c.vocab_size,
        hidden_size: d,
        num_layers: layers,
        num_heads: h,
        max_positions: c.max_position_embeddings,
        bos_token_id: c.bos_token_id,
        eos_token_id: c.eos_token_id,
        pad_token_id: c.pad_token_id,
        decoder_start_token_id: None,
    };
    let affine = c.layer_norm_elementwise_affine;
    let norm = NormKind::Layer {
        eps: 1e-5,
        bias: true,
        affine,
    };
    let act = &c.activation_function;
    let mut spec = DecoderSpec::learned_positions(info, 2, c.ffn_dim, norm, act, names);
    if !c.do_layer_norm_before {
        spec.residual = Residual::PostNorm;
    }
    (spec.qkv_bias, spec.o_bias, spec.mlp_bias) = (c.enable_bias, c.enable_bias, c.enable_bias);
    spec.tied = c.tie_word_embeddings;
    spec.projections = c
        .word_embed_proj_dim
        .filter(|&e| e != d)
        .map(|dim| Projections {
            dim,
            input: "decoder.project_in",
            output: "decoder.project_out",
        });
    spec.dropout = c.dropout.unwrap_or(0.1);
    spec.load(w)
}
