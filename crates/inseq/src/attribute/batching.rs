//! Batching `(row, step)` pairs into the inputs of attribution calls.

use inseq_methods::{ContrastInput, PaddedIds, SequenceInput, StepInput};
use inseq_models::ModelKind;

use super::rows::{Row, RowContrast};

/// A step's target prefix ids and mask.
pub(super) fn padded_target(step: &StepInput) -> PaddedIds<'_> {
    (&step.prefix_ids, &step.prefix_mask)
}

/// A step's source ids and mask (encoder-decoder models).
pub(super) fn padded_source(step: &StepInput) -> Option<PaddedIds<'_>> {
    step.source_ids.as_deref().zip(step.source_mask.as_deref())
}

/// One attribution call: `(row, step)` pairs attributed in one batch.
pub(super) type StepUnit = Vec<(usize, usize)>;

/// Most tokens × forward rows per row a batch of different steps may hold (see
/// [`AttributionMethod::step_batch_rows`]).
const STEP_BATCH_TOKENS: usize = 2048;

/// How the steps of `rows` are grouped into batches, in step order: one batch per step by
/// default (Inseq's loop); with `rows_per_step` (the method's rows per input row), consecutive
/// steps share a batch while it holds at most [`STEP_BATCH_TOKENS`] token rows.
pub(super) fn step_units(
    rows: &[Row],
    max_steps: usize,
    rows_per_step: Option<usize>,
) -> Vec<StepUnit> {
    let per_step = (0..max_steps).map(|s| {
        (0..rows.len())
            .filter(|&i| s < rows[i].end - rows[i].start)
            .map(|i| (i, s))
            .collect::<StepUnit>()
    });
    let Some(k) = rows_per_step else {
        return per_step.collect();
    };
    let cost = |&(ri, s): &(usize, usize)| {
        let r = &rows[ri];
        (r.start + s + r.source_ids.as_ref().map_or(0, Vec::len)) * k.max(1)
    };
    let mut units: Vec<StepUnit> = vec![];
    let mut used = 0;
    for pair in per_step.flatten() {
        let c = cost(&pair);
        match units.last_mut() {
            Some(unit) if used + c <= STEP_BATCH_TOKENS => unit.push(pair),
            _ => {
                units.push(vec![pair]);
                used = 0;
            }
        }
        used += c;
    }
    units
}

/// The batched inputs of `(row, step)` pairs: prefixes left-padded, sources right-padded.
pub(super) fn build_step(rows: &[Row], unit: &[(usize, usize)], pad: usize) -> StepInput {
    let prefixes: Vec<&[usize]> = unit
        .iter()
        .map(|&(i, s)| &rows[i].target_ids[..rows[i].start + s])
        .collect();
    let (prefix_ids, prefix_mask) = left_pad(&prefixes, pad);
    let sources: Option<Vec<&[usize]>> = unit
        .iter()
        .map(|&(i, _)| rows[i].source_ids.as_deref())
        .collect();
    let (source_ids, source_mask) = match sources {
        Some(srcs) => {
            let (ids, mask) = right_pad(&srcs, pad);
            (Some(ids), Some(mask))
        }
        None => (None, None),
    };
    let contrast = build_contrast(rows, unit, pad);
    StepInput {
        source_ids,
        source_mask,
        prefix_ids,
        prefix_mask,
        target_ids: unit
            .iter()
            .map(|&(i, s)| rows[i].target_ids[rows[i].start + s])
            .collect(),
        contrast,
    }
}

