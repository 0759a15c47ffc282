//! Inseq's `prepare_outputs`: the output context and current output, given or generated.

use inseq_core::{Error, Result};
use inseq_models::{GenerationOptions, ModelKind, generate_greedy};

use super::templates::{Resolved, concat_with_sep};
use super::tokens::{Specials, decoder_start};
use super::{ContextArgs, ContextCallbacks, OutputContextStrategy, split_output_context};
use crate::AttributionModel;

/// Greedy generation decoded without the special tokens not kept.
fn generate_text(
    model: &AttributionModel,
    source: Option<&[usize]>,
    prefix: &[usize],
    mut generation: GenerationOptions,
    specials: &Specials,
) -> Result<String> {
    if generation.eos_token_ids.is_empty() {
        generation.eos_token_ids = model.end_token_ids();
    }
    let new = generate_greedy(model.model(), source, prefix, generation)?;
    let kept: Vec<usize> = new.into_iter().filter(|&t| !specials.dropped(t)).collect();
    model.tokenizer().decode(&kept, false)
}

/// Inseq's `prepare_outputs`: the final (output context, current output).
pub(super) fn prepare_outputs(
    model: &AttributionModel,
    args: &ContextArgs,
    r: &Resolved,
    input_full: &str,
    specials: &Specials,
    callbacks: &mut dyn ContextCallbacks,
) -> Result<(Option<String>, String)> {
    let use_out_ctx = r.has_output_context;
    let given_context = args.output_context_text.as_deref().map(str::trim);
    let given_current = args.output_current_text.as_deref().map(str::trim);
    if given_context.is_some() == use_out_ctx
        && let Some(current) = given_current
    {
        return Ok((given_context.map(String::from), current.to_string()));
    }
    let template = OutputTemplate::new(&r.output_template, use_out_ctx);
    let generated = generate_output(model, args, &template, input_full, given_context, specials)?;
    let generated = template.strip(generated, given_context.is_none())?;
    // Settings 3, 4: the generation is the current output.
    if given_context.is_some() == use_out_ctx {
        let current = generated.trim().to_string();
        if current.is_empty() {
            return Err(Error::InvalidInput(
                "the model generated an empty output".into(),
            ));
        }
        return Ok((given_context.map(String::from), current));
    }
    // Settings 5, 6: split the generation into output context and current output.
    let (context, current) = split_generated(args, &template, &generated, callbacks)?;
    match given_current {
        Some(c) => Ok((Some(context), c.to_string())),
        None if current.is_empty() => Err(Error::InvalidInput(format!(
            "the model produced an empty current output given the output context `{context}`; if the \
             model does not generate a context naturally, force one with --output-context-text"
        ))),
        None => Ok((Some(context), current)),
    }
}

/// The output template cut at its slots: `{prefix}{context}{separator}{current}{suffix}`.
struct OutputTemplate<'a> {
    template: &'a str,
    /// Everything before `{current}`.
    before_current: &'a str,
    prefix: &'a str,
    separator: &'a str,
    suffix: &'a str,
}

impl<'a> OutputTemplate<'a> {
    fn new(template: &'a str, use_out_ctx: bool) -> Self {
        let (before_current, suffix) = template.split_once("{current}").unwrap_or((template, ""));
        let (prefix, separator) = match use_out_ctx {
            true => before_current
                .split_once("{context}")
                .unwrap_or((before_current, "")),
            false => (before_current, ""),
        };
        Self {
            template,
            before_current,
            prefix,
            separator,
            suffix,
        }
    }

    /// The generated text without the template's prefix (when the context was generated too) and
    /// suffix.
    fn strip(&self, generated: String, context_generated: bool) -> Result<String> {
        let (template, prefix) = (self.template, self.prefix.trim_start());
        let mut generated = generated.trim_start().to_string();
        if context_generated && !prefix.is_empty() {
            generated = generated
                .strip_prefix(prefix)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "output template `{template}` has prefix `{prefix}` but the output `{generated}` does \
                         not start with it: check the template, or force the output context/current output"
                    ))
                })?
                .to_string();
        }
        let suffix = self.suffix.trim_end();
        if suffix.is_empty() {
            return Ok(generated);
        }
        let trimmed = generated.trim_end();
        trimmed.strip_suffix(suffix).map(String::from).ok_or_else(|| {
            Error::InvalidInput(format!(
                "output template `{template}` has suffix `{suffix}` but the output `{generated}` does \
                 not end with it: check the template, or force the current output"
            ))
        })
    }
}

/// Generates the output after the input (and the given output context, forced before it).
fn generate_output(
    model: &AttributionModel,
    args: &ContextArgs,
    template: &OutputTemplate,
    input_full: &str,
    given_context: Option<&str>,
    specials: &Specials,
) -> Result<String> {
    let tok = model.tokenizer();
    let generation = args.generation.clone();
    // Settings 3 (and 6 is not reached here): the output context is forced before generating.
    let ctx_prefix =
        given_context.map(|ctx| template.before_current.trim().replace("{context}", ctx));
    match model.model().kind() {
        ModelKind::DecoderOnly => {
            let sep = args.decoder_input_output_separator.as_str();
            let after = ctx_prefix.as_deref().unwrap_or("");
            let (prompt, _) = concat_with_sep(input_full, after, sep);
            let ids = tok.encode(prompt.trim_end_matches(' '), true)?;
            generate_text(model, None, &ids, generation, specials)
        }
        ModelKind::EncoderDecoder => {
            let source = tok.encode(input_full, true)?;
            let dec = match &ctx_prefix {
                Some(p) => [vec![decoder_start(model)?], tok.encode_target(p, false)?].concat(),
                None => vec![],
            };
            generate_text(model, Some(&source), &dec, generation, specials)
        }
    }
}

/// Splits a generated text into (output context, current output), as the strategy says.
fn split_generated(
    args: &ContextArgs,
    template: &OutputTemplate,
    generated: &str,
    callbacks: &mut dyn ContextCallbacks,
) -> Result<(String, String)> {
    let generated = generated.trim();
    if generated.is_empty() {
        return Err(Error::InvalidInput(
            "the model generated no text to split into output context and current output: pass the \
             output context with --output-context-text"
                .into(),
        ));
    }
    let separator = template.separator;
    let candidate = split_output_context(generated, separator);
    let context = match (candidate, args.handle_output_context_strategy) {
        (Some(c), OutputContextStrategy::Auto) => c,
        (candidate, _) => callbacks.output_context(generated, candidate.as_deref())?,
    };
    let context = context.trim().to_string();
    if !generated.starts_with(&context) {
        return Err(Error::InvalidInput(format!(
            "the output context `{context}` is not the start of the generated output `{generated}`"
        )));
    }
    // As Inseq: the current output starts after the context and the template's separator.
    let taken = if context.is_empty() {
        separator.trim().len()
    } else {
        context.len() + separator.len()
    };
    let mut cut = taken.min(generated.len());
    while !generated.is_char_boundary(cut) {
        cut += 1;
    }
    let current = generated[cut..].trim().to_string();
    Ok((context, current))
}
