//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-norm blocks, GELU MLP, tied LM head.

use burn::tensor::{Device, Int, Tensor, TensorData, activation};

use crate::nn::Act;
use serde::Deserialize;

use crate::attention::{AttentionMask, AttentionTape, decoder_self_attention};
use crate::backprop::{
    SharedForward, Span, layer_norm_backward, layer_norm_taped, linear_backward, row_at,
};
use crate::checkpoint::{KEEP_TAPES_BYTES, Stored, backward_blockwise, run_blocks, tape_of};
use crate::model::{
    AttentionKind, ForwardOptions, LanguageModel, LayerOverride, LayerRef, ModelInfo, ModelInput,
    ModelKind, ModelOutput, OverrideMode, ValueZeroing,
};
use crate::nn::{
    Embedding, LayerNorm, Linear, LmHead, attention_bias, gelu_tanh_taped, merge_heads,
    new_positions, split_heads,
};
use crate::weights::Weights;
use inseq_core::{Error, Result};

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

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

/// A GPT-2 language model.
pub struct Gpt2 {
    info: ModelInfo,
    config: Gpt2Config,
    act: Act,
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: LmHead,
    device: Device,
}

impl Gpt2 {
    /// Builds the model from its config and weights.
    pub fn load(config: Gpt2Config, w: &mut Weights) -> Result<Self> {
        let d = config.n_embd;
        if config.n_head == 0 || !d.is_multiple_of(config.n_head) {
            return Err(Error::invalid_arg(
                "n_head",
                format!("{} does not divide n_embd {d}", config.n_head),
            ));
        }
        let act = Act::parse(&config.activation_function)?;
        let inner = config.n_inner.unwrap_or(4 * d);
        let eps = config.layer_norm_epsilon;
        let wte = Embedding {
            table: w.tensor2("wte.weight", [config.vocab_size, d])?,
        };
        let wpe = Embedding {
            table: w.tensor2("wpe.weight", [config.n_positions, d])?,
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            blocks.push(Block {
                ln_1: LayerNorm::load(w, &format!("{p}.ln_1"), d, eps)?,
                c_attn: Linear::load_conv1d(w, &format!("{p}.attn.c_attn"), [3 * d, d])?,
                attn_proj: Linear::load_conv1d(w, &format!("{p}.attn.c_proj"), [d, d])?,
                ln_2: LayerNorm::load(w, &format!("{p}.ln_2"), d, eps)?,
                c_fc: Linear::load_conv1d(w, &format!("{p}.mlp.c_fc"), [inner, d])?,
                mlp_proj: Linear::load_conv1d(w, &format!("{p}.mlp.c_proj"), [d, inner])?,
            });
        }
        let ln_f = LayerNorm::load(w, "ln_f", d, eps)?;
        let lm_head = LmHead::from_table(if w.contains("lm_head.weight") {
            w.tensor2("lm_head.weight", [config.vocab_size, d])?
        } else {
            wte.table.clone()
        });
        let info = ModelInfo {
            architecture: "gpt2".into(),
            hf_class: "GPT2LMHeadModel".into(),
            vocab_size: config.vocab_size,
            hidden_size: d,
            num_layers: config.n_layer,
            num_heads: config.n_head,
            max_positions: config.n_positions,
            bos_token_id: config.bos_token_id,
            eos_token_id: config.eos_token_id,
            pad_token_id: config.pad_token_id,
            decoder_start_token_id: None,
        };
        Ok(Self {
            info,
            config,
            act,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            device: w.device().clone(),
        })
    }

    fn act(&self, x: Tensor<3>) -> Tensor<3> {
        self.act.apply(x)
    }
}

