//! Comparing this project's results with Python Inseq's on golden cases: the harness of
//! `cargo xtask parity` and of this crate's tests (test support, not published).
//!
//! A golden case is a JSON file with the model, method, arguments, input,
//! target and the tokens, raw and aggregated attributions and step scores
//! Python Inseq 0.7.1 produced. [`run_case`] runs the same attribution
//! through [`inseq::AttributionModel::attribute`] on a model loaded as
//! [`inseq::load_model`] loads it (the code the CLI uses) and reports every difference beyond tolerance:
//! `|ours - golden| <= 1e-3 * max|golden| + 1e-6` on attributions and
//! `1e-4` absolute (plus `1e-4` relative) on step scores.
//!
//! # Tolerances
//!
//! Inseq computes in f32 with torch's kernels, this project in f32 with burn's: the same sums in
//! other orders, which agree up to rounding, never bit for bit.
//!
//! - Attributions ([`ATTRIBUTION_RELATIVE`], [`ATTRIBUTION_ABSOLUTE`]; every raw and aggregated
//!   array, and the L2 norms kept of raw arrays too large to store), over the whole tensor: a
//!   sum's rounding scales with its terms, not with its (possibly cancelled) result, so the bound
//!   is relative to the tensor's largest value. To first order a forward and backward pass of a
//!   tiny fixture model (hidden 32, FFN 64, 2 layers, vocabulary 400) rounds by at most ~3.6e-4
//!   of the magnitudes involved (~80 sums of <= 64 terms and a 400-term softmax, each at its
//!   worst case `γ(n) = n·2⁻²⁴/(1 − n·2⁻²⁴)`); two such passes differ by at most 7.2e-4 < 1e-3.
//!   `1e-6` absolute covers tensors that are 0 in the golden (a cancelled sum of order-1 terms
//!   keeps ~16 roundings, 16·2⁻²⁴ ≈ 1e-6).
//! - Step scores ([`STEP_SCORE_TOLERANCE`], absolute and relative): a probability
//!   `p = exp(logit − lse)` moves by at most `2p·max|Δlogit|`, with the logits within the
//!   attribution rule (the tiny models' |logits| < 0.7): `1.4e-3·p`, under `1e-4` for the
//!   tiny models' near-uniform predictions (p < 0.07). For logits, log-probabilities and the
//!   30-layer SmolLM2 the worst-case bound is wider than the rule; there independent roundings
//!   add like a random walk (`inseq_fixtures::tolerance::smollm2_logits`), and the rule holds
//!   on every golden case, on both CI backends.
//!
//! ```
//! use inseq_parity::{CaseOutcome, golden_cases, run_case};
//! let cases = golden_cases(&inseq_fixtures::golden_dir()).unwrap();
//! let case = cases.iter().find(|c| c.ends_with("tiny-gpt2__saliency.json")).unwrap();
//! let device = burn::tensor::Device::default();
//! let outcome = run_case(case, &inseq_fixtures::models_dir(), &device).unwrap();
//! assert_eq!(outcome, CaseOutcome::Passed);
//! ```
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use inseq::{Array, SequenceAttribution};
use inseq::{
    AttributeOptions, AttributionModel, Error, GenerationOptions, MethodArgs, MethodRegistry,
    Result, StepArgs, StepRegistry, aggregate,
};
use serde_json::Value;

/// Attribution tolerance relative to the golden tensor's largest magnitude (module doc).
pub const ATTRIBUTION_RELATIVE: f32 = 1e-3;
/// Attribution tolerance floor, for tensors that are 0 in the golden (module doc).
pub const ATTRIBUTION_ABSOLUTE: f32 = 1e-6;
/// Step-score tolerance, absolute and relative to the golden value (module doc).
pub const STEP_SCORE_TOLERANCE: f32 = 1e-4;

