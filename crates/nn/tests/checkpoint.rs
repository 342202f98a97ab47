//! Checkpoints: a save followed by a load gives back every value bit for bit
//! and the metadata; writes are atomic; every kind of bad file is refused
//! with a message naming the file and what is wrong, and leaves the model as
//! it was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ddpm_autograd::{Tensor, Var};
use ddpm_nn::checkpoint::{
    load_into, load_tensors, load_tensors_into, read_metadata, save, save_tensors, CheckpointError, Metadata,
    MetadataError,
};
use ddpm_nn::NamedParams;
use rand::{rngs::StdRng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

/// A fresh directory per test (tests run in parallel, and so may other runs),
/// removed when the test ends, whether it passes or fails.
fn temp_dir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("ddpm-{test}-")).tempdir().unwrap()
}

fn meta() -> Metadata {
    Metadata { preset: "tiny".into(), num_classes: 10, schedule: "cosine".into(), timesteps: 1000 }
}

/// A small model's worth of named parameters, random values from `seed`.
fn model(seed: u64) -> NamedParams {
    let mut rng = StdRng::seed_from_u64(seed);
    let shapes: [(&str, &[usize]); 4] = [
        ("conv_in.weight", &[4, 1, 3, 3]),
        ("conv_in.bias", &[4]),
        ("down.0.conv1.weight", &[4, 4, 3, 3]),
        ("out.bias", &[1]),
    ];
    shapes.iter().map(|(name, dims)| (name.to_string(), Var::param(Tensor::randn(dims.to_vec(), &mut rng)))).collect()
}

fn values(params: &NamedParams) -> Vec<Vec<f32>> {
    params.iter().map(|(_, p)| p.value().to_vec()).collect()
}

/// The model's tensors as (name, value) pairs, to write files with a change.
fn tensors(params: &NamedParams) -> Vec<(String, Tensor)> {
    params.iter().map(|(name, p)| (name.clone(), p.value())).collect()
}

/// Loads `path` into a fresh model, expects a refusal, checks that the model
/// did not change, and returns the message.
fn refused(path: &Path) -> String {
    let target = model(99);
    let before = values(&target);
    let err = load_into(path, &target).unwrap_err();
    assert_eq!(values(&target), before, "a refused load must leave the model unchanged");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("checkpoint {}: ", path.display())), "names the file: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn a_saved_model_loads_back_bit_for_bit() {
    let tmp = temp_dir("round-trip");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    let source = model(0);
    save(&path, &source, &meta()).unwrap();

    let target = model(1);
    assert_ne!(values(&target), values(&source));
    let loaded_meta = load_into(&path, &target).unwrap();
    assert_eq!(loaded_meta, meta());
    assert_eq!(values(&target), values(&source));
    for ((_, a), (_, b)) in source.iter().zip(&target) {
        assert_eq!(a.dims(), b.dims());
    }
    assert_eq!(read_metadata(&path).unwrap(), meta());

    // The file holds the four metadata strings of the interchange format.
    let (_, map) = load_tensors(&path).unwrap();
    let want: HashMap<String, String> =
        [("preset", "tiny"), ("num_classes", "10"), ("schedule", "cosine"), ("timesteps", "1000")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(map, want);
}

#[test]
fn named_tensors_and_any_metadata_round_trip() {
    let tmp = temp_dir("tensors");
    let dir = tmp.path();
    let path = dir.join("state.safetensors");
    let written = vec![
        ("adam.m.w".to_string(), Tensor::from_vec(vec![1.5, -2.25, 3.0e-8, f32::MAX], [2, 2]).unwrap()),
        ("scalar".to_string(), Tensor::scalar(7.0)),
        ("empty".to_string(), Tensor::zeros([0, 3])),
    ];
    let metadata = HashMap::from([("step".to_string(), "12345".to_string())]);
    save_tensors(&path, &written, &metadata).unwrap();
    let (read, read_metadata) = load_tensors(&path).unwrap();
    assert_eq!(read_metadata, metadata);
    assert_eq!(read.len(), written.len());
    for (name, t) in &written {
        assert_eq!(read[name].dims(), t.dims(), "{name}");
        assert_eq!(read[name].to_vec(), t.to_vec(), "{name}");
    }

    // No metadata at all reads back as an empty map.
    save_tensors(&path, &written, &HashMap::new()).unwrap();
    assert!(load_tensors(&path).unwrap().1.is_empty());

    // load_tensors_into takes any metadata, or none.
    let target: NamedParams = vec![("scalar".to_string(), Var::param(Tensor::scalar(0.0)))];
    save_tensors(&path, &written[1..2], &HashMap::new()).unwrap();
    assert!(load_tensors_into(&path, &target).unwrap().is_empty());
    assert_eq!(target[0].1.value().to_vec(), vec![7.0]);
}

