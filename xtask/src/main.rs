//! `cargo xtask <job>`: the project's main jobs, run in release mode through
//! the alias in `.cargo/config.toml`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc for everything the tensor pool does not
/// keep (graph nodes, small tensors, scratch): the `small` train step ran 5%
/// faster with it (84.4 against 80.4 images/s, five alternating runs each).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod device;
mod download;
mod eval;
mod lecture;
mod npy;
mod outputs;
mod plot;
mod sample;
mod test;
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
    let cli = Cli::parse();
    match on_worker_thread(|| run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes as one line: each cause once (a cause whose text
/// the message already holds, as a wrapped error's often does, is not
/// repeated), and every control character escaped, so that bytes read from a
/// bad file cannot break the line or drive the terminal.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line += ": ";
        }
        line += &text;
    }
    line.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Runs `job` on one of rayon's worker threads rather than on the main thread.
///
/// Every parallel loop of a train step (a few hundred of them) is then started
/// by a worker that takes its own share at once, while the other workers steal
/// the rest. Started from outside the pool, a loop waits for sleeping workers
/// to wake, and the caller for them to finish: on this project's 2-core virtual
/// machine a sleeping worker took over 0.3 ms to wake, longer than many of the
/// loops, and the `small` train step ran about 5% faster once moved here.
/// The workers get the main thread's stack size (8 MiB, where std's threads have
/// 2), so that a job has the stack it would have had on the main thread.
fn on_worker_thread<T: Send>(job: impl FnOnce() -> T + Send) -> T {
    const STACK_BYTES: usize = 8 << 20;
    // Only fails if a global pool already exists, which then serves as well.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(STACK_BYTES).build_global();
    rayon::scope(|_| job())
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

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("metadata entry \"preset\" is missing")]
    struct Missing;

    #[derive(Debug, thiserror::Error)]
    #[error("checkpoint x: {source}")]
    struct Wrapped {
        source: Missing,
    }

    #[test]
    fn a_cause_is_printed_once() {
        let e = anyhow::Error::new(Wrapped { source: Missing });
        assert_eq!(one_line(&e), "checkpoint x: metadata entry \"preset\" is missing");
        let e = anyhow::Error::new(Missing).context("cannot sample");
        assert_eq!(one_line(&e), "cannot sample: metadata entry \"preset\" is missing");
    }

    #[test]
    fn control_characters_are_escaped() {
        let e = anyhow::anyhow!("schedule \"lin\u{1b}[2J\near\"");
        assert_eq!(one_line(&e), "schedule \"lin\\u{1b}[2J\\near\"");
    }
}
