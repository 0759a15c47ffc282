//! The memory check before attribution starts: a lower bound of the activation memory the
//! method's passes keep, against free memory or the caller's budget.

use std::ops::Range;

use inseq_core::{Error, Result};
use inseq_methods::AttributionMethod;
use inseq_models::ModelInfo;

use super::rows::Row;

/// Bytes of activations that `rows` model rows keep at the peak of a forward pass over `len`
/// tokens, a lower bound linear in `len`: one block's activations (a dozen hidden-size vectors
/// per token, per row) and the chunked attention's temporaries (a few chunks of
/// [`inseq_models::CHUNK_FLOATS`] scores, never the `[heads, len, len]` weights);
/// with `gradients`, each block's input too, which the backward pass recomputes the block from
/// (whole block tapes are kept only while they fit
/// [`inseq_models::checkpoint::KEEP_TAPES_BYTES`]). Weights, logits and framework copies come
/// on top; methods that back-propagate with autodiff instead of the models' hand-written
/// backward pass keep more.
///
/// ```
/// let info = inseq::models::ModelInfo { num_layers: 30, num_heads: 9, hidden_size: 576, ..Default::default() };
/// let bytes = inseq::activation_bytes(&info, 8000, 1, true);
/// assert!((0.9e9..1.1e9).contains(&(bytes as f64)), "{bytes}");
/// assert!(inseq::activation_bytes(&info, 8000, 1, false) < bytes / 2);
/// ```
pub fn activation_bytes(info: &ModelInfo, len: usize, rows: usize, gradients: bool) -> u64 {
    let (len, hidden) = (len as u64, info.hidden_size as u64);
    let block = 12 * hidden * len;
    let checkpoints = if gradients {
        info.num_layers as u64 * hidden * len
    } else {
        0
    };
    let chunks = 4 * inseq_models::CHUNK_FLOATS as u64;
    (block + checkpoints)
        .saturating_mul(rows as u64)
        .saturating_add(chunks)
        .saturating_mul(4)
}

/// [`activation_bytes`] for an encoder-decoder model with `encoder_layers` encoder layers over
/// `source` and `target` tokens: the linear terms of both stacks (with `gradients`, every encoder
/// stage's input, which the backward pass reruns the stage from) and, with `gradients`, the
/// attention weights burn's autodiff keeps, quadratic in the lengths: one encoder layer's
/// (`heads × source²`; a long source goes back through the encoder one layer at a time, see
/// `inseq_methods`' `encoder_stages`) and every decoder layer's (`heads × (target² + target ×
/// source)`). A forward pass alone holds a few chunks of attention scores. `info.num_heads` (the
/// decoder's) stands for the encoder's too. A lower bound, like [`activation_bytes`].
///
/// ```
/// let info = inseq::models::ModelInfo { num_layers: 6, num_heads: 8, hidden_size: 512, ..Default::default() };
/// let long = inseq::encoder_decoder_activation_bytes(&info, 6, (2048, 8), 1, true);
/// let forward = inseq::encoder_decoder_activation_bytes(&info, 6, (2048, 8), 1, false);
/// // Back-propagating keeps one encoder layer's 8 × 2048² weights more: 134 MB.
/// assert!(long - forward > 8 * 2048 * 2048 * 4, "{long} {forward}");
/// ```
pub fn encoder_decoder_activation_bytes(
    info: &ModelInfo,
    encoder_layers: usize,
    (source, target): (usize, usize),
    rows: usize,
    gradients: bool,
) -> u64 {
    let (s, t, hidden) = (source as u64, target as u64, info.hidden_size as u64);
    let (enc, dec, heads) = (
        encoder_layers as u64,
        info.num_layers as u64,
        info.num_heads as u64,
    );
    let mut floats = 12 * hidden * (s + t);
    if gradients {
        floats += hidden * ((enc + 2) * s + dec * t);
        floats += heads * (s * s + dec * (t * t + t * s));
    }
    let chunks = 4 * inseq_models::CHUNK_FLOATS as u64;
    floats
        .saturating_mul(rows as u64)
        .saturating_add(chunks)
        .saturating_mul(4)
}

