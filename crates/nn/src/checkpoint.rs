//! Checkpoints: safetensors files in the interchange format of the reference
//! (`scripts/ddpm_ref.py`).
//!
//! A model checkpoint holds one f32 tensor per parameter, named by the
//! reference's `state_dict()` keys (`down.0.conv1.weight`) with the same
//! shapes, and four metadata strings: `preset`, `num_classes`, `schedule`,
//! `timesteps`. A file written here loads in PyTorch
//! (`safetensors.torch.load_file`) and the other way round.
//!
//! The functions, from the most general:
//! - [`save_tensors`] / [`load_tensors`]: any named f32 tensors and any string
//!   metadata (the training state uses them for the EMA and Adam's moments).
//! - [`save`] / [`load_into`]: a model's parameters with the interchange
//!   [`Metadata`]; [`read_metadata`] reads only the metadata, to know which
//!   model to build before loading into it ([`read_metadata_map`]: any
//!   file's metadata, as strings).
//!
//! Two promises: a write is atomic (a crash mid-write leaves the old file, never
//! half a new one), and a refused load changes nothing in the model.
//!
//! A read trusts nothing in the file: a FIFO or a device is refused before it
//! is opened, a header that names a tensor twice is refused (the
//! safetensors crate would keep one of the two silently, see [`header`]), and
//! so is a tensor holding NaN or infinity: no model, Adam moment or average
//! of a working run holds one, and one would spread through every step.
//! Every refusal is one line naming the file and what is wrong, with names
//! from the file quoted and escaped (`"a\nb"`), so that a hostile name
//! cannot forge a second line.

mod header;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use ddpm_autograd::{Shape, Tensor, TensorError, Var};
use ddpm_tensor::Device;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

/// The interchange metadata: which model and which noise schedule the weights
/// belong to. In the file every entry is a string (`"10"`, `"1000"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// `tiny` or `small`.
    pub preset: String,
    /// 0 for an unconditional model.
    pub num_classes: usize,
    /// `linear` or `cosine`.
    pub schedule: String,
    /// T, the number of diffusion steps.
    pub timesteps: usize,
}

/// A metadata entry that is absent or does not parse. The value, which
/// comes from the file, is quoted and escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata entry \"{key}\" is missing")]
    Missing { key: &'static str },
    #[error("metadata entry \"{key}\" is {value:?}, expected a non-negative integer")]
    NotAnInteger { key: &'static str, value: String },
}

impl Metadata {
    /// The safetensors metadata map: every value written as a string.
    pub fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            ("preset".to_string(), self.preset.clone()),
            ("num_classes".to_string(), self.num_classes.to_string()),
            ("schedule".to_string(), self.schedule.clone()),
            ("timesteps".to_string(), self.timesteps.to_string()),
        ])
    }

    /// Reads the four entries back; other entries in the map are ignored.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Metadata, MetadataError> {
        let get = |key: &'static str| map.get(key).ok_or(MetadataError::Missing { key });
        let integer = |key: &'static str| {
            let value = get(key)?;
            value.trim().parse::<usize>().map_err(|_| MetadataError::NotAnInteger { key, value: value.clone() })
        };
        Ok(Metadata {
            preset: get("preset")?.clone(),
            num_classes: integer("num_classes")?,
            schedule: get("schedule")?.clone(),
            timesteps: integer("timesteps")?,
        })
    }
}

