//! PECoRe's phases: the outputs, where everything lands in the token sequences (the layout),
//! CTI over the current output, and CCI for each context-sensitive token.

use std::collections::BTreeMap;
use std::ops::Range;

use inseq_core::{Array, AttributionOutput, CciCues, CciOutput, ContextInfo, Cue, Error, Result};
use inseq_core::{ContextOutput, SequenceAttribution};
use inseq_models::{GenerationOptions, generate_greedy};

use super::outputs::prepare_outputs;
use super::templates::{Filled, Resolved, concat_with_sep, fill_template, resolve, shift};
use super::tokens::{Encoded, Specials, decoder_start, encode_offsets};
use super::{ContextArgs, ContextCallbacks, NonInteractive, rank_above, scores_threshold};
use crate::{AttributeOptions, AttributionModel, ContrastAlignment, aggregate};

/// Runs PECoRe on `model` (decoder-only or encoder-decoder) with an input and/or output context,
/// without interaction (see [`attribute_context_with`]).
pub fn attribute_context(model: &AttributionModel, args: &ContextArgs) -> Result<ContextOutput> {
    attribute_context_with(model, args, &mut NonInteractive)
}

/// Runs PECoRe with `callbacks` to ask for an output context and to see intermediate outputs.
pub fn attribute_context_with(
    model: &AttributionModel,
    args: &ContextArgs,
    callbacks: &mut dyn ContextCallbacks,
) -> Result<ContextOutput> {
    let r = resolve(args)?;
    // Fail on an unknown or non-contrastive metric before any generation.
    let contrastive = is_contrastive(model, &args.attributed_fn)?;
    let specials = Specials::new(model, &args.special_tokens_to_keep)?;
    let input_full = fill_template(
        &r.input_template,
        &args.input_current_text,
        r.input_context.as_deref(),
    );
    let (output_context, output_current) =
        prepare_outputs(model, args, &r, &input_full.text, &specials, callbacks)?;
    if output_current.is_empty() {
        return Err(Error::InvalidInput("the output to explain is empty".into()));
    }
    let outputs = (&output_context, output_current.as_str());
    let l = Layout::new(model, args, &r, specials, input_full, outputs)?;
    let cti = run_cti(model, args, &l, callbacks)?;
    let mut cci_scores = Vec::with_capacity(cti.sensitive.len());
    let mut cues = Vec::with_capacity(cti.sensitive.len());
    for &i in &cti.sensitive {
        let (scores, token_cues) = run_cci(model, args, &l, &cti, i, contrastive, callbacks)?;
        cci_scores.push(scores);
        cues.push(token_cues);
    }
    let info = context_info(model, args, &r, &output_context, &output_current);
    Ok(ContextOutput {
        input_context: r.input_context.clone(),
        input_context_tokens: l.input_context.tokens,
        output_context,
        output_context_tokens: l.output_context.tokens,
        output_current,
        output_current_tokens: cti.tokens,
        cti_scores: cti.scores,
        cci_scores,
        cti_threshold: cti.threshold,
        cues,
        info: Some(info),
    })
}

/// Whether the CCI function is contrastive: a property of the registered step function, so a
/// user's own step function works by id too.
fn is_contrastive(model: &AttributionModel, attributed_fn: &str) -> Result<bool> {
    Ok(model.step_registry().get(attributed_fn)?.is_contrastive())
}

/// (contextless position, contextual position) pairs.
type Pairs = Vec<(usize, usize)>;

/// The CCI scores of the input context and of the output context tokens.
type ContextScores = (Option<Vec<f32>>, Option<Vec<f32>>);

/// A context's token positions (in the source for an encoder-decoder input context, else in the
/// contextual target) and their strings.
#[derive(Default)]
struct ContextTokens {
    positions: Option<Vec<usize>>,
    tokens: Option<Vec<String>>,
}

/// Where the texts of one run land in the token sequences.
struct Layout {
    enc_dec: bool,
    /// 1 for encoder-decoder targets (they start with the decoder start token), else 0.
    dec_shift: usize,
    input_full: String,
    /// The contextual target (decoder-only: input and output joined), its encoding and ids.
    ctx_target_text: String,
    ctx_enc: Encoded,
    ctx_target_ids: Vec<usize>,
    /// The contextless input as the CTI run's input, as the CCI contrast's source, and its target.
    cti_input: String,
    ctxless_input: String,
    ctxless_target_text: String,
    ctxless_target_ids: Vec<usize>,
    /// Positions of the current output's tokens in the contextless target, and their range.
    cur_ctxless: Vec<usize>,
    span: Range<usize>,
    /// (contextless position, contextual position) of each current output token.
    pairs: Pairs,
    input_context: ContextTokens,
    output_context: ContextTokens,
    /// Whether the output template has a `{context}` slot.
    has_output_context: bool,
    specials: Specials,
}

