//! Rotary position embeddings (RoPE): full or partial (the first `rotary_dim` features of each
//! head), with the frequency scalings of transformers' `modeling_rope_utils` this crate
//! implements (`default`, `linear`, `llama3`); any other `rope_type` is an error.

use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;

use inseq_core::{Error, Result};

/// RoPE parameters (`rope_scaling` / `rope_parameters` in `config.json`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    /// Base frequency.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// `default`, `linear` or `llama3`.
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// Scaling factor (`linear`, `llama3`).
    #[serde(default)]
    pub factor: Option<f64>,
    /// Llama-3 low-frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama-3 high-frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// Llama-3 original context.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Fraction of each head's features that are rotated.
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

/// Inverse frequencies of one rotary embedding and how many features of a head they rotate.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    /// Rotated features per head (even, at most `head_dim`).
    pub rotary_dim: usize,
}

impl Rope {
    /// The rotary embedding of heads of `head_dim` features under parameters `p` (`rope_theta`
    /// must be resolved); `partial` is the fraction of features rotated.
    pub fn new(p: &RopeParameters, head_dim: usize, partial: f64) -> Result<Self> {
        let theta = p.rope_theta.unwrap_or(10000.0);
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            return Err(Error::invalid_arg(
                "partial_rotary_factor",
                format!("{partial} gives {rotary_dim} rotated features of {head_dim}"),
            ));
        }
        let base: Vec<f64> = (0..rotary_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / rotary_dim as f64))
            .collect();
        let inv_freq = match p.rope_type.as_deref() {
            None | Some("default") => base,
            Some("linear") => {
                let factor = p.factor.ok_or_else(|| missing("factor", "linear"))?;
                base.into_iter().map(|f| f / factor).collect()
            }
            Some("llama3") => llama3(p, base)?,
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "rope_type `{other}` (supported: default, linear, llama3)"
                )));
            }
        };
        Ok(Self {
            inv_freq,
            rotary_dim,
        })
    }

    /// `[batch, 1, seq, rotary_dim]` cos and sin tables for the given positions.
    pub fn tables(&self, positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let b = positions.len();
        let s = positions.first().map_or(0, Vec::len);
        let d = self.rotary_dim;
        let mut cos = Vec::with_capacity(b * s * d);
        let mut sin = Vec::with_capacity(b * s * d);
        for &p in positions.iter().flatten() {
            for _ in 0..2 {
                for f in &self.inv_freq {
                    let angle = p as f64 * f;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [b, 1, s, d]), device),
            Tensor::from_data(TensorData::new(sin, [b, 1, s, d]), device),
        )
    }
}

fn missing(field: &str, rope_type: &str) -> Error {
    Error::invalid_arg(field, format!("rope_type `{rope_type}` needs `{field}`"))
}

/// Llama 3's frequency-dependent scaling.
fn llama3(p: &RopeParameters, base: Vec<f64>) -> Result<Vec<f64>> {
    let factor = p.factor.ok_or_else(|| missing("factor", "llama3"))?;
    let low = p.low_freq_factor.unwrap_or(1.0);
    let high = p.high_freq_factor.unwrap_or(4.0);
    let old = p.original_max_position_embeddings.unwrap_or(8192) as f64;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Ok(base
        .into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect())
}

/// `[a, b] -> [-b, a]` over the last dimension.
fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let first = x.clone().narrow(3, 0, d / 2);
    let second = x.narrow(3, d / 2, d - d / 2);
    Tensor::cat(vec![second.neg(), first], 3)
}

/// Splits the rotated features `..rot` from the passed-through ones.
fn split(x: Tensor<4>, rot: usize) -> (Tensor<4>, Option<Tensor<4>>) {
    let d = x.dims()[3];
    if rot == d {
        return (x, None);
    }
    (x.clone().narrow(3, 0, rot), Some(x.narrow(3, rot, d - rot)))
}

fn join(rotated: Tensor<4>, rest: Option<Tensor<4>>) -> Tensor<4> {
    match rest {
        Some(r) => Tensor::cat(vec![rotated, r], 3),
        None => rotated,
    }
}

/// `x·cos + rotate_half(x)·sin` on the first `cos.dims()[3]` features of
/// `[batch, heads, seq, head_dim]`.
pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let (x, rest) = split(x, cos.dims()[3]);
    join(x.clone() * cos.clone() + rotate_half(x) * sin.clone(), rest)
}

/// The gradient of [`apply`] with respect to its input: `dy·cos + rotate_halfᵀ(dy·sin)`,
/// where `rotate_halfᵀ([a, b]) = [b, -a]`.
pub fn backward(dy: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let (dy, rest) = split(dy, cos.dims()[3]);
    let d = dy.dims()[3];
    let ds = dy.clone() * sin.clone();
    let first = ds.clone().narrow(3, 0, d / 2);
    let second = ds.narrow(3, d / 2, d - d / 2);
    join(
        dy * cos.clone() + Tensor::cat(vec![second, first.neg()], 3),
        rest,
    )
}
