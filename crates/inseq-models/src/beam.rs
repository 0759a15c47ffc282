//! Beam search as Hugging Face `generate` runs it (`GenerationMixin._beam_search`, transformers
//! 5): log-softmax, the logits processors on the log-probabilities, the `max(2, 1 + #eos) ×
//! num_beams` best continuations of all beams, finished hypotheses scored by
//! `sum_logprobs / generated_len^length_penalty`, and the same stopping heuristic
//! (`early_stopping`: `false`, `true` or `"never"`).

use burn::tensor::{Int, Tensor, TensorData};
use inseq_core::{Error, Result};

use crate::generate::{GenerationOptions, process_logits};
use crate::model::{ForwardOptions, KvCache, LanguageModel, ModelInput};
use crate::nn::ids_tensor;

/// Hugging Face's `early_stopping`: when beam search stops once `num_beams` hypotheses are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `False` (the default): stop when no running beam can beat the worst finished one at its
    /// current length.
    #[default]
    Heuristic,
    /// `True`: stop as soon as `num_beams` hypotheses are finished.
    Done,
    /// `"never"`: the canonical rule, with the best score a running beam could reach at
    /// `max_length` when `length_penalty > 0`.
    Never,
}

/// One finished beam: its new tokens (end-of-sequence included when produced) and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamHypothesis {
    /// Generated token ids.
    pub ids: Vec<usize>,
    /// `sum of log-probabilities / generated_len^length_penalty`.
    pub score: f32,
}

/// Scores below this are Hugging Face's "never chosen" (`-1e9`).
const EXCLUDED: f32 = -1.0e9;

/// The running beams' next-token log-probabilities, one forward pass per step over all beams.
pub(crate) struct BeamModel<'a> {
    pub model: &'a dyn LanguageModel,
    /// Encoder output of the source (batch 1), for encoder-decoder models.
    pub source: Option<(Tensor<3>, usize)>,
    pub cache: Option<KvCache>,
}

impl BeamModel<'_> {
    /// `[beams][vocab]` logits at the last position of each of `seqs` (all of one length).
    fn logits(&self, seqs: &[Vec<usize>]) -> Result<Vec<Vec<f32>>> {
        let device = self.model.device();
        let fed = self.cache.as_ref().map_or(0, KvCache::len);
        let new: Vec<Vec<usize>> = seqs.iter().map(|s| s[fed..].to_vec()).collect();
        let n = seqs.len();
        let input = ModelInput {
            target_embeds: self.model.embed(ids_tensor(&new, device)),
            target_mask: vec![vec![true; seqs[0].len()]; n],
            source_embeds: self
                .source
                .as_ref()
                .map(|(e, _)| Tensor::cat(vec![e.clone(); n], 0)),
            source_mask: self
                .source
                .as_ref()
                .map(|(_, len)| vec![vec![true; *len]; n]),
        };
        let out = self.model.forward(
            input,
            ForwardOptions {
                last_position_only: true,
                kv_cache: self.cache.clone(),
                ..Default::default()
            },
        );
        let flat = out
            .last_logits()
            .try_to_vec_as::<f32>()
            .map_err(|e| Error::Numerical(format!("{e:?}")))?;
        let vocab = flat.len() / n;
        Ok(flat.chunks(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Keeps the cached keys and values of `rows`, in that order.
    fn reorder(&self, rows: &[usize]) {
        if let Some(cache) = &self.cache {
            let index: Tensor<1, Int> = Tensor::from_data(
                TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
                self.model.device(),
            );
            cache.select_rows(index);
        }
    }
}

/// A candidate continuation: beam, token, accumulated log-probability.
#[derive(Clone, Copy)]
struct Candidate {
    beam: usize,
    token: usize,
    score: f32,
}

/// Beam search's state between steps, as `_beam_search` keeps it.
struct Beams<'o> {
    options: &'o GenerationOptions,
    eos: &'o [usize],
    prompt_len: usize,
    max_length: usize,
    /// Running sequences (prompt included) and their accumulated log-probabilities, best first.
    running: Vec<Vec<usize>>,
    running_scores: Vec<f32>,
    /// Finished hypotheses: (sequence, score, finished), `num_beams` slots, best first.
    finished: Vec<(Vec<usize>, f32, bool)>,
    /// Whether a running beam can still beat the worst finished hypothesis.
    improvable: bool,
}

impl Beams<'_> {
    /// The `max(2, 1 + #eos) × num_beams` best continuations of all beams, best first.
    fn candidates(&self, logits: Vec<Vec<f32>>, cur_len: usize) -> Result<Vec<Candidate>> {
        let step = cur_len - self.prompt_len;
        let mut all = Vec::with_capacity(logits.len() * logits[0].len());
        for (b, mut row) in logits.into_iter().enumerate() {
            check_finite(&row, step)?;
            log_softmax(&mut row);
            process_logits(&mut row, &self.running[b], step, self.options, self.eos);
            all.extend(row.into_iter().map(|l| l + self.running_scores[b]));
        }
        let vocab = all.len() / self.options.num_beams;
        let keep = 2.max(1 + self.eos.len()) * self.options.num_beams;
        Ok(top_k(&all, keep)
            .into_iter()
            .map(|i| Candidate {
                beam: i / vocab,
                token: i % vocab,
                score: all[i],
            })
            .collect())
    }

    fn extend(&self, c: &Candidate) -> Vec<usize> {
        [&self.running[c.beam][..], &[c.token]].concat()
    }

    fn all_done(&self) -> bool {
        self.finished.iter().all(|f| f.2) && self.options.early_stopping == EarlyStopping::Done
    }

    /// `_update_finished_beams`: the best `num_beams` of the finished hypotheses and of the
    /// top-`num_beams` candidates that just hit a stopping criterion (`hits`).
    fn finish(&mut self, top: &[Candidate], hits: &[bool], cur_len: usize) {
        let beams = self.options.num_beams;
        let penalty = ((cur_len + 1 - self.prompt_len) as f32).powf(self.options.length_penalty);
        let (all_done, improvable) = (self.all_done(), self.improvable);
        let mut merged = self.finished.clone();
        for (i, c) in top.iter().enumerate() {
            let just_finished = hits[i] && i < beams;
            // Each reason adds its own -1e9, as in `transformers`.
            let excluded = [all_done, !improvable, !just_finished]
                .iter()
                .filter(|&&x| x)
                .count();
            let score = c.score / penalty + excluded as f32 * EXCLUDED;
            merged.push((self.extend(c), score, just_finished));
        }
        self.finished = best_of(merged, beams, |f| f.1);
    }

    /// `_get_running_beams_for_next_iteration`: the best `num_beams` candidates that did not
    /// stop; the cached keys and values follow their beams.
    fn advance(&mut self, model: &BeamModel<'_>, top: &[Candidate], hits: &[bool], cur_len: usize) {
        let scored = top.iter().enumerate();
        let next: Vec<(usize, f32)> = best_of(
            scored
                .map(|(i, c)| (i, c.score + if hits[i] { EXCLUDED } else { 0.0 }))
                .collect(),
            self.options.num_beams,
            |r| r.1,
        );
        let running = next.iter().map(|&(i, _)| self.extend(&top[i])).collect();
        model.reorder(&next.iter().map(|&(i, _)| top[i].beam).collect::<Vec<_>>());
        self.running = running;
        self.running_scores = next.iter().map(|&(_, s)| s).collect();
        self.improvable = self.improvable && self.can_improve(cur_len + 1);
    }

    /// `_check_early_stop_heuristic` at sequence length `cur_len`: whether the best running beam
    /// could still beat the worst finished hypothesis (always, while some slot is unfinished).
    fn can_improve(&self, cur_len: usize) -> bool {
        let lp = self.options.length_penalty;
        let best_len = match self.options.early_stopping == EarlyStopping::Never && lp > 0.0 {
            true => self.max_length - self.prompt_len,
            false => cur_len - self.prompt_len,
        };
        let best_possible = self.running_scores[0] / (best_len as f32).powf(lp);
        let worst = self
            .finished
            .iter()
            .map(|f| f.1)
            .fold(f32::INFINITY, f32::min);
        self.finished
            .iter()
            .any(|f| best_possible > if f.2 { worst } else { EXCLUDED })
    }
}

