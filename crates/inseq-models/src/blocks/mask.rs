//! Which keys each query of an attention layer sees: a per-row key mask (`false` = padding),
//! causality (decoder self-attention) and an optional sliding window, given to the attention core
//! ([`super::core`]) as a chunk's additive bias (with ALiBi's position bias where the model has
//! it) and the keys a chunk needs. Encoder self-attention and cross-attention see every real key
//! ([`AttentionMask::full`]).

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};

use super::alibi::Alibi;
use crate::nn::MASK_VALUE;

/// The mask of `q_len` queries over the keys of a `[rows, k]` key mask, the queries being the
/// last `q_len` positions (as with a key/value cache): query `i` (key position `at = i + k -
/// q_len`) sees key `j` when `j` is not padding, `j <= at` and, with a sliding `window`,
/// `j > at - window` (transformers' `sliding_window_overlay`: the window counts the query's own
/// position).
#[derive(Debug, Clone)]
pub struct AttentionMask {
    key_mask: Vec<Vec<bool>>,
    offset: usize,
    window: Option<usize>,
    causal: bool,
    /// Per query of a causal mask: some row's query sees no key (it then attends uniformly to
    /// every key).
    blind: Vec<bool>,
    /// ALiBi position biases, added to every chunk's bias.
    alibi: Option<Alibi>,
}

impl AttentionMask {
    /// The mask of `q_len` queries over the keys of `key_mask`.
    pub fn new(key_mask: &[Vec<bool>], q_len: usize, window: Option<usize>) -> Self {
        let k_len = key_mask.first().map_or(0, Vec::len);
        let offset = k_len.saturating_sub(q_len);
        let mut blind = vec![false; q_len];
        for row in key_mask {
            // The latest real key at or before each query's position.
            let (mut last, mut next) = (None, 0);
            for (i, b) in blind.iter_mut().enumerate() {
                let at = i + offset;
                while next <= at && next < k_len {
                    if row[next] {
                        last = Some(next);
                    }
                    next += 1;
                }
                *b |= last.is_none_or(|j| window.is_some_and(|w| j + w <= at));
            }
        }
        Self {
            key_mask: key_mask.to_vec(),
            offset,
            window,
            causal: true,
            blind,
            alibi: None,
        }
    }

    /// The mask of queries that see every real key of `key_mask` (encoder self-attention,
    /// cross-attention); every chunk reads every key, so that a row without real keys attends
    /// uniformly to all of them.
    pub fn full(key_mask: &[Vec<bool>]) -> Self {
        Self {
            key_mask: key_mask.to_vec(),
            offset: 0,
            window: None,
            causal: false,
            blind: Vec::new(),
            alibi: None,
        }
    }

    /// This mask with ALiBi's position biases (`None`: without).
    pub fn with_alibi(mut self, alibi: Option<&Alibi>) -> Self {
        self.alibi = alibi.cloned();
        self
    }

    /// Whether queries see only keys up to their own position (decoder self-attention).
    pub(crate) fn is_causal(&self) -> bool {
        self.causal
    }

    /// The keys `lo..hi` that causality and the window let query `query` see (padding aside),
    /// of the first `keys` keys.
    fn span(&self, query: usize, keys: usize) -> Range<usize> {
        if !self.causal {
            return 0..keys;
        }
        let at = query + self.offset;
        let lo = self.window.map_or(0, |w| (at + 1).saturating_sub(w));
        lo.min(keys)..(at + 1).min(keys)
    }

    /// Keys `0..n` the queries `queries` need, of the first `keys` keys: up to the last query's
    /// causal horizon, or all of them when some query sees none (it then attends uniformly to
    /// every key, as the unchunked computation does).
    pub(crate) fn keys_for(&self, queries: &Range<usize>, keys: usize) -> usize {
        if !self.causal || self.blind[queries.clone()].iter().any(|&b| b) {
            keys
        } else {
            (queries.end + self.offset).min(keys)
        }
    }

    /// `[rows, 1, queries, keys]` additive bias; with ALiBi `[rows, heads, queries, keys]`, its
    /// position bias added; `None` where every query sees every key without a position bias (a
    /// [`AttentionMask::full`] mask without padding). A hidden key gets `-inf` (its weight is
    /// exactly 0, and the exponential of `-inf` is cheap where that of a large finite negative
    /// number takes the slow underflow path of `expf`), except in a query that sees no key at
    /// all: there every key gets [`MASK_VALUE`], finite, so that the query attends uniformly to
    /// every key instead of producing NaN.
    pub(crate) fn bias(
        &self,
        queries: &Range<usize>,
        keys: usize,
        device: &Device,
    ) -> Option<Tensor<4>> {
        if !self.causal && self.alibi.is_none() && self.key_mask.iter().flatten().all(|&k| k) {
            return None;
        }
        let rows = self.key_mask.len();
        let mut data = Vec::with_capacity(rows * queries.len() * keys);
        for real in &self.key_mask {
            for q in queries.clone() {
                let span = self.span(q, keys);
                let hidden = match real[span.clone()].iter().any(|&r| r) {
                    true => f32::NEG_INFINITY,
                    false => MASK_VALUE,
                };
                data.extend((0..keys).map(|k| match span.contains(&k) && real[k] {
                    true => 0.0,
                    false => hidden,
                }));
            }
        }
        let shape = [rows, 1, queries.len(), keys];
        let bias = Tensor::from_data(TensorData::new(data, shape), device);
        Some(match &self.alibi {
            Some(alibi) => bias + alibi.bias(&self.key_mask, keys, device),
            None => bias,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blind_queries_see_every_key() {
        let mask = AttentionMask::new(&[vec![false, false, true, true]], 4, None);
        assert_eq!(mask.keys_for(&(0..1), 4), 4, "a blind query sees every key");
        assert_eq!(mask.keys_for(&(2..3), 4), 3);
        let bias = mask
            .bias(&(2..4), 4, &Device::flex())
            .expect("a causal bias");
        assert_eq!(bias.dims(), [1, 1, 2, 4]);
        let full = AttentionMask::full(&[vec![true; 3]]);
        assert!(full.bias(&(0..2), 3, &Device::flex()).is_none());
        // A window of 1 after two padded keys: query 3 sees only itself.
        let mask = AttentionMask::new(&[vec![true, false, false, true]], 4, Some(1));
        assert_eq!(mask.blind, [false, true, true, false]);
    }
}
