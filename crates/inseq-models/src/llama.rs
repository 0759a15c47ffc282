//! Llama family (`LlamaForCausalLM`; also Mistral/Qwen2-style layouts): RoPE,
//! RMSNorm, grouped-query attention and a SiLU-gated MLP.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::nn::Act;
use serde::Deserialize;

use std::borrow::Cow;

use crate::attention::{AttentionMask, AttentionTape, decoder_self_attention};
use crate::backprop::{
    SharedForward, Span, linear_backward, rms_norm_backward, rms_norm_taped, row_at, silu_taped,
};
use crate::checkpoint::{KEEP_TAPES_BYTES, Stored, backward_blockwise, run_blocks, tape_of};
use crate::gpt2::{
    decoder_self_kv, empty_output, identity_rule, lm_head, override_layer, uniform_rule,
};
use crate::model::{
    ForwardOptions, LanguageModel, LayerRef, ModelInfo, ModelInput, ModelKind, ModelOutput,
};
use crate::nn::{
    Embedding, Linear, LmHead, RmsNorm, attention_bias, merge_heads, new_positions, split_heads,
};
use crate::weights::Weights;
use inseq_core::{Error, Result};

/// RoPE parameters (`rope_scaling` / `rope_parameters` in `config.json`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    /// Base frequency.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// `default` or `llama3`.
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// Llama-3 scaling factor.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Llama-3 low-frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama-3 high-frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// Llama-3 original context.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// The fields of a Llama-style `config.json` this implementation uses.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral`, `qwen2`...
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size (default `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (older configs).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (older configs).
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// RoPE parameters (newer configs).
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Context length.
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    /// LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on the attention projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// MLP activation.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Attention dropout probability (used by Monte Carlo dropout).
    #[serde(default)]
    pub attention_dropout: Option<f64>,
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

fn default_model_type() -> String {
    "llama".into()
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_ctx() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn rope(&self) -> RopeParameters {
        let mut p = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_default();
        if p.rope_theta.is_none() {
            p.rope_theta = Some(self.rope_theta.unwrap_or(10000.0));
        }
        p
    }

    /// Inverse frequencies of the rotary embedding, with Llama-3 scaling if configured.
    pub fn inv_freq(&self) -> Result<Vec<f64>> {
        let p = self.rope();
        let theta = p.rope_theta.unwrap_or(10000.0);
        let d = self.head_dim();
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64))
            .collect();
        match p.rope_type.as_deref() {
            None | Some("default") => Ok(base),
            Some("llama3") => {
                let factor = p.factor.unwrap_or(8.0);
                let low = p.low_freq_factor.unwrap_or(1.0);
                let high = p.high_freq_factor.unwrap_or(4.0);
                let old = p.original_max_position_embeddings.unwrap_or(8192) as f64;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                Ok(base
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect())
            }
            Some(other) => Err(Error::Unsupported(format!("rope_type `{other}`"))),
        }
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A Llama-family language model.
pub struct Llama {
    info: ModelInfo,
    config: LlamaConfig,
    act: Act,
    inv_freq: Vec<f64>,
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: LmHead,
    device: Device,
}

impl Llama {
    /// Builds the model from its config and weights.
    pub fn load(config: LlamaConfig, w: &mut Weights) -> Result<Self> {
        let d = config.hidden_size;
        let hd = config.head_dim();
        let (h, kvh) = (config.num_attention_heads, config.kv_heads());
        if h == 0 || kvh == 0 || !h.is_multiple_of(kvh) {
            return Err(Error::invalid_arg(
                "num_key_value_heads",
                format!("{kvh} does not divide num_attention_heads {h}"),
            ));
        }
        let (qkv_bias, o_bias) = match config.model_type.as_str() {
            "qwen2" => (true, false),
            _ => (config.attention_bias, config.attention_bias),
        };
        let eps = config.rms_norm_eps;
        let inter = config.intermediate_size;
        let embed_tokens = Embedding {
            table: w.tensor2("embed_tokens.weight", [config.vocab_size, d])?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("layers.{i}");
            let mb = config.mlp_bias;
            layers.push(Layer {
                input_norm: RmsNorm::load(w, &format!("{p}.input_layernorm"), d, eps)?,
                q: Linear::load_torch(w, &format!("{p}.self_attn.q_proj"), qkv_bias, [h * hd, d])?,
                k: Linear::load_torch(
                    w,
                    &format!("{p}.self_attn.k_proj"),
                    qkv_bias,
                    [kvh * hd, d],
                )?,
                v: Linear::load_torch(
                    w,
                    &format!("{p}.self_attn.v_proj"),
                    qkv_bias,
                    [kvh * hd, d],
                )?,
                o: Linear::load_torch(w, &format!("{p}.self_attn.o_proj"), o_bias, [d, h * hd])?,
                post_norm: RmsNorm::load(w, &format!("{p}.post_attention_layernorm"), d, eps)?,
                gate: Linear::load_torch(w, &format!("{p}.mlp.gate_proj"), mb, [inter, d])?,
                up: Linear::load_torch(w, &format!("{p}.mlp.up_proj"), mb, [inter, d])?,
                down: Linear::load_torch(w, &format!("{p}.mlp.down_proj"), mb, [d, inter])?,
            });
        }
        let norm = RmsNorm::load(w, "norm", d, eps)?;
        let lm_head = LmHead::from_table(
            if !config.tie_word_embeddings && w.contains("lm_head.weight") {
                w.tensor2("lm_head.weight", [config.vocab_size, d])?
            } else {
                embed_tokens.table.clone()
            },
        );
        let info = ModelInfo {
            architecture: config.model_type.clone(),
            hf_class: match config.model_type.as_str() {
                "qwen2" => "Qwen2ForCausalLM",
                "mistral" => "MistralForCausalLM",
                _ => "LlamaForCausalLM",
            }
            .into(),
            vocab_size: config.vocab_size,
            hidden_size: d,
            num_layers: config.num_hidden_layers,
            num_heads: h,
            max_positions: config.max_position_embeddings,
            bos_token_id: config.bos_token_id,
            eos_token_id: config.eos_token_id,
            pad_token_id: config.pad_token_id,
            decoder_start_token_id: None,
        };
        Ok(Self {
            act: Act::parse(&config.hidden_act)?,
            inv_freq: config.inv_freq()?,
            info,
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            device: w.device().clone(),
        })
    }

    /// `[batch, 1, seq, head_dim]` cos and sin tables for the given positions.
    fn rope_tables(&self, positions: &[Vec<usize>]) -> (Tensor<4>, Tensor<4>) {
        let b = positions.len();
        let s = positions.first().map_or(0, Vec::len);
        let hd = self.config.head_dim();
        let half = hd / 2;
        let mut cos = Vec::with_capacity(b * s * hd);
        let mut sin = Vec::with_capacity(b * s * hd);
        for row in positions {
            for &p in row {
                for _ in 0..2 {
                    for f in &self.inv_freq[..half] {
                        let angle = p as f64 * f;
                        cos.push(angle.cos() as f32);
                        sin.push(angle.sin() as f32);
                    }
                }
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [b, 1, s, hd]), &self.device),
            Tensor::from_data(TensorData::new(sin, [b, 1, s, hd]), &self.device),
        )
    }
}

/// RMS normalisation; with `lrp`, the root mean square is detached (AttnLRP).
pub(crate) fn rms_norm(norm: &RmsNorm, x: Tensor<3>, lrp: bool) -> Tensor<3> {
    if !lrp {
        return norm.forward(x);
    }
    let ms = x.clone().square().mean_dim(2);
    x / (ms + norm.eps).sqrt().detach() * norm.gamma.clone().unsqueeze::<3>()
}

/// Applies the rotary embedding (`x * cos + rotate_half(x) * sin`) to `[batch, heads, seq, head_dim]`.
fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

impl LanguageModel for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn kind(&self) -> ModelKind {
        ModelKind::DecoderOnly
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.embed_tokens.forward(ids)
    }

    fn supports_internal_hooks(&self) -> bool {
        true
    }

    fn supports_kv_cache(&self) -> bool {
        true
    }

    fn dropout_probability(&self) -> f64 {
        self.config.attention_dropout.unwrap_or(0.0)
    }

    fn forward_shared(&self, input: &ModelInput) -> Option<Box<dyn SharedForward + '_>> {
        self.has_taped_backward().then(|| {
            Box::new(self.forward_taped(input, KEEP_TAPES_BYTES)) as Box<dyn SharedForward + '_>
        })
    }

    fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput {
        let [_, s, _] = input.target_embeds.dims();
        let (h, kvh) = (self.config.num_attention_heads, self.config.kv_heads());
        let (cos, sin) = self.rope_tables(&new_positions(&input.target_mask, s));
        let mask = AttentionMask::new(&input.target_mask, s, true);
        let scale = self.attention_scale();
        let mut x = input.target_embeds;
        let mut out = empty_output(&self.device);
        if options.hidden_states {
            out.hidden_states.push(x.clone());
        }
        let lrp = options.attn_lrp;
        for (i, layer) in self.layers.iter().enumerate() {
            let n = rms_norm(&layer.input_norm, x.clone(), lrp);
            let q = apply_rope(split_heads(layer.q.forward(n.clone()), h), &cos, &sin);
            let k = apply_rope(split_heads(layer.k.forward(n.clone()), kvh), &cos, &sin);
            let v = split_heads(layer.v.forward(n), kvh);
            let (k, v) = decoder_self_kv(k, v, &options, i, &self.device);
            let ctx = decoder_self_attention(
                (q, k, v),
                &mask,
                || attention_bias(&input.target_mask, s, true, &self.device),
                scale,
                lrp,
                &options,
                &mut out,
            );
            let drop = options.dropout.as_ref();
            x = x + crate::nn::mc_dropout(layer.o.forward(merge_heads(ctx)), drop, 2 * i as u64);
            let n = rms_norm(&layer.post_norm, x.clone(), lrp);
            let act = |t: Tensor<3>| self.act.apply(t);
            let gate = layer.gate.forward(n.clone());
            let mlp = if lrp {
                let gated = identity_rule(gate, act);
                layer
                    .down
                    .forward(uniform_rule(gated * layer.up.forward(n)))
            } else {
                layer.down.forward(act(gate) * layer.up.forward(n))
            };
            x = x + crate::nn::mc_dropout(mlp, drop, 2 * i as u64 + 1);
            x = override_layer(x, options.layer_override.as_ref(), LayerRef::Decoder(i));
            if options.hidden_states {
                out.hidden_states.push(x.clone());
            }
        }
        let x = rms_norm(&self.norm, x, lrp);
        if options.hidden_states {
            out.final_hidden_state = Some(x.clone());
        }
        out.logits = lm_head(x, &self.lm_head, &options);
        out
    }
}

/// The activations of one Llama block that its backward pass reads.
#[derive(Clone)]
struct LayerTape {
    /// Block input and its reciprocal RMS.
    x: Tensor<3>,
    r_in: Tensor<3>,
    /// Rotated queries, keys and values (the weights are recomputed in the backward pass).
    attn: AttentionTape,
    /// Input of the MLP half and its reciprocal RMS.
    mid: Tensor<3>,
    r_mid: Tensor<3>,
    /// `silu(gate)` and `up ⊙ silu'(gate)`: the MLP's backward pass is then two products.
    act: Tensor<3>,
    up_dsilu: Tensor<3>,
}

