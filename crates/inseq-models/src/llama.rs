//! Llama family on the block layer (`LlamaForCausalLM`, `MistralForCausalLM` with its sliding
//! window, `Qwen2ForCausalLM`): RMSNorm, RoPE, grouped-query attention, SiLU-gated MLP; and the
//! Llama-like base spec the other RoPE architectures start from.

use crate::blocks::block::Residual;
use crate::blocks::config::CommonConfig;
use crate::blocks::{Decoder, DecoderSpec, Names, attention::FusedLayout, norm::NormKind};
use crate::weights::Weights;
use inseq_core::Result;

pub(crate) use crate::blocks::hooks::rms_norm;
pub use crate::blocks::rope::RopeParameters;

/// The fields of a Llama-style `config.json` this implementation uses.
pub type LlamaConfig = CommonConfig;

/// A Llama-family language model.
pub type Llama = Decoder;

/// Llama's weight names.
pub(crate) const NAMES: Names = Names {
    embed: "embed_tokens.weight",
    positions: None,
    layers: "layers",
    attn_norm: Some("input_layernorm"),
    attn_post: None,
    mlp_norm: Some("post_attention_layernorm"),
    mlp_post: None,
    qkv: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    o: "self_attn.o_proj",
    q_norm: None,
    k_norm: None,
    mlp: &["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    final_norm: Some("norm"),
    lm_head: "lm_head.weight",
};

/// The spec of a pre-norm RMSNorm decoder with one rotary embedding on every layer, a gated
/// MLP and full attention: what Llama is and the others start from.
pub(crate) fn base_spec(
    c: &CommonConfig,
    hf_class: &str,
    default_act: &str,
) -> Result<DecoderSpec> {
    c.check_causal()?;
    let layers = c.num_hidden_layers;
    Ok(DecoderSpec {
        info: c.info(hf_class),
        heads: c.num_attention_heads,
        kv_heads: c.kv_heads(),
        head_dim: c.head_dim(),
        intermediate: c.intermediate_size,
        norm: NormKind::Rms {
            eps: c.rms_norm_eps.unwrap_or(1e-6),
            plus_one: false,
        },
        residual: Residual::Sequential,
        fused_qkv: FusedLayout::Blocks,
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        mlp_bias: false,
        conv1d: false,
        gated_mlp: true,
        act: c.act(default_act),
        qk_norm_per_head: None,
        scale: 1.0 / (c.head_dim() as f64).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        embed_scale: None,
        learned_positions: None,
        projections: None,
        ropes: vec![c.rope(None, 10000.0)?],
        alibi: false,
        layer_rope: vec![Some(0); layers],
        layer_window: vec![None; layers],
        tied: c.tie_word_embeddings.unwrap_or(false),
        dropout: c.attention_dropout.unwrap_or(0.0),
        names: NAMES,
    })
}

/// Builds a Llama, Mistral or Qwen2 model from its config and weights.
pub fn load(c: LlamaConfig, w: &mut Weights) -> Result<Decoder> {
    let spec = match c.model_type.as_str() {
        "mistral" => {
            let mut spec = base_spec(&c, "MistralForCausalLM", "silu")?;
            (spec.qkv_bias, spec.o_bias) = (false, false);
            let window = c.sliding_window.unwrap_or(Some(4096));
            spec.layer_window = vec![window; c.num_hidden_layers];
            spec
        }
        "qwen2" => {
            let mut spec = base_spec(&c, "Qwen2ForCausalLM", "silu")?;
            (spec.qkv_bias, spec.o_bias) = (true, false);
            spec.layer_window = c.qwen_windows(4096, 28)?;
            spec
        }
        _ => {
            let mut spec = base_spec(&c, "LlamaForCausalLM", "silu")?;
            spec.mlp_bias = c.mlp_bias;
            spec
        }
    };
    spec.load(w)
}
