//! The attention sublayer of the encoder-decoder models (the BART family, T5): projections, then
//! the chunked core ([`super::core`]) with the layer's mask and, for T5, its relative position
//! bias computed per chunk of queries, so that a forward pass holds no `[heads, q, k]` tensor
//! beyond one chunk unless the caller asks for every query's weights.

use burn::tensor::Tensor;

use super::core::{ChunkBias, Recorder, Scoring, attend_biased};
use super::mask::AttentionMask;
use crate::model::ForwardOptions;
use crate::nn::{Linear, merge_heads, split_heads};
use crate::weights::Weights;
use inseq_core::Result;

/// Multi-head attention with its four projections (biased for the BART family, bias-free for T5).
pub(crate) struct Attn {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub heads: usize,
    /// Factor of `q kᵀ` (`head_dim^-0.5`; 1 for T5).
    pub scale: f64,
}

impl Attn {
    /// Loads the projections `{prefix}.{q,k,v,o}` (names in `qkvo`, torch `[out, in]` layout) of
    /// `heads` heads of `inner / heads` features over a model width `d`, with biases or not.
    pub(crate) fn load(
        w: &mut Weights,
        (prefix, qkvo): (&str, [&str; 4]),
        [d, inner]: [usize; 2],
        (heads, bias, scale): (usize, bool, f64),
    ) -> Result<Self> {
        let [q, k, v, o] = qkvo;
        let mut linear =
            |name: &str, dims| Linear::load_torch(w, &format!("{prefix}.{name}"), bias, dims);
        Ok(Self {
            q: linear(q, [inner, d])?,
            k: linear(k, [inner, d])?,
            v: linear(v, [inner, d])?,
            o: linear(o, [d, inner])?,
            heads,
            scale,
        })
    }
}

/// Which attention weights a sublayer records.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Record<'a> {
    /// None.
    Nothing,
    /// Every query's.
    Every,
    /// Those of these query positions (see [`ForwardOptions::attention_rows`]).
    Rows(&'a [usize]),
}

impl<'a> Record<'a> {
    /// What a decoder sublayer (self- or cross-attention, whose queries are target positions)
    /// records under `options`.
    pub fn decoder(options: &'a ForwardOptions) -> Self {
        match (options.attentions, options.attention_rows.as_deref()) {
            (false, _) => Self::Nothing,
            (true, None) => Self::Every,
            (true, Some(rows)) => Self::Rows(rows),
        }
    }

    /// What an encoder sublayer records under `options`: every query's weights when they are
    /// asked for without `attention_rows` (which name target positions), else none.
    pub fn encoder(options: &ForwardOptions) -> Self {
        match (options.attentions, &options.attention_rows) {
            (true, None) => Self::Every,
            _ => Self::Nothing,
        }
    }

    fn recorder(self, keys: usize) -> Option<Recorder> {
        match self {
            Self::Nothing => None,
            Self::Every => Some(Recorder::new(None, keys)),
            Self::Rows(rows) => Some(Recorder::new(Some(rows), keys)),
        }
    }
}

/// Where a sublayer attends: its mask, a further bias per chunk (T5's relative positions),
/// AttnLRP's rules (see [`ForwardOptions::attn_lrp`]) and the weights to record.
pub(crate) struct Site<'a> {
    pub mask: &'a AttentionMask,
    pub bias: Option<ChunkBias<'a>>,
    pub lrp: bool,
    pub record: Record<'a>,
}

impl Attn {
    /// Attends from `x` to `kv`; returns the projected output and the recorded weights.
    /// `values` edits the `[batch, heads, kv_len, head_dim]` value vectors (value zeroing).
    pub fn forward(
        &self,
        x: Tensor<3>,
        kv: Tensor<3>,
        site: Site<'_>,
        values: impl FnOnce(Tensor<4>) -> Tensor<4>,
    ) -> (Tensor<3>, Option<Tensor<4>>) {
        let q = split_heads(self.q.forward(x), self.heads);
        let k = split_heads(self.k.forward(kv.clone()), self.heads);
        let v = values(split_heads(self.v.forward(kv), self.heads));
        let mut recorder = site.record.recorder(k.dims()[2]);
        let scoring = Scoring {
            scale: self.scale,
            softcap: None,
        };
        let ctx = attend_biased(
            q,
            (&k, &v),
            (site.mask, site.bias),
            (scoring, site.lrp),
            recorder.as_mut(),
        );
        let weights = recorder.map(Recorder::finish);
        (self.o.forward(merge_heads(ctx)), weights)
    }
}