impl Layout {
    fn new(
        model: &AttributionModel,
        args: &ContextArgs,
        r: &Resolved,
        specials: Specials,
        input_full: Filled,
        (output_context, output_current): (&Option<String>, &str),
    ) -> Result<Self> {
        let enc_dec = model.model().kind() == inseq_models::ModelKind::EncoderDecoder;
        let dec_shift = usize::from(enc_dec);
        let sep = args.decoder_input_output_separator.as_str();
        let output_full = fill_template(
            &r.output_template,
            output_current,
            output_context.as_deref(),
        );
        let (ctx_target_text, out_offset) = if enc_dec {
            (output_full.text.clone(), 0)
        } else {
            concat_with_sep(&input_full.text, &output_full.text, sep)
        };
        let ctxless = Contextless::new(args, r, output_current, enc_dec);
        let ctx_enc = encode_offsets(model, &ctx_target_text)?;
        let ctxless_enc = encode_offsets(model, &ctxless.target_text)?;
        let with_start = |ids: &[usize]| -> Result<Vec<usize>> {
            let start = if enc_dec {
                vec![decoder_start(model)?]
            } else {
                vec![]
            };
            Ok(start.into_iter().chain(ids.iter().copied()).collect())
        };
        let cur_ctx = ctx_enc.positions(
            &shift(&output_full.current, out_offset),
            dec_shift,
            &specials,
        );
        let cur_ctxless = ctxless_enc.positions(&ctxless.current, dec_shift, &specials);
        let (span, pairs) = align_current(&cur_ctxless, &cur_ctx, output_current)?;
        let mut l = Self {
            enc_dec,
            dec_shift,
            input_full: input_full.text.clone(),
            ctx_target_ids: with_start(&ctx_enc.ids)?,
            ctx_target_text,
            ctx_enc,
            cti_input: ctxless.cti_input,
            ctxless_input: ctxless.input,
            ctxless_target_text: ctxless.target_text,
            ctxless_target_ids: with_start(&ctxless_enc.ids)?,
            cur_ctxless,
            span,
            pairs,
            input_context: ContextTokens::default(),
            output_context: ContextTokens::default(),
            has_output_context: r.has_output_context,
            specials,
        };
        l.locate_contexts(model, &input_full, &output_full, out_offset)?;
        Ok(l)
    }

    /// Finds the input and output context tokens.
    fn locate_contexts(
        &mut self,
        model: &AttributionModel,
        input_full: &Filled,
        output_full: &Filled,
        out_offset: usize,
    ) -> Result<()> {
        let input_positions = match &input_full.context {
            None => None,
            Some(span) if self.enc_dec => {
                Some(encode_offsets(model, &input_full.text)?.positions(span, 0, &self.specials))
            }
            Some(span) => Some(self.ctx_enc.positions(span, 0, &self.specials)),
        };
        if input_positions.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::InvalidInput(
                "the input context produced no tokens".into(),
            ));
        }
        let output_positions = output_full.context.as_ref().map(|span| {
            self.ctx_enc
                .positions(&shift(span, out_offset), self.dec_shift, &self.specials)
        });
        let tok = model.tokenizer();
        let source_ids = match self.enc_dec {
            true => Some(tok.encode(&input_full.text, true)?),
            false => None,
        };
        let strings = |ids: &[usize], ps: &Vec<usize>| -> Vec<String> {
            ps.iter().map(|&p| tok.id_to_token(ids[p])).collect()
        };
        let input_ids = source_ids.as_deref().unwrap_or(&self.ctx_target_ids);
        self.input_context = ContextTokens {
            tokens: input_positions.as_ref().map(|ps| strings(input_ids, ps)),
            positions: input_positions,
        };
        self.output_context = ContextTokens {
            tokens: output_positions
                .as_ref()
                .map(|ps| strings(&self.ctx_target_ids, ps)),
            positions: output_positions,
        };
        Ok(())
    }
}

