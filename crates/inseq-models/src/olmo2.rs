//! OLMo 2 (`Olmo2ForCausalLM`) on the block layer: norms after the attention and the MLP
//! (not before), and RMS query/key norms over the whole projections.

use crate::blocks::{Decoder, Names, config::CommonConfig};
use crate::llama::{NAMES as LLAMA, base_spec};
use crate::weights::Weights;
use inseq_core::Result;

const NAMES: Names = Names {
    attn_norm: None,
    attn_post: Some("post_attention_layernorm"),
    mlp_norm: None,
    mlp_post: Some("post_feedforward_layernorm"),
    q_norm: Some("self_attn.q_norm"),
    k_norm: Some("self_attn.k_norm"),
    ..LLAMA
};

/// Builds an OLMo 2 model from its config and weights.
pub fn load(c: CommonConfig, w: &mut Weights) -> Result<Decoder> {
    let mut spec = base_spec(&c, "Olmo2ForCausalLM", "silu")?;
    spec.names = NAMES;
    spec.qk_norm_per_head = Some(false);
    spec.norm = crate::blocks::norm::NormKind::Rms {
        eps: c.rms_norm_eps.unwrap_or(1e-5),
        plus_one: false,
    };
    spec.load(w)
}