impl LanguageModel for Gpt2 {
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
        self.wte.forward(ids)
    }

    fn supports_internal_hooks(&self) -> bool {
        true
    }

    fn supports_kv_cache(&self) -> bool {
        true
    }

    fn dropout_probability(&self) -> f64 {
        self.config.resid_pdrop.unwrap_or(0.1)
    }

    fn forward_shared(&self, input: &ModelInput) -> Option<Box<dyn SharedForward + '_>> {
        self.has_taped_backward().then(|| {
            Box::new(self.forward_taped(input, KEEP_TAPES_BYTES)) as Box<dyn SharedForward + '_>
        })
    }

    fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput {
        let [b, s, _] = input.target_embeds.dims();
        let heads = self.config.n_head;
        let pos = crate::nn::ids_tensor(&new_positions(&input.target_mask, s), &self.device);
        let mut x = input.target_embeds + self.wpe.forward(pos);
        let mask = AttentionMask::new(&input.target_mask, s, true);
        let scale = self.attention_scale();
        let mut out = empty_output(&self.device);
        if options.hidden_states {
            out.hidden_states.push(x.clone());
        }
        let lrp = options.attn_lrp;
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block
                .c_attn
                .forward(layer_norm(&block.ln_1, x.clone(), lrp));
            let d = self.config.n_embd;
            let q = split_heads(h.clone().slice([0..b, 0..s, 0..d]), heads);
            let k = split_heads(h.clone().slice([0..b, 0..s, d..2 * d]), heads);
            let v = split_heads(h.slice([0..b, 0..s, 2 * d..3 * d]), heads);
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
            x = x + crate::nn::mc_dropout(
                block.attn_proj.forward(merge_heads(ctx)),
                drop,
                2 * i as u64,
            );
            let pre = block.c_fc.forward(layer_norm(&block.ln_2, x.clone(), lrp));
            let m = if lrp {
                identity_rule(pre, |t| self.act(t))
            } else {
                self.act(pre)
            };
            x = x + crate::nn::mc_dropout(block.mlp_proj.forward(m), drop, 2 * i as u64 + 1);
            x = override_layer(x, options.layer_override.as_ref(), LayerRef::Decoder(i));
            if options.hidden_states {
                out.hidden_states.push(x.clone());
            }
        }
        let x = layer_norm(&self.ln_f, x, lrp);
        if options.hidden_states {
            out.final_hidden_state = Some(x.clone());
        }
        out.logits = lm_head(x, &self.lm_head, &options);
        out
    }
}

/// Multiplies `[batch, heads, seq, head_dim]` values by 0 at the positions
/// `zero` names for the attention `kind` of `layer` (value zeroing); unchanged otherwise.
pub(crate) fn zero_values(
    v: Tensor<4>,
    zero: Option<&ValueZeroing>,
    kind: AttentionKind,
    layer: usize,
    device: &Device,
) -> Tensor<4> {
    let Some(z) = zero.filter(|z| z.layer == layer && z.attention == kind) else {
        return v;
    };
    let [b, _, s, _] = v.dims();
    let mut keep = vec![1f32; b * s];
    for (r, p) in z.positions.iter().enumerate().take(b) {
        if let Some(p) = p.filter(|&p| p < s) {
            keep[r * s + p] = 0.0;
        }
    }
    v * Tensor::<4>::from_data(TensorData::new(keep, [b, 1, s, 1]), device)
}

/// Keys and values of decoder self-attention layer `layer` after the forward options that act on
/// them: value zeroing, then the key/value cache (which returns every cached position too).
pub(crate) fn decoder_self_kv(
    k: Tensor<4>,
    v: Tensor<4>,
    options: &ForwardOptions,
    layer: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let v = zero_values(
        v,
        options.zero_value.as_ref(),
        AttentionKind::DecoderSelf,
        layer,
        device,
    );
    match &options.kv_cache {
        Some(cache) => cache.append(layer, k, v),
        None => (k, v),
    }
}

/// Applies a [`LayerOverride`] to the output `x` of block `at` (unchanged when the
/// override names another block).
pub(crate) fn override_layer(x: Tensor<3>, o: Option<&LayerOverride>, at: LayerRef) -> Tensor<3> {
    match o {
        Some(o) if o.layer == at => match o.mode {
            OverrideMode::Replace => o.value.clone(),
            OverrideMode::Add => x + o.value.clone(),
        },
        _ => x,
    }
}

/// Layer normalisation; with `lrp`, the standard deviation is detached
/// (AttnLRP's / Ali et al.'s rule for normalisation layers).
pub(crate) fn layer_norm(ln: &LayerNorm, x: Tensor<3>, lrp: bool) -> Tensor<3> {
    if !lrp {
        return ln.forward(x);
    }
    let mean = x.clone().mean_dim(2);
    let centered = x - mean;
    let var = centered.clone().square().mean_dim(2);
    let y = centered / (var + ln.eps).sqrt().detach();
    let y = y * ln.gamma.clone().unsqueeze::<3>();
    match &ln.beta {
        Some(b) => y + b.clone().unsqueeze::<3>(),
        None => y,
    }
}

/// `a ⊗ b` with the same value but half the gradient to each factor (the
/// uniform rule of AttnLRP for products of two inputs).
pub(crate) fn uniform_rule<const D: usize>(product: Tensor<D>) -> Tensor<D> {
    product.clone() * 0.5 + product.detach() * 0.5
}