impl LayerTape {
    /// Floats the tape holds.
    fn floats(&self) -> usize {
        let n3 = |t: &Tensor<3>| t.shape().num_elements();
        let n4 = |t: &Tensor<4>| t.shape().num_elements();
        [
            &self.x,
            &self.r_in,
            &self.mid,
            &self.r_mid,
            &self.act,
            &self.up_dsilu,
        ]
        .into_iter()
        .map(n3)
        .sum::<usize>()
            + n4(&self.attn.q)
            + n4(&self.attn.k)
            + n4(&self.attn.v)
    }
}

/// A Llama forward pass whose activations are kept for [`SharedForward::backward`].
struct LlamaTape<'a> {
    model: &'a Llama,
    layers: Vec<Stored<LayerTape>>,
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: AttentionMask,
    /// Input of the final norm, its reciprocal RMS and output.
    last: Tensor<3>,
    r_last: Tensor<3>,
    out: Tensor<3>,
}

/// The gradient of [`apply_rope`] with respect to its input: `dy·cos + rotate_halfᵀ(dy·sin)`,
/// where `rotate_halfᵀ([a, b]) = [b, -a]`.
fn rope_backward(dy: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let d = dy.dims()[3];
    let half = d / 2;
    let ds = dy.clone() * sin.clone();
    let first = ds.clone().narrow(3, 0, half);
    let second = ds.narrow(3, half, d - half);
    dy * cos.clone() + Tensor::cat(vec![second, first.neg()], 3)
}

