//! What `inseq evaluate` and `inseq bench` share: the `--methods`/`--method-args` lists, the
//! registries with the `random` reference, and the targets every method is attributed on.

use anyhow::{Context, Result, bail};
use inseq::models::ModelKind;
use inseq::{AttributeOptions, AttributionModel, MethodArgs, Registries};

use crate::dataset::{DatasetJob, DatasetRow, attribute_dataset};

/// Short names accepted in `--methods` and `--method-args`.
const METHOD_ALIASES: &[(&str, &str)] =
    &[("ig", "integrated_gradients"), ("ixg", "input_x_gradient")];

/// A method id with its arguments.
pub(crate) struct MethodSpec {
    /// The id (aliases resolved).
    pub(crate) id: String,
    /// Its arguments as given.
    pub(crate) args_text: String,
    /// Parsed.
    pub(crate) args: MethodArgs,
}

fn resolve(name: &str) -> String {
    let name = name.trim();
    METHOD_ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, id)| id)
        .to_string()
}

/// `--methods a,b` with `--method-args a:k=v,k2=v2` (repeatable; the prefix is a method of the
/// list or its alias); every method is checked in `registries`.
pub(crate) fn method_specs(
    methods: &[String],
    method_args: &[String],
    registries: &Registries,
) -> Result<Vec<MethodSpec>> {
    let ids: Vec<String> = methods
        .iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| resolve(m))
        .collect();
    if ids.is_empty() {
        bail!("--methods: name at least one method (see `inseq list-methods`)");
    }
    let mut texts = vec![String::new(); ids.len()];
    for spec in method_args {
        let (name, args) = spec.split_once(':').with_context(|| {
            format!("--method-args `{spec}`: expected METHOD:ARGS, e.g. ig:n_steps=8")
        })?;
        let id = resolve(name);
        let Some(i) = ids.iter().position(|m| *m == id) else {
            bail!(
                "--method-args `{spec}`: `{name}` is not in --methods ({})",
                ids.join(", ")
            );
        };
        texts[i] = args.to_string();
    }
    ids.into_iter()
        .zip(texts)
        .map(|(id, args_text)| {
            let args = MethodArgs::parse(&args_text)?;
            registries
                .methods
                .create(&id, args.clone())
                .with_context(|| format!("method `{id}` with arguments `{args_text}`"))?;
            Ok(MethodSpec {
                id,
                args_text,
                args,
            })
        })
        .collect()
}

/// `registries` with the `random` reference method of `inseq-eval` (unless one is registered).
pub(crate) fn with_random(registries: &Registries) -> Registries {
    let mut r = registries.clone();
    if r.methods.create("random", MethodArgs::default()).is_err() {
        inseq_eval::register_random_method(&mut r.methods);
    }
    r
}

/// A file-system friendly name for a method's store.
pub(crate) fn slug(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The rows with a forced target each: rows with one keep it; the others get the model's
/// generation, stored in `job`'s store (so a resumed run reuses it) by the `dummy` method.
/// Decoder-only targets are the input followed by the decoded continuation.
pub(crate) fn forced_rows(
    model: &mut AttributionModel,
    rows: &[DatasetRow],
    opts: &AttributeOptions,
    job: &DatasetJob,
) -> Result<Vec<DatasetRow>> {
    model.set_method("dummy", MethodArgs::default())?;
    let report = attribute_dataset(model, rows, opts, job, |_| {})?;
    for (row, reason) in &report.failed {
        eprintln!("row {row}: skipped: {reason}");
    }
    let generated: std::collections::BTreeMap<usize, _> =
        job.store.read_all()?.into_iter().collect();
    let mut out = Vec::new();
    for row in rows {
        let Ok((input, target)) = &row.content else {
            continue;
        };
        if let Some(t) = target {
            out.push(forced(row.index, input, t.clone()));
            continue;
        }
        let Some(seq) = generated
            .get(&row.index)
            .and_then(|o| o.sequence_attributions.first())
        else {
            continue;
        };
        let ids: Vec<usize> = seq
            .generated()
            .iter()
            .map(|t| t.id.max(0) as usize)
            .collect();
        let text = model.tokenizer().decode(&ids, true)?;
        let target = match model.model().kind() {
            ModelKind::DecoderOnly => format!("{input}{text}"),
            ModelKind::EncoderDecoder => text,
        };
        out.push(forced(row.index, input, target));
    }
    Ok(out)
}

fn forced(index: usize, input: &str, target: String) -> DatasetRow {
    DatasetRow {
        index,
        content: Ok((input.to_string(), Some(target))),
    }
}
