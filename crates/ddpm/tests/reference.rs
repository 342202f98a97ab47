//! The schedule and the samplers against `scripts/ddpm_ref.py`, through the
//! fixtures `scripts/make_fixtures.py` wrote.

use std::path::PathBuf;

use ddpm::sampler::{ddim_trajectory_end, ddpm_step, sample_ddim, Conditioning};
use ddpm::{Schedule, ScheduleKind};
use ddpm_autograd::Tensor;
use ddpm_nn::checkpoint::{load_into, load_tensors, read_metadata, Tensors};
use ddpm_nn::{Module, UNet};
use rand::{rngs::StdRng, SeedableRng};

fn fixture(name: &str) -> Tensors {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name);
    load_tensors(&path).unwrap_or_else(|e| panic!("{e}")).0
}

/// max |got - want| relative to max |want|.
fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.shape(), want.shape());
    got.max_abs_diff(want).unwrap() / want.as_slice().iter().fold(0f32, |m, v| m.max(v.abs()))
}

#[test]
fn schedules_match_the_reference() {
    let f = fixture("schedule.safetensors");
    for kind in [ScheduleKind::Linear, ScheduleKind::Cosine] {
        let s = Schedule::new(kind, 1000);
        for (name, ours) in
            [("betas", &s.betas), ("alphas_cumprod", &s.alphas_cumprod), ("posterior_var", &s.posterior_var)]
        {
            let ours = Tensor::from_vec(ours.iter().map(|&v| v as f32).collect(), [1000]).unwrap();
            let err = relative_error(&ours, &f[&format!("{kind}.{name}")]);
            // Both computed in f64 and rounded to f32 once.
            assert!(err < 1e-6, "{kind}.{name}: {err:.2e}");
        }
    }
}

#[test]
fn one_ddpm_step_matches_the_reference_at_every_kind_of_t() {
    let f = fixture("ddpm_step.safetensors");
    let s = Schedule::new(ScheduleKind::Linear, 1000);
    for t in [0, 1, 500, 999] {
        let out = ddpm_step(&s, &f["x"], t, &f["eps_hat"], &f["z"]).unwrap();
        let err = relative_error(&out, &f[&format!("out_t{t}")]);
        assert!(err < 1e-6, "t = {t}: {err:.2e}");
    }
}

/// DDIM with eta = 0 from a fixed x_T is deterministic, and matches the
/// reference sampler run on the same (PyTorch-written) checkpoint: 10 steps,
/// with and without classifier-free guidance.
#[test]
fn ddim_matches_the_reference_sampler_on_a_pytorch_checkpoint() {
    let ckpt = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/checkpoint_tiny_c10.safetensors");
    let meta = read_metadata(&ckpt).unwrap();
    let model = UNet::new(meta.preset.parse().unwrap(), meta.num_classes, &mut StdRng::seed_from_u64(0));
    load_into(&ckpt, &model.named_params()).unwrap();
    let schedule = Schedule::new(meta.schedule.parse().unwrap(), meta.timesteps);

    let f = fixture("ddim_tiny_c10.safetensors");
    let labels: Vec<usize> = f["y"].as_slice().iter().map(|&v| v as usize).collect();
    for (guidance, key) in [(0.0, "out"), (2.0, "out_guided")] {
        let cond = Conditioning { labels: Some(&labels), guidance };
        let ours = sample_ddim(&model, &schedule, &f["x_T"], 10, 0.0, cond, 1).unwrap();
        assert!(ours.max_abs_diff(&f[key]).unwrap() < 1e-3, "{key}: clamped output");
        // The untrained checkpoint drives most pixels to the clamp, where any error
        // hides; the values before it (`*_raw`, up to a few hundred) are the real test.
        let raw = ddim_trajectory_end(&model, &schedule, &f["x_T"], 10, 0.0, cond, 1).unwrap();
        let err = relative_error(&raw, &f[&format!("{key}_raw")]);
        assert!(err < 1e-3, "{key}_raw: relative error {err:.2e}");
        // eta = 0 is deterministic: a second run, even with another noise seed, gives the same bits.
        let again = ddim_trajectory_end(&model, &schedule, &f["x_T"], 10, 0.0, cond, 2).unwrap();
        assert_eq!(raw.to_vec(), again.to_vec());
    }
}

/// A checkpoint trained by `cargo xtask train` (the 15-minute `tiny` run of the
/// README) samples in PyTorch as it does here: `scripts/sample_checkpoint.py`
/// ran the reference sampler on it (DDIM, 20 steps, eta 0, guidance 0 and 1)
/// and recorded the results; the Rust sampler must reproduce them.
#[test]
fn a_rust_trained_checkpoint_samples_the_same_in_pytorch() {
    samples_like_the_reference("rust_trained_tiny_c10.safetensors", "ddim_rust_trained.safetensors");
}

/// The other direction: `scripts/torch_train.py` trained `tiny` with 10
/// classes for 15 minutes in PyTorch (6,462 steps); the same script sampled
/// it with the reference sampler. Rust loads that checkpoint and must
/// reproduce the samples.
#[test]
fn a_pytorch_trained_checkpoint_samples_the_same_in_rust() {
    samples_like_the_reference("torch_trained_tiny_c10.safetensors", "ddim_torch_trained.safetensors");
}

/// Loads `checkpoint` (interchange format) and reruns the reference's DDIM
/// (20 steps, eta 0, guidance 0 and 1) recorded in `samples`.
fn samples_like_the_reference(checkpoint: &str, samples: &str) {
    let ckpt = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(checkpoint);
    let meta = read_metadata(&ckpt).unwrap();
    let model = UNet::new(meta.preset.parse().unwrap(), meta.num_classes, &mut StdRng::seed_from_u64(0));
    load_into(&ckpt, &model.named_params()).unwrap();
    let schedule = Schedule::new(meta.schedule.parse().unwrap(), meta.timesteps);

    let f = fixture(samples);
    let labels: Vec<usize> = f["y"].as_slice().iter().map(|&v| v as usize).collect();
    for (guidance, key) in [(0.0, "out"), (1.0, "out_guided")] {
        let cond = Conditioning { labels: Some(&labels), guidance };
        let raw = ddim_trajectory_end(&model, &schedule, &f["x_T"], 20, 0.0, cond, 1).unwrap();
        let err = relative_error(&raw, &f[&format!("{key}_raw")]);
        assert!(err < 1e-3, "{samples} {key}_raw: relative error {err:.2e}");
        let clamped = raw.clamp(-1.0, 1.0).unwrap();
        assert!(clamped.max_abs_diff(&f[key]).unwrap() < 1e-3, "{samples} {key}: clamped output");
    }
}