/// The contextless input and target texts, and where the current output is in the target.
struct Contextless {
    input: String,
    cti_input: String,
    target_text: String,
    current: Range<usize>,
}

impl Contextless {
    fn new(args: &ContextArgs, r: &Resolved, output_current: &str, enc_dec: bool) -> Self {
        let input = r
            .contextless_input
            .replace("{current}", &args.input_current_text);
        let output = fill_template(&r.contextless_output, output_current, None);
        if enc_dec {
            return Self {
                cti_input: input.clone(),
                input,
                target_text: output.text,
                current: output.current,
            };
        }
        let sep = args.decoder_input_output_separator.as_str();
        let (with_sep, _) = concat_with_sep(&input, "", sep);
        Self {
            cti_input: with_sep.trim_end_matches(' ').to_string(),
            target_text: format!("{with_sep}{}", output.text),
            current: shift(&output.current, with_sep.len()),
            input,
        }
    }
}

/// The contextless span of the current output and each of its positions paired with a contextual
/// one: right-aligned on the current output, as Inseq. When the current output has more tokens
/// without context than with it (`to` alone vs ` to` after a context), the extra leading ones map
/// to the first contextual current output token (Inseq would pair them with output context tokens).
fn align_current(
    cur_ctxless: &[usize],
    cur_ctx: &[usize],
    output_current: &str,
) -> Result<(Range<usize>, Pairs)> {
    let (Some(&start), Some(&last), Some(&ctx_first), Some(&ctx_last)) = (
        cur_ctxless.first(),
        cur_ctxless.last(),
        cur_ctx.first(),
        cur_ctx.last(),
    ) else {
        return Err(Error::InvalidInput(format!(
            "the current output `{output_current}` produced no tokens"
        )));
    };
    let end = last + 1;
    let pairs = (start..end)
        .map(|t| (t, (ctx_last + 1).saturating_sub(end - t).max(ctx_first)))
        .collect();
    Ok((start..end, pairs))
}

/// What CTI found: a score per current output token and the context-sensitive ones.
struct Cti {
    tokens: Vec<String>,
    scores: Vec<f32>,
    threshold: f32,
    sensitive: Vec<usize>,
}

/// CTI: the contextless run, contrasted with the contextual one, scoring the current output.
fn run_cti(
    model: &AttributionModel,
    args: &ContextArgs,
    l: &Layout,
    callbacks: &mut dyn ContextCallbacks,
) -> Result<Cti> {
    let metric = &args.context_sensitivity_metric;
    let cti = model.attribute_with(
        "dummy",
        &[l.cti_input.as_str()],
        &AttributeOptions {
            targets: Some(vec![l.ctxless_target_text.clone()]),
            attr_pos_start: Some(l.span.start as isize),
            attr_pos_end: Some(l.span.end as isize),
            step_scores: vec![metric.clone()],
            contrast_targets: Some(vec![l.ctx_target_text.clone()]),
            contrast_sources: l.enc_dec.then(|| vec![l.input_full.clone()]),
            contrast_alignments: Some(vec![ContrastAlignment::Pairs(l.pairs.clone())]),
            ..Default::default()
        },
    )?;
    check_ids("CTI", &cti, &l.ctxless_target_ids)?;
    callbacks.intermediate("CTI", &cti);
    let all = cti.sequence_attributions[0]
        .step_scores
        .get(metric)
        .ok_or_else(|| Error::Numerical("CTI produced no scores".into()))?;
    let scores: Vec<f32> = l
        .cur_ctxless
        .iter()
        .map(|&p| all[p - l.span.start])
        .collect();
    let tok = model.tokenizer();
    let tokens = l
        .cur_ctxless
        .iter()
        .map(|&p| tok.id_to_token(l.ctxless_target_ids[p]))
        .collect();
    let threshold = scores_threshold(&scores, args.context_sensitivity_std_threshold);
    let sensitive = rank_above(&scores, threshold, args.context_sensitivity_topk);
    Ok(Cti {
        tokens,
        scores,
        threshold,
        sensitive,
    })
}

fn check_ids(what: &str, out: &AttributionOutput, expected: &[usize]) -> Result<()> {
    let got = &out.sequence_attributions[0].target;
    // Contrastive positions show `contrast → token` with id -1.
    let same = got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(t, &e)| t.id < 0 || t.id as usize == e);
    if !same {
        return Err(Error::InvalidInput(format!(
            "{what}: the text does not tokenise the same way twice (got {} tokens, expected {}); \
             try other templates or separators",
            got.len(),
            expected.len()
        )));
    }
    Ok(())
}

