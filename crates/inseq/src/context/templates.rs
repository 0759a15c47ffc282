//! Templates: filling `{context}` and `{current}`, and Inseq's checks and defaults of them.

use std::ops::Range;

use inseq_core::{Error, Result};

use super::{ContextArgs, OutputContextStrategy};

/// A filled template with the byte spans of its `{current}` and `{context}` values (first
/// occurrence of each).
pub(super) struct Filled {
    pub(super) text: String,
    pub(super) current: Range<usize>,
    pub(super) context: Option<Range<usize>>,
}

pub(super) fn fill_template(template: &str, current: &str, context: Option<&str>) -> Filled {
    let mut text = String::with_capacity(template.len() + current.len());
    let (mut cur_span, mut ctx_span) = (None, None);
    let mut rest = template;
    loop {
        let cur = rest.find("{current}");
        let ctx = context.and_then(|_| rest.find("{context}"));
        let (pos, is_current) = match (cur, ctx) {
            (None, None) => break,
            (Some(a), Some(b)) => (a.min(b), a < b),
            (Some(a), None) => (a, true),
            (None, Some(b)) => (b, false),
        };
        text.push_str(&rest[..pos]);
        let start = text.len();
        if is_current {
            text.push_str(current);
            cur_span.get_or_insert(start..text.len());
        } else {
            text.push_str(context.unwrap_or_default());
            ctx_span.get_or_insert(start..text.len());
        }
        // `{current}` and `{context}` have the same length.
        rest = &rest[pos + "{current}".len()..];
    }
    text.push_str(rest);
    Filled {
        text,
        current: cur_span.unwrap_or(0..0),
        context: ctx_span,
    }
}

/// Inseq's `concat_with_sep`: `s1 + sep + s2` unless `s1` ends or `s2` starts with `sep`; also the
/// offset of `s2` in the result.
pub(super) fn concat_with_sep(s1: &str, s2: &str, sep: &str) -> (String, usize) {
    if s1.ends_with(sep) || s2.starts_with(sep) {
        (format!("{s1}{s2}"), s1.len())
    } else {
        (format!("{s1}{sep}{s2}"), s1.len() + sep.len())
    }
}

pub(super) fn shift(r: &Range<usize>, by: usize) -> Range<usize> {
    r.start + by..r.end + by
}

/// Arguments after Inseq's `__post_init__` checks and defaults.
pub(super) struct Resolved {
    pub(super) input_context: Option<String>,
    pub(super) input_template: String,
    pub(super) output_template: String,
    pub(super) contextless_input: String,
    pub(super) contextless_output: String,
    pub(super) has_input_context: bool,
    pub(super) has_output_context: bool,
}

pub(super) fn resolve(args: &ContextArgs) -> Result<Resolved> {
    if args.input_current_text.trim().is_empty() {
        return Err(Error::InvalidInput("input current text is empty".into()));
    }
    let default_template = |context_given: bool| -> String {
        match context_given {
            true => "{context} {current}".into(),
            false => "{current}".into(),
        }
    };
    let input_template = (args.input_template.clone())
        .unwrap_or_else(|| default_template(args.input_context_text.is_some()));
    let output_template = (args.output_template.clone())
        .unwrap_or_else(|| default_template(args.output_context_text.is_some()));
    let contextless_input =
        (args.contextless_input_current_text.clone()).unwrap_or_else(|| "{current}".into());
    let contextless_output =
        (args.contextless_output_current_text.clone()).unwrap_or_else(|| "{current}".into());
    let r = Resolved {
        has_input_context: input_template.contains("{context}"),
        has_output_context: output_template.contains("{context}"),
        input_context: None,
        input_template,
        output_template,
        contextless_input,
        contextless_output,
    };
    check_templates(args, &r)?;
    Ok(Resolved {
        input_context: (args.input_context_text.clone()).filter(|_| r.has_input_context),
        ..r
    })
}

/// Inseq's checks of the templates against the given texts.
fn check_templates(args: &ContextArgs, r: &Resolved) -> Result<()> {
    let (input_template, output_template) = (&r.input_template, &r.output_template);
    for (name, t) in [
        ("input_template", input_template),
        ("output_template", output_template),
        ("contextless_input_current_text", &r.contextless_input),
        ("contextless_output_current_text", &r.contextless_output),
    ] {
        if !t.contains("{current}") {
            let problem = format!("`{t}` has no {{current}} placeholder");
            return Err(Error::invalid_arg(name, problem));
        }
    }
    if args.input_context_text.is_some() && !r.has_input_context {
        return Err(Error::invalid_arg(
            "input_template",
            format!("an input context is given but `{input_template}` has no {{context}} slot"),
        ));
    }
    if args.output_context_text.is_some() && !r.has_output_context {
        return Err(Error::invalid_arg(
            "output_template",
            format!("an output context is given but `{output_template}` has no {{context}} slot"),
        ));
    }
    let empty_input_context =
        (args.input_context_text.as_deref()).is_none_or(|c| c.trim().is_empty());
    if r.has_input_context && empty_input_context {
        return Err(Error::InvalidInput(format!(
            "input context text is empty, but the input template `{input_template}` has a {{context}} slot"
        )));
    }
    check_output_context(args, r)
}

fn check_output_context(args: &ContextArgs, r: &Resolved) -> Result<()> {
    let output_template = &r.output_template;
    if r.has_output_context && output_template.find("{context}") > output_template.find("{current}")
    {
        return Err(Error::invalid_arg(
            "output_template",
            format!("{{context}} must come before {{current}} in `{output_template}`"),
        ));
    }
    if args.handle_output_context_strategy == OutputContextStrategy::Pre
        && r.has_output_context
        && args.output_context_text.is_none()
    {
        return Err(Error::invalid_arg(
            "handle_output_context_strategy",
            "`pre` with {context} in the output template needs the output context (--output-context-text)",
        ));
    }
    if !r.has_input_context && !r.has_output_context {
        return Err(Error::InvalidInput(
            "no context to attribute: give an input context (--input-context-text) and/or an output \
             context (--output-context-text, or an output template with a {context} slot)"
                .into(),
        ));
    }
    Ok(())
}
