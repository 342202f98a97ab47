//! The same graph on two storages: the U-Net's forward and backward pass, a
//! training run and the samplers, on the host and on a device, from the same
//! weights, inputs and seeds. Nothing here knows which device it runs on:
//! the model, the trainer and the sampler are the code the host runs.
//!
//! "Equal" means within 1e-4 of each tensor's scale (its largest magnitude):
//! the device sums in another order (and its exp and sigmoid are CUDA's), so
//! the last bits differ.

use std::path::PathBuf;

use ddpm::data::{Images, Split};
use ddpm::sampler::{self, Conditioning, Method};
use ddpm::{Schedule, ScheduleKind, TrainConfig, Trainer};
use ddpm_rs::autograd::{Tensor, Var};
use ddpm_rs::nn::checkpoint::{load_into, read_metadata};
use ddpm_rs::nn::layers::Mode;
use ddpm_rs::nn::{Module, Preset, UNet};
use ddpm_rs::tensor::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The largest difference of `got` (on any device) from `want` (on the
/// host), relative to `want`'s largest magnitude.
pub fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    let got = got.to(Device::Cpu).unwrap();
    assert_eq!(got.shape(), want.shape());
    let scale = want.as_slice().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.max_abs_diff(want).unwrap() / scale.max(f32::MIN_POSITIVE)
}

/// tests/fixtures, or `$DDPM_FIXTURES` where the binary runs away from the
/// source tree (scripts/gpu_run.sh on a GPU machine).
fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var_os("DDPM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    dir.join(name)
}

/// The README's 15-minute `tiny` model with 10 classes (trained weights give
/// the activations of real use; a fresh model's are tamer).
pub fn trained_tiny() -> UNet {
    let ckpt = fixture("rust_trained_tiny_c10.safetensors");
    let meta = read_metadata(&ckpt).unwrap();
    let model = UNet::new(meta.preset.parse().unwrap(), meta.num_classes, &mut StdRng::seed_from_u64(0));
    load_into(&ckpt, &model.named_params()).unwrap();
    model
}

/// What one pass of the training objective gives: eps_theta(x_t), the loss,
/// dL/dx_t and dL/dtheta for every parameter (in `named_params` order).
struct Pass {
    output: Tensor,
    loss: Tensor,
    d_x: Tensor,
    d_params: Vec<Tensor>,
}

/// L = mse(eps_theta(x_t, t, y), e) and its gradients, on the model's device,
/// in training mode (dropout drawing from a generator seeded by `seed`).
fn pass(model: &UNet, x_t: &Tensor, t: &[usize], y: Option<&[usize]>, eps: &Tensor, seed: u64) -> Pass {
    let device = model.device();
    let x = Var::param(x_t.to(device).unwrap());
    let mut rng = StdRng::seed_from_u64(seed);
    let output = model.forward(&x, t, y, &mut Mode::Train(&mut rng)).unwrap();
    let loss = output.mse(&Var::constant(eps.to(device).unwrap())).unwrap();
    let grads = loss.backward().unwrap();
    let d_params = model.named_params().iter().map(|(_, p)| grads.get(p).unwrap().clone()).collect();
    Pass { output: output.value(), loss: loss.value(), d_x: grads.get(&x).unwrap().clone(), d_params }
}

/// The forward output, the loss, d_x and every parameter's gradient of one
/// training pass agree on the host and on `device`: `tiny` with 10 classes
/// (the trained model; labels with the null class among them) and `small`
/// (fresh weights, dropout on: both devices draw the same masks from the
/// same seeds, or its gradients disagree).
pub fn the_unet_pass_is_the_same_on_both_storages(device: Device) {
    for (model, labels) in
        [(trained_tiny(), Some(vec![3, 10])), (UNet::new(Preset::Small, 0, &mut StdRng::seed_from_u64(5)), None)]
    {
        let mut rng = StdRng::seed_from_u64(4);
        let x_t = Tensor::randn([2, 1, 28, 28], &mut rng);
        let eps = Tensor::randn([2, 1, 28, 28], &mut rng);
        let t = [30, 870];
        let host = pass(&model, &x_t, &t, labels.as_deref(), &eps, 9);
        model.to_device(device).unwrap();
        let dev = pass(&model, &x_t, &t, labels.as_deref(), &eps, 9);
        let preset = model.preset;
        for (what, got, want) in
            [("output", &dev.output, &host.output), ("loss", &dev.loss, &host.loss), ("d_x", &dev.d_x, &host.d_x)]
        {
            let err = relative_error(got, want);
            assert!(err < 1e-4, "{preset} {what}: relative error {err:.2e}");
        }
        for ((name, _), (got, want)) in model.named_params().iter().zip(dev.d_params.iter().zip(&host.d_params)) {
            assert_eq!(got.device(), device, "{name}'s gradient stays on the device");
            let err = relative_error(got, want);
            assert!(err < 1e-4, "{preset} d {name}: relative error {err:.2e}");
        }
    }
}

/// 12 synthetic 28x28 images and labels, so the test needs no data files.
fn toy_data() -> Split {
    let n = 12;
    let pixels: Vec<u8> = (0..n * 784).map(|i| ((i * 37 + i / 784 * 11) % 256) as u8).collect();
    Split { images: Images { count: n, rows: 28, cols: 28, pixels }, labels: (0..n).map(|i| (i % 10) as u8).collect() }
}

