//! The training loop: a resumed run is the uninterrupted run, bit for bit;
//! the loss goes down; a state from another run is refused.

use ddpm::data::{Images, Split};
use ddpm::{TrainConfig, Trainer};
use ddpm_nn::Preset;

mod common;
use common::temp_dir;

/// 40 synthetic 28x28 digits-like images (a bright bar whose position depends
/// on the label), so the test needs no data files.
fn toy_data() -> Split {
    let n = 40;
    let mut pixels = vec![0u8; n * 28 * 28];
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    for (i, &y) in labels.iter().enumerate() {
        for r in 4..24 {
            let c = 4 + 2 * y as usize;
            pixels[i * 784 + r * 28 + c] = 255;
            pixels[i * 784 + r * 28 + c + 1] = 200;
        }
    }
    Split { images: Images { count: n, rows: 28, cols: 28, pixels }, labels }
}

fn config() -> TrainConfig {
    TrainConfig { batch: 8, warmup: 3, seed: 7, ..TrainConfig::new(Preset::Tiny, 10) }
}

fn values(trainer: &Trainer) -> Vec<Vec<f32>> {
    trainer.named_params().iter().map(|(_, p)| p.value().to_vec()).collect()
}

#[test]
fn resumed_training_equals_uninterrupted_training() {
    let data = toy_data();
    let tmp = temp_dir("resume");
    let dir = tmp.path();

    // Uninterrupted: 6 steps (crossing an epoch boundary at 5 batches of 8).
    let mut straight = Trainer::new(config(), data.len()).unwrap();
    let losses: Vec<f32> = (0..6).map(|_| straight.train_step(&data).unwrap().loss).collect();

    // Interrupted after 3 steps, saved, and resumed in a new trainer.
    let mut first = Trainer::new(config(), data.len()).unwrap();
    for _ in 0..3 {
        first.train_step(&data).unwrap();
    }
    first.save_state(&dir.join("state.safetensors")).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir.join("state.safetensors"), &config(), data.len()).unwrap();
    assert_eq!(resumed.step_count(), 3);
    let resumed_losses: Vec<f32> = (0..3).map(|_| resumed.train_step(&data).unwrap().loss).collect();

    assert_eq!(resumed_losses, losses[3..], "the losses of steps 4-6 differ after resuming");
    assert_eq!(values(&resumed), values(&straight), "the weights differ after resuming");
    // The EMA (what model.safetensors holds) too.
    straight.save_model(&dir.join("a.safetensors")).unwrap();
    resumed.save_model(&dir.join("b.safetensors")).unwrap();
    let read = |f: &str| {
        ddpm_nn::checkpoint::load_tensors(&dir.join(f)).unwrap().0.into_values().map(|t| t.to_vec()).collect::<Vec<_>>()
    };
    assert!(read("a.safetensors") == read("b.safetensors"), "the EMA weights differ after resuming");
}

#[test]
fn a_state_from_other_settings_or_data_is_refused() {
    let data = toy_data();
    let tmp = temp_dir("refuse");
    let dir = tmp.path();
    let path = dir.join("state.safetensors");
    let mut trainer = Trainer::new(config(), data.len()).unwrap();
    trainer.train_step(&data).unwrap();
    trainer.save_state(&path).unwrap();

    let other = TrainConfig { lr: 5e-4, ..config() };
    let e = Trainer::resume(&path, &other, data.len()).err().unwrap().to_string();
    assert!(e.contains("lr: 0.001 in the saved run, 0.0005 now"), "{e}");
    let e = Trainer::resume(&path, &config(), 80).err().unwrap().to_string();
    assert!(e.contains("40 images") && e.contains("80"), "{e}");
    let small = TrainConfig { preset: Preset::Small, ..config() };
    let e = Trainer::resume(&path, &small, data.len()).err().unwrap().to_string();
    assert!(e.contains("preset: tiny in the saved run, small now"), "{e}");

    // A model file is not a training state.
    trainer.save_model(&dir.join("model.safetensors")).unwrap();
    let e = Trainer::resume(&dir.join("model.safetensors"), &config(), data.len()).err().unwrap().to_string();
    assert!(e.contains("not a training state"), "{e}");
}

#[test]
fn the_loss_goes_down_and_the_warmup_ramps_the_learning_rate() {
    let data = toy_data();
    let config = TrainConfig { batch: 20, warmup: 10, lr: 2e-3, ..config() };
    let mut trainer = Trainer::new(config, data.len()).unwrap();
    for (step, lr) in [(0, 2e-4), (4, 1e-3), (9, 2e-3), (50, 2e-3)] {
        assert!((trainer.lr_at(step) - lr).abs() < 1e-9, "lr at step {step}: {}", trainer.lr_at(step));
    }
    let losses: Vec<f32> = (0..40).map(|_| trainer.train_step(&data).unwrap().loss).collect();
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (early, late) = (mean(&losses[..10]), mean(&losses[30..]));
    assert!(late < 0.7 * early, "the loss did not fall: first 10 steps {early}, last 10 {late}");
}

#[test]
fn bad_settings_are_refused() {
    let data = toy_data();
    for (config, needle) in [
        (TrainConfig { classes: 3, ..config() }, "--classes"),
        (TrainConfig { batch: 0, ..config() }, "--batch"),
        (TrainConfig { batch: 41, ..config() }, "does not fit"),
        (TrainConfig { lr: -1.0, ..config() }, "--lr"),
        (TrainConfig { ema_decay: 1.0, ..config() }, "--ema"),
    ] {
        let e = Trainer::new(config, data.len()).err().unwrap().to_string();
        assert!(e.contains(needle), "{e}");
    }
}
