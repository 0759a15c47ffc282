//! Aggregators (`scores`, `spans`, `subwords`, `split`, `pair`, `slices`) and
//! their composition in a [`Pipeline`].

use std::collections::BTreeMap;

use inseq_core::{Array, AttributionOutput, Error, Result, SequenceAttribution};

use crate::functions::{AggregationFunction, default_step_score_function, normalize, rescale};
use crate::nd::{self, Span, aggregate_contiguous};
use crate::words::{
    SplitMode, detect_subword_scheme, infer_word_ids, marker_spans, merge_tokens, split_spans,
    word_spans,
};

/// The ids of the aggregators, as Python Inseq's `list_aggregators()`.
pub const AGGREGATOR_IDS: [&str; 6] = ["pair", "scores", "slices", "spans", "split", "subwords"];

/// Lists the ids of the available aggregators.
///
/// ```
/// assert!(inseq_aggregate::list_aggregators().contains(&"subwords"));
/// ```
pub fn list_aggregators() -> Vec<&'static str> {
    AGGREGATOR_IDS.to_vec()
}

/// Post-processing of the `scores` aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostProcess {
    /// L1-normalise each generated step's column over source and target ([`crate::normalize`]; Inseq's default).
    #[default]
    Normalize,
    /// Divide by the largest absolute score ([`crate::rescale`]).
    Rescale,
    /// Keep the raw aggregated scores.
    None,
}

/// Indices of the trailing dimension to keep before a `scores` aggregation
/// (Inseq's `select_idx`, e.g. one attention head or a range of layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexSelection {
    /// One index: the dimension is dropped without aggregating.
    One(usize),
    /// The `[start, end)` range.
    Range(usize, usize),
    /// A list of distinct indices.
    Indices(Vec<usize>),
}

/// The `scores` aggregator: reduces the trailing dimension of the attribution
/// arrays (hidden size, attention heads...) with an [`AggregationFunction`],
/// then normalises.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScoresAggregator {
    /// The reduction; `None` uses Inseq's default: `vnorm` for 3-D (granular)
    /// arrays, `mean` otherwise.
    pub function: Option<AggregationFunction>,
    /// What to do after the reduction.
    pub post: PostProcess,
    /// Optional selection of trailing indices before reducing.
    pub select: Option<IndexSelection>,
}

/// Which tokens belong to one word, for the `subwords` aggregator.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum WordBoundaries {
    /// Infer words from the markers of byte-level BPE (`Ġ`), SentencePiece
    /// (`▁`) or WordPiece (`##`) tokens ([`crate::infer_word_ids`]); special
    /// tokens stay alone.
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

/// One step of an aggregation [`Pipeline`]: Python Inseq's aggregators.
///
/// Span-based aggregators (`spans`, `subwords`, `split`) merge tokens and their
/// scores; without an explicit `function` they use Inseq's defaults: `absmax`
/// for attributions and sequence scores and [`crate::default_step_score_function`]
/// for step scores.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregator {
    /// `scores`: reduce the trailing dimension (also selected by a bare function id such as `vnorm`).
    Scores(ScoresAggregator),
    /// `spans`: merge the given contiguous `[start, end)` token spans.
    Spans {
        /// Spans of source tokens.
        source_spans: Vec<Span>,
        /// Spans of target tokens (indices in the full target, prompt included).
        target_spans: Vec<Span>,
        /// Override for the merging function.
        function: Option<AggregationFunction>,
    },
    /// `subwords`: merge the subword tokens of each word.
    Subwords {
        /// How words are found.
        boundaries: WordBoundaries,
        /// Merge source tokens.
        aggregate_source: bool,
        /// Merge target tokens.
        aggregate_target: bool,
        /// Override for the merging function.
        function: Option<AggregationFunction>,
    },
    /// `split`: merge tokens between matches of a regular expression.
    Split {
        /// The regular expression.
        pattern: String,
        /// Treatment of the matching tokens.
        mode: SplitMode,
        /// Merge source tokens.
        aggregate_source: bool,
        /// Merge target tokens.
        aggregate_target: bool,
        /// Override for the merging function.
        function: Option<AggregationFunction>,
    },
    /// `pair`: the difference `other - self` of two attributions of the same
    /// shape (e.g. a minimal pair); differing tokens become `"a → b"` with id -1.
    Pair {
        /// The paired attribution.
        other: Box<SequenceAttribution>,
    },
    /// `slices`: keep only some spans of tokens (generated tokens are always kept).
    Slices {
        /// Source spans to keep (`None`: all).
        source_spans: Option<Vec<Span>>,
        /// Target spans to keep.
        target_spans: Option<Vec<Span>>,
    },
}

