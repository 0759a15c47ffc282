//! Attributing every generation step of a sequence at once.
//!
//! Language models are causal on the target side: the logits at position `i`
//! (and the attention weights of query `i`) depend only on tokens `0..=i`. So one
//! forward pass over the whole target gives the outputs of every generation
//! step, where step-by-step attribution (Inseq's loop) runs one forward pass per
//! step on a growing prefix. Methods that only need forward passes (`attention`,
//! `occlusion`) use this through [`crate::AttributionMethod::attribute_sequence`];
//! results equal step-by-step attribution up to floating-point rounding.

use burn::tensor::Tensor;
use inseq_core::{Error, Result};
use inseq_models::ForwardOptions;
use inseq_steps::StepContext;

use crate::gradient::repeated_input;
use crate::{Embedded, MethodContext, StepInput};

/// Every attributed step of a batch of sequences: the target ids up to the last
/// attributed token, of which the last `steps` are the attributed tokens.
///
/// ```
/// use inseq_methods::SequenceInput;
/// // Prompt [5, 6], generated [7, 8]: step 0 explains 7 from [5, 6], step 1 explains 8 from [5, 6, 7].
/// let seq = SequenceInput::decoder_only(vec![vec![5, 6, 7, 8]], vec![vec![true; 4]], 2).unwrap();
/// assert_eq!(seq.step(1).prefix_ids, vec![vec![5, 6, 7]]);
/// assert_eq!(seq.step(0).target_ids, vec![7]);
/// ```
#[derive(Debug, Clone)]
pub struct SequenceInput {
    /// `[batch][source_len]` source ids (encoder-decoder models), right-padded.
    pub source_ids: Option<Vec<Vec<usize>>>,
    /// Which source positions are real tokens.
    pub source_mask: Option<Vec<Vec<bool>>>,
    /// `[batch][width]` target ids, left-padded, ending with each row's last attributed token.
    pub ids: Vec<Vec<usize>>,
    /// Which target positions are real tokens.
    pub mask: Vec<Vec<bool>>,
    /// Number of attributed steps (the same for every row).
    pub steps: usize,
}

impl SequenceInput {
    /// A decoder-only batch; checks that rows are rectangular and hold `steps` tokens after
    /// at least one real prefix token.
    pub fn decoder_only(ids: Vec<Vec<usize>>, mask: Vec<Vec<bool>>, steps: usize) -> Result<Self> {
        let seq = Self {
            source_ids: None,
            source_mask: None,
            ids,
            mask,
            steps,
        };
        seq.check()?;
        Ok(seq)
    }

    /// Checks the invariants the step accessors rely on.
    pub fn check(&self) -> Result<()> {
        let width = self.width();
        let rectangular = self.ids.iter().all(|r| r.len() == width)
            && self.mask.len() == self.ids.len()
            && self.mask.iter().all(|r| r.len() == width);
        if self.ids.is_empty() || !rectangular {
            return Err(Error::InvalidInput(
                "sequence attribution needs a non-empty rectangular batch of ids and masks".into(),
            ));
        }
        if self.steps == 0 || self.steps >= width {
            return Err(Error::InvalidInput(format!(
                "sequence attribution of {} steps needs at least one prefix token before them (width {width})",
                self.steps
            )));
        }
        let first_step = width - self.steps;
        if let Some(r) = self
            .mask
            .iter()
            .position(|m| !m[first_step - 1] || !m[first_step..].iter().all(|&k| k))
        {
            return Err(Error::InvalidInput(format!(
                "row {r}: attributed steps must be real tokens after at least one real prefix token"
            )));
        }
        Ok(())
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.ids.len()
    }

    /// Padded target width (prefix of the last step plus its token).
    pub fn width(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// Padded prefix width of step `s`.
    pub fn prefix_width(&self, s: usize) -> usize {
        self.width() - self.steps + s
    }

    /// The input of step `s`, as step-by-step attribution builds it.
    pub fn step(&self, s: usize) -> StepInput {
        let w = self.prefix_width(s);
        StepInput {
            source_ids: self.source_ids.clone(),
            source_mask: self.source_mask.clone(),
            prefix_ids: self.ids.iter().map(|r| r[..w].to_vec()).collect(),
            prefix_mask: self.mask.iter().map(|r| r[..w].to_vec()).collect(),
            target_ids: self.ids.iter().map(|r| r[w]).collect(),
            contrast: None,
        }
    }

    /// The input of the forward pass that serves every step: the last step's.
    pub fn full(&self) -> StepInput {
        self.step(self.steps - 1)
    }
}

/// Runs the model once on `embedded` (`times` copies of the full prefix batch of `seq`, e.g.
/// one per perturbation) and returns the attributed function of every step,
/// `[steps][times * batch]`.
pub fn forward_scores_all_steps(
    ctx: &MethodContext,
    seq: &SequenceInput,
    embedded: &Embedded,
    times: usize,
) -> Result<Vec<Vec<f32>>> {
    let input = repeated_input(&seq.full(), embedded, times);
    let first = seq.prefix_width(0) - 1;
    let out = ctx.model.forward(
        input,
        ForwardOptions {
            logits_from: Some(first),
            ..Default::default()
        },
    );
    step_scores_from_logits(ctx, seq, out.logits, first, times)
}

/// The attributed function of every step from `[times * batch, positions, vocab]` logits whose
/// position 0 is target position `first` (see [`forward_scores_all_steps`]).
pub(crate) fn step_scores_from_logits(
    ctx: &MethodContext,
    seq: &SequenceInput,
    logits: Tensor<3>,
    first: usize,
    times: usize,
) -> Result<Vec<Vec<f32>>> {
    let [n, positions, vocab] = logits.dims();
    let (steps, batch) = (seq.steps, seq.batch());
    let start = seq.prefix_width(0) - 1 - first;
    if n != times * batch || start + steps > positions {
        return Err(Error::ShapeMismatch {
            what: "logits of a sequence forward pass".into(),
            expected: vec![times * batch, start + steps, vocab],
            found: vec![n, positions, vocab],
        });
    }
    // [n, steps, vocab] -> [steps * n, vocab], step-major.
    let per_step = logits
        .slice([0..n, start..start + steps, 0..vocab])
        .swap_dims(0, 1)
        .reshape([steps * n, vocab]);
    let targets: Vec<usize> = (0..steps)
        .flat_map(|s| {
            let t = seq.step(s).target_ids;
            (0..times).flat_map(move |_| t.clone())
        })
        .collect();
    let sctx = StepContext {
        logits: per_step,
        target_ids: targets,
        contrast: None,
        dropout_logits: vec![],
    };
    let scores = ctx
        .attributed_fn
        .function
        .compute(&sctx, &ctx.attributed_fn.args)?
        .try_to_vec_as::<f32>()
        .map_err(|e| Error::Numerical(format!("{e:?}")))?;
    Ok(scores.chunks(n).map(<[f32]>::to_vec).collect())
}