/// `act(x)` with the gradient `act(x) / x` (AttnLRP's identity rule for
/// element-wise activations); the forward value is unchanged.
pub(crate) fn identity_rule(x: Tensor<3>, act: impl Fn(Tensor<3>) -> Tensor<3>) -> Tensor<3> {
    let y = act(x.clone());
    // x + eps with the sign of x (+eps at 0), so the ratio stays finite.
    let safe = x.clone() + (x.clone().sign() * 2.0 + 1.0).clamp(-1.0, 1.0) * 1e-12;
    let ratio = (y.clone() / safe).detach();
    y.detach() + (x.clone() - x.detach()) * ratio
}

/// Scaled dot-product attention for AttnLRP: the two matrix products follow
/// the uniform rule, the softmax keeps its gradient (Gradient × Input at its input).
pub(crate) fn lrp_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<Tensor<4>>,
    scale: f64,
) -> (Tensor<4>, Tensor<4>) {
    let scores = uniform_rule(q.matmul(k.swap_dims(2, 3))) * scale;
    let scores = match bias {
        Some(b) => scores + b,
        None => scores,
    };
    let weights = activation::softmax(scores, 3);
    (uniform_rule(weights.clone().matmul(v)), weights)
}

/// A [`ModelOutput`] with placeholder logits, filled in by the forward pass.
pub(crate) fn empty_output(device: &Device) -> ModelOutput {
    ModelOutput {
        logits: Tensor::from_data(TensorData::new(vec![0f32], [1, 1, 1]), device),
        attentions: vec![],
        attention_rows: None,
        cross_attentions: vec![],
        encoder_attentions: vec![],
        hidden_states: vec![],
        encoder_hidden_states: vec![],
        final_hidden_state: None,
        encoder_final_hidden_state: None,
    }
}

/// Applies the output projection to `[batch, seq, hidden]`, from
/// [`ForwardOptions::first_logit_position`] on.
pub(crate) fn lm_head(x: Tensor<3>, head: &LmHead, options: &ForwardOptions) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let first = options.first_logit_position(s);
    let x = if first > 0 {
        x.slice([0..b, first..s, 0..d])
    } else {
        x
    };
    let [b, s, d] = x.dims();
    let logits = head.forward(x.reshape([b * s, d]));
    let v = logits.dims()[1];
    logits.reshape([b, s, v])
}

/// The activations of one GPT-2 block that its backward pass reads.
#[derive(Clone)]
struct BlockTape {
    /// Normalised block input and reciprocal standard deviation (`ln_1`).
    xhat_in: Tensor<3>,
    r_in: Tensor<3>,
    /// Queries, keys, values (the weights are recomputed in the backward pass).
    attn: AttentionTape,
    /// Normalised MLP input and reciprocal standard deviation (`ln_2`).
    xhat_mid: Tensor<3>,
    r_mid: Tensor<3>,
    /// The activation's derivative at the MLP pre-activation.
    dact: Tensor<3>,
}

impl BlockTape {
    /// Floats the tape holds.
    fn floats(&self) -> usize {
        let n3 = |t: &Tensor<3>| t.shape().num_elements();
        let n4 = |t: &Tensor<4>| t.shape().num_elements();
        [
            &self.xhat_in,
            &self.r_in,
            &self.xhat_mid,
            &self.r_mid,
            &self.dact,
        ]
        .into_iter()
        .map(n3)
        .sum::<usize>()
            + n4(&self.attn.q)
            + n4(&self.attn.k)
            + n4(&self.attn.v)
    }
}

/// A GPT-2 forward pass whose activations are kept for [`SharedForward::backward`].
struct Gpt2Tape<'a> {
    model: &'a Gpt2,
    blocks: Vec<Stored<BlockTape>>,
    mask: AttentionMask,
    /// `ln_f`'s normalised input, reciprocal standard deviation and output.
    xhat_last: Tensor<3>,
    r_last: Tensor<3>,
    out: Tensor<3>,
}

impl Gpt2 {
    /// Whether the hand-written backward pass covers this configuration (tanh-approximated
    /// GELU, GPT-2's default).
    fn has_taped_backward(&self) -> bool {
        matches!(
            self.config.activation_function.as_str(),
            "gelu_new" | "gelu_pytorch_tanh"
        )
    }

    fn attention_scale(&self) -> f64 {
        if self.config.scale_attn_weights {
            1.0 / ((self.config.n_embd / self.config.n_head) as f64).sqrt()
        } else {
            1.0
        }
    }