impl Llama {
    fn attention_scale(&self) -> f64 {
        1.0 / (self.config.head_dim() as f64).sqrt()
    }

    /// Whether the hand-written backward pass covers this configuration (SiLU-gated MLP).
    fn has_taped_backward(&self) -> bool {
        matches!(self.config.hidden_act.as_str(), "silu" | "swish")
    }

    /// Block `index` on `x`, keeping its tape.
    fn layer_taped(
        &self,
        index: usize,
        x: Tensor<3>,
        (cos, sin): (&Tensor<4>, &Tensor<4>),
        mask: &AttentionMask,
    ) -> (LayerTape, Tensor<3>) {
        let layer = &self.layers[index];
        let (h, kvh) = (self.config.num_attention_heads, self.config.kv_heads());
        let (n, r_in) = rms_norm_taped(&layer.input_norm, x.clone());
        let q = apply_rope(split_heads(layer.q.forward(n.clone()), h), cos, sin);
        let k = apply_rope(split_heads(layer.k.forward(n.clone()), kvh), cos, sin);
        let v = split_heads(layer.v.forward(n), kvh);
        let (ctx, attn) = AttentionTape::forward(q, k, v, mask.clone(), self.attention_scale());
        let mid = x.clone() + layer.o.forward(merge_heads(ctx));
        let (n, r_mid) = rms_norm_taped(&layer.post_norm, mid.clone());
        let gate = layer.gate.forward(n.clone());
        let up = layer.up.forward(n);
        let (act, dsilu) = silu_taped(gate);
        let out = mid.clone() + layer.down.forward(act.clone() * up.clone());
        let up_dsilu = up * dsilu;
        let tape = LayerTape {
            x,
            r_in,
            attn,
            mid,
            r_mid,
            act,
            up_dsilu,
        };
        (tape, out)
    }

