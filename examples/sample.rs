//! Ten digits, 0 to 9, from a trained model, as a PNG:
//!
//!     cargo run --release --example sample -- CHECKPOINT OUT.png [SEED]
//!
//! The same images as `cargo xtask sample --checkpoint CHECKPOINT --n 10
//! --out OUT.png` (DDIM, 50 steps, guidance 1, seed 0 unless given): the
//! command line is a thin layer over these calls.

use std::path::Path;

use ddpm::{device, picture, Pipeline, Sampling};

/// Loads `checkpoint` onto the best device there is, draws one image of
/// each digit (an unconditional model draws ten of anything) and writes them
/// to `out` as a grid of 10 columns, each pixel 2x2.
pub fn sample_digits(checkpoint: &Path, out: &Path, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (device, _no_gpu) = device::auto();
    let pipeline = Pipeline::from_checkpoint(checkpoint, device)?;
    let samples = pipeline.sample(&Sampling { seed, ..pipeline.sampling(10) })?;
    picture::grid_png(out, &samples.images, 10, 2)?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (checkpoint, out, seed) = match &args[..] {
        [c, o] => (c, o, Ok(0)),
        [c, o, s] => (c, o, s.parse::<u64>()),
        _ => {
            eprintln!("usage: cargo run --release --example sample -- CHECKPOINT OUT.png [SEED]");
            std::process::exit(2);
        }
    };
    let Ok(seed) = seed else {
        eprintln!("error: the seed must be a whole number from 0 to {}", u64::MAX);
        std::process::exit(2);
    };
    if let Err(e) = sample_digits(checkpoint.as_ref(), out.as_ref(), seed) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!("wrote {out}");
}
