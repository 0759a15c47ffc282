//! Context attribution with PECoRe (Sarti et al., 2024, "Quantifying the Plausibility of Context
//! Reliance in Neural Machine Translation", <https://arxiv.org/abs/2310.01188>), as Inseq's
//! `attribute-context` does it:
//!
//! 1. **CTI** (context-sensitive token identification): each token of the output is scored with a
//!    contrastive metric (default `kl_divergence`) between the model's prediction with and without
//!    the input context; tokens scoring above `mean + k·std` are context-sensitive.
//! 2. **CCI** (contextual cue imputation): the prediction of each context-sensitive token is
//!    attributed with the chosen method (optionally contrasting it with the token the model would
//!    produce without context); context tokens scoring above `mean + k·std` are its cues.

use serde::{Deserialize, Serialize};

use inseq_core::{Error, Result};
use inseq_models::{ModelKind, generate_greedy};

use crate::{AttributeOptions, AttributionModel, aggregate};

/// Inputs and settings of [`attribute_context`]; defaults follow Inseq's `attribute-context`.
#[derive(Debug, Clone)]
pub struct ContextArgs {
    /// The context preceding the current input.
    pub input_context_text: String,
    /// The current input.
    pub input_current_text: String,
    /// The output to explain (generated greedily when `None`).
    pub output_current_text: Option<String>,
    /// Template joining context and current input (`{context} {current}`).
    pub input_template: String,
    /// Metric for CTI (a contrastive step function id; default `kl_divergence`).
    pub context_sensitivity_metric: String,
    /// `k` in the CTI threshold `mean + k·std`.
    pub context_sensitivity_std_threshold: f64,
    /// Keep at most this many context-sensitive tokens.
    pub context_sensitivity_topk: Option<usize>,
    /// The function attributed in CCI (`probability` by default; `contrast_prob_diff` contrasts with
    /// the token predicted without context).
    pub attributed_fn: String,
    /// `k` in the CCI threshold `mean + k·std`.
    pub attribution_std_threshold: f64,
    /// Keep at most this many cues per token.
    pub attribution_topk: Option<usize>,
    /// Greedy generation settings for the output and contextless predictions.
    pub generation: inseq_models::GenerationOptions,
}

impl Default for ContextArgs {
    fn default() -> Self {
        Self {
            input_context_text: String::new(),
            input_current_text: String::new(),
            output_current_text: None,
            input_template: "{context} {current}".into(),
            context_sensitivity_metric: "kl_divergence".into(),
            context_sensitivity_std_threshold: 1.0,
            context_sensitivity_topk: None,
            attributed_fn: "probability".into(),
            attribution_std_threshold: 1.0,
            attribution_topk: None,
            generation: inseq_models::GenerationOptions::default(),
        }
    }
}

/// One context-sensitive token and its contextual cues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CciOutput {
    /// Index of the token among the output tokens.
    pub cti_idx: usize,
    /// The token.
    pub cti_token: String,
    /// Its CTI score.
    pub cti_score: f32,
    /// The token the model predicts at that position without context (contrastive `attributed_fn` only).
    pub contrast_token: Option<String>,
    /// CCI score of every input context token.
    pub input_context_scores: Vec<f32>,
    /// The salient cues: `(context token index, token, score)`, highest first.
    pub cues: Vec<(usize, String, f32)>,
}

/// The result of [`attribute_context`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextOutput {
    /// Input context text.
    pub input_context: String,
    /// Its tokens.
    pub input_context_tokens: Vec<String>,
    /// The current output explained.
    pub output_current: String,
    /// Its tokens.
    pub output_current_tokens: Vec<String>,
    /// CTI score of each output token.
    pub cti_scores: Vec<f32>,
    /// The CTI threshold used.
    pub cti_threshold: f32,
    /// CCI results for each context-sensitive token, most sensitive first.
    pub cci: Vec<CciOutput>,
}

/// `mean + k·std` (sample standard deviation), as Inseq; the mean alone for `k = 0` or one score.
pub fn scores_threshold(scores: &[f32], k: f64) -> f32 {
    if scores.is_empty() {
        return 0.0;
    }
    let n = scores.len() as f64;
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
    if k == 0.0 || scores.len() == 1 {
        return mean as f32;
    }
    let var = scores
        .iter()
        .map(|&s| (s as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    (mean + k * var.sqrt()) as f32
}

/// Indices of `scores` with `|score| >= threshold`, by decreasing `|score|`, at most `topk`.
pub fn rank_above(scores: &[f32], threshold: f32, topk: Option<usize>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i].abs() >= threshold)
        .collect();
    idx.sort_by(|&a, &b| scores[b].abs().total_cmp(&scores[a].abs()));
    if let Some(k) = topk {
        idx.truncate(k);
    }
    idx
}

fn format_template(template: &str, current: &str, context: &str) -> Result<String> {
    if !template.contains("{current}") || !template.contains("{context}") {
        return Err(Error::invalid_arg(
            "input_template",
            "must contain {context} and {current}",
        ));
    }
    Ok(template
        .replace("{context}", context)
        .replace("{current}", current))
}

