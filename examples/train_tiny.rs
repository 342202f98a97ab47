//! A short training run through the library: the `tiny` conditional U-Net on
//! MNIST, saved to runs/example-tiny/ (model.safetensors and the resumable
//! state.safetensors), then one of each digit as runs/example-tiny/samples.png.
//!
//!     cargo run --release --example train_tiny -- [STEPS]
//!
//! 300 steps (the default) take about two minutes on two cores and show the
//! loop at work, not yet digits: here, 1,200 steps gave three readable
//! digits in ten, and the 15 minutes of `cargo xtask train` (about 7,000
//! steps, with its progress bar, log, loss plot and resume) the README's
//! grid. The data: MNIST's IDX files in $DDPM_DATA or data/mnist/ (`cargo
//! xtask data` puts them there).

use std::path::{Path, PathBuf};

use ddpm::data::{locate, Split, TRAIN_IMAGES, TRAIN_LABELS};
use ddpm::fit::{Fit, Progress, Stop};
use ddpm::{device, picture, Pipeline, TrainConfig, Trainer};
use ddpm_nn::Preset;

fn train(steps: u64, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let env = std::env::var_os("DDPM_DATA").map(PathBuf::from);
    let data = Split::load(&locate("mnist", None, env.as_deref())?, TRAIN_IMAGES, TRAIN_LABELS)?;

    // The lecture's f(x_t, t), here also told the digit (10 classes).
    let mut trainer = Trainer::new(TrainConfig::new(Preset::Tiny, 10), data.len())?;
    let (device, _no_gpu) = device::auto();
    trainer.to_device(device)?;
    println!("training tiny on {} MNIST digits ({}), {steps} steps", data.len(), device::describe(device));

    std::fs::create_dir_all(dir)?;
    let fit = Fit { stop: Stop::Steps(steps), save_every: 100, dir: Some(dir), interrupt: None };
    trainer.fit(&data, &fit, |event| {
        match event {
            Progress::Step { stats, .. } if stats.step % 25 == 0 => {
                println!("step {:>5}  loss {:.4}", stats.step, stats.loss)
            }
            Progress::Saved { step, dir } => println!("saved step {step} in {}", dir.display()),
            Progress::Step { .. } | Progress::Saving { .. } => {}
        }
        Ok::<_, ddpm::train::TrainError>(())
    })?;

    // Sample from the EMA weights, as the saved model.safetensors holds them.
    let pipeline = Pipeline::new(trainer.ema_model()?, trainer.schedule().clone());
    let samples = pipeline.sample(&pipeline.sampling(10))?;
    picture::grid_png(&dir.join("samples.png"), &samples.images, 10, 2)?;
    Ok(())
}

fn main() {
    let steps = match std::env::args().nth(1).map(|s| s.parse::<u64>()) {
        None => Ok(300),
        Some(Ok(n)) if n > 0 => Ok(n),
        Some(_) => Err("the number of steps must be a whole number above 0"),
    };
    let dir = Path::new("runs/example-tiny");
    let result = steps.map_err(Into::into).and_then(|steps| train(steps, dir));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!("wrote {0}/model.safetensors and {0}/samples.png", dir.display());
}
