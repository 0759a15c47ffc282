//! The subcommands, one module each.

mod attribute;
mod context;
mod context_prompt;
mod dataset;
mod merge;

use anyhow::Result;
use inseq::{MethodRegistry, StepRegistry};

pub(crate) use attribute::AttributeArgs;
pub(crate) use context::ContextCliArgs;
pub(crate) use dataset::DatasetArgs;
pub(crate) use merge::MergeArgs;

use crate::args::Command;

/// Runs one subcommand.
pub(crate) fn run(command: Command) -> Result<()> {
    match command {
        Command::Attribute(a) => attribute::run(*a),
        Command::AttributeDataset(a) => dataset::run(*a),
        Command::AttributeContext(a) => context::run(*a),
        Command::Merge(m) => merge::run(m),
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
    }
}
