//! The attention core every block calls: scores → soft-capping → mask → softmax → context,
//! computed in query chunks so that memory is linear in the sequence length (no `[heads, q, k]`
//! tensor is held beyond one chunk of queries).
//!
//! - [`attend`]: the context chunk by chunk (with AttnLRP's uniform rule on the two products
//!   when asked); a [`Recorder`] keeps the weights, or only some query rows of them, as the
//!   chunks are computed. [`attend_biased`] adds a further bias computed per chunk (T5's
//!   relative positions, for the encoder-decoder models of [`super::seq2seq`]).
//! - [`CoreTape::backward`]: the input gradients for a range of queries, recomputing each
//!   chunk's weights from the queries and keys instead of reading them from a tape (what the
//!   tape keeps is linear in the length: the rotated queries, keys and values).
//!
//! Causal chunks only read the keys their queries can see (keys up to the chunk's last query,
//! [`AttentionMask::keys_for`]) and hold at most [`CAUSAL_CHUNK_QUERIES`] queries, so little of
//! the masked upper triangle is computed (at 1,000 queries 6 % more than the triangle; with one
//! chunk of 930 queries, as the score budget alone allowed, it was 87 % more) and none is stored.
//! Grouped-query attention is computed without repeating the keys and values: the query heads
//! that share a key/value head are stacked along the query rows.

use std::ops::Range;

use burn::tensor::{Tensor, activation};

use super::hooks::uniform_rule;
use super::mask::AttentionMask;
use crate::nn::split_heads;

/// Floats of one chunk's `[rows, heads, queries, keys]` scores: chunks are sized so that the
/// few temporaries of that shape stay within tens of MB at any length.
pub const CHUNK_FLOATS: usize = 1 << 23;

/// How the scores of one attention layer are formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    /// Factor of `q kᵀ`.
    pub scale: f64,
    /// Attention logit soft-capping `c·tanh(s / c)` (Gemma 2).
    pub softcap: Option<f64>,
}

impl Scoring {
    /// The scores of the products `q kᵀ`.
    fn scores(self, product: Tensor<4>) -> Tensor<4> {
        match self.softcap {
            Some(cap) => (product * (self.scale / cap)).tanh() * cap,
            None => product * self.scale,
        }
    }
}

/// An additive bias `[rows | 1, heads | 1, m, keys]` of the queries `range` (`m` of them) over
/// their first `keys` keys, computed chunk by chunk (T5's relative position bias) so that no
/// `[heads, q, k]` table is held.
pub type ChunkBias<'a> = &'a dyn Fn(&Range<usize>, usize) -> Tensor<4>;

