//! Qwen3 (`Qwen3ForCausalLM`) on the block layer: Llama with per-head RMS query/key norms,
//! optional attention biases and Qwen's sliding layers.

use crate::blocks::{Decoder, Names, config::CommonConfig};
use crate::llama::{NAMES as LLAMA, base_spec};
use crate::weights::Weights;
use inseq_core::Result;

const NAMES: Names = Names {
    q_norm: Some("self_attn.q_norm"),
    k_norm: Some("self_attn.k_norm"),
    ..LLAMA
};

/// Builds a Qwen3 model from its config and weights.
pub fn load(c: CommonConfig, w: &mut Weights) -> Result<Decoder> {
    let mut spec = base_spec(&c, "Qwen3ForCausalLM", "silu")?;
    spec.names = NAMES;
    spec.qk_norm_per_head = Some(true);
    spec.layer_window = c.qwen_windows(4096, 28)?;
    spec.load(w)
}
