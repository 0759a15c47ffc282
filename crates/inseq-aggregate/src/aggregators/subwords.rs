//! The `subwords` aggregator: merges the subword tokens of each word.

use std::sync::Arc;

use inseq_core::{Error, Result, SequenceAttribution, TokenWithId};

use super::spans::merge_spans;
use super::{Aggregate, AggregationContext, check_sequence};
use crate::{Reduce, Span, SubwordScheme, detect_subword_scheme, infer_word_ids};
use crate::{marker_spans, merge_tokens, word_spans};

/// Which tokens belong to one word, for the `subwords` aggregator.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum WordBoundaries {
    /// The word ids of the [`AggregationContext`] when it has some (a
    /// tokenizer's); otherwise infer words from the markers of byte-level BPE
    /// (`Ġ`), SentencePiece (`▁`) or WordPiece (`##`) tokens
    /// ([`crate::infer_word_ids`]), special tokens staying alone.
    #[default]
    Auto,
    /// Python Inseq's exact rule ([`crate::marker_spans`]): Inseq's defaults are
    /// `special_chars: vec!["▁".into()], is_suffix_symbol: false`.
    Markers {
        /// Marker strings.
        special_chars: Vec<String>,
        /// Whether markers flag continuations (`##`) rather than word starts (`▁`).
        is_suffix_symbol: bool,
    },
    /// Explicit word ids, one per token, as a tokenizer's `word_ids()` (or its
    /// offsets) gives them; `None` for special tokens.
    WordIds {
        /// Word ids of the source tokens (encoder-decoder models).
        source: Option<Vec<Option<usize>>>,
        /// Word ids of the target tokens.
        target: Vec<Option<usize>>,
    },
}

/// The `subwords` aggregator: merges the subword tokens of each word, with
/// the same default functions as [`crate::SpansAggregator`].
///
/// With [`WordBoundaries::Auto`], word ids given in the [`AggregationContext`]
/// (a tokenizer's) take precedence over the token markers.
///
/// ```
/// use inseq_aggregate::{Aggregator, SubwordsAggregator, WordBoundaries};
/// let sentencepiece = SubwordsAggregator {
///     boundaries: WordBoundaries::Markers { special_chars: vec!["▁".into()], is_suffix_symbol: false },
///     ..Default::default()
/// };
/// assert_eq!(Aggregator::new(sentencepiece).id(), "subwords");
/// ```
#[derive(Debug, Clone)]
pub struct SubwordsAggregator {
    /// How words are found.
    pub boundaries: WordBoundaries,
    /// Merge source tokens.
    pub aggregate_source: bool,
    /// Merge target tokens.
    pub aggregate_target: bool,
    /// Override for the merging function.
    pub function: Option<Arc<dyn Reduce>>,
}

impl Default for SubwordsAggregator {
    /// Automatic word boundaries on both sides, Inseq's default functions.
    fn default() -> Self {
        Self {
            boundaries: WordBoundaries::Auto,
            aggregate_source: true,
            aggregate_target: true,
            function: None,
        }
    }
}

impl SubwordsAggregator {
    /// The same aggregator merging with `function`.
    pub fn with_function(mut self, function: impl Reduce + 'static) -> Self {
        self.function = Some(Arc::new(function));
        self
    }

    /// The word spans of the source and target tokens.
    fn spans(
        &self,
        seq: &SequenceAttribution,
        ctx: &AggregationContext,
    ) -> Result<(Vec<Span>, Vec<Span>)> {
        match (&self.boundaries, &ctx.target_word_ids) {
            (WordBoundaries::Auto, Some(target)) => {
                word_id_spans(seq, ctx.source_word_ids.as_deref(), target)
            }
            (WordBoundaries::Auto, None) => Ok((
                seq.source
                    .as_ref()
                    .map(|s| word_spans(&infer_word_ids(s)))
                    .unwrap_or_default(),
                word_spans(&infer_word_ids(&seq.target)),
            )),
            (
                WordBoundaries::Markers {
                    special_chars,
                    is_suffix_symbol,
                },
                _,
            ) => {
                let chars: Vec<&str> = special_chars.iter().map(String::as_str).collect();
                let spans =
                    |tokens: &[TokenWithId]| marker_spans(tokens, &chars, *is_suffix_symbol);
                Ok((
                    seq.source.as_deref().map(spans).unwrap_or_default(),
                    spans(&seq.target),
                ))
            }
            (WordBoundaries::WordIds { source, target }, _) => {
                word_id_spans(seq, source.as_deref(), target)
            }
        }
    }
}

impl Aggregate for SubwordsAggregator {
    fn id(&self) -> &str {
        "subwords"
    }

    fn apply(
        &self,
        seq: &SequenceAttribution,
        ctx: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        check_sequence(seq)?;
        let (src, tgt) = self.spans(seq, ctx)?;
        let src = if self.aggregate_source { src } else { vec![] };
        let tgt = if self.aggregate_target { tgt } else { vec![] };
        let mut out = merge_spans(seq, (&src, &tgt), self.function.as_deref(), ctx, "subwords")?;
        let inferred =
            matches!(self.boundaries, WordBoundaries::Auto) && ctx.target_word_ids.is_none();
        if inferred {
            // WordPiece words read better without their `##` continuation markers.
            let strip = |orig: &[TokenWithId], spans: &[Span]| {
                (detect_subword_scheme(orig) == Some(SubwordScheme::WordPiece) && !spans.is_empty())
                    .then(|| merge_wordpiece(orig, spans))
            };
            if let Some(src_toks) = seq.source.as_deref().and_then(|s| strip(s, &src)) {
                out.source = Some(src_toks);
            }
            if let Some(t) = strip(&seq.target, &tgt) {
                out.target = t;
            }
        }
        Ok(out)
    }
}

/// Word spans from explicit word ids, which must have one id per token.
fn word_id_spans(
    seq: &SequenceAttribution,
    source: Option<&[Option<usize>]>,
    target: &[Option<usize>],
) -> Result<(Vec<Span>, Vec<Span>)> {
    let check = |ids: &[Option<usize>], tokens: &[TokenWithId], what: &str| {
        if ids.len() == tokens.len() {
            Ok(())
        } else {
            Err(Error::ShapeMismatch {
                what: what.into(),
                expected: vec![tokens.len()],
                found: vec![ids.len()],
            })
        }
    };
    check(target, &seq.target, "target word ids")?;
    let src = match (source, &seq.source) {
        (Some(ids), Some(tokens)) => {
            check(ids, tokens, "source word ids")?;
            word_spans(ids)
        }
        _ => vec![],
    };
    Ok((src, word_spans(target)))
}

/// Merges WordPiece spans, dropping the `##` of continuation tokens.
fn merge_wordpiece(tokens: &[TokenWithId], spans: &[Span]) -> Vec<TokenWithId> {
    let stripped: Vec<TokenWithId> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let inside = spans.iter().any(|&(s, e)| i > s && i < e);
            match t.token.strip_prefix("##") {
                Some(rest) if inside => TokenWithId::new(rest, t.id),
                _ => t.clone(),
            }
        })
        .collect();
    merge_tokens(&stripped, spans)
}