/// Runs PECoRe on `model` (decoder-only or encoder-decoder) with an input context.
pub fn attribute_context(model: &AttributionModel, args: &ContextArgs) -> Result<ContextOutput> {
    if args.input_context_text.trim().is_empty() {
        return Err(Error::InvalidInput("input context text is empty".into()));
    }
    if args.input_current_text.trim().is_empty() {
        return Err(Error::InvalidInput("input current text is empty".into()));
    }
    let tok = model.tokenizer();
    let kind = model.model().kind();
    let full_input = format_template(
        &args.input_template,
        &args.input_current_text,
        &args.input_context_text,
    )?;
    let context_ids = tok.encode(&args.input_context_text, false)?;
    let full_input_ids = tok.encode(&full_input, true)?;
    let context_positions: Vec<usize> = match full_input_ids
        .windows(context_ids.len())
        .position(|w| w == context_ids)
    {
        Some(p) => (p..p + context_ids.len()).collect(),
        None => {
            return Err(Error::InvalidInput(
                "the input context is not tokenised the same inside the template; use a template where it stands alone"
                    .into(),
            ));
        }
    };
    // The output to explain.
    let output_current = match &args.output_current_text {
        Some(t) => t.trim().to_string(),
        None => {
            let (source, prefix) = match kind {
                ModelKind::DecoderOnly => (None, full_input_ids.clone()),
                ModelKind::EncoderDecoder => (Some(full_input_ids.as_slice()), vec![]),
            };
            let new = generate_greedy(model.model(), source, &prefix, args.generation)?;
            tok.decode(&new, true)?.trim().to_string()
        }
    };
    if output_current.is_empty() {
        return Err(Error::InvalidInput("the output to explain is empty".into()));
    }
    let join = |a: &str, b: &str| format!("{a} {b}");
    let (ctx_input, ctxless_input, ctx_target, ctxless_target) = match kind {
        ModelKind::DecoderOnly => (
            full_input.clone(),
            args.input_current_text.clone(),
            join(&full_input, &output_current),
            join(&args.input_current_text, &output_current),
        ),
        ModelKind::EncoderDecoder => (
            full_input.clone(),
            args.input_current_text.clone(),
            output_current.clone(),
            output_current.clone(),
        ),
    };
    // CTI: contextless run, contrasted with the contextual one, scoring each output token.
    let cti = model.attribute_with(
        "dummy",
        &[ctxless_input.as_str()],
        &AttributeOptions {
            targets: Some(vec![ctxless_target.clone()]),
            step_scores: vec![args.context_sensitivity_metric.clone()],
            contrast_targets: Some(vec![ctx_target.clone()]),
            contrast_sources: (kind == ModelKind::EncoderDecoder).then(|| vec![ctx_input.clone()]),
            ..Default::default()
        },
    )?;
    let cti_seq = &cti.sequence_attributions[0];
    let mut cti_scores = cti_seq.step_scores[&args.context_sensitivity_metric].clone();
    let ctxless_ids: Vec<usize> = cti_seq
        .target
        .iter()
        .map(|t| t.id.max(0) as usize)
        .collect();
    let mut out_tokens: Vec<String> = (cti_seq.attr_pos_start..cti_seq.attr_pos_end)
        .map(|p| tok.id_to_token(ctxless_ids[p]))
        .collect();
    let eos = model.model().info().eos_token_id;
    if kind == ModelKind::EncoderDecoder && ctxless_ids.last().copied() == eos && eos.is_some() {
        cti_scores.pop();
        out_tokens.pop();
    }
    let cti_threshold = scores_threshold(&cti_scores, args.context_sensitivity_std_threshold);
    let sensitive = rank_above(&cti_scores, cti_threshold, args.context_sensitivity_topk);
    // Positions in the contextual target, aligned right to left with the contextless one.
    let ctx_target_ids = match kind {
        ModelKind::DecoderOnly => tok.encode(&ctx_target, true)?,
        ModelKind::EncoderDecoder => ctxless_ids.clone(),
    };
    let contrastive = crate::StepRegistry::with_defaults()
        .get(&args.attributed_fn)?
        .id()
        .starts_with("contrast")
        || ["pcxmi", "kl_divergence", "in_context_pvi"].contains(&args.attributed_fn.as_str());
    let mut cci = Vec::new();
    for &i in &sensitive {
        let ctxless_pos = cti_seq.attr_pos_start + i;
        let ctx_pos = ctx_target_ids.len() - (ctxless_ids.len() - ctxless_pos);
        let target_text = tok.decode(&ctx_target_ids[..=ctx_pos], false)?;
        let mut opts = AttributeOptions {
            targets: Some(vec![target_text]),
            attributed_fn: args.attributed_fn.clone(),
            attr_pos_start: Some(ctx_pos),
            attr_pos_end: Some(ctx_pos + 1),
            ..Default::default()
        };
        let mut contrast_token = None;
        if contrastive {
            // The token the model predicts at this position without the context.
            let prefix = &ctxless_ids[..ctxless_pos];
            let (source, dec_prefix) = match kind {
                ModelKind::DecoderOnly => (None, prefix.to_vec()),
                ModelKind::EncoderDecoder => {
                    (Some(tok.encode(&ctxless_input, true)?), prefix.to_vec())
                }
            };
            let next = generate_greedy(
                model.model(),
                source.as_deref(),
                &dec_prefix,
                inseq_models::GenerationOptions {
                    max_new_tokens: 1,
                    ..Default::default()
                },
            )?;
            let mut ids = prefix.to_vec();
            ids.extend(&next);
            contrast_token = next.first().map(|&t| tok.id_to_token(t));
            let skip_start = usize::from(kind == ModelKind::EncoderDecoder);
            opts.contrast_targets = Some(vec![tok.decode(&ids[skip_start..], false)?]);
            if kind == ModelKind::EncoderDecoder {
                opts.contrast_sources = Some(vec![ctxless_input.clone()]);
            }
        }
        let raw = model.attribute(&[ctx_input.as_str()], &opts)?;
        let agg = aggregate(&raw)?;
        let seq = &agg.sequence_attributions[0];
        let scores = match kind {
            ModelKind::DecoderOnly => seq.target_attributions.as_ref(),
            ModelKind::EncoderDecoder => seq.source_attributions.as_ref(),
        }
        .ok_or_else(|| {
            Error::Unsupported("the attribution method returned no input scores".into())
        })?;
        let input_context_scores: Vec<f32> = context_positions
            .iter()
            .map(|&p| scores.get(&[p, 0]))
            .collect();
        let threshold = scores_threshold(&input_context_scores, args.attribution_std_threshold);
        let cues = rank_above(&input_context_scores, threshold, args.attribution_topk)
            .into_iter()
            .map(|j| (j, tok.id_to_token(context_ids[j]), input_context_scores[j]))
            .collect();
        cci.push(CciOutput {
            cti_idx: i,
            cti_token: out_tokens[i].clone(),
            cti_score: cti_scores[i],
            contrast_token,
            input_context_scores,
            cues,
        });
    }
    Ok(ContextOutput {
        input_context: args.input_context_text.clone(),
        input_context_tokens: context_ids.iter().map(|&i| tok.id_to_token(i)).collect(),
        output_current,
        output_current_tokens: out_tokens,
        cti_scores,
        cti_threshold,
        cci,
    })
}