/// Why a checkpoint could not be written or read. Every message is one line
/// that starts with the file's path.
///
/// A cause (an I/O error, a [`MetadataError`]) is part of the message and is
/// held in a field named `cause`, not `source`: thiserror would make a
/// `source` field the error's [`std::error::Error::source`], and a chain
/// printed with anyhow's `{:#}` would then say the cause twice.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {}: cannot read: {cause}", .path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("checkpoint {}: cannot write: {cause}", .path.display())]
    Write { path: PathBuf, cause: io::Error },
    #[error("checkpoint {}: not a safetensors file: {reason}", .path.display())]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("checkpoint {}: truncated: the file has {actual} bytes, its header needs {expected}", .path.display())]
    Truncated { path: PathBuf, expected: usize, actual: usize },
    #[error("checkpoint {}: tensor {name:?} has dtype {dtype}, only F32 is supported", .path.display())]
    NotF32 { path: PathBuf, name: String, dtype: String },
    #[error("checkpoint {}: tensor {name:?} is missing (the model expects shape {expected})", .path.display())]
    MissingTensor { path: PathBuf, name: String, expected: Shape },
    #[error("checkpoint {}: tensor {name:?} (shape {shape}) is not a parameter of the model", .path.display())]
    UnexpectedTensor { path: PathBuf, name: String, shape: Shape },
    #[error("checkpoint {}: tensor {name:?} has shape {found}, the model expects {expected}", .path.display())]
    ShapeMismatch { path: PathBuf, name: String, found: Shape, expected: Shape },
    #[error("checkpoint {}: the name {name:?} is given to two tensors", .path.display())]
    DuplicateName { path: PathBuf, name: String },
    #[error("checkpoint {}: the header gives the metadata entry {key:?} twice", .path.display())]
    DuplicateMetadata { path: PathBuf, key: String },
    #[error(
        "checkpoint {}: tensor {name:?} holds {count} non-finite value{} (NaN or Inf)",
        .path.display(),
        if *.count == 1 { "" } else { "s" }
    )]
    NonFinite { path: PathBuf, name: String, count: usize },
    #[error("checkpoint {}: {cause}", .path.display())]
    Metadata { path: PathBuf, cause: MetadataError },
    /// Moving the values between the host and the model's device failed.
    #[error("checkpoint {}: {cause}", .path.display())]
    Device { path: PathBuf, cause: TensorError },
}

/// Named tensors as read from a file, sorted by name.
pub type Tensors = BTreeMap<String, Tensor>;

// ------------------------------------------------------------------ writing

/// Writes a model's parameters and the interchange metadata to `path`.
pub fn save(path: &Path, params: &[(String, Var)], meta: &Metadata) -> Result<(), CheckpointError> {
    let tensors: Vec<(String, Tensor)> = params.iter().map(|(name, p)| (name.clone(), p.value())).collect();
    save_tensors(path, &tensors, &meta.to_map())
}

/// Writes named f32 tensors (little-endian, shapes as given) and string
/// metadata to `path`, atomically: the bytes go to a temporary file in the same
/// directory, which is flushed to disk (fsync) and then renamed over `path`. A
/// rename within a directory is atomic, so a reader (or a crash) sees either
/// the old file or the complete new one, never half of it.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let mut seen = HashSet::new();
    if let Some((name, _)) = tensors.iter().find(|(name, _)| !seen.insert(name)) {
        return Err(CheckpointError::DuplicateName { path: path.to_path_buf(), name: name.clone() });
    }
    // A tensor on a device comes to the host to be written.
    let device_error = |cause| CheckpointError::Device { path: path.to_path_buf(), cause };
    let host: Vec<Tensor> =
        tensors.iter().map(|(_, t)| t.to(Device::Cpu)).collect::<Result<_, _>>().map_err(device_error)?;
    let views = tensors.iter().zip(&host).map(|((name, _), t)| (name.as_str(), F32View::new(t)));
    // An empty map is written as no `__metadata__` entry at all.
    let metadata = (!metadata.is_empty()).then(|| metadata.clone());
    let bytes = safetensors::serialize(views, &metadata)
        .map_err(|e| CheckpointError::Write { path: path.to_path_buf(), cause: io::Error::other(format!("{e:?}")) })?;
    crate::fs::write_atomically(path, &bytes)
        .map_err(|cause| CheckpointError::Write { path: path.to_path_buf(), cause })
}

/// A tensor as safetensors sees it: dtype F32, its shape, its bytes.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32View {
    fn new(t: &Tensor) -> F32View {
        // safetensors stores little-endian values, whatever the machine.
        let bytes = t.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect();
        F32View { shape: t.dims().to_vec(), bytes }
    }
}

impl safetensors::View for F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.bytes).into()
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

// ------------------------------------------------------------------ reading

/// Reads every tensor of a safetensors file (each must be F32 and finite)
/// and its metadata (empty if the file has none). Tensors are checked in the
/// order of their names, so a file with two bad tensors is always refused
/// for the same one.
pub fn load_tensors(path: &Path) -> Result<(Tensors, HashMap<String, String>), CheckpointError> {
    let bytes = read(path)?;
    let (file, metadata) = parse(path, &bytes)?;
    let mut views = file.tensors();
    views.sort_by(|(a, _), (b, _)| a.cmp(b));
    let mut tensors = Tensors::new();
    for (name, view) in views {
        if view.dtype() != Dtype::F32 {
            let dtype = format!("{:?}", view.dtype());
            return Err(CheckpointError::NotF32 { path: path.to_path_buf(), name, dtype });
        }
        // Little-endian bytes to f32, four at a time (the data need not be
        // aligned for f32, so it is not reinterpreted in place), counting the
        // values that are not finite in the same pass.
        let mut non_finite = 0;
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                non_finite += usize::from(!x.is_finite());
                x
            })
            .collect();
        if non_finite > 0 {
            return Err(CheckpointError::NonFinite { path: path.to_path_buf(), name, count: non_finite });
        }
        let tensor = Tensor::from_vec(values, view.shape().to_vec()).expect("safetensors checked the data length");
        tensors.insert(name, tensor);
    }
    Ok((tensors, metadata))
}

