//! Where texts land in the token sequences: offsets, special tokens, the decoder start.

use std::collections::HashSet;
use std::ops::Range;

use inseq_core::{Error, Result};

use crate::AttributionModel;

/// Special token ids, and those the user keeps.
pub(super) struct Specials {
    ids: HashSet<usize>,
    keep: HashSet<usize>,
}

impl Specials {
    pub(super) fn new(model: &AttributionModel, keep: &[String]) -> Result<Self> {
        let tok = model.tokenizer();
        let info = model.model().info();
        let mut ids: HashSet<usize> = tok
            .inner()
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id as usize)
            .collect();
        ids.extend(
            [info.bos_token_id, info.eos_token_id, info.pad_token_id]
                .into_iter()
                .flatten(),
        );
        let keep = keep
            .iter()
            .map(|t| {
                tok.token_to_id(t).ok_or_else(|| {
                    Error::invalid_arg(
                        "special_tokens_to_keep",
                        format!("`{t}` is not a token of this tokenizer"),
                    )
                })
            })
            .collect::<Result<HashSet<_>>>()?;
        Ok(Self { ids, keep })
    }

    /// Whether `id` is a special token filtered out of texts and token lists.
    pub(super) fn dropped(&self, id: usize) -> bool {
        self.ids.contains(&id) && !self.keep.contains(&id)
    }
}

/// A tokenised text: ids, byte offsets, and which tokens the post-processor added.
pub(super) struct Encoded {
    pub(super) ids: Vec<usize>,
    pub(super) offsets: Vec<(usize, usize)>,
    pub(super) added: Vec<bool>,
}

pub(super) fn encode_offsets(model: &AttributionModel, text: &str) -> Result<Encoded> {
    let enc = model
        .tokenizer()
        .inner()
        .encode(text, true)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(Encoded {
        ids: enc.get_ids().iter().map(|&i| i as usize).collect(),
        offsets: enc.get_offsets().to_vec(),
        added: enc
            .get_special_tokens_mask()
            .iter()
            .map(|&m| m != 0)
            .collect(),
    })
}

impl Encoded {
    /// Positions (plus `offset`) of the tokens covering the byte `span`, special tokens excluded.
    pub(super) fn positions(
        &self,
        span: &Range<usize>,
        offset: usize,
        specials: &Specials,
    ) -> Vec<usize> {
        (0..self.ids.len())
            .filter(|&i| {
                let (s, e) = self.offsets[i];
                let inside = if s < e {
                    s < span.end && e > span.start
                } else {
                    s >= span.start && s < span.end
                };
                inside && !self.added[i] && !specials.dropped(self.ids[i])
            })
            .map(|i| i + offset)
            .collect()
    }
}

/// The first token of an encoder-decoder model's targets.
pub(super) fn decoder_start(model: &AttributionModel) -> Result<usize> {
    let info = model.model().info();
    info.decoder_start_token_id
        .or(info.bos_token_id)
        .ok_or_else(|| Error::Unsupported("model has no decoder_start_token_id".into()))
}