/// Outcome of one golden case.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseOutcome {
    /// Everything matched.
    Passed,
    /// Mismatches, one line each.
    Failed(Vec<String>),
    /// Not supported yet, with the reason.
    Skipped(String),
}

/// Lists the golden case files of `dir` (every `*.json` except `*.inseq.json` and `logits.json`), sorted.
pub fn golden_cases(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".json") && !name.ends_with(".inseq.json") && name != "logits.json"
        })
        .collect();
    cases.sort();
    Ok(cases)
}

fn method_args(v: &Value) -> MethodArgs {
    let mut args = MethodArgs::default();
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            args = args.with(k, text);
        }
    }
    args
}

/// Runs one golden case, resolving its `model` under `models_dir`.
pub fn run_case(case_path: &Path, models_dir: &Path, device: &Device) -> Result<CaseOutcome> {
    let case = read_case(case_path)?;
    let model_name = case
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid_arg("case", "no `model` field"))?;
    // A model folder under `models_dir`, else a name `load_model` resolves (e.g. `smollm2`).
    let model_dir = models_dir.join(model_name);
    let model_ref = match model_dir.exists() {
        true => model_dir.to_str().unwrap_or_default(),
        false => model_name,
    };
    let mut model = match CaseModel::load(model_ref, device) {
        Ok(m) => m,
        Err(Error::UnsupportedArchitecture(a)) => {
            return Ok(CaseOutcome::Skipped(format!(
                "architecture {a} is not supported yet"
            )));
        }
        Err(e) => return Err(e),
    };
    run_loaded_case(case_path, &mut model)
}

fn read_case(case_path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(case_path).map_err(|e| Error::io(case_path, e))?;
    inseq::core::inseq_format::parse_python_json(&text)
}

/// A model loaded for golden cases: an [`AttributionModel`] and its tokenizer's pad token (Python
/// Inseq drops pad tokens from its token lists; see [`run_loaded_case`]).
pub struct CaseModel {
    /// The model, with the method of the last case run on it.
    pub model: AttributionModel,
    /// The tokenizer's pad token id.
    pub pad: Option<usize>,
}

impl CaseModel {
    /// Loads `model` (a directory, GGUF file, alias or hub id, as [`inseq::load_model`] takes)
    /// with the `dummy` method; each case sets its own.
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        let pretrained = inseq::models::load_pretrained(model, device)?;
        let pad = pretrained.special_tokens.pad;
        let method = MethodRegistry::with_defaults().create("dummy", MethodArgs::default())?;
        let model = AttributionModel::new(
            pretrained,
            method,
            "dummy",
            MethodArgs::default(),
            StepRegistry::with_defaults(),
        );
        Ok(Self { model, pad })
    }
}

/// Runs one golden case on `model`, already loaded (its `model` field is not read): the case's
/// method replaces the model's, so that one model serves many cases.
pub fn run_loaded_case(case_path: &Path, case_model: &mut CaseModel) -> Result<CaseOutcome> {
    let (model, pad) = (&mut case_model.model, case_model.pad.map(|p| p as i64));
    let case = read_case(case_path)?;
    let request = match case_request(&case)? {
        Ok(request) => request,
        Err(reason) => return Ok(CaseOutcome::Skipped(reason)),
    };
    model.set_method(&request.method, request.method_args.clone())?;
    let raw = model.attribute(&[request.input.as_str()], &request.opts)?;
    let agg = aggregate(&raw)?;
    let ours = as_inseq_shows(
        &case,
        pad,
        &raw.sequence_attributions[0],
        &agg.sequence_attributions[0],
    );
    let mut problems = compare_tokens(&case, &request.opts, &ours);
    if problems.is_empty() {
        problems.extend(compare_tensors(&case, &request.opts, &ours)?);
        problems.extend(compare_step_scores(
            &case,
            &request.opts.step_scores,
            &ours.raw,
        ));
    }
    Ok(if problems.is_empty() {
        CaseOutcome::Passed
    } else {
        CaseOutcome::Failed(problems)
    })
}

