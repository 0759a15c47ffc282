//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-norm blocks, GELU MLP, tied LM head.

use serde::Deserialize;

use crate::blocks::norm::NormKind;
use crate::blocks::{Decoder, DecoderSpec, Names};
use crate::model::ModelInfo;
use crate::weights::Weights;
use inseq_core::{Error, Result};

pub(crate) use crate::blocks::hooks::{
    empty_output, identity_rule, layer_norm, lm_head, override_layer, uniform_rule, zero_values,
};

/// The fields of a GPT-2 `config.json` this implementation uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Context length.
    pub n_positions: usize,
    /// MLP inner size (default `4 * n_embd`).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// MLP activation (`gelu_new` by default).
    #[serde(default = "default_act")]
    pub activation_function: String,
    /// Divide attention scores by `sqrt(head_dim)`.
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    /// Scale attention by `1 / (layer + 1)` (not implemented: an error).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Cross-attention blocks (not implemented: an error).
    #[serde(default)]
    pub add_cross_attention: bool,
    /// LM head shares the token embeddings.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Residual dropout probability (used by Monte Carlo dropout).
    #[serde(default)]
    pub resid_pdrop: Option<f64>,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<usize>,
    /// End-of-sequence id (the first, where the config lists several).
    #[serde(default, deserialize_with = "crate::special_tokens::first_token_id")]
    pub eos_token_id: Option<usize>,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: Option<usize>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}
fn yes() -> bool {
    true
}

/// A GPT-2 language model.
pub type Gpt2 = Decoder;

const NAMES: Names = Names {
    embed: "wte.weight",
    positions: Some("wpe.weight"),
    layers: "h",
    attn_norm: Some("ln_1"),
    attn_post: None,
    mlp_norm: Some("ln_2"),
    mlp_post: None,
    qkv: &["attn.c_attn"],
    o: "attn.c_proj",
    q_norm: None,
    k_norm: None,
    mlp: &["mlp.c_fc", "mlp.c_proj"],
    final_norm: Some("ln_f"),
    lm_head: "lm_head.weight",
};

/// Builds a GPT-2 model from its config and weights.
pub fn load(c: Gpt2Config, w: &mut Weights) -> Result<Decoder> {
    let d = c.n_embd;
    if c.n_head == 0 || !d.is_multiple_of(c.n_head) {
        return Err(Error::invalid_arg(
            "n_head",
            format!("{} does not divide n_embd {d}", c.n_head),
        ));
    }
    if c.scale_attn_by_inverse_layer_idx || c.add_cross_attention {
        return Err(Error::Unsupported(
            "gpt2 `scale_attn_by_inverse_layer_idx` / `add_cross_attention`".into(),
        ));
    }
    let info = ModelInfo {
        architecture: "gpt2".into(),
        hf_class: "GPT2LMHeadModel".into(),
        vocab_size: c.vocab_size,
        hidden_size: d,
        num_layers: c.n_layer,
        num_heads: c.n_head,
        max_positions: c.n_positions,
        bos_token_id: c.bos_token_id,
        eos_token_id: c.eos_token_id,
        pad_token_id: c.pad_token_id,
        decoder_start_token_id: None,
    };
    let norm = NormKind::Layer {
        eps: c.layer_norm_epsilon,
        bias: true,
        affine: true,
    };
    let inner = c.n_inner.unwrap_or(4 * d);
    let mut spec =
        DecoderSpec::learned_positions(info, 0, inner, norm, &c.activation_function, NAMES);
    spec.conv1d = true;
    if !c.scale_attn_weights {
        spec.scale = 1.0;
    }
    spec.tied = c.tie_word_embeddings;
    spec.dropout = c.resid_pdrop.unwrap_or(0.1);
    spec.load(w)
}
