//! MNIST-format data: IDX files (optionally gzip-compressed), checked byte for
//! byte, and shuffled mini-batches scaled to [-1, 1].
//!
//! IDX (LeCun's format): a big-endian header, magic 0x00000803 for images
//! (then count, rows, cols) or 0x00000801 for labels (then count), followed by
//! one unsigned byte per pixel or label. Counts come from the header, never
//! assumed (the shared copy here has 10,000 training digits, not 60,000).

use std::io::Read;
use std::path::{Path, PathBuf};

use ddpm_autograd::Tensor;
use flate2::read::GzDecoder;
use rand::seq::SliceRandom;

/// Why a data file or folder was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a valid gzip stream ({source})", path.display())]
    Gzip { path: PathBuf, source: std::io::Error },
    #[error("{}: magic number {found:#010x}, expected {expected:#010x} ({what})", path.display())]
    Magic { path: PathBuf, found: u32, expected: u32, what: &'static str },
    #[error("{}: truncated: the header promises {expected} bytes of data, the file has {found}", path.display())]
    Truncated { path: PathBuf, expected: usize, found: usize },
    #[error("{}: {extra} bytes after the data the header describes", path.display())]
    TrailingBytes { path: PathBuf, extra: usize },
    #[error("{}: label {label} at index {index} is not a class 0-9", path.display())]
    BadLabel { path: PathBuf, index: usize, label: u8 },
    #[error("{images} images but {labels} labels in {}", dir.display())]
    CountMismatch { dir: PathBuf, images: usize, labels: usize },
    #[error(
        "no {dataset} data found: looked in --data-dir ({}), $DDPM_DATA ({}), {} and {}; \
         run `cargo xtask data --dataset {dataset}` to download it{}, or point --data-dir at a folder with {}",
        given.as_deref().map_or("not given".into(), |p| p.display().to_string()),
        env.as_deref().map_or("not set".into(), |p| p.display().to_string()),
        default.display(),
        system.display(),
        debian_package(dataset).map_or(String::new(), |p| format!(" or install it with `apt-get install {p}`")),
        TRAIN_IMAGES
    )]
    NotFound { dataset: String, given: Option<PathBuf>, env: Option<PathBuf>, default: PathBuf, system: PathBuf },
}

pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a whole file, inflating it if it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip { path: path.into(), source })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The big-endian u32 at byte `i`, or a truncation error.
fn be_u32(path: &Path, bytes: &[u8], i: usize) -> Result<u32, DataError> {
    bytes.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or(DataError::Truncated {
        path: path.into(),
        expected: i + 4,
        found: bytes.len(),
    })
}

/// Checks the magic number, first: a labels file handed in as images should be
/// called that, not "truncated".
fn check_magic(path: &Path, bytes: &[u8], magic: u32, what: &'static str) -> Result<(), DataError> {
    match be_u32(path, bytes, 0)? {
        found if found == magic => Ok(()),
        found => Err(DataError::Magic { path: path.into(), found, expected: magic, what }),
    }
}

/// Checks that the file is exactly `header` + `body` bytes.
fn check_length(path: &Path, bytes: &[u8], header: usize, body: usize) -> Result<(), DataError> {
    match bytes.len() {
        n if n < header + body => {
            Err(DataError::Truncated { path: path.into(), expected: body, found: n.saturating_sub(header) })
        }
        n if n > header + body => Err(DataError::TrailingBytes { path: path.into(), extra: n - header - body }),
        _ => Ok(()),
    }
}

/// Grayscale images, one byte per pixel, row-major.
#[derive(Debug, Clone)]
pub struct Images {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Reads an IDX image file (magic 0x00000803).
pub fn read_images(path: &Path) -> Result<Images, DataError> {
    let bytes = read_maybe_gz(path)?;
    check_magic(path, &bytes, IMAGES_MAGIC, "IDX images")?;
    let count = be_u32(path, &bytes, 4)? as usize;
    let rows = be_u32(path, &bytes, 8)? as usize;
    let cols = be_u32(path, &bytes, 12)? as usize;
    // A corrupt header can claim more bytes than a usize counts: that is truncation too.
    let body = count.checked_mul(rows).and_then(|v| v.checked_mul(cols)).unwrap_or(usize::MAX - 16);
    check_length(path, &bytes, 16, body)?;
    Ok(Images { count, rows, cols, pixels: bytes[16..].to_vec() })
}

/// Reads an IDX label file (magic 0x00000801) of digits 0-9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    check_magic(path, &bytes, LABELS_MAGIC, "IDX labels")?;
    let count = be_u32(path, &bytes, 4)? as usize;
    check_length(path, &bytes, 8, count)?;
    let labels = bytes[8..].to_vec();
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(DataError::BadLabel { path: path.into(), index, label });
    }
    Ok(labels)
}

/// A split of an MNIST-format data set: images with their labels.
#[derive(Debug, Clone)]
pub struct Split {
    pub images: Images,
    pub labels: Vec<u8>,
}

