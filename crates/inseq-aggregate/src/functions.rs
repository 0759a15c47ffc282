//! Aggregation functions (`mean`, `max`, `min`, `sum`, `prod`, `absmax`,
//! `vnorm`) and the `normalize` / `rescale` post-processing of Python Inseq.

use inseq_core::{Array, Error, Result};

use crate::nd;

/// A reduction over one dimension, as Python Inseq's `AggregationFunction`
/// classes. NaN propagates as in PyTorch (any NaN in the reduced values gives
/// NaN), except for `absmax`, which picks the value of largest magnitude
/// treating NaN as 0 (`torch.nan_to_num(x).abs().argmax()`).
///
/// ```
/// use inseq_aggregate::AggregationFunction;
/// let f = AggregationFunction::from_id("absmax").unwrap();
/// assert_eq!(f.reduce(&[0.3, -0.7, 0.1]), -0.7);
/// assert_eq!(AggregationFunction::from_id("vnorm").unwrap().reduce(&[3.0, 4.0]), 5.0);
/// assert!(AggregationFunction::from_id("median").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggregationFunction {
    /// Arithmetic mean (`mean`).
    Mean,
    /// Maximum (`max`).
    Max,
    /// Minimum (`min`).
    Min,
    /// Sum (`sum`).
    Sum,
    /// Product (`prod`).
    Prod,
    /// The value with the largest absolute value, sign kept (`absmax`).
    AbsMax,
    /// Vector norm of order `ord` (`vnorm`, default order 2; `f32::INFINITY`
    /// for the max-norm, 0 for the count of non-zeros).
    VNorm {
        /// The order of the norm.
        ord: f32,
    },
}

/// The ids of the aggregation functions, as Python Inseq's `list_aggregation_functions()`.
pub const AGGREGATION_FUNCTION_IDS: [&str; 7] =
    ["absmax", "max", "mean", "min", "prod", "sum", "vnorm"];

/// Lists the ids of the available aggregation functions.
///
/// ```
/// assert!(inseq_aggregate::list_aggregation_functions().contains(&"vnorm"));
/// ```
pub fn list_aggregation_functions() -> Vec<&'static str> {
    AGGREGATION_FUNCTION_IDS.to_vec()
}

impl AggregationFunction {
    /// The L2 norm (`vnorm` with its default order).
    pub const L2: AggregationFunction = AggregationFunction::VNorm { ord: 2.0 };

    /// Looks a function up by its Inseq id; unknown ids give [`Error::UnknownId`].
    pub fn from_id(id: &str) -> Result<Self> {
        Ok(match id {
            "mean" => Self::Mean,
            "max" => Self::Max,
            "min" => Self::Min,
            "sum" => Self::Sum,
            "prod" => Self::Prod,
            "absmax" => Self::AbsMax,
            "vnorm" => Self::L2,
            _ => {
                return Err(Error::UnknownId {
                    kind: "aggregation function",
                    id: id.to_string(),
                    available: AGGREGATION_FUNCTION_IDS
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                });
            }
        })
    }

    /// The Inseq id of the function.
    pub fn id(&self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Max => "max",
            Self::Min => "min",
            Self::Sum => "sum",
            Self::Prod => "prod",
            Self::AbsMax => "absmax",
            Self::VNorm { .. } => "vnorm",
        }
    }

    /// Reduces `values` to one number. Empty input gives NaN (0 for `sum` and
    /// `vnorm`, 1 for `prod`).
    pub fn reduce(&self, values: &[f32]) -> f32 {
        let has_nan = values.iter().any(|v| v.is_nan());
        match self {
            Self::Sum => values.iter().sum(),
            Self::Prod => values.iter().product(),
            Self::Mean => {
                if values.is_empty() {
                    f32::NAN
                } else {
                    values.iter().sum::<f32>() / values.len() as f32
                }
            }
            Self::Max | Self::Min => {
                if values.is_empty() || has_nan {
                    f32::NAN
                } else if matches!(self, Self::Max) {
                    values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                } else {
                    values.iter().copied().fold(f32::INFINITY, f32::min)
                }
            }
            Self::AbsMax => {
                let mut best: Option<(usize, f32)> = None;
                for (i, v) in values.iter().enumerate() {
                    let m = if v.is_nan() {
                        0.0
                    } else {
                        v.abs().min(f32::MAX)
                    };
                    if best.is_none_or(|(_, b)| m > b) {
                        best = Some((i, m));
                    }
                }
                best.map_or(f32::NAN, |(i, _)| values[i])
            }
            Self::VNorm { ord } => {
                if has_nan {
                    return f32::NAN;
                }
                let ord = *ord;
                if ord == f32::INFINITY {
                    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
                } else if ord == f32::NEG_INFINITY {
                    values.iter().fold(f32::INFINITY, |m, v| m.min(v.abs()))
                } else if ord == 0.0 {
                    values.iter().filter(|v| **v != 0.0).count() as f32
                } else if ord == 2.0 {
                    values.iter().map(|v| v * v).sum::<f32>().sqrt()
                } else if ord == 1.0 {
                    values.iter().map(|v| v.abs()).sum()
                } else {
                    values
                        .iter()
                        .map(|v| v.abs().powf(ord))
                        .sum::<f32>()
                        .powf(1.0 / ord)
                }
            }
        }
    }

    /// Reduces the last dimension of `a` (rank `n` → `n - 1`).
    ///
    /// ```
    /// use inseq_aggregate::AggregationFunction;
    /// use inseq_core::Array;
    /// let a = Array::new(vec![2, 2], vec![1.0, 3.0, 2.0, 6.0]).unwrap();
    /// assert_eq!(AggregationFunction::Mean.apply_last(&a).unwrap().data(), &[2.0, 4.0]);
    /// ```
    pub fn apply_last(&self, a: &Array) -> Result<Array> {
        self.apply_axis(a, a.ndim().saturating_sub(1))
    }

    /// Reduces dimension `axis` of `a`.
    pub fn apply_axis(&self, a: &Array, axis: usize) -> Result<Array> {
        nd::reduce_axis(a, axis, &|v| self.reduce(v))
    }
}

