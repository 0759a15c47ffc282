//! Integration points and weights for path methods, as Captum defines them.

use inseq_core::{Error, Result};

/// How the path integral of Integrated Gradients is approximated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quadrature {
    /// Gauss-Legendre (Captum's and Inseq's default).
    GaussLegendre,
    /// Left Riemann sum.
    RiemannLeft,
    /// Right Riemann sum.
    RiemannRight,
    /// Midpoint Riemann sum.
    RiemannMiddle,
    /// Trapezoidal rule.
    RiemannTrapezoid,
}

impl std::str::FromStr for Quadrature {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "gausslegendre" => Self::GaussLegendre,
            "riemann_left" => Self::RiemannLeft,
            "riemann_right" => Self::RiemannRight,
            "riemann_middle" => Self::RiemannMiddle,
            "riemann_trapezoid" => Self::RiemannTrapezoid,
            other => {
                return Err(Error::invalid_arg(
                    "method",
                    format!(
                        "unknown integration method `{other}` (gausslegendre, riemann_left, riemann_right, riemann_middle, riemann_trapezoid)"
                    ),
                ));
            }
        })
    }
}

/// The most integration points a method takes (`n_steps`): each point is one forward and backward
/// pass per attributed step, and the Gauss-Legendre nodes take `O(n²)` to compute (10 000 points:
/// well under a second).
pub const MAX_STEPS: usize = 10_000;

impl Quadrature {
    /// `(alphas, step_sizes)` for `n` points on `[0, 1]`, `1 <= n <= MAX_STEPS`.
    pub fn points(self, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        crate::args::check_size("n_steps", n, MAX_STEPS)?;
        let nf = n as f64;
        Ok(match self {
            Self::GaussLegendre => {
                let (x, w) = gauss_legendre(n);
                (
                    x.iter().map(|x| 0.5 * (x + 1.0)).collect(),
                    w.iter().map(|w| 0.5 * w).collect(),
                )
            }
            Self::RiemannLeft => ((0..n).map(|i| i as f64 / nf).collect(), vec![1.0 / nf; n]),
            Self::RiemannRight => ((1..=n).map(|i| i as f64 / nf).collect(), vec![1.0 / nf; n]),
            Self::RiemannMiddle => (
                (0..n).map(|i| (i as f64 + 0.5) / nf).collect(),
                vec![1.0 / nf; n],
            ),
            Self::RiemannTrapezoid => {
                if n < 2 {
                    return Err(Error::invalid_arg(
                        "n_steps",
                        "riemann_trapezoid needs at least 2 steps",
                    ));
                }
                let h = 1.0 / (nf - 1.0);
                let alphas = (0..n).map(|i| i as f64 * h).collect();
                let mut steps = vec![h; n];
                steps[0] = h / 2.0;
                steps[n - 1] = h / 2.0;
                (alphas, steps)
            }
        })
    }
}

/// Gauss-Legendre nodes (ascending) and weights on `[-1, 1]`, as `numpy.polynomial.legendre.leggauss`.
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        // Initial guess (Tricomi), then Newton on P_n.
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 0.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0, z);
            if n == 1 {
                p1 = z;
                p0 = 1.0;
            } else {
                for k in 2..=n {
                    let p2 = ((2 * k - 1) as f64 * z * p1 - (k - 1) as f64 * p0) / k as f64;
                    p0 = p1;
                    p1 = p2;
                }
            }
            // p1 = P_n(z), p0 = P_{n-1}(z)
            dp = n as f64 * (z * p1 - p0) / (z * z - 1.0);
            let dz = p1 / dp;
            z -= dz;
            if dz.abs() < 1e-15 {
                break;
            }
        }
        let wi = 2.0 / ((1.0 - z * z) * dp * dp);
        x[i] = -z;
        x[n - 1 - i] = z;
        w[i] = wi;
        w[n - 1 - i] = wi;
    }
    (x, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        // f64: Newton's iteration puts nodes and weights within a few ulps (~1e-15), and these
        // sums of <= 11 terms add ~11 more: 1e-12 is ~100 times that.
        for n in 1..12 {
            let (x, w) = gauss_legendre(n);
            assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-12, "n={n}");
            // degree 2n-1 exact: integral of x^2 over [-1,1] = 2/3 (n >= 2)
            if n >= 2 {
                let v: f64 = x.iter().zip(&w).map(|(x, w)| w * x * x).sum();
                assert!((v - 2.0 / 3.0).abs() < 1e-12);
            }
            assert!(x.windows(2).all(|p| p[0] < p[1]));
        }
        let (x, _) = gauss_legendre(2);
        assert!((x[1] - 1.0 / 3f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn riemann_weights_sum_to_one() {
        for q in [
            Quadrature::RiemannLeft,
            Quadrature::RiemannRight,
            Quadrature::RiemannMiddle,
            Quadrature::RiemannTrapezoid,
            Quadrature::GaussLegendre,
        ] {
            let (_, s) = q.points(7).unwrap();
            assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12); // as above
        }
        assert!(Quadrature::GaussLegendre.points(0).is_err());
    }
}
