//! Preparing each input: tokenising, generating or forcing the target, the attributed span and
//! the contrastive side.

use inseq_core::{Error, Result};
use inseq_models::{
    GenerationOptions, ModelKind, RecordedAttentions, generate_greedy, generate_greedy_recording,
};

use super::{AttributeOptions, AttributionModel, ContrastAlignment};
use crate::AttributedSpan;

/// The contrastive side of one sequence.
pub(super) struct RowContrast {
    pub(super) source_ids: Option<Vec<usize>>,
    pub(super) target_ids: Vec<usize>,
    /// For each attributed target position (from `start`), the aligned contrast position.
    pub(super) aligned: Vec<usize>,
}

/// One input to prepare.
pub(super) struct RowRequest<'a> {
    /// Its index among the call's inputs.
    index: usize,
    input: &'a str,
    /// Its forced target, if any.
    target: Option<&'a str>,
    /// Keep the self-attention weights of generation (see [`generate_greedy_recording`]).
    record_attentions: bool,
    /// How many inputs the call attributes.
    n_inputs: usize,
}

/// A row's target: ids, text and the attention weights recorded while generating it.
struct Target {
    ids: Vec<usize>,
    text: String,
    recorded_attentions: Option<RecordedAttentions>,
}

/// One sequence being attributed.
pub(super) struct Row {
    pub(super) source_ids: Option<Vec<usize>>,
    pub(super) target_ids: Vec<usize>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) generated_text: String,
    pub(super) contrast: Option<RowContrast>,
    /// Self-attention weights recorded while generating this row's target, if asked for.
    pub(super) recorded_attentions: Option<RecordedAttentions>,
}

/// Contrast positions for target positions `start..end` (see [`ContrastAlignment`]).
fn align_contrast(
    alignment: &ContrastAlignment,
    target: &[usize],
    contrast: &[usize],
    start: usize,
    end: usize,
) -> Vec<usize> {
    let right = |t: usize| contrast.len().saturating_sub(end - t);
    match alignment {
        ContrastAlignment::RightAligned => (start..end).map(right).collect(),
        ContrastAlignment::Pairs(pairs) => {
            let mut used = Vec::new();
            (start..end)
                .map(|t| {
                    let mut cands: Vec<usize> = pairs
                        .iter()
                        .filter(|(a, b)| *a == t && *b < contrast.len())
                        .map(|p| p.1)
                        .collect();
                    cands.sort();
                    let pick = cands
                        .iter()
                        .find(|c| !used.contains(*c))
                        .or(cands.first())
                        .copied();
                    let c = pick.unwrap_or_else(|| right(t));
                    used.push(c);
                    c
                })
                .collect()
        }
        ContrastAlignment::Auto => {
            // Longest common subsequence of the two id sequences.
            let (n, m) = (target.len(), contrast.len());
            let mut dp = vec![vec![0usize; m + 1]; n + 1];
            for i in (0..n).rev() {
                for j in (0..m).rev() {
                    dp[i][j] = if target[i] == contrast[j] {
                        dp[i + 1][j + 1] + 1
                    } else {
                        dp[i + 1][j].max(dp[i][j + 1])
                    };
                }
            }
            let mut matched = vec![None; n];
            let (mut i, mut j) = (0, 0);
            while i < n && j < m {
                if target[i] == contrast[j] {
                    matched[i] = Some(j);
                    i += 1;
                    j += 1;
                } else if dp[i + 1][j] >= dp[i][j + 1] {
                    i += 1;
                } else {
                    j += 1;
                }
            }
            let mut last: Option<usize> = None;
            let mut out = Vec::with_capacity(end - start);
            for (t, m) in matched.iter().enumerate().take(end) {
                let c = match m {
                    Some(c) => *c,
                    None => last
                        .map_or(0, |l| l + 1)
                        .min(contrast.len().saturating_sub(1)),
                };
                last = Some(c);
                if t >= start {
                    out.push(c);
                }
            }
            out
        }
    }
}

impl AttributionModel {
    /// Builds the sequence of each input (see [`AttributionModel::prepare_row`]).
    pub(super) fn prepare_rows(
        &self,
        inputs: &[&str],
        opts: &AttributeOptions,
        record_attentions: bool,
    ) -> Result<Vec<Row>> {
        let n_inputs = inputs.len();
        (inputs.iter().enumerate())
            .map(|(i, input)| {
                let target = opts.targets.as_ref().map(|t| t[i].as_str());
                let req = RowRequest {
                    index: i,
                    input,
                    target,
                    record_attentions,
                    n_inputs,
                };
                self.prepare_row(&req, opts)
            })
            .collect()
    }

