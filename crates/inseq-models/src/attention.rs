//! Scaled dot-product attention computed in query chunks, with memory linear in the sequence
//! length: no `[heads, q, k]` tensor is ever held beyond one chunk of queries.
//!
//! - [`forward`]: the context `softmax(q kᵀ·scale + mask) v`, chunk by chunk; with a
//!   [`WeightsSink`], each chunk's weights are handed over as they are computed (so a caller can
//!   keep only the rows or the aggregate it needs).
//! - [`backward`]: the input gradients for a range of queries, recomputing each chunk's weights
//!   from the queries and keys instead of reading them from a tape (what [`AttentionTape`]
//!   keeps is linear in the length: the rotated queries, keys and values).
//!
//! Causal chunks only read the keys their queries can see (keys up to the chunk's last query),
//! so the masked upper triangle is neither computed nor stored. Queries that see no key at all
//! (left padding) get the full key range, as in the unchunked computation (uniform weights).
//! Grouped-query attention is computed without repeating the keys and values: the query heads
//! that share a key/value head are stacked along the query rows.

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData, activation};

use crate::gpt2::lrp_attention;
use crate::model::{ForwardOptions, ModelOutput};
use crate::nn::{MASK_VALUE, attention, repeat_kv, split_heads};

/// Floats of one chunk's `[rows, heads, queries, keys]` scores: chunks are sized so that the
/// few temporaries of that shape stay within tens of MB at any length.
pub const CHUNK_FLOATS: usize = 1 << 23;

/// Which keys each query of an attention sees: a per-row key mask (`false` = padding) and, for
/// causal attention, query `i` sees keys `0..=i + offset` (`offset = keys - queries`).
#[derive(Debug, Clone)]
pub struct AttentionMask {
    key_mask: Vec<Vec<bool>>,
    causal: bool,
    offset: usize,
}

impl AttentionMask {
    /// The mask of `q_len` queries over the keys of `key_mask` (the last `q_len` positions are
    /// the queries, as with a key/value cache).
    pub fn new(key_mask: &[Vec<bool>], q_len: usize, causal: bool) -> Self {
        let k_len = key_mask.first().map_or(0, Vec::len);
        Self {
            key_mask: key_mask.to_vec(),
            causal,
            offset: k_len.saturating_sub(q_len),
        }
    }

    fn visible(&self, row: usize, query: usize, key: usize) -> bool {
        self.key_mask[row][key] && (!self.causal || key <= query + self.offset)
    }

    /// Keys `0..n` the queries `queries` need, of the first `keys` keys: up to the last query's
    /// causal horizon, or all of them when some query sees none (it then attends uniformly to
    /// every key, as the unchunked computation does).
    fn keys_for(&self, queries: &Range<usize>, keys: usize) -> usize {
        if !self.causal {
            return keys;
        }
        let horizon = (queries.end - 1 + self.offset + 1).min(keys);
        let blind = (0..self.key_mask.len()).any(|row| {
            queries
                .clone()
                .any(|q| !(0..horizon).any(|k| self.visible(row, q, k)))
        });
        if blind { keys } else { horizon }
    }

    /// `[rows, 1, queries, keys]` additive bias (0 or [`MASK_VALUE`]).
    fn bias(&self, queries: &Range<usize>, keys: usize, device: &Device) -> Tensor<4> {
        let rows = self.key_mask.len();
        let mut data = Vec::with_capacity(rows * queries.len() * keys);
        for row in 0..rows {
            for q in queries.clone() {
                data.extend((0..keys).map(|k| {
                    if self.visible(row, q, k) {
                        0.0
                    } else {
                        MASK_VALUE
                    }
                }));
            }
        }
        Tensor::from_data(
            TensorData::new(data, [rows, 1, queries.len(), keys]),
            device,
        )
    }
}

/// Receives the `[rows, heads, chunk, keys]` attention weights of queries `queries` (the first
/// `keys` keys; later keys have weight zero) as [`forward`] computes them.
pub type WeightsSink<'a> = &'a mut dyn FnMut(Range<usize>, Tensor<4>);

/// Queries per chunk for `rows × heads` score rows over `keys` keys.
fn chunk_len(rows: usize, heads: usize, keys: usize) -> usize {
    (CHUNK_FLOATS / (rows * heads * keys).max(1)).max(1)
}

/// Splits `range` into chunks of at most `len`.
fn chunks(range: Range<usize>, len: usize) -> impl Iterator<Item = Range<usize>> {
    range
        .clone()
        .step_by(len)
        .map(move |start| start..(start + len).min(range.end))
}

