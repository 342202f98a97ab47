//! Checkpoints that were not written by a well-behaved program: a FIFO named
//! as a checkpoint, a header that names a tensor twice, NaN in the weights,
//! offsets that overflow, and random damage to real files. Each is refused
//! with one line naming the file; none hangs, panics or loads something else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ddpm_autograd::Tensor;
use ddpm_nn::checkpoint::{load_tensors, read_metadata, save_tensors, CheckpointError};
use proptest::prelude::*;

mod damage;
use damage::{apply, damage};

fn temp_dir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("ddpm-{test}-")).tempdir().unwrap()
}

/// A safetensors file by hand: the header's length (u64, little-endian), the
/// header's JSON text, then `data`. Lets a test write what `save_tensors`
/// never would.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `load_tensors` of `bytes` written to a file: the refusal's message, checked
/// to be one line that names the file.
#[track_caller]
fn refusal(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("hostile.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let msg = load_tensors(&path).expect_err("refused").to_string();
    assert!(msg.starts_with(&format!("checkpoint {}: ", path.display())), "names the file: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_being_opened() {
    let tmp = temp_dir("fifo");
    let fifo = tmp.path().join("model.safetensors");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Opening a FIFO with no writer blocks forever: the load runs on a thread
    // of its own, so that a reader that opens it fails this test instead of
    // hanging it.
    let (send, receive) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || send.send(load_tensors(&path).map(|_| ()).map_err(|e| e.to_string())));
    let loaded = receive.recv_timeout(std::time::Duration::from_secs(10)).expect("the load of a FIFO hangs");
    let msg = loaded.unwrap_err();
    assert_eq!(msg, format!("checkpoint {}: cannot read: a FIFO, not a regular file", fifo.display()));
    let msg = read_metadata(Path::new("/dev/zero")).unwrap_err().to_string();
    assert_eq!(msg, "checkpoint /dev/zero: cannot read: a device, not a regular file");
}

/// JSON lets an object give a key twice, and serde_json's map keeps the last;
/// the first tensor would be dropped without a word.
#[test]
fn a_tensor_named_twice_is_refused() {
    let tmp = temp_dir("dup");
    let data = f32_bytes(&[1.0, 2.0]);
    // The two entries describe the two halves of the data: without the check,
    // the crate keeps one and reports a gap, or loads one silently.
    let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let msg = refusal(tmp.path(), &raw_file(header, &data));
    assert!(msg.ends_with("the name \"w\" is given to two tensors"), "{msg}");
    // Twice the same entry would otherwise load as one tensor.
    let same = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let msg = refusal(tmp.path(), &raw_file(same, &data));
    assert!(msg.ends_with("the name \"w\" is given to two tensors"), "{msg}");
    // A metadata entry given twice: which "timesteps" would the model get?
    let meta = r#"{"__metadata__":{"timesteps":"1000","timesteps":"50"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let msg = refusal(tmp.path(), &raw_file(meta, &data));
    assert!(msg.ends_with("the header gives the metadata entry \"timesteps\" twice"), "{msg}");
}

#[test]
fn a_tensor_holding_nan_or_inf_is_refused_by_name_with_the_count() {
    let tmp = temp_dir("nan");
    let path = tmp.path().join("model.safetensors");
    let good = Tensor::from_vec(vec![1.0, -2.0], [2]).unwrap();
    let bad = Tensor::from_vec(vec![f32::NAN, 0.5, f32::INFINITY, f32::NEG_INFINITY, 3.0, 4.0], [2, 3]).unwrap();
    let tensors = vec![("a.bias".to_string(), good.clone()), ("down.0.conv1.weight".to_string(), bad)];
    save_tensors(&path, &tensors, &HashMap::new()).unwrap();
    let msg = load_tensors(&path).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!("checkpoint {}: tensor \"down.0.conv1.weight\" holds 3 non-finite values (NaN or Inf)", path.display())
    );
    let one = Tensor::from_vec(vec![f32::NAN], [1]).unwrap();
    save_tensors(&path, &[("b".to_string(), one)], &HashMap::new()).unwrap();
    assert!(load_tensors(&path).unwrap_err().to_string().ends_with("holds 1 non-finite value (NaN or Inf)"));
    // The largest finite value is a value.
    let max = Tensor::from_vec(vec![f32::MAX, f32::MIN, f32::MIN_POSITIVE / 2.0], [3]).unwrap();
    save_tensors(&path, &[("c".to_string(), max)], &HashMap::new()).unwrap();
    assert_eq!(load_tensors(&path).unwrap().0["c"].to_vec(), vec![f32::MAX, f32::MIN, f32::MIN_POSITIVE / 2.0]);
}

