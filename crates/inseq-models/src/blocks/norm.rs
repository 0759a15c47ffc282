//! Normalisation layers of a decoder block: LayerNorm (with or without bias or affine
//! parameters), RMSNorm, and RMSNorm with a `(1 + weight)` scale (Gemma), each with its
//! hooked forward pass, its taped forward pass and its hand-written backward pass.

use burn::tensor::Tensor;

use super::hooks::{layer_norm, rms_norm};
use crate::backprop::{layer_norm_backward, layer_norm_taped, rms_norm_backward, rms_norm_taped};
use crate::nn::{LayerNorm, RmsNorm};
use crate::weights::Weights;
use inseq_core::Result;

/// How a model's norms are built from its weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormKind {
    /// `LayerNorm(eps)`; `bias`: a `.bias` tensor exists; `affine`: a `.weight` tensor exists
    /// (OPT's `layer_norm_elementwise_affine = false` has neither).
    Layer { eps: f64, bias: bool, affine: bool },
    /// `RMSNorm(eps)`; `plus_one`: the scale is `1 + weight` (Gemma).
    Rms { eps: f64, plus_one: bool },
}

impl NormKind {
    /// Loads the norm `{name}` of width `dim`.
    pub fn load(self, w: &mut Weights, name: &str, dim: usize) -> Result<Norm> {
        let ones = |w: &Weights| Tensor::<1>::ones([dim], w.device());
        Ok(match self {
            NormKind::Layer { eps, bias, affine } => Norm::Layer(LayerNorm {
                gamma: if affine {
                    w.tensor1(&format!("{name}.weight"), dim)?
                } else {
                    ones(w)
                },
                beta: match bias && affine {
                    true => Some(w.tensor1(&format!("{name}.bias"), dim)?),
                    false => None,
                },
                eps,
            }),
            NormKind::Rms { eps, plus_one } => {
                let gamma = w.tensor1(&format!("{name}.weight"), dim)?;
                let gamma = if plus_one { gamma + 1.0 } else { gamma };
                Norm::Rms(RmsNorm { gamma, eps })
            }
        })
    }
}

/// A normalisation layer over the last dimension.
// One per layer, built once at load: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Norm {
    /// Layer normalisation.
    Layer(LayerNorm),
    /// Root-mean-square normalisation.
    Rms(RmsNorm),
}

/// What a norm's backward pass reads: the input (RMS) or the normalised input (Layer), and the
/// reciprocal root mean square or standard deviation `[.., 1]`.
#[derive(Debug, Clone)]
pub struct NormTape {
    a: Tensor<3>,
    r: Tensor<3>,
}

impl NormTape {
    /// Floats the tape holds.
    pub fn floats(&self) -> usize {
        self.a.shape().num_elements() + self.r.shape().num_elements()
    }
}

impl Norm {
    /// Normalises `[batch, seq, dim]`; with `lrp` the denominator is detached (AttnLRP); with
    /// `taped` the activations of the backward pass are returned too.
    pub fn forward(&self, x: Tensor<3>, lrp: bool, taped: bool) -> (Tensor<3>, Option<NormTape>) {
        if !taped {
            let y = match self {
                Norm::Layer(n) => layer_norm(n, x, lrp),
                Norm::Rms(n) => rms_norm(n, x, lrp),
            };
            return (y, None);
        }
        match self {
            Norm::Layer(n) => {
                let (y, a, r) = layer_norm_taped(n, x);
                (y, Some(NormTape { a, r }))
            }
            Norm::Rms(n) => {
                let (y, r) = rms_norm_taped(n, x.clone());
                (y, Some(NormTape { a: x, r }))
            }
        }
    }

    /// Input gradient from the output gradient `dy`; `pick` selects the positions of the tape
    /// that `dy` covers.
    pub fn backward(
        &self,
        tape: &NormTape,
        pick: impl Fn(&Tensor<3>) -> Tensor<3>,
        dy: Tensor<3>,
    ) -> Tensor<3> {
        match self {
            Norm::Layer(n) => layer_norm_backward(n, pick(&tape.a), pick(&tape.r), dy),
            Norm::Rms(n) => rms_norm_backward(n, pick(&tape.a), pick(&tape.r), dy),
        }
    }
}

/// Applies an optional norm (identity when `None`), keeping its tape.
pub(crate) fn maybe(
    norm: Option<&Norm>,
    x: Tensor<3>,
    lrp: bool,
    taped: bool,
) -> (Tensor<3>, Option<NormTape>) {
    match norm {
        Some(n) => n.forward(x, lrp, taped),
        None => (x, None),
    }
}

/// Backward pass of an optional norm (identity when `None`).
pub(crate) fn maybe_backward(
    norm: Option<&Norm>,
    tape: Option<&NormTape>,
    pick: impl Fn(&Tensor<3>) -> Tensor<3>,
    dy: Tensor<3>,
) -> Tensor<3> {
    match (norm, tape) {
        (Some(n), Some(t)) => n.backward(t, pick, dy),
        _ => dy,
    }
}
