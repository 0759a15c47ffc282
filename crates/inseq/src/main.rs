//! The `inseq` command-line tool.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use inseq::dataset::{DatasetJob, OnError, OutputStore, Shard, SplitSpec};
use inseq::{
    AttributeOptions, AttributionModel, GenerationOptions, MethodArgs, MethodRegistry, StepArgs,
    StepRegistry,
};

#[derive(Parser)]
#[command(
    name = "inseq",
    version,
    about = "Attribute the generations of Transformer language models to their inputs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attribute a model's generation (or a forced target) for one or more inputs.
    Attribute(Box<AttributeArgs>),
    /// Attribute every row of a dataset (JSONL, CSV, Parquet or a Hugging Face dataset id).
    AttributeDataset(Box<DatasetArgs>),
    /// Find which output tokens depend on an input context and which context tokens they rely on (PECoRe).
    AttributeContext(Box<ContextCliArgs>),
    /// Merge the outputs of several `attribute-dataset` runs (e.g. shards) into one.
    Merge(MergeArgs),
    /// List the attribution method ids.
    ListMethods,
    /// List the step function ids.
    ListStepFunctions,
}

/// Which model and method.
#[derive(clap::Args)]
struct ModelArgs {
    /// Model directory, .gguf file, alias (smollm2) or Hugging Face id.
    #[arg(long)]
    model: String,
    /// Attribution method id (see `inseq list-methods`).
    #[arg(long, default_value = "saliency")]
    method: String,
    /// Method arguments, e.g. `n_steps=16,internal_batch_size=8`.
    #[arg(long, default_value = "")]
    method_args: String,
    /// Device: cpu, ndarray, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl ModelArgs {
    fn load(&self) -> Result<AttributionModel> {
        let device = inseq::parse_device(&self.device)?;
        inseq::load_model(
            &self.model,
            &self.method,
            MethodArgs::parse(&self.method_args)?,
            &device,
        )
        .with_context(|| format!("loading `{}` with method `{}`", self.model, self.method))
    }
}

/// How each sequence is attributed.
#[derive(clap::Args)]
struct RunArgs {
    /// Tokens to generate when no target is given.
    #[arg(long, default_value_t = 10)]
    max_new_tokens: usize,
    /// Minimum new tokens (end-of-sequence suppressed before).
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    /// Step scores to record, comma separated (see `inseq list-step-functions`).
    #[arg(long, value_delimiter = ',')]
    step_scores: Vec<String>,
    /// Step score arguments, e.g. `top_p=0.9`.
    #[arg(long, default_value = "")]
    step_scores_args: String,
    /// Function to attribute (a step function id).
    #[arg(long, default_value = "probability")]
    attributed_fn: String,
    /// Arguments of the attributed function, e.g. `logprob=true`.
    #[arg(long, default_value = "")]
    attributed_fn_args: String,
    /// Encoder-decoder models: also attribute the target prefix.
    #[arg(long)]
    attribute_target: bool,
    /// First target position to attribute (negative: from the end). Decoder-only models start
    /// after the prompt at the earliest, as in Inseq, unless --attribute-prompt.
    #[arg(long, allow_negative_numbers = true)]
    attr_pos_start: Option<isize>,
    /// One past the last target position to attribute (negative: from the end).
    #[arg(long, allow_negative_numbers = true)]
    attr_pos_end: Option<isize>,
    /// Decoder-only models: attribute prompt positions from --attr-pos-start on, as if
    /// generated (Inseq always starts after the prompt).
    #[arg(long)]
    attribute_prompt: bool,
    /// Reproduce Python Inseq 0.7.1's numbers where they are wrong (Marian's double embedding
    /// scale; a generated continuation decoded and re-tokenised before it is attributed).
    #[arg(long)]
    inseq_compat: bool,
    /// Baselines of path and perturbation methods replace end-of-sequence tokens too (Inseq's
    /// `include_eos_baseline`; by default they keep their own embedding).
    #[arg(long)]
    include_eos_baseline: bool,
    /// Token strings in the output as the text each token decodes to (`Ġcaf` → ` caf`), as
    /// Inseq's `clean_special_chars`.
    #[arg(long)]
    clean_special_chars: bool,
    /// Remove the tokenizer's special tokens from the texts and add none (Inseq's
    /// `skip_special_tokens`).
    #[arg(long)]
    skip_special_tokens: bool,
    /// Write NaN/inf attributions and step scores instead of failing (for debugging a model).
    #[arg(long)]
    allow_non_finite: bool,
    /// Hugging Face `generate` arguments as JSON, as Inseq's `generation_args`, e.g.
    /// '{"do_sample": true, "top_k": 5, "max_new_tokens": 10}'; they override the flags.
    #[arg(long)]
    generation_args: Option<String>,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    do_sample: bool,
    /// Sampler seed (each input row draws from its own generator seeded from it and the row's
    /// tokens: the same tokens in any batch).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature (default: the model's generation_config.json, else 1).
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample among the `top_k` most likely tokens (0: all; default: the model's
    /// generation_config.json, else 0).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample within the smallest set of tokens of probability `top_p` (default: the model's
    /// generation_config.json, else 1).
    #[arg(long)]
    top_p: Option<f32>,
    /// Beam search with this many beams (1: greedy decoding or sampling; default: the model's
    /// generation_config.json, else 1).
    #[arg(long)]
    num_beams: Option<usize>,
}

impl RunArgs {
    /// Generation options: `defaults` (the model's generation_config.json, as Hugging Face
    /// `generate` starts from it), then the flags given, then `--generation-args`.
    fn generation(&self, defaults: GenerationOptions) -> Result<GenerationOptions> {
        let mut generation = defaults;
        let mut flags = serde_json::json!({
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "seed": self.seed,
        });
        let given = [
            (
                "do_sample",
                self.do_sample.then_some(serde_json::json!(true)),
            ),
            (
                "temperature",
                self.temperature.map(|v| serde_json::json!(v)),
            ),
            ("top_k", self.top_k.map(|v| serde_json::json!(v))),
            ("top_p", self.top_p.map(|v| serde_json::json!(v))),
            ("num_beams", self.num_beams.map(|v| serde_json::json!(v))),
        ];
        for (key, value) in given {
            if let Some(value) = value {
                flags[key] = value;
            }
        }
        generation.update_from_json(flags.as_object().expect("an object"), "the flags")?;
        if let Some(json) = &self.generation_args {
            let args: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(json).context("--generation-args must be a JSON object")?;
            generation.update_from_json(&args, "--generation-args")?;
        }
        Ok(generation)
    }

