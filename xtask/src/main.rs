//! `cargo xtask <job>`: the project's main jobs, run in release mode through
//! the alias in `.cargo/config.toml`.
//!
//! Only the command-line surface exists so far. Each job that is not built yet
//! says so and exits non-zero, naming the issue that brings it; none pretends.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

mod bench;
mod device;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "DDPM from scratch: train, sample, evaluate, benchmark")]
struct Cli {
    #[command(subcommand)]
    job: Job,
}

#[derive(Subcommand)]
enum Job {
    /// Train a U-Net on MNIST (not built yet).
    Train(Pending),
    /// Generate digits from a checkpoint (not built yet).
    Sample(Pending),
    /// Judge samples with an MNIST classifier (not built yet).
    Eval(Pending),
    /// Download and verify MNIST (not built yet).
    Data(Pending),
    /// Walk through the lecture in numbers and pictures (not built yet).
    Lecture(Pending),
    /// Images/s of the train step or the sampler's network evaluations.
    Bench(bench::BenchArgs),
}

/// The arguments of a job that is not built yet, accepted so that the message
/// below, not a parse error, is what the user sees.
#[derive(clap::Args)]
struct Pending {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

/// Errors end the program with one line and a non-zero exit, never a panic
/// or a backtrace.
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let (name, issue) = match cli.job {
        Job::Train(_) => ("train", "#4 (DDPM end to end)"),
        Job::Sample(_) => ("sample", "#4 (DDPM end to end)"),
        Job::Data(_) => ("data", "#4 (DDPM end to end)"),
        Job::Lecture(_) => ("lecture", "#4 (DDPM end to end)"),
        Job::Eval(_) => ("eval", "#5 (judge the samples)"),
        Job::Bench(args) => return bench::run(args),
    };
    bail!("`cargo xtask {name}` is not built yet: it arrives with issue {issue}")
}
