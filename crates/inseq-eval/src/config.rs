//! Evaluation settings.

use inseq::{Error, Result};
use serde::{Deserialize, Serialize};

/// Settings shared by the metrics of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// Fractions of the attributed tokens at which the deletion and insertion curves are sampled
    /// (from 0 to 1; default 0, 0.1, ..., 1).
    pub fractions: Vec<f64>,
    /// AOPC bins as fractions (default 1, 5, 10, 20 and 50 %, as ERASER).
    pub aopc_bins: Vec<f64>,
    /// Masks drawn per step for Soft-NC and Soft-NS (default 1, as Zhao and Aletras).
    pub soft_samples: usize,
    /// Most perturbed inputs per forward pass (default 64).
    pub batch_size: usize,
    /// Seed of every random choice (tie-breaks, masks, random attributions, bootstrap).
    pub seed: u64,
    /// The id that replaces removed tokens; `None`: the model's baseline token (Inseq's
    /// occlusion baseline: `unk`, else `pad`, else `eos`).
    pub baseline: Option<usize>,
    /// Bootstrap resamples of each interval (default 1000).
    pub bootstrap_resamples: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            fractions: (0..=10).map(|i| f64::from(i) / 10.0).collect(),
            aopc_bins: vec![0.01, 0.05, 0.1, 0.2, 0.5],
            soft_samples: 1,
            batch_size: 64,
            seed: 42,
            baseline: None,
            bootstrap_resamples: 1000,
        }
    }
}

impl EvalConfig {
    /// Checks the settings: fractions in `[0, 1]`, increasing, curves from 0 to 1; at least one
    /// AOPC bin; non-zero batch size and sample count.
    pub fn validate(&self) -> Result<()> {
        let f = &self.fractions;
        if f.len() < 2 || f[0] != 0.0 || f[f.len() - 1] != 1.0 || f.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(Error::invalid_arg(
                "fractions",
                format!("{f:?}: need increasing fractions from 0 to 1"),
            ));
        }
        if self.aopc_bins.is_empty() || self.aopc_bins.iter().any(|b| !(*b > 0.0 && *b <= 1.0)) {
            return Err(Error::invalid_arg(
                "aopc_bins",
                format!("{:?}: need fractions in (0, 1]", self.aopc_bins),
            ));
        }
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("soft_samples", self.soft_samples),
            ("bootstrap_resamples", self.bootstrap_resamples),
        ] {
            if v == 0 {
                return Err(Error::invalid_arg(name, "must be at least 1"));
            }
        }
        Ok(())
    }
}
