//! The feed-forward sublayer: gated (`down(act(gate(x)) ⊙ up(x))`, gate and up separate or
//! fused) or plain (`proj(act(fc(x)))`), activations by name; one forward pass for the hooked
//! and the taped path, one backward pass.

use burn::tensor::{Tensor, activation};

use crate::backprop::{Span, linear_backward, silu_taped};
use crate::blocks::hooks::{identity_rule, uniform_rule};
use crate::nn::{Act, Linear, gelu_tanh_taped};

/// The projections of a feed-forward sublayer.
// One per layer, built once at load: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Mlp {
    /// `down(act(gate(x)) ⊙ up(x))`.
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// [`Mlp::Gated`] with gate and up in one projection, gate first (Phi-3's `gate_up_proj`).
    FusedGated { gate_up: Linear, down: Linear },
    /// `proj(act(fc(x)))`.
    Plain { fc: Linear, proj: Linear },
}

/// What [`Mlp::backward`] reads: for a gated MLP `act(gate)` and `up ⊙ act'(gate)`, for a plain
/// one `act'(pre)`.
#[derive(Debug, Clone)]
pub struct MlpTape {
    act: Option<Tensor<3>>,
    grad: Tensor<3>,
}

impl MlpTape {
    /// Floats the tape holds.
    pub fn floats(&self) -> usize {
        let act = self.act.as_ref().map_or(0, |t| t.shape().num_elements());
        act + self.grad.shape().num_elements()
    }
}

impl Act {
    /// The activation and its derivative at `x`.
    pub(crate) fn taped(self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        match self {
            Act::Silu => silu_taped(x),
            Act::GeluTanh => gelu_tanh_taped(x),
            Act::Gelu => {
                // Φ(x) + x·φ(x).
                let cdf = ((x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
                let pdf = (x.clone().square() * -0.5).exp()
                    * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
                (x.clone() * cdf.clone(), cdf + x * pdf)
            }
            Act::Relu => {
                let on = x.clone().greater_elem(0.0).float();
                (activation::relu(x), on)
            }
            Act::Tanh => {
                let t = x.tanh();
                (t.clone(), t.square().neg() + 1.0)
            }
            Act::QuickGelu => {
                let s = activation::sigmoid(x.clone() * 1.702);
                let y = x.clone() * s.clone();
                (y, s.clone() + x * s.clone() * (s.neg() + 1.0) * 1.702)
            }
        }
    }
}

impl Mlp {
    fn gate_up(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        match self {
            Mlp::Gated { gate, up, .. } => (gate.forward(x.clone()), up.forward(x)),
            Mlp::FusedGated { gate_up, .. } => {
                let y = gate_up.forward(x);
                let n = y.dims()[2] / 2;
                (y.clone().narrow(2, 0, n), y.narrow(2, n, n))
            }
            Mlp::Plain { .. } => unreachable!("gate_up of a gated MLP"),
        }
    }

    /// `[b, s, hidden]` (normalised) -> `[b, s, hidden]`; with `lrp` AttnLRP's identity rule on
    /// the activation and uniform rule on the gated product.
    pub fn forward(
        &self,
        x: Tensor<3>,
        act: Act,
        lrp: bool,
        taped: bool,
    ) -> (Tensor<3>, Option<MlpTape>) {
        match self {
            Mlp::Plain { fc, proj } => {
                let pre = fc.forward(x);
                if taped {
                    let (a, grad) = act.taped(pre);
                    return (proj.forward(a), Some(MlpTape { act: None, grad }));
                }
                let a = if lrp {
                    identity_rule(pre, |t| act.apply(t))
                } else {
                    act.apply(pre)
                };
                (proj.forward(a), None)
            }
            Mlp::Gated { down, .. } | Mlp::FusedGated { down, .. } => {
                let (gate, up) = self.gate_up(x);
                if taped {
                    let (a, grad) = act.taped(gate);
                    let out = down.forward(a.clone() * up.clone());
                    return (
                        out,
                        Some(MlpTape {
                            act: Some(a),
                            grad: up * grad,
                        }),
                    );
                }
                let inner = if lrp {
                    uniform_rule(identity_rule(gate, |t| act.apply(t)) * up)
                } else {
                    act.apply(gate) * up
                };
                (down.forward(inner), None)
            }
        }
    }

    /// Input gradient at positions `span.start..span.len` from the output gradient there.
    pub fn backward(&self, tape: &MlpTape, span: Span, dout: Tensor<3>) -> Tensor<3> {
        match self {
            Mlp::Plain { fc, proj } => {
                linear_backward(fc, linear_backward(proj, dout) * span.rows(&tape.grad))
            }
            Mlp::Gated { gate, up, down } => {
                let (dgate, dup) = gated_backward(tape, span, down, dout);
                linear_backward(gate, dgate) + linear_backward(up, dup)
            }
            Mlp::FusedGated { gate_up, down } => {
                let (dgate, dup) = gated_backward(tape, span, down, dout);
                linear_backward(gate_up, Tensor::cat(vec![dgate, dup], 2))
            }
        }
    }
}

/// Gradients of the gate and up projections' outputs.
fn gated_backward(
    tape: &MlpTape,
    span: Span,
    down: &Linear,
    dout: Tensor<3>,
) -> (Tensor<3>, Tensor<3>) {
    let dinner = linear_backward(down, dout);
    let act = tape.act.as_ref().expect("a gated MLP tapes its activation");
    let dup = dinner.clone() * span.rows(act);
    (dinner * span.rows(&tape.grad), dup)
}
