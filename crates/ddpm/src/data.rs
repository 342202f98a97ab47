//! MNIST-format data: IDX files (optionally gzip-compressed), checked byte for
//! byte, and shuffled mini-batches scaled to [-1, 1].
//!
//! IDX (LeCun's format): a big-endian header, magic 0x00000803 for images
//! (then count, rows, cols) or 0x00000801 for labels (then count), followed by
//! one unsigned byte per pixel or label. Counts come from the header, never
//! assumed (the shared copy here has 10,000 training digits, not 60,000).
//!
//! A file is read only as far as its header allows: the header is read first,
//! the size of the data follows from it (the models here take 28x28 images,
//! [`SIDE`]), and a plain file's length is compared with that size before its
//! data is read, while a gzip file is inflated to one byte more than that
//! size at most. So a small file that claims (or inflates to) gigabytes is
//! refused without gigabytes being allocated.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ddpm_autograd::Tensor;
use flate2::bufread::GzDecoder;
use rand::seq::SliceRandom;

/// Why a data file or folder was refused. Every message is one line and
/// names the file. A cause (an I/O or gzip error) is part of the message and
/// is held in a field named `cause`, not `source`, so that anyhow's `{:#}`
/// does not print it a second time.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("{}: not a valid gzip stream ({cause})", path.display())]
    Gzip { path: PathBuf, cause: io::Error },
    #[error("{}: {extra} bytes after the end of the gzip data", path.display())]
    AfterGzip { path: PathBuf, extra: usize },
    #[error("{}: magic number {found:#010x}, expected {expected:#010x} ({what})", path.display())]
    Magic { path: PathBuf, found: u32, expected: u32, what: &'static str },
    #[error("{}: truncated: {found} bytes, shorter than the {expected}-byte header of {what}", path.display())]
    ShortHeader { path: PathBuf, expected: usize, found: usize, what: &'static str },
    #[error("{}: truncated: the header promises {expected} bytes of data, the file has {found}", path.display())]
    Truncated { path: PathBuf, expected: usize, found: usize },
    #[error("{}: {extra} bytes after the data the header describes", path.display())]
    TrailingBytes { path: PathBuf, extra: usize },
    /// A compressed file inflates to more than its header describes; it is
    /// not inflated further to count by how much.
    #[error("{}: the data goes on after the {expected} bytes the header describes", path.display())]
    InflatesTooFar { path: PathBuf, expected: usize },
    #[error("{}: images are {rows}x{cols}, these models take {SIDE}x{SIDE}", path.display())]
    ImageSize { path: PathBuf, rows: usize, cols: usize },
    #[error("{}: no {what} (the header's count is 0)", path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("{}: label {label} at index {index} is not a class 0-9", path.display())]
    BadLabel { path: PathBuf, index: usize, label: u8 },
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch { images_path: PathBuf, labels_path: PathBuf, images: usize, labels: usize },
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

/// The side of the images every model here takes: MNIST's and
/// Fashion-MNIST's 28x28.
pub const SIDE: usize = 28;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One kind of IDX file: its magic number, the length of its header, and the
/// size of the data a header describes (or why the header is refused).
struct Idx {
    magic: u32,
    what: &'static str,
    header_len: usize,
    data_len: fn(&Path, &[u8]) -> Result<usize, DataError>,
}

/// The header (magic number first) and the data of an IDX file at `path`,
/// inflated if the file starts with the gzip magic bytes; the data's length
/// is the one the header describes, or the file is refused.
fn read_idx(path: &Path, idx: &Idx) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let io_error = |cause| DataError::Io { path: path.into(), cause };
    // A FIFO or a device would block or never end: refused before opening.
    ddpm_nn::fs::check_regular(path).map_err(io_error)?;
    let mut file = File::open(path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    let mut start = vec![];
    (&mut file).take(2).read_to_end(&mut start).map_err(io_error)?;
    if start == GZIP_MAGIC {
        // The compressed bytes are read whole (a gzip stream cannot be sized
        // before it is inflated); what they inflate to is capped below.
        let mut compressed = start;
        file.read_to_end(&mut compressed).map_err(io_error)?;
        let mut members = GzMembers::new(&compressed);
        let gzip_error = |cause| DataError::Gzip { path: path.into(), cause };
        let header = read_header(path, &mut members, idx).map_err(|e| e.or(gzip_error))?;
        let expected = (idx.data_len)(path, &header)?;
        let mut data = vec![];
        (&mut members).take(expected as u64 + 1).read_to_end(&mut data).map_err(gzip_error)?;
        if let Some(extra) = members.after_gzip {
            return Err(DataError::AfterGzip { path: path.into(), extra });
        }
        match data.len() {
            n if n < expected => Err(DataError::Truncated { path: path.into(), expected, found: n }),
            n if n > expected => Err(DataError::InflatesTooFar { path: path.into(), expected }),
            _ => Ok((header, data)),
        }
    } else {
        let mut plain = io::Cursor::new(start).chain(file);
        let header = read_header(path, &mut plain, idx).map_err(|e| e.or(io_error))?;
        let expected = (idx.data_len)(path, &header)?;
        // The file's length is known: it must be the header's, before a byte
        // of the data is read (or allocated).
        let found = usize::try_from(file_len).unwrap_or(usize::MAX).saturating_sub(idx.header_len);
        check_length(path, expected, found)?;
        let mut data = vec![0; expected];
        plain.read_exact(&mut data).map_err(io_error)?;
        Ok((header, data))
    }
}

/// Why a header could not be read: a refusal, or an I/O (or gzip) error that
/// the caller words.
enum HeaderError {
    Data(DataError),
    Io(io::Error),
}

impl HeaderError {
    fn or(self, wrap: impl FnOnce(io::Error) -> DataError) -> DataError {
        match self {
            HeaderError::Data(e) => e,
            HeaderError::Io(e) => wrap(e),
        }
    }
}

/// The first `idx.header_len` bytes of `input`, magic number checked first: a
/// labels file handed in as images should be called that, not "truncated".
fn read_header(path: &Path, input: &mut impl Read, idx: &Idx) -> Result<Vec<u8>, HeaderError> {
    let mut header = vec![];
    input.take(idx.header_len as u64).read_to_end(&mut header).map_err(HeaderError::Io)?;
    let truncated = || {
        HeaderError::Data(DataError::ShortHeader {
            path: path.into(),
            expected: idx.header_len,
            found: header.len(),
            what: idx.what,
        })
    };
    let Some(magic) = header.get(..4) else { return Err(truncated()) };
    let found = u32::from_be_bytes(magic.try_into().expect("4 bytes"));
    if found != idx.magic {
        return Err(HeaderError::Data(DataError::Magic {
            path: path.into(),
            found,
            expected: idx.magic,
            what: idx.what,
        }));
    }
    if header.len() < idx.header_len {
        return Err(truncated());
    }
    Ok(header)
}

/// The concatenated contents of every member of a gzip file, as `gzip -d`
/// and Python's `gzip` module read it: `cat a.gz b.gz` is a valid gzip file
/// holding a's contents then b's. Bytes after the last member that do not
/// start another one are not gzip data: the stream ends there and
/// `after_gzip` counts them (flate2's `MultiGzDecoder` would call them a
/// corrupt member instead, and its `GzDecoder` would drop them silently).
struct GzMembers<'a> {
    member: GzDecoder<&'a [u8]>,
    after_gzip: Option<usize>,
}

impl<'a> GzMembers<'a> {
    fn new(compressed: &'a [u8]) -> GzMembers<'a> {
        GzMembers { member: GzDecoder::new(compressed), after_gzip: None }
    }
}

impl Read for GzMembers<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.member.read(buf)?;
            if n > 0 || buf.is_empty() || self.after_gzip.is_some() {
                return Ok(n);
            }
            // This member is done; the decoder has consumed it exactly, so
            // what is left of the slice is what follows it.
            let rest: &[u8] = self.member.get_ref();
            if rest.is_empty() {
                return Ok(0);
            }
            if !rest.starts_with(&GZIP_MAGIC) {
                self.after_gzip = Some(rest.len());
                return Ok(0);
            }
            self.member = GzDecoder::new(rest);
        }
    }
}

