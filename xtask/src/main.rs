//! `cargo xtask <job>`: the project's main jobs, run in release mode through
//! the alias in `.cargo/config.toml`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod device;
mod download;
mod eval;
mod lecture;
mod npy;
mod picture;
mod sample;
mod test;
#[cfg(test)]
mod testing;
mod train;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "DDPM from scratch: train, sample, evaluate, benchmark")]
struct Cli {
    #[command(subcommand)]
    job: Job,
}

#[derive(Subcommand)]
enum Job {
    /// Train a U-Net on MNIST: model, resumable state, log, samples and loss curve in --out.
    Train(train::TrainArgs),
    /// Generate digits from a checkpoint: a PNG grid, optionally .npy, a GIF and a strip of the chain.
    Sample(sample::SampleArgs),
    /// Judge samples with an MNIST classifier: FLD, accuracy as asked, class balance, confidence.
    Eval(eval::EvalArgs),
    /// Download MNIST or Fashion-MNIST from the public mirrors and verify the checksums.
    Data(download::DataArgs),
    /// Walk through the lecture in numbers and pictures.
    Lecture(lecture::LectureArgs),
    /// Images/s of the train step or the sampler's network evaluations.
    Bench(bench::BenchArgs),
    /// The whole test suite as CI runs it: installs NVRTC and ptxas (for the CUDA kernels), then cargo test.
    Test(test::TestArgs),
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
    match cli.job {
        Job::Train(args) => train::run(args),
        Job::Sample(args) => sample::run(args),
        Job::Data(args) => download::run(args),
        Job::Lecture(args) => lecture::run(args),
        Job::Eval(args) => eval::run(args),
        Job::Bench(args) => bench::run(args),
        Job::Test(args) => test::run(args),
    }
}