fn joint_trailing(arrays: &[&mut Array]) -> Result<usize> {
    let mut trailing: Option<&[usize]> = None;
    for a in arrays {
        if a.ndim() == 0 {
            return Err(Error::invalid_arg(
                "attributions",
                "cannot normalize a scalar",
            ));
        }
        match trailing {
            None => trailing = Some(&a.shape()[1..]),
            Some(t) if t != &a.shape()[1..] => {
                return Err(Error::ShapeMismatch {
                    what: "source and target attributions (all but the first dimension)".into(),
                    expected: t.to_vec(),
                    found: a.shape()[1..].to_vec(),
                });
            }
            _ => {}
        }
    }
    Ok(trailing.map_or(0, |t| t.iter().product()))
}

/// Python Inseq's `normalize`: source and target scores are joined along the
/// token dimension (0) and divided by their L1 norm along it
/// (`torch.nn.functional.normalize(p=1, dim=0)`, NaN counted as 0 and kept as
/// NaN), so for every generated step the absolute scores sum to 1.
///
/// ```
/// use inseq_aggregate::normalize;
/// use inseq_core::Array;
/// let mut src = Array::new(vec![1, 2], vec![1.0, -2.0]).unwrap();
/// let mut tgt = Array::new(vec![2, 2], vec![3.0, 2.0, f32::NAN, 0.0]).unwrap();
/// normalize(Some(&mut src), Some(&mut tgt)).unwrap();
/// assert_eq!(src.data(), &[0.25, -0.5]);
/// assert_eq!(tgt.get(&[0, 0]), 0.75);
/// assert!(tgt.get(&[1, 0]).is_nan());
/// ```
pub fn normalize(source: Option<&mut Array>, target: Option<&mut Array>) -> Result<()> {
    let mut arrays: Vec<&mut Array> = source.into_iter().chain(target).collect();
    let inner = joint_trailing(&arrays)?;
    let mut norms = vec![0f32; inner];
    for a in arrays.iter() {
        for (i, v) in a.data().iter().enumerate() {
            if !v.is_nan() {
                norms[i % inner.max(1)] += v.abs();
            }
        }
    }
    for a in arrays.iter_mut() {
        for (i, v) in a.data_mut().iter_mut().enumerate() {
            *v /= norms[i % inner.max(1)].max(1e-12);
        }
    }
    Ok(())
}

/// Python Inseq's `rescale`: divides source and target scores by their largest
/// absolute value (NaN ignored), mapping them to `[-1, 1]`. All-zero scores are
/// left unchanged (Inseq would produce NaN).
///
/// ```
/// use inseq_aggregate::rescale;
/// use inseq_core::Array;
/// let mut tgt = Array::new(vec![2, 1], vec![2.0, -4.0]).unwrap();
/// rescale(None, Some(&mut tgt)).unwrap();
/// assert_eq!(tgt.data(), &[0.5, -1.0]);
/// ```
pub fn rescale(source: Option<&mut Array>, target: Option<&mut Array>) -> Result<()> {
    let mut arrays: Vec<&mut Array> = source.into_iter().chain(target).collect();
    let max = arrays.iter().map(|a| a.max_abs()).fold(0.0f32, f32::max);
    if max > 0.0 {
        for a in arrays.iter_mut() {
            a.data_mut().iter_mut().for_each(|v| *v /= max);
        }
    }
    Ok(())
}

/// The function Python Inseq uses by default to merge the step scores named
/// `name` over spans of generated tokens (`DEFAULT_ATTRIBUTION_AGGREGATE_DICT`):
/// `prod` for probabilities, `sum` for entropies and divergences, `absmax` otherwise.
///
/// ```
/// use inseq_aggregate::{default_step_score_function, AggregationFunction};
/// assert_eq!(default_step_score_function("probability"), AggregationFunction::Prod);
/// assert_eq!(default_step_score_function("entropy"), AggregationFunction::Sum);
/// assert_eq!(default_step_score_function("logit"), AggregationFunction::AbsMax);
/// ```
pub fn default_step_score_function(name: &str) -> AggregationFunction {
    match name {
        "probability"
        | "perplexity"
        | "contrast_prob_diff"
        | "contrast_prob"
        | "mc_dropout_prob_avg" => AggregationFunction::Prod,
        "entropy" | "crossentropy" | "pcxmi" | "kl_divergence" => AggregationFunction::Sum,
        _ => AggregationFunction::AbsMax,
    }
}
