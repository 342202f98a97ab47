//! Writing a file so that a reader (or a crash) sees the old file or the
//! whole new one, never half of it: checkpoints, training states, samples,
//! pictures and reports all go through [`write_atomically`].

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
