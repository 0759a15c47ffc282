//! Llama 3.x's `rope_freqs.weight`: llama.cpp's converter writes the `llama3` RoPE scaling as one
//! factor per rotary frequency (and no `rope.scaling.*` metadata), and llama.cpp divides each
//! frequency by its factor. In `config.json` terms that is LongRoPE with the same factors for
//! short and long sequences and an attention factor of 1 or `rope.scaling.attn_factor` (on top
//! of a linear scaling, the factors times the linear one).

use inseq_core::{Error, Result};
use serde_json::{Value, json};

use super::GgufModelFile;

/// The llama.cpp tensor of the per-frequency factors.
pub(super) const ROPE_FREQS: &str = "rope_freqs.weight";

impl GgufModelFile {
    /// The factors of `rope_freqs.weight`, one per rotated pair of features, each finite and
    /// positive; `None` without the tensor.
    fn rope_freq_factors(&self) -> Result<Option<Vec<f64>>> {
        let Some(t) = self.file.read_f32(ROPE_FREQS)? else {
            return Ok(None);
        };
        let pairs = self
            .meta_usize_opt("rope.dimension_count")?
            .unwrap_or(self.head_dim()?)
            / 2;
        if t.data.len() != pairs {
            return Err(self.corrupt(format!(
                "tensor `{ROPE_FREQS}` has {} factors for {pairs} rotary frequencies",
                t.data.len()
            )));
        }
        if let Some(bad) = t.data.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
            return Err(self.corrupt(format!(
                "tensor `{ROPE_FREQS}` holds {bad}; factors must be finite and > 0"
            )));
        }
        Ok(Some(t.data.iter().map(|&x| f64::from(x)).collect()))
    }

    /// `rope_scaling` (from the metadata) with the `rope_freqs.weight` factors folded in.
    pub(super) fn with_rope_freqs(&self, scaling: Option<Value>) -> Result<Option<Value>> {
        let Some(factors) = self.rope_freq_factors()? else {
            return Ok(scaling);
        };
        let linear = match &scaling {
            None => 1.0,
            Some(s) if s["rope_type"] == "linear" => s["factor"].as_f64().ok_or_else(|| {
                self.corrupt(format!(
                    "linear RoPE scaling without `{}.rope.scaling.factor`",
                    self.table.arch
                ))
            })?,
            Some(s) => {
                return Err(Error::Unsupported(format!(
                    "`{ROPE_FREQS}` with RoPE scaling type {} in {} (supported: none, linear)",
                    s["rope_type"],
                    self.file.path().display()
                )));
            }
        };
        let factors: Vec<f64> = factors.into_iter().map(|f| f * linear).collect();
        let attention_factor = scaling
            .as_ref()
            .and_then(|s| s.get("attention_factor"))
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        Ok(Some(json!({
            "rope_type": "longrope",
            "short_factor": factors,
            "long_factor": factors,
            "attention_factor": attention_factor,
        })))
    }
}
