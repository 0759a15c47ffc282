//! The command line: the subcommands and the arguments they share (which model, how each sequence
//! is attributed).

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use inseq::{AttributeOptions, AttributionModel, GenerationOptions, StepArgs};

use crate::commands::{
    AttributeArgs, BenchArgs, ContextCliArgs, DatasetArgs, EvaluateArgs, MergeArgs,
};

/// The `inseq` command line.
#[derive(Parser)]
#[command(
    name = "inseq",
    version,
    about = "Attribute the generations of Transformer language models to their inputs"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Attribute a model's generation (or a forced target) for one or more inputs.
    Attribute(Box<AttributeArgs>),
    /// Attribute every row of a dataset (JSONL, CSV, Parquet or a Hugging Face dataset id).
    AttributeDataset(Box<DatasetArgs>),
    /// Find which output tokens depend on an input context and which context tokens they rely on (PECoRe).
    AttributeContext(Box<ContextCliArgs>),
    /// Merge the outputs of several `attribute-dataset` runs (e.g. shards) into one.
    Merge(MergeArgs),
    /// Compare methods' faithfulness on a dataset (deletion/insertion, AOPC, Soft-NC/NS, model
    /// randomisation), with a random reference.
    Evaluate(Box<EvaluateArgs>),
    /// Time the same attribution jobs on several devices and compare their attributions.
    Bench(Box<BenchArgs>),
    /// List the attribution method ids.
    ListMethods,
    /// List the step function ids.
    ListStepFunctions,
    /// List the metric ids of `evaluate --metrics`.
    ListMetrics,
}

/// Which model and method.
#[derive(clap::Args)]
pub(crate) struct ModelArgs {
    /// Model directory, .gguf file, alias (smollm2) or Hugging Face id.
    #[arg(long)]
    pub(crate) model: String,
    /// Attribution method id (see `inseq list-methods`).
    #[arg(long, default_value = "saliency")]
    pub(crate) method: String,
    /// Method arguments, e.g. `n_steps=16,internal_batch_size=8`.
    #[arg(long, default_value = "")]
    pub(crate) method_args: String,
    /// Device: cpu, ndarray, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

/// The dataset a command reads: `--data`, its fields and its split.
#[derive(clap::Args)]
pub(crate) struct DataArgs {
    /// A .jsonl, .csv or .parquet file, a directory of them, or a Hugging Face dataset id.
    #[arg(long)]
    pub(crate) data: String,
    /// Field holding the input text.
    #[arg(long, default_value = "text")]
    pub(crate) input_field: String,
    /// Field holding a forced target (otherwise the model generates).
    #[arg(long)]
    pub(crate) target_field: Option<String>,
    /// Split and slice, e.g. `train`, `train[:20]`, `test[100:200]`.
    #[arg(long, default_value = "train")]
    pub(crate) split: String,
}

impl DataArgs {
    /// The parsed `--split`, to check before any model work.
    pub(crate) fn split_spec(&self) -> Result<crate::dataset::SplitSpec> {
        Ok(self.split.parse()?)
    }

