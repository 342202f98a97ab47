//! [`fetch`] against a tiny HTTP/1.1 file server on 127.0.0.1, serving the shared
//! MNIST copy (its t10k files are byte-identical to the originals, so the
//! real checksum table applies) or a corrupted copy of it.

use super::*;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/mnist");

/// Serves the files of `root` over HTTP/1.1 (GET only, `Connection: close`,
/// 404 for anything missing) and counts requests.
struct Server {
    url: String,
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, count, stopped) = (root.to_path_buf(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve(stream, &root, &count);
                }
            }
        });
        Server { url: format!("http://{addr}/"), addr, requests, stop, thread: Some(thread) }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes up accept()
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, root: &Path, count: &AtomicUsize) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    if method.is_empty() {
        return Ok(()); // the wake-up connection
    }
    count.fetch_add(1, Ordering::SeqCst);
    let name = target.trim_start_matches('/');
    let body = if method == "GET" && !name.is_empty() && !name.contains("..") && !name.contains('/') {
        fs::read(root.join(name)).ok()
    } else {
        None
    };
    match body {
        Some(body) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)?;
        }
        None => {
            let body = b"not found\n";
            write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)?;
        }
    }
    stream.flush()
}

/// A mirror folder with the shared t10k files, one byte of the labels flipped.
fn corrupted_mirror() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for stem in [TEST_IMAGES, TEST_LABELS] {
        let name = format!("{stem}.gz");
        let mut bytes = fs::read(Path::new(SHARED).join(&name)).unwrap();
        if stem == TEST_LABELS {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
        }
        fs::write(dir.path().join(&name), bytes).unwrap();
    }
    dir
}

fn test_files() -> Vec<RemoteFile> {
    Dataset::Mnist.files(Some(SplitName::Test))
}

fn labels_only() -> Vec<RemoteFile> {
    test_files().into_iter().filter(|f| f.name.starts_with(TEST_LABELS)).collect()
}