/// The interchange metadata of a model checkpoint (the whole file is checked):
/// which preset, how many classes, which schedule; what is needed to build the
/// model that [`load_into`] then fills.
pub fn read_metadata(path: &Path) -> Result<Metadata, CheckpointError> {
    let map = read_metadata_map(path)?;
    Metadata::from_map(&map).map_err(|cause| CheckpointError::Metadata { path: path.to_path_buf(), cause })
}

/// The metadata of any safetensors file, as it is (empty if there is none).
/// The header is checked as [`load_tensors`] checks it, but no tensor is
/// decoded: for a caller that needs to know what a file is before it loads it.
pub fn read_metadata_map(path: &Path) -> Result<HashMap<String, String>, CheckpointError> {
    let bytes = read(path)?;
    Ok(parse(path, &bytes)?.1)
}

/// Loads a model checkpoint into `params` and returns its interchange metadata.
///
/// The file must hold exactly the model's parameters: a missing tensor, a
/// tensor the model does not have, a tensor of another shape or dtype, or a
/// missing metadata entry is refused with a message naming it. Everything is
/// checked before the first value is set, so a refused file leaves the model
/// as it was.
pub fn load_into(path: &Path, params: &[(String, Var)]) -> Result<Metadata, CheckpointError> {
    let (tensors, map) = load_tensors(path)?;
    let meta =
        Metadata::from_map(&map).map_err(|cause| CheckpointError::Metadata { path: path.to_path_buf(), cause })?;
    set_values(path, tensors, params)?;
    Ok(meta)
}

/// Loads named tensors into `params` as [`load_into`] does, for a file with
/// any metadata or none (a training state, a file written by another tool),
/// and returns that metadata as it is.
pub fn load_tensors_into(path: &Path, params: &[(String, Var)]) -> Result<HashMap<String, String>, CheckpointError> {
    let (tensors, map) = load_tensors(path)?;
    set_values(path, tensors, params)?;
    Ok(map)
}

/// Checks `tensors` against `params`, moves each to its parameter's device,
/// and only then sets them all: a refused file (or a failed upload) leaves
/// the model as it was.
fn set_values(path: &Path, mut tensors: Tensors, params: &[(String, Var)]) -> Result<(), CheckpointError> {
    check_names_and_shapes(path, &tensors, params)?;
    let values = params
        .iter()
        .map(|(name, p)| tensors.remove(name).expect("checked above").to(p.value().device()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| CheckpointError::Device { path: path.to_path_buf(), cause })?;
    for ((_, p), v) in params.iter().zip(values) {
        p.set_value(v);
    }
    Ok(())
}

/// The file's tensors must be exactly the parameters, shape for shape. The
/// first problem is reported: parameters in the model's order, then tensors
/// the model does not have, by name.
fn check_names_and_shapes(path: &Path, tensors: &Tensors, params: &[(String, Var)]) -> Result<(), CheckpointError> {
    let path = || path.to_path_buf();
    for (name, p) in params {
        let expected = p.shape();
        match tensors.get(name) {
            None => return Err(CheckpointError::MissingTensor { path: path(), name: name.clone(), expected }),
            Some(t) if t.shape() != &expected => {
                let found = t.shape().clone();
                return Err(CheckpointError::ShapeMismatch { path: path(), name: name.clone(), found, expected });
            }
            Some(_) => {}
        }
    }
    let names: HashSet<&str> = params.iter().map(|(name, _)| name.as_str()).collect();
    if let Some((name, t)) = tensors.iter().find(|(name, _)| !names.contains(name.as_str())) {
        return Err(CheckpointError::UnexpectedTensor { path: path(), name: name.clone(), shape: t.shape().clone() });
    }
    Ok(())
}

/// The whole file, if it is a regular one: a FIFO would block the read
/// forever and a device would never end ([`crate::fs::read_regular`]).
fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    crate::fs::read_regular(path).map_err(|cause| CheckpointError::Read { path: path.to_path_buf(), cause })
}

