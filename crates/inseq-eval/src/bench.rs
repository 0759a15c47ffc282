//! Benchmarks of attribution jobs across backends: time per generated token, peak resident
//! memory, and how far each backend's attributions are from the CPU's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inseq::{AttributeOptions, AttributionModel, AttributionOutput, Result};
use serde::{Deserialize, Serialize};

/// One (device, method) measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// Device name (`cpu`, `ndarray`, `wgpu`, `cuda`).
    pub device: String,
    /// Method id.
    pub method: String,
    /// Generated (attributed) tokens.
    pub tokens: usize,
    /// Wall-clock seconds of the attribution of every example.
    pub seconds: f64,
    /// Milliseconds per attributed token.
    pub ms_per_token: f64,
    /// Peak resident memory of the process during the job, in MiB (host memory, the loaded
    /// model included; `None` where `/proc/self/statm` is not available).
    pub peak_rss_mib: Option<f64>,
    /// Largest `|this - cpu|` over every attribution score (`None` on the reference device).
    pub max_abs_diff: Option<f64>,
    /// Largest `|cpu|` score, the scale of the difference.
    pub max_abs_reference: Option<f64>,
    /// Why the job failed, if it did.
    pub error: Option<String>,
}

/// Resident memory of this process in bytes (Linux), else `None`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Samples the resident memory every few milliseconds until dropped; keeps the peak.
pub struct PeakMemory {
    start: Option<u64>,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakMemory {
    /// Starts sampling.
    pub fn start() -> Self {
        let start = resident_bytes();
        let peak = Arc::new(AtomicU64::new(start.unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = start.map(|_| {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(now) = resident_bytes() {
                        peak.fetch_max(now, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        });
        Self {
            start,
            peak,
            stop,
            thread,
        }
    }

    /// Stops sampling; the peak resident memory in MiB.
    pub fn finish(mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.start?;
        let peak = self.peak.load(Ordering::Relaxed).max(resident_bytes()?);
        Some(peak as f64 / (1024.0 * 1024.0))
    }
}

/// Attributes each of `inputs` with its forced target, timed and with peak memory sampled.
pub fn run_job(
    model: &AttributionModel,
    inputs: &[(String, String)],
    opts: &AttributeOptions,
) -> Result<(Vec<AttributionOutput>, f64, Option<f64>)> {
    let memory = PeakMemory::start();
    let started = Instant::now();
    let outputs = inputs
        .iter()
        .map(|(input, target)| {
            let o = AttributeOptions {
                targets: Some(vec![target.clone()]),
                ..opts.clone()
            };
            model.attribute(&[input.as_str()], &o)
        })
        .collect::<Result<Vec<_>>>()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((outputs, seconds, memory.finish()))
}

/// Attributed tokens of `outputs`.
pub fn attributed_tokens(outputs: &[AttributionOutput]) -> usize {
    outputs
        .iter()
        .flat_map(|o| &o.sequence_attributions)
        .map(|s| s.n_steps())
        .sum()
}

/// Every finite attribution score of `outputs`, in order (source, then target, per sequence).
fn scores(outputs: &[AttributionOutput]) -> Vec<f32> {
    outputs
        .iter()
        .flat_map(|o| &o.sequence_attributions)
        .flat_map(|s| [&s.source_attributions, &s.target_attributions])
        .flatten()
        .flat_map(|a| a.data().iter().copied())
        .collect()
}

/// `(max |a - b|, max |b|)` over the scores of two runs of the same job (non-finite entries,
/// the positions not generated yet, must match and are skipped); `None` when their shapes differ.
pub fn max_abs_diff(a: &[AttributionOutput], b: &[AttributionOutput]) -> Option<(f64, f64)> {
    let (x, y) = (scores(a), scores(b));
    if x.len() != y.len() {
        return None;
    }
    let mut diff = 0f64;
    let mut scale = 0f64;
    for (p, q) in x.iter().zip(&y) {
        if q.is_finite() {
            scale = scale.max(f64::from(q.abs()));
            diff = diff.max(f64::from((p - q).abs()));
        } else if p.is_finite() {
            return None;
        }
    }
    Some((diff, scale))
}

/// The rows as a Markdown table.
pub fn bench_table(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| device | method | tokens | s | ms/token | peak RSS (MiB) | max abs diff vs cpu (max abs cpu) |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "| {} | {} | failed: {e} | | | | |\n",
                r.device, r.method
            ));
            continue;
        }
        let mem = r.peak_rss_mib.map_or("n/a".into(), |m| format!("{m:.0}"));
        let diff = match (r.max_abs_diff, r.max_abs_reference) {
            (Some(d), Some(s)) => format!("{d:.2e} ({s:.2e})"),
            _ => "reference".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.1} | {mem} | {diff} |\n",
            r.device, r.method, r.tokens, r.seconds, r.ms_per_token
        ));
    }
    out
}