/// CCI for the `i`-th current output token: its prediction, with all contexts present, attributed
/// to the context tokens (contrasted with the contextless prediction for a contrastive function).
fn run_cci(
    model: &AttributionModel,
    args: &ContextArgs,
    l: &Layout,
    cti: &Cti,
    i: usize,
    contrastive: bool,
    callbacks: &mut dyn ContextCallbacks,
) -> Result<(CciOutput, CciCues)> {
    let ctxless_pos = l.cur_ctxless[i];
    let ctx_pos = l.pairs[ctxless_pos - l.span.start].1;
    let mut opts = AttributeOptions {
        targets: Some(vec![l.ctx_target_text.clone()]),
        attributed_fn: args.attributed_fn.clone(),
        attr_pos_start: Some(ctx_pos as isize),
        attr_pos_end: Some(ctx_pos as isize + 1),
        attribute_target: l.enc_dec && l.has_output_context,
        ..Default::default()
    };
    let contrast = match contrastive {
        true => Some(contextless_prediction(
            model,
            l,
            ctxless_pos,
            ctx_pos,
            &mut opts,
        )?),
        false => None,
    };
    let raw = model.attribute(&[l.input_full.as_str()], &opts)?;
    check_ids("CCI", &raw, &l.ctx_target_ids)?;
    let agg = aggregate(&raw)?;
    let stage = format!("CCI {}", inseq_viz::display_token(&cti.tokens[i]));
    callbacks.intermediate(&stage, &agg);
    let (input_scores, output_scores) = context_scores(&agg.sequence_attributions[0], l)?;
    let token_cues = pick_cues(args, l, i, &input_scores, &output_scores);
    let (contrast_token, contextless_output) = contrast.unzip();
    let scores = CciOutput {
        cti_idx: i,
        cti_token: cti.tokens[i].clone(),
        cti_score: cti.scores[i],
        contextual_output: contextual_output(l, ctx_pos),
        contrast_token,
        contextless_output,
        input_context_scores: input_scores,
        output_context_scores: output_scores,
    };
    Ok((scores, token_cues))
}

/// The contextual text up to and including the token at `ctx_pos`.
fn contextual_output(l: &Layout, ctx_pos: usize) -> String {
    let text = &l.ctx_target_text;
    let mut end = l.ctx_enc.offsets[ctx_pos - l.dec_shift].1.min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    text[..end].trim_start().to_string()
}

/// The token the model predicts at `ctxless_pos` without the contexts, set as the contrast of
/// `opts`; returns it and the contextless text ending with it.
fn contextless_prediction(
    model: &AttributionModel,
    l: &Layout,
    ctxless_pos: usize,
    ctx_pos: usize,
    opts: &mut AttributeOptions,
) -> Result<(String, String)> {
    let tok = model.tokenizer();
    let source = match l.enc_dec {
        true => Some(tok.encode(&l.ctxless_input, true)?),
        false => None,
    };
    let prefix = &l.ctxless_target_ids[..ctxless_pos];
    let generation = GenerationOptions {
        max_new_tokens: 1,
        ..Default::default()
    };
    let next = generate_greedy(model.model(), source.as_deref(), prefix, generation)?;
    let &c = next.first().ok_or_else(|| {
        Error::InvalidInput("the model predicted no token without context".into())
    })?;
    let body: Vec<usize> = prefix[l.dec_shift..]
        .iter()
        .copied()
        .filter(|&t| !l.specials.dropped(t))
        .chain([c])
        .collect();
    let text = tok.decode(&body, false)?;
    let c_enc = encode_offsets(model, &text)?;
    let c_pos = (0..c_enc.ids.len())
        .rev()
        .find(|&p| !c_enc.added[p])
        .ok_or_else(|| Error::InvalidInput(format!("contextless output `{text}` has no tokens")))?;
    opts.contrast_targets = Some(vec![text.clone()]);
    opts.contrast_sources = l.enc_dec.then(|| vec![l.ctxless_input.clone()]);
    let pair = (ctx_pos, c_pos + l.dec_shift);
    opts.contrast_alignments = Some(vec![ContrastAlignment::Pairs(vec![pair])]);
    Ok((tok.id_to_token(c_enc.ids[c_pos]), text))
}

