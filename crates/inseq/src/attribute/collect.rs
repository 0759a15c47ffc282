//! Collecting each step's attributions per row: checks, slicing and stacking.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use inseq_core::{Array, Error, Result};
use inseq_methods::{MethodArgs, StepAttribution, StepInput};

use super::batching::StepUnit;
use super::rows::Row;

/// Per-row columns of attributions (one per attributed step) and step scores, as the batches
/// of a call produce them.
pub(super) struct Collected {
    source: Vec<Option<Vec<Option<Array>>>>,
    target: Vec<Option<Vec<Option<Array>>>>,
    scores: Vec<BTreeMap<String, Vec<f32>>>,
    /// The method's shape of a score (`[layers, heads]` for attention), once it says.
    score_dims: Option<Vec<usize>>,
    /// The call's input index of the first row (rows may come in groups, see `row_groups`).
    first_input: usize,
}

/// A row's source and target attributions (`[len, steps, ...]`) and step scores.
pub(super) type RowResult = (Option<Array>, Option<Array>, BTreeMap<String, Vec<f32>>);

impl Collected {
    /// Empty columns for `rows`, the call's inputs from `first_input` on.
    pub(super) fn new(rows: &[Row], first_input: usize) -> Self {
        Self {
            source: rows.iter().map(|_| None).collect(),
            target: rows.iter().map(|_| None).collect(),
            scores: rows.iter().map(|_| BTreeMap::new()).collect(),
            score_dims: None,
            first_input,
        }
    }

    /// The call's input index of row `i`, as errors name it.
    pub(super) fn input_index(&self, i: usize) -> usize {
        self.first_input + i
    }

    /// Stores one call's attributions: each row's unpadded column, checked by `finite(row, step)`.
    pub(super) fn record<'a>(
        &mut self,
        rows: &[Row],
        unit: &StepUnit,
        step: &StepInput,
        out: StepAttribution,
        finite: impl Fn(usize, usize) -> FiniteCheck<'a>,
    ) -> Result<()> {
        if out.score_dims.is_some() {
            self.score_dims.clone_from(&out.score_dims);
        }
        let src = out.source.map(|t| split_rows(t, unit.len())).transpose()?;
        let tgt = out.target.map(|t| split_rows(t, unit.len())).transpose()?;
        for (bi, &(ri, s)) in unit.iter().enumerate() {
            let n_steps = rows[ri].end - rows[ri].start;
            if let Some(src) = &src {
                let len = rows[ri].source_ids.as_ref().map_or(0, Vec::len);
                let col = take_rows(&src[bi], 0, len);
                finite(ri, s).check("source attributions", col.data())?;
                self.source[ri].get_or_insert_with(|| vec![None; n_steps])[s] = Some(col);
            }
            if let Some(tgt) = &tgt {
                let (prefix_len, padded) = (rows[ri].start + s, step.prefix_ids[bi].len());
                let col = take_rows(&tgt[bi], padded - prefix_len, padded);
                finite(ri, s).check("target attributions", col.data())?;
                self.target[ri].get_or_insert_with(|| vec![None; n_steps])[s] = Some(col);
            }
            if let Some(d) = &out.deltas {
                let deltas = self.scores[ri].entry("deltas".into()).or_default();
                deltas.push(d[bi]);
            }
        }
        Ok(())
    }

    /// Stores the values of step function `id` for the rows of `unit`.
    pub(super) fn record_scores(&mut self, unit: &StepUnit, id: &str, values: &[f32]) {
        for (bi, &(ri, _)) in unit.iter().enumerate() {
            let row_scores = self.scores[ri].entry(id.to_string()).or_default();
            row_scores.push(values[bi]);
        }
    }

    /// Row `i`'s stacked attributions and step scores; a non-finite step score is an error
    /// unless `allow_non_finite`.
    pub(super) fn take_row(
        &mut self,
        i: usize,
        row: &Row,
        allow_non_finite: bool,
    ) -> Result<RowResult> {
        let scores = std::mem::take(&mut self.scores[i]);
        for (id, values) in &scores {
            if !allow_non_finite && values.iter().any(|v| !v.is_finite()) {
                let input = self.input_index(i);
                return Err(Error::Numerical(format!(
                    "step score `{id}` of input {input} is not finite: {values:?}"
                )));
            }
        }
        let dims = self.score_dims.as_deref();
        let source_len = row.source_ids.as_ref().map_or(0, Vec::len);
        let source = (self.source[i].take())
            .map(|cols| stack_steps(cols, source_len, dims))
            .transpose()?;
        let target = (self.target[i].take())
            .map(|cols| stack_steps(cols, row.target_ids.len(), dims))
            .transpose()?;
        Ok((source, target, scores))
    }
}

