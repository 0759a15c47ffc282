//! `inseq evaluate`: how faithful are several methods' attributions on a dataset? Each method
//! attributes every row (into a resumable store, as `attribute-dataset`), then the metrics of
//! `inseq-eval` score each attributed step; the report gives per method and metric the mean
//! with a bootstrap 95 % interval, a ranking and the curves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use inseq::{AttributeOptions, AttributionModel, MethodArgs, Registries};
use inseq_eval::randomisation::{cascade_levels, randomised_model, rank_correlation};
use inseq_eval::{
    EvalConfig, EvalReport, EvalStep, Evaluator, ExampleScores, MethodReport, Metric, MetricInfo,
    MetricRegistry, RANDOMISATION, example_scores, steps_of_sequence,
};

use super::eval_common::{MethodSpec, forced_rows, method_specs, slug, with_random};
use crate::args::{DataArgs, RunArgs};
use crate::dataset::{DatasetJob, DatasetRow, OnError, OutputStore, Shard};
use crate::output::{check_output_file, check_output_folder};

#[derive(clap::Args)]
pub(crate) struct EvaluateArgs {
    /// Model directory, .gguf file, alias (smollm2) or Hugging Face id.
    #[arg(long)]
    model: String,
    /// Device: cpu, ndarray, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Methods to compare, comma separated (`random` is the reference; `ig` = integrated_gradients).
    #[arg(long, value_delimiter = ',', required = true)]
    methods: Vec<String>,
    /// Arguments of one method, `METHOD:ARGS` (repeat), e.g. `ig:n_steps=8`.
    #[arg(long)]
    method_args: Vec<String>,
    /// Metrics, comma separated (default: every metric and model_randomisation).
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Only shard I of N.
    #[arg(long, allow_hyphen_values = true)]
    shard: Option<String>,
    /// What to do with a row that cannot be attributed: `skip` or `fail`.
    #[arg(long, default_value = "skip")]
    on_error: String,
    /// Where the generated targets and attributions are stored (one resumable JSONL store per
    /// method; a rerun reuses them).
    /// Default: the report path with `.work` appended.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the report as JSON.
    #[arg(long)]
    save: PathBuf,
    /// Draw the report: an .html page (table and curves) or an .svg of the curves.
    #[arg(long)]
    viz: Option<PathBuf>,
    /// Perturbed inputs per forward pass.
    #[arg(long, default_value_t = 64)]
    eval_batch_size: usize,
    /// Seed of the evaluation (tie-breaks, masks, random reference, bootstrap).
    #[arg(long, default_value_t = 42)]
    eval_seed: u64,
    /// Points of the deletion and insertion curves (fractions 0 to 1, evenly spaced).
    #[arg(long, default_value_t = 11)]
    curve_points: usize,
    /// Masks per step of Soft-NC and Soft-NS.
    #[arg(long, default_value_t = 1)]
    soft_samples: usize,
    /// Token id that replaces removed tokens (default: the model's baseline token, as occlusion).
    #[arg(long)]
    baseline_id: Option<usize>,
    /// Levels of the cascading model randomisation (top layer, ..., all layers).
    #[arg(long, default_value_t = 3)]
    randomisation_levels: usize,
}