/// Names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn fetches_the_test_split_and_it_reads_back() {
    let server = Server::start(Path::new(SHARED));
    let out = tempfile::tempdir().unwrap();
    let paths = fetch(&test_files(), std::slice::from_ref(&server.url), out.path(), false).unwrap();
    assert_eq!(paths.len(), 2);
    let images = read_images(&paths[0]).unwrap();
    let labels = read_labels(&paths[1]).unwrap();
    assert_eq!((images.count, images.rows, images.cols), (10_000, 28, 28));
    assert_eq!(labels.len(), 10_000);
    assert_eq!(listing(out.path()), vec!["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]);
    assert_eq!(server.requests(), 2);
}

#[test]
fn falls_back_to_the_next_mirror_on_a_checksum_mismatch() {
    let bad_dir = corrupted_mirror();
    let bad = Server::start(bad_dir.path());
    let good = Server::start(Path::new(SHARED));
    let out = tempfile::tempdir().unwrap();
    // No trailing slash on the first: joining must not care.
    let mirrors = [bad.url.trim_end_matches('/').to_string(), good.url.clone()];
    let paths = fetch(&test_files(), &mirrors, out.path(), false).unwrap();
    assert_eq!(read_labels(&paths[1]).unwrap().len(), 10_000);
    assert_eq!(file_md5(&paths[1]).unwrap(), "ec29112dd5afa0611ce80d1b7f02629c");
    // Images came from the first mirror (intact there), labels from the second.
    assert_eq!((bad.requests(), good.requests()), (2, 1));
    assert_eq!(listing(out.path()), vec!["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]);
}

#[test]
fn a_corrupt_mirror_alone_fails_and_leaves_nothing() {
    let bad_dir = corrupted_mirror();
    let bad = Server::start(bad_dir.path());
    let out = tempfile::tempdir().unwrap();
    let err = fetch(&labels_only(), std::slice::from_ref(&bad.url), out.path(), false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("could not fetch t10k-labels-idx1-ubyte.gz"), "{msg}");
    // Neither the original file nor, decompressed, the original contents.
    assert!(msg.contains("is not a whole gzip file") || msg.contains("decompresses to"), "{msg}");
    assert!(!msg.contains("no network"), "{msg}");
    assert!(listing(out.path()).is_empty(), "left behind: {:?}", listing(out.path()));
}

#[test]
fn not_found_everywhere_names_the_file_and_each_mirror() {
    let empty = tempfile::tempdir().unwrap();
    let a = Server::start(empty.path());
    let b = Server::start(empty.path());
    let out = tempfile::tempdir().unwrap();
    let err = fetch(&labels_only(), &[a.url.clone(), b.url.clone()], out.path(), false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("could not fetch t10k-labels-idx1-ubyte.gz"), "{msg}");
    assert!(msg.contains(&format!("{}: HTTP 404", a.url)), "{msg}");
    assert!(msg.contains(&format!("{}: HTTP 404", b.url)), "{msg}");
    assert!(listing(out.path()).is_empty());
}

#[test]
fn a_file_already_there_is_not_downloaded_again() {
    let server = Server::start(Path::new(SHARED));
    let out = tempfile::tempdir().unwrap();
    let name = format!("{TEST_LABELS}.gz");
    fs::copy(Path::new(SHARED).join(&name), out.path().join(&name)).unwrap();
    fetch(&labels_only(), std::slice::from_ref(&server.url), out.path(), false).unwrap();
    assert_eq!(server.requests(), 0);
    // And after a real download, a second run asks for nothing either.
    fetch(&test_files(), std::slice::from_ref(&server.url), out.path(), false).unwrap();
    assert_eq!(server.requests(), 1);
    fetch(&test_files(), std::slice::from_ref(&server.url), out.path(), false).unwrap();
    assert_eq!(server.requests(), 1);
}

#[test]
fn a_wrong_file_already_there_is_replaced() {
    let server = Server::start(Path::new(SHARED));
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join(format!("{TEST_LABELS}.gz"));
    fs::write(&dest, b"not the labels").unwrap();
    fetch(&labels_only(), std::slice::from_ref(&server.url), out.path(), false).unwrap();
    assert_eq!(server.requests(), 1);
    assert_eq!(file_md5(&dest).unwrap(), "ec29112dd5afa0611ce80d1b7f02629c");
}

#[test]
fn wrong_size_is_refused_before_reading_the_body() {
    let server = Server::start(Path::new(SHARED));
    let out = tempfile::tempdir().unwrap();
    let mut files = labels_only();
    // Without known contents, only the original file will do: its size is exact.
    (files[0].size, files[0].contents) = (Some(4_000), None);
    let msg = format!("{:#}", fetch(&files, std::slice::from_ref(&server.url), out.path(), false).unwrap_err());
    assert!(msg.contains("announces 4542 bytes, expected 4000"), "{msg}");
    assert!(listing(out.path()).is_empty());
    // With them, anything larger than a gzip of the contents could be.
    let mut files = labels_only();
    files[0].contents = Some(Contents { md5: "27ae3e4e09519cfbb04c329615203637", size: 100 });
    let msg = format!("{:#}", fetch(&files, std::slice::from_ref(&server.url), out.path(), false).unwrap_err());
    assert!(msg.contains("announces 4542 bytes, more than the 1124 it can be"), "{msg}");
    assert!(listing(out.path()).is_empty());
}

/// The shared t10k labels, decompressed.
fn t10k_labels() -> Vec<u8> {
    let mut raw = Vec::new();
    let gz = fs::read(Path::new(SHARED).join(format!("{TEST_LABELS}.gz"))).unwrap();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
    raw
}

/// `bytes` gzipped again, as Debian's packages do: other bytes, same contents.
fn regzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A mirror (or system folder) holding only the t10k labels file, as `bytes`.
fn labels_folder(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(format!("{TEST_LABELS}.gz")), bytes).unwrap();
    dir
}

#[test]
fn another_gzip_of_the_original_contents_is_accepted() {
    let regzipped = regzip(&t10k_labels());
    assert_ne!(hex(&Md5::digest(&regzipped)), "ec29112dd5afa0611ce80d1b7f02629c", "the test needs other bytes");
    let mirror = labels_folder(&regzipped);
    let server = Server::start(mirror.path());
    let out = tempfile::tempdir().unwrap();
    let paths = fetch(&labels_only(), std::slice::from_ref(&server.url), out.path(), false).unwrap();
    assert_eq!(fs::read(&paths[0]).unwrap(), regzipped);
    assert_eq!(read_labels(&paths[0]).unwrap().len(), 10_000);
    // Already there and verified by its contents: not fetched again.
    fetch(&labels_only(), std::slice::from_ref(&server.url), out.path(), false).unwrap();
    assert_eq!(server.requests(), 1);
}

#[test]
fn other_contents_extra_members_and_trailing_bytes_are_refused() {
    let raw = t10k_labels();
    let mut changed = raw.clone();
    changed[5000] ^= 0x01;
    let mut two_members = regzip(&raw[..5000]);
    two_members.extend(regzip(&raw[5000..]));
    let mut trailing = regzip(&raw);
    trailing.extend(b"garbage");
    let cases = [
        (regzip(&changed), "decompresses to 10008 bytes with md5"),
        (two_members, "bytes after its gzip stream"),
        (trailing, "bytes after its gzip stream"),
        (regzip(&[raw.clone(), vec![0]].concat()), "more than the expected 10008 bytes"),
        (b"not gzip at all".to_vec(), "is not a whole gzip file"),
    ];
    for (bytes, expected) in cases {
        let mirror = labels_folder(&bytes);
        let server = Server::start(mirror.path());
        let out = tempfile::tempdir().unwrap();
        let err = fetch(&labels_only(), std::slice::from_ref(&server.url), out.path(), false).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(expected), "{expected:?} not in: {msg}");
        assert!(listing(out.path()).is_empty(), "left behind: {:?}", listing(out.path()));
    }
}

#[test]
fn a_verified_system_copy_is_used_where_it_is() {
    let system = tempfile::tempdir().unwrap();
    let installed = system.path().join("mnist");
    fs::create_dir(&installed).unwrap();
    for stem in [TEST_IMAGES, TEST_LABELS] {
        let raw = {
            let mut raw = Vec::new();
            let gz = fs::read(Path::new(SHARED).join(format!("{stem}.gz"))).unwrap();
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
            raw
        };
        fs::write(installed.join(format!("{stem}.gz")), regzip(&raw)).unwrap();
    }
    let test_split = Dataset::Mnist.files(Some(SplitName::Test));
    assert!(all_verify(&test_split, &installed));
    // No mirror can be reached: the system's copy is all there is.
    let args = DataArgs {
        dataset: Dataset::Mnist,
        out: None,
        mirrors: vec!["http://127.0.0.1:9/".into()],
        only: Some(SplitName::Test),
    };
    run_with_system(args, system.path()).unwrap();
    // One wrong byte and it no longer counts.
    let labels = installed.join(format!("{TEST_LABELS}.gz"));
    let mut bytes = fs::read(&labels).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&labels, bytes).unwrap();
    assert!(!all_verify(&test_split, &installed));
}