impl ContextOutput {
    /// A plain-text report: output tokens with CTI scores (`*` marks context-sensitive ones)
    /// and the cues of each context-sensitive token.
    pub fn render_text(&self) -> String {
        let show = |t: &str| inseq_viz::display_token(t);
        let mut s = format!(
            "Context: {}\nOutput:  {}\n\nContext-sensitive tokens (CTI threshold {:.4}):\n",
            self.input_context, self.output_current, self.cti_threshold
        );
        for (i, (t, score)) in self
            .output_current_tokens
            .iter()
            .zip(&self.cti_scores)
            .enumerate()
        {
            let mark = if self.cci.iter().any(|c| c.cti_idx == i) {
                "*"
            } else {
                " "
            };
            s.push_str(&format!("  {mark} {:<16} {score:>10.4}\n", show(t)));
        }
        for c in &self.cci {
            let contrast = c
                .contrast_token
                .as_deref()
                .map(|t| format!(" (without context: {})", show(t)))
                .unwrap_or_default();
            s.push_str(&format!("\n`{}`{contrast} <- cues:", show(&c.cti_token)));
            if c.cues.is_empty() {
                s.push_str(" none above threshold");
            }
            for (_, t, score) in &c.cues {
                s.push_str(&format!(" {}({score:.3})", show(t)));
            }
            s.push('\n');
        }
        s
    }

    /// A self-contained HTML page with the same report.
    pub fn render_html(&self) -> String {
        let esc = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut body = format!(
            "<h1>Context attribution (PECoRe)</h1><p><b>Context:</b> {}</p><p><b>Output:</b> ",
            esc(&self.input_context)
        );
        for (i, t) in self.output_current_tokens.iter().enumerate() {
            let sensitive = self.cci.iter().any(|c| c.cti_idx == i);
            let style = if sensitive {
                " style=\"background:#f8b4b4\""
            } else {
                ""
            };
            body.push_str(&format!(
                "<span{style} title=\"CTI {:.4}\">{}</span> ",
                self.cti_scores[i],
                esc(&inseq_viz::display_token(t))
            ));
        }
        body.push_str("</p>");
        for c in &self.cci {
            let max = c
                .input_context_scores
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(1e-12);
            body.push_str(&format!(
                "<h2>{}</h2><p>",
                esc(&inseq_viz::display_token(&c.cti_token))
            ));
            for (j, t) in self.input_context_tokens.iter().enumerate() {
                let v = c.input_context_scores[j];
                body.push_str(&format!(
                    "<span style=\"background:rgba(230,60,60,{:.3})\" title=\"{v:.4}\">{}</span> ",
                    (v.abs() / max).min(1.0),
                    esc(&inseq_viz::display_token(t))
                ));
            }
            body.push_str("</p>");
        }
        format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>inseq context attribution</title></head><body style=\"font-family:sans-serif\">{body}</body></html>"
        )
    }
}