pub(crate) fn run(
    a: EvaluateArgs,
    registries: &Registries,
    metrics: &MetricRegistry,
) -> Result<()> {
    let started = Instant::now();
    let registries = with_random(registries);
    let specs = method_specs(&a.methods, &a.method_args, &registries)?;
    let (metrics, randomisation) = a.metrics(metrics)?;
    let config = a.config()?;
    let work = a.check_outputs(randomisation)?;
    let device = inseq::parse_device(&a.device)?;
    let (mut model, opts, rows) = a.prepare(&device, &registries, &work)?;
    let mut methods = Vec::new();
    let mut trained_steps = Vec::new();
    for spec in &specs {
        let job = a.job(work.join(format!("{}.jsonl", slug(&spec.id))))?;
        let t = Instant::now();
        let (examples, steps) =
            evaluate_method(&mut model, spec, &rows, &opts, &job, &metrics, &config, &a)?;
        let mut report = MethodReport::new(&spec.id, &spec.args_text, examples, &config);
        report.seconds = t.elapsed().as_secs_f64();
        methods.push(report);
        trained_steps.push(steps);
    }
    let mut metric_info: BTreeMap<String, MetricInfo> = metrics
        .iter()
        .map(|m| (m.id().to_string(), info(m.as_ref())))
        .collect();
    let mut levels = vec![];
    if randomisation {
        levels = cascade_levels(model.model().info().num_layers, a.randomisation_levels);
        let rand = Randomisation {
            specs: &specs,
            rows: &rows,
            opts: &opts,
            levels: &levels,
            seed: config.seed,
        };
        let correlations = rand.run(&a, &device, &registries, &trained_steps)?;
        for (m, per_example) in methods.iter_mut().zip(correlations) {
            add_randomisation(m, per_example, &levels, &config);
        }
        metric_info.insert(RANDOMISATION.into(), randomisation_info());
    }
    let mut report = EvalReport {
        model: a.model.clone(),
        attributed_fn: a.run.attributed_fn.clone(),
        config,
        metric_info,
        randomisation_levels: levels,
        methods,
        ranking: vec![],
        seconds: started.elapsed().as_secs_f64(),
    };
    report.rank();
    a.write(&report)
}

fn randomisation_info() -> MetricInfo {
    MetricInfo {
        description: "Spearman correlation of the scores with those of the model with its top \
                      layers randomised (Adebayo et al. 2018); lower is better."
            .into(),
        higher_is_better: false,
    }
}

/// `(id, description)` of every metric `--metrics` accepts: the registered ones and the
/// randomisation check.
pub(crate) fn describe_metrics(registry: &MetricRegistry) -> Vec<(String, String)> {
    let mut all = registry.describe();
    all.push((RANDOMISATION.into(), randomisation_info().description));
    all.sort();
    all
}

fn info(m: &dyn Metric) -> MetricInfo {
    MetricInfo {
        description: m.description().into(),
        higher_is_better: m.higher_is_better(),
    }
}