#[test]
fn no_network_points_at_data_dir() {
    // A port nobody listens on any more: connection refused.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = tempfile::tempdir().unwrap();
    let err = fetch(&labels_only(), &[format!("http://127.0.0.1:{port}/")], out.path(), false).unwrap_err();
    assert!(err.downcast_ref::<FetchError>().unwrap().all_unreachable());
    let msg = format!("{err:#}");
    assert!(msg.contains("--data-dir") && msg.contains("DDPM_DATA"), "{msg}");
    assert!(listing(out.path()).is_empty());
}

#[test]
fn an_output_folder_that_cannot_be_created_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    fs::write(&blocker, b"").unwrap();
    let err = fetch(&labels_only(), &["http://127.0.0.1:9/".into()], &blocker.join("sub"), false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot create the output folder"), "{msg}");
}

#[test]
fn the_command_fetches_one_split_and_reads_it_back() {
    let server = Server::start(Path::new(SHARED));
    let out = tempfile::tempdir().unwrap();
    let args = DataArgs {
        dataset: Dataset::Mnist,
        out: Some(out.path().join("mnist")),
        mirrors: vec![server.url.clone()],
        only: Some(SplitName::Test),
    };
    run(args).unwrap();
    assert_eq!(listing(&out.path().join("mnist")), vec!["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]);
}

#[test]
fn flags_parse() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: DataArgs,
    }
    let cli = Cli::try_parse_from([
        "data",
        "--dataset",
        "fashion-mnist",
        "--mirror",
        "http://a/",
        "--mirror",
        "http://b/",
        "--only",
        "test",
    ])
    .unwrap();
    assert_eq!(cli.args.dataset, Dataset::FashionMnist);
    assert_eq!(cli.args.mirrors, ["http://a/", "http://b/"]);
    assert_eq!(cli.args.only, Some(SplitName::Test));
    assert_eq!(cli.args.out, None);
    let cli = Cli::try_parse_from(["data"]).unwrap();
    assert_eq!((cli.args.dataset, cli.args.only), (Dataset::Mnist, None));
    assert!(Cli::try_parse_from(["data", "--dataset", "cifar"]).is_err());
}

#[test]
fn checksum_tables_and_splits() {
    assert_eq!(Dataset::Mnist.files(None).len(), 4);
    let train = Dataset::FashionMnist.files(Some(SplitName::Train));
    let names: Vec<&str> = train.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]);
    for dataset in [Dataset::Mnist, Dataset::FashionMnist] {
        for f in dataset.files(None) {
            assert!(f.md5.len() == 32 && f.md5.chars().all(|c| c.is_ascii_hexdigit()), "{}", f.md5);
        }
    }
    assert_eq!(join_url("http://h/x/", "f.gz"), "http://h/x/f.gz");
    assert_eq!(join_url("http://h/x", "f.gz"), "http://h/x/f.gz");
}