    /// [`Self::generation`] from the model's defaults. `forced`: every row has a target, so
    /// nothing is generated and defaults this crate cannot apply do not matter.
    fn generation_for(&self, model: &AttributionModel, forced: bool) -> Result<GenerationOptions> {
        match model.generation_defaults() {
            Ok(defaults) => self.generation(defaults),
            Err(_) if forced => self.generation(GenerationOptions::default()),
            Err(e) => Err(e.into()),
        }
    }

    fn options(&self) -> Result<AttributeOptions> {
        Ok(AttributeOptions {
            generation: self.generation(GenerationOptions::default())?,
            attr_pos_start: self.attr_pos_start,
            attr_pos_end: self.attr_pos_end,
            attribute_prompt: self.attribute_prompt,
            step_scores: self
                .step_scores
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            step_scores_args: StepArgs::parse(&self.step_scores_args)?,
            attributed_fn: self.attributed_fn.clone(),
            attributed_fn_args: StepArgs::parse(&self.attributed_fn_args)?,
            attribute_target: self.attribute_target,
            progress: std::io::stderr().is_terminal().then(step_progress_bar),
            inseq_compat: self.inseq_compat,
            include_eos_baseline: self.include_eos_baseline,
            clean_special_chars: self.clean_special_chars,
            skip_special_tokens: self.skip_special_tokens,
            allow_non_finite: self.allow_non_finite,
            ..Default::default()
        })
    }
}

#[derive(clap::Args)]
struct AttributeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Input text (repeat for a batch).
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Forced target text, one per input (decoder-only: must start with the input).
    #[arg(long)]
    target: Vec<String>,
    /// Contrastive target, one per input (decoder-only: the full contrastive text, prompt included).
    #[arg(long)]
    contrast_target: Vec<String>,
    /// Contrastive source, one per input (encoder-decoder models).
    #[arg(long)]
    contrast_source: Vec<String>,
    /// Alignment of target to contrastive positions: `auto`, `right` (default) or pairs `5-5,6-7`; one per input.
    #[arg(long)]
    contrast_alignments: Vec<String>,
    /// Save the raw (not aggregated) result as JSON (this project's schema).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Save the raw result in Python Inseq's file format (`FeatureAttributionOutput.load` reads it).
    #[arg(long)]
    save_inseq: Option<PathBuf>,
    /// Extra visualisations: `html:PATH` (self-contained page) or `svg:PATH` (one file per sequence).
    #[arg(long)]
    viz: Vec<String>,
    /// Aggregation pipeline for display instead of Inseq's default, e.g. `subwords:sum,vnorm`.
    #[arg(long)]
    aggregation: Option<String>,
    /// Never use colours.
    #[arg(long)]
    no_color: bool,
    /// Do not print the heatmap.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct DatasetArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    /// A .jsonl, .csv or .parquet file, a directory of them, or a Hugging Face dataset id.
    #[arg(long)]
    data: String,
    /// Field holding the input text.
    #[arg(long, default_value = "text")]
    input_field: String,
    /// Field holding a forced target (otherwise the model generates).
    #[arg(long)]
    target_field: Option<String>,
    /// Split and slice, e.g. `train`, `train[:20]`, `test[100:200]`.
    #[arg(long, default_value = "train")]
    split: String,
    /// Rows attributed together.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Output: a directory (one JSON per row) or a `.jsonl` file. Rows already there are skipped.
    #[arg(long)]
    save: PathBuf,
    /// Also write one HTML page with every stored row.
    #[arg(long)]
    viz_path: Option<PathBuf>,
    /// Process only shard I of N (rows whose number is I modulo N); merge shards with `inseq merge`.
    #[arg(long)]
    shard: Option<String>,
    /// What to do with a row that cannot be attributed: `skip` (report it) or `fail`.
    #[arg(long, default_value = "skip")]
    on_error: String,
}