/// `[rows, heads, m, d]` → `[rows, kv_heads, heads / kv_heads · m, d]`: the query heads that
/// share a key/value head stacked along the rows.
fn grouped(t: Tensor<4>, kv_heads: usize) -> Tensor<4> {
    let [n, heads, m, d] = t.dims();
    t.reshape([n, kv_heads, heads / kv_heads * m, d])
}

/// The attention weights `[rows, heads, m, keys]` of queries `range` (`q_chunk`, `[rows, heads,
/// m, head_dim]`) over the first `keys` keys of `k` (`[rows, kv_heads, ≥keys, head_dim]`).
fn chunk_weights(
    q_chunk: Tensor<4>,
    k: &Tensor<4>,
    mask: &AttentionMask,
    range: &Range<usize>,
    keys: usize,
    scale: f64,
) -> Tensor<4> {
    let [n, heads, m, _] = q_chunk.dims();
    let kv_heads = k.dims()[1];
    let keys_t = k.clone().narrow(2, 0, keys).swap_dims(2, 3);
    let scores = grouped(q_chunk, kv_heads)
        .matmul(keys_t)
        .reshape([n, heads, m, keys])
        * scale;
    let bias = mask.bias(range, keys, &scores.device());
    activation::softmax(scores + bias, 3)
}

/// The context `[rows, heads, q, head_dim]` of queries `q` (`[rows, heads, q, head_dim]`) over
/// keys and values `k`, `v` (`[rows, kv_heads, k, head_dim]`, `kv_heads` dividing `heads`),
/// computed in query chunks; `sink` receives each chunk's weights.
pub fn forward(
    q: Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: &AttentionMask,
    scale: f64,
    sink: Option<WeightsSink<'_>>,
) -> Tensor<4> {
    let [n, heads, _, _] = q.dims();
    let step = chunk_len(n, heads, k.dims()[2]);
    forward_in_chunks(q, k, v, mask, scale, sink, step)
}

/// [`forward`] in chunks of `step` queries.
fn forward_in_chunks(
    q: Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: &AttentionMask,
    scale: f64,
    mut sink: Option<WeightsSink<'_>>,
    step: usize,
) -> Tensor<4> {
    let [n, heads, q_len, hd] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let parts: Vec<Tensor<4>> = chunks(0..q_len, step)
        .map(|range| {
            let keys = mask.keys_for(&range, k_len);
            let q_chunk = q.clone().narrow(2, range.start, range.len());
            let w = chunk_weights(q_chunk, k, mask, &range, keys, scale);
            let ctx = grouped(w.clone(), kv_heads)
                .matmul(v.clone().narrow(2, 0, keys))
                .reshape([n, heads, range.len(), hd]);
            if let Some(sink) = sink.as_mut() {
                sink(range, w);
            }
            ctx
        })
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().expect("one chunk")
    } else {
        Tensor::cat(parts, 2)
    }
}

/// Keeps the weights of some query positions as [`forward`] hands chunks over (a
/// [`WeightsSink`]), so that a forward pass can report attention rows without holding
/// `[heads, q, k]` (see [`crate::ForwardOptions::attention_rows`]).
pub struct RowRecorder {
    rows: Vec<usize>,
    keys: usize,
    found: Vec<Option<Tensor<4>>>,
}

impl RowRecorder {
    /// Records query positions `rows` (in this order; repeats allowed) over `keys` keys.
    pub fn new(rows: &[usize], keys: usize) -> Self {
        Self {
            rows: rows.to_vec(),
            keys,
            found: vec![None; rows.len()],
        }
    }

    /// Takes the rows of one chunk of weights `[batch, heads, range.len(), chunk_keys]`.
    pub fn take(&mut self, range: Range<usize>, w: Tensor<4>) {
        let [n, heads, _, chunk_keys] = w.dims();
        for (slot, &row) in self.found.iter_mut().zip(&self.rows) {
            if !range.contains(&row) {
                continue;
            }
            let mut r = w.clone().narrow(2, row - range.start, 1);
            if chunk_keys < self.keys {
                let zeros = Tensor::zeros([n, heads, 1, self.keys - chunk_keys], &r.device());
                r = Tensor::cat(vec![r, zeros], 3);
            }
            *slot = Some(r);
        }
    }

    /// `[batch, heads, rows, keys]` weights of the recorded rows.
    ///
    /// # Panics
    /// If a row was not a query of the forward pass.
    pub fn finish(self) -> Tensor<4> {
        let rows: Vec<Tensor<4>> = self
            .found
            .into_iter()
            .map(|r| r.expect("every recorded row is a query position"))
            .collect();
        Tensor::cat(rows, 2)
    }
}