    /// The rows of `split`.
    pub(crate) fn read_rows(
        &self,
        split: &crate::dataset::SplitSpec,
    ) -> Result<Vec<crate::dataset::DatasetRow>> {
        let target = self.target_field.as_deref();
        Ok(crate::dataset::read_rows(
            &self.data,
            split,
            &self.input_field,
            target,
        )?)
    }
}

/// How each sequence is attributed.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Tokens to generate when no target is given.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub(crate) max_new_tokens: usize,
    /// Minimum new tokens (end-of-sequence suppressed before).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) min_new_tokens: usize,
    /// Step scores to record, comma separated (see `inseq list-step-functions`).
    #[arg(long, value_delimiter = ',')]
    pub(crate) step_scores: Vec<String>,
    /// Step score arguments, e.g. `top_p=0.9`.
    #[arg(long, default_value = "")]
    pub(crate) step_scores_args: String,
    /// Function to attribute (a step function id).
    #[arg(long, default_value = "probability")]
    pub(crate) attributed_fn: String,
    /// Arguments of the attributed function, e.g. `logprob=true`.
    #[arg(long, default_value = "")]
    pub(crate) attributed_fn_args: String,
    /// Encoder-decoder models: also attribute the target prefix.
    #[arg(long)]
    pub(crate) attribute_target: bool,
    /// First target position to attribute (negative: from the end). Decoder-only models start
    /// after the prompt at the earliest, as in Inseq, unless --attribute-prompt.
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) attr_pos_start: Option<isize>,
    /// One past the last target position to attribute (negative: from the end).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) attr_pos_end: Option<isize>,
    /// Decoder-only models: attribute prompt positions from --attr-pos-start on, as if
    /// generated (Inseq always starts after the prompt).
    #[arg(long)]
    pub(crate) attribute_prompt: bool,
    /// Reproduce Python Inseq 0.7.1's numbers where they are wrong (Marian's double embedding
    /// scale; a generated continuation decoded and re-tokenised before it is attributed).
    #[arg(long)]
    pub(crate) inseq_compat: bool,
    /// Baselines of path and perturbation methods replace end-of-sequence tokens too (Inseq's
    /// `include_eos_baseline`; by default they keep their own embedding).
    #[arg(long)]
    pub(crate) include_eos_baseline: bool,
    /// Token strings in the output as the text each token decodes to (`Ġcaf` → ` caf`), as
    /// Inseq's `clean_special_chars`.
    #[arg(long)]
    pub(crate) clean_special_chars: bool,
    /// Remove the tokenizer's special tokens from the texts and add none (Inseq's
    /// `skip_special_tokens`).
    #[arg(long)]
    pub(crate) skip_special_tokens: bool,
    /// Write NaN/inf attributions and step scores instead of failing (for debugging a model).
    #[arg(long)]
    pub(crate) allow_non_finite: bool,
    /// Memory the attribution may use (e.g. 8G, 512M, 1.5GiB); a job whose activations need more
    /// fails before it starts. Default: the free memory.
    #[arg(long, value_parser = parse_budget, allow_negative_numbers = true)]
    pub(crate) memory_budget: Option<u64>,
    /// Hugging Face `generate` arguments as JSON, as Inseq's `generation_args`, e.g.
    /// '{"do_sample": true, "top_k": 5, "max_new_tokens": 10}'; they override the flags.
    #[arg(long)]
    pub(crate) generation_args: Option<String>,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    pub(crate) do_sample: bool,
    /// Sampler seed (each input row draws from its own generator seeded from it and the row's
    /// tokens: the same tokens in any batch).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) seed: u64,
    /// Sampling temperature (default: the model's generation_config.json, else 1).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) temperature: Option<f32>,
    /// Sample among the `top_k` most likely tokens (0: all; default: the model's
    /// generation_config.json, else 0).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) top_k: Option<usize>,
    /// Sample within the smallest set of tokens of probability `top_p` (default: the model's
    /// generation_config.json, else 1).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) top_p: Option<f32>,
    /// Beam search with this many beams (1: greedy decoding or sampling; default: the model's
    /// generation_config.json, else 1).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) num_beams: Option<usize>,
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
    pub(crate) fn generation_for(
        &self,
        model: &AttributionModel,
        forced: bool,
    ) -> Result<GenerationOptions> {
        match model.generation_defaults() {
            Ok(defaults) => self.generation(defaults),
            Err(_) if forced => self.generation(GenerationOptions::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// The attribute options the flags give, generating with no model's defaults (see
    /// [`Self::generation_for`]); with a progress bar when stderr is a terminal.
    pub(crate) fn options(&self) -> Result<AttributeOptions> {
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
            progress: std::io::stderr()
                .is_terminal()
                .then(crate::progress::step_progress_bar),
            inseq_compat: self.inseq_compat,
            include_eos_baseline: self.include_eos_baseline,
            clean_special_chars: self.clean_special_chars,
            skip_special_tokens: self.skip_special_tokens,
            allow_non_finite: self.allow_non_finite,
            memory_budget: self.memory_budget,
            ..Default::default()
        })
    }
}

/// `--memory-budget`: a size such as 8G (see [`inseq::parse_memory_size`]).
fn parse_budget(text: &str) -> std::result::Result<u64, String> {
    inseq::parse_memory_size(text).map_err(|e| e.to_string())
}