/// Parses the header and checks that it describes the bytes that follow,
/// turning the safetensors crate's errors into messages for a person; returns
/// the tensors (views into `bytes`) and the metadata (empty if there is none).
///
/// The layout: 8 bytes holding n (little-endian u64), n bytes of JSON header
/// (`{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`),
/// then the tensors' bytes back to back.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(SafeTensors<'a>, HashMap<String, String>), CheckpointError> {
    let not_safetensors = |reason: String| CheckpointError::NotSafetensors { path: path.to_path_buf(), reason };
    let truncated =
        |expected: usize| CheckpointError::Truncated { path: path.to_path_buf(), expected, actual: bytes.len() };
    let header_len = || u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    // The length of the file the header describes (`None` if the file does
    // not even hold the header, which the crate refuses below).
    let mut needed = None;
    if let Some(header) = header_text(bytes) {
        match header::first_duplicate(header) {
            Some(header::Duplicate::Tensor(name)) => {
                return Err(CheckpointError::DuplicateName { path: path.to_path_buf(), name })
            }
            Some(header::Duplicate::Metadata(key)) => {
                return Err(CheckpointError::DuplicateMetadata { path: path.to_path_buf(), key })
            }
            None => {}
        }
        // The data the offsets describe must be in the file. Checked here
        // because the crate adds the last offset to the header's length
        // unchecked, which a hostile offset near 2^64 overflows.
        let len = (8 + header.len()).saturating_add(data_len(header));
        if len > bytes.len() {
            return Err(truncated(len));
        }
        needed = Some(len);
    }
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| match e {
        SafeTensorError::HeaderTooSmall => {
            not_safetensors(format!("{} bytes is too short to hold the 8-byte header length", bytes.len()))
        }
        SafeTensorError::HeaderTooLarge => not_safetensors(format!(
            "its first 8 bytes announce a header of {} bytes, more than the 100 MB allowed",
            header_len()
        )),
        SafeTensorError::InvalidHeaderLength => truncated((header_len() as usize).saturating_add(8)),
        SafeTensorError::InvalidHeader => not_safetensors("the header is not UTF-8 text".to_string()),
        SafeTensorError::InvalidHeaderStart => not_safetensors("the header does not start with '{'".to_string()),
        SafeTensorError::InvalidHeaderDeserialization => {
            not_safetensors("the header is not a JSON description of tensors".to_string())
        }
        SafeTensorError::JsonError(e) => not_safetensors(format!("the header is not valid JSON ({e})")),
        SafeTensorError::InvalidOffset(name) => {
            not_safetensors(format!("the byte range of tensor {name:?} does not follow the previous one"))
        }
        SafeTensorError::TensorInvalidInfo => {
            not_safetensors("a tensor's byte range does not match its shape and dtype".to_string())
        }
        SafeTensorError::InvalidTensorView(dtype, shape, len) => {
            not_safetensors(format!("a {dtype:?} tensor of shape {shape:?} cannot be {len} bytes long"))
        }
        SafeTensorError::ValidationOverflow => {
            not_safetensors("a tensor's shape has more elements than a 64-bit count holds".to_string())
        }
        SafeTensorError::TensorNotFound(name) => not_safetensors(format!("no tensor is named {name:?}")),
        SafeTensorError::IoError(cause) => CheckpointError::Read { path: path.to_path_buf(), cause },
        // The header parsed, but the data after it is longer than the
        // header's offsets say (shorter was refused above).
        SafeTensorError::MetadataIncompleteBuffer => match needed {
            Some(needed) => not_safetensors(format!("{} bytes follow the last tensor", bytes.len() - needed)),
            // Not reached: the crate parsed a header, so the file holds it.
            None => truncated((header_len() as usize).saturating_add(8)),
        },
    })?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let file = SafeTensors::deserialize(bytes).expect("the header was validated just above");
    Ok((file, metadata))
}

/// The header's text (the n bytes after the 8 that hold n), if the file is
/// long enough to hold it.
fn header_text(bytes: &[u8]) -> Option<&[u8]> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    bytes.get(8..8usize.checked_add(n)?)
}

/// The length of the data section that a header describes: the end of its
/// last tensor, the largest `data_offsets[1]` (0 for a header that is not
/// JSON, which the safetensors crate then refuses).
fn data_len(header: &[u8]) -> usize {
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(header).unwrap_or_default();
    let end = header.values().filter_map(|info| info["data_offsets"][1].as_u64()).max().unwrap_or(0);
    usize::try_from(end).unwrap_or(usize::MAX)
}