#[derive(clap::Args)]
struct ContextCliArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The context preceding the current input ({context} of the input template).
    #[arg(long)]
    input_context_text: Option<String>,
    /// The current input ({current} of the input template).
    #[arg(long)]
    input_current_text: String,
    /// The output context ({context} of the output template), e.g. a previous sentence or a reasoning
    /// chain; generated with the current output when the output template has {context} and this is absent.
    #[arg(long)]
    output_context_text: Option<String>,
    /// The output to explain ({current} of the output template; generated when absent).
    #[arg(long)]
    output_current_text: Option<String>,
    /// Template of the model input [default: "{context} {current}" with an input context, else "{current}"].
    #[arg(long)]
    input_template: Option<String>,
    /// Template of the model output [default: "{context} {current}" with --output-context-text, else "{current}"].
    #[arg(long)]
    output_template: Option<String>,
    /// Template of the input without context, for the contrastive comparison [default: "{current}"].
    #[arg(long)]
    contextless_input_current_text: Option<String>,
    /// Template of the output without context, for the contrastive comparison [default: "{current}"].
    #[arg(long)]
    contextless_output_current_text: Option<String>,
    /// How a generated output context is split off: manual (ask; needs a terminal), auto (split at the
    /// template's separator) or pre (--output-context-text required).
    #[arg(long, default_value = "manual")]
    handle_output_context_strategy: String,
    /// Special tokens kept in generated texts and token lists, e.g. a <brk> separator.
    #[arg(long, num_args = 1..)]
    special_tokens_to_keep: Vec<String>,
    /// Decoder-only models: what joins input and output.
    #[arg(long, default_value = " ", allow_hyphen_values = true)]
    decoder_input_output_separator: String,
    /// Contrastive metric for context-sensitive token identification.
    #[arg(long, default_value = "kl_divergence")]
    context_sensitivity_metric: String,
    /// k in the CTI threshold mean + k·std.
    #[arg(long, default_value_t = 1.0)]
    context_sensitivity_std_threshold: f64,
    /// Keep at most this many context-sensitive tokens.
    #[arg(long)]
    context_sensitivity_topk: Option<usize>,
    /// Function attributed for contextual cue imputation (Inseq's default probability; PECoRe uses contrast_prob_diff).
    #[arg(long, default_value = "probability")]
    attributed_fn: String,
    /// k in the CCI threshold mean + k·std.
    #[arg(long, default_value_t = 1.0)]
    attribution_std_threshold: f64,
    /// Keep at most this many cues per context and token.
    #[arg(long)]
    attribution_topk: Option<usize>,
    /// Tokens to generate when no output is given.
    #[arg(long, default_value_t = 10)]
    max_new_tokens: usize,
    /// Show the CTI step scores and each CCI attribution as heatmaps.
    #[arg(long)]
    show_intermediate_outputs: bool,
    /// Save the result as JSON (Inseq's AttributeContextOutput layout).
    #[arg(long, short = 'o', alias = "save")]
    save_path: Option<PathBuf>,
    /// Write an HTML report.
    #[arg(long)]
    viz_path: Option<PathBuf>,
    /// Never use colours.
    #[arg(long)]
    no_color: bool,
}