    /// Builds the sequence to attribute for one input: its source (encoder-decoder models), the
    /// target (forced, or generated), the attributed span and the contrastive side.
    fn prepare_row(&self, req: &RowRequest, opts: &AttributeOptions) -> Result<Row> {
        let input_ids = self.encode(req.input, "input", opts.skip_special_tokens)?;
        let (source_ids, prefix) = match self.model().kind() {
            ModelKind::DecoderOnly => (None, input_ids.clone()),
            ModelKind::EncoderDecoder => (Some(input_ids.clone()), vec![self.decoder_start()?]),
        };
        let target = match req.target {
            Some(t) => self.forced_target(req.input, t, &prefix, opts)?,
            None => self.generated_target(req, &input_ids, source_ids.as_deref(), &prefix, opts)?,
        };
        let max = self.model().info().max_positions;
        if target.ids.len() > max {
            return Err(Error::ContextLength {
                len: target.ids.len(),
                max,
            });
        }
        let (start, end) = AttributedSpan {
            len: target.ids.len(),
            prefix_len: prefix.len(),
            decoder_only: self.model().kind() == ModelKind::DecoderOnly,
            start: opts.attr_pos_start,
            end: opts.attr_pos_end,
            prompt_positions: opts.attribute_prompt,
        }
        .resolve()?;
        let contrast = self.prepare_contrast(req.index, &target.ids, start, end, opts)?;
        Ok(Row {
            source_ids,
            target_ids: target.ids,
            start,
            end,
            generated_text: target.text,
            contrast,
            recorded_attentions: target.recorded_attentions,
        })
    }

    /// The first decoder token of an encoder-decoder model.
    fn decoder_start(&self) -> Result<usize> {
        let info = self.model().info();
        (info.decoder_start_token_id.or(info.bos_token_id))
            .ok_or_else(|| Error::Unsupported("model has no decoder_start_token_id".into()))
    }

    /// A forced target; for decoder-only models it must start with the input.
    fn forced_target(
        &self,
        input: &str,
        text: &str,
        prefix: &[usize],
        opts: &AttributeOptions,
    ) -> Result<Target> {
        if self.model().kind() == ModelKind::DecoderOnly && !text.starts_with(input) {
            return Err(Error::InvalidInput(format!(
                "for decoder-only models the target must start with the input: `{text}` does not start with `{input}`"
            )));
        }
        Ok(Target {
            ids: self.target_ids(text, prefix, opts)?,
            text: text.to_string(),
            recorded_attentions: None,
        })
    }

    /// A target text's ids: after `prefix` (the decoder start) for encoder-decoder models.
    fn target_ids(
        &self,
        text: &str,
        prefix: &[usize],
        opts: &AttributeOptions,
    ) -> Result<Vec<usize>> {
        let skip = opts.skip_special_tokens;
        Ok(match self.model().kind() {
            ModelKind::DecoderOnly => self.encode(text, "target", skip)?,
            ModelKind::EncoderDecoder if text.is_empty() => prefix.to_vec(),
            ModelKind::EncoderDecoder => {
                [prefix.to_vec(), self.encode(text, "target", skip)?].concat()
            }
        })
    }

    /// Generates the target of one input. The generated ids are attributed as they are unless
    /// `inseq_compat` (then, as Inseq, the decoded text is re-tokenised, which can turn a partial
    /// byte token into U+FFFD tokens).
    fn generated_target(
        &self,
        req: &RowRequest,
        input_ids: &[usize],
        source_ids: Option<&[usize]>,
        prefix: &[usize],
        opts: &AttributeOptions,
    ) -> Result<Target> {
        let generation = self.row_generation(input_ids, opts)?;
        let (new, recorded_attentions) = match req.record_attentions {
            true => generate_greedy_recording(self.model(), source_ids, prefix, generation)?,
            false => (
                generate_greedy(self.model(), source_ids, prefix, generation)?,
                None,
            ),
        };
        let kind = self.model().kind();
        let all: Vec<usize> = match kind {
            ModelKind::DecoderOnly => input_ids.iter().chain(&new).copied().collect(),
            ModelKind::EncoderDecoder => new,
        };
        // Inseq decodes a lone decoder-only generation with its special tokens
        // (`HuggingfaceModel.generate`), any other without.
        let keep_special = opts.inseq_compat && req.n_inputs == 1 && kind == ModelKind::DecoderOnly;
        let text = self.pretrained.tokenizer.decode(&all, !keep_special)?;
        let ids = match (opts.inseq_compat, kind) {
            (false, ModelKind::DecoderOnly) => all,
            (false, ModelKind::EncoderDecoder) => [prefix.to_vec(), all].concat(),
            (true, _) => self.target_ids(&text, prefix, opts)?,
        };
        Ok(Target {
            ids,
            text,
            recorded_attentions,
        })
    }

