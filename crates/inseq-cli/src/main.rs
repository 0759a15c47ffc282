//! The `inseq` command: see [`inseq_cli::run`].

fn main() -> std::process::ExitCode {
    inseq_cli::run(std::env::args_os())
}