#[derive(clap::Args)]
struct MergeArgs {
    /// Outputs of `attribute-dataset` runs (directories or .jsonl files).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Merged output (a directory or a .jsonl file).
    #[arg(long)]
    output: PathBuf,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::ListMethods => {
            for (id, desc) in MethodRegistry::with_defaults().describe() {
                println!("{id:<34} {desc}");
            }
            Ok(())
        }
        Command::ListStepFunctions => {
            for (id, desc) in StepRegistry::with_defaults().describe() {
                println!("{id:<22} {desc}");
            }
            Ok(())
        }
        Command::Attribute(a) => attribute(*a),
        Command::AttributeDataset(a) => attribute_dataset(*a),
        Command::AttributeContext(a) => attribute_context(*a),
        Command::Merge(m) => {
            let inputs: Vec<OutputStore> =
                m.inputs.iter().map(|p| OutputStore::from_path(p)).collect();
            let n = inseq::dataset::merge(&inputs, &OutputStore::from_path(&m.output))?;
            eprintln!("merged {n} rows into {}", m.output.display());
            Ok(())
        }
    }
}

/// `out.svg` -> `out-2.svg` for the i-th (0-based) sequence.
fn numbered(path: &str, i: usize) -> String {
    let p = std::path::Path::new(path);
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = p.extension().and_then(|s| s.to_str()).unwrap_or("svg");
    p.with_file_name(format!("{stem}-{}.{ext}", i + 1))
        .to_string_lossy()
        .into_owned()
}

fn attribute(a: AttributeArgs) -> Result<()> {
    if !a.target.is_empty() && a.target.len() != a.input.len() {
        bail!(
            "got {} --target for {} --input: give one target per input",
            a.target.len(),
            a.input.len()
        );
    }
    let viz = a
        .viz
        .iter()
        .map(|spec| VizOutput::parse(spec))
        .collect::<Result<Vec<_>>>()?;
    let pipeline = a
        .aggregation
        .as_deref()
        .map(inseq::aggregation::Pipeline::parse)
        .transpose()?;
    for (flag, path) in [("--save", &a.save), ("--save-inseq", &a.save_inseq)] {
        if let Some(path) = path {
            check_output_file(flag, path)?;
        }
    }
    let mut run_opts = a.run.options()?;
    let model = a.model.load()?;
    run_opts.generation = a.run.generation_for(&model, !a.target.is_empty())?;
    let opts = AttributeOptions {
        targets: (!a.target.is_empty()).then(|| a.target.clone()),
        contrast_targets: (!a.contrast_target.is_empty()).then(|| a.contrast_target.clone()),
        contrast_sources: (!a.contrast_source.is_empty()).then(|| a.contrast_source.clone()),
        contrast_alignments: if a.contrast_alignments.is_empty() {
            None
        } else {
            Some(
                a.contrast_alignments
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<Vec<_>, _>>()?,
            )
        },
        ..run_opts
    };
    let inputs: Vec<&str> = a.input.iter().map(String::as_str).collect();
    let out = model.attribute(&inputs, &opts)?;
    // Outputs are written only once everything they depend on has succeeded.
    let shown = match &pipeline {
        Some(p) => model.aggregate_with(&out, p)?,
        None => inseq::aggregate(&out)?,
    };
    if let Some(path) = &a.save {
        out.save(path)?;
        eprintln!("saved {}", path.display());
    }
    if let Some(path) = &a.save_inseq {
        out.save_inseq(path, &Default::default())?;
        eprintln!("saved {} (Python Inseq format)", path.display());
    }
    for v in &viz {
        v.write(&shown.sequence_attributions)?;
        eprintln!("wrote {}", v.path);
    }
    if !a.quiet {
        let color = !a.no_color
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none();
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(120);
        for seq in &shown.sequence_attributions {
            let opts = inseq::viz::TerminalOptions {
                color,
                width,
                ..Default::default()
            };
            println!("{}", inseq::viz::render_terminal(seq, &opts));
        }
    }
    Ok(())
}