impl Split {
    /// Loads `<stem>-images-idx3-ubyte[.gz]` and `<stem>-labels-idx1-ubyte[.gz]`
    /// from `dir`, for the training split (`TRAIN_*`) or the test split (`TEST_*`).
    pub fn load(dir: &Path, images_name: &str, labels_name: &str) -> Result<Split, DataError> {
        let images = read_images(&find_file(dir, images_name))?;
        let labels = read_labels(&find_file(dir, labels_name))?;
        if images.count != labels.len() {
            return Err(DataError::CountMismatch { dir: dir.into(), images: images.count, labels: labels.len() });
        }
        Ok(Split { images, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` images and labels (all of them if there are fewer).
    pub fn head(&self, n: usize) -> Split {
        let n = n.min(self.len());
        let size = self.images.rows * self.images.cols;
        let images = Images { count: n, pixels: self.images.pixels[..n * size].to_vec(), ..self.images };
        Split { images, labels: self.labels[..n].to_vec() }
    }

    /// Images `indices` as a [B, 1, rows, cols] tensor, pixels p mapped to
    /// p / 127.5 - 1 in [-1, 1], and their labels.
    pub fn batch(&self, indices: &[usize]) -> (Tensor, Vec<usize>) {
        let size = self.images.rows * self.images.cols;
        let mut data = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            data.extend(self.images.pixels[i * size..(i + 1) * size].iter().map(|&p| p as f32 / 127.5 - 1.0));
        }
        let shape = [indices.len(), 1, self.images.rows, self.images.cols];
        let labels = indices.iter().map(|&i| self.labels[i] as usize).collect();
        (Tensor::from_vec(data, shape).expect("the length follows from the shape"), labels)
    }
}

/// `dir/name.gz` if it exists, else `dir/name`.
fn find_file(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        gz
    } else {
        dir.join(name)
    }
}

/// Whether `dir` holds a training split (compressed or not).
fn has_data(dir: &Path) -> bool {
    find_file(dir, TRAIN_IMAGES).exists()
}

/// Where Debian's data set packages put their files, one folder per data
/// set (`apt-get install dataset-fashion-mnist` fills
/// `/usr/share/datasets/fashion-mnist/`).
pub const SYSTEM_DATA: &str = "/usr/share/datasets";

/// The Debian package that installs `dataset` under [`SYSTEM_DATA`], if any.
pub fn debian_package(dataset: &str) -> Option<&'static str> {
    (dataset == "fashion-mnist").then_some("dataset-fashion-mnist")
}

/// The folder to read `dataset` from, in this order: `--data-dir`, then
/// `$DDPM_DATA`, then `data/<dataset>/`, then the system's
/// [`SYSTEM_DATA`]`/<dataset>/`; an error naming all four otherwise (and the
/// package that would install it).
pub fn locate(dataset: &str, given: Option<&Path>, env: Option<&Path>) -> Result<PathBuf, DataError> {
    locate_in(dataset, given, env, Path::new(SYSTEM_DATA))
}

/// [`locate`], with the system's folder of data sets at `system`.
pub fn locate_in(dataset: &str, given: Option<&Path>, env: Option<&Path>, system: &Path) -> Result<PathBuf, DataError> {
    let default = PathBuf::from("data").join(dataset);
    let system = system.join(dataset);
    let found =
        [given, env, Some(default.as_path()), Some(system.as_path())].into_iter().flatten().find(|d| has_data(d));
    found.map(Path::to_path_buf).ok_or_else(|| DataError::NotFound {
        dataset: dataset.into(),
        given: given.map(Path::to_path_buf),
        env: env.map(Path::to_path_buf),
        default,
        system,
    })
}

/// Shuffled mini-batches over a split, epoch after epoch.
///
/// The batch of training step k is a pure function of (seed, k): epoch
/// e = k / batches_per_epoch is a permutation drawn from a generator seeded by
/// (seed, e), and the step takes the next `batch` indices of it. So a run
/// resumed at step k sees exactly the batches an uninterrupted run would, with
/// no generator state to save. An epoch's short remainder is skipped: batches
/// are always full.
pub struct Batches {
    seed: u64,
    len: usize,
    batch: usize,
    /// The epoch whose order is in `order`.
    epoch: u64,
    order: Vec<usize>,
}

impl Batches {
    /// Batches of `batch` indices out of `0..len`; `batch` must be 1 ..= len.
    pub fn new(len: usize, batch: usize, seed: u64) -> Result<Batches, String> {
        if batch == 0 || batch > len {
            return Err(format!("a batch of {batch} does not fit a data set of {len} images"));
        }
        let mut batches = Batches { seed, len, batch, epoch: 0, order: vec![] };
        batches.shuffle(0);
        Ok(batches)
    }

    /// Full batches in one pass over the data.
    pub fn per_epoch(&self) -> u64 {
        (self.len / self.batch) as u64
    }

    /// The epoch training step `step` belongs to (0 for the first pass).
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.per_epoch()
    }

    /// The indices of training step `step`'s batch.
    pub fn indices(&mut self, step: u64) -> &[usize] {
        let epoch = self.epoch_of(step);
        if epoch != self.epoch {
            self.shuffle(epoch);
        }
        let start = (step % self.per_epoch()) as usize * self.batch;
        &self.order[start..start + self.batch]
    }

    fn shuffle(&mut self, epoch: u64) {
        let mut rng = crate::rng::stream(self.seed, crate::rng::Stream::Shuffle, epoch);
        self.order = (0..self.len).collect();
        self.order.shuffle(&mut rng);
        self.epoch = epoch;
    }
}