/// The big-endian u32 at byte `i` of a header that holds it.
fn be_u32(header: &[u8], i: usize) -> usize {
    u32::from_be_bytes(header[i..i + 4].try_into().expect("the header was read whole")) as usize
}

/// Checks that the data after the header is exactly `expected` bytes.
fn check_length(path: &Path, expected: usize, found: usize) -> Result<(), DataError> {
    match found {
        n if n < expected => Err(DataError::Truncated { path: path.into(), expected, found: n }),
        n if n > expected => Err(DataError::TrailingBytes { path: path.into(), extra: n - expected }),
        _ => Ok(()),
    }
}

/// Image files: count, rows, cols after the magic number; count images of
/// [`SIDE`] x [`SIDE`] pixels.
const IMAGES: Idx = Idx { magic: IMAGES_MAGIC, what: "IDX images", header_len: 16, data_len: images_len };

fn images_len(path: &Path, header: &[u8]) -> Result<usize, DataError> {
    let (count, rows, cols) = (be_u32(header, 4), be_u32(header, 8), be_u32(header, 12));
    if (rows, cols) != (SIDE, SIDE) {
        return Err(DataError::ImageSize { path: path.into(), rows, cols });
    }
    if count == 0 {
        return Err(DataError::Empty { path: path.into(), what: "images" });
    }
    // At most 2^32 images of 784 bytes: 3.4 TB, which a 64-bit usize holds.
    Ok(count.checked_mul(SIDE * SIDE).expect("u32 x 784 fits a 64-bit usize"))
}

/// Label files: count after the magic number; one byte per label.
const LABELS: Idx = Idx { magic: LABELS_MAGIC, what: "IDX labels", header_len: 8, data_len: labels_len };

fn labels_len(path: &Path, header: &[u8]) -> Result<usize, DataError> {
    match be_u32(header, 4) {
        0 => Err(DataError::Empty { path: path.into(), what: "labels" }),
        count => Ok(count),
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

/// Reads an IDX image file (magic 0x00000803) of [`SIDE`] x [`SIDE`] images,
/// at least one.
pub fn read_images(path: &Path) -> Result<Images, DataError> {
    let (header, pixels) = read_idx(path, &IMAGES)?;
    Ok(Images { count: be_u32(&header, 4), rows: SIDE, cols: SIDE, pixels })
}

/// Reads an IDX label file (magic 0x00000801) of digits 0-9, at least one.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let (_, labels) = read_idx(path, &LABELS)?;
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
        let (images_path, labels_path) = (find_file(dir, images_name), find_file(dir, labels_name));
        let images = read_images(&images_path)?;
        let labels = read_labels(&labels_path)?;
        if images.count != labels.len() {
            return Err(DataError::CountMismatch {
                images_path,
                labels_path,
                images: images.count,
                labels: labels.len(),
            });
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