/// Runs beam search from `prefix` and returns `options.num_return_sequences` hypotheses, best
/// first. `eos` are the end tokens.
pub(crate) fn beam_search(
    model: &BeamModel<'_>,
    prefix: Vec<usize>,
    options: &GenerationOptions,
    eos: &[usize],
) -> Result<Vec<BeamHypothesis>> {
    let beams = options.num_beams;
    let prompt_len = prefix.len();
    let mut state = Beams {
        options,
        eos,
        prompt_len,
        max_length: prompt_len + options.max_new_tokens,
        running: vec![prefix; beams],
        running_scores: (0..beams)
            .map(|b| if b == 0 { 0.0 } else { EXCLUDED })
            .collect(),
        finished: vec![(Vec::new(), EXCLUDED, false); beams],
        improvable: true,
    };
    for cur_len in prompt_len..state.max_length {
        let top = state.candidates(model.logits(&state.running)?, cur_len)?;
        let hits: Vec<bool> = top
            .iter()
            .map(|c| eos.contains(&c.token) || cur_len + 1 >= state.max_length)
            .collect();
        state.finish(&top, &hits, cur_len);
        state.advance(model, &top, &hits, cur_len);
        if !state.improvable || state.all_done() || hits.iter().all(|&h| h) {
            break;
        }
    }
    Ok(state
        .finished
        .into_iter()
        .take(options.num_return_sequences.max(1))
        .map(|(seq, score, _)| BeamHypothesis {
            ids: seq.get(prompt_len..).unwrap_or_default().to_vec(),
            score,
        })
        .collect())
}

/// The `k` items with the largest `key`, largest first; equal keys keep their order (as
/// `torch.topk` on CPU does for the small sizes beam search uses).
fn best_of<T>(mut items: Vec<T>, k: usize, key: impl Fn(&T) -> f32) -> Vec<T> {
    items.sort_by(|a, b| key(b).total_cmp(&key(a)));
    items.truncate(k);
    items
}

/// Indices of the `k` largest values, largest first.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    order.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
        values[b].total_cmp(&values[a]).then(a.cmp(&b))
    });
    order.truncate(k);
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
}

fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln() + max;
    row.iter_mut().for_each(|l| *l -= log_sum);
}

fn check_finite(logits: &[f32], step: usize) -> Result<()> {
    match logits.iter().find(|v| !v.is_finite()) {
        None => Ok(()),
        Some(bad) => Err(Error::Numerical(format!(
            "beam search step {step}: the next-token logits are not finite (e.g. {bad}); likely \
             cause: the model's weights or config (NaN weights, a non-positive norm epsilon, \
             rope_theta)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_stable() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, -1.0, 0.3], 3), [1, 2, 4]);
        assert_eq!(top_k(&[1.0], 4), [0]);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let mut row = [1.0f32, 2.0, 3.0];
        log_softmax(&mut row);
        let total: f32 = row.iter().map(|l| l.exp()).sum();
        // A normalizer of 3 terms, a few roundings per entry (exp, ln, subtraction) and this
        // sum of 3: γ(14) = 14·2⁻²⁴ ≈ 8.3e-7.
        assert!((total - 1.0).abs() < 1e-6);
    }
}
