//! Writing a file so that a reader (or a crash) sees the old file or the
//! whole new one, never half of it: checkpoints, training states, samples,
//! pictures and reports all go through [`write_atomically`]; and reading an
//! input only if it is a regular file ([`read_regular`]), so that a FIFO or a
//! device named as a checkpoint is refused instead of blocking or streaming.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Makes two saves from one process (two threads) use different temporary files.
static NEXT_TEMP: AtomicUsize = AtomicUsize::new(0);

/// Writes `bytes` to `path` atomically: to a temporary file in the same
/// directory (a rename across file systems would be a copy), flushed to
/// disk (fsync), then renamed over `path`; a rename within a directory is
/// atomic. The temporary file is removed if anything fails.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"))?;
    let temp_name = format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    );
    // Same directory as `path`: a rename across file systems would be a copy.
    let temp = path.with_file_name(temp_name);
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        file.write_all(bytes)?;
        // The data must be on disk before the rename makes it the checkpoint.
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    sync_directory(path);
    Ok(())
}

/// Flushes the directory entry written by the rename, so that the new name
/// survives a power cut. Best effort: the file is complete and in place by now,
/// and some file systems refuse to sync a directory.
fn sync_directory(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Reads the whole of `path` if it is a regular file (or a link to one).
///
/// A FIFO would block the read forever, a device (`/dev/zero`) would never
/// end and a directory cannot be read: each is refused before it is opened,
/// with an error that says what the path is.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path)
}

/// Ok if `path` is a regular file (or a link to one); an error of kind
/// `InvalidInput` naming what it is otherwise, or the error of `stat`.
pub fn check_regular(path: &Path) -> io::Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() { "a directory" } else { describe_special(&kind) };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file")))
}

#[cfg(unix)]
fn describe_special(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match () {
        _ if kind.is_fifo() => "a FIFO",
        _ if kind.is_socket() => "a socket",
        _ if kind.is_char_device() || kind.is_block_device() => "a device",
        _ => "not a file",
    }
}

#[cfg(not(unix))]
fn describe_special(_: &std::fs::FileType) -> &'static str {
    "not a file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"abc");
        let err = read_regular(dir.path()).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        #[cfg(unix)]
        {
            let err = read_regular(Path::new("/dev/null")).unwrap_err();
            assert!(err.to_string().contains("a device"), "{err}");
            let fifo = dir.path().join("fifo");
            assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
            // Would block forever if it were opened.
            let err = read_regular(&fifo).unwrap_err();
            assert!(err.to_string().contains("a FIFO"), "{err}");
        }
        assert_eq!(read_regular(&dir.path().join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