/// Every step of `rows` as one [`SequenceInput`], when step-by-step attribution would see the
/// same inputs: no contrastive inputs, every row attributes the same number of steps and, for
/// encoder-decoder models (whose decoders are not trained on padded prefixes), every target
/// prefix has the same length.
pub(super) fn sequence_input(rows: &[Row], kind: ModelKind, pad: usize) -> Option<SequenceInput> {
    let first = rows.first()?;
    let steps = first.end - first.start;
    let uniform = rows.iter().all(|r| {
        r.contrast.is_none()
            && r.end - r.start == steps
            && (kind == ModelKind::DecoderOnly || r.start == first.start)
    });
    if !uniform || steps == 0 {
        return None;
    }
    let targets: Vec<&[usize]> = rows.iter().map(|r| &r.target_ids[..r.end]).collect();
    let (ids, mask) = left_pad(&targets, pad);
    let sources: Option<Vec<&[usize]>> = rows.iter().map(|r| r.source_ids.as_deref()).collect();
    let (source_ids, source_mask) = match sources {
        Some(srcs) => {
            let (ids, mask) = right_pad(&srcs, pad);
            (Some(ids), Some(mask))
        }
        None => (None, None),
    };
    let seq = SequenceInput {
        source_ids,
        source_mask,
        ids,
        mask,
        steps,
    };
    seq.check().ok().map(|()| seq)
}

/// Left-pads `seqs` to a common width, returning ids and masks.
fn left_pad(seqs: &[&[usize]], pad: usize) -> (Vec<Vec<usize>>, Vec<Vec<bool>>) {
    let width = seqs.iter().map(|p| p.len()).max().unwrap_or(0);
    let ids = seqs
        .iter()
        .map(|p| {
            std::iter::repeat_n(pad, width - p.len())
                .chain(p.iter().copied())
                .collect()
        })
        .collect();
    let mask = seqs
        .iter()
        .map(|p| (0..width).map(|j| j >= width - p.len()).collect())
        .collect();
    (ids, mask)
}

/// Right-pads `seqs` to a common width, returning ids and masks.
fn right_pad(seqs: &[&[usize]], pad: usize) -> (Vec<Vec<usize>>, Vec<Vec<bool>>) {
    let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let ids = seqs
        .iter()
        .map(|s| {
            s.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, width - s.len()))
                .collect()
        })
        .collect();
    let mask = seqs
        .iter()
        .map(|s| (0..width).map(|j| j < s.len()).collect())
        .collect();
    (ids, mask)
}

/// The contrastive inputs of `(row, step)` pairs (all rows or none have contrasts).
fn build_contrast(rows: &[Row], unit: &[(usize, usize)], pad: usize) -> Option<ContrastInput> {
    let contrasts: Option<Vec<&RowContrast>> = unit
        .iter()
        .map(|&(i, _)| rows[i].contrast.as_ref())
        .collect();
    let contrasts = contrasts?;
    let prefixes: Vec<&[usize]> = contrasts
        .iter()
        .zip(unit)
        .map(|(c, &(_, s))| &c.target_ids[..c.aligned[s]])
        .collect();
    let (prefix_ids, prefix_mask) = left_pad(&prefixes, pad);
    let any_source = contrasts.iter().any(|c| c.source_ids.is_some());
    let (source_ids, source_mask) = if any_source {
        let srcs: Vec<&[usize]> = unit
            .iter()
            .zip(&contrasts)
            .map(|(&(i, _), c)| {
                c.source_ids
                    .as_deref()
                    .or(rows[i].source_ids.as_deref())
                    .unwrap_or(&[])
            })
            .collect();
        let (ids, mask) = right_pad(&srcs, pad);
        (Some(ids), Some(mask))
    } else {
        (None, None)
    };
    let same_as_original = unit
        .iter()
        .zip(&contrasts)
        .zip(&prefixes)
        .map(|((&(i, s), c), p)| {
            let row = &rows[i];
            *p == &row.target_ids[..row.start + s]
                && c.source_ids
                    .as_ref()
                    .is_none_or(|cs| Some(cs) == row.source_ids.as_ref())
        })
        .collect();
    Some(ContrastInput {
        source_ids,
        source_mask,
        prefix_ids,
        prefix_mask,
        target_ids: contrasts
            .iter()
            .zip(unit)
            .map(|(c, &(_, s))| c.target_ids[c.aligned[s]])
            .collect(),
        same_as_original,
    })
}
