//! Project tasks: `cargo xtask parity`, `cargo xtask fetch-models`, `cargo xtask bench`.

mod bench;
mod bench_long;
mod fetch_models;
mod parity;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "inseq-rs project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every supported golden case in a directory and compare with Python Inseq's outputs.
    Parity {
        /// Directory of golden `*.json` cases.
        #[arg(long, default_value_os_t = inseq_fixtures::golden_dir())]
        golden: std::path::PathBuf,
        /// Directory holding the models named by the cases.
        #[arg(long, default_value_os_t = inseq_fixtures::models_dir())]
        models: std::path::PathBuf,
    },
    /// Download the real models used by the demo and tests (SmolLM2 GGUF) into the models cache.
    FetchModels,
    /// Time the same attribution jobs through inseq-rs and Python Inseq 0.7.1 and print a table
    /// (also written to <target>/bench/results.md and results.jsonl).
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Parity { golden, models } => {
            let ok = parity::run(&golden, &models)?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::FetchModels => fetch_models::run(),
        Command::Bench(args) => {
            if !bench::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
