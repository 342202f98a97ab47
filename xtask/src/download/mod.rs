//! `cargo xtask data`: download MNIST or Fashion-MNIST and check every byte.
//!
//! The four `.gz` files of the original distributions (IDX format, see
//! `ddpm::data`) are fetched from a list of mirrors, tried in turn, into
//! `data/<dataset>/` (where training looks by default) or `--out DIR`.
//!
//! Why it is built the way it is:
//!
//! - **Checksums, not trust.** Mirrors come and go and some serve error pages
//!   with status 200; every file is checked against the md5 of the original
//!   (the values torchvision lists) or, where it is known, the md5 and size of
//!   its decompressed contents, so that another gzip of the same bytes
//!   (Debian's dataset-fashion-mnist re-compresses the files) is accepted and
//!   a corrupted one is not. A file that does not match is thrown away and the
//!   next mirror is tried.
//! - **The system's copy first.** Without `--out`, a data set installed in
//!   /usr/share/datasets/<dataset> whose every file verifies is used where it
//!   is: training looks there too (`ddpm::data::locate`).
//! - **No half-written files.** Each download streams into `DIR/.<name>.part`,
//!   hashing as it goes, and is renamed onto `DIR/<name>` only once it is
//!   complete and verified, so an interrupted or failed run never leaves a
//!   file that later looks like data. A file already present that verifies is
//!   kept and not fetched again.
//! - **One clear line when it fails**, naming the file and what each mirror
//!   did; when no mirror could be reached at all it says how to do without
//!   the network (`--data-dir DIR` or `$DDPM_DATA`, the lookup order of
//!   `ddpm::data::locate`).
//! - **A final read-back**: the files are parsed with the same reader training
//!   uses (`ddpm::data::read_images` / `read_labels`) and their counts printed.
//!
//! The core, [`fetch`], knows nothing of the command line, so the tests below
//! drive it against a small HTTP server on the loopback interface.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ddpm::data::{
    debian_package, read_images, read_labels, SYSTEM_DATA, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
};
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

/// The data sets `cargo xtask data` knows how to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    /// LeCun's handwritten digits.
    Mnist,
    /// Zalando's clothing pictures, a drop-in replacement for MNIST.
    FashionMnist,
}

/// One split of a data set: its images file and its labels file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitName {
    Train,
    Test,
}

/// One entry of a checksum table.
struct Known {
    split: SplitName,
    /// File name without `.gz`, as `ddpm::data` names it.
    stem: &'static str,
    /// md5 of the original `.gz` file.
    md5: &'static str,
    /// Size of the original `.gz` file in bytes.
    size: u64,
    /// md5 and size of the decompressed contents (the IDX bytes), where known.
    contents: Option<Contents>,
}

const fn contents(md5: &'static str, size: u64) -> Option<Contents> {
    Some(Contents { md5, size })
}

/// MNIST's four files (md5 as listed by torchvision). The contents' md5 is
/// known for the test split (the copy in shared/data/mnist is the original
/// file); of the training split only the original `.gz` files' md5 is known
/// here, so those two must be the original files.
const MNIST: [Known; 4] = [
    Known {
        split: SplitName::Train,
        stem: TRAIN_IMAGES,
        md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        size: 9_912_422,
        contents: None,
    },
    Known {
        split: SplitName::Train,
        stem: TRAIN_LABELS,
        md5: "d53e105ee54ea40749a09fcbcd1e9432",
        size: 28_881,
        contents: None,
    },
    Known {
        split: SplitName::Test,
        stem: TEST_IMAGES,
        md5: "9fb629c4189551a2d022fa330f9573f3",
        size: 1_648_877,
        contents: contents("2646ac647ad5339dbf082846283269ea", 7_840_016),
    },
    Known {
        split: SplitName::Test,
        stem: TEST_LABELS,
        md5: "ec29112dd5afa0611ce80d1b7f02629c",
        size: 4_542,
        contents: contents("27ae3e4e09519cfbb04c329615203637", 10_008),
    },
];

