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
    /// Instead of a job, time the forward passes of greedy decoding with the key/value cache:
    /// the prompt pass and the median one-token pass of each run (`python/generation_passes.py`
    /// times the same with torch).
    #[arg(long)]
    generation_passes: bool,
}

/// Milliseconds of the prompt pass and median milliseconds of the `new_tokens - 1` one-token
/// passes of one greedy decoding of `prompt`.
fn time_generation_passes(
    model: &dyn inseq::models::LanguageModel,
    prompt: &[usize],
    new_tokens: usize,
) -> anyhow::Result<(f64, f64)> {
    use inseq::models::{ForwardOptions, KvCache, ModelInput, ids_tensor};
    let device = model.device();
    let cache = KvCache::default();
    let mut ids = prompt.to_vec();
    let mut passes = Vec::with_capacity(new_tokens);
    for _ in 0..new_tokens {
        let t = Instant::now();
        let input = ModelInput {
            target_embeds: model.embed(ids_tensor(&[ids[cache.len()..].to_vec()], device)),
            target_mask: vec![vec![true; ids.len()]],
            source_embeds: None,
            source_mask: None,
        };
        let options = ForwardOptions {
            last_position_only: true,
            kv_cache: Some(cache.clone()),
            ..Default::default()
        };
        let logits = model
            .forward(input, options)
            .last_logits()
            .try_to_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .context("empty logits")?;
        ids.push(next);
        passes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((passes[0], median(passes[1..].to_vec())))
}

/// Median (mean of the middle two for an even count); NaN when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
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
    if args.generation_passes {
        let prompt = model.tokenizer().encode(&args.input, true)?;
        let runs = (0..args.warmup + args.repeats)
            .map(|_| time_generation_passes(model.model(), &prompt, args.max_new_tokens.max(2)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let timed = &runs[args.warmup.min(runs.len())..];
        println!(
            "{}",
            serde_json::json!({
                "impl": "inseq-rs",
                "prompt_tokens": prompt.len(),
                "prompt_pass_ms": timed.iter().map(|r| r.0).collect::<Vec<_>>(),
                "one_token_pass_median_ms": timed.iter().map(|r| r.1).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
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
    let median = median(times.clone());
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
