//! Checkpoints interchange both ways with the PyTorch reference.
//!
//! - PyTorch -> Rust: `tests/fixtures/checkpoint_tiny_c10.safetensors` was
//!   written by the reference (scripts/make_fixtures.py), with its output on
//!   fixed inputs beside it; Rust loads it and must compute the same output.
//! - Rust -> PyTorch: Rust writes a checkpoint and its output; when
//!   `DDPM_TORCH_PYTHON` names a Python with torch and safetensors,
//!   `scripts/check_rust_checkpoint.py` loads it into the reference and checks
//!   the output. Without it (CI has no PyTorch), that half says it is skipped.

use std::path::PathBuf;
use std::process::Command;

use ddpm_rs::autograd::{no_grad, Tensor, Var};
use ddpm_rs::nn::checkpoint::{load_into, load_tensors, read_metadata, save, save_tensors, Metadata};
use ddpm_rs::nn::layers::Mode;
use ddpm_rs::nn::{Module, Preset, UNet};
use rand::{rngs::StdRng, SeedableRng};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn as_indices(t: &Tensor) -> Vec<usize> {
    t.as_slice().iter().map(|&v| v as usize).collect()
}

fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    got.max_abs_diff(want).unwrap() / want.as_slice().iter().fold(0f32, |m, v| m.max(v.abs()))
}

#[test]
fn a_pytorch_checkpoint_loads_and_computes_the_same_output() {
    let path = fixture("checkpoint_tiny_c10.safetensors");
    let meta = read_metadata(&path).unwrap();
    assert_eq!(
        (meta.preset.as_str(), meta.num_classes, meta.schedule.as_str(), meta.timesteps),
        ("tiny", 10, "linear", 1000)
    );
    let model = UNet::new(meta.preset.parse().unwrap(), meta.num_classes, &mut StdRng::seed_from_u64(1));
    load_into(&path, &model.named_params()).unwrap();

    let (expect, _) = load_tensors(&fixture("checkpoint_tiny_c10_expect.safetensors")).unwrap();
    let (t, y) = (as_indices(&expect["t"]), as_indices(&expect["y"]));
    let out = no_grad(|| model.forward(&Var::constant(expect["x"].clone()), &t, Some(&y), &mut Mode::Eval)).unwrap();
    let err = relative_error(&out.value(), &expect["out"]);
    assert!(err < 1e-4, "relative error {err:.2e}");
}

#[test]
fn a_checkpoint_of_the_wrong_preset_is_refused_by_name() {
    let small = UNet::new(Preset::Small, 10, &mut StdRng::seed_from_u64(2));
    let e = load_into(&fixture("checkpoint_tiny_c10.safetensors"), &small.named_params()).unwrap_err().to_string();
    assert!(e.contains("checkpoint_tiny_c10.safetensors") && e.contains("tensor \""), "{e}");
}

#[test]
fn a_rust_checkpoint_loads_in_pytorch() {
    let tmp = tempfile::Builder::new().prefix("ddpm-interchange-").tempdir().unwrap();
    let dir = tmp.path();
    let (model_path, expect_path) = (dir.join("model.safetensors"), dir.join("expect.safetensors"));

    let mut rng = StdRng::seed_from_u64(3);
    let model = UNet::new(Preset::Tiny, 10, &mut rng);
    let meta = Metadata { preset: "tiny".into(), num_classes: 10, schedule: "linear".into(), timesteps: 1000 };
    save(&model_path, &model.named_params(), &meta).unwrap();
    let x = Tensor::randn([2, 1, 28, 28], &mut rng);
    let (t, y) = (vec![3usize, 901], vec![4usize, 10]);
    let out = no_grad(|| model.forward(&Var::constant(x.clone()), &t, Some(&y), &mut Mode::Eval)).unwrap().value();
    let floats = |v: &[usize]| Tensor::from_vec(v.iter().map(|&i| i as f32).collect(), [v.len()]).unwrap();
    let tensors = [("x".to_string(), x), ("t".into(), floats(&t)), ("y".into(), floats(&y)), ("out".into(), out)];
    save_tensors(&expect_path, &tensors, &Default::default()).unwrap();

    // The file reads back in Rust exactly.
    let again = UNet::new(Preset::Tiny, 10, &mut StdRng::seed_from_u64(4));
    load_into(&model_path, &again.named_params()).unwrap();
    for ((name, a), (_, b)) in model.named_params().iter().zip(again.named_params()) {
        assert_eq!(a.value().to_vec(), b.value().to_vec(), "{name}");
    }

    let Ok(python) = std::env::var("DDPM_TORCH_PYTHON") else {
        eprintln!("skipped the PyTorch half: set DDPM_TORCH_PYTHON to a Python with torch and safetensors");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check_rust_checkpoint.py");
    let status = Command::new(python).arg(script).arg(&model_path).arg(&expect_path).status().unwrap();
    assert!(status.success(), "the PyTorch reference did not reproduce the Rust checkpoint's output");
}