/// Where one step's attributions came from, to report NaN/inf in them (the one place every
/// method's output passes through).
pub(super) struct FiniteCheck<'a> {
    /// `allow_non_finite`: keep them.
    pub(super) skip: bool,
    pub(super) method_id: &'a str,
    pub(super) method_args: &'a MethodArgs,
    pub(super) input: usize,
    /// The target position attributed.
    pub(super) position: usize,
}

impl FiniteCheck<'_> {
    /// [`Error::Numerical`] naming the input, the step and the likely causes if `values` has a
    /// NaN or infinity.
    fn check(&self, what: &str, values: &[f32]) -> Result<()> {
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if self.skip || bad == 0 {
            return Ok(());
        }
        Err(Error::Numerical(format!(
            "{what} of input {} at target position {} are not finite ({bad} of {} entries \
             NaN/inf); likely causes: the model's weights or config (NaN weights, a \
             non-positive norm epsilon, rope_theta) or the arguments of `{}` ({:?}); \
             allow_non_finite (--allow-non-finite) keeps them",
            self.input,
            self.position,
            values.len(),
            self.method_id,
            self.method_args.to_json(),
        )))
    }
}

/// Moves a `[batch, len, hidden]` tensor to the host, one `[len, hidden]` array per row.
fn split_rows(t: Tensor<3>, batch: usize) -> Result<Vec<Array>> {
    let [b, len, h] = t.dims();
    if b != batch {
        return Err(Error::ShapeMismatch {
            what: "attribution batch".into(),
            expected: vec![batch, len, h],
            found: vec![b, len, h],
        });
    }
    let data = t
        .try_to_vec_as::<f32>()
        .map_err(|e| Error::Numerical(format!("{e:?}")))?;
    data.chunks(len * h)
        .map(|c| Array::new(vec![len, h], c.to_vec()))
        .collect()
}

/// Rows `from..to` of a `[len, hidden]` array.
fn take_rows(a: &Array, from: usize, to: usize) -> Array {
    let h = a.shape()[1];
    Array::new(vec![to - from, h], a.data()[from * h..to * h].to_vec()).expect("consistent slice")
}

/// Stacks per-step `[len_s, hidden]` arrays into `[rows, steps, hidden]`, NaN where a step has no
/// score, then gives the trailing dimension the method's `score_dims` shape (none for per-token scores,
/// `[layers, heads]` for attention).
fn stack_steps(
    cols: Vec<Option<Array>>,
    rows: usize,
    score_dims: Option<&[usize]>,
) -> Result<Array> {
    let steps = cols.len();
    let h = cols
        .iter()
        .flatten()
        .map(|a| a.shape()[1])
        .next()
        .unwrap_or(1);
    let mut out = Array::full(vec![rows, steps, h], f32::NAN);
    for (s, col) in cols.iter().enumerate() {
        if let Some(col) = col {
            for r in 0..col.shape()[0].min(rows) {
                for k in 0..h {
                    out.set(&[r, s, k], col.get(&[r, k]));
                }
            }
        }
    }
    match score_dims {
        Some(dims) => inseq_aggregate::reshape_scores(&out, dims),
        None => Ok(out),
    }
}