/// Each of the safetensors crate's refusals reads as a sentence, never as the
/// crate's Debug text (`ValidationOverflow`, `InvalidOffset("w")`).
#[test]
fn every_refusal_of_the_safetensors_crate_is_a_sentence() {
    let tmp = temp_dir("sentences");
    let f32s = |shape: &str, range: &str| format!(r#"{{"dtype":"F32","shape":{shape},"data_offsets":{range}}}"#);
    let cases = [
        // A shape whose element count overflows 64 bits.
        (
            raw_file(&format!(r#"{{"w":{}}}"#, f32s("[4294967296,4294967296,2]", "[0,0]")), &[]),
            "a tensor's shape has more elements than a 64-bit count holds",
        ),
        // An end offset near 2^64: the crate would add it to the header's length
        // unchecked.
        (
            raw_file(&format!(r#"{{"w":{}}}"#, f32s("[4611686018427387903]", "[0,18446744073709551612]")), &[]),
            "truncated: the file has",
        ),
        // The second tensor does not start where the first ends.
        (
            raw_file(&format!(r#"{{"a":{},"b":{}}}"#, f32s("[1]", "[0,4]"), f32s("[1]", "[8,12]")), &[0; 12]),
            "the byte range of tensor \"b\" does not follow the previous one",
        ),
        (
            raw_file(&format!(r#"{{"w":{}}}"#, f32s("[3]", "[0,8]")), &[0; 8]),
            "a tensor's byte range does not match its shape and dtype",
        ),
        (raw_file("{\"w\": \u{0}", &[]), "the header is not a JSON description of tensors"),
        (vec![0xff; 8], "more than the 100 MB allowed"),
        ([8u64.to_le_bytes().as_slice(), &[0xff; 8]].concat(), "the header is not UTF-8 text"),
    ];
    for (bytes, want) in cases {
        let msg = refusal(tmp.path(), &bytes);
        assert!(msg.contains(want), "want {want:?}: {msg}");
        assert!(!msg.contains("Overflow") && !msg.contains("Invalid"), "the crate's Debug text: {msg}");
    }
}

#[test]
fn a_name_from_the_file_cannot_forge_a_second_line() {
    let tmp = temp_dir("newline");
    let path = tmp.path().join("model.safetensors");
    let nan = Tensor::from_vec(vec![f32::NAN], [1]).unwrap();
    save_tensors(&path, &[("w\ncheckpoint ok".to_string(), nan)], &HashMap::new()).unwrap();
    let msg = load_tensors(&path).unwrap_err().to_string();
    assert!(msg.contains(r#"tensor "w\ncheckpoint ok" holds"#), "{msg}");
}

/// A small valid file: three tensors (one empty) and some metadata.
fn small_file() -> Vec<u8> {
    let tmp = temp_dir("small");
    let path = tmp.path().join("small.safetensors");
    let tensors = vec![
        (
            "conv.weight".to_string(),
            Tensor::from_vec((0..18).map(|i| i as f32 * 0.25 - 2.0).collect(), [2, 1, 3, 3]).unwrap(),
        ),
        ("conv.bias".to_string(), Tensor::from_vec(vec![0.5, -0.5], [2]).unwrap()),
        ("empty".to_string(), Tensor::zeros([0, 3])),
    ];
    let meta =
        HashMap::from([("timesteps".to_string(), "1000".to_string()), ("preset".to_string(), "tiny".to_string())]);
    save_tensors(&path, &tensors, &meta).unwrap();
    std::fs::read(&path).unwrap()
}

/// The reference's checkpoint (1.1 MB, written by PyTorch) and the length of
/// its header region: the 8-byte length and the JSON text.
fn fixture() -> (Vec<u8>, usize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/checkpoint_tiny_c10.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (bytes, 8 + header_len)
}

/// Loads `bytes`: Ok only with finite f32 tensors whose shapes count their
/// values; otherwise one line naming the file.
fn check_load(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("damaged.safetensors");
    std::fs::write(&path, bytes).unwrap();
    match load_tensors(&path) {
        Ok((tensors, _)) => {
            for (name, t) in &tensors {
                prop_assert_eq!(t.numel(), t.dims().iter().product::<usize>(), "{}", name);
                prop_assert!(t.as_slice().iter().all(|x| x.is_finite()), "{} holds a non-finite value", name);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.starts_with(&format!("checkpoint {}: ", path.display())), "{}", msg);
            prop_assert!(!msg.contains('\n'), "{:?}", msg);
            prop_assert!(!matches!(e, CheckpointError::Read { .. }), "a readable file: {}", msg);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Damaged files load as finite tensors or are refused in one line; never a panic.
    #[test]
    fn a_damaged_small_file_never_panics(damage in damage()) {
        let tmp = temp_dir("damaged-small");
        check_load(tmp.path(), &apply(small_file(), &damage, usize::MAX))?;
    }

    #[test]
    fn a_damaged_reference_checkpoint_never_panics(damage in damage()) {
        let tmp = temp_dir("damaged-fixture");
        let (bytes, header_region) = fixture();
        check_load(tmp.path(), &apply(bytes, &damage, header_region))?;
    }
}
