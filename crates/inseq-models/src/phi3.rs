//! Phi-3 (`Phi3ForCausalLM`) on the block layer: Llama with a fused `qkv_proj`, a fused
//! `gate_up_proj` (gate first), partial rotary embeddings and an optional sliding window on
//! every layer.

use crate::blocks::{Decoder, Names, config::CommonConfig};
use crate::llama::{NAMES as LLAMA, base_spec};
use crate::weights::Weights;
use inseq_core::Result;

const NAMES: Names = Names {
    qkv: &["self_attn.qkv_proj"],
    mlp: &["mlp.gate_up_proj", "mlp.down_proj"],
    ..LLAMA
};

/// Builds a Phi-3 model from its config and weights.
pub fn load(c: CommonConfig, w: &mut Weights) -> Result<Decoder> {
    let mut spec = base_spec(&c, "Phi3ForCausalLM", "silu")?;
    spec.names = NAMES;
    (spec.qkv_bias, spec.o_bias) = (false, false);
    spec.layer_window = vec![c.sliding_window.flatten(); c.num_hidden_layers];
    spec.dropout = c.resid_pdrop.unwrap_or(0.0);
    spec.norm = crate::blocks::norm::NormKind::Rms {
        eps: c.rms_norm_eps.unwrap_or(1e-5),
        plus_one: false,
    };
    spec.load(w)
}
