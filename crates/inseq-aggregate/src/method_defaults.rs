//! Inseq's default aggregation chosen by attribution method id, and the
//! reshaping of per-step scores into Inseq's raw array layout.
//!
//! Inseq 0.7.1 picks the default aggregation from the *output class* of the
//! method:
//!
//! * granular methods (gradients, integrated gradients, DeepLIFT, LIME, ...):
//!   `[len, steps, hidden]` → `vnorm` over `hidden`, then normalise each step;
//! * coarse methods (`occlusion`): `[len, steps]` kept as is (no aggregation,
//!   no normalisation);
//! * multi-dimensional methods (`attention`, `value_zeroing`):
//!   `[len, steps, layers, heads]` → `mean` over heads, `mean` over layers, then
//!   normalise each step.

use inseq_core::{Array, Error, Result, SequenceAttribution};

use crate::aggregate_inseq_default;

/// The kind of output an attribution method produces, which fixes its default aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodOutputKind {
    /// One score per hidden dimension (`[len, steps, hidden]`).
    Granular,
    /// One score per token (`[len, steps]`).
    Coarse,
    /// Several scores per token (`[len, steps, layers, heads]`...).
    MultiDimensional,
}

/// The output kind of Inseq's method `method` (unknown ids count as granular).
///
/// ```
/// use inseq_aggregate::{MethodOutputKind, method_output_kind};
/// assert_eq!(method_output_kind("occlusion"), MethodOutputKind::Coarse);
/// assert_eq!(method_output_kind("attention"), MethodOutputKind::MultiDimensional);
/// assert_eq!(method_output_kind("saliency"), MethodOutputKind::Granular);
/// ```
pub fn method_output_kind(method: &str) -> MethodOutputKind {
    match method {
        "occlusion" => MethodOutputKind::Coarse,
        "attention" | "value_zeroing" => MethodOutputKind::MultiDimensional,
        _ => MethodOutputKind::Granular,
    }
}

/// Reshapes a stacked `[len, steps, prod(score_dims)]` array into
/// `[len, steps, ...score_dims]` (`score_dims` empty: `[len, steps]`), the
/// layout Inseq stores for methods whose per-token scores are not a hidden
/// vector (see `inseq_methods::StepAttribution::score_dims`).
///
/// ```
/// use inseq_core::Array;
/// let a = Array::new(vec![2, 1, 1], vec![1.0, 2.0]).unwrap();
/// assert_eq!(inseq_aggregate::reshape_scores(&a, &[]).unwrap().shape(), &[2, 1]);
/// let b = Array::new(vec![1, 1, 4], vec![0.0; 4]).unwrap();
/// assert_eq!(inseq_aggregate::reshape_scores(&b, &[2, 2]).unwrap().shape(), &[1, 1, 2, 2]);
/// ```
pub fn reshape_scores(a: &Array, score_dims: &[usize]) -> Result<Array> {
    let shape = a.shape();
    if shape.len() < 2 {
        return Err(Error::ShapeMismatch {
            what: "stacked step scores".into(),
            expected: vec![0, 0, score_dims.iter().product()],
            found: shape.to_vec(),
        });
    }
    let mut new_shape = shape[..2].to_vec();
    new_shape.extend_from_slice(score_dims);
    if new_shape.iter().product::<usize>() != a.data().len() {
        let mut expected = shape[..2].to_vec();
        expected.push(score_dims.iter().product());
        return Err(Error::ShapeMismatch {
            what: "stacked step scores".into(),
            expected,
            found: shape.to_vec(),
        });
    }
    Array::new(new_shape, a.data().to_vec())
}

/// Drops a trailing dimension of size 1 from a 3-D array (coarse scores kept with a unit hidden dimension).
fn squeeze_unit(a: &Option<Array>) -> Result<Option<Array>> {
    match a {
        Some(a) if a.ndim() == 3 && a.shape()[2] == 1 => Ok(Some(reshape_scores(a, &[])?)),
        other => Ok(other.clone()),
    }
}

/// Applies Inseq 0.7.1's default aggregation for `method` to one sequence.
///
/// Coarse methods (`occlusion`) are returned unaggregated (a unit trailing
/// dimension, `[len, steps, 1]`, is squeezed to `[len, steps]`); granular and
/// multi-dimensional methods go through [`aggregate_inseq_default`]
/// (`vnorm` + normalise for 3-D arrays, `mean` per extra dimension + normalise for 4-D).
pub fn default_aggregate_for(
    method: &str,
    seq: &SequenceAttribution,
) -> Result<SequenceAttribution> {
    match method_output_kind(method) {
        MethodOutputKind::Coarse => {
            let mut out = seq.clone();
            out.source_attributions = squeeze_unit(&seq.source_attributions)?;
            out.target_attributions = squeeze_unit(&seq.target_attributions)?;
            Ok(out)
        }
        MethodOutputKind::Granular | MethodOutputKind::MultiDimensional => {
            aggregate_inseq_default(seq)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inseq_core::TokenWithId;

    fn seq(target: Array) -> SequenceAttribution {
        SequenceAttribution {
            source: None,
            target: vec![TokenWithId::new("a", 0), TokenWithId::new("b", 1)],
            source_attributions: None,
            target_attributions: Some(target),
            step_scores: Default::default(),
            sequence_scores: Default::default(),
            attr_pos_start: 1,
            attr_pos_end: 2,
            aggregations: vec![],
        }
    }

    #[test]
    fn occlusion_is_not_aggregated() {
        let s = seq(Array::new(vec![2, 1, 1], vec![0.25, f32::NAN]).unwrap());
        let out = default_aggregate_for("occlusion", &s).unwrap();
        let t = out.target_attributions.unwrap();
        assert_eq!(t.shape(), &[2, 1]);
        assert_eq!(t.get(&[0, 0]), 0.25);
        assert!(t.get(&[1, 0]).is_nan());
    }

    #[test]
    fn attention_is_averaged() {
        let s = seq(Array::new(
            vec![2, 1, 2, 2],
            vec![1.0, 1.0, 1.0, 1.0, f32::NAN, f32::NAN, f32::NAN, f32::NAN],
        )
        .unwrap());
        let out = default_aggregate_for("attention", &s).unwrap();
        let t = out.target_attributions.unwrap();
        assert_eq!(t.shape(), &[2, 1]);
        assert_eq!(t.get(&[0, 0]), 1.0); // the mean of ones: exact
    }

    #[test]
    fn reshape_checks_sizes() {
        let a = Array::new(vec![1, 1, 3], vec![0.0; 3]).unwrap();
        assert!(reshape_scores(&a, &[2, 2]).is_err());
    }
}
