//! `cargo xtask bench train|sample`: images per second of one training step
//! (forward + backward + Adam) or of the sampler's network evaluations.
//!
//! The last line printed is `images/s: <number>`, the figure the README and
//! `scripts/torch_bench.py` compare.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use ddpm::{train_loss, Schedule, ScheduleKind};
use ddpm_autograd::{no_grad, Tensor, Var};
use ddpm_nn::layers::Mode;
use ddpm_nn::optim::{clip_grad_norm, Adam, AdamConfig};
use ddpm_nn::{Module, Preset, UNet};
use ddpm_tensor::backend::synchronize;
use rand::{rngs::StdRng, SeedableRng};

use crate::device::{resolve, DeviceArg};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Workload {
    /// forward + backward + gradient clipping + Adam on random images
    Train,
    /// network evaluations without gradients, as in the sampling loop
    Sample,
}

#[derive(Args)]
pub struct BenchArgs {
    /// What to time.
    workload: Workload,
    /// Model size.
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    /// 0 (unconditional) or 10 (digit labels).
    #[arg(long, default_value_t = 0)]
    classes: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps (after two untimed warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    if args.classes != 0 && args.classes != 10 {
        bail!("--classes must be 0 or 10, not {}", args.classes);
    }
    let device = resolve(args.device)?;
    let mut rng = StdRng::seed_from_u64(0);
    let model = UNet::new(args.preset, args.classes, &mut rng);
    model.to_device(device)?;
    let params: Vec<Var> = model.named_params().into_iter().map(|(_, p)| p).collect();
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    // The training batch is made on the host, as the trainer's; sampling's x
    // stays on the device, as the sampler's.
    let x0 = Tensor::rand_uniform([args.batch, 1, 28, 28], -1.0, 1.0, &mut rng);
    let x_device = Var::constant(x0.to(device)?);
    let labels: Vec<usize> = (0..args.batch).map(|i| i % 10).collect();
    let labels = (args.classes > 0).then_some(labels.as_slice());
    let mut adam = Adam::new(&params, AdamConfig::default())?;

    println!(
        "bench {:?}: preset {} ({} parameters), batch {}, {} steps, device {}, {} threads",
        args.workload,
        args.preset,
        model.num_params(),
        args.batch,
        args.steps,
        ddpm::device::describe(device),
        rayon::current_num_threads()
    );
    // Each phase is timed to its work's end: on a device the launches are
    // asynchronous, so the clock stops only after `synchronize`.
    let mut phases = [Duration::ZERO; 3]; // forward, backward, optimiser
    let mut total = Duration::ZERO;
    for step in 0..args.steps + 2 {
        let start = Instant::now();
        let mut marks = [Duration::ZERO; 3];
        match args.workload {
            Workload::Train => {
                let loss = train_loss(&model, &schedule, &x0, labels, &mut rng)?;
                synchronize(device)?;
                marks[0] = start.elapsed();
                let mut grads = loss.backward()?;
                synchronize(device)?;
                marks[1] = start.elapsed() - marks[0];
                clip_grad_norm(&params, &mut grads, 1.0)?;
                adam.step(&params, &grads)?;
                // What a training step reads back: its loss.
                loss.value().item()?;
                marks[2] = start.elapsed() - marks[0] - marks[1];
            }
            Workload::Sample => {
                let t = vec![500; args.batch];
                no_grad(|| model.forward(&x_device, &t, labels, &mut Mode::Eval))?;
                synchronize(device)?;
                marks[0] = start.elapsed();
            }
        }
        if step == 1 {
            ddpm_autograd::profile::reset();
        }
        if step >= 2 {
            total += start.elapsed();
            phases.iter_mut().zip(marks).for_each(|(p, m)| *p += m);
        }
    }
    let per_step = |d: Duration| d.as_secs_f64() * 1e3 / args.steps as f64;
    println!("| phase     | ms/step |");
    println!("|-----------|--------:|");
    for (name, d) in ["forward", "backward", "optimiser"].iter().zip(phases) {
        if d > Duration::ZERO {
            println!("| {name:<9} | {:>7.1} |", per_step(d));
        }
    }
    println!("| total     | {:>7.1} |", per_step(total));
    if let Some(table) = ddpm_autograd::profile::report(args.steps) {
        let what = if device == ddpm_tensor::Device::Cpu { "wall time" } else { "launch time (asynchronous)" };
        println!("\nper op (DDPM_PROFILE=1; {what} on the calling thread):\n{table}");
    }
    println!("images/s: {:.1}", (args.batch * args.steps) as f64 / total.as_secs_f64());
    Ok(())
}
