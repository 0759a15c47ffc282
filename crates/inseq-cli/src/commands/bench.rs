//! `inseq bench`: the same attribution jobs on several devices and methods: time per generated
//! token, peak resident memory, and the largest difference of each device's attributions from
//! the CPU's (or the first device's), as a table and JSON.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use inseq::{AttributeOptions, MethodArgs, Registries};
use inseq_eval::bench::{BenchRow, attributed_tokens, bench_table, max_abs_diff, run_job};

use super::eval_common::{forced_rows, method_specs, with_random};
use crate::args::{LoadArgs, RunArgs};
use crate::dataset::{DatasetJob, DatasetRow, OnError, OutputStore, SplitSpec, read_rows};
use crate::output::check_output_file;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Model directory, .gguf file, alias (smollm2) or Hugging Face id.
    #[arg(long)]
    model: String,
    /// Devices, comma separated: cpu (flex), ndarray, wgpu, cuda (those built in). The first
    /// `cpu` (else the first device) is the reference of the differences.
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    devices: Vec<String>,
    #[command(flatten)]
    load: LoadArgs,
    /// Methods, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "saliency")]
    methods: Vec<String>,
    /// Arguments of one method, `METHOD:ARGS` (repeat), e.g. `ig:n_steps=8`.
    #[arg(long)]
    method_args: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
    /// Input text (repeat); or use --data.
    #[arg(long)]
    input: Vec<String>,
    /// A .jsonl, .csv or .parquet file, a directory of them, or a Hugging Face dataset id.
    #[arg(long)]
    data: Option<String>,
    /// Field holding the input text.
    #[arg(long, default_value = "text")]
    input_field: String,
    /// Split and slice, e.g. `train[:10]`.
    #[arg(long, default_value = "train")]
    split: String,
    /// Write the rows as JSON.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Do not run each job once on the first input before timing it (the warm-up compiles the
    /// GPU kernels of wgpu and cuda, which the timed run then reuses).
    #[arg(long)]
    no_warmup: bool,
}

pub(crate) fn run(a: BenchArgs, registries: &Registries) -> Result<()> {
    let registries = with_random(registries);
    let specs = method_specs(&a.methods, &a.method_args, &registries)?;
    if let Some(p) = &a.save {
        check_output_file("--save", p)?;
    }
    let devices = a.devices()?;
    let rows = a.rows()?;
    let reference = devices
        .iter()
        .position(|(n, _)| n == "cpu" || n == "flex")
        .unwrap_or(0);
    let order: Vec<usize> = std::iter::once(reference)
        .chain((0..devices.len()).filter(|&i| i != reference))
        .collect();
    let (ref_name, ref_device) = &devices[reference];
    let mut model = inseq::load_model_with_options(
        &a.model,
        "dummy",
        MethodArgs::default(),
        ref_device,
        registries.clone(),
        &a.load.options()?,
    )
    .with_context(|| format!("loading `{}` on {ref_name}", a.model))?;
    let opts = AttributeOptions {
        progress: None,
        generation: a.run.generation_for(&model, false)?,
        ..a.run.options()?
    };
    let scratch = std::env::temp_dir().join(format!("inseq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let job = DatasetJob {
        store: OutputStore::from_path(&scratch.join("targets.jsonl")),
        shard: None,
        batch_size: 1,
        on_error: OnError::Fail,
    };
    let forced = forced_rows(&mut model, &rows, &opts, &job);
    let _ = std::fs::remove_dir_all(&scratch);
    let jobs: Vec<(String, String)> = forced?
        .into_iter()
        .filter_map(|r| r.content.ok().and_then(|(i, t)| t.map(|t| (i, t))))
        .collect();
    let mut reference_outputs = vec![None; specs.len()];
    let mut table = Vec::new();
    for &d in &order {
        let (name, device) = &devices[d];
        if d != reference {
            model = inseq::load_model_with_options(
                &a.model,
                "dummy",
                MethodArgs::default(),
                device,
                registries.clone(),
                &a.load.options()?,
            )
            .with_context(|| format!("loading `{}` on {name}", a.model))?;
        }
        for (m, spec) in specs.iter().enumerate() {
            eprintln!("bench: {name} {}", spec.id);
            model.set_method(&spec.id, spec.args.clone())?;
            if !a.no_warmup {
                let _ = run_job(&model, &jobs[..jobs.len().min(1)], &opts);
            }
            table.push(match run_job(&model, &jobs, &opts) {
                Ok((outputs, seconds, peak)) => {
                    let tokens = attributed_tokens(&outputs);
                    let diff = reference_outputs[m]
                        .as_ref()
                        .and_then(|r: &Vec<_>| max_abs_diff(&outputs, r));
                    if d == reference {
                        reference_outputs[m] = Some(outputs);
                    }
                    BenchRow {
                        device: name.clone(),
                        method: spec.id.clone(),
                        tokens,
                        seconds,
                        ms_per_token: 1e3 * seconds / tokens.max(1) as f64,
                        peak_rss_mib: peak,
                        max_abs_diff: diff.map(|d| d.0),
                        max_abs_reference: diff.map(|d| d.1),
                        error: None,
                    }
                }
                Err(e) => failed(name, &spec.id, e.to_string()),
            });
        }
    }
    println!("{}", bench_table(&table));
    if let Some(p) = &a.save {
        let json = serde_json::to_string_pretty(&table)?;
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn failed(device: &str, method: &str, error: String) -> BenchRow {
    BenchRow {
        device: device.into(),
        method: method.into(),
        tokens: 0,
        seconds: 0.0,
        ms_per_token: 0.0,
        peak_rss_mib: None,
        max_abs_diff: None,
        max_abs_reference: None,
        error: Some(error),
    }
}

impl BenchArgs {
    fn devices(&self) -> Result<Vec<(String, burn::tensor::Device)>> {
        let names: Vec<&str> = self
            .devices
            .iter()
            .map(|d| d.trim())
            .filter(|d| !d.is_empty())
            .collect();
        if names.is_empty() {
            bail!(
                "--devices: name at least one device ({})",
                inseq::DEVICE_NAMES
            );
        }
        names
            .into_iter()
            .map(|n| {
                Ok((
                    n.to_string(),
                    inseq::parse_device(n).with_context(|| format!("--devices {n}"))?,
                ))
            })
            .collect()
    }

    fn rows(&self) -> Result<Vec<DatasetRow>> {
        if let Some(data) = &self.data {
            let split: SplitSpec = self.split.parse()?;
            return Ok(read_rows(data, &split, &self.input_field, None)?);
        }
        if self.input.is_empty() {
            bail!("give --input TEXT (repeatable) or --data FILE");
        }
        Ok(self
            .input
            .iter()
            .enumerate()
            .map(|(index, t)| DatasetRow {
                index,
                content: Ok((t.clone(), None)),
            })
            .collect())
    }
}