    /// The forward pass with its tapes, kept whole where they fit `keep_bytes`.
    fn forward_taped(&self, input: &ModelInput, keep_bytes: u64) -> LlamaTape<'_> {
        let [_, s, _] = input.target_embeds.dims();
        let (cos, sin) = self.rope_tables(&new_positions(&input.target_mask, s));
        let mask = AttentionMask::new(&input.target_mask, s, true);
        let (layers, x) = run_blocks(
            (self.layers.len(), keep_bytes),
            input.target_embeds.clone(),
            |i, x| self.layer_taped(i, x, (&cos, &sin), &mask),
            LayerTape::floats,
        );
        let (out, r_last) = rms_norm_taped(&self.norm, x.clone());
        LlamaTape {
            model: self,
            layers,
            cos,
            sin,
            mask,
            last: x,
            r_last,
            out,
        }
    }
}

impl LlamaTape<'_> {
    /// Block `index`'s tape, kept or recomputed.
    fn tape(&self, index: usize) -> Cow<'_, LayerTape> {
        tape_of(&self.layers, index, |i, x| {
            self.model
                .layer_taped(i, x, (&self.cos, &self.sin), &self.mask)
        })
    }

    /// Backward pass through one block, from the gradient of its output at positions
    /// `span.start..span.len` to the gradient of its input at positions `0..span.len`.
    fn layer_backward(
        &self,
        tape: &LayerTape,
        index: usize,
        span: Span,
        dout: Tensor<3>,
    ) -> Tensor<3> {
        let layer = &self.model.layers[index];
        let dact = linear_backward(&layer.down, dout.clone());
        let dup = dact.clone() * span.rows(&tape.act);
        let dgate = dact * span.rows(&tape.up_dsilu);
        let dn = linear_backward(&layer.gate, dgate) + linear_backward(&layer.up, dup);
        let dmid = dout
            + rms_norm_backward(
                &layer.post_norm,
                span.rows(&tape.mid),
                span.rows(&tape.r_mid),
                dn,
            );
        let (dq, dk, dv) = tape.attn.backward(
            span.start..span.len,
            linear_backward(&layer.o, dmid.clone()),
        );
        let dq = rope_backward(
            dq,
            &span.query_heads(&self.cos),
            &span.query_heads(&self.sin),
        );
        let dk = rope_backward(dk, &span.key_heads(&self.cos), &span.key_heads(&self.sin));
        let dn = span.pad(linear_backward(&layer.q, merge_heads(dq)))
            + linear_backward(&layer.k, merge_heads(dk))
            + linear_backward(&layer.v, merge_heads(dv));
        span.pad(dmid)
            + rms_norm_backward(
                &layer.input_norm,
                span.all(&tape.x),
                span.all(&tape.r_in),
                dn,
            )
    }

    /// The final norm's backward pass for the gradient `grad` of the output at `span.start`.
    fn final_norm_backward(&self, span: Span, grad: Tensor<2>) -> Tensor<3> {
        rms_norm_backward(
            &self.model.norm,
            span.rows(&self.last),
            span.rows(&self.r_last),
            grad.unsqueeze_dim(1),
        )
    }
}

