//! Tolerances of f32 results, derived from the computation's rounding error rather than tuned on
//! one machine: a sum's rounding error depends on its summation order, which differs between CPUs
//! (the matrix-product kernels burn picks at run time for the vector width) and backends.
//!
//! Every bound here holds for *any* summation order (Higham, *Accuracy and Stability of Numerical
//! Algorithms*, 2nd ed., eq. 4.4 and Lemma 3.1): a sum of `n` f32 values whose absolute values add
//! up to `magnitude` is off by at most `γ(n−1) · magnitude`, and a dot product of `n` terms by
//! `γ(n) · magnitude` (its products round too), with `γ(k) = k·u / (1 − k·u)` and `u` the unit
//! roundoff. [`f32_sum`] takes the dot-product bound, which covers both.
//!
//! ```
//! use inseq_fixtures::tolerance::{f32_sum, F32_UNIT_ROUNDOFF};
//! // Eight terms of magnitude 1: a plain sum rounds at most 7 times by a relative u.
//! assert!(f32_sum(8.0, 8) >= 56.0 * F32_UNIT_ROUNDOFF);
//! let xs = [1e8f32, 1.0, -1e8, 1.0];
//! let exact = 2.0;
//! let got: f32 = xs.iter().sum();
//! assert!(((got as f64) - exact).abs() <= f32_sum(2e8 + 2.0, xs.len()));
//! ```

/// The unit roundoff of f32, `2⁻²⁴`: the largest relative error of one rounding.
pub const F32_UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;

/// `γ(k) = k·u / (1 − k·u)`: the relative error bound of `k` chained f32 roundings.
pub fn gamma(k: usize) -> f64 {
    let ku = k as f64 * F32_UNIT_ROUNDOFF;
    assert!(ku < 1.0, "γ({k}) is unbounded in f32");
    ku / (1.0 - ku)
}

/// The largest rounding error, in any summation order, of an f32 sum (or dot product, counting
/// one more rounding for the products) of `terms` values whose absolute values add up to
/// `magnitude`.
pub fn f32_sum(magnitude: f64, terms: usize) -> f64 {
    gamma(terms) * magnitude
}

/// Whether `got` is within `tolerance` of `expected`, with a message naming both and the
/// tolerance for assertions.
pub fn check_close(what: &str, got: f64, expected: f64, tolerance: f64) -> Result<(), String> {
    let err = (got - expected).abs();
    if err <= tolerance {
        Ok(())
    } else {
        Err(format!(
            "{what}: {got} vs {expected}, |diff| {err:e} > tolerance {tolerance:e}"
        ))
    }
}
