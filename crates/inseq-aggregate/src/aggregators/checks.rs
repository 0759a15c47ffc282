//! Consistency checks shared by the aggregators.

use inseq_core::{Array, Error, Result, SequenceAttribution};

use crate::Span;

/// Checks that a sequence is consistent before aggregating it: the attributed
/// range lies within the target, attribution arrays have one row per token
/// (target rows may stop at `attr_pos_end`) and one column per generated step,
/// and every step score has one value per step. Custom aggregators can call it
/// as the built-ins do.
///
/// ```
/// use inseq_core::{SequenceAttribution, TokenWithId};
/// let mut seq = SequenceAttribution {
///     source: None, target: vec![TokenWithId::new("a", 0)], source_attributions: None,
///     target_attributions: None, step_scores: Default::default(),
///     sequence_scores: Default::default(), attr_pos_start: 0, attr_pos_end: 1, aggregations: vec![],
/// };
/// assert!(inseq_aggregate::check_sequence(&seq).is_ok());
/// seq.attr_pos_end = 2;
/// assert!(inseq_aggregate::check_sequence(&seq).is_err());
/// ```
pub fn check_sequence(seq: &SequenceAttribution) -> Result<()> {
    if seq.attr_pos_start > seq.attr_pos_end || seq.attr_pos_end > seq.target.len() {
        return Err(Error::invalid_arg(
            "attr_pos_start/attr_pos_end",
            format!(
                "[{}, {}) is not a range of the {} target tokens",
                seq.attr_pos_start,
                seq.attr_pos_end,
                seq.target.len()
            ),
        ));
    }
    let n_steps = seq.n_steps();
    let check = |a: &Option<Array>, rows: usize, what: &str| -> Result<()> {
        if let Some(a) = a
            && (a.ndim() < 2 || a.shape()[0] != rows || a.shape()[1] != n_steps)
        {
            return Err(Error::ShapeMismatch {
                what: what.into(),
                expected: vec![rows, n_steps],
                found: a.shape().to_vec(),
            });
        }
        Ok(())
    };
    check(
        &seq.source_attributions,
        seq.source.as_ref().map_or(0, Vec::len),
        "source_attributions",
    )?;
    if let Some(t) = &seq.target_attributions {
        // Rows may cover the whole target or stop at attr_pos_end.
        let rows = t.shape().first().copied().unwrap_or(0);
        if rows != seq.target.len() && rows != seq.attr_pos_end {
            return Err(Error::ShapeMismatch {
                what: "target_attributions".into(),
                expected: vec![seq.target.len(), n_steps],
                found: t.shape().to_vec(),
            });
        }
        check(&seq.target_attributions, rows, "target_attributions")?;
    }
    for (name, v) in &seq.step_scores {
        if v.len() != n_steps {
            return Err(Error::ShapeMismatch {
                what: format!("step score `{name}`"),
                expected: vec![n_steps],
                found: vec![v.len()],
            });
        }
    }
    Ok(())
}

pub(crate) fn validate_spans(len: usize, spans: &[Span], what: &str) -> Result<()> {
    let mut prev = 0;
    for &(s, e) in spans {
        if e < s + 1 {
            return Err(Error::invalid_arg(
                what,
                format!("span ({s}, {e}) is empty"),
            ));
        }
        if s < prev {
            return Err(Error::invalid_arg(
                what,
                format!("spans must be non-overlapping and in ascending order, got {spans:?}"),
            ));
        }
        if e > len {
            return Err(Error::invalid_arg(
                what,
                format!("span ({s}, {e}) goes beyond the {len} tokens"),
            ));
        }
        prev = e;
    }
    Ok(())
}
