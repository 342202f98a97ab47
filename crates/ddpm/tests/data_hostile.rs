//! IDX files that were not written by a well-behaved program: gzip files of
//! several members, gzip files followed by other bytes, decompression bombs,
//! images of another size or none, a FIFO; and random damage to small valid
//! files, plain and compressed. Each is read exactly or refused in one line.

use std::io::Write;
use std::path::Path;

use ddpm::data::{read_images, read_labels, DataError, Split, SIDE, TRAIN_IMAGES, TRAIN_LABELS};
use flate2::{write::GzEncoder, Compression};
use proptest::prelude::*;

mod common;
use common::{gz, idx_images, idx_labels, temp_dir, write};

/// Two images' pixels, different in every byte.
fn pixels(n: usize) -> Vec<u8> {
    (0..n * SIDE * SIDE).map(|i| (i * 31 % 251) as u8).collect()
}

/// `cat a.gz b.gz` is a gzip file whose contents are a's then b's, as
/// `gzip -d` reads it; a reader of the first member only would call the
/// images truncated, however the file is cut into members.
#[test]
fn a_gzip_file_of_several_members_reads_as_their_concatenation() {
    let tmp = temp_dir("members");
    let file = idx_images(2, 28, 28, &pixels(2));
    for cuts in [vec![16], vec![16, 800], vec![3, 16, 1000, 1500], vec![0, 16, 16]] {
        let mut bounds = vec![0];
        bounds.extend(&cuts);
        bounds.push(file.len());
        let members: Vec<u8> = bounds.windows(2).flat_map(|w| gz(&file[w[0]..w[1]])).collect();
        let path = write(tmp.path(), "images.gz", &members);
        let images = read_images(&path).unwrap_or_else(|e| panic!("cuts {cuts:?}: {e}"));
        assert_eq!((images.count, images.pixels), (2, pixels(2)), "cuts {cuts:?}");
    }
    let labels = idx_labels(&[1, 2, 3]);
    let path = write(tmp.path(), "labels.gz", &[gz(&labels[..9]), gz(&labels[9..])].concat());
    assert_eq!(read_labels(&path).unwrap(), vec![1, 2, 3]);
}

/// Bytes after the last member that are not gzip are not silently dropped.
#[test]
fn bytes_after_the_gzip_data_are_refused_and_counted() {
    let tmp = temp_dir("after-gzip");
    let file = gz(&idx_labels(&[4, 5]));
    for (junk, n) in [(&b"x"[..], 1), (&[0u8; 512][..], 512), (&b"\x1fnot gzip"[..], 9)] {
        let path = write(tmp.path(), "labels.gz", &[file.as_slice(), junk].concat());
        let e = read_labels(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}: {n} bytes after the end of the gzip data", path.display()));
    }
    // Bytes that start like a member but are not one are a broken gzip stream.
    let path = write(tmp.path(), "labels.gz", &[file.as_slice(), b"\x1f\x8b\x08junk"].concat());
    let e = read_labels(&path).unwrap_err().to_string();
    assert!(e.contains("not a valid gzip stream"), "{e}");
}

/// A 1 MB file that inflates to 1 GiB after a header that describes 2
/// images: refused after 2 images and one byte have been inflated, without
/// inflating (or allocating) the rest.
#[test]
fn a_decompression_bomb_is_refused_without_inflating_it() {
    let tmp = temp_dir("bomb");
    // A valid first member holding the two images, then a thousand members
    // of 1 MiB of zeros each (a kilobyte compressed).
    let mut e = GzEncoder::new(vec![], Compression::best());
    e.write_all(&vec![0u8; 1 << 20]).unwrap();
    let zeros = e.finish().unwrap();
    let mut bomb = gz(&idx_images(2, 28, 28, &pixels(2)));
    for _ in 0..1000 {
        bomb.extend(&zeros);
    }
    assert!(bomb.len() < 2_000_000, "{}", bomb.len());
    let path = write(tmp.path(), "bomb.gz", &bomb);
    let start = std::time::Instant::now();
    let msg = read_images(&path).unwrap_err().to_string();
    assert_eq!(msg, format!("{}: the data goes on after the 1568 bytes the header describes", path.display()));
    // Inflating the gigabyte takes seconds; reading the megabyte and
    // inflating 1569 bytes, milliseconds.
    assert!(start.elapsed().as_millis() < 500, "took {:?}", start.elapsed());
    // A plain file is measured before it is read: a header of 4 billion
    // images over 10 bytes of data is truncated, not a 3 TB allocation.
    let path = write(tmp.path(), "huge", &idx_images(u32::MAX, 28, 28, &[0; 10]));
    let msg = read_images(&path).unwrap_err().to_string();
    assert!(msg.ends_with("truncated: the header promises 3367254359280 bytes of data, the file has 10"), "{msg}");
}

