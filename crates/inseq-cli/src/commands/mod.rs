//! The subcommands, one module each.

mod attribute;
mod bench;
mod context;
mod context_prompt;
mod dataset;
mod eval_common;
mod evaluate;
mod merge;

use anyhow::Result;

pub(crate) use attribute::AttributeArgs;
pub(crate) use bench::BenchArgs;
pub(crate) use context::ContextCliArgs;
pub(crate) use dataset::DatasetArgs;
pub(crate) use evaluate::EvaluateArgs;
pub(crate) use merge::MergeArgs;

use crate::Extensions;
use crate::args::Command;

/// Runs one subcommand.
pub(crate) fn run(command: Command, extensions: &Extensions) -> Result<()> {
    let registries = &extensions.registries;
    match command {
        Command::Attribute(a) => attribute::run(*a, registries),
        Command::AttributeDataset(a) => dataset::run(*a, registries),
        Command::AttributeContext(a) => context::run(*a, registries),
        Command::Merge(m) => merge::run(m),
        Command::Evaluate(a) => evaluate::run(*a, registries, &extensions.metrics),
        Command::Bench(a) => bench::run(*a, registries),
        Command::ListMethods => {
            for (id, desc) in registries.methods.describe() {
                println!("{id:<34} {desc}");
            }
            Ok(())
        }
        Command::ListStepFunctions => {
            for (id, desc) in registries.steps.describe() {
                println!("{id:<22} {desc}");
            }
            Ok(())
        }
        Command::ListMetrics => {
            for (id, desc) in evaluate::describe_metrics(&extensions.metrics) {
                println!("{id:<22} {desc}");
            }
            Ok(())
        }
    }
}
