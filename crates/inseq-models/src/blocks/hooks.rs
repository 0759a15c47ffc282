//! The forward-pass hooks every architecture honours (value zeroing, layer override, AttnLRP's
//! rules, the output projection from a position on), shared by the generic decoder
//! ([`super::Decoder`]) and the encoder-decoder models.

use burn::tensor::{Device, Tensor, TensorData};

use crate::model::{
    AttentionKind, ForwardOptions, LayerOverride, LayerRef, ModelOutput, OverrideMode, ValueZeroing,
};
use crate::nn::{LayerNorm, LmHead, RmsNorm};

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

/// RMS normalisation; with `lrp`, the root mean square is detached (AttnLRP).
pub(crate) fn rms_norm(norm: &RmsNorm, x: Tensor<3>, lrp: bool) -> Tensor<3> {
    if !lrp {
        return norm.forward(x);
    }
    let ms = x.clone().square().mean_dim(2);
    x / (ms + norm.eps).sqrt().detach() * norm.gamma.clone().unsqueeze::<3>()
}