/// What a golden case asks Inseq for: the method, the input and the attribution options.
struct CaseRequest {
    method: String,
    method_args: MethodArgs,
    input: String,
    opts: AttributeOptions,
}

/// The case's request, or why it is skipped (a method, step function or option not implemented).
fn case_request(case: &Value) -> Result<std::result::Result<CaseRequest, String>> {
    let s = |k: &str| case.get(k).and_then(Value::as_str);
    let method = s("method").ok_or_else(|| Error::invalid_arg("case", "no `method` field"))?;
    if !MethodRegistry::with_defaults()
        .ids()
        .iter()
        .any(|m| m == method)
    {
        return Ok(Err(format!("method `{method}` is not implemented yet")));
    }
    let step_ids: Vec<String> = (case.get("step_score_ids").and_then(Value::as_array))
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let steps = StepRegistry::with_defaults();
    if let Some(missing) = step_ids.iter().find(|id| steps.get(id).is_err()) {
        return Ok(Err(format!(
            "step function `{missing}` is not implemented yet"
        )));
    }
    // Options of Inseq's `model.attribute` beyond the usual ones.
    let attribute_args = case.get("attribute_args").and_then(Value::as_object);
    const FLAGS: [&str; 3] = [
        "clean_special_chars",
        "include_eos_baseline",
        "skip_special_tokens",
    ];
    let unknown = attribute_args.into_iter().flat_map(|a| a.keys());
    if let Some(unknown) = unknown.into_iter().find(|k| !FLAGS.contains(&k.as_str())) {
        return Ok(Err(format!(
            "attribute argument `{unknown}` is not implemented"
        )));
    }
    let flag = |k: &str| {
        (attribute_args.and_then(|a| a.get(k)))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let mut generation = GenerationOptions::default();
    if let Some(args) = case.get("generation_args").and_then(Value::as_object) {
        generation.update_from_json(args, "generation_args")?;
    }
    let opts = AttributeOptions {
        clean_special_chars: flag("clean_special_chars"),
        include_eos_baseline: flag("include_eos_baseline"),
        skip_special_tokens: flag("skip_special_tokens"),
        targets: s("target").map(|t| vec![t.to_string()]),
        generation,
        attr_pos_start: requested_position(case, "start"),
        attr_pos_end: requested_position(case, "end"),
        step_scores: step_ids,
        step_scores_args: step_scores_args(case)?,
        attributed_fn: s("attributed_fn").unwrap_or("probability").to_string(),
        attributed_fn_args: StepArgs::default(),
        attribute_target: (case.get("attribute_target").and_then(Value::as_bool)).unwrap_or(false),
        inseq_compat: true,
        contrast_targets: s("contrast_targets").map(|t| vec![t.to_string()]),
        ..Default::default()
    };
    let input = s("input").ok_or_else(|| Error::invalid_arg("case", "no `input` field"))?;
    Ok(Ok(CaseRequest {
        method: method.to_string(),
        method_args: method_args(case.get("method_args").unwrap_or(&Value::Null)),
        input: input.to_string(),
        opts,
    }))
}

/// A position requested from Inseq (`attr_pos_start`/`attr_pos_end` hold what it returned).
fn requested_position(case: &Value, which: &str) -> Option<isize> {
    (case.get("attr_pos_request").and_then(|r| r.get(which)))
        .and_then(Value::as_i64)
        .map(|v| v as isize)
}

/// The case's `step_scores_args` as step arguments.
fn step_scores_args(case: &Value) -> Result<StepArgs> {
    match case.get("step_scores_args").and_then(Value::as_object) {
        Some(args) => {
            let pairs: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            StepArgs::parse(&pairs.join(","))
        }
        None => Ok(StepArgs::default()),
    }
}

/// Our raw and aggregated sequence, and the target ids, as Inseq would show them.
struct Ours {
    raw: SequenceAttribution,
    agg: SequenceAttribution,
    target_ids: Vec<i64>,
}

/// Our results cut as Inseq shows its own. Python Inseq 0.7.1 drops pad tokens (SmolLM2's pad is
/// its eos `<|im_end|>`, which chat prompts hold) from its token lists but cuts its tensors by
/// length, so its labels shift (docs/inseq-compatibility.md): where the golden ids are ours
/// without the pad tokens, ours get the same cut, positions counted without the pads. With an
/// explicit end, Inseq's target tensors stop at `attr_pos_end` rows; ours keep one row per target
/// token, NaN there.
fn as_inseq_shows(
    case: &Value,
    pad: Option<i64>,
    raw: &SequenceAttribution,
    agg: &SequenceAttribution,
) -> Ours {
    let (mut raw, mut agg) = (raw.clone(), agg.clone());
    let mut target_ids: Vec<i64> = raw.target.iter().map(|t| t.id).collect();
    let golden = golden_ids(case, "target_token_ids");
    if let (Some(pad), Some(golden)) = (pad, &golden) {
        let kept: Vec<i64> = target_ids.iter().copied().filter(|&i| i != pad).collect();
        if kept.len() < target_ids.len() && kept == *golden {
            let pads_before = |pos: usize| target_ids[..pos].iter().filter(|&&i| i == pad).count();
            raw.attr_pos_start -= pads_before(raw.attr_pos_start);
            raw.attr_pos_end -= pads_before(raw.attr_pos_end);
            cut_target_rows(&mut raw, &mut agg, kept.len());
            target_ids = kept;
        }
    }
    if requested_position(case, "end").is_some() {
        let end = raw.attr_pos_end;
        cut_target_rows(&mut raw, &mut agg, end);
    }
    Ours {
        raw,
        agg,
        target_ids,
    }
}

fn cut_target_rows(raw: &mut SequenceAttribution, agg: &mut SequenceAttribution, rows: usize) {
    for a in [&mut raw.target_attributions, &mut agg.target_attributions] {
        *a = a.as_ref().map(|a| first_rows(a, rows));
    }
}

fn golden_ids(case: &Value, key: &str) -> Option<Vec<i64>> {
    (case.get(key).and_then(Value::as_array)).map(|a| a.iter().filter_map(Value::as_i64).collect())
}

/// Differences in tokens, ids and attributed positions.
fn compare_tokens(case: &Value, opts: &AttributeOptions, ours: &Ours) -> Vec<String> {
    let mut problems = Vec::new();
    // Token strings are Inseq's own only where it changes them (`clean_special_chars`).
    if opts.clean_special_chars {
        let golden: Vec<&str> = (case.get("target_tokens").and_then(Value::as_array))
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let our_tokens: Vec<&str> = ours.raw.target.iter().map(|t| t.token.as_str()).collect();
        if golden != our_tokens {
            problems.push(format!(
                "target tokens differ: golden {golden:?}, ours {our_tokens:?}"
            ));
        }
    }
    let golden_target = golden_ids(case, "target_token_ids");
    if golden_target.as_ref() != Some(&ours.target_ids) {
        let ours = &ours.target_ids;
        problems.push(format!(
            "target ids differ: golden {golden_target:?}, ours {ours:?}"
        ));
    }
    // Inseq records a placeholder source for methods without attributions (`dummy`): compare only real ones.
    let golden_has_source = case
        .get("raw_source_attributions")
        .is_some_and(|v| !v.is_null());
    let our_source = (ours.raw.source.as_ref()).map(|v| v.iter().map(|t| t.id).collect::<Vec<_>>());
    if golden_has_source && golden_ids(case, "source_token_ids") != our_source {
        problems.push("source ids differ".into());
    }
    for (k, pos) in [
        ("attr_pos_start", ours.raw.attr_pos_start),
        ("attr_pos_end", ours.raw.attr_pos_end),
    ] {
        if case.get(k).and_then(Value::as_u64) != Some(pos as u64) {
            problems.push(format!("{k}: golden {:?}, ours {pos}", case.get(k)));
        }
    }
    problems
}

/// Differences in the raw and aggregated attribution tensors.
fn compare_tensors(case: &Value, opts: &AttributeOptions, ours: &Ours) -> Result<Vec<String>> {
    let pairs = [
        ("raw_source_attributions", &ours.raw.source_attributions),
        ("raw_target_attributions", &ours.raw.target_attributions),
        ("source_attributions", &ours.agg.source_attributions),
        ("target_attributions", &ours.agg.target_attributions),
    ];
    // Python Inseq 0.7.1 returns all-zero attributions for the steps after a contrastive target
    // diverges from the original (see docs/inseq-compatibility.md); those steps are checked
    // through their step scores only.
    let zero_steps: Vec<usize> = match opts.contrast_targets {
        Some(_) => (golden_array(case, "raw_target_attributions")?)
            .map(|g| all_zero_steps(&g))
            .unwrap_or_default(),
        None => vec![],
    };
    let mut problems = Vec::new();
    for (key, ours) in pairs {
        // A raw tensor too large to store is kept as its shape and per-vector L2 norms.
        if let Some(summary) = case.get("raw_omitted").and_then(|r| r.get(key)) {
            problems.extend(compare_l2_summary(key, summary, ours.as_ref())?);
            continue;
        }
        let golden = golden_array(case, key)?.map(|g| drop_steps(&g, &zero_steps));
        let ours = ours.as_ref().map(|o| drop_steps(o, &zero_steps));
        problems.extend(compare_arrays(key, golden.as_ref(), ours.as_ref()));
    }
    Ok(problems)
}

fn golden_array(case: &Value, key: &str) -> Result<Option<Array>> {
    (case.get(key).filter(|v| !v.is_null()))
        .map(Array::from_nested_json)
        .transpose()
}

/// Differences in the step scores, within [`STEP_SCORE_TOLERANCE`].
fn compare_step_scores(
    case: &Value,
    step_ids: &[String],
    ours: &SequenceAttribution,
) -> Vec<String> {
    let golden_scores = case.get("step_scores").and_then(Value::as_object);
    let mut problems = Vec::new();
    for id in step_ids {
        let g: Vec<f32> = (golden_scores
            .and_then(|m| m.get(id))
            .and_then(Value::as_array))
        .map(|a| {
            a.iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
                .collect()
        })
        .unwrap_or_default();
        let o = ours.step_scores.get(id).cloned().unwrap_or_default();
        if g.len() != o.len() {
            let (gl, ol) = (g.len(), o.len());
            problems.push(format!(
                "step score {id}: golden has {gl} values, ours {ol}"
            ));
            continue;
        }
        let worst = (g.iter().zip(&o))
            .map(|(g, o)| (g - o).abs() - STEP_SCORE_TOLERANCE * g.abs())
            .fold(0f32, f32::max);
        if worst > STEP_SCORE_TOLERANCE {
            problems.push(format!(
                "step score {id}: off by {worst:.3e} (golden {g:?}, ours {o:?})"
            ));
        }
    }
    problems
}

/// Compares `ours` with a golden `{"shape": [...], "l2_last_dim": [...]}` summary (JSON texts or
/// values): the same shape, and the L2 norms over the last dimension within tolerance.
fn compare_l2_summary(what: &str, summary: &Value, ours: Option<&Array>) -> Result<Option<String>> {
    let field = |k: &str| -> Result<Value> {
        match summary.get(k) {
            Some(Value::String(text)) => inseq::core::inseq_format::parse_python_json(text),
            Some(v) => Ok(v.clone()),
            None => Err(Error::invalid_arg("raw_omitted", format!("no `{k}`"))),
        }
    };
    let Some(ours) = ours else {
        return Ok(Some(format!("{what}: missing in ours")));
    };
    let shape: Vec<usize> = serde_json::from_value(field("shape")?)
        .map_err(|e| Error::invalid_arg("raw_omitted shape", e.to_string()))?;
    if ours.shape() != shape {
        return Ok(Some(format!(
            "{what}: shape golden {shape:?}, ours {:?}",
            ours.shape()
        )));
    }
    let golden = Array::from_nested_json(&field("l2_last_dim")?)?;
    let inner = *shape.last().unwrap_or(&1);
    let norms: Vec<f32> = ours
        .data()
        .chunks(inner.max(1))
        .map(|v| v.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect();
    let ours_l2 = Array::new(golden.shape().to_vec(), norms)?;
    Ok(compare_arrays(
        &format!("{what} (L2 over the last dimension)"),
        Some(&golden),
        Some(&ours_l2),
    ))
}

/// The first `n` entries of `a`'s first dimension.
fn first_rows(a: &Array, n: usize) -> Array {
    let inner: usize = a.shape()[1..].iter().product();
    let mut shape = a.shape().to_vec();
    shape[0] = n.min(shape[0]);
    Array::new(shape.clone(), a.data()[..shape[0] * inner].to_vec()).expect("consistent shape")
}

/// Steps (dimension 1) whose scores are all zero (NaN ignored).
fn all_zero_steps(a: &Array) -> Vec<usize> {
    let shape = a.shape();
    if shape.len() < 2 {
        return vec![];
    }
    let inner: usize = shape[2..].iter().product();
    (0..shape[1])
        .filter(|&s| {
            (0..shape[0]).all(|r| {
                let start = (r * shape[1] + s) * inner;
                a.data()[start..start + inner]
                    .iter()
                    .all(|v| v.is_nan() || *v == 0.0)
            })
        })
        .collect()
}

/// `a` without the given steps (dimension 1).
fn drop_steps(a: &Array, steps: &[usize]) -> Array {
    let shape = a.shape();
    if steps.is_empty() || shape.len() < 2 {
        return a.clone();
    }
    let inner: usize = shape[2..].iter().product();
    let keep: Vec<usize> = (0..shape[1]).filter(|s| !steps.contains(s)).collect();
    let mut data = Vec::with_capacity(shape[0] * keep.len() * inner);
    for r in 0..shape[0] {
        for &s in &keep {
            let start = (r * shape[1] + s) * inner;
            data.extend_from_slice(&a.data()[start..start + inner]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[1] = keep.len();
    Array::new(new_shape, data).expect("consistent shape")
}

/// Compares a golden array with ours under the attribution tolerance; `Some(message)` on mismatch.
pub fn compare_arrays(what: &str, golden: Option<&Array>, ours: Option<&Array>) -> Option<String> {
    match (golden, ours) {
        (None, None) => None,
        (Some(_), None) => Some(format!("{what}: missing in ours")),
        (None, Some(_)) => Some(format!("{what}: golden has none, ours has one")),
        (Some(g), Some(o)) => {
            if g.shape() != o.shape() {
                return Some(format!(
                    "{what}: shape golden {:?}, ours {:?}",
                    g.shape(),
                    o.shape()
                ));
            }
            let tol = ATTRIBUTION_RELATIVE * g.max_abs() + ATTRIBUTION_ABSOLUTE;
            let mut worst = 0f32;
            for (i, (a, b)) in g.data().iter().zip(o.data()).enumerate() {
                if a.is_nan() != b.is_nan() {
                    return Some(format!(
                        "{what}: NaN mismatch at flat index {i} (golden {a}, ours {b})"
                    ));
                }
                if !a.is_nan() {
                    worst = worst.max((a - b).abs());
                }
            }
            (worst > tol).then(|| format!("{what}: max abs diff {worst:.3e} > tolerance {tol:.3e}"))
        }
    }
}