thread_local! {
    /// [`with_chunk_floats`]' override of [`CHUNK_FLOATS`] on this thread.
    static CHUNK_FLOATS_OVERRIDE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with chunks of `floats` scores instead of [`CHUNK_FLOATS`] on this thread (tests
/// that need several chunks on a small input).
#[doc(hidden)]
pub fn with_chunk_floats<T>(floats: usize, f: impl FnOnce() -> T) -> T {
    let before = CHUNK_FLOATS_OVERRIDE.replace(Some(floats));
    let out = f();
    CHUNK_FLOATS_OVERRIDE.set(before);
    out
}

/// Most queries of one causal chunk: a chunk of `c` queries computes the scores of the keys up
/// to its last query, so over `len` queries about `c / len` of what it computes is masked.
pub const CAUSAL_CHUNK_QUERIES: usize = 64;

/// Queries per chunk for `rows × heads` score rows over `keys` keys under `mask`: within
/// [`CHUNK_FLOATS`] scores, and at most [`CAUSAL_CHUNK_QUERIES`] when causal.
fn chunk_len(mask: &AttentionMask, rows: usize, heads: usize, keys: usize) -> usize {
    let floats = CHUNK_FLOATS_OVERRIDE.get().unwrap_or(CHUNK_FLOATS);
    let by_size = (floats / (rows * heads * keys).max(1)).max(1);
    match mask.is_causal() {
        true => by_size.min(CAUSAL_CHUNK_QUERIES),
        false => by_size,
    }
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

/// Concatenates chunks along the query axis.
fn cat_chunks(mut parts: Vec<Tensor<4>>) -> Tensor<4> {
    if parts.len() == 1 {
        parts.pop().expect("one chunk")
    } else {
        Tensor::cat(parts, 2)
    }
}

/// One chunk of queries `range` over the first `keys` keys: the queries `[rows, heads, m, d]`
/// and the weights `[rows, heads, m, keys]`.
struct Chunk {
    range: Range<usize>,
    keys: usize,
    q: Tensor<4>,
}

impl Chunk {
    fn new(q: &Tensor<4>, mask: &AttentionMask, range: Range<usize>, keys: usize) -> Self {
        let keys = mask.keys_for(&range, keys);
        let q = q.clone().narrow(2, range.start, range.len());
        Self { range, keys, q }
    }

    /// The weights over keys `k` (`[rows, kv_heads, ≥keys, d]`) under the mask and an optional
    /// further bias; `lrp`: uniform rule on `q kᵀ`.
    fn weights(
        &self,
        k: &Tensor<4>,
        (mask, extra): (&AttentionMask, Option<ChunkBias>),
        scoring: Scoring,
        lrp: bool,
    ) -> Tensor<4> {
        let [n, heads, m, _] = self.q.dims();
        let kv_heads = k.dims()[1];
        let keys_t = k.clone().narrow(2, 0, self.keys).swap_dims(2, 3);
        let product = grouped(self.q.clone(), kv_heads)
            .matmul(keys_t)
            .reshape([n, heads, m, self.keys]);
        let product = if lrp { uniform_rule(product) } else { product };
        let scores = scoring.scores(product);
        let scores = match mask.bias(&self.range, self.keys, &scores.device()) {
            Some(bias) => scores + bias,
            None => scores,
        };
        let scores = match extra {
            Some(extra) => scores + extra(&self.range, self.keys),
            None => scores,
        };
        activation::softmax(scores, 3)
    }
}

/// The context `[rows, heads, q, d]` of `softmax(cap(q kᵀ·scale) + mask) v` for queries `q`
/// (`[rows, heads, q, d]`) over keys and values `k`, `v` (`[rows, kv_heads, k, d]`, `kv_heads`
/// dividing `heads`), in query chunks; with `lrp`, AttnLRP's uniform rule on the two products;
/// `record` receives each chunk's weights.
pub fn attend(
    q: Tensor<4>,
    kv: (&Tensor<4>, &Tensor<4>),
    mask: &AttentionMask,
    how: (Scoring, bool),
    record: Option<&mut Recorder>,
) -> Tensor<4> {
    attend_biased(q, kv, (mask, None), how, record)
}

/// [`attend`] with a further additive bias of each chunk's scores (after the scale, with the
/// mask): T5's relative position bias.
pub fn attend_biased(
    q: Tensor<4>,
    (k, v): (&Tensor<4>, &Tensor<4>),
    bias: (&AttentionMask, Option<ChunkBias>),
    (scoring, lrp): (Scoring, bool),
    record: Option<&mut Recorder>,
) -> Tensor<4> {
    let [n, heads, _, _] = q.dims();
    let step = chunk_len(bias.0, n, heads, k.dims()[2]);
    attend_in_chunks(q, (k, v), bias, (scoring, lrp), record, step)
}

/// [`attend_biased`] in chunks of `step` queries.
fn attend_in_chunks(
    q: Tensor<4>,
    (k, v): (&Tensor<4>, &Tensor<4>),
    (mask, extra): (&AttentionMask, Option<ChunkBias>),
    (scoring, lrp): (Scoring, bool),
    mut record: Option<&mut Recorder>,
    step: usize,
) -> Tensor<4> {
    let [n, heads, q_len, hd] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let parts = chunks(0..q_len, step).map(|range| {
        let chunk = Chunk::new(&q, mask, range, k_len);
        let w = chunk.weights(k, (mask, extra), scoring, lrp);
        let ctx = grouped(w.clone(), kv_heads)
            .matmul(v.clone().narrow(2, 0, chunk.keys))
            .reshape([n, heads, chunk.range.len(), hd]);
        if let Some(record) = record.as_mut() {
            record.take(chunk.range, w);
        }
        if lrp { uniform_rule(ctx) } else { ctx }
    });
    cat_chunks(parts.collect())
}

/// Keeps attention weights as [`attend`] hands chunks over: every query's, or only the rows of
/// some query positions (so that a forward pass can report attention rows without holding
/// `[heads, q, k]`, see [`crate::ForwardOptions::attention_rows`]).
pub struct Recorder {
    rows: Option<Vec<usize>>,
    keys: usize,
    found: Vec<Option<Tensor<4>>>,
}

impl Recorder {
    /// Records query positions `rows` (in this order, repeats allowed; `None`: every query)
    /// over `keys` keys.
    pub fn new(rows: Option<&[usize]>, keys: usize) -> Self {
        let found = rows.map_or(vec![], |r| vec![None; r.len()]);
        Self {
            rows: rows.map(<[usize]>::to_vec),
            keys,
            found,
        }
    }

    /// `w` `[batch, heads, m, chunk_keys]` padded with zero weights to every key.
    fn padded(&self, w: Tensor<4>) -> Tensor<4> {
        let [n, heads, m, chunk_keys] = w.dims();
        if chunk_keys == self.keys {
            return w;
        }
        let zeros = Tensor::zeros([n, heads, m, self.keys - chunk_keys], &w.device());
        Tensor::cat(vec![w, zeros], 3)
    }

    /// Takes the weights `[batch, heads, range.len(), chunk_keys]` of queries `range`.
    pub fn take(&mut self, range: Range<usize>, w: Tensor<4>) {
        let Some(rows) = &self.rows else {
            let w = self.padded(w);
            self.found.push(Some(w));
            return;
        };
        let picked: Vec<(usize, Tensor<4>)> = rows
            .iter()
            .enumerate()
            .filter(|(_, row)| range.contains(row))
            .map(|(slot, &row)| (slot, w.clone().narrow(2, row - range.start, 1)))
            .collect();
        for (slot, r) in picked {
            self.found[slot] = Some(self.padded(r));
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
        cat_chunks(rows)
    }
}

/// What the backward pass of one attention core needs: the (rotated) queries `[rows, heads, len,
/// d]`, keys and values `[rows, kv_heads, len, d]` and the mask; the weights are recomputed
/// chunk by chunk.
#[derive(Debug, Clone)]
pub struct CoreTape {
    pub q: Tensor<4>,
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    pub mask: AttentionMask,
}

impl CoreTape {
    /// Floats the tape holds.
    pub fn floats(&self) -> usize {
        [&self.q, &self.k, &self.v]
            .iter()
            .map(|t| t.shape().num_elements())
            .sum()
    }

    /// Input gradients of [`attend`] (without hooks) for queries `queries` over keys
    /// `0..queries.end` (a causal backward pass that stops at `queries.end`), from the merged
    /// context gradient `dctx` `[rows, queries.len(), heads·d]`. Returns `dq` `[rows, heads,
    /// queries.len(), d]` and `dk`, `dv` `[rows, kv_heads, queries.end, d]` (summed over the
    /// query heads of each group).
    pub fn backward(
        &self,
        scoring: Scoring,
        queries: Range<usize>,
        dctx: Tensor<3>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [n, heads, _, _] = self.q.dims();
        let step = chunk_len(&self.mask, n, heads, queries.end);
        self.backward_in_chunks(scoring, queries, dctx, step)
    }

    /// [`CoreTape::backward`] in chunks of `step` queries.
    fn backward_in_chunks(
        &self,
        scoring: Scoring,
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
            let chunk = Chunk::new(&self.q, &self.mask, range, len);
            let start = chunk.range.start - queries.start;
            let g = dctx.clone().narrow(2, start, chunk.range.len());
            let (dq_chunk, dk_part, dv_part) = self.chunk_backward(&chunk, scoring, g);
            dq.push(dq_chunk);
            dk = add_prefix(dk, dk_part);
            dv = add_prefix(dv, dv_part);
        }
        (cat_chunks(dq), dk, dv)
    }

    /// One chunk's `(dq, dk, dv)` from its context gradient `[rows, heads, m, d]`; `dk`, `dv`
    /// cover the chunk's keys.
    fn chunk_backward(
        &self,
        chunk: &Chunk,
        scoring: Scoring,
        dctx: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [n, heads, m, hd] = chunk.q.dims();
        let kv_heads = self.k.dims()[1];
        let k = self.k.clone().narrow(2, 0, chunk.keys);
        let v = self.v.clone().narrow(2, 0, chunk.keys);
        let w = grouped(
            chunk.weights(&self.k, (&self.mask, None), scoring, false),
            kv_heads,
        );
        let q = grouped(chunk.q.clone(), kv_heads);
        let dctx = grouped(dctx, kv_heads);
        let dw = dctx.clone().matmul(v.swap_dims(2, 3));
        let dv = w.clone().swap_dims(2, 3).matmul(dctx);
        let row_dot = (dw.clone() * w.clone()).sum_dim(3);
        let ds = w * (dw - row_dot) * scoring.scale;
        let ds = match scoring.softcap {
            // d tanh(u)/du = 1 - tanh(u)², recomputed from the queries and keys.
            Some(cap) => {
                let capped =
                    (q.clone().matmul(k.clone().swap_dims(2, 3)) * (scoring.scale / cap)).tanh();
                ds * (capped.square().neg() + 1.0)
            }
            None => ds,
        };
        let dq = ds.clone().matmul(k).reshape([n, heads, m, hd]);
        let dk = ds.swap_dims(2, 3).matmul(q);
        (dq, dk, dv)
    }
}

/// `total` (`[rows, heads, len, d]`) with `part` (`[rows, heads, keys ≤ len, d]`) added to its
/// first `keys` positions.
fn add_prefix(total: Tensor<4>, part: Tensor<4>) -> Tensor<4> {
    let [n, h, keys, d] = part.dims();
    if keys == total.dims()[2] {
        return total + part;
    }
    let head = total.clone().narrow(2, 0, keys) + part;
    total.slice_assign([0..n, 0..h, 0..keys, 0..d], head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::repeat_kv;
    use burn::tensor::{Device, Distribution};

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn random(shape: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::random(shape, Distribution::Default, device)
    }

    /// Chunked forward and backward equal the unchunked attention (and its autodiff-free
    /// reference backward), with padding, causality, a sliding window, soft-capping and
    /// grouped heads.
    #[test]
    fn chunks_match_full_attention() {
        let device = Device::flex();
        let (n, heads, kv, len, hd) = (2, 4, 2, 37, 8);
        let (q, k, v) = (
            random([n, heads, len, hd], &device),
            random([n, kv, len, hd], &device),
            random([n, kv, len, hd], &device),
        );
        let mut key_mask = vec![vec![true; len]; n];
        key_mask[1][..5].fill(false);
        for (window, softcap) in [(None, None), (Some(7), Some(0.5))] {
            let mask = AttentionMask::new(&key_mask, len, window);
            let scoring = Scoring {
                scale: 0.3,
                softcap,
            };
            let full = mask.bias(&(0..len), len, &device).expect("a causal bias");
            let (kr, vr) = (
                repeat_kv(k.clone(), heads / kv),
                repeat_kv(v.clone(), heads / kv),
            );
            let product = q.clone().matmul(kr.swap_dims(2, 3));
            let want_w = activation::softmax(scoring.scores(product) + full, 3);
            let want = want_w.clone().matmul(vr);
            for step in [len, 5] {
                let mut rec = Recorder::new(None, len);
                let got = attend_in_chunks(
                    q.clone(),
                    (&k, &v),
                    (&mask, None),
                    (scoring, false),
                    Some(&mut rec),
                    step,
                );
                assert!(max_diff(got, want.clone()) < 1e-5);
                assert!(max_diff(rec.finish(), want_w.clone()) < 1e-5);
            }
            let tape = CoreTape {
                q: q.clone(),
                k: k.clone(),
                v: v.clone(),
                mask,
            };
            let dctx = Tensor::<3>::random([n, 10, heads * hd], Distribution::Default, &device);
            let whole = tape.backward_in_chunks(scoring, 20..30, dctx.clone(), 30);
            if softcap.is_none() && window.is_none() {
                let span = |t: Tensor<4>| t.narrow(2, 0, 30);
                let (wq, wk, wv) = crate::backprop::attention_backward(
                    q.clone().narrow(2, 20, 10),
                    span(k.clone()),
                    span(v.clone()),
                    want_w.narrow(2, 20, 10).narrow(3, 0, 30),
                    dctx.clone(),
                    0.3,
                );
                assert!(max_diff(whole.0.clone(), wq) < 1e-5);
                assert!(max_diff(whole.1.clone(), wk) < 1e-5);
                assert!(max_diff(whole.2.clone(), wv) < 1e-5);
            }
            let got = tape.backward_in_chunks(scoring, 20..30, dctx, 3);
            assert!(max_diff(got.0, whole.0) < 1e-5);
            assert!(max_diff(got.1, whole.1) < 1e-5);
            assert!(max_diff(got.2, whole.2) < 1e-5);
        }
    }

    #[test]
    fn chunks_split_the_queries() {
        let parts: Vec<_> = chunks(3..10, 3).collect();
        assert_eq!(parts, vec![3..6, 6..9, 9..10]);
    }
}
