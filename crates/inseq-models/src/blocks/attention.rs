//! The self-attention sublayer: query/key/value projections (separate or fused), optional
//! query/key norms, rotary embeddings, grouped or multi-query heads, the attention core and the
//! output projection; one forward pass for the hooked and the taped path, one backward pass.

use burn::tensor::Tensor;

use super::Pass;
use super::core::{CoreTape, Recorder, Scoring, attend};
use super::norm::{Norm, NormTape, maybe_backward};
use super::rope;
use crate::backprop::{Span, linear_backward};
use crate::blocks::hooks::decoder_self_kv;
use crate::nn::{Linear, merge_heads, split_heads};

/// How a fused query/key/value projection lays out its output features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedLayout {
    /// All queries, then all keys, then all values (GPT-2's `c_attn`, Phi-3's `qkv_proj`).
    Blocks,
    /// Per key/value group: its query heads, its key head, its value head (GPT-NeoX, Falcon).
    Grouped,
}

/// The query/key/value projections.
// One per layer, built once at load: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Qkv {
    /// `q_proj`, `k_proj`, `v_proj`.
    Separate(Linear, Linear, Linear),
    /// One projection whose output holds queries, keys and values.
    Fused(Linear, FusedLayout),
}

/// Where query/key norms apply.
#[derive(Debug, Clone)]
pub enum QkNorm {
    /// Over each head's features (Qwen3, Gemma 3).
    PerHead(Norm, Norm),
    /// Over the whole projection (OLMo 2).
    Full(Norm, Norm),
}

/// A self-attention sublayer.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query, key and value projections.
    pub qkv: Qkv,
    /// Output projection.
    pub o: Linear,
    /// Query heads, key/value heads, features per head.
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Optional query/key norms.
    pub qk_norm: Option<QkNorm>,
    /// Which of the decoder's rotary embeddings this layer uses (`None`: no rotation).
    pub rope: Option<usize>,
    /// Sliding window (positions a query sees, itself included).
    pub window: Option<usize>,
    /// Score scale and soft-capping.
    pub scoring: Scoring,
}

/// What [`Attention::backward`] reads (the attention weights are recomputed from it).
#[derive(Debug, Clone)]
pub struct AttentionTape {
    q_in: Option<NormTape>,
    k_in: Option<NormTape>,
    core: CoreTape,
}

impl AttentionTape {
    /// Floats the tape holds.
    pub fn floats(&self) -> usize {
        let norms = [&self.q_in, &self.k_in].into_iter().flatten();
        self.core.floats() + norms.map(NormTape::floats).sum::<usize>()
    }
}

/// `[b, s, heads·d]` <-> `[b, s·heads, d]` for per-head norms.
fn per_head(x: Tensor<3>, heads: usize) -> Tensor<3> {
    let [b, s, d] = x.dims();
    x.reshape([b, s * heads, d / heads])
}
fn merged(x: Tensor<3>, s: usize) -> Tensor<3> {
    let [b, sh, d] = x.dims();
    x.reshape([b, s, sh / s * d])
}

impl Attention {
    fn project(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        match &self.qkv {
            Qkv::Separate(q, k, v) => (q.forward(x.clone()), k.forward(x.clone()), v.forward(x)),
            Qkv::Fused(w, FusedLayout::Blocks) => {
                let y = w.forward(x);
                let q = y.clone().narrow(2, 0, h * hd);
                let k = y.clone().narrow(2, h * hd, kvh * hd);
                (q, k, y.narrow(2, (h + kvh) * hd, kvh * hd))
            }
            Qkv::Fused(w, FusedLayout::Grouped) => {
                let y = w.forward(x);
                let [b, s, _] = y.dims();
                let g = h / kvh;
                let y = y.reshape([b, s, kvh, g + 2, hd]);
                let part =
                    |at: usize, n: usize| y.clone().narrow(3, at, n).reshape([b, s, kvh * n * hd]);
                (part(0, g), part(g, 1), part(g + 1, 1))
            }
        }
    }

    fn norm_qk(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        pass: &Pass,
    ) -> (Tensor<3>, Tensor<3>, [Option<NormTape>; 2]) {
        let (lrp, taped, s) = (pass.lrp, pass.taped, q.dims()[1]);
        match &self.qk_norm {
            None => (q, k, [None, None]),
            Some(QkNorm::Full(qn, kn)) => {
                let (q, qt) = qn.forward(q, lrp, taped);
                let (k, kt) = kn.forward(k, lrp, taped);
                (q, k, [qt, kt])
            }
            Some(QkNorm::PerHead(qn, kn)) => {
                let (q, qt) = qn.forward(per_head(q, self.heads), lrp, taped);
                let (k, kt) = kn.forward(per_head(k, self.kv_heads), lrp, taped);
                (merged(q, s), merged(k, s), [qt, kt])
            }
        }
    }

