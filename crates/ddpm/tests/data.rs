//! The IDX reader on the real files and on every kind of broken one.

use std::path::PathBuf;

use ddpm::data::{
    locate_in, read_images, read_labels, Batches, Split, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
};

mod common;
use common::{gz, idx_images, idx_labels, temp_dir, write};

/// `../shared/data/mnist` beside the checkout, where CI and these machines have it.
fn shared_mnist() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    dir.join(format!("{TRAIN_IMAGES}.gz")).exists().then_some(dir)
}

#[test]
fn the_shared_mnist_reads_with_the_counts_of_its_headers() {
    let Some(dir) = shared_mnist() else {
        eprintln!("skipped: ../shared/data/mnist is not beside this checkout");
        return;
    };
    let train = Split::load(&dir, TRAIN_IMAGES, TRAIN_LABELS).unwrap();
    let test = Split::load(&dir, TEST_IMAGES, TEST_LABELS).unwrap();
    assert_eq!((train.len(), test.len()), (10_000, 10_000));
    assert_eq!((train.images.rows, train.images.cols), (28, 28));
    // Every digit is there, and pixels scale to [-1, 1] with the background at -1.
    for d in 0..10u8 {
        assert!(train.labels.iter().filter(|&&l| l == d).count() > 800, "digit {d}");
    }
    let (x, y) = train.batch(&[0, 1, 2]);
    assert_eq!(x.dims(), &[3, 1, 28, 28]);
    assert_eq!(y.len(), 3);
    let (lo, hi) = x.as_slice().iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert_eq!(lo, -1.0);
    assert!(hi > 0.9 && hi <= 1.0);
}

#[test]
fn plain_and_gzip_files_read_the_same() {
    let tmp = temp_dir("roundtrip");
    let dir = tmp.path();
    let pixels: Vec<u8> = (0..2 * 784).map(|i| (i * 7) as u8).collect();
    write(dir, &format!("{TRAIN_IMAGES}.gz"), &gz(&idx_images(2, 28, 28, &pixels)));
    write(dir, TRAIN_LABELS, &idx_labels(&[7, 3]));
    let split = Split::load(dir, TRAIN_IMAGES, TRAIN_LABELS).unwrap();
    assert_eq!((split.images.count, split.images.rows, split.images.cols), (2, 28, 28));
    assert_eq!(split.images.pixels, pixels);
    assert_eq!(split.labels, vec![7, 3]);
}

#[test]
fn broken_files_are_refused_with_a_message_naming_them() {
    let tmp = temp_dir("broken");
    let dir = tmp.path();
    let good = idx_images(2, 28, 28, &[0; 2 * 784]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("wrong-magic", idx_labels(&[1, 2]), "magic number 0x00000801, expected 0x00000803"),
        ("truncated", good[..20].to_vec(), "truncated: the header promises 1568 bytes of data, the file has 4"),
        ("short-header", good[..6].to_vec(), "truncated: 6 bytes, shorter than the 16-byte header of IDX images"),
        ("trailing", [good.clone(), vec![0; 3]].concat(), "3 bytes after the data"),
        ("huge-header", idx_images(u32::MAX, 28, 28, &[0; 8]), "truncated"),
        ("bad-gzip", gz(&good)[..20].to_vec(), "not a valid gzip stream"),
    ];
    for (name, bytes, expected) in cases {
        let path = write(dir, name, &bytes);
        let e = read_images(&path).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(expected), "{name}: {e}");
    }
    let path = write(dir, "labels-not-digits", &idx_labels(&[3, 12]));
    let e = read_labels(&path).unwrap_err().to_string();
    assert!(e.contains("label 12 at index 1"), "{e}");
    let e = read_images(&dir.join("missing")).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");
}

#[test]
fn images_and_labels_must_agree_in_count() {
    let tmp = temp_dir("mismatch");
    let dir = tmp.path();
    let images = write(dir, TRAIN_IMAGES, &idx_images(3, 28, 28, &[0; 3 * 784]));
    let labels = write(dir, TRAIN_LABELS, &idx_labels(&[1, 2]));
    let e = Split::load(dir, TRAIN_IMAGES, TRAIN_LABELS).unwrap_err().to_string();
    assert_eq!(e, format!("{} holds 3 images but {} holds 2 labels", images.display(), labels.display()));
}

#[test]
fn lookup_follows_flag_then_environment_then_default_then_system() {
    let (tmp_a, tmp_b, tmp_system) = (temp_dir("lookup-a"), temp_dir("lookup-b"), temp_dir("lookup-system"));
    let (a, b, system) = (tmp_a.path(), tmp_b.path(), tmp_system.path());
    write(b, TRAIN_IMAGES, &idx_images(1, 1, 1, &[0]));
    // The flag wins when it holds data; otherwise the environment is next.
    assert_eq!(locate_in("mnist", Some(b), None, system).unwrap(), b);
    assert_eq!(locate_in("mnist", Some(a), Some(b), system).unwrap(), b);
    // Nothing anywhere: every place is named, and how to get the data.
    let e = locate_in("fashion-mnist", Some(a), None, system).unwrap_err().to_string();
    assert!(e.contains("--data-dir") && e.contains("$DDPM_DATA (not set)") && e.contains("data/fashion-mnist"), "{e}");
    assert!(e.contains(&system.join("fashion-mnist").display().to_string()), "{e}");
    assert!(e.contains("cargo xtask data --dataset fashion-mnist"), "{e}");
    assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
    let e = locate_in("mnist", Some(a), None, system).unwrap_err().to_string();
    assert!(!e.contains("apt-get"), "no package is named where there is none: {e}");
    // Last, the system's folder of data sets (where Debian's package puts it).
    let installed = system.join("fashion-mnist");
    std::fs::create_dir(&installed).unwrap();
    write(&installed, TRAIN_IMAGES, &idx_images(1, 1, 1, &[0]));
    assert_eq!(locate_in("fashion-mnist", Some(a), None, system).unwrap(), installed);
    assert_eq!(locate_in("fashion-mnist", Some(b), None, system).unwrap(), b, "the flag still comes first");
}

#[test]
fn batches_are_full_shuffled_and_a_function_of_seed_and_step() {
    let draw = |seed| {
        let mut b = Batches::new(10, 3, seed).unwrap();
        (0..6).map(|step| b.indices(step).to_vec()).collect::<Vec<_>>()
    };
    let batches = draw(1);
    assert_eq!(draw(1), batches);
    assert_ne!(draw(2), batches);
    assert!(batches.iter().all(|b| b.len() == 3));
    // 3 full batches per epoch of 10: the first three are distinct indices.
    let mut first: Vec<usize> = batches[..3].concat();
    first.sort();
    first.dedup();
    assert_eq!(first.len(), 9);
    // The next epoch is another permutation.
    assert_ne!(batches[3..6], batches[..3]);
    let b = Batches::new(10, 3, 1).unwrap();
    assert_eq!((b.per_epoch(), b.epoch_of(2), b.epoch_of(3)), (3, 0, 1));
    // Asking for step 4 first (a resumed run) gives what the sequence gave.
    let mut resumed = Batches::new(10, 3, 1).unwrap();
    assert_eq!(resumed.indices(4), batches[4].as_slice());
    assert_eq!(resumed.indices(1), batches[1].as_slice());
    assert!(Batches::new(2, 3, 0).is_err());
}