/// Two whole training steps (noising, loss, backward, clipping, Adam, EMA)
/// leave the same losses, weights, moments and average on both devices:
/// `tiny` with 10 classes and `small` (dropout).
pub fn training_steps_are_the_same_on_both_storages(device: Device) {
    let data = toy_data();
    for (preset, batch) in [(Preset::Tiny, 4), (Preset::Small, 2)] {
        let config = TrainConfig { batch, warmup: 2, seed: 3, ..TrainConfig::new(preset, 10) };
        let mut host = Trainer::new(config.clone(), data.len()).unwrap();
        let mut dev = Trainer::new(config, data.len()).unwrap();
        dev.to_device(device).unwrap();
        for step in 1..=2 {
            let (a, b) = (host.train_step(&data).unwrap(), dev.train_step(&data).unwrap());
            assert!(
                (a.loss - b.loss).abs() < 1e-5 * a.loss.abs().max(1.0),
                "{preset} step {step}: loss {} against {}",
                b.loss,
                a.loss
            );
            assert!(
                (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm,
                "{preset} step {step}: gradient norm {} against {}",
                b.grad_norm,
                a.grad_norm
            );
        }
        assert_eq!(dev.device(), device);
        let counters = |t: &Trainer| (t.step_count(), t.adam().step_count(), t.ema().num_updates());
        assert_eq!(counters(&dev), counters(&host), "{preset}: step, Adam and EMA counters");
        let on_host = |ts: &[Tensor]| ts.iter().map(|t| t.to(Device::Cpu).unwrap()).collect::<Vec<_>>();
        let weights = |t: &Trainer| on_host(&t.named_params().iter().map(|(_, p)| p.value()).collect::<Vec<_>>());
        let (want_weights, got_weights) = (weights(&host), weights(&dev));
        let (want_ema, got_ema) = (on_host(host.ema().shadow()), on_host(dev.ema().shadow()));
        // Adam moves each weight by about the learning rate per step, whatever
        // the size of its gradient, so a weight whose gradient is near zero can
        // move differently on the two devices (the gradients agree to 1e-4,
        // above). So: almost every weight within 1% of the two steps' learning
        // rates (5e-4 + 1e-3), and none further than those steps can go.
        for (part, want, got) in [("weight", &want_weights, &got_weights), ("EMA", &want_ema, &got_ema)] {
            let (mut off, mut total) = (0usize, 0usize);
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                for (a, b) in w.as_slice().iter().zip(g.as_slice()) {
                    let d = (a - b).abs();
                    assert!(d < 3e-3, "{preset} {part} of parameter {i}: {d:.2e} away");
                    off += usize::from(d > 1.5e-5);
                    total += 1;
                }
            }
            assert!(off * 10_000 <= total, "{preset}: {off} of {total} {part}s differ by more than 1% of a step");
        }
        for (i, (w, g)) in host.adam().moments().0.iter().zip(dev.adam().moments().0).enumerate() {
            let err = relative_error(g, w);
            assert!(err < 1e-3, "{preset} Adam's m of parameter {i}: relative error {err:.2e}");
        }
    }
}

/// The sampler's loop ends where it does on the host, from the same x_T and
/// noise seed: the model and x_T on `device`, the result brought back.
fn assert_samples_like_the_host(
    device: Device,
    schedule: &Schedule,
    x_t: &Tensor,
    method: Method,
    cond: Conditioning,
    seed: u64,
) {
    let model = trained_tiny();
    let want = sampler::run(&model, schedule, x_t, method, cond, seed, &mut |_, _, _| {}).unwrap();
    model.to_device(device).unwrap();
    let got = sampler::run(&model, schedule, &x_t.to(device).unwrap(), method, cond, seed, &mut |_, _, x| {
        assert_eq!(x.device(), device, "x stays on the device between steps");
    })
    .unwrap();
    let err = relative_error(&got, &want);
    assert!(err < 1e-4, "{method:?}: relative error {err:.2e}");
}

/// DDIM with 10 steps and classifier-free guidance (one pass over [x; x]
/// per step, combined in the fused step).
pub fn ddim_with_guidance_samples_the_same(device: Device) {
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let x_t = Tensor::randn([2, 1, 28, 28], &mut StdRng::seed_from_u64(2));
    let cond = Conditioning { labels: Some(&[4, 9]), guidance: 1.0 };
    assert_samples_like_the_host(device, &schedule, &x_t, Method::Ddim { steps: 10, eta: 0.0 }, cond, 0);
}

/// DDPM adds noise at every step but the last: both devices draw it from
/// the Philox stream of the seed, so the same seed gives the same samples.
/// (T = 3: the emulation is slow, and the network does not know T.)
pub fn ddpm_with_noise_samples_the_same(device: Device) {
    let schedule = Schedule::new(ScheduleKind::Linear, 3);
    let x_t = Tensor::randn([2, 1, 28, 28], &mut StdRng::seed_from_u64(3));
    let cond = Conditioning { labels: Some(&[1, 8]), guidance: 0.0 };
    assert_samples_like_the_host(device, &schedule, &x_t, Method::Ddpm, cond, 77);
}