/// Free memory (Linux `MemAvailable`), if known.
pub(super) fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Groups of consecutive rows whose attribution fits `budget` (default: free memory) by
/// [`activation_bytes`] ([`encoder_decoder_activation_bytes`] with `encoder_layers`): all rows at once when they fit, else as many per group as fit, so that
/// many long inputs degrade to smaller batches instead of exhausting memory. A row that does not
/// fit alone is [`Error::OutOfMemory`], saying how to proceed.
pub(super) fn row_groups(
    (info, encoder_layers): (&ModelInfo, Option<usize>),
    method: &dyn AttributionMethod,
    rows: &[Row],
    budget: Option<u64>,
) -> Result<Vec<Range<usize>>> {
    let Some(budget) = budget.or_else(available_memory) else {
        return Ok(std::iter::once(0..rows.len()).collect());
    };
    let need = |group: &[Row]| group_bytes((info, encoder_layers), method, group);
    let mut groups = Vec::new();
    let mut start = 0;
    for end in 1..=rows.len() {
        if need(&rows[start..end]) <= budget {
            continue;
        }
        if end - start == 1 {
            return Err(out_of_memory(
                info,
                method,
                &rows[start..end],
                budget,
                need(&rows[start..end]),
            ));
        }
        groups.push(start..end - 1);
        start = end - 1;
        if need(&rows[start..end]) > budget {
            return Err(out_of_memory(
                info,
                method,
                &rows[start..end],
                budget,
                need(&rows[start..end]),
            ));
        }
    }
    groups.push(start..rows.len());
    Ok(groups)
}

/// [`activation_bytes`] (or [`encoder_decoder_activation_bytes`]) of attributing `group` at once.
fn group_bytes(
    (info, encoder_layers): (&ModelInfo, Option<usize>),
    method: &dyn AttributionMethod,
    group: &[Row],
) -> u64 {
    let copies = method.step_batch_rows().unwrap_or(1).max(1);
    let (rows, gradients) = (group.len() * copies, method.needs_gradients());
    let longest = |len: fn(&Row) -> usize| group.iter().map(len).max().unwrap_or(0);
    match encoder_layers {
        Some(layers) => {
            let source = longest(|r| r.source_ids.as_ref().map_or(0, Vec::len));
            let target = longest(|r| r.target_ids.len());
            encoder_decoder_activation_bytes(info, layers, (source, target), rows, gradients)
        }
        None => activation_bytes(info, longest(row_len), rows, gradients),
    }
}

/// Tokens a row's passes see: its target, and its source for encoder-decoder models.
fn row_len(r: &Row) -> usize {
    r.target_ids.len() + r.source_ids.as_ref().map_or(0, Vec::len)
}

/// The error of a row that does not fit alone.
fn out_of_memory(
    info: &ModelInfo,
    method: &dyn AttributionMethod,
    row: &[Row],
    budget: u64,
    needed: u64,
) -> Error {
    let len = row.iter().map(row_len).max().unwrap_or(0);
    let copies = method.step_batch_rows().unwrap_or(1).max(1);
    let mut ways = vec![format!("shorten the text (now {len} tokens)")];
    if copies > 1 {
        ways.push(format!(
            "lower internal_batch_size (now {copies} rows per input)"
        ));
    }
    if method.needs_gradients() {
        ways.push("use a method without gradients (attention, occlusion)".into());
    }
    ways.push("or raise the memory budget (--memory-budget) if more memory will be free".into());
    Error::OutOfMemory {
        what: format!("`{}` on {} model layers", method.id(), info.num_layers),
        needed,
        budget,
        hint: ways.join(", "),
    }
}

/// Parses a memory size: bytes, or a number with a `K`/`M`/`G`/`T` suffix (powers of 1000,
/// `KiB`/`MiB`/`GiB`/`TiB` for powers of 1024), as `--memory-budget` takes it.
///
/// ```
/// assert_eq!(inseq::parse_memory_size("8G").unwrap(), 8_000_000_000);
/// assert_eq!(inseq::parse_memory_size("1.5GiB").unwrap(), 1_610_612_736);
/// assert_eq!(inseq::parse_memory_size("4096").unwrap(), 4096);
/// assert!(inseq::parse_memory_size("lots").is_err());
/// assert!(inseq::parse_memory_size("-1G").is_err());
/// ```
pub fn parse_memory_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => return Err(bad_size(text)),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad_size(text))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(bad_size(text));
    }
    Ok((value * factor).round() as u64)
}

fn bad_size(text: &str) -> Error {
    Error::invalid_arg(
        "memory budget",
        format!("`{text}` is not a positive size such as 8G, 512M or 1.5GiB"),
    )
}