/// The self-attention of a decoder forward pass as `options` ask: the context `[rows, heads, q,
/// head_dim]`; with [`ForwardOptions::attentions`], this layer's weights pushed onto `out`
/// (only [`ForwardOptions::attention_rows`]' rows where given). Computed in query chunks unless
/// every weight is asked for or the AttnLRP graph (`lrp`) is built; `bias` gives the full
/// additive mask for those.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decoder_self_attention(
    (q, k, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    mask: &AttentionMask,
    bias: impl FnOnce() -> Tensor<4>,
    scale: f64,
    lrp: bool,
    options: &ForwardOptions,
    out: &mut ModelOutput,
) -> Tensor<4> {
    let rows = options
        .attention_rows
        .as_ref()
        .filter(|_| options.attentions);
    if lrp || (options.attentions && rows.is_none()) {
        let n_rep = q.dims()[1] / k.dims()[1];
        let (k, v) = (repeat_kv(k, n_rep), repeat_kv(v, n_rep));
        let attend = if lrp { lrp_attention } else { attention };
        let (ctx, weights) = attend(q, k, v, Some(bias()), scale);
        if options.attentions {
            out.attentions.push(weights);
        }
        return ctx;
    }
    let Some(rows) = rows else {
        return forward(q, &k, &v, mask, scale, None);
    };
    let mut recorder = RowRecorder::new(rows, k.dims()[2]);
    let ctx = forward(
        q,
        &k,
        &v,
        mask,
        scale,
        Some(&mut |r, w| recorder.take(r, w)),
    );
    out.attentions.push(recorder.finish());
    out.attention_rows = Some(rows.clone());
    ctx
}

/// What the backward pass of one attention needs: the (rotated) queries `[rows, heads, len,
/// head_dim]`, keys and values `[rows, kv_heads, len, head_dim]` and the mask; the weights are
/// recomputed chunk by chunk.
#[derive(Debug, Clone)]
pub struct AttentionTape {
    /// Queries.
    pub q: Tensor<4>,
    /// Keys.
    pub k: Tensor<4>,
    /// Values.
    pub v: Tensor<4>,
    /// Which keys each query sees.
    pub mask: AttentionMask,
    /// Score scale.
    pub scale: f64,
}

impl AttentionTape {
    /// Runs [`forward`] and keeps what [`AttentionTape::backward`] needs.
    pub fn forward(
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: AttentionMask,
        scale: f64,
    ) -> (Tensor<4>, Self) {
        let ctx = forward(q.clone(), &k, &v, &mask, scale, None);
        let tape = Self {
            q,
            k,
            v,
            mask,
            scale,
        };
        (ctx, tape)
    }

    /// Input gradients for queries `queries` over keys `0..queries.end` (a causal backward pass
    /// that stops at `queries.end`), from the merged context gradient `dctx` `[rows,
    /// queries.len(), heads·head_dim]`. Returns `dq` `[rows, heads, queries.len(), head_dim]`
    /// and `dk`, `dv` `[rows, kv_heads, queries.end, head_dim]` (summed over the query heads of
    /// each group).
    pub fn backward(
        &self,
        queries: Range<usize>,
        dctx: Tensor<3>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [n, heads, _, _] = self.q.dims();
        let step = chunk_len(n, heads, queries.end);
        self.backward_in_chunks(queries, dctx, step)
    }

    /// [`AttentionTape::backward`] in chunks of `step` queries.
    fn backward_in_chunks(
        &self,
        queries: Range<usize>,
        dctx: Tensor<3>,
        step: usize,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [n, heads, _, hd] = self.q.dims();
        let kv_heads = self.k.dims()[1];
        let len = queries.end;
        let dctx = split_heads(dctx, heads);
        let device = dctx.device();
        let mut dk = Tensor::<4>::zeros([n, kv_heads, len, hd], &device);
        let mut dv = Tensor::<4>::zeros([n, kv_heads, len, hd], &device);
        let mut dq = Vec::new();
        for range in chunks(queries.clone(), step) {
            let keys = self.mask.keys_for(&range, len);
            let q_chunk = self.q.clone().narrow(2, range.start, range.len());
            let w = chunk_weights(
                q_chunk.clone(),
                &self.k,
                &self.mask,
                &range,
                keys,
                self.scale,
            );
            let g = dctx
                .clone()
                .narrow(2, range.start - queries.start, range.len());
            let (dq_chunk, dk_part, dv_part) = self.chunk_backward(q_chunk, w, g, keys);
            dq.push(dq_chunk);
            dk = add_prefix(dk, dk_part);
            dv = add_prefix(dv, dv_part);
        }
        let dq = if dq.len() == 1 {
            dq.pop().expect("one chunk")
        } else {
            Tensor::cat(dq, 2)
        };
        (dq, dk, dv)
    }