/// A `--viz KIND:PATH` output, checked before any model work.
struct VizOutput {
    /// `html` or `svg`.
    kind: &'static str,
    path: String,
}

impl VizOutput {
    fn parse(spec: &str) -> Result<Self> {
        let (kind, path) = spec
            .split_once(':')
            .with_context(|| format!("--viz `{spec}`: expected html:PATH or svg:PATH"))?;
        let kind = match kind {
            "html" => "html",
            "svg" => "svg",
            other => bail!("--viz `{spec}`: unknown kind `{other}` (expected html or svg)"),
        };
        check_output_file("--viz", std::path::Path::new(path))?;
        Ok(Self {
            kind,
            path: path.to_string(),
        })
    }

    fn write(&self, seqs: &[inseq::SequenceAttribution]) -> Result<()> {
        if self.kind == "html" {
            return Ok(inseq::viz::save_html(&self.path, seqs)?);
        }
        for (i, seq) in seqs.iter().enumerate() {
            let p = if seqs.len() == 1 {
                self.path.clone()
            } else {
                numbered(&self.path, i)
            };
            inseq::viz::save_svg(&p, seq)?;
        }
        Ok(())
    }
}

/// Fails unless the folder `path` goes in exists.
fn check_output_folder(flag: &str, path: &std::path::Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Fails unless `path` can be written as a file: its folder exists and it is not a folder.
fn check_output_file(flag: &str, path: &std::path::Path) -> Result<()> {
    check_output_folder(flag, path)?;
    if path.is_dir() {
        bail!(
            "{flag} {}: is a folder, expected a file path",
            path.display()
        );
    }
    Ok(())
}

fn attribute_dataset(a: DatasetArgs) -> Result<()> {
    let split: SplitSpec = a.split.parse()?;
    check_output_folder("--save", &a.save)?;
    if let Some(path) = &a.viz_path {
        check_output_file("--viz-path", path)?;
    }
    let run_opts = a.run.options()?;
    let job = DatasetJob {
        store: OutputStore::from_path(&a.save),
        shard: a.shard.as_deref().map(str::parse::<Shard>).transpose()?,
        batch_size: a.batch_size,
        on_error: a.on_error.parse::<OnError>()?,
    };
    let rows =
        inseq::dataset::read_rows(&a.data, &split, &a.input_field, a.target_field.as_deref())?;
    let model = a.model.load()?;
    let forced = rows
        .iter()
        .all(|r| matches!(&r.content, Ok((_, Some(_))) | Err(_)));
    let opts = AttributeOptions {
        progress: None,
        generation: a.run.generation_for(&model, forced)?,
        ..run_opts
    };
    let total = rows
        .iter()
        .filter(|r| job.shard.is_none_or(|s| s.contains(r.index)))
        .count();
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| indicatif::ProgressBar::new(total as u64));
    let report = inseq::dataset::attribute_dataset(&model, &rows, &opts, &job, |n| {
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (row, reason) in &report.failed {
        eprintln!("row {row}: skipped: {reason}");
    }
    eprintln!(
        "{} rows attributed, {} already done, {} skipped -> {}",
        report.attributed,
        report.resumed,
        report.failed.len(),
        a.save.display()
    );
    if let Some(path) = &a.viz_path {
        let stored = job.store.read_all()?;
        let mut seqs = Vec::with_capacity(stored.len());
        for (_, out) in &stored {
            seqs.extend(inseq::aggregate(out)?.sequence_attributions);
        }
        inseq::viz::save_html(path, &seqs)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `attribute-context` callbacks: asks for the output context on a terminal, shows intermediate outputs.
struct ContextPrompt {
    interactive: bool,
    show_intermediate: bool,
    color: bool,
}

impl ContextPrompt {
    fn ask(&self, question: &str) -> Result<String> {
        use std::io::Write;
        eprint!("{question} ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 {
            bail!("no answer (end of input)");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn confirm(&self, question: &str) -> Result<bool> {
        let answer = self.ask(&format!("{question} [y/n]"))?;
        Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
    }
}

impl inseq::context::ContextCallbacks for ContextPrompt {
    fn output_context(
        &mut self,
        generated: &str,
        candidate: Option<&str>,
    ) -> inseq::Result<String> {
        if !self.interactive {
            return Err(inseq::context::manual_output_context_error(
                generated, candidate,
            ));
        }
        let io = |e: anyhow::Error| {
            inseq::Error::InvalidInput(format!("reading the output context: {e:#}"))
        };
        eprintln!("The model generated: \"{generated}\"");
        if let Some(c) = candidate
            && self
                .confirm(&format!(
                    "Is \"{c}\" the output context you want to attribute?"
                ))
                .map_err(io)?
        {
            return Ok(c.to_string());
        }
        loop {
            let answer = self
                .ask("Enter the start of the generated output that is the output context:")
                .map_err(io)?;
            let answer = answer.trim();
            if answer.is_empty() {
                if self
                    .confirm("The output context is empty. Use an empty output context?")
                    .map_err(io)?
                {
                    return Ok(String::new());
                }
                continue;
            }
            if generated.starts_with(answer) {
                return Ok(answer.to_string());
            }
            eprintln!("\"{answer}\" is not the start of the generated output; try again.");
        }
    }

    fn intermediate(&mut self, stage: &str, out: &inseq::AttributionOutput) {
        if !self.show_intermediate {
            return;
        }
        let opts = inseq::viz::TerminalOptions {
            color: self.color,
            ..Default::default()
        };
        println!("--- {stage} ---");
        for seq in &out.sequence_attributions {
            println!("{}", inseq::viz::render_terminal(seq, &opts));
        }
    }
}

fn attribute_context(a: ContextCliArgs) -> Result<()> {
    let strategy: inseq::context::OutputContextStrategy =
        a.handle_output_context_strategy.parse()?;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let needs_split = a.output_context_text.is_none()
        && a.output_template
            .as_deref()
            .is_some_and(|t| t.contains("{context}"));
    if needs_split && strategy == inseq::context::OutputContextStrategy::Manual && !interactive {
        bail!(
            "--handle-output-context-strategy manual asks for the output context, but this run is not \
             interactive (no terminal): pass the output context with --output-context-text, or use \
             --handle-output-context-strategy auto (split the generation at the output template's \
             separator) or pre (with --output-context-text)"
        );
    }
    let model = a.model.load()?;
    let args = inseq::context::ContextArgs {
        input_context_text: a.input_context_text,
        input_current_text: a.input_current_text,
        output_context_text: a.output_context_text,
        output_current_text: a.output_current_text,
        input_template: a.input_template,
        output_template: a.output_template,
        contextless_input_current_text: a.contextless_input_current_text,
        contextless_output_current_text: a.contextless_output_current_text,
        handle_output_context_strategy: strategy,
        special_tokens_to_keep: a.special_tokens_to_keep,
        decoder_input_output_separator: a.decoder_input_output_separator,
        context_sensitivity_metric: a.context_sensitivity_metric,
        context_sensitivity_std_threshold: a.context_sensitivity_std_threshold,
        context_sensitivity_topk: a.context_sensitivity_topk,
        attributed_fn: a.attributed_fn,
        attribution_std_threshold: a.attribution_std_threshold,
        attribution_topk: a.attribution_topk,
        generation: GenerationOptions {
            max_new_tokens: a.max_new_tokens,
            ..Default::default()
        },
    };
    let color =
        !a.no_color && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut prompt = ContextPrompt {
        interactive,
        show_intermediate: a.show_intermediate_outputs,
        color,
    };
    let mut out = inseq::context::attribute_context_with(&model, &args, &mut prompt)?;
    if let Some(info) = &mut out.info {
        info.model_name_or_path = Some(a.model.model.clone());
    }
    println!("{}", inseq::viz::render_context_terminal(&out, color));
    if let Some(path) = &a.save_path {
        out.save(path)?;
        eprintln!("saved {}", path.display());
    }
    if let Some(path) = &a.viz_path {
        inseq::core::write_atomic(path, inseq::viz::render_context_html(&out).as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A progress bar on stderr over the attributed steps, cleared when they are all done.
fn step_progress_bar() -> inseq::Progress {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} attributing [{bar:30}] {pos}/{len} steps ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    inseq::Progress::new(move |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
        }
    })
}
