//! The attention core the blocks call: scores → soft-capping → mask → softmax → context
//! ([`attend`]) and its backward pass ([`attend_backward`]), plus the causal (optionally
//! sliding-window) mask. Without soft-capping they are [`crate::nn::attention`],
//! [`super::hooks::lrp_attention`] and [`crate::backprop::attention_backward`], so work on those
//! (memory, chunking) reaches every decoder.

use burn::tensor::{Device, Tensor, TensorData, activation};

use super::hooks::{lrp_attention, uniform_rule};
use crate::backprop::attention_backward;
use crate::nn::{MASK_VALUE, attention, repeat_kv, split_heads};

/// How the scores of one attention layer are formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    /// Factor of `q kᵀ`.
    pub scale: f64,
    /// Attention logit soft-capping `c·tanh(s / c)` (Gemma 2).
    pub softcap: Option<f64>,
}

/// `softmax(cap(q kᵀ·scale) + bias) v` for `q` `[b, heads, q, d]` and `k`, `v`
/// `[b, kv_heads, k, d]` (grouped heads are repeated); with `lrp`, AttnLRP's uniform rule on the
/// two products. Returns the context `[b, heads, q, d]` and the weights `[b, heads, q, k]`.
pub fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Tensor<4>,
    scoring: Scoring,
    lrp: bool,
) -> (Tensor<4>, Tensor<4>) {
    let group = q.dims()[1] / k.dims()[1];
    let (k, v) = (repeat_kv(k, group), repeat_kv(v, group));
    let Some(cap) = scoring.softcap else {
        let core = if lrp { lrp_attention } else { attention };
        return core(q, k, v, Some(bias), scoring.scale);
    };
    let product = q.matmul(k.swap_dims(2, 3));
    let product = if lrp { uniform_rule(product) } else { product };
    let scores = (product * (scoring.scale / cap)).tanh() * cap + bias;
    let weights = activation::softmax(scores, 3);
    let ctx = weights.clone().matmul(v);
    (if lrp { uniform_rule(ctx) } else { ctx }, weights)
}

/// Input gradients of [`attend`] (without hooks) for `m` query rows: `q` `[rows, heads, m, d]`,
/// `k`, `v` `[rows, kv_heads, len, d]`, the weights `[rows, heads, m, len]` and the merged
/// context gradient `[rows, m, heads·d]`. Returns `(dq, dk, dv)` shaped like `q`, `k`, `v`.
pub fn attend_backward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    weights: Tensor<4>,
    dctx: Tensor<3>,
    scoring: Scoring,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let Some(cap) = scoring.softcap else {
        return attention_backward(q, k, v, weights, dctx, scoring.scale);
    };
    let [n, heads, m, hd] = q.dims();
    let [_, kv_heads, len, _] = k.dims();
    let group_rows = heads / kv_heads * m;
    let grouped = |t: Tensor<4>, cols: usize| t.reshape([n, kv_heads, group_rows, cols]);
    let dctx = grouped(split_heads(dctx, heads), hd);
    let weights = grouped(weights, len);
    let q = grouped(q, hd);
    let dweights = dctx.clone().matmul(v.swap_dims(2, 3));
    let dv = weights.clone().swap_dims(2, 3).matmul(dctx);
    let row_dot = (dweights.clone() * weights.clone()).sum_dim(3);
    // d tanh(u)/du = 1 - tanh(u)², recomputed from the queries and keys.
    let capped = (q.clone().matmul(k.clone().swap_dims(2, 3)) * (scoring.scale / cap)).tanh();
    let dscores = weights * (dweights - row_dot) * (capped.square().neg() + 1.0) * scoring.scale;
    let dq = dscores.clone().matmul(k).reshape([n, heads, m, hd]);
    let dk = dscores.swap_dims(2, 3).matmul(q);
    (dq, dk, dv)
}

/// The additive attention bias `[batch, 1, q, k]` of causal self-attention from a `[batch, k]`
/// key mask (1 = attend, 0 = padding): query `i` (key position `i + k - q`) sees key `j` when
/// `j <= i + k - q` and, with a sliding `window`, `j > i + k - q - window` (transformers'
/// `sliding_window_overlay`: the window counts the query's own position).
pub fn causal_bias(
    key_mask: &[Vec<bool>],
    q_len: usize,
    window: Option<usize>,
    device: &Device,
) -> Tensor<4> {
    let b = key_mask.len();
    let k_len = key_mask.first().map_or(0, Vec::len);
    let offset = k_len.saturating_sub(q_len);
    let mut data = Vec::with_capacity(b * q_len * k_len);
    for row in key_mask {
        for i in 0..q_len {
            let at = i + offset;
            for (j, &keep) in row.iter().enumerate() {
                let in_window = window.is_none_or(|w| j + w > at);
                let visible = keep && j <= at && in_window;
                data.push(if visible { 0.0 } else { MASK_VALUE });
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, 1, q_len, k_len]), device)
}