/// The aggregated CCI scores of the input and output context tokens.
fn context_scores(seq: &SequenceAttribution, l: &Layout) -> Result<ContextScores> {
    let input_array = match l.enc_dec {
        true => seq.source_attributions.as_ref(),
        false => seq.target_attributions.as_ref(),
    };
    let input = l
        .input_context
        .positions
        .as_deref()
        .map(|ps| score_column(input_array, ps, "input context"))
        .transpose()?;
    let output = l
        .output_context
        .positions
        .as_deref()
        .map(|ps| score_column(seq.target_attributions.as_ref(), ps, "output context"))
        .transpose()?;
    Ok((input, output))
}

/// The scores at positions `ps` of the (single) attributed step's column.
fn score_column(a: Option<&Array>, ps: &[usize], what: &str) -> Result<Vec<f32>> {
    let a = a.ok_or_else(|| {
        Error::Unsupported(format!(
            "the attribution method returned no scores for the {what}"
        ))
    })?;
    if ps.iter().any(|&p| p >= a.shape()[0]) || a.shape().get(1).is_none_or(|&s| s == 0) {
        return Err(Error::ShapeMismatch {
            what: format!("{what} attributions"),
            expected: vec![ps.iter().max().map_or(0, |m| m + 1), 1],
            found: a.shape().to_vec(),
        });
    }
    let v: Vec<f32> = ps.iter().map(|&p| a.get(&[p, 0])).collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::Numerical(format!("non-finite {what} scores: {v:?}")));
    }
    Ok(v)
}

/// The cues of token `i`: context tokens above `mean + k·std` of all its context scores.
fn pick_cues(
    args: &ContextArgs,
    l: &Layout,
    i: usize,
    input_scores: &Option<Vec<f32>>,
    output_scores: &Option<Vec<f32>>,
) -> CciCues {
    let all: Vec<f32> = input_scores
        .iter()
        .chain(output_scores.iter())
        .flatten()
        .copied()
        .collect();
    let threshold = scores_threshold(&all, args.attribution_std_threshold);
    let pick = |scores: &Option<Vec<f32>>, tokens: &Option<Vec<String>>| -> Vec<Cue> {
        let (Some(s), Some(t)) = (scores, tokens) else {
            return vec![];
        };
        rank_above(s, threshold, args.attribution_topk)
            .into_iter()
            .map(|j| Cue {
                index: j,
                token: t[j].clone(),
                score: s[j],
            })
            .collect()
    };
    CciCues {
        cti_idx: i,
        threshold,
        input_context: pick(input_scores, &l.input_context.tokens),
        output_context: pick(output_scores, &l.output_context.tokens),
    }
}

/// The arguments of the run, as Inseq's `info`.
fn context_info(
    model: &AttributionModel,
    args: &ContextArgs,
    r: &Resolved,
    output_context: &Option<String>,
    output_current: &str,
) -> ContextInfo {
    ContextInfo {
        model_name_or_path: None,
        attribution_method: Some(model.method_id().to_string()),
        attributed_fn: Some(args.attributed_fn.clone()),
        context_sensitivity_metric: args.context_sensitivity_metric.clone(),
        handle_output_context_strategy: args.handle_output_context_strategy.to_string(),
        special_tokens_to_keep: args.special_tokens_to_keep.clone(),
        decoder_input_output_separator: args.decoder_input_output_separator.clone(),
        context_sensitivity_std_threshold: Some(args.context_sensitivity_std_threshold),
        context_sensitivity_topk: args.context_sensitivity_topk,
        attribution_std_threshold: Some(args.attribution_std_threshold),
        attribution_topk: args.attribution_topk,
        input_current_text: args.input_current_text.clone(),
        input_context_text: r.input_context.clone(),
        input_template: r.input_template.clone(),
        output_context_text: output_context.clone(),
        output_current_text: Some(output_current.to_string()),
        output_template: r.output_template.clone(),
        contextless_input_current_text: r.contextless_input.clone(),
        contextless_output_current_text: r.contextless_output.clone(),
        generation_kwargs: BTreeMap::from([(
            "max_new_tokens".to_string(),
            serde_json::Value::from(args.generation.max_new_tokens),
        )]),
        has_input_context: r.has_input_context,
        has_output_context: r.has_output_context,
    }
}