/// Fashion-MNIST's four files (md5 as listed by torchvision and the data
/// set's README), and their contents' md5 (taken from Debian's
/// dataset-fashion-mnist, whose `.gz` files differ from the originals only in
/// their gzip headers).
const FASHION_MNIST: [Known; 4] = [
    Known {
        split: SplitName::Train,
        stem: TRAIN_IMAGES,
        md5: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        size: 26_421_880,
        contents: contents("f4a8712d7a061bf5bd6d2ca38dc4d50a", 47_040_016),
    },
    Known {
        split: SplitName::Train,
        stem: TRAIN_LABELS,
        md5: "25c81989df183df01b3e8a0aad5dffbe",
        size: 29_515,
        contents: contents("9018921c3c673c538a1fc5bad174d6f9", 60_008),
    },
    Known {
        split: SplitName::Test,
        stem: TEST_IMAGES,
        md5: "bef4ecab320f06d8554ea6380940ec79",
        size: 4_422_102,
        contents: contents("8181f5470baa50b63fa0f6fddb340f0a", 7_840_016),
    },
    Known {
        split: SplitName::Test,
        stem: TEST_LABELS,
        md5: "bb300cfdad3c16e7a12a480ee83cd310",
        size: 5_148,
        contents: contents("15d484375f8d13e6eb1aabb0c3f46965", 10_008),
    },
];

impl Dataset {
    /// The name used on the command line and for the default folder `data/<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
        }
    }

    /// What each label means, class 0 first.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            Dataset::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            Dataset::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        }
    }

    /// The built-in mirrors, best first. Each is a base URL the file name is appended to.
    pub fn mirrors(self) -> Vec<String> {
        let urls: &[&str] = match self {
            Dataset::Mnist => &[
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ],
            Dataset::FashionMnist => &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        };
        urls.iter().map(|u| u.to_string()).collect()
    }

    /// The files to fetch with their checksums: both splits, or only `only`.
    pub fn files(self, only: Option<SplitName>) -> Vec<RemoteFile> {
        let table = match self {
            Dataset::Mnist => &MNIST,
            Dataset::FashionMnist => &FASHION_MNIST,
        };
        table
            .iter()
            .filter(|k| only.is_none_or(|s| s == k.split))
            .map(|k| RemoteFile {
                name: format!("{}.gz", k.stem),
                md5: k.md5.into(),
                size: Some(k.size),
                contents: k.contents,
            })
            .collect()
    }
}

/// A file to download and what it must hash to.
///
/// A file is accepted when it is the original (its md5 is `md5`) or, where
/// `contents` is known, when it decompresses, as one whole gzip stream with
/// nothing after it, to the original contents: another gzip of the same
/// bytes (Debian's packages re-compress the files) is as good as the
/// original, and a corrupted one is refused either way.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    /// Name on the mirror and in the output folder, e.g. `t10k-labels-idx1-ubyte.gz`.
    pub name: String,
    /// md5 of the original `.gz` file, lowercase hex.
    pub md5: String,
    /// Size of the original `.gz` file in bytes, if known. Without known
    /// contents it must be exact; with them, a mirror announcing or sending
    /// more than any gzip of the contents could be is cut off early.
    pub size: Option<u64>,
    /// The decompressed contents' md5 and size, if known.
    pub contents: Option<Contents>,
}

/// What a `.gz` file must decompress to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contents {
    pub md5: &'static str,
    pub size: u64,
}

impl RemoteFile {
    /// The most bytes this file may have: the original's size if that is all
    /// we know; with known contents, what a gzip of them can take at worst
    /// (stored blocks: 5 bytes per 64 KiB, plus header and trailer).
    fn max_size(&self) -> Option<u64> {
        match (self.contents, self.size) {
            (Some(c), _) => Some(c.size + c.size / 8192 + 1024),
            (None, size) => size,
        }
    }

