//! Rotary position embeddings (RoPE): full or partial (the first `rotary_dim` features of each
//! head), with the frequency scalings of transformers' `modeling_rope_utils` (`default`, `linear`,
//! `dynamic`, `llama3`, `yarn`, `longrope`); any other `rope_type` is an error.

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
    /// Factor of cos and sin (`yarn`, `longrope`; derived from `factor` when absent).
    #[serde(default)]
    pub attention_factor: Option<f64>,
    /// YaRN: rotations at the fast end of the ramp (default 32).
    #[serde(default)]
    pub beta_fast: Option<f64>,
    /// YaRN: rotations at the slow end of the ramp (default 1).
    #[serde(default)]
    pub beta_slow: Option<f64>,
    /// YaRN: `mscale` of the attention factor's numerator.
    #[serde(default)]
    pub mscale: Option<f64>,
    /// YaRN: `mscale` of the attention factor's denominator.
    #[serde(default)]
    pub mscale_all_dim: Option<f64>,
    /// YaRN: round the correction range outwards (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// LongRoPE: per-frequency factors for sequences within the original context.
    #[serde(default)]
    pub short_factor: Option<Vec<f64>>,
    /// LongRoPE: per-frequency factors for longer sequences.
    #[serde(default)]
    pub long_factor: Option<Vec<f64>>,
}

/// What a [`Rope`] is built from, kept until the weights are loaded: a config's head size is
/// checked against the projections' weights before any table is sized by it.
#[derive(Debug, Clone)]
pub struct RopeSpec {
    /// Parameters with `rope_theta` resolved.
    pub params: RopeParameters,
    /// Features per head.
    pub head_dim: usize,
    /// Fraction of them rotated.
    pub partial: f64,
    /// The config's `max_position_embeddings`.
    pub max_positions: usize,
}

impl RopeSpec {
    /// The rotary embedding.
    pub fn build(&self) -> Result<Rope> {
        Rope::new(
            &self.params,
            self.head_dim,
            self.partial,
            self.max_positions,
        )
    }
}

/// How the inverse frequencies depend on the sequence.
#[derive(Debug, Clone)]
enum Frequencies {
    /// The same for every sequence.
    Fixed(Vec<f64>),
    /// Dynamic NTK: the base grows with sequences longer than `max_positions`.
    Dynamic {
        theta: f64,
        factor: f64,
        max_positions: usize,
    },
    /// LongRoPE: `short` within `original` positions, `long` beyond.
    LongRope {
        short: Vec<f64>,
        long: Vec<f64>,
        original: usize,
    },
}

/// Inverse frequencies of one rotary embedding and how many features of a head they rotate.
#[derive(Debug, Clone)]
pub struct Rope {
    freqs: Frequencies,
    /// Factor of the cos and sin tables (YaRN, LongRoPE).
    attention_factor: f64,
    /// Rotated features per head (even, at most `head_dim`).
    pub rotary_dim: usize,
}

impl Rope {
    /// The rotary embedding of heads of `head_dim` features under parameters `p` (`rope_theta`
    /// must be resolved); `partial` is the fraction of features rotated, `max_positions` the
    /// config's `max_position_embeddings`.
    pub fn new(
        p: &RopeParameters,
        head_dim: usize,
        partial: f64,
        max_positions: usize,
    ) -> Result<Self> {
        let theta = p.rope_theta.unwrap_or(10000.0);
        let dim = (head_dim as f64 * partial) as usize;
        if dim == 0 || !dim.is_multiple_of(2) || dim > head_dim {
            return Err(Error::invalid_arg(
                "partial_rotary_factor",
                format!("{partial} gives {dim} rotated features of {head_dim}"),
            ));
        }
        let base = base_freqs(theta, dim);
        let factor = |rope_type: &str| p.factor.ok_or_else(|| missing("factor", rope_type));
        let original = p.original_max_position_embeddings.unwrap_or(max_positions);
        let (freqs, attention_factor) = match p.rope_type.as_deref() {
            None | Some("default") => (Frequencies::Fixed(base), 1.0),
            Some("linear") => {
                let f = factor("linear")?;
                (
                    Frequencies::Fixed(base.into_iter().map(|x| x / f).collect()),
                    1.0,
                )
            }
            Some("dynamic") => (
                Frequencies::Dynamic {
                    theta,
                    factor: factor("dynamic")?,
                    max_positions,
                },
                1.0,
            ),
            Some("llama3") => (Frequencies::Fixed(llama3(p, base)?), 1.0),
            Some("yarn") => yarn(p, theta, dim, original, max_positions)?,
            Some("longrope") => longrope(p, dim, original, max_positions)?,
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "rope_type `{other}` (supported: default, linear, dynamic, llama3, yarn, longrope)"
                )));
            }
        };
        Ok(Self {
            freqs,
            attention_factor,
            rotary_dim: dim,
        })
    }

    /// Whether the frequencies of a sequence of `len` positions depend on `len` (dynamic NTK
    /// beyond `max_position_embeddings`): then one forward pass over a whole sequence does not
    /// compute what a forward pass over each of its prefixes computes.
    pub fn depends_on_length(&self, len: usize) -> bool {
        matches!(&self.freqs, Frequencies::Dynamic { max_positions, .. } if len > *max_positions)
    }

    /// The inverse frequencies for a sequence of `len` positions.
    fn inv_freq(&self, len: usize) -> Vec<f64> {
        match &self.freqs {
            Frequencies::Fixed(f) => f.clone(),
            Frequencies::Dynamic {
                theta,
                factor,
                max_positions,
            } => {
                let (len, max) = (len.max(*max_positions) as f64, *max_positions as f64);
                let d = self.rotary_dim as f64;
                base_freqs(
                    theta * ((factor * len / max) - (factor - 1.0)).powf(d / (d - 2.0)),
                    self.rotary_dim,
                )
            }
            Frequencies::LongRope {
                short,
                long,
                original,
            } => {
                if len > *original {
                    long.clone()
                } else {
                    short.clone()
                }
            }
        }
    }

    /// `[batch, 1, seq, rotary_dim]` cos and sin tables for the given positions.
    pub fn tables(&self, positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let b = positions.len();
        let s = positions.first().map_or(0, Vec::len);
        let d = self.rotary_dim;
        let len = positions.iter().flatten().max().map_or(0, |&p| p + 1);
        let inv_freq = self.inv_freq(len);
        let scale = self.attention_factor;
        let mut cos = Vec::with_capacity(b * s * d);
        let mut sin = Vec::with_capacity(b * s * d);
        for &p in positions.iter().flatten() {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = p as f64 * f;
                    cos.push((angle.cos() * scale) as f32);
                    sin.push((angle.sin() * scale) as f32);
                }
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [b, 1, s, d]), device),
            Tensor::from_data(TensorData::new(sin, [b, 1, s, d]), device),
        )
    }
}

