//! One attributed step as the metrics see it: the model's input ids, the token explained, and one
//! score per attributed input token.

use inseq::core::Array;
use inseq::{Error, Result, SequenceAttribution};

use crate::rng::Rng;

/// One generation step to evaluate.
///
/// The attributed input tokens are addressed by *flat* positions: `0..source_len` are the
/// source tokens (encoder-decoder models), `source_len..` the target prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalStep {
    /// Source ids (encoder-decoder models).
    pub source: Option<Vec<usize>>,
    /// Target prefix ids: for decoder-only models the prompt and the tokens generated before.
    pub prefix: Vec<usize>,
    /// The token explained (generated or forced at this step).
    pub target: usize,
    /// Flat positions of the attributed tokens (those with a finite score).
    pub attributed: Vec<usize>,
    /// One score per attributed token (higher: more relevant).
    pub scores: Vec<f32>,
    /// Seed of this step's randomness (tie-breaks, soft masks).
    pub seed: u64,
}

impl EvalStep {
    /// Number of source tokens.
    pub fn source_len(&self) -> usize {
        self.source.as_ref().map_or(0, Vec::len)
    }

    /// The flat input ids: source then prefix.
    pub fn flat_ids(&self) -> Vec<usize> {
        let mut ids = self.source.clone().unwrap_or_default();
        ids.extend_from_slice(&self.prefix);
        ids
    }

    /// Indices into [`Self::attributed`], most relevant first; ties are broken at random
    /// (seeded), so that a constant attribution ranks the tokens as a random one does.
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.scores.len()).collect();
        Rng::derived(self.seed, &[0x7ab1e]).shuffle(&mut order);
        order.sort_by(|&a, &b| self.scores[b].total_cmp(&self.scores[a]));
        order
    }

    /// The flat ids with every attributed token whose `keep` entry is false replaced by
    /// `baseline`.
    pub fn perturbed_ids(&self, keep: &[bool], baseline: usize) -> Vec<usize> {
        let mut ids = self.flat_ids();
        for (&pos, &k) in self.attributed.iter().zip(keep) {
            if !k {
                ids[pos] = baseline;
            }
        }
        ids
    }

    /// Splits flat ids back into (source, prefix).
    pub fn split(&self, flat: &[usize]) -> (Option<Vec<usize>>, Vec<usize>) {
        let s = self.source_len();
        let source = self.source.as_ref().map(|_| flat[..s].to_vec());
        (source, flat[s..].to_vec())
    }
}

/// The steps of one attributed sequence, from an output aggregated to one score per token
/// (`[len, steps]`, e.g. by [`inseq::aggregate`]). Target prefix scores are used where present
/// (always for decoder-only models); tokens with a non-finite score are not attributed.
pub fn steps_of_sequence(seq: &SequenceAttribution, seed: u64) -> Result<Vec<EvalStep>> {
    let source = seq
        .source
        .as_ref()
        .map(|toks| ids_of(toks.iter().map(|t| t.id)))
        .transpose()?;
    let target = ids_of(seq.target.iter().map(|t| t.id))?;
    let source_scores = seq.source_attributions.as_ref().map(check_2d).transpose()?;
    let target_scores = seq.target_attributions.as_ref().map(check_2d).transpose()?;
    let src_len = source.as_ref().map_or(0, Vec::len);
    let mut steps = Vec::with_capacity(seq.n_steps());
    for s in 0..seq.n_steps() {
        let t = seq.attr_pos_start + s;
        let (mut attributed, mut scores) = (Vec::new(), Vec::new());
        if let Some(a) = source_scores {
            collect_scores(a, s, src_len, 0, &mut attributed, &mut scores);
        }
        if let Some(a) = target_scores {
            collect_scores(a, s, t, src_len, &mut attributed, &mut scores);
        }
        steps.push(EvalStep {
            source: source.clone(),
            prefix: target[..t].to_vec(),
            target: target[t],
            attributed,
            scores,
            seed: Rng::derived(seed, &[s as u64]).next_u64(),
        });
    }
    Ok(steps)
}

fn ids_of(ids: impl Iterator<Item = i64>) -> Result<Vec<usize>> {
    ids.map(|id| {
        usize::try_from(id).map_err(|_| Error::InvalidInput(format!("token id {id} is negative")))
    })
    .collect()
}

fn check_2d(a: &Array) -> Result<&Array> {
    if a.ndim() == 2 {
        Ok(a)
    } else {
        Err(Error::ShapeMismatch {
            what: "attributions to evaluate (aggregate them to one score per token first)".into(),
            expected: vec![0, 0],
            found: a.shape().to_vec(),
        })
    }
}

/// Pushes the finite scores of positions `0..len` at `step` (flat positions from `offset`).
fn collect_scores(
    a: &Array,
    step: usize,
    len: usize,
    offset: usize,
    attributed: &mut Vec<usize>,
    scores: &mut Vec<f32>,
) {
    for pos in 0..len.min(a.shape()[0]) {
        let v = a.get(&[pos, step]);
        if v.is_finite() {
            attributed.push(offset + pos);
            scores.push(v);
        }
    }
}