    /// Checks the finished file at `path`, whose own md5 is `md5`: `Ok(how)`
    /// if it is accepted, `Err(why)` if not.
    fn verify(&self, path: &Path, md5: &str) -> io::Result<Result<&'static str, Failure>> {
        if md5 == self.md5 {
            return Ok(Ok("the original file"));
        }
        let Some(want) = self.contents else {
            return Ok(Err(Failure::Checksum { got: md5.to_string(), expected: self.md5.clone() }));
        };
        Ok(match gzip_contents(path, want.size)? {
            Err(why) => Err(Failure::Contents(why)),
            Ok((got, size)) if got == want.md5 && size == want.size => Ok("the original contents"),
            Ok((got, size)) => Err(Failure::Contents(format!(
                "decompresses to {size} bytes with md5 {got}, expected {} bytes with md5 {} (or the original \
                 file, md5 {})",
                want.size, want.md5, self.md5
            ))),
        })
    }
}

/// `cargo xtask data`: download and verify a data set.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// Which data set to download.
    #[arg(long, value_enum, default_value_t = Dataset::Mnist)]
    pub dataset: Dataset,
    /// Folder to put the files in [default: data/<dataset>, where training looks first after
    /// --data-dir and $DDPM_DATA].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Base URL to download from; repeat to give several, tried in order. Replaces the
    /// built-in mirror list.
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,
    /// Download only this split's two files (default: both splits).
    #[arg(long, value_enum)]
    pub only: Option<SplitName>,
}

/// Runs `cargo xtask data`: fetch (or find) the files, verify them, read them back.
pub fn run(args: DataArgs) -> Result<()> {
    run_with_system(args, Path::new(SYSTEM_DATA))
}

/// [`run`], with the system's folder of data sets at `system`: without
/// `--out`, a data set installed there whose every file verifies is used
/// where it is (training finds it there) instead of being downloaded.
fn run_with_system(args: DataArgs, system: &Path) -> Result<()> {
    let dataset = args.dataset;
    let default = Path::new("data").join(dataset.name());
    let files = dataset.files(args.only);
    let installed = system.join(dataset.name());
    if args.out.is_none() && all_verify(&files, &installed) {
        println!("{}: found in {}, every file verified", dataset.name(), installed.display());
        read_back(&installed, args.only)?;
        println!("done: training finds it there (after --data-dir, $DDPM_DATA and {})", default.display());
        return Ok(());
    }
    let dir = args.out.clone().unwrap_or_else(|| default.clone());
    let mirrors = if args.mirrors.is_empty() { dataset.mirrors() } else { args.mirrors.clone() };
    println!("{} into {}", dataset.name(), dir.display());

    if let Err(e) = fetch(&files, &mirrors, &dir, io::stderr().is_terminal()) {
        let offline = e.downcast_ref::<FetchError>().is_some_and(FetchError::all_unreachable);
        if let Some(package) = debian_package(dataset.name()).filter(|_| offline) {
            bail!(
                "{e:#}; it is also packaged for Debian: `apt-get install {package}` puts it in {}",
                installed.display()
            );
        }
        return Err(e);
    }
    read_back(&dir, args.only)?;
    if dir == default {
        println!("done: training finds it in {} by default", dir.display());
    } else {
        println!("done: pass --data-dir {} (or set DDPM_DATA) to use it", dir.display());
    }
    Ok(())
}

/// Whether every one of `files` is in `dir` and verifies (quietly: a folder
/// that does not hold the data set is no error).
fn all_verify(files: &[RemoteFile], dir: &Path) -> bool {
    files.iter().all(|f| {
        let path = dir.join(&f.name);
        path.is_file() && file_md5(&path).is_ok_and(|md5| f.verify(&path, &md5).is_ok_and(|v| v.is_ok()))
    })
}