#[test]
fn writes_are_atomic_and_leave_no_temporary_file() {
    let tmp = temp_dir("atomic");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    save(&path, &model(0), &meta()).unwrap();
    // Overwriting replaces the file whole.
    save(&path, &model(1), &meta()).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["model.safetensors".to_string()]);
    let target = model(2);
    load_into(&path, &target).unwrap();
    assert_eq!(values(&target), values(&model(1)));

    // A write that fails (no such directory) leaves nothing behind either, and
    // says where it tried to write.
    let missing_dir = dir.join("no-such-dir").join("model.safetensors");
    let err = save(&missing_dir, &model(0), &meta()).unwrap_err();
    assert!(matches!(err, CheckpointError::Write { .. }), "{err}");
    assert!(err.to_string().starts_with(&format!("checkpoint {}: cannot write", missing_dir.display())), "{err}");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
}

#[test]
fn refuses_a_missing_tensor() {
    let tmp = temp_dir("missing");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    let mut written = tensors(&model(0));
    written.remove(2);
    save_tensors(&path, &written, &meta().to_map()).unwrap();
    let msg = refused(&path);
    assert!(msg.ends_with("tensor \"down.0.conv1.weight\" is missing (the model expects shape [4, 4, 3, 3])"), "{msg}");
}

#[test]
fn refuses_an_extra_tensor() {
    let tmp = temp_dir("extra");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    let mut written = tensors(&model(0));
    written.push(("mid.attn.qkv.weight".to_string(), Tensor::zeros([12, 4, 1, 1])));
    save_tensors(&path, &written, &meta().to_map()).unwrap();
    let msg = refused(&path);
    assert!(
        msg.ends_with("tensor \"mid.attn.qkv.weight\" (shape [12, 4, 1, 1]) is not a parameter of the model"),
        "{msg}"
    );
}

#[test]
fn refuses_a_misshaped_tensor() {
    let tmp = temp_dir("misshaped");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    let mut written = tensors(&model(0));
    written[2].1 = Tensor::zeros([8, 4, 3, 3]);
    save_tensors(&path, &written, &meta().to_map()).unwrap();
    let msg = refused(&path);
    assert_eq!(
        msg,
        format!(
            "checkpoint {}: tensor \"down.0.conv1.weight\" has shape [8, 4, 3, 3], the model expects [4, 4, 3, 3]",
            path.display()
        )
    );
}

/// A tensor stored as f64 (what `torch.save` of a double tensor would give).
#[test]
fn refuses_a_tensor_that_is_not_f32() {
    let tmp = temp_dir("dtype");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    let doubles: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![("out.bias", TensorView::new(Dtype::F64, vec![2], &doubles).unwrap())];
    let bytes = safetensors::serialize(views, &Some(meta().to_map())).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let msg = refused(&path);
    assert!(msg.ends_with("tensor \"out.bias\" has dtype F64, only F32 is supported"), "{msg}");
    assert!(load_tensors(&path).unwrap_err().to_string().contains("F64"));
}

#[test]
fn refuses_a_truncated_file() {
    let tmp = temp_dir("truncated");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    save(&path, &model(0), &meta()).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    // Cut in the tensor data: the header says how long the file should be.
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let msg = refused(&path);
    let want = format!("truncated: the file has {} bytes, its header needs {}", bytes.len() - 10, bytes.len());
    assert!(msg.ends_with(&want), "{msg}");

    // Cut in the header.
    std::fs::write(&path, &bytes[..40]).unwrap();
    let msg = refused(&path);
    assert!(msg.contains("truncated: the file has 40 bytes, its header needs"), "{msg}");

    // Bytes after the last tensor are not a truncation, but are refused too.
    let mut longer = bytes.clone();
    longer.extend([0u8; 3]);
    std::fs::write(&path, &longer).unwrap();
    let msg = refused(&path);
    assert!(msg.ends_with("not a safetensors file: 3 bytes follow the last tensor"), "{msg}");
}

