//! Gemma (`GemmaForCausalLM`), Gemma 2 (`Gemma2ForCausalLM`) and Gemma 3 text
//! (`Gemma3ForCausalLM`, `model_type` `gemma3_text`) on the block layer: RMSNorm with a
//! `(1 + weight)` scale, embeddings scaled by `sqrt(hidden_size)`, a GELU-gated MLP; Gemma 2 adds
//! sandwich norms, `query_pre_attn_scalar`, attention and final logit soft-capping and sliding
//! layers; Gemma 3 adds per-head query/key norms and a rotary embedding per layer type.

use crate::blocks::config::CommonConfig;
use crate::blocks::norm::NormKind;
use crate::blocks::rope::{RopeParameters, RopeSpec};
use crate::blocks::{Decoder, DecoderSpec, Names};
use crate::llama::{NAMES as LLAMA, base_spec};
use crate::weights::Weights;
use inseq_core::{Error, Result};

/// Gemma 2 and 3's sandwich norms (and Gemma 3's query/key norms).
const SANDWICH: Names = Names {
    attn_post: Some("post_attention_layernorm"),
    mlp_norm: Some("pre_feedforward_layernorm"),
    mlp_post: Some("post_feedforward_layernorm"),
    q_norm: Some("self_attn.q_norm"),
    k_norm: Some("self_attn.k_norm"),
    ..LLAMA
};

/// Builds a Gemma, Gemma 2 or Gemma 3 text model from its config and weights.
pub fn load(c: CommonConfig, w: &mut Weights) -> Result<Decoder> {
    let (class, pattern) = match c.model_type.as_str() {
        "gemma" => ("GemmaForCausalLM", None),
        "gemma2" => ("Gemma2ForCausalLM", Some(2)),
        _ => (
            "Gemma3ForCausalLM",
            Some(c.sliding_window_pattern.unwrap_or(6).max(1)),
        ),
    };
    let mut spec = base_spec(&c, class, "gelu_pytorch_tanh")?;
    spec.norm = NormKind::Rms {
        eps: c.rms_norm_eps.unwrap_or(1e-6),
        plus_one: true,
    };
    spec.embed_scale = Some((c.hidden_size as f64).sqrt());
    spec.tied = c.tie_word_embeddings.unwrap_or(true);
    let Some(pattern) = pattern else {
        return spec.load(w);
    };
    let gemma2 = c.model_type == "gemma2";
    spec.names = SANDWICH;
    if gemma2 {
        (spec.names.q_norm, spec.names.k_norm) = (None, None);
    } else {
        spec.qk_norm_per_head = Some(true);
    }
    spec.scale = 1.0 / c.query_pre_attn_scalar.unwrap_or(256.0).sqrt();
    let softcaps = if gemma2 {
        (Some(50.0), Some(30.0))
    } else {
        (None, None)
    };
    spec.attn_softcap = c.attn_logit_softcapping.unwrap_or(softcaps.0);
    spec.final_softcap = c.final_logit_softcapping.unwrap_or(softcaps.1);
    let types = c.layer_types.clone().unwrap_or_else(|| {
        let kind = |i: usize| {
            if !(i + 1).is_multiple_of(pattern) {
                "sliding_attention"
            } else {
                "full_attention"
            }
        };
        (0..c.num_hidden_layers)
            .map(|i| kind(i).to_string())
            .collect()
    });
    if types.len() != c.num_hidden_layers {
        return Err(Error::invalid_arg(
            "layer_types",
            format!("{} entries for {} layers", types.len(), c.num_hidden_layers),
        ));
    }
    let window = c.sliding_window.unwrap_or(Some(4096));
    spec.layer_window = DecoderSpec::windows_from_layer_types(&types, window)?;
    if !gemma2 {
        // Rotary embedding 0 for full-attention layers, 1 for sliding ones.
        spec.ropes = vec![
            gemma3_rope(&c, "full_attention")?,
            gemma3_rope(&c, "sliding_attention")?,
        ];
        spec.layer_rope = spec
            .layer_window
            .iter()
            .map(|w| Some(usize::from(w.is_some())))
            .collect();
    }
    spec.load(w)
}

/// Gemma 3's rotary embedding of one layer type: `rope_parameters[type]`, else `rope_scaling` for
/// full-attention layers; `rope_theta` 1e6 (full) or `rope_local_base_freq` 1e4 (sliding).
fn gemma3_rope(c: &CommonConfig, layer_type: &str) -> Result<RopeSpec> {
    let full = layer_type == "full_attention";
    let keyed = c
        .rope_parameters
        .as_ref()
        .and_then(|v| v.get(layer_type))
        .cloned();
    let mut p: RopeParameters = match keyed {
        Some(v) => crate::blocks::config::parse_rope_parameters(v)?,
        None if full => c.rope_scaling.clone().unwrap_or_default(),
        None => RopeParameters::default(),
    };
    let theta = if full {
        c.rope_theta.unwrap_or(1e6)
    } else {
        c.rope_local_base_freq.unwrap_or(1e4)
    };
    p.rope_theta = p.rope_theta.or(Some(theta));
    Ok(RopeSpec {
        params: p,
        head_dim: c.head_dim(),
        partial: 1.0,
        max_positions: c.max_position_embeddings,
    })
}
