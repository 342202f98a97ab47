//! Training states that were not written by a run of this program: counters
//! that disagree, settings no run can use, NaN in the weights, and random
//! damage to a real state. Each is refused in one line naming the file, or
//! resumes as the run it describes; none panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ddpm::data::{Images, Split};
use ddpm::{TrainConfig, Trainer};
use ddpm_nn::checkpoint::{load_tensors, save_tensors};
use ddpm_nn::Preset;
use proptest::prelude::*;

mod common;
use common::temp_dir;

// The damage the checkpoint reader's property tests do, done to a state.
#[path = "../../nn/tests/damage/mod.rs"]
mod damage;
use damage::{apply, damage};

/// Four blank 28x28 images: enough for a step of a batch of 2.
fn data() -> Split {
    Split { images: Images { count: 4, rows: 28, cols: 28, pixels: vec![0; 4 * 784] }, labels: vec![0, 1, 2, 3] }
}

fn config() -> TrainConfig {
    TrainConfig { batch: 2, seed: 3, ..TrainConfig::new(Preset::Tiny, 10) }
}

/// The state of a run after one step, written into `dir`.
fn saved_state(dir: &Path) -> PathBuf {
    let path = dir.join("state.safetensors");
    let mut trainer = Trainer::new(config(), data().len()).unwrap();
    trainer.train_step(&data()).unwrap();
    trainer.save_state(&path).unwrap();
    path
}

/// `state` rewritten with its metadata changed by `edit`: what a tool that
/// writes safetensors files, but not states, might produce.
fn edited(state: &Path, name: &str, edit: impl FnOnce(&mut HashMap<String, String>)) -> PathBuf {
    let (tensors, mut meta) = load_tensors(state).unwrap();
    edit(&mut meta);
    let path = state.with_file_name(name);
    save_tensors(&path, &tensors.into_iter().collect::<Vec<_>>(), &meta).unwrap();
    path
}

/// The refusal of `resume` (and of `saved_config`, which checks the same):
/// one line, naming the file.
#[track_caller]
fn refusal(path: &Path) -> String {
    let msg = Trainer::resume(path, &config(), data().len()).err().expect("refused").to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "names the file: {msg}");
    assert_eq!(Trainer::saved_config(path).expect_err("refused too").to_string(), msg);
    msg
}

#[test]
fn counters_that_disagree_are_refused() {
    let tmp = temp_dir("counters");
    let state = saved_state(tmp.path());
    assert_eq!(Trainer::resume(&state, &config(), 4).unwrap().step_count(), 1);
    for (key, value, want) in [
        ("adam_steps", "5", "metadata \"adam_steps\" is 5 but \"step\" is 1"),
        ("ema_updates", "0", "metadata \"ema_updates\" is 0 but \"step\" is 1"),
        ("step", "0", "metadata \"adam_steps\" is 1 but \"step\" is 0"),
    ] {
        let path = edited(&state, "edited.safetensors", |m| {
            m.insert(key.into(), value.into());
        });
        let msg = refusal(&path);
        assert_eq!(
            msg,
            format!("training state {}: {want}; the file was not written by a run of this program", path.display())
        );
    }
    // A step count no run reaches, in agreement with itself.
    let huge = u64::MAX.to_string();
    let path = edited(&state, "huge.safetensors", |m| {
        for key in ["step", "adam_steps", "ema_updates"] {
            m.insert(key.into(), huge.clone());
        }
    });
    assert!(refusal(&path).contains("more than the 9007199254740992 steps a run can take"));
    let path = edited(&state, "no-data.safetensors", |m| {
        m.insert("data_len".into(), "0".into());
    });
    assert!(refusal(&path).ends_with("metadata \"data_len\" is 0: a run trains on at least one image"));
    let path = edited(&state, "text.safetensors", |m| {
        m.insert("step".into(), "one\nstep".into());
    });
    assert!(refusal(&path).ends_with(r#"metadata "step" is "one\nstep", not a step count"#));
}

/// The saved settings go through `TrainConfig::validate`, as the flags do.
#[test]
fn settings_no_run_can_use_are_refused() {
    let tmp = temp_dir("settings");
    let state = saved_state(tmp.path());
    for (key, value, want) in [
        ("lr", "NaN", "--lr must be a positive number, not NaN"),
        ("batch", "0", "--batch must be at least 1"),
        ("timesteps", "10000000", "T must be in 2..=100000, not 10000000"),
        ("ema_decay", "inf", "--ema must be in [0, 1), not inf"),
        ("warmup", "-1", "metadata \"warmup\" is \"-1\", which does not parse"),
        ("seed", "18446744073709551616", "metadata \"seed\" is \"18446744073709551616\", which does not parse"),
    ] {
        let path = edited(&state, "edited.safetensors", |m| {
            m.insert(key.into(), value.into());
        });
        let msg = refusal(&path);
        assert!(msg.starts_with(&format!("training state {}: ", path.display())), "{msg}");
        assert!(msg.contains(want), "{key}: {msg}");
    }
}

#[test]
fn a_state_holding_nan_is_refused_with_the_tensor_named() {
    let tmp = temp_dir("nan");
    let state = saved_state(tmp.path());
    let (mut tensors, meta) = load_tensors(&state).unwrap();
    let name = "adam.v/down.0.conv1.weight";
    let mut values = tensors[name].to_vec();
    values[0] = f32::NAN;
    values[7] = f32::INFINITY;
    tensors.insert(name.into(), ddpm_autograd::Tensor::from_vec(values, tensors[name].dims().to_vec()).unwrap());
    save_tensors(&state, &tensors.into_iter().collect::<Vec<_>>(), &meta).unwrap();
    let msg = refusal(&state);
    assert!(msg.ends_with(&format!("tensor \"{name}\" holds 2 non-finite values (NaN or Inf)")), "{msg}");
}

#[test]
fn t_must_be_in_the_range_a_model_may_have() {
    for t in [0, 1, 100_001, usize::MAX] {
        let e = Trainer::new(TrainConfig { timesteps: t, ..config() }, 4).err().unwrap().to_string();
        assert!(e.starts_with(&format!("T must be in 2..=100000, not {t}: ")), "{e}");
    }
    for t in [2, 100_000] {
        TrainConfig { timesteps: t, ..config() }.validate().unwrap();
    }
}

/// A state saved once for every case (each resume builds a model; saving
/// one per case would be most of the time).
fn state_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let tmp = temp_dir("state-bytes");
        std::fs::read(saved_state(tmp.path())).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Ok with the saved run's step and settings, or a one-line refusal.
    #[test]
    fn a_damaged_state_resumes_as_saved_or_is_refused_in_one_line(damage in damage()) {
        let tmp = temp_dir("damaged-state");
        let path = tmp.path().join("state.safetensors");
        let bytes = state_bytes().to_vec();
        // The header and the first values: where damage says something about
        // the reader, not about f32 arithmetic.
        let region = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 64;
        std::fs::write(&path, apply(bytes, &damage, region)).unwrap();
        match Trainer::resume(&path, &config(), data().len()) {
            Ok(trainer) => {
                prop_assert_eq!(trainer.step_count(), 1);
                prop_assert_eq!(trainer.adam().step_count(), 1);
                prop_assert_eq!(trainer.ema().num_updates(), 1);
                prop_assert_eq!(trainer.config(), &config());
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.contains('\n'), "{:?}", msg);
                prop_assert!(msg.contains(&path.display().to_string()), "{}", msg);
            }
        }
    }
}