#[test]
fn refuses_a_file_that_is_not_safetensors() {
    let tmp = temp_dir("garbage");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, "this is a text file, not a checkpoint\n").unwrap();
    let msg = refused(&path);
    assert!(msg.contains("not a safetensors file"), "{msg}");

    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    let msg = refused(&path);
    assert!(msg.contains("not a safetensors file: 3 bytes is too short"), "{msg}");

    // A plausible header length followed by something that is not JSON.
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend(b"not json at all!");
    std::fs::write(&path, &bytes).unwrap();
    let msg = refused(&path);
    assert!(msg.ends_with("not a safetensors file: the header is not a JSON description of tensors"), "{msg}");
}

#[test]
fn refuses_a_path_that_does_not_exist() {
    let tmp = temp_dir("nonexistent");
    let dir = tmp.path();
    let path = dir.join("no-such-model.safetensors");
    let msg = refused(&path);
    assert!(msg.contains("no-such-model.safetensors: cannot read:"), "{msg}");
    let err = load_tensors(&path).unwrap_err();
    assert!(matches!(&err, CheckpointError::Read { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound));
    assert!(read_metadata(&path).is_err());
}

#[test]
fn a_model_checkpoint_needs_its_metadata() {
    let tmp = temp_dir("metadata");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    let written = tensors(&model(0));

    let mut map = meta().to_map();
    map.remove("schedule");
    save_tensors(&path, &written, &map).unwrap();
    let msg = refused(&path);
    assert!(msg.ends_with("metadata entry \"schedule\" is missing"), "{msg}");

    let mut map = meta().to_map();
    map.insert("num_classes".into(), "ten".into());
    save_tensors(&path, &written, &map).unwrap();
    let msg = refused(&path);
    assert!(msg.ends_with("metadata entry \"num_classes\" is \"ten\", expected a non-negative integer"), "{msg}");
    assert!(read_metadata(&path).unwrap_err().to_string().contains("num_classes"));

    // The same tensors with no metadata load through load_tensors_into.
    save_tensors(&path, &written, &HashMap::new()).unwrap();
    assert!(matches!(read_metadata(&path), Err(CheckpointError::Metadata { .. })));
    let target = model(5);
    load_tensors_into(&path, &target).unwrap();
    assert_eq!(values(&target), values(&model(0)));
}

#[test]
fn metadata_converts_to_and_from_strings() {
    let map = meta().to_map();
    assert_eq!(map["num_classes"], "10");
    assert_eq!(map["timesteps"], "1000");
    assert_eq!(Metadata::from_map(&map).unwrap(), meta());

    // Entries other than the four are allowed (PyTorch may add "format").
    let mut more = map.clone();
    more.insert("format".into(), "pt".into());
    assert_eq!(Metadata::from_map(&more).unwrap(), meta());

    let mut less = map;
    less.remove("preset");
    assert_eq!(Metadata::from_map(&less), Err(MetadataError::Missing { key: "preset" }));
}

#[test]
fn refuses_to_write_two_tensors_of_one_name() {
    let tmp = temp_dir("duplicate");
    let dir = tmp.path();
    let path = dir.join("model.safetensors");
    let written = vec![("w".to_string(), Tensor::zeros([1])), ("w".to_string(), Tensor::zeros([2]))];
    let err = save_tensors(&path, &written, &HashMap::new()).unwrap_err();
    assert!(err.to_string().ends_with("the name \"w\" is given to two tensors"), "{err}");
    assert!(!path.exists());
}

/// The reference's own checkpoint (written by PyTorch's safetensors) reads here.
#[test]
fn reads_a_checkpoint_written_by_pytorch() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/checkpoint_tiny_c10.safetensors");
    let meta = read_metadata(&path).unwrap();
    assert_eq!(meta, Metadata { preset: "tiny".into(), num_classes: 10, schedule: "linear".into(), timesteps: 1000 });
    let (tensors, _) = load_tensors(&path).unwrap();
    // The reference's count: the tiny preset with 10 classes has 280,881 parameters.
    assert_eq!(tensors.values().map(|t| t.numel()).sum::<usize>(), 280_881);
}