/// Reads the files in `dir` back with the reader training uses, as a last
/// check that the bytes make sense, and prints their counts.
fn read_back(dir: &Path, only: Option<SplitName>) -> Result<()> {
    let splits = match only {
        Some(split) => vec![split],
        None => vec![SplitName::Train, SplitName::Test],
    };
    for split in splits {
        let (images_stem, labels_stem, what) = match split {
            SplitName::Train => (TRAIN_IMAGES, TRAIN_LABELS, "train"),
            SplitName::Test => (TEST_IMAGES, TEST_LABELS, "test"),
        };
        let images = read_images(&dir.join(format!("{images_stem}.gz")))?;
        let labels = read_labels(&dir.join(format!("{labels_stem}.gz")))?;
        if images.count != labels.len() {
            bail!("{what} split in {}: {} images but {} labels", dir.display(), images.count, labels.len());
        }
        println!("{what}: {} images of {}x{}, {} labels", images.count, images.rows, images.cols, labels.len());
    }
    Ok(())
}

/// Makes sure every file of `files` is in `dir` with the right md5, downloading
/// the missing or wrong ones from `mirrors` (tried in order), and returns their
/// paths in the order of `files`.
///
/// Stops at the first file no mirror could provide, with a [`FetchError`];
/// files fetched before it stay (they are verified). Problems on this side
/// (folder not creatable, disk full) end it at once: another mirror would not help.
/// `progress` shows a progress bar on stderr for each download.
pub fn fetch(files: &[RemoteFile], mirrors: &[String], dir: &Path, progress: bool) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the output folder {} (choose another with --out)", dir.display()))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("ddpm-rs-xtask/", env!("CARGO_PKG_VERSION")))
        .build();
    files.iter().map(|file| fetch_one(&agent, file, mirrors, dir, progress)).collect()
}

/// Why no mirror could provide a file: what each mirror did, in order.
#[derive(Debug)]
pub struct FetchError {
    pub file: String,
    failures: Vec<(String, Failure)>,
}