impl Aggregator {
    /// The `scores` aggregator with the given function and normalisation.
    ///
    /// ```
    /// use inseq_aggregate::{AggregationFunction, Aggregator};
    /// assert_eq!(Aggregator::scores(AggregationFunction::Sum).id(), "scores");
    /// ```
    pub fn scores(function: AggregationFunction) -> Self {
        Aggregator::Scores(ScoresAggregator {
            function: Some(function),
            ..Default::default()
        })
    }

    /// The `subwords` aggregator inferring word boundaries from token markers.
    pub fn subwords() -> Self {
        Aggregator::Subwords {
            boundaries: WordBoundaries::Auto,
            aggregate_source: true,
            aggregate_target: true,
            function: None,
        }
    }

    /// The `subwords` aggregator with explicit word ids (from a tokenizer).
    pub fn words(source: Option<Vec<Option<usize>>>, target: Vec<Option<usize>>) -> Self {
        Aggregator::Subwords {
            boundaries: WordBoundaries::WordIds { source, target },
            aggregate_source: true,
            aggregate_target: true,
            function: None,
        }
    }

    /// The `spans` aggregator.
    pub fn spans(source_spans: Vec<Span>, target_spans: Vec<Span>) -> Self {
        Aggregator::Spans {
            source_spans,
            target_spans,
            function: None,
        }
    }

    /// The `split` aggregator with `single` mode.
    pub fn split(pattern: impl Into<String>) -> Self {
        Aggregator::Split {
            pattern: pattern.into(),
            mode: SplitMode::Single,
            aggregate_source: true,
            aggregate_target: true,
            function: None,
        }
    }

    /// Builds an aggregator from Inseq's string ids: an aggregator id, or an
    /// aggregation function id meaning `scores` with that function; `function`
    /// optionally overrides the function. `spans`, `split`, `pair` and
    /// `slices` need arguments and must be built directly.
    ///
    /// ```
    /// use inseq_aggregate::Aggregator;
    /// assert_eq!(Aggregator::from_id("vnorm", None).unwrap(), Aggregator::from_id("scores", Some("vnorm")).unwrap());
    /// assert!(Aggregator::from_id("subwords", Some("sum")).is_ok());
    /// let err = Aggregator::from_id("words", None).unwrap_err();
    /// assert!(err.to_string().contains("unknown aggregator"));
    /// ```
    pub fn from_id(id: &str, function: Option<&str>) -> Result<Self> {
        let function = function.map(AggregationFunction::from_id).transpose()?;
        if let Ok(f) = AggregationFunction::from_id(id) {
            if function.is_some() {
                return Err(Error::invalid_arg(
                    "aggregate_fn",
                    format!("`{id}` is already an aggregation function; do not give another one"),
                ));
            }
            return Ok(Aggregator::scores(f));
        }
        let needs_args = |what: &str| {
            Err(Error::invalid_arg(
                id,
                format!(
                    "the `{id}` aggregator needs {what}; build `Aggregator::{}` directly",
                    capitalize(id)
                ),
            ))
        };
        match id {
            "scores" => Ok(Aggregator::Scores(ScoresAggregator {
                function,
                ..Default::default()
            })),
            "subwords" => Ok(Aggregator::Subwords {
                boundaries: WordBoundaries::Auto,
                aggregate_source: true,
                aggregate_target: true,
                function,
            }),
            "spans" => needs_args("source/target spans"),
            "split" => needs_args("a split pattern"),
            "pair" => needs_args("a paired attribution"),
            "slices" => needs_args("spans to keep"),
            _ => Err(Error::UnknownId {
                kind: "aggregator",
                id: id.to_string(),
                available: AGGREGATOR_IDS
                    .iter()
                    .chain(crate::AGGREGATION_FUNCTION_IDS.iter())
                    .map(|s| s.to_string())
                    .collect(),
            }),
        }
    }

