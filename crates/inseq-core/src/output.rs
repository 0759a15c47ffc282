//! Attribution results, mirroring Python Inseq's `FeatureAttributionOutput`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Array, Error, Result};

/// A token string with its vocabulary id (`-1` for synthetic tokens such as
/// contrastive pairs rendered as `"she → he"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenWithId {
    /// The token as the tokenizer spells it (e.g. `Ġthe`).
    pub token: String,
    /// Its id in the vocabulary.
    pub id: i64,
}

impl TokenWithId {
    /// Creates a token.
    pub fn new(token: impl Into<String>, id: i64) -> Self {
        Self {
            token: token.into(),
            id,
        }
    }
}

/// Attribution of one sequence: Inseq's `FeatureAttributionSequenceOutput`.
///
/// Attribution arrays are laid out `[input tokens, generated steps, ...extra]`:
/// before aggregation the extra dimension is typically the hidden size; after
/// the default aggregation the arrays are 2-D. Positions that have no score
/// (future target tokens) hold `NaN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceAttribution {
    /// Source tokens (encoder-decoder models only).
    pub source: Option<Vec<TokenWithId>>,
    /// Target tokens: for decoder-only models, the prompt followed by the generated tokens.
    pub target: Vec<TokenWithId>,
    /// `[source_len, n_steps, ...]` scores for the source (encoder-decoder).
    pub source_attributions: Option<Array>,
    /// `[target_len, n_steps, ...]` scores for the target prefix.
    pub target_attributions: Option<Array>,
    /// One score per generated step for each requested step function.
    pub step_scores: BTreeMap<String, Vec<f32>>,
    /// Extra per-sequence scores (e.g. convergence deltas of a multi-dimensional method).
    #[serde(default)]
    pub sequence_scores: BTreeMap<String, Array>,
    /// Index in `target` of the first attributed (generated) token.
    pub attr_pos_start: usize,
    /// One past the index in `target` of the last attributed token.
    pub attr_pos_end: usize,
    /// Names of the aggregations applied so far, in order.
    #[serde(default)]
    pub aggregations: Vec<String>,
}

impl SequenceAttribution {
    /// Number of attributed (generated) steps.
    pub fn n_steps(&self) -> usize {
        self.attr_pos_end - self.attr_pos_start
    }

    /// The attributed target tokens, one per step.
    pub fn generated(&self) -> &[TokenWithId] {
        &self.target[self.attr_pos_start..self.attr_pos_end]
    }
}

/// The result of an attribution call: Inseq's `FeatureAttributionOutput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionOutput {
    /// One entry per input sequence of the batch.
    pub sequence_attributions: Vec<SequenceAttribution>,
    /// Free-form information on how the attribution was produced (model, method, arguments...).
    pub info: BTreeMap<String, serde_json::Value>,
}

impl AttributionOutput {
    /// Serializes to pretty JSON in this project's schema.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parses JSON in this project's schema.
    pub fn from_json(text: &str) -> Result<Self> {
        let out: Self = serde_json::from_str(text)?;
        // Positions outside the target would make `n_steps`/`generated` panic later.
        for (i, seq) in out.sequence_attributions.iter().enumerate() {
            if seq.attr_pos_start > seq.attr_pos_end || seq.attr_pos_end > seq.target.len() {
                return Err(Error::InvalidInput(format!(
                    "sequence_attributions[{i}]: attr_pos_start {} / attr_pos_end {} do not fit a target of {} tokens",
                    seq.attr_pos_start,
                    seq.attr_pos_end,
                    seq.target.len()
                )));
            }
        }
        Ok(out)
    }

    /// Saves to `path` atomically: the JSON goes to a temporary file beside
    /// it that is renamed into place, so an interrupted save never leaves a
    /// partly written file.
    ///
    /// ```
    /// # use inseq_core::AttributionOutput;
    /// let out = AttributionOutput { sequence_attributions: vec![], info: Default::default() };
    /// let path = std::env::temp_dir().join("inseq-core-doc.json");
    /// out.save(&path).unwrap();
    /// assert_eq!(AttributionOutput::load(&path).unwrap(), out);
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_json()?.as_bytes())
    }

    /// Loads a file written by [`AttributionOutput::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text)
    }
}

/// Writes `bytes` to `path` through a temporary sibling file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        Error::invalid_arg("path", format!("{} is not a file path", path.display()))
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}