impl FetchError {
    /// Whether no mirror could even be reached (no network, most likely).
    pub fn all_unreachable(&self) -> bool {
        !self.failures.is_empty() && self.failures.iter().all(|(_, f)| matches!(f, Failure::Unreachable(_)))
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not fetch {}: ", self.file)?;
        if self.failures.is_empty() {
            write!(f, "no mirror given")?;
        }
        for (i, (mirror, failure)) in self.failures.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{mirror}: {failure}")?;
        }
        if self.all_unreachable() {
            write!(
                f,
                " (no network? copy the .gz files by hand into a folder and pass it with --data-dir DIR \
                 or set DDPM_DATA=DIR)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for FetchError {}

/// What went wrong with one mirror: a reason to try the next one.
#[derive(Debug)]
enum Failure {
    /// The server answered with an error status.
    Http(u16, String),
    /// No connection: DNS, refused, timed out.
    Unreachable(String),
    /// Another transport problem (bad URL, bad response, too many redirects).
    Transport(String),
    /// The body broke off.
    Body(String),
    /// Wrong size, announced or received.
    Size(String),
    /// All bytes arrived but they are not the original file.
    Checksum { got: String, expected: String },
    /// Not the original file, and its decompressed contents are not the original's.
    Contents(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Http(code, text) => write!(f, "HTTP {code} {text}"),
            Failure::Unreachable(m)
            | Failure::Transport(m)
            | Failure::Body(m)
            | Failure::Size(m)
            | Failure::Contents(m) => {
                write!(f, "{m}")
            }
            Failure::Checksum { got, expected } => write!(f, "checksum mismatch (got {got}, expected {expected})"),
        }
    }
}

/// Why one download attempt ended: the mirror's fault (try the next) or ours (stop).
enum Attempt {
    Remote(Failure),
    Local(anyhow::Error),
}

/// Gets one file: keeps it if already there and right, else tries each mirror.
fn fetch_one(
    agent: &ureq::Agent,
    file: &RemoteFile,
    mirrors: &[String],
    dir: &Path,
    progress: bool,
) -> Result<PathBuf> {
    let dest = dir.join(&file.name);
    if dest.is_file() {
        let read = |e| anyhow::Error::new(e).context(format!("cannot read {}", dest.display()));
        let md5 = file_md5(&dest).map_err(read)?;
        match file.verify(&dest, &md5).map_err(read)? {
            Ok(how) => {
                println!("{}: ok (already there: {how})", file.name);
                return Ok(dest);
            }
            Err(why) => println!("{}: present but {why}: downloading it again", file.name),
        }
    }
    let mut failures = Vec::new();
    for mirror in mirrors {
        let url = join_url(mirror, &file.name);
        println!("{}: fetching {url}", file.name);
        match download(agent, &url, file, dir, &dest, progress) {
            Ok((bytes, how)) => {
                println!("{}: ok ({bytes} bytes, {how})", file.name);
                return Ok(dest);
            }
            Err(Attempt::Local(e)) => return Err(e),
            Err(Attempt::Remote(failure)) => {
                match &failure {
                    Failure::Checksum { got, expected } => eprintln!(
                        "warning: {}: checksum mismatch from {mirror}: got {got}, expected {expected}",
                        file.name
                    ),
                    other => eprintln!("warning: {}: {mirror}: {other}", file.name),
                }
                failures.push((mirror.clone(), failure));
            }
        }
    }
    Err(FetchError { file: file.name.clone(), failures }.into())
}

/// `mirror` + `name`, with exactly one `/` between them.
fn join_url(mirror: &str, name: &str) -> String {
    format!("{}/{name}", mirror.trim_end_matches('/'))
}

/// The temporary file of a download, removed when dropped unless it was moved into place.
struct PartFile {
    path: PathBuf,
    done: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: the file may not exist (nothing written yet) and an
            // error here must not hide the one being reported.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// One attempt: streams `url` into `dir/.<name>.part` while hashing it, checks
/// size and checksum ([`RemoteFile::verify`]), and renames it onto `dest`.
/// Returns the number of bytes and what it was accepted as.
fn download(
    agent: &ureq::Agent,
    url: &str,
    file: &RemoteFile,
    dir: &Path,
    dest: &Path,
    progress: bool,
) -> Result<(u64, &'static str), Attempt> {
    // Created before the request, so an unwritable folder is reported as such
    // even without network.
    let mut part = PartFile { path: dir.join(format!(".{}.part", file.name)), done: false };
    let out = File::create(&part.path).map_err(|e| {
        Attempt::Local(anyhow::Error::new(e).context(format!(
            "cannot write {} (is the folder writable? choose another with --out)",
            part.path.display()
        )))
    })?;
    let local = |what: &str, e: io::Error| {
        Attempt::Local(anyhow::Error::new(e).context(format!("{what} {}", part.path.display())))
    };

    // The files are gzip already: ask for them as they are, so that nothing
    // is decompressed on the way and the md5 is the file's.
    let response = match agent.get(url).set("Accept-Encoding", "identity").call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => return Err(Attempt::Remote(Failure::Http(code, r.status_text().into()))),
        Err(e) => return Err(Attempt::Remote(transport_failure(&e))),
    };
    let announced = response.header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
    let exact = if file.contents.is_none() { file.size } else { None };
    match (announced, exact, file.max_size()) {
        (Some(n), Some(size), _) if n != size => {
            return Err(Attempt::Remote(Failure::Size(format!("announces {n} bytes, expected {size}"))));
        }
        (Some(n), _, Some(max)) if n > max => {
            return Err(Attempt::Remote(Failure::Size(format!("announces {n} bytes, more than the {max} it can be"))));
        }
        _ => {}
    }

    let bar = progress_bar(progress, announced.or(file.size), &file.name);
    // Read at most one byte more than allowed: enough to tell that it is too long.
    let limit = file.max_size().map_or(u64::MAX, |s| s + 1);
    let mut body = response.into_reader().take(limit);
    let mut out = BufWriter::new(out);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.finish_and_clear();
                return Err(Attempt::Remote(Failure::Body(format!("download broke off after {total} bytes: {e}"))));
            }
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| local("cannot write", e))?;
        total += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let out = out.into_inner().map_err(|e| local("cannot write", e.into_error()))?;
    out.sync_all().map_err(|e| local("cannot write", e))?;
    drop(out);

