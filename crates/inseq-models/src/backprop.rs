//! Hand-written backward passes that share one forward pass between several
//! gradients.
//!
//! Gradient methods on a causal model need, for every generation step, the
//! gradient of a function of the logits at that step's position with respect to
//! the input embeddings. The activations at positions `0..=p` are the same in a
//! forward pass over the whole sequence as in one over the prefix that ends at
//! `p`, so one forward pass can serve every step; but burn's autodiff runs one
//! backward pass per graph. [`SharedForward`] keeps the activations of one
//! forward pass and runs as many backward passes over them as needed, written
//! out by hand per architecture from the building blocks here.

use burn::tensor::{Tensor, activation};

use rayon::prelude::*;

use crate::nn::{LayerNorm, Linear, RmsNorm, computed_on_host_cores};

/// The activations of one forward pass over input embeddings (see
/// [`crate::LanguageModel::forward_shared`]), from which the gradient of any function
/// of the final hidden state at one position can be computed without running the
/// forward pass again. Results equal autodiff through [`crate::LanguageModel::forward`]
/// up to floating-point rounding.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use inseq_models::{ModelInput, load_pretrained, ids_tensor};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/tiny-llama");
/// let m = load_pretrained(dir, &Device::flex()).unwrap();
/// let embeds = m.model.embed(ids_tensor(&[vec![5, 6, 7, 8]], m.model.device()));
/// let input = ModelInput { target_embeds: embeds, target_mask: vec![vec![true; 4]], source_embeds: None, source_mask: None };
/// let pass = m.model.forward_shared(&input).expect("llama has a hand-written backward pass");
/// // Gradient of the sum of the final hidden state at position 2 w.r.t. the embeddings of 0..=2.
/// let h = pass.final_hidden(2);
/// let grad = pass.backward(2, h.ones_like());
/// assert_eq!(grad.dims(), [1, 3, m.model.info().hidden_size]);
/// // Several positions at once, results in request order.
/// let grads = pass.backward_each(vec![(1, pass.final_hidden(1).ones_like()), (2, h.ones_like())]);
/// assert_eq!(grads[0].dims(), [1, 2, m.model.info().hidden_size]);
/// ```
pub trait SharedForward: Sync {
    /// `[rows, hidden]` final hidden state at `position` (after the stack's final norm),
    /// the input of the LM head.
    fn final_hidden(&self, position: usize) -> Tensor<2>;
    /// `[rows, vocab]` logits of `[rows, hidden]` final hidden states (the LM head); tracked by
    /// autodiff when `hidden` is, so the gradient of a step function with respect to the
    /// final hidden state can be taken with burn's autodiff.
    fn logits(&self, hidden: Tensor<2>) -> Tensor<2>;
    /// `[rows, position + 1, hidden]` gradient with respect to the input embeddings at
    /// positions `0..=position` of a function whose gradient with respect to
    /// [`SharedForward::final_hidden`]`(position)` is `grad` (`[rows, hidden]`). Later
    /// positions do not influence `position` (causal attention), so their gradient is zero.
    /// `position` must be a real (not padding) position of every row.
    fn backward(&self, position: usize, grad: Tensor<2>) -> Tensor<3>;

    /// [`SharedForward::backward`] for each `(position, grad)` pair, results in the same order.
    /// On CPU backends the passes run side by side on rayon's threads: each pass is a chain of
    /// products and element-wise operations, and the element-wise ones use one core, so two
    /// passes at once keep both cores busy where one pass alone leaves one idle between products.
    /// Each pass computes exactly what [`SharedForward::backward`] does, so results do not
    /// depend on how the passes were scheduled.
    fn backward_each(&self, requests: Vec<(usize, Tensor<2>)>) -> Vec<Tensor<3>> {
        let one = |(position, grad): (usize, Tensor<2>)| self.backward(position, grad);
        if requests.len() > 1 && computed_on_host_cores(&requests[0].1.device()) {
            requests.into_par_iter().with_max_len(1).map(one).collect()
        } else {
            requests.into_iter().map(one).collect()
        }
    }
}

/// Positions `start..len` of a `[rows, positions, dim]` activation.
fn span(t: &Tensor<3>, start: usize, len: usize) -> Tensor<3> {
    t.clone().narrow(1, start, len - start)
}

/// Positions `start..len` of `[rows, heads, positions, head_dim]` (or of rotary tables
/// `[rows, 1, positions, head_dim]`).
fn span_heads(t: &Tensor<4>, start: usize, len: usize) -> Tensor<4> {
    t.clone().narrow(2, start, len - start)
}

/// Row `position` of `[rows, positions, dim]`, as `[rows, dim]`.
pub(crate) fn row_at(t: &Tensor<3>, position: usize) -> Tensor<2> {
    let [n, _, d] = t.dims();
    t.clone().narrow(1, position, 1).reshape([n, d])
}

/// `[rows, start + k, dim]`: `grad` (`[rows, k, dim]`, positions `start..`) after `start` zero
/// positions.
fn zero_padded(grad: Tensor<3>, start: usize) -> Tensor<3> {
    if start == 0 {
        return grad;
    }
    let [n, _, d] = grad.dims();
    let zeros = Tensor::<3>::zeros([n, start, d], &grad.device());
    Tensor::cat(vec![zeros, grad], 1)
}

/// Where a backward pass through one block stands: the gradient of the block output is
/// zero before position `start` (the last block of a backward pass from one position
/// only has that position's), and positions `len..` do not matter (causal attention).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub start: usize,
    pub len: usize,
}