/// `1 / theta^(2i / dim)` for `i < dim / 2`.
fn base_freqs(theta: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
        .collect()
}

/// YaRN's `0.1·mscale·ln(scale) + 1` (1 for `scale <= 1`).
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// YaRN: interpolated low frequencies, extrapolated high ones, a linear ramp between.
fn yarn(
    p: &RopeParameters,
    theta: f64,
    dim: usize,
    original: usize,
    max_positions: usize,
) -> Result<(Frequencies, f64)> {
    let factor = p.factor.unwrap_or(max_positions as f64 / original as f64);
    let attention_factor = p
        .attention_factor
        .unwrap_or(match (p.mscale, p.mscale_all_dim) {
            (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                yarn_mscale(factor, m) / yarn_mscale(factor, all)
            }
            _ => yarn_mscale(factor, 1.0),
        });
    let (fast, slow) = (p.beta_fast.unwrap_or(32.0), p.beta_slow.unwrap_or(1.0));
    let d = dim as f64;
    let correction = |rotations: f64| {
        d * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction(fast), correction(slow));
    if p.truncate.unwrap_or(true) {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, high) = (low.max(0.0), high.min(d - 1.0));
    let high = if low == high { high + 0.001 } else { high };
    let freqs = base_freqs(theta, dim)
        .into_iter()
        .enumerate()
        .map(|(i, extrapolation)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            extrapolation / factor * (1.0 - keep) + extrapolation * keep
        })
        .collect();
    Ok((Frequencies::Fixed(freqs), attention_factor))
}

/// LongRoPE: the base frequencies divided by per-frequency factors.
fn longrope(
    p: &RopeParameters,
    dim: usize,
    original: usize,
    max_positions: usize,
) -> Result<(Frequencies, f64)> {
    let theta = p.rope_theta.unwrap_or(10000.0);
    let factors = |field: &str, f: &Option<Vec<f64>>| -> Result<Vec<f64>> {
        let f = f.as_ref().ok_or_else(|| missing(field, "longrope"))?;
        if f.len() != dim / 2 {
            return Err(Error::invalid_arg(
                field,
                format!("{} factors for {} frequencies", f.len(), dim / 2),
            ));
        }
        Ok(base_freqs(theta, dim)
            .iter()
            .zip(f)
            .map(|(b, x)| b / x)
            .collect())
    };
    let (short, long) = (
        factors("short_factor", &p.short_factor)?,
        factors("long_factor", &p.long_factor)?,
    );
    let factor = p.factor.unwrap_or(max_positions as f64 / original as f64);
    let attention_factor = p.attention_factor.unwrap_or(if factor <= 1.0 {
        1.0
    } else {
        (1.0 + factor.ln() / (original as f64).ln()).sqrt()
    });
    Ok((
        Frequencies::LongRope {
            short,
            long,
            original,
        },
        attention_factor,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Inverse frequencies and attention factors of every scaling against transformers'
    /// (`tests/fixtures/zoo/rope.json`, from `make_zoo.py`), at 16 positions and at 100 (beyond
    /// `max_position_embeddings` 64 and the original context 32).
    #[test]
    fn frequencies_match_transformers() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/zoo/rope.json"
        );
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for (name, case) in cases.as_object().unwrap() {
            let p: RopeParameters = serde_json::from_value(case["params"].clone()).unwrap();
            let rope = Rope::new(&p, 16, 1.0, 64).unwrap();
            let ours = rope.inv_freq(case["seq_len"].as_u64().unwrap() as usize);
            let theirs: Vec<f64> = serde_json::from_value(case["inv_freq"].clone()).unwrap();
            assert_eq!(ours.len(), theirs.len(), "{name}");
            for (a, b) in ours.iter().zip(&theirs) {
                // transformers computes in f32 (a power and a division, rounded to 7 digits in the
                // file): a relative 1e-6.
                assert!((a - b).abs() <= 1e-6 * b.abs(), "{name}: {a} vs {b}");
            }
            let factor = case["attention_factor"].as_f64().unwrap();
            assert!(
                (rope.attention_factor - factor).abs() <= 1e-12,
                "{name}: {} vs {factor}",
                rope.attention_factor
            );
        }
    }
}