    if let Some(size) = exact {
        if total != size {
            let what =
                if total > size { format!("more than the expected {size}") } else { format!("only {total} of {size}") };
            return Err(Attempt::Remote(Failure::Size(format!("sent {what} bytes"))));
        }
    }
    if let Some(max) = file.max_size().filter(|&max| total > max) {
        return Err(Attempt::Remote(Failure::Size(format!("sent more than the {max} bytes it can be"))));
    }
    let md5 = hex(&hasher.finalize());
    let how = match file.verify(&part.path, &md5).map_err(|e| local("cannot read", e))? {
        Ok(how) => how,
        Err(failure) => return Err(Attempt::Remote(failure)),
    };
    fs::rename(&part.path, dest).map_err(|e| local(&format!("cannot move into place as {}:", dest.display()), e))?;
    part.done = true;
    Ok((total, how))
}

/// The md5 and size of what the gzip file at `path` decompresses to, reading
/// at most `expected + 1` bytes of it; `Ok(Err(why))` if it is not one whole
/// gzip stream with nothing after it. `Err` only for a file that cannot be read.
fn gzip_contents(path: &Path, expected: u64) -> io::Result<Result<(String, u64), String>> {
    let mut gz = flate2::bufread::GzDecoder::new(io::BufReader::new(File::open(path)?));
    let (md5, total) = match md5_of(&mut gz, expected.saturating_add(1)) {
        Ok(hashed) => hashed,
        Err(e) => return Ok(Err(format!("is not a whole gzip file ({e})"))),
    };
    if total > expected {
        return Ok(Err(format!("decompresses to more than the expected {expected} bytes")));
    }
    // The decoder stops at the end of the first gzip member: anything after
    // it (a second member, garbage) is not the original contents.
    let mut rest = gz.into_inner();
    if !io::BufRead::fill_buf(&mut rest)?.is_empty() {
        return Ok(Err("has bytes after its gzip stream".to_string()));
    }
    Ok(Ok((md5, total)))
}

/// Sorts a transport error into "no connection" (likely offline) or other.
fn transport_failure(e: &ureq::Error) -> Failure {
    let mut msg = e.kind().to_string();
    if let ureq::Error::Transport(t) = e {
        if let Some(m) = t.message() {
            msg = format!("{msg}: {m}");
        }
    }
    if let Some(source) = std::error::Error::source(e) {
        msg = format!("{msg}: {source}");
    }
    use ureq::ErrorKind::*;
    match e.kind() {
        Dns | ConnectionFailed | Io | ProxyConnect => Failure::Unreachable(msg),
        _ => Failure::Transport(msg),
    }
}

/// A byte progress bar on stderr, or a hidden one.
fn progress_bar(show: bool, len: Option<u64>, name: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(n) => (ProgressBar::new(n), "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"),
        None => (ProgressBar::new_spinner(), "{prefix} {spinner} {bytes} {bytes_per_sec}"),
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(name.to_string());
    bar
}

/// The md5 of a file on disk, lowercase hex.
fn file_md5(path: &Path) -> io::Result<String> {
    Ok(md5_of(File::open(path)?, u64::MAX)?.0)
}

/// The md5 (lowercase hex) of the first `limit` bytes `reader` yields, and
/// how many bytes that was.
fn md5_of(reader: impl Read, limit: u64) -> io::Result<(String, u64)> {
    let mut reader = reader.take(limit);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok((hex(&hasher.finalize()), total))
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
