//! Aggregation functions: the [`Reduce`] trait every function implements and
//! Python Inseq's built-ins (`mean`, `max`, `min`, `sum`, `prod`, `absmax`,
//! `vnorm`) as [`AggregationFunction`].

use std::fmt::Debug;

use inseq_core::{Array, Error, Result};

use crate::nd;

/// An aggregation function: reduces the scores of several positions (tokens
/// of a span, units of a hidden dimension...) to one, as Python Inseq's
/// `AggregationFunction` classes. Implement it and register it in an
/// [`AggregationRegistry`](crate::AggregationRegistry) to use your own
/// function by id (`"subwords:<id>"`, or a bare `"<id>"` for `scores`).
///
/// ```
/// use inseq_aggregate::Reduce;
/// use inseq_core::Array;
///
/// /// The median (upper median for an even count).
/// #[derive(Debug)]
/// struct Median;
/// impl Reduce for Median {
///     fn id(&self) -> &str { "median" }
///     fn reduce(&self, values: &[f32]) -> f32 {
///         let mut v = values.to_vec();
///         v.sort_by(f32::total_cmp);
///         v.get(v.len() / 2).copied().unwrap_or(f32::NAN)
///     }
/// }
/// let a = Array::new(vec![2, 3], vec![1.0, 9.0, 2.0, 4.0, 0.0, 5.0]).unwrap();
/// assert_eq!(Median.apply_last(&a).unwrap().data(), &[2.0, 4.0]);
/// assert_eq!(Median.apply_axis(&a, 0).unwrap().data(), &[4.0, 9.0, 5.0]);
/// ```
pub trait Reduce: Send + Sync + Debug {
    /// The id used in pipeline specs and recorded in `aggregations`.
    fn id(&self) -> &str;

    /// Reduces `values` to one number.
    fn reduce(&self, values: &[f32]) -> f32;

    /// Reduces dimension `axis` of `a` (rank `n` → `n - 1`).
    fn apply_axis(&self, a: &Array, axis: usize) -> Result<Array> {
        nd::reduce_axis(a, axis, &|v| self.reduce(v))
    }

    /// Reduces the last dimension of `a`.
    fn apply_last(&self, a: &Array) -> Result<Array> {
        self.apply_axis(a, a.ndim().saturating_sub(1))
    }
}

/// Python Inseq's built-in aggregation functions (each a [`Reduce`]). NaN
/// propagates as in PyTorch (any NaN in the reduced values gives NaN), except for `absmax`, which picks the value of largest magnitude
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

    /// Looks a built-in function up by its Inseq id; unknown ids give
    /// [`Error::UnknownId`] ([`crate::AggregationRegistry::function`] also
    /// finds registered functions).
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
            Self::AbsMax => abs_max(values),
            Self::VNorm { .. } if has_nan => f32::NAN,
            Self::VNorm { ord } => vector_norm(values, *ord),
        }
    }
}

impl Reduce for AggregationFunction {
    fn id(&self) -> &str {
        AggregationFunction::id(self)
    }

    fn reduce(&self, values: &[f32]) -> f32 {
        AggregationFunction::reduce(self, values)
    }
}

/// The value of largest magnitude (NaN counted as 0), sign kept.
fn abs_max(values: &[f32]) -> f32 {
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

/// `torch.linalg.vector_norm(values, ord)` of NaN-free values.
fn vector_norm(values: &[f32], ord: f32) -> f32 {
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