impl Span {
    pub(crate) fn rows(self, t: &Tensor<3>) -> Tensor<3> {
        span(t, self.start, self.len)
    }
    pub(crate) fn all(self, t: &Tensor<3>) -> Tensor<3> {
        span(t, 0, self.len)
    }
    pub(crate) fn query_heads(self, t: &Tensor<4>) -> Tensor<4> {
        span_heads(t, self.start, self.len)
    }
    pub(crate) fn key_heads(self, t: &Tensor<4>) -> Tensor<4> {
        span_heads(t, 0, self.len)
    }
    /// Pads a gradient of positions `start..len` to all positions `0..len`.
    pub(crate) fn pad(self, t: Tensor<3>) -> Tensor<3> {
        zero_padded(t, self.start)
    }
}

/// Input gradient of [`Linear::forward`]: `dy Wᵀ`.
pub(crate) fn linear_backward(layer: &Linear, dy: Tensor<3>) -> Tensor<3> {
    let [b, s, out] = dy.dims();
    let input = layer.weight.dims()[0];
    dy.reshape([b * s, out])
        .matmul(layer.weight.dense().transpose())
        .reshape([b, s, input])
}

/// RMS normalisation that also returns the reciprocal root mean square `[.., 1]` its
/// backward pass needs.
pub(crate) fn rms_norm_taped(norm: &RmsNorm, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    let r = (x.clone().square().mean_dim(2) + norm.eps).sqrt().recip();
    (x * r.clone() * norm.gamma.clone().unsqueeze::<3>(), r)
}

/// Input gradient of RMS normalisation `y = γ ⊙ x ⊙ r`, `r = (mean(x²) + ε)^-½`:
/// `dx = r·g - r³·x·mean(g ⊙ x)` with `g = γ ⊙ dy`.
pub(crate) fn rms_norm_backward(
    norm: &RmsNorm,
    x: Tensor<3>,
    r: Tensor<3>,
    dy: Tensor<3>,
) -> Tensor<3> {
    let g = dy * norm.gamma.clone().unsqueeze::<3>();
    let dot = (g.clone() * x.clone()).mean_dim(2);
    g * r.clone() - x * (r.powi_scalar(3) * dot)
}

/// Layer normalisation that also returns the normalised input `x̂` and the reciprocal
/// standard deviation `[.., 1]` its backward pass needs.
pub(crate) fn layer_norm_taped(ln: &LayerNorm, x: Tensor<3>) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    let centered = x.clone() - x.mean_dim(2);
    let r = (centered.clone().square().mean_dim(2) + ln.eps)
        .sqrt()
        .recip();
    let xhat = centered * r.clone();
    let y = xhat.clone() * ln.gamma.clone().unsqueeze::<3>();
    let y = match &ln.beta {
        Some(b) => y + b.clone().unsqueeze::<3>(),
        None => y,
    };
    (y, xhat, r)
}

/// Input gradient of layer normalisation `y = γ ⊙ x̂ + β`:
/// `dx = r·(g - mean(g) - x̂·mean(g ⊙ x̂))` with `g = γ ⊙ dy`.
pub(crate) fn layer_norm_backward(
    ln: &LayerNorm,
    xhat: Tensor<3>,
    r: Tensor<3>,
    dy: Tensor<3>,
) -> Tensor<3> {
    let g = dy * ln.gamma.clone().unsqueeze::<3>();
    let mean = g.clone().mean_dim(2);
    let dot = (g.clone() * xhat.clone()).mean_dim(2);
    (g - mean - xhat * dot) * r
}

/// `silu(x) = x·σ(x)` and its derivative `σ(x)·(1 + x·(1 - σ(x))) = σ(x) + silu(x)·(1 - σ(x))`,
/// from one sigmoid.
pub(crate) fn silu_taped(x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    let s = activation::sigmoid(x.clone());
    let act = x * s.clone();
    let grad = s.clone() + act.clone() - act.clone() * s;
    (act, grad)
}

/// Input gradients of scaled dot-product attention `ctx = softmax(q kᵀ·scale + bias) v` for
/// `m` query rows: `q` `[rows, heads, m, head_dim]`, `k`, `v` `[rows, kv_heads, len, head_dim]`,
/// `weights` (the softmax output) `[rows, heads, m, len]`, and the merged context gradient
/// `dctx` `[rows, m, heads·head_dim]`. Returns `(dq, dk, dv)` shaped like `q`, `k`, `v`.
///
/// Query heads that share a key/value head (grouped-query attention, `heads / kv_heads` per
/// group, consecutive as [`crate::nn::repeat_kv`] lays them out) are stacked along the query
/// rows, so the keys and values are never repeated and their gradients come out summed over
/// the group. The reference for [`crate::blocks::core::CoreTape::backward`], which computes the
/// same in query chunks without the full weights.
#[cfg(test)]
pub(crate) fn attention_backward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    weights: Tensor<4>,
    dctx: Tensor<3>,
    scale: f64,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [n, heads, m, hd] = q.dims();
    let [_, kv_heads, len, _] = k.dims();
    let group_rows = heads / kv_heads * m;
    let grouped = |t: Tensor<4>, cols: usize| t.reshape([n, kv_heads, group_rows, cols]);
    let dctx = grouped(crate::nn::split_heads(dctx, heads), hd);
    let weights = grouped(weights, len);
    let dweights = dctx.clone().matmul(v.swap_dims(2, 3));
    let dv = weights.clone().swap_dims(2, 3).matmul(dctx);
    let row_dot = (dweights.clone() * weights.clone()).sum_dim(3);
    let dscores = weights * (dweights - row_dot) * scale;
    let dq = dscores.clone().matmul(k).reshape([n, heads, m, hd]);
    let dk = dscores.swap_dims(2, 3).matmul(grouped(q, hd));
    (dq, dk, dv)
}
