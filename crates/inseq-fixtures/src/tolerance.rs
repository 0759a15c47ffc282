//! Tolerances of f32 results, derived from the computation's rounding error rather than tuned on
//! one machine: a sum's rounding error depends on its summation order, which differs between CPUs
//! (the matrix-product kernels burn picks at run time for the vector width) and backends.
//!
//! Every bound here holds for *any* summation order (Higham, *Accuracy and Stability of Numerical
//! Algorithms*, 2nd ed., eq. 4.4 and Lemma 3.1): a sum of `n` f32 values whose absolute values add
//! up to `magnitude` is off by at most `γ(n−1) · magnitude`, and a dot product of `n` terms by
//! `γ(n) · magnitude` (its products round too), with `γ(k) = k·u / (1 − k·u)` and `u` the unit
//! roundoff. [`f32_sum`] takes the dot-product bound, which covers both; [`probability_sum`]
//! applies it to a normalization.
//!
//! Comparisons of whole model passes use [`model_pass`] (the rule of `cargo xtask parity`): a
//! first-order worst case for the tiny fixture models ([`tiny_model_pass`]). For the 30-layer
//! SmolLM2, where worst-case bounds say nothing, [`smollm2_logits`] takes a statistical estimate
//! ([`deep_pass_sigma`]). `tests/fixtures/README.md` (Tolerances) states the rules for the tests.
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

/// A probability vector (or a normalization `x / Σx`) of `n` entries sums to 1 within this, in
/// any summation order: the normalizer sums `n` terms (`γ(n)`), each entry takes an `exp` (at most
/// a few ulps in burn's kernels) and a division (`γ(8)` covers both), and the check's own sum of
/// `n` entries rounds by `γ(n)` again.
///
/// ```
/// use inseq_fixtures::tolerance::probability_sum;
/// assert!(probability_sum(400) < 1e-4); // a softmax over the tiny models' vocabulary
/// ```
pub fn probability_sum(n: usize) -> f64 {
    gamma(2 * n + 8)
}

/// The relative rounding error, against the largest magnitude of the values involved, of one
/// forward and backward pass of a tiny fixture model (`tests/fixtures/models`: hidden 32, FFN 64,
/// 2 layers per stack, vocabulary 400) in f32, to first order: every sum at its worst case
/// ([`gamma`] of its length), no amplification by ill-conditioned steps (none occurs in these
/// small seeded networks). Per layer, 8 sums of at most 64 terms (a norm, the Q/K/V/output
/// projections, the attention scores and weighted values, the feed-forward's two products); at
/// most 5 layer-equivalents (an encoder-decoder's 2 + 2 layers and its cross-attention); then the
/// LM head (32 terms) and the softmax (400). The backward pass doubles it. About 3.6e-4.
pub fn tiny_model_pass() -> f64 {
    let layers = 5.0 * 8.0 * gamma(64);
    let head = gamma(32) + gamma(400);
    2.0 * (layers + head)
}

/// [`model_pass`]'s relative part: covers two [`tiny_model_pass`]es (ours and the reference, each
/// rounding in its own order), 7.2e-4, rounded up.
pub const MODEL_PASS_RELATIVE: f64 = 1e-3;

/// [`model_pass`]'s absolute part, for tensors whose reference is all 0 (a gradient that vanishes
/// by construction keeps the residual of a cancelled sum of order-1 terms, ~16u).
pub const MODEL_PASS_ABSOLUTE: f64 = 1e-6;

/// The tolerance between two f32 results of a tiny model's forward (and backward) pass that sum
/// in different orders — ours against Python Inseq's torch (the golden files), a padded batch
/// against its rows, one backend against another, reordered positions — over a whole tensor
/// whose largest reference magnitude is `scale`: `1e-3·scale + 1e-6` (the rule of
/// `cargo xtask parity`, derived in [`tiny_model_pass`]).
///
/// ```
/// use inseq_fixtures::tolerance::{model_pass, tiny_model_pass, MODEL_PASS_RELATIVE};
/// assert!(2.0 * tiny_model_pass() <= MODEL_PASS_RELATIVE);
/// assert_eq!(model_pass(2.0), 2e-3 + 1e-6);
/// ```
pub fn model_pass(scale: f64) -> f64 {
    MODEL_PASS_RELATIVE * scale + MODEL_PASS_ABSOLUTE
}

/// The largest absolute value of `values` (NaN ignored): the `scale` of [`model_pass`].
pub fn max_abs(values: &[f32]) -> f64 {
    values
        .iter()
        .filter(|v| !v.is_nan())
        .fold(0f64, |m, v| m.max(f64::from(v.abs())))
}

/// The statistical size (one standard deviation, relative to the magnitudes involved) of the
/// rounding error of a deep f32 pass chaining `sums` sums of about `terms` terms each: worst-case
/// bounds grow like `sums · terms · u` and say nothing at SmolLM2's depth, while independent
/// roundings add like a random walk, `√(sums · terms) · u` (Higham, 2nd ed., §2.8).
pub fn deep_pass_sigma(sums: usize, terms: usize) -> f64 {
    ((sums * terms) as f64).sqrt() * F32_UNIT_ROUNDOFF
}

/// The tolerance between two f32 computations (ours, `transformers`') of SmolLM2-135M's logits
/// of magnitude up to `scale`: three standard deviations of the difference of two
/// [`deep_pass_sigma`]s over 30 layers × 8 sums of about 800 terms (hidden 576, FFN 1536).
///
/// ```
/// // SmolLM2's largest logit on the reference prompt is ~17.4.
/// let tol = inseq_fixtures::tolerance::smollm2_logits(17.4);
/// assert!(tol > 1e-3 && tol < 3e-3);
/// ```
pub fn smollm2_logits(scale: f64) -> f64 {
    3.0 * std::f64::consts::SQRT_2 * deep_pass_sigma(30 * 8, 800) * scale
}