    /// One chunk's `(dq, dk, dv)` from its queries, weights `[rows, heads, m, keys]` and context
    /// gradient `[rows, heads, m, head_dim]`; `dk`, `dv` cover keys `0..keys`.
    fn chunk_backward(
        &self,
        q_chunk: Tensor<4>,
        w: Tensor<4>,
        dctx: Tensor<4>,
        keys: usize,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [n, heads, m, hd] = q_chunk.dims();
        let kv_heads = self.k.dims()[1];
        let k = self.k.clone().narrow(2, 0, keys);
        let v = self.v.clone().narrow(2, 0, keys);
        let w = grouped(w, kv_heads);
        let dctx = grouped(dctx, kv_heads);
        let dw = dctx.clone().matmul(v.swap_dims(2, 3));
        let dv = w.clone().swap_dims(2, 3).matmul(dctx);
        let row_dot = (dw.clone() * w.clone()).sum_dim(3);
        let ds = w * (dw - row_dot) * self.scale;
        let dq = ds.clone().matmul(k).reshape([n, heads, m, hd]);
        let dk = ds.swap_dims(2, 3).matmul(grouped(q_chunk, kv_heads));
        (dq, dk, dv)
    }
}

/// `total` (`[rows, heads, len, d]`) with `part` (`[rows, heads, keys ≤ len, d]`) added to its
/// first `keys` positions.
fn add_prefix(total: Tensor<4>, part: Tensor<4>) -> Tensor<4> {
    let [n, h, keys, d] = part.dims();
    let len = total.dims()[2];
    if keys == len {
        return total + part;
    }
    let head = total.clone().narrow(2, 0, keys) + part;
    total.slice_assign([0..n, 0..h, 0..keys, 0..d], head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::attention_bias;
    use burn::tensor::Distribution;

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Chunked forward equals the unchunked attention, with padding, causality and grouped heads.
    #[test]
    fn chunked_forward_matches_full_attention() {
        let device = Device::flex();
        let (n, heads, kv, len, hd) = (2, 4, 2, 37, 8);
        let q = Tensor::<4>::random([n, heads, len, hd], Distribution::Default, &device);
        let k = Tensor::<4>::random([n, kv, len, hd], Distribution::Default, &device);
        let v = Tensor::<4>::random([n, kv, len, hd], Distribution::Default, &device);
        let mut key_mask = vec![vec![true; len]; n];
        key_mask[1][..5].fill(false);
        let bias = attention_bias(&key_mask, len, true, &device);
        let (want, want_w) = attention(
            q.clone(),
            repeat_kv(k.clone(), heads / kv),
            repeat_kv(v.clone(), heads / kv),
            Some(bias),
            0.3,
        );
        let mask = AttentionMask::new(&key_mask, len, true);
        for step in [len, 5] {
            let mut got_w = Vec::new();
            let mut sink = |r, w| got_w.push((r, w));
            let got = forward_in_chunks(q.clone(), &k, &v, &mask, 0.3, Some(&mut sink), step);
            assert!(max_diff(got, want.clone()) < 1e-5);
            for (r, w) in got_w {
                let keys = w.dims()[3];
                let full = want_w
                    .clone()
                    .narrow(2, r.start, r.len())
                    .narrow(3, 0, keys);
                assert!(max_diff(w, full) < 1e-5);
            }
        }
        // The backward pass of queries 20..30 equals the one from the full weights.
        let tape = AttentionTape {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            mask,
            scale: 0.3,
        };
        let dctx = Tensor::<3>::random([n, 10, heads * hd], Distribution::Default, &device);
        let span = |t: Tensor<4>| t.narrow(2, 0, 30);
        let want = crate::backprop::attention_backward(
            q.narrow(2, 20, 10),
            span(k),
            span(v),
            want_w.narrow(2, 20, 10).narrow(3, 0, 30),
            dctx.clone(),
            0.3,
        );
        for step in [30, 3] {
            let got = tape.backward_in_chunks(20..30, dctx.clone(), step);
            assert!(max_diff(got.0, want.0.clone()) < 1e-5);
            assert!(max_diff(got.1, want.1.clone()) < 1e-5);
            assert!(max_diff(got.2, want.2.clone()) < 1e-5);
        }
    }

    /// Several chunks give the same context as one.
    #[test]
    fn chunks_split_the_queries() {
        let device = Device::flex();
        let parts: Vec<_> = chunks(3..10, 3).collect();
        assert_eq!(parts, vec![3..6, 6..9, 9..10]);
        let mask = AttentionMask::new(&[vec![false, false, true, true]], 4, true);
        assert_eq!(mask.keys_for(&(0..1), 4), 4, "a blind query sees every key");
        assert_eq!(mask.keys_for(&(2..3), 4), 3);
        let b = mask.bias(&(2..4), 4, &device);
        assert_eq!(b.dims(), [1, 1, 2, 4]);
    }
}