    /// The Inseq id of the aggregator.
    pub fn id(&self) -> &'static str {
        match self {
            Aggregator::Scores(_) => "scores",
            Aggregator::Spans { .. } => "spans",
            Aggregator::Subwords { .. } => "subwords",
            Aggregator::Split { .. } => "split",
            Aggregator::Pair { .. } => "pair",
            Aggregator::Slices { .. } => "slices",
        }
    }

    /// Applies the aggregator to one sequence.
    pub fn apply(&self, seq: &SequenceAttribution) -> Result<SequenceAttribution> {
        check_sequence(seq)?;
        match self {
            Aggregator::Scores(s) => apply_scores(seq, s),
            Aggregator::Spans {
                source_spans,
                target_spans,
                function,
            } => apply_spans(seq, source_spans, target_spans, *function, "spans"),
            Aggregator::Subwords {
                boundaries,
                aggregate_source,
                aggregate_target,
                function,
            } => {
                let (src, tgt) = subword_spans(seq, boundaries)?;
                let src = if *aggregate_source { src } else { vec![] };
                let tgt = if *aggregate_target { tgt } else { vec![] };
                let mut out = apply_spans(seq, &src, &tgt, *function, "subwords")?;
                if matches!(boundaries, WordBoundaries::Auto) {
                    // WordPiece words read better without their `##` continuation markers.
                    let strip = |orig: &[inseq_core::TokenWithId], spans: &[Span]| {
                        (detect_subword_scheme(orig) == Some(crate::SubwordScheme::WordPiece)
                            && !spans.is_empty())
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
            Aggregator::Split {
                pattern,
                mode,
                aggregate_source,
                aggregate_target,
                function,
            } => {
                let src = match (&seq.source, aggregate_source) {
                    (Some(s), true) => split_spans(s, pattern, *mode)?,
                    _ => vec![],
                };
                let tgt = if *aggregate_target {
                    split_spans(&seq.target, pattern, *mode)?
                } else {
                    vec![]
                };
                apply_spans(seq, &src, &tgt, *function, "split")
            }
            Aggregator::Pair { other } => apply_pair(seq, other),
            Aggregator::Slices {
                source_spans,
                target_spans,
            } => apply_slices(seq, source_spans.as_deref(), target_spans.as_deref()),
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// A chain of aggregators applied in order (Python Inseq's `AggregatorPipeline`).
///
/// ```
/// use inseq_aggregate::Pipeline;
/// use inseq_core::{Array, SequenceAttribution, TokenWithId};
/// let target: Vec<_> = ["Hel", "lo", "Ġwor", "ld"].iter().map(|t| TokenWithId::new(*t, 0)).collect();
/// let seq = SequenceAttribution {
///     source: None,
///     target,
///     source_attributions: None,
///     target_attributions: Some(Array::new(vec![4, 2, 2], vec![
///         1.0, 0.0, 1.0, 1.0,   0.0, 2.0, 1.0, 0.0,
///         f32::NAN, f32::NAN, 3.0, 4.0,   f32::NAN, f32::NAN, f32::NAN, f32::NAN,
///     ]).unwrap()),
///     step_scores: [("probability".to_string(), vec![0.5, 0.5])].into_iter().collect(),
///     sequence_scores: Default::default(),
///     attr_pos_start: 2,
///     attr_pos_end: 4,
///     aggregations: vec![],
/// };
/// let out = Pipeline::parse("vnorm,subwords").unwrap().apply(&seq).unwrap();
/// let tokens: Vec<_> = out.target.iter().map(|t| t.token.as_str()).collect();
/// assert_eq!(tokens, ["Hello", "Ġworld"]);
/// assert_eq!(out.target_attributions.unwrap().shape(), &[2, 1]);
/// assert_eq!(out.step_scores["probability"], vec![0.25]);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pipeline {
    /// The aggregators, applied first to last.
    pub steps: Vec<Aggregator>,
}

impl Pipeline {
    /// A pipeline of the given steps.
    pub fn new(steps: Vec<Aggregator>) -> Self {
        Self { steps }
    }

    /// Parses a comma-separated list of `id` or `id:function` items
    /// (e.g. `"subwords:sum,vnorm"`), see [`Aggregator::from_id`].
    pub fn parse(spec: &str) -> Result<Self> {
        let steps = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| match item.split_once(':') {
                Some((id, f)) => Aggregator::from_id(id.trim(), Some(f.trim())),
                None => Aggregator::from_id(item, None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { steps })
    }

    /// Applies every step in order to one sequence.
    pub fn apply(&self, seq: &SequenceAttribution) -> Result<SequenceAttribution> {
        let mut cur = seq.clone();
        for step in &self.steps {
            cur = step.apply(&cur)?;
        }
        Ok(cur)
    }

    /// Applies the pipeline to every sequence of an output.
    pub fn apply_output(&self, out: &AttributionOutput) -> Result<AttributionOutput> {
        Ok(AttributionOutput {
            sequence_attributions: out
                .sequence_attributions
                .iter()
                .map(|s| self.apply(s))
                .collect::<Result<_>>()?,
            info: out.info.clone(),
        })
    }
}

/// The pipeline Python Inseq applies by default (`out.aggregate()` /
/// `out.show()`), chosen as Inseq chooses it from the sequence's class, which
/// follows from the rank of its attribution arrays: 3-D (granular, gradient
/// methods) → `vnorm` then normalize; 4-D and more (multi-dimensional,
/// attention) → `mean` then normalize once per extra dimension; 2-D (coarse,
/// occlusion) or no arrays → nothing.
///
/// ```
/// use inseq_aggregate::{inseq_default_pipeline, Aggregator, AggregationFunction};
/// use inseq_core::{Array, SequenceAttribution};
/// let seq = SequenceAttribution {
///     source: None, target: vec![], source_attributions: None,
///     target_attributions: Some(Array::full(vec![0, 0, 2, 4], 0.0)),
///     step_scores: Default::default(), sequence_scores: Default::default(),
///     attr_pos_start: 0, attr_pos_end: 0, aggregations: vec![],
/// };
/// let p = inseq_default_pipeline(&seq);
/// assert_eq!(p.steps, vec![Aggregator::scores(AggregationFunction::Mean); 2]);
/// ```
pub fn inseq_default_pipeline(seq: &SequenceAttribution) -> Pipeline {
    let ndim = seq
        .source_attributions
        .as_ref()
        .or(seq.target_attributions.as_ref())
        .map_or(0, Array::ndim);
    let steps = match ndim {
        3 => vec![Aggregator::scores(AggregationFunction::L2)],
        n if n > 3 => vec![Aggregator::scores(AggregationFunction::Mean); n - 2],
        _ => vec![],
    };
    Pipeline { steps }
}

/// Applies [`inseq_default_pipeline`] to one sequence.
pub fn aggregate_inseq_default(seq: &SequenceAttribution) -> Result<SequenceAttribution> {
    inseq_default_pipeline(seq).apply(seq)
}

/// Applies [`inseq_default_pipeline`] to every sequence of an output.
///
/// ```
/// use inseq_core::AttributionOutput;
/// let out = AttributionOutput { sequence_attributions: vec![], info: Default::default() };
/// assert_eq!(inseq_aggregate::aggregate_output_inseq_default(&out).unwrap(), out);
/// ```
pub fn aggregate_output_inseq_default(out: &AttributionOutput) -> Result<AttributionOutput> {
    Ok(AttributionOutput {
        sequence_attributions: out
            .sequence_attributions
            .iter()
            .map(aggregate_inseq_default)
            .collect::<Result<_>>()?,
        info: out.info.clone(),
    })
}

// ------------------------------------------------------------------ checks

fn check_sequence(seq: &SequenceAttribution) -> Result<()> {
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

fn validate_spans(len: usize, spans: &[Span], what: &str) -> Result<()> {
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

// ------------------------------------------------------------------ scores

fn select_indices(sel: &IndexSelection, n: usize) -> Result<Vec<usize>> {
    let idx: Vec<usize> = match sel {
        IndexSelection::One(i) => vec![*i],
        IndexSelection::Range(s, e) => {
            if s >= e {
                return Err(Error::invalid_arg(
                    "select_idx",
                    format!("empty range ({s}, {e})"),
                ));
            }
            (*s..*e).collect()
        }
        IndexSelection::Indices(v) => {
            if v.is_empty() {
                return Err(Error::invalid_arg(
                    "select_idx",
                    "an empty list of indices is not allowed",
                ));
            }
            let mut sorted = v.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != v.len() {
                return Err(Error::invalid_arg(
                    "select_idx",
                    "duplicate indices are not allowed",
                ));
            }
            v.clone()
        }
    };
    if let Some(bad) = idx.iter().find(|&&i| i >= n) {
        return Err(Error::invalid_arg(
            "select_idx",
            format!("index {bad} out of range: the scores only have {n} units"),
        ));
    }
    Ok(idx)
}

fn reduce_scores(
    a: &Array,
    f: AggregationFunction,
    select: Option<&IndexSelection>,
) -> Result<Array> {
    let last = a.ndim().saturating_sub(1);
    match select {
        None => f.apply_last(a),
        Some(sel) => {
            let n = a.shape().get(last).copied().unwrap_or(0);
            let idx = select_indices(sel, n)?;
            let picked = nd::select_axis(a, last, &idx)?;
            if matches!(sel, IndexSelection::One(_)) || idx.len() == 1 {
                nd::squeeze_axis(picked, last)
            } else {
                f.apply_last(&picked)
            }
        }
    }
}

fn apply_scores(seq: &SequenceAttribution, s: &ScoresAggregator) -> Result<SequenceAttribution> {
    let arrays = [
        seq.source_attributions.as_ref(),
        seq.target_attributions.as_ref(),
    ];
    let Some(ndim) = arrays.iter().flatten().map(|a| a.ndim()).next() else {
        // Nothing to aggregate (step scores only).
        return Ok(seq.clone());
    };
    if arrays.iter().flatten().any(|a| a.ndim() < 3) {
        return Err(Error::invalid_arg(
            "aggregator",
            "the `scores` aggregator reduces the trailing dimension of 3-D or larger attributions, \
             but these are already 2-D (tokens × generated steps)",
        ));
    }
    let f = s.function.unwrap_or(if ndim == 3 {
        AggregationFunction::L2
    } else {
        AggregationFunction::Mean
    });
    let mut out = seq.clone();
    let reduce = |a: &Option<Array>| {
        a.as_ref()
            .map(|a| reduce_scores(a, f, s.select.as_ref()))
            .transpose()
    };
    out.source_attributions = reduce(&seq.source_attributions)?;
    out.target_attributions = reduce(&seq.target_attributions)?;
    match s.post {
        PostProcess::Normalize => normalize(
            out.source_attributions.as_mut(),
            out.target_attributions.as_mut(),
        )?,
        PostProcess::Rescale => rescale(
            out.source_attributions.as_mut(),
            out.target_attributions.as_mut(),
        )?,
        PostProcess::None => {}
    }
    out.sequence_scores = seq
        .sequence_scores
        .iter()
        .map(|(k, v)| {
            let r = if v.ndim() == 0 {
                v.clone()
            } else {
                reduce_scores(v, f, s.select.as_ref())?
            };
            Ok((k.clone(), r))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    out.aggregations.push(f.id().to_string());
    match s.post {
        PostProcess::Normalize => out.aggregations.push("normalize".into()),
        PostProcess::Rescale => out.aggregations.push("rescale".into()),
        PostProcess::None => {}
    }
    Ok(out)
}

// ------------------------------------------------------------------ spans

fn relativize(spans: &[Span], start: usize) -> Vec<Span> {
    if start == 0 {
        return spans.to_vec();
    }
    spans
        .iter()
        .filter(|s| s.1 > start)
        .map(|&(s, e)| (s.saturating_sub(start), e - start))
        .collect()
}

fn sequential(
    a: &Array,
    x_spans: &[Span],
    y_spans: &[Span],
    f: AggregationFunction,
) -> Result<Array> {
    let y = if a.ndim() >= 2 {
        aggregate_contiguous(a, y_spans, f, 1)?
    } else {
        a.clone()
    };
    aggregate_contiguous(&y, x_spans, f, 0)
}

fn apply_spans(
    seq: &SequenceAttribution,
    source_spans: &[Span],
    target_spans: &[Span],
    function: Option<AggregationFunction>,
    name: &str,
) -> Result<SequenceAttribution> {
    let source_len = seq.source.as_ref().map_or(0, Vec::len);
    if seq.source.is_none() && !source_spans.is_empty() {
        return Err(Error::invalid_arg(
            "source_spans",
            "this sequence has no source tokens",
        ));
    }
    validate_spans(source_len, source_spans, "source_spans")?;
    validate_spans(seq.target.len(), target_spans, "target_spans")?;
    let start = seq.attr_pos_start;
    let gen_spans = relativize(target_spans, start);
    let attr_fn = function.unwrap_or(AggregationFunction::AbsMax);
    let mut out = seq.clone();
    out.source = seq.source.as_ref().map(|s| merge_tokens(s, source_spans));
    out.target = merge_tokens(&seq.target, target_spans);
    out.source_attributions = seq
        .source_attributions
        .as_ref()
        .map(|a| sequential(a, source_spans, &gen_spans, attr_fn))
        .transpose()?;
    out.target_attributions = seq
        .target_attributions
        .as_ref()
        .map(|a| {
            // Rows may stop at attr_pos_end: only keep the spans inside them.
            let rows = a.shape()[0];
            let spans: Vec<Span> = target_spans
                .iter()
                .copied()
                .filter(|s| s.1 <= rows)
                .collect();
            sequential(a, &spans, &gen_spans, attr_fn)
        })
        .transpose()?;
    out.step_scores = seq
        .step_scores
        .iter()
        .map(|(k, v)| {
            let f = function.unwrap_or_else(|| default_step_score_function(k));
            let a = Array::new(vec![v.len()], v.clone())?;
            Ok((
                k.clone(),
                aggregate_contiguous(&a, &gen_spans, f, 0)?.into_data(),
            ))
        })
        .collect::<Result<_>>()?;
    out.sequence_scores = seq
        .sequence_scores
        .iter()
        .map(|(k, v)| {
            let r = if k.starts_with("decoder") {
                sequential(v, &gen_spans, &gen_spans, attr_fn)
            } else if k.starts_with("encoder") {
                sequential(v, source_spans, source_spans, attr_fn)
            } else {
                sequential(v, source_spans, &gen_spans, attr_fn)
            }?;
            Ok((k.clone(), r))
        })
        .collect::<Result<_>>()?;
    if !target_spans.is_empty() {
        let merged_prefix: usize = target_spans
            .iter()
            .filter(|s| s.1 <= start)
            .map(|s| s.1 - s.0 - 1)
            .sum();
        let mut new_start = start - merged_prefix;
        let overlapping: Vec<&Span> = target_spans
            .iter()
            .filter(|s| s.0 < start && start < s.1)
            .collect();
        if let [s] = overlapping[..] {
            new_start -= start - s.0;
        }
        let merged_gen: usize = gen_spans.iter().map(|s| s.1 - s.0 - 1).sum();
        out.attr_pos_start = new_start;
        out.attr_pos_end = new_start + seq.n_steps() - merged_gen;
    }
    out.aggregations.push(name.to_string());
    Ok(out)
}

fn merge_wordpiece(
    tokens: &[inseq_core::TokenWithId],
    spans: &[Span],
) -> Vec<inseq_core::TokenWithId> {
    let stripped: Vec<inseq_core::TokenWithId> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let inside = spans.iter().any(|&(s, e)| i > s && i < e);
            match t.token.strip_prefix("##") {
                Some(rest) if inside => inseq_core::TokenWithId::new(rest, t.id),
                _ => t.clone(),
            }
        })
        .collect();
    merge_tokens(&stripped, spans)
}

fn subword_spans(seq: &SequenceAttribution, b: &WordBoundaries) -> Result<(Vec<Span>, Vec<Span>)> {
    Ok(match b {
        WordBoundaries::Auto => (
            seq.source
                .as_ref()
                .map(|s| word_spans(&infer_word_ids(s)))
                .unwrap_or_default(),
            word_spans(&infer_word_ids(&seq.target)),
        ),
        WordBoundaries::Markers {
            special_chars,
            is_suffix_symbol,
        } => {
            let chars: Vec<&str> = special_chars.iter().map(String::as_str).collect();
            (
                seq.source
                    .as_ref()
                    .map(|s| marker_spans(s, &chars, *is_suffix_symbol))
                    .unwrap_or_default(),
                marker_spans(&seq.target, &chars, *is_suffix_symbol),
            )
        }
        WordBoundaries::WordIds { source, target } => {
            if target.len() != seq.target.len() {
                return Err(Error::ShapeMismatch {
                    what: "target word ids".into(),
                    expected: vec![seq.target.len()],
                    found: vec![target.len()],
                });
            }
            let src = match (source, &seq.source) {
                (Some(ids), Some(toks)) => {
                    if ids.len() != toks.len() {
                        return Err(Error::ShapeMismatch {
                            what: "source word ids".into(),
                            expected: vec![toks.len()],
                            found: vec![ids.len()],
                        });
                    }
                    word_spans(ids)
                }
                _ => vec![],
            };
            (src, word_spans(target))
        }
    })
}

// ------------------------------------------------------------------ pair

fn apply_pair(
    seq: &SequenceAttribution,
    other: &SequenceAttribution,
) -> Result<SequenceAttribution> {
    let len = |s: &Option<Vec<inseq_core::TokenWithId>>| s.as_ref().map_or(0, Vec::len);
    if len(&seq.source) != len(&other.source) || seq.target.len() != other.target.len() {
        return Err(Error::invalid_arg(
            "paired_attr",
            "source and target sequences must have the same lengths in both attributions",
        ));
    }
    let diff = |a: &Option<Array>, b: &Option<Array>, what: &str| -> Result<Option<Array>> {
        match (a, b) {
            (None, _) => Ok(None),
            (Some(a), Some(b)) => nd::zip_with(a, b, what, |x, y| y - x).map(Some),
            (Some(_), None) => Err(Error::invalid_arg(
                "paired_attr",
                format!("the paired attribution has no {what}"),
            )),
        }
    };
    let pair_tokens = |a: &[inseq_core::TokenWithId], b: &[inseq_core::TokenWithId]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                if x.token == y.token {
                    x.clone()
                } else {
                    inseq_core::TokenWithId::new(format!("{} → {}", x.token, y.token), -1)
                }
            })
            .collect::<Vec<_>>()
    };
    let mut out = seq.clone();
    out.source = match (&seq.source, &other.source) {
        (Some(a), Some(b)) => Some(pair_tokens(a, b)),
        (a, _) => a.clone(),
    };
    out.target = pair_tokens(&seq.target, &other.target);
    out.source_attributions = diff(
        &seq.source_attributions,
        &other.source_attributions,
        "source_attributions",
    )?;
    out.target_attributions = diff(
        &seq.target_attributions,
        &other.target_attributions,
        "target_attributions",
    )?;
    for (k, v) in out.step_scores.iter_mut() {
        let o = other
            .step_scores
            .get(k)
            .filter(|o| o.len() == v.len())
            .ok_or_else(|| {
                Error::invalid_arg(
                    "paired_attr",
                    format!("step score `{k}` missing or of another length"),
                )
            })?;
        v.iter_mut().zip(o).for_each(|(x, y)| *x = y - *x);
    }
    for (k, v) in out.sequence_scores.iter_mut() {
        let o = other.sequence_scores.get(k).ok_or_else(|| {
            Error::invalid_arg("paired_attr", format!("sequence score `{k}` missing"))
        })?;
        *v = nd::zip_with(v, o, &format!("sequence score `{k}`"), |x, y| y - x)?;
    }
    out.aggregations.push("pair".into());
    Ok(out)
}

// ------------------------------------------------------------------ slices

fn apply_slices(
    seq: &SequenceAttribution,
    source_spans: Option<&[Span]>,
    target_spans: Option<&[Span]>,
) -> Result<SequenceAttribution> {
    let (start, end) = (seq.attr_pos_start, seq.attr_pos_end);
    // Generated tokens are always kept: the first span reaching them is extended to attr_pos_end.
    let mut new_target: Vec<Span> = Vec::new();
    let mut gen_added = false;
    for &(s, e) in target_spans.unwrap_or(&[]) {
        if e > start {
            if !gen_added {
                new_target.push((s.min(start), end));
                gen_added = true;
            }
        } else {
            new_target.push((s, e));
        }
    }
    if !gen_added && end > start {
        new_target.push((start, end));
    }
    validate_spans(seq.target.len(), &new_target, "target_spans")?;
    let source_spans: Vec<Span> = match (&seq.source, &seq.source_attributions) {
        (_, None) => new_target
            .iter()
            .map(|&(s, e)| (s, e.min(start)))
            .filter(|s| s.1 > s.0)
            .collect(),
        (Some(src), Some(_)) => source_spans.map_or_else(|| vec![(0, src.len())], <[Span]>::to_vec),
        (None, Some(_)) => vec![],
    };
    if seq.source_attributions.is_some() {
        validate_spans(
            seq.source.as_ref().map_or(0, Vec::len),
            &source_spans,
            "source_spans",
        )?;
    }
    let slice_rows = |a: &Array, spans: &[Span], what: &str| -> Result<Array> {
        let parts = spans
            .iter()
            .map(|&(s, e)| {
                if e > a.shape()[0] {
                    return Err(Error::invalid_arg(
                        what,
                        format!("span ({s}, {e}) beyond {} rows", a.shape()[0]),
                    ));
                }
                nd::rows(a, s, e)
            })
            .collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            let mut shape = a.shape().to_vec();
            shape[0] = 0;
            return Ok(Array::full(shape, 0.0));
        }
        nd::concat0(&parts, what)
    };
    let mut out = seq.clone();
    if seq.source_attributions.is_some()
        && let Some(src) = &seq.source
    {
        out.source = Some(
            source_spans
                .iter()
                .flat_map(|&(s, e)| src[s..e].iter().cloned())
                .collect(),
        );
    }
    out.target = new_target
        .iter()
        .flat_map(|&(s, e)| seq.target[s..e].iter().cloned())
        .collect();
    out.source_attributions = seq
        .source_attributions
        .as_ref()
        .map(|a| slice_rows(a, &source_spans, "source_attributions"))
        .transpose()?;
    out.target_attributions = seq
        .target_attributions
        .as_ref()
        .map(|a| slice_rows(a, &new_target, "target_attributions"))
        .transpose()?;
    out.sequence_scores = seq
        .sequence_scores
        .iter()
        .map(|(k, v)| {
            let r = if k.starts_with("decoder") {
                slice_rows(v, &new_target, k)
            } else if k.starts_with("encoder") {
                let parts = source_spans
                    .iter()
                    .map(|&(s, e)| {
                        let r = slice_rows(v, &[(s, e)], k)?;
                        if r.ndim() < 2 {
                            return Ok(r);
                        }
                        nd::select_axis(&r, 1, &(s..e).collect::<Vec<_>>())
                    })
                    .collect::<Result<Vec<_>>>()?;
                nd::concat0(&parts, k)
            } else {
                slice_rows(v, &source_spans, k)
            }?;
            Ok((k.clone(), r))
        })
        .collect::<Result<_>>()?;
    let new_start: usize = new_target
        .iter()
        .map(|&(s, e)| e.min(start).saturating_sub(s))
        .sum();
    out.attr_pos_start = new_start;
    out.attr_pos_end = new_start + seq.n_steps();
    out.aggregations.push("slices".into());
    Ok(out)
}
