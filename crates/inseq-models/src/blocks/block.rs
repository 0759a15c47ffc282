//! A decoder block: an attention sublayer and a feed-forward sublayer with their norms, in one
//! of the residual layouts of the supported architectures.

use burn::tensor::Tensor;

use super::Pass;
use super::attention::{Attention, AttentionTape};
use super::mlp::{Mlp, MlpTape};
use super::norm::{Norm, NormTape, maybe, maybe_backward};
use crate::backprop::Span;
use crate::nn::{Act, mc_dropout};

/// How a block's sublayers, norms and residual connections are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `h = x + post_a(attn(norm_a(x)))`, `y = h + post_m(mlp(norm_m(h)))`, each norm optional:
    /// pre-norm (Llama, GPT-2), sandwich (Gemma 2: all four), OLMo 2 (post norms only).
    Sequential,
    /// `h = norm_a(x + attn(x))`, `y = norm_m(h + mlp(h))` (OPT with `do_layer_norm_before =
    /// false`).
    PostNorm,
    /// `y = x + attn(norm_a(x)) + mlp(norm_m(x))`, `norm_m` defaulting to `norm_a`'s output
    /// (GPT-NeoX, Falcon, Phi).
    Parallel,
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Option<Norm>,
    pub attn: Attention,
    pub attn_post: Option<Norm>,
    pub mlp_norm: Option<Norm>,
    pub mlp: Mlp,
    pub mlp_post: Option<Norm>,
    pub residual: Residual,
}

/// What [`Block::backward`] reads.
#[derive(Debug, Clone)]
pub struct BlockTape {
    attn_in: Option<NormTape>,
    attn: AttentionTape,
    attn_out: Option<NormTape>,
    mlp_in: Option<NormTape>,
    mlp: MlpTape,
    mlp_out: Option<NormTape>,
}

impl BlockTape {
    /// Floats the tape holds (what [`crate::checkpoint`] weighs against its budget).
    pub fn floats(&self) -> usize {
        let norms = [&self.attn_in, &self.attn_out, &self.mlp_in, &self.mlp_out];
        let norms: usize = norms.into_iter().flatten().map(NormTape::floats).sum();
        norms + self.attn.floats() + self.mlp.floats()
    }
}

impl Block {
    /// The block's output; Monte Carlo dropout on the attention output (slot `2·layer`) and the
    /// MLP output (`2·layer + 1`) before their residual additions.
    pub fn forward(
        &self,
        x: Tensor<3>,
        act: Act,
        pass: &mut Pass,
        layer: usize,
    ) -> (Tensor<3>, Option<BlockTape>) {
        let (lrp, taped) = (pass.lrp, pass.taped);
        let drop = pass.options.dropout;
        let drop =
            |t: Tensor<3>, slot: usize| mc_dropout(t, drop.as_ref(), (2 * layer + slot) as u64);
        let (y, t) = match self.residual {
            Residual::Sequential => {
                let (n, attn_in) = maybe(self.attn_norm.as_ref(), x.clone(), lrp, taped);
                let (a, attn) = self.attn.forward(n, pass, layer);
                let (a, attn_out) = maybe(self.attn_post.as_ref(), a, lrp, taped);
                let h = x + drop(a, 0);
                let (n, mlp_in) = maybe(self.mlp_norm.as_ref(), h.clone(), lrp, taped);
                let (m, mlp) = self.mlp.forward(n, act, lrp, taped);
                let (m, mlp_out) = maybe(self.mlp_post.as_ref(), m, lrp, taped);
                (
                    h + drop(m, 1),
                    (attn_in, attn, attn_out, mlp_in, mlp, mlp_out),
                )
            }
            Residual::PostNorm => {
                let (a, attn) = self.attn.forward(x.clone(), pass, layer);
                let (h, attn_in) = maybe(self.attn_norm.as_ref(), x + drop(a, 0), lrp, taped);
                let (m, mlp) = self.mlp.forward(h.clone(), act, lrp, taped);
                let (y, mlp_in) = maybe(self.mlp_norm.as_ref(), h + drop(m, 1), lrp, taped);
                (y, (attn_in, attn, None, mlp_in, mlp, None))
            }
            Residual::Parallel => {
                let (n, attn_in) = maybe(self.attn_norm.as_ref(), x.clone(), lrp, taped);
                let (a, attn) = self.attn.forward(n.clone(), pass, layer);
                let (n, mlp_in) = match &self.mlp_norm {
                    Some(norm) => norm.forward(x.clone(), lrp, taped),
                    None => (n, None),
                };
                let (m, mlp) = self.mlp.forward(n, act, lrp, taped);
                (
                    x + drop(a, 0) + drop(m, 1),
                    (attn_in, attn, None, mlp_in, mlp, None),
                )
            }
        };
        let tape = match t {
            (attn_in, Some(attn), attn_out, mlp_in, Some(mlp), mlp_out) => Some(BlockTape {
                attn_in,
                attn,
                attn_out,
                mlp_in,
                mlp,
                mlp_out,
            }),
            _ => None,
        };
        (y, tape)
    }

    /// Gradient with respect to the block input at positions `0..span.len`, from the output
    /// gradient `dy` at `span.start..span.len`.
    pub fn backward(
        &self,
        t: &BlockTape,
        tables: &[(Tensor<4>, Tensor<4>)],
        span: Span,
        dy: Tensor<3>,
    ) -> Tensor<3> {
        let rows = |x: &Tensor<3>| span.rows(x);
        let all = |x: &Tensor<3>| span.all(x);
        match self.residual {
            Residual::Sequential => {
                let dm =
                    maybe_backward(self.mlp_post.as_ref(), t.mlp_out.as_ref(), rows, dy.clone());
                let dn = self.mlp.backward(&t.mlp, span, dm);
                let dh = dy + maybe_backward(self.mlp_norm.as_ref(), t.mlp_in.as_ref(), rows, dn);
                let da = maybe_backward(
                    self.attn_post.as_ref(),
                    t.attn_out.as_ref(),
                    rows,
                    dh.clone(),
                );
                let dn = self.attn.backward(&t.attn, tables, span, da);
                span.pad(dh) + maybe_backward(self.attn_norm.as_ref(), t.attn_in.as_ref(), all, dn)
            }
            Residual::PostNorm => {
                let ds = maybe_backward(self.mlp_norm.as_ref(), t.mlp_in.as_ref(), rows, dy);
                let dh = ds.clone() + self.mlp.backward(&t.mlp, span, ds);
                let dz = maybe_backward(self.attn_norm.as_ref(), t.attn_in.as_ref(), rows, dh);
                span.pad(dz.clone()) + self.attn.backward(&t.attn, tables, span, dz)
            }
            Residual::Parallel => {
                let da = self.attn.backward(&t.attn, tables, span, dy.clone());
                let dm = self.mlp.backward(&t.mlp, span, dy.clone());
                let attn_norm =
                    |d| maybe_backward(self.attn_norm.as_ref(), t.attn_in.as_ref(), all, d);
                match &self.mlp_norm {
                    Some(norm) => {
                        let tape = t.mlp_in.as_ref().expect("a taped norm");
                        span.pad(dy + norm.backward(tape, rows, dm)) + attn_norm(da)
                    }
                    None => span.pad(dy) + attn_norm(da + span.pad(dm)),
                }
            }
        }
    }
}