fn append(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl EvaluateArgs {
    /// Checks every output path (and that the randomisation check can read the model) before
    /// any model work; returns the work folder, created.
    fn check_outputs(&self, randomisation: bool) -> Result<PathBuf> {
        check_output_file("--save", &self.save)?;
        if let Some(v) = &self.viz {
            check_output_file("--viz", v)?;
            self.viz_kind(v)?;
        }
        if randomisation && !inseq_eval::randomisation::supports(&self.model) {
            bail!(
                "model_randomisation needs a local model (directory, .gguf or alias), not `{}`: \
                 leave it out of --metrics",
                self.model
            );
        }
        let work = self
            .work_dir
            .clone()
            .unwrap_or_else(|| append(&self.save, ".work"));
        check_output_folder("--work-dir", &work)?;
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        Ok(work)
    }

    /// The model, the attribute options and the rows with their (given or generated) targets.
    fn prepare(
        &self,
        device: &burn::tensor::Device,
        registries: &Registries,
        work: &Path,
    ) -> Result<(AttributionModel, AttributeOptions, Vec<DatasetRow>)> {
        let rows = self.data.read_rows(&self.data.split_spec()?)?;
        let mut model = inseq::load_model_with(
            &self.model,
            "dummy",
            MethodArgs::default(),
            device,
            registries.clone(),
        )
        .with_context(|| format!("loading `{}`", self.model))?;
        let opts = AttributeOptions {
            progress: None,
            generation: self
                .run
                .generation_for(&model, self.data.target_field.is_some())?,
            ..self.run.options()?
        };
        let job = self.job(work.join("targets.jsonl"))?;
        let rows = forced_rows(&mut model, &rows, &opts, &job)?;
        Ok((model, opts, rows))
    }

    /// Prints the table and writes the JSON report and the drawing.
    fn write(&self, report: &EvalReport) -> Result<()> {
        println!("{}", report.table());
        std::fs::write(&self.save, report.to_json()?)
            .with_context(|| format!("writing {}", self.save.display()))?;
        eprintln!("wrote {} ({:.1} s)", self.save.display(), report.seconds);
        if let Some(v) = &self.viz {
            let text = match self.viz_kind(v)? {
                "html" => inseq_eval::render::report_html(report),
                _ => inseq_eval::render::report_svg(report),
            };
            std::fs::write(v, text).with_context(|| format!("writing {}", v.display()))?;
            eprintln!("wrote {}", v.display());
        }
        Ok(())
    }

    /// The per-step metrics asked for, and whether the randomisation check is.
    fn metrics(
        &self,
        registry: &MetricRegistry,
    ) -> Result<(Vec<std::sync::Arc<dyn Metric>>, bool)> {
        let asked: Vec<String> = self
            .metrics
            .iter()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        if asked.is_empty() {
            let all = registry
                .ids()
                .iter()
                .map(|id| registry.get(id))
                .collect::<inseq::Result<_>>()?;
            return Ok((all, true));
        }
        let randomisation = asked.iter().any(|m| m == RANDOMISATION);
        let metrics = asked
            .iter()
            .filter(|m| *m != RANDOMISATION)
            .map(|m| {
                registry
                    .get(m)
                    .with_context(|| format!("--metrics (also: {RANDOMISATION})"))
            })
            .collect::<Result<_>>()?;
        Ok((metrics, randomisation))
    }

    fn config(&self) -> Result<EvalConfig> {
        if self.curve_points < 2 {
            bail!(
                "--curve-points {}: need at least 2 (0 and 1)",
                self.curve_points
            );
        }
        let n = self.curve_points - 1;
        let config = EvalConfig {
            fractions: (0..=n).map(|i| i as f64 / n as f64).collect(),
            soft_samples: self.soft_samples,
            batch_size: self.eval_batch_size,
            seed: self.eval_seed,
            baseline: self.baseline_id,
            ..EvalConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    fn viz_kind(&self, path: &Path) -> Result<&'static str> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("html") => Ok("html"),
            Some("svg") => Ok("svg"),
            _ => bail!("--viz {}: expected a .html or .svg path", path.display()),
        }
    }

    fn job(&self, store: PathBuf) -> Result<DatasetJob> {
        Ok(DatasetJob {
            store: OutputStore::from_path(&store),
            shard: self.shard.as_deref().map(str::parse::<Shard>).transpose()?,
            batch_size: 1,
            on_error: self.on_error.parse::<OnError>()?,
        })
    }
}

/// Steps of each evaluated row of one method, by row number.
type RowSteps = BTreeMap<usize, Vec<Vec<EvalStep>>>;

/// Attributes the rows with one method (resuming its store) and scores every stored row.
#[allow(clippy::too_many_arguments)]
fn evaluate_method(
    model: &mut AttributionModel,
    spec: &MethodSpec,
    rows: &[DatasetRow],
    opts: &AttributeOptions,
    job: &DatasetJob,
    metrics: &[std::sync::Arc<dyn Metric>],
    config: &EvalConfig,
    a: &EvaluateArgs,
) -> Result<(Vec<ExampleScores>, RowSteps)> {
    model.set_method(&spec.id, spec.args.clone())?;
    eprintln!("{}: attributing {} rows", spec.id, rows.len());
    let bar = crate::progress::row_progress_bar(rows.len());
    let report = crate::dataset::attribute_dataset(model, rows, opts, job, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    for (row, reason) in &report.failed {
        eprintln!("{}: row {row}: skipped: {reason}", spec.id);
    }
    let wanted: std::collections::BTreeSet<usize> = rows.iter().map(|r| r.index).collect();
    let stored: Vec<_> = job
        .store
        .read_all()?
        .into_iter()
        .filter(|(i, _)| wanted.contains(i))
        .collect();
    let evaluator = Evaluator::new(
        model,
        &a.run.attributed_fn,
        inseq::StepArgs::parse(&a.run.attributed_fn_args)?,
        metrics.to_vec(),
        config.clone(),
    )?;
    eprintln!("{}: evaluating {} rows", spec.id, stored.len());
    let bar = crate::progress::row_progress_bar(stored.len());
    let mut examples = Vec::new();
    let mut steps = RowSteps::new();
    for (index, out) in &stored {
        let aggregated = inseq::aggregate(out)?;
        let results = evaluator
            .evaluate_output(&aggregated, *index as u64)
            .with_context(|| format!("{}: row {index}", spec.id))?;
        examples.push(example_scores(*index, &results.concat()));
        let seqs = aggregated
            .sequence_attributions
            .iter()
            .map(|s| steps_of_sequence(s, 0))
            .collect::<inseq::Result<_>>()?;
        steps.insert(*index, seqs);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((examples, steps))
}

/// The cascading randomisation of every method on every row.
struct Randomisation<'a> {
    specs: &'a [MethodSpec],
    rows: &'a [DatasetRow],
    opts: &'a AttributeOptions,
    levels: &'a [usize],
    seed: u64,
}

impl Randomisation<'_> {
    /// Per method, per row: the correlation at each level.
    fn run(
        &self,
        a: &EvaluateArgs,
        device: &burn::tensor::Device,
        registries: &Registries,
        trained: &[RowSteps],
    ) -> Result<Vec<BTreeMap<usize, Vec<f64>>>> {
        let mut out = vec![BTreeMap::<usize, Vec<f64>>::new(); self.specs.len()];
        for &layers in self.levels {
            let mut model = randomised_model(&a.model, layers, self.seed, device, registries)?;
            for ((spec, steps), per_row) in self.specs.iter().zip(trained).zip(&mut out) {
                model.set_method(&spec.id, spec.args.clone())?;
                eprintln!("{}: randomised top {layers} layers", spec.id);
                let bar = crate::progress::row_progress_bar(steps.len());
                for row in self.rows.iter().filter(|r| steps.contains_key(&r.index)) {
                    let rho = self.correlation(&model, row, &steps[&row.index])?;
                    per_row.entry(row.index).or_default().push(rho);
                    bar.inc(1);
                }
                bar.finish_and_clear();
            }
        }
        Ok(out)
    }

    fn correlation(
        &self,
        model: &AttributionModel,
        row: &DatasetRow,
        trained: &[Vec<EvalStep>],
    ) -> Result<f64> {
        let Ok((input, Some(target))) = &row.content else {
            return Ok(f64::NAN);
        };
        let opts = AttributeOptions {
            targets: Some(vec![target.clone()]),
            ..self.opts.clone()
        };
        let out = inseq::aggregate(&model.attribute(&[input.as_str()], &opts)?)?;
        let seq = out
            .sequence_attributions
            .first()
            .map(|s| steps_of_sequence(s, 0))
            .transpose()?;
        Ok(match (seq, trained.first()) {
            (Some(r), Some(t)) => rank_correlation(t, &r),
            _ => f64::NAN,
        })
    }
}

/// Adds the randomisation check to a method's examples and summaries: per row the mean
/// correlation over levels, and the curve (layers randomised, correlation).
fn add_randomisation(
    m: &mut MethodReport,
    per_row: BTreeMap<usize, Vec<f64>>,
    levels: &[usize],
    config: &EvalConfig,
) {
    for e in &mut m.examples {
        let Some(rhos) = per_row.get(&e.index) else {
            continue;
        };
        e.metrics
            .insert(RANDOMISATION.into(), inseq_eval::stats::mean(rhos));
        let curve = levels
            .iter()
            .map(|&l| l as f64)
            .zip(rhos.iter().copied())
            .collect();
        e.curves.insert(RANDOMISATION.into(), curve);
    }
    let seconds = m.seconds;
    *m = MethodReport::new(
        &m.method,
        &m.method_args,
        std::mem::take(&mut m.examples),
        config,
    );
    m.seconds = seconds;
}