    /// `[b, s, hidden]` (normalised) -> `[b, s, hidden]`; records the weights when asked, and the
    /// tape on a taped pass.
    pub fn forward(
        &self,
        x: Tensor<3>,
        pass: &mut Pass,
        layer: usize,
    ) -> (Tensor<3>, Option<AttentionTape>) {
        let (q, k, v) = self.project(x);
        let (q, k, [q_in, k_in]) = self.norm_qk(q, k, pass);
        let (mut q, mut k) = (split_heads(q, self.heads), split_heads(k, self.kv_heads));
        if let Some((cos, sin)) = self.rope.map(|r| &pass.rope_tables[r]) {
            (q, k) = (rope::apply(q, cos, sin), rope::apply(k, cos, sin));
        }
        let v = split_heads(v, self.kv_heads);
        let (k, v) = decoder_self_kv(k, v, pass.options, layer, &pass.device);
        let options = pass.options;
        let mut recorder = options
            .attentions
            .then(|| Recorder::new(options.attention_rows.as_deref(), k.dims()[2]));
        let mask = pass.mask(self.window);
        let kv = (&k, &v);
        let ctx = attend(
            q.clone(),
            kv,
            mask,
            (self.scoring, pass.lrp),
            recorder.as_mut(),
        );
        let out = self.o.forward(merge_heads(ctx));
        let tape = pass.taped.then(|| AttentionTape {
            q_in,
            k_in,
            core: CoreTape {
                q,
                k,
                v,
                mask: mask.clone(),
            },
        });
        if let Some(recorder) = recorder {
            pass.attentions.push(recorder.finish());
        }
        (out, tape)
    }

    /// Gradient with respect to the sublayer input at positions `0..span.len`, from the output
    /// gradient at `span.start..span.len`.
    pub fn backward(
        &self,
        tape: &AttentionTape,
        tables: &[(Tensor<4>, Tensor<4>)],
        span: Span,
        dout: Tensor<3>,
    ) -> Tensor<3> {
        let (dq, dk, dv) = tape.core.backward(
            self.scoring,
            span.start..span.len,
            linear_backward(&self.o, dout),
        );
        let (dq, dk) = match self.rope.map(|r| &tables[r]) {
            Some((cos, sin)) => (
                rope::backward(dq, &span.query_heads(cos), &span.query_heads(sin)),
                rope::backward(dk, &span.key_heads(cos), &span.key_heads(sin)),
            ),
            None => (dq, dk),
        };
        let (dq, dk, dv) = (merge_heads(dq), merge_heads(dk), merge_heads(dv));
        let (dq, dk) = self.norm_qk_backward(tape, span, dq, dk);
        self.project_backward(span, dq, dk, dv)
    }

    fn norm_qk_backward(
        &self,
        tape: &AttentionTape,
        span: Span,
        dq: Tensor<3>,
        dk: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let (m, len) = (dq.dims()[1], dk.dims()[1]);
        match &self.qk_norm {
            None => (dq, dk),
            Some(QkNorm::Full(qn, kn)) => (
                maybe_backward(Some(qn), tape.q_in.as_ref(), |t| span.rows(t), dq),
                maybe_backward(Some(kn), tape.k_in.as_ref(), |t| span.all(t), dk),
            ),
            Some(QkNorm::PerHead(qn, kn)) => {
                let heads = |t: &Tensor<3>, n: usize, start: usize, count: usize| {
                    t.clone().narrow(1, start * n, count * n)
                };
                let (h, kvh) = (self.heads, self.kv_heads);
                let dq = maybe_backward(
                    Some(qn),
                    tape.q_in.as_ref(),
                    |t| heads(t, h, span.start, m),
                    per_head(dq, h),
                );
                let dk = maybe_backward(
                    Some(kn),
                    tape.k_in.as_ref(),
                    |t| heads(t, kvh, 0, len),
                    per_head(dk, kvh),
                );
                (merged(dq, m), merged(dk, len))
            }
        }
    }

    /// Input gradient of the projections, from the query gradient at `span.start..span.len`
    /// and the key and value gradients at `0..span.len`.
    fn project_backward(
        &self,
        span: Span,
        dq: Tensor<3>,
        dk: Tensor<3>,
        dv: Tensor<3>,
    ) -> Tensor<3> {
        match &self.qkv {
            Qkv::Separate(q, k, v) => {
                span.pad(linear_backward(q, dq)) + linear_backward(k, dk) + linear_backward(v, dv)
            }
            Qkv::Fused(w, FusedLayout::Blocks) => {
                linear_backward(w, Tensor::cat(vec![span.pad(dq), dk, dv], 2))
            }
            Qkv::Fused(w, FusedLayout::Grouped) => {
                let dq = span.pad(dq);
                let [b, s, _] = dq.dims();
                let (kvh, hd) = (self.kv_heads, self.head_dim);
                let g = self.heads / kvh;
                let split = |t: Tensor<3>, n: usize| t.reshape([b, s, kvh, n, hd]);
                let dy = Tensor::cat(vec![split(dq, g), split(dk, 1), split(dv, 1)], 3);
                linear_backward(w, dy.reshape([b, s, kvh * (g + 2) * hd]))
            }
        }
    }
}