    /// The generation settings of one row: its own sampler seed (so that a row's tokens do not
    /// depend on its batch) and the model's end tokens and forced end token unless given.
    fn row_generation(
        &self,
        input_ids: &[usize],
        opts: &AttributeOptions,
    ) -> Result<GenerationOptions> {
        if opts.generation.max_new_tokens == 0 {
            return Err(Error::invalid_arg(
                "max_new_tokens",
                "must be at least 1 when no target is given",
            ));
        }
        let mut generation = opts.generation.clone();
        generation.seed = row_seed(generation.seed, input_ids);
        if generation.eos_token_ids.is_empty() {
            generation.eos_token_ids = self.end_token_ids();
        }
        if generation.forced_eos_token_id.is_none() {
            generation.forced_eos_token_id = (self.pretrained.config.get("forced_eos_token_id"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize);
        }
        Ok(generation)
    }

    /// Tokenises and aligns the contrastive inputs of row `index`, if any.
    fn prepare_contrast(
        &self,
        index: usize,
        target_ids: &[usize],
        start: usize,
        end: usize,
        opts: &AttributeOptions,
    ) -> Result<Option<RowContrast>> {
        let kind = self.model().kind();
        let c_source = match (&opts.contrast_sources, kind) {
            (None, _) => None,
            (Some(_), ModelKind::DecoderOnly) => {
                return Err(Error::invalid_arg(
                    "contrast_sources",
                    "decoder-only models have no source: give the contrastive prompt in contrast_targets",
                ));
            }
            (Some(c), ModelKind::EncoderDecoder) => {
                Some(self.encode(&c[index], "contrastive source", opts.skip_special_tokens)?)
            }
        };
        let c_target = match &opts.contrast_targets {
            None => None,
            Some(c) => Some(match kind {
                ModelKind::DecoderOnly => {
                    self.encode(&c[index], "contrastive target", opts.skip_special_tokens)?
                }
                ModelKind::EncoderDecoder => {
                    let mut ids = vec![target_ids[0]];
                    ids.extend(self.pretrained.tokenizer.encode_target(&c[index], true)?);
                    ids
                }
            }),
        };
        if c_source.is_none() && c_target.is_none() {
            if opts.contrast_alignments.is_some() {
                return Err(Error::invalid_arg(
                    "contrast_alignments",
                    "given without contrast_targets",
                ));
            }
            return Ok(None);
        }
        let c_target = c_target.unwrap_or_else(|| target_ids.to_vec());
        let alignment = (opts.contrast_alignments.as_ref())
            .map(|a| a[index].clone())
            .unwrap_or(ContrastAlignment::RightAligned);
        check_pairs(&alignment, index, target_ids.len(), c_target.len())?;
        let aligned = align_contrast(&alignment, target_ids, &c_target, start, end);
        check_aligned(&aligned, start, c_target.len())?;
        Ok(Some(RowContrast {
            source_ids: c_source,
            target_ids: c_target,
            aligned,
        }))
    }
}

/// The sampler seed of a row whose input is `input_ids`: SplitMix64's mixing of `seed` and
/// each id, so that a row draws the same tokens alone, at any position of any batch, and in
/// `attribute-dataset` with any `--batch-size` (identical inputs draw identical tokens: give them
/// different seeds for different samples).
fn row_seed(seed: u64, input_ids: &[usize]) -> u64 {
    let mix = |z: u64| {
        let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    input_ids
        .iter()
        .fold(mix(seed), |h, &id| mix(h ^ id as u64))
}

/// Explicit alignment pairs must point inside the target and the contrastive target.
fn check_pairs(
    alignment: &ContrastAlignment,
    index: usize,
    target_len: usize,
    contrast_len: usize,
) -> Result<()> {
    let ContrastAlignment::Pairs(pairs) = alignment else {
        return Ok(());
    };
    match (pairs.iter()).find(|(a, b)| *a >= target_len || *b >= contrast_len) {
        None => Ok(()),
        Some((a, b)) => Err(Error::invalid_arg(
            "contrast alignments",
            format!(
                "pair {a}-{b} of input {index} is outside the target ({target_len} tokens) or \
                 the contrastive target ({contrast_len} tokens)"
            ),
        )),
    }
}

/// Every attributed position needs an aligned contrastive position with a prefix.
fn check_aligned(aligned: &[usize], start: usize, contrast_len: usize) -> Result<()> {
    match (aligned.iter().enumerate()).find(|(_, c)| **c == 0 || **c >= contrast_len) {
        None => Ok(()),
        Some((t, c)) => Err(Error::InvalidInput(format!(
            "target position {} is aligned to contrastive position {c} which has no prefix to \
             condition on",
            start + t
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_alignment_matches_from_the_end() {
        // target positions 5..8 of an 8-token target, contrast of 9 tokens
        let a = align_contrast(&ContrastAlignment::RightAligned, &[0; 8], &[0; 9], 5, 8);
        assert_eq!(a, vec![6, 7, 8]);
    }

    #[test]
    fn explicit_pairs_fall_back_to_right_alignment() {
        let pairs = ContrastAlignment::Pairs(vec![(5, 5), (6, 7)]);
        assert_eq!(
            align_contrast(&pairs, &[0; 8], &[0; 9], 5, 8),
            vec![5, 7, 8]
        );
        assert_eq!("5-5, 6-7".parse::<ContrastAlignment>().unwrap(), pairs);
        assert!("5:5".parse::<ContrastAlignment>().is_err());
    }

    #[test]
    fn auto_alignment_follows_equal_tokens() {
        // target:   a b c X d e      contrast: a b c Y Z d e
        let t = [1, 2, 3, 9, 4, 5];
        let c = [1, 2, 3, 7, 8, 4, 5];
        assert_eq!(
            align_contrast(&ContrastAlignment::Auto, &t, &c, 3, 6),
            vec![3, 5, 6]
        );
    }
}
