//! Runs one attribution job through inseq-rs and prints its timings as JSON (one line).
//!
//! The Rust half of `cargo xtask bench`; `python/inseq_job.py` is the Python Inseq half. Both time
//! the same call, generation of `--max-new-tokens` tokens followed by the attribution of every
//! generated step with the `probability` step score, after `--warmup` untimed runs; model loading
//! is timed separately. Peak memory is the process's peak resident set (`VmHWM`).
//!
//! ```text
//! inseq-bench-job --model smollm2 --method saliency --input "The capital of France is" --max-new-tokens 10
//! ```

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use inseq::{AttributeOptions, GenerationOptions, MethodArgs};

#[derive(Parser)]
#[command(about = "Time one inseq-rs attribution job")]
struct Args {
    /// Model directory, .gguf file or alias.
    #[arg(long)]
    model: String,
    /// Attribution method id.
    #[arg(long)]
    method: String,
    /// Method arguments, e.g. `n_steps=50`.
    #[arg(long, default_value = "")]
    method_args: String,
    /// Prompt.
    #[arg(long)]
    input: String,
    /// Tokens generated (and attributed); end-of-sequence is suppressed until then.
    #[arg(long, default_value_t = 10)]
    max_new_tokens: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Device: cpu (flex), ndarray, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Instead of a job, measure the matmul throughput of `[N, N] x [N, N]` f32 products.
    #[arg(long, value_name = "N")]
    matmul: Option<usize>,
}

/// Median GFLOP/s of `[n, n] x [n, n]` f32 matmuls on `device` (the machine's attainable peak
/// for `docs/performance.md`).
fn matmul_gflops(device: &burn::tensor::Device, n: usize, repeats: usize) -> f64 {
    use burn::tensor::{Distribution, Tensor};
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    let mut rates: Vec<f64> = (0..repeats.max(1) + 1)
        .map(|_| {
            let t = Instant::now();
            let c = a.clone().matmul(b.clone());
            let _ = c.into_data();
            2.0 * (n as f64).powi(3) / t.elapsed().as_secs_f64() / 1e9
        })
        .skip(1)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Methods Python Inseq 0.7.1 runs once at the final step and refuses step scores for.
const FINAL_STEP_METHODS: [&str; 2] = ["attention", "value_zeroing"];

/// Peak resident set of this process in kB (Linux `VmHWM`), 0 where unknown.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = inseq::parse_device(&args.device)?;
    if let Some(n) = args.matmul {
        let gflops = matmul_gflops(&device, n, args.repeats);
        println!(
            "{}",
            serde_json::json!({"impl": "inseq-rs", "device": args.device, "matmul_n": n, "gflops": gflops})
        );
        return Ok(());
    }
    let t0 = Instant::now();
    let model = inseq::load_model(
        &args.model,
        &args.method,
        MethodArgs::parse(&args.method_args)?,
        &device,
    )
    .with_context(|| format!("loading {}", args.model))?;
    let load_s = t0.elapsed().as_secs_f64();
    let opts = AttributeOptions {
        generation: GenerationOptions {
            max_new_tokens: args.max_new_tokens,
            min_new_tokens: args.max_new_tokens,
            ..Default::default()
        },
        // As Python Inseq 0.7.1, which refuses step scores with its final-step methods.
        step_scores: if FINAL_STEP_METHODS.contains(&args.method.as_str()) {
            vec![]
        } else {
            vec!["probability".into()]
        },
        ..Default::default()
    };
    let mut times = Vec::with_capacity(args.repeats);
    let mut out = None;
    for i in 0..args.warmup + args.repeats {
        let t = Instant::now();
        out = Some(model.attribute(&[args.input.as_str()], &opts)?);
        if i >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let seq = &out.context("no run")?.sequence_attributions[0];
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    let report = serde_json::json!({
        "impl": "inseq-rs",
        "device": args.device,
        "load_s": load_s,
        "times_s": times,
        "median_s": median,
        "peak_rss_kb": peak_rss_kb(),
        "input_tokens": seq.attr_pos_start,
        "generated_tokens": seq.attr_pos_end - seq.attr_pos_start,
        "target": seq.target.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
    });
    println!("{report}");
    Ok(())
}
