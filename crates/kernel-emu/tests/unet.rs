//! The U-Net's forward pass and the sampling loop as the GPU runs them
//! (`ddpm::device`, the kernels through `DeviceOps`), here in CPU emulation,
//! against the CPU implementation, on the 15-minute model of the README.

use std::path::PathBuf;

use ddpm::device::{run_on_device, DeviceUNet};
use ddpm::sampler::{self, Conditioning, Method};
use ddpm::{Schedule, ScheduleKind};
use ddpm_autograd::{Tensor, Var};
use ddpm_kernel_emu::Emu;
use ddpm_nn::checkpoint::{load_into, read_metadata};
use ddpm_nn::layers::Mode;
use ddpm_nn::{Module, UNet};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn trained_model() -> UNet {
    let ckpt = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/rust_trained_tiny_c10.safetensors");
    let meta = read_metadata(&ckpt).unwrap();
    let model = UNet::new(meta.preset.parse().unwrap(), meta.num_classes, &mut StdRng::seed_from_u64(0));
    load_into(&ckpt, &model.named_params()).unwrap();
    model
}

/// The largest difference relative to the reference's largest magnitude.
fn relative_error(got: &[f32], want: &Tensor) -> f32 {
    let scale = want.as_slice().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want.as_slice()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn the_device_forward_pass_matches_the_cpu_u_net() {
    let model = trained_model();
    let x = Tensor::randn([3, 1, 28, 28], &mut StdRng::seed_from_u64(1));
    let (t, y) = ([5usize, 400, 999], [3usize, 7, 10]);
    let want = model.forward(&Var::constant(x.clone()), &t, Some(&y), &mut Mode::Eval).unwrap().value();

    let device = DeviceUNet::upload(&Emu, &model).unwrap();
    let got = device.forward(&Emu, &x.to_vec(), 3, &t, Some(&y)).unwrap();
    let err = relative_error(&got, &want);
    assert!(err < 1e-4, "relative error {err:.2e}");

    let short = device.forward(&Emu, &x.to_vec(), 3, &t[..2], Some(&y));
    assert!(short.is_err(), "two timesteps for three images are refused");
}

#[test]
fn ddim_with_guidance_on_the_device_matches_the_cpu_sampler() {
    let model = trained_model();
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let x_t = Tensor::randn([2, 1, 28, 28], &mut StdRng::seed_from_u64(2));
    let labels = [4usize, 9];
    let cond = Conditioning { labels: Some(&labels), guidance: 1.0 };
    assert_device_samples_like_the_cpu(&model, &schedule, &x_t, Method::Ddim { steps: 3, eta: 0.0 }, cond, 0);
}

/// DDPM adds noise at every step: both samplers draw it from the Philox
/// stream of the seed, so the same seed gives the same samples on both.
#[test]
fn ddpm_on_the_device_draws_the_same_noise_as_the_cpu() {
    let model = trained_model();
    // Three steps: the emulation is slow, and the U-Net does not know T.
    let schedule = Schedule::new(ScheduleKind::Linear, 3);
    let x_t = Tensor::randn([2, 1, 28, 28], &mut StdRng::seed_from_u64(3));
    let cond = Conditioning { labels: Some(&[1, 8]), guidance: 0.0 };
    assert_device_samples_like_the_cpu(&model, &schedule, &x_t, Method::Ddpm, cond, 77);
}

/// The emulated device's sampler (`run_on_device`) ends where the CPU's
/// (`sampler::run`) does, from the same x_t and noise seed, within 1e-4.
fn assert_device_samples_like_the_cpu(
    model: &UNet,
    schedule: &Schedule,
    x_t: &Tensor,
    method: Method,
    cond: Conditioning,
    seed: u64,
) {
    let want = sampler::run(model, schedule, x_t, method, cond, seed, &mut |_, _, _| {}).unwrap();
    let device = DeviceUNet::upload(&Emu, model).unwrap();
    let got = run_on_device(&Emu, &device, schedule, x_t, method, cond, seed, &mut |_, _, _| {}).unwrap();
    let err = relative_error(got.as_slice(), &want);
    assert!(err < 1e-4, "relative error {err:.2e}");
}

/// The training step's gradients on the device (the recorded forward pass,
/// the MSE, the backward pass of `ddpm::device`) against the CPU autograd,
/// for every parameter of the model.
#[test]
fn the_device_backward_pass_gives_the_cpu_autograd_gradients() {
    use ddpm_cuda::{DeviceOps, Executor};
    let model = trained_model();
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let mut rng = StdRng::seed_from_u64(4);
    let x0 = Tensor::rand_uniform([2, 1, 28, 28], -1.0, 1.0, &mut rng);
    let eps = Tensor::randn([2, 1, 28, 28], &mut rng);
    let (t, y) = ([30usize, 870], [6usize, 10]);
    let x_t = schedule.q_sample(&x0, &t, &eps).unwrap();

    let params = model.named_params();
    let out = model.forward(&Var::constant(x_t.clone()), &t, Some(&y), &mut Mode::Eval).unwrap();
    let loss = out.mse(&Var::constant(eps.clone())).unwrap();
    let want = loss.backward().unwrap();

    let device = DeviceUNet::upload(&Emu, &model).unwrap();
    let (out, tape) = device.forward_recorded(&Emu, x_t.to_vec(), 2, &t, Some(&y), &[]).unwrap();
    let (d_out, sq) = Emu.mse_grad(&out, &eps.to_vec(), 2.0 / eps.numel() as f32).unwrap();
    let got_loss = Emu.sum_inner(&sq, 1, sq.len()).unwrap()[0] / sq.len() as f32;
    let want_loss = loss.value().item().unwrap();
    assert!((got_loss - want_loss).abs() < 1e-5 * want_loss.max(1.0), "loss {got_loss} against {want_loss}");
    let grads = device.backward(&Emu, tape, d_out).unwrap();
    let missing: Vec<&String> = params.iter().filter(|(_, p)| !grads.contains_key(&p.id())).map(|(n, _)| n).collect();
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    for (name, p) in &params {
        let want = want.get(p).unwrap();
        let got = Emu.download(&grads[&p.id()]).unwrap();
        let err = relative_error(&got, want);
        assert!(err < 1e-4, "{name}: relative error {err:.2e}");
    }
}

/// Two whole training steps on the device (noising, forward, loss,
/// backward, clipping, Adam, EMA) leave the run where two CPU steps leave it.
#[test]
fn training_steps_on_the_device_match_the_cpu_trainer() {
    training_matches(ddpm_nn::Preset::Tiny, 2, 4);
}

/// `small` has dropout: the device draws the same masks as the CPU (one
/// Philox seed per ResBlock from the step's generator), or this fails.
#[test]
fn a_training_step_with_dropout_on_the_device_matches_the_cpu_trainer() {
    training_matches(ddpm_nn::Preset::Small, 1, 2);
}

fn training_matches(preset: ddpm_nn::Preset, steps: usize, batch: usize) {
    use ddpm::data::{Images, Split};
    use ddpm::device_train::DeviceTrainer;
    use ddpm::{TrainConfig, Trainer};

    let n = 12;
    let pixels: Vec<u8> = (0..n * 784).map(|i| ((i * 37 + i / 784 * 11) % 256) as u8).collect();
    let data = Split {
        images: Images { count: n, rows: 28, cols: 28, pixels },
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    };
    let config = TrainConfig { batch, warmup: 2, seed: 3, ..TrainConfig::new(preset, 10) };

    let mut cpu = Trainer::new(config.clone(), n).unwrap();
    let cpu_losses: Vec<f32> = (0..steps).map(|_| cpu.train_step(&data).unwrap().loss).collect();

    let mut run = Trainer::new(config, n).unwrap();
    let mut device = DeviceTrainer::new(&Emu, &run).unwrap();
    let losses: Vec<f32> = (0..steps).map(|_| run.train_step_on(&Emu, &mut device, &data).unwrap().loss).collect();
    for (a, b) in losses.iter().zip(&cpu_losses) {
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "losses {losses:?} against {cpu_losses:?}");
    }
    let state = device.state(&Emu, run.step_count()).unwrap();
    run.set_state(state).unwrap();

    let (want, got) = (cpu.state(), run.state());
    assert_eq!((got.step, got.adam_steps, got.ema_updates), (want.step, want.adam_steps, want.ema_updates));
    // Adam moves each weight by about the learning rate per step, whatever
    // the gradient's size, so an element whose gradient is near zero may move
    // differently on the two devices (the gradients themselves agree to 1e-4,
    // see above). So: almost every weight within 1% of the two steps'
    // learning rates (at most 5e-4 + 1e-3), and none further than those steps can go.
    let (mut off, mut total) = (0usize, 0usize);
    for (i, (w, g)) in want.weights.iter().zip(&got.weights).enumerate() {
        for (a, b) in w.as_slice().iter().zip(g.as_slice()) {
            let d = (a - b).abs();
            assert!(d < 3e-3, "parameter {i}: a weight {d:.2e} away");
            off += usize::from(d > 1.5e-5);
            total += 1;
        }
        let err = relative_error(got.m[i].as_slice(), &want.m[i]);
        assert!(err < 1e-3, "Adam's m of parameter {i}: relative error {err:.2e}");
    }
    assert!(off * 10_000 <= total, "{off} of {total} weights differ by more than 1% of a step");
}