impl SharedForward for LlamaTape<'_> {
    fn final_hidden(&self, position: usize) -> Tensor<2> {
        row_at(&self.out, position)
    }

    fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.model.lm_head.forward(hidden)
    }

    fn backward(&self, position: usize, grad: Tensor<2>) -> Tensor<3> {
        self.backward_each(vec![(position, grad)])
            .pop()
            .expect("one request")
    }

    fn backward_each(&self, requests: Vec<(usize, Tensor<2>)>) -> Vec<Tensor<3>> {
        let positions: Vec<usize> = requests.iter().map(|r| r.0).collect();
        let grads: Vec<Tensor<2>> = requests.into_iter().map(|r| r.1).collect();
        backward_blockwise(
            &positions,
            self.layers.len(),
            |span, r| self.final_norm_backward(span, grads[r].clone()),
            |index| self.tape(index),
            |tape, index, span, dout| self.layer_backward(tape, index, span, dout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recomputed_tapes_give_the_kept_gradients() {
        let (config, mut w) = crate::checkpoint::tests::fixture("tiny-llama", "model.");
        let m = Llama::load(config, &mut w).unwrap();
        crate::checkpoint::tests::assert_recompute_matches(&m, |input, keep| {
            Box::new(m.forward_taped(input, keep))
        });
    }
}
