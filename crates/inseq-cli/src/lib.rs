//! The `inseq` command-line tool, as a library: [`run`] takes the command line (program name
//! first) and runs one subcommand (`attribute`, `attribute-dataset`, `attribute-context`, `merge`,
//! `evaluate`, `bench`, `list-methods`, `list-step-functions`, `list-metrics`); [`dataset`] reads
//! datasets and stores per-row results for `attribute-dataset` and `evaluate`.
//!
//! ```
//! use std::process::ExitCode;
//! // Same as running `inseq list-step-functions` in a shell.
//! assert_eq!(inseq_cli::run(["inseq", "list-step-functions"]), ExitCode::SUCCESS);
//! assert_eq!(inseq_cli::run(["inseq", "no-such-command"]), ExitCode::from(2));
//! ```
#![warn(missing_docs)]

mod args;
mod commands;
pub mod dataset;
mod output;
mod progress;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use inseq::{AttributionModel, MethodArgs, Registries};
use inseq_eval::MetricRegistry;

use args::{Cli, ModelArgs};

/// Runs the command line `args` (the program name first, as [`std::env::args_os`] gives it).
///
/// Returns success, 1 after an error (printed as one `error: ...` line on stderr) or clap's code
/// for a usage error (2; 0 for `--help` and `--version`, printed on stdout).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_extended(args, &Extensions::default())
}

/// Everything a researcher's own binary can register for the command line: the library's
/// [`Registries`] (methods, step functions, aggregators) and the faithfulness metrics of
/// `inseq evaluate` (`--metrics`, `list-metrics`).
#[derive(Clone)]
pub struct Extensions {
    /// Methods, step functions and aggregators.
    pub registries: Registries,
    /// Metrics of `inseq evaluate`.
    pub metrics: MetricRegistry,
}

impl Default for Extensions {
    /// The built-ins.
    fn default() -> Self {
        Self::from(Registries::default())
    }
}

impl From<Registries> for Extensions {
    /// `registries` with the built-in metrics.
    fn from(registries: Registries) -> Self {
        Self {
            registries,
            metrics: MetricRegistry::with_defaults(),
        }
    }
}

/// [`run`] with `registries` for every id on the command line: a researcher's own binary that
/// registers its methods, step functions and aggregators gets the whole `inseq` command with
/// them (`--method`, `--step-scores`, `--attributed-fn`, `--aggregation`, PECoRe's metrics,
/// `list-methods`).
///
/// ```
/// use std::process::ExitCode;
/// let mut registries = inseq::Registries::default();
/// registries.methods.register("my_saliency", "Saliency under another id.", |args| {
///     inseq::MethodRegistry::with_defaults().create("saliency", args)
/// });
/// assert_eq!(inseq_cli::run_with(["inseq", "list-methods"], &registries), ExitCode::SUCCESS);
/// ```
pub fn run_with<I, T>(args: I, registries: &Registries) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_extended(args, &Extensions::from(registries.clone()))
}

/// [`run_with`] with the evaluation metrics too: `inseq evaluate --metrics` and `list-metrics`
/// see the metrics registered in `extensions.metrics`.
///
/// ```
/// use std::process::ExitCode;
/// use inseq_eval::metrics::top_k_keep;
/// use inseq_eval::{Metric, MetricValue, Perturbation, StepScores};
///
/// /// The drop of the attributed function when only the most relevant token is removed.
/// struct TopOneDrop;
/// impl Metric for TopOneDrop {
///     fn id(&self) -> &str { "top1_drop" }
///     fn description(&self) -> &str { "Drop when the most relevant token is removed." }
///     fn higher_is_better(&self) -> bool { true }
///     fn perturbations(&self, s: &StepScores) -> Vec<Perturbation> {
///         vec![Perturbation::Keep(top_k_keep(s.step, 1, false))]
///     }
///     fn finish(&self, s: &StepScores, values: &[f32]) -> MetricValue {
///         MetricValue { value: f64::from(s.original - values[0]), curve: None }
///     }
/// }
///
/// let mut extensions = inseq_cli::Extensions::default();
/// extensions.metrics.register(std::sync::Arc::new(TopOneDrop));
/// assert_eq!(inseq_cli::run_extended(["inseq", "list-metrics"], &extensions), ExitCode::SUCCESS);
/// ```
pub fn run_extended<I, T>(args: I, extensions: &Extensions) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1));
        }
    };
    match commands::run(cli.command, extensions) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the model and method `args` name, with `registries` for every id: every subcommand
/// gets its model here.
fn load_model(args: &ModelArgs, registries: &Registries) -> Result<AttributionModel> {
    let device = inseq::parse_device(&args.device)?;
    inseq::load_model_with(
        &args.model,
        &args.method,
        MethodArgs::parse(&args.method_args)?,
        &device,
        registries.clone(),
    )
    .with_context(|| format!("loading `{}` with method `{}`", args.model, args.method))
}

/// The README's Rust example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct Readme;