/// The models here take 28x28 images. A header of 256 images of 0x0 once
/// reached the batcher and panicked there (`chunk size must be non-zero`).
#[test]
fn images_of_another_size_or_none_are_refused() {
    let tmp = temp_dir("size");
    for (rows, cols) in [(56, 56), (4, 4), (0, 0), (28, 27), (27, 28), (28, 0)] {
        let path = write(tmp.path(), "images", &idx_images(256, rows, cols, &[0; 64]));
        let msg = read_images(&path).unwrap_err().to_string();
        assert_eq!(msg, format!("{}: images are {rows}x{cols}, these models take 28x28", path.display()));
    }
    let path = write(tmp.path(), "images", &idx_images(0, 28, 28, &[]));
    assert_eq!(
        read_images(&path).unwrap_err().to_string(),
        format!("{}: no images (the header's count is 0)", path.display())
    );
    let path = write(tmp.path(), "labels", &idx_labels(&[]));
    assert!(read_labels(&path).unwrap_err().to_string().ends_with("no labels (the header's count is 0)"));
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_being_opened() {
    let tmp = temp_dir("fifo");
    let fifo = tmp.path().join(format!("{TRAIN_IMAGES}.gz"));
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    write(tmp.path(), TRAIN_LABELS, &idx_labels(&[1]));
    // On a thread of its own: a reader that opened the FIFO would block forever.
    let (send, receive) = std::sync::mpsc::channel();
    let dir = tmp.path().to_path_buf();
    std::thread::spawn(move || send.send(Split::load(&dir, TRAIN_IMAGES, TRAIN_LABELS).map(|_| ())));
    let loaded = receive.recv_timeout(std::time::Duration::from_secs(10)).expect("the read of a FIFO hangs");
    let e = loaded.unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e}");
    assert_eq!(e.to_string(), format!("{}: a FIFO, not a regular file", fifo.display()));
}

// ------------------------------------------------------------------ damage

#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    Insert(usize, u8),
    /// The header's u32 at byte 4 `field` becomes `value` (count, rows, cols).
    Field(usize, u32),
    /// Bytes appended.
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Damage::Flip),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Insert(at, b)),
        (0usize..3, prop_oneof![0u32..64, Just(u32::MAX), any::<u32>()]).prop_map(|(f, v)| Damage::Field(f, v)),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(Damage::Append),
    ]
}

/// `bytes` with `damage` done to them.
fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    match damage {
        Damage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        Damage::Flip(flips) => {
            let len = bytes.len();
            for &(at, mask) in flips {
                bytes[at % len] ^= mask;
            }
        }
        Damage::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), *b),
        Damage::Field(field, value) => {
            let at = 4 + 4 * field;
            if bytes.len() >= at + 4 {
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
        }
        Damage::Append(tail) => bytes.extend(tail),
    }
    bytes
}

/// Reads `bytes` as images and as labels. Ok only with the counts of the
/// header: count * 784 pixels, count labels 0-9; otherwise one line naming
/// the file.
fn check_read(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = write(dir, "damaged", bytes);
    let clean = |e: DataError| -> Result<(), TestCaseError> {
        let msg = e.to_string();
        prop_assert!(msg.starts_with(&path.display().to_string()), "{}", msg);
        prop_assert!(!msg.contains('\n'), "{:?}", msg);
        Ok(())
    };
    match read_images(&path) {
        Ok(images) => {
            prop_assert!(images.count > 0);
            prop_assert_eq!((images.rows, images.cols), (SIDE, SIDE));
            prop_assert_eq!(images.pixels.len(), images.count * SIDE * SIDE);
        }
        Err(e) => clean(e)?,
    }
    match read_labels(&path) {
        Ok(labels) => {
            prop_assert!(!labels.is_empty());
            prop_assert!(labels.iter().all(|&l| l <= 9));
        }
        Err(e) => clean(e)?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn damaged_plain_files_never_panic(images in any::<bool>(), n in 1usize..4, damage in damage()) {
        let tmp = temp_dir("damaged-plain");
        let file = if images { idx_images(n as u32, 28, 28, &pixels(n)) } else { idx_labels(&vec![7; n]) };
        check_read(tmp.path(), &apply(file, &damage))?;
    }

    /// Damage inside the contents (then compressed) or to the compressed bytes.
    #[test]
    fn damaged_gzip_files_never_panic(
        images in any::<bool>(),
        n in 1usize..4,
        damage in damage(),
        to_compressed in any::<bool>(),
    ) {
        let tmp = temp_dir("damaged-gzip");
        let file = if images { idx_images(n as u32, 28, 28, &pixels(n)) } else { idx_labels(&vec![7; n]) };
        let bytes = if to_compressed { apply(gz(&file), &damage) } else { gz(&apply(file, &damage)) };
        check_read(tmp.path(), &bytes)?;
    }
}