    /// Block `index` on `x`, keeping its tape.
    fn block_taped(
        &self,
        index: usize,
        x: Tensor<3>,
        mask: &AttentionMask,
    ) -> (BlockTape, Tensor<3>) {
        let block = &self.blocks[index];
        let [_, _, d] = x.dims();
        let heads = self.config.n_head;
        let (n, xhat_in, r_in) = layer_norm_taped(&block.ln_1, x.clone());
        let h = block.c_attn.forward(n);
        let q = split_heads(h.clone().narrow(2, 0, d), heads);
        let k = split_heads(h.clone().narrow(2, d, d), heads);
        let v = split_heads(h.narrow(2, 2 * d, d), heads);
        let (ctx, attn) = AttentionTape::forward(q, k, v, mask.clone(), self.attention_scale());
        let x = x + block.attn_proj.forward(merge_heads(ctx));
        let (n, xhat_mid, r_mid) = layer_norm_taped(&block.ln_2, x.clone());
        let (act, dact) = gelu_tanh_taped(block.c_fc.forward(n));
        let out = x + block.mlp_proj.forward(act);
        let tape = BlockTape {
            xhat_in,
            r_in,
            attn,
            xhat_mid,
            r_mid,
            dact,
        };
        (tape, out)
    }

    /// The forward pass with its tapes, kept whole where they fit `keep_bytes`.
    fn forward_taped(&self, input: &ModelInput, keep_bytes: u64) -> Gpt2Tape<'_> {
        let [_, s, _] = input.target_embeds.dims();
        let pos = crate::nn::ids_tensor(&new_positions(&input.target_mask, s), &self.device);
        let x = input.target_embeds.clone() + self.wpe.forward(pos);
        let mask = AttentionMask::new(&input.target_mask, s, true);
        let (blocks, x) = run_blocks(
            (self.blocks.len(), keep_bytes),
            x,
            |i, x| self.block_taped(i, x, &mask),
            BlockTape::floats,
        );
        let (out, xhat_last, r_last) = layer_norm_taped(&self.ln_f, x);
        Gpt2Tape {
            model: self,
            blocks,
            mask,
            xhat_last,
            r_last,
            out,
        }
    }
}

impl Gpt2Tape<'_> {
    /// Backward pass through one block, from the gradient of its output at positions
    /// `span.start..span.len` to the gradient of its input at positions `0..span.len`.
    fn block_backward(
        &self,
        tape: &BlockTape,
        index: usize,
        span: Span,
        dout: Tensor<3>,
    ) -> Tensor<3> {
        let block = &self.model.blocks[index];
        let dpre = linear_backward(&block.mlp_proj, dout.clone()) * span.rows(&tape.dact);
        let dmid = dout
            + layer_norm_backward(
                &block.ln_2,
                span.rows(&tape.xhat_mid),
                span.rows(&tape.r_mid),
                linear_backward(&block.c_fc, dpre),
            );
        let (dq, dk, dv) = tape.attn.backward(
            span.start..span.len,
            linear_backward(&block.attn_proj, dmid.clone()),
        );
        let dqkv = Tensor::cat(
            vec![span.pad(merge_heads(dq)), merge_heads(dk), merge_heads(dv)],
            2,
        );
        span.pad(dmid)
            + layer_norm_backward(
                &block.ln_1,
                span.all(&tape.xhat_in),
                span.all(&tape.r_in),
                linear_backward(&block.c_attn, dqkv),
            )
    }
}

impl SharedForward for Gpt2Tape<'_> {
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
        let final_norm = |span: Span, r: usize| {
            layer_norm_backward(
                &self.model.ln_f,
                span.rows(&self.xhat_last),
                span.rows(&self.r_last),
                grads[r].clone().unsqueeze_dim(1),
            )
        };
        let tape = |index| {
            tape_of(&self.blocks, index, |i, x| {
                self.model.block_taped(i, x, &self.mask)
            })
        };
        backward_blockwise(
            &positions,
            self.blocks.len(),
            final_norm,
            tape,
            |tape, index, span, dout| self.block_backward(tape, index, span, dout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recomputed_tapes_give_the_kept_gradients() {
        let (config, mut w) = crate::checkpoint::tests::fixture("tiny-gpt2", "transformer.");
        let m = Gpt2::load(config, &mut w).unwrap();
        crate::checkpoint::tests::assert_recompute_matches(&m, |input, keep| {
            Box::new(m.forward_taped(input, keep))
        });
    }
}
