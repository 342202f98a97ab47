//! Writing a file so that a reader (or a crash) sees the old file or the
//! whole new one, never half of it: checkpoints, training states, samples,
//! pictures and reports all go through [`write_atomically`]; and reading an
//! input only if it is a regular file ([`read_regular`]), so that a FIFO or a
//! device named as a checkpoint is refused instead of blocking or streaming.
//!
//! A kill during a write can leave a temporary file (never a half-written
//! target); [`remove_stale_temporaries`] clears those of a file before it is
//! written again.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Makes two saves from one process (two threads) use different temporary files.
static NEXT_TEMP: AtomicUsize = AtomicUsize::new(0);

/// The longest part of the target's name that a temporary name keeps, in
/// bytes: with the dot, `.tmp-`, a pid (at most 10 digits), `-` and a counter
/// (at most 20), a temporary name is at most 164 bytes, under `NAME_MAX`
/// (255 on Linux and macOS) whatever the length of the target's name.
const TEMP_PREFIX_MAX: usize = 128;

/// The part before the pid in the temporary names of `file_name`:
/// `.{prefix}.tmp-`, where the prefix is the name cut to at most
/// [`TEMP_PREFIX_MAX`] bytes at a character boundary. Every temporary file of
/// the project matches `.{prefix}.tmp-{pid}-{n}`, which is how
/// [`remove_stale_temporaries`] recognises those of a killed run.
fn temp_stem(file_name: &OsStr) -> String {
    let name = file_name.to_string_lossy();
    let mut end = name.len().min(TEMP_PREFIX_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.tmp-", &name[..end])
}

/// A fresh temporary path beside `path`, `.{prefix}.tmp-{pid}-{n}`: in the
/// same directory, since a rename across file systems would be a copy.
pub fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    let file_name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"))?;
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!("{}{}-{n}", temp_stem(file_name), std::process::id())))
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same
/// directory ([`temporary_path`]), flushed to disk (fsync), then renamed over
/// `path`; a rename within a directory is atomic. The temporary file is
/// removed if anything fails; only a kill can leave it behind, and then
/// [`remove_stale_temporaries`] finds it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = temporary_path(path)?;
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

/// Removes the temporary files of `path` (see [`temporary_path`]) that a
/// killed process left behind: those whose pid is neither this process nor a
/// live one (a live one may be writing `path` right now). Returns what it
/// removed, for the caller to tell the user; a folder that cannot be listed
/// yields nothing (the write that follows will report the real problem).
pub fn remove_stale_temporaries(path: &Path) -> Vec<PathBuf> {
    let Some(file_name) = path.file_name() else { return vec![] };
    let stem = temp_stem(file_name);
    let Ok(entries) = std::fs::read_dir(folder_of(path)) else { return vec![] };
    let mut removed = vec![];
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&stem)).and_then(temp_pid) else { continue };
        if pid == std::process::id() || process_is_alive(pid) {
            continue;
        }
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed.sort();
    removed
}

/// The pid of a temporary name's tail `{pid}-{n}`, or `None` if the tail is
/// not two runs of digits.
fn temp_pid(tail: &str) -> Option<u32> {
    let (pid, n) = tail.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok()).flatten()
}

/// Whether a process `pid` exists, as far as /proc tells; where there is no
/// /proc, none is taken to be (the temporaries of other processes are then
/// all stale: two runs writing one file at once is not a case we serve).
fn process_is_alive(pid: u32) -> bool {
    Path::new("/proc/self").exists() && Path::new(&format!("/proc/{pid}")).exists()
}

/// The folder a path's file is in: its parent, or `.` for a bare name
/// (`Path::parent` gives the empty path for `a.png`).
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Flushes the directory entry written by the rename, so that the new name
/// survives a power cut. Best effort: the file is complete and in place by now,
/// and some file systems refuse to sync a directory.
fn sync_directory(path: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = File::open(folder_of(path)) {
        let _ = dir.sync_all();
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

    #[test]
    fn a_name_of_250_bytes_is_written_through_a_temporary_name_that_fits() {
        let dir = tempfile::tempdir().unwrap();
        // 250 bytes, with two-byte characters across the 128-byte cut.
        let name = format!("{}{}.pngs", "a".repeat(123), "é".repeat(61));
        assert_eq!(name.len(), 250);
        let path = dir.path().join(&name);
        write_atomically(&path, b"picture").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"picture");
        let temp = temporary_path(&path).unwrap();
        let temp_name = temp.file_name().unwrap().to_str().unwrap();
        // NAME_MAX is 255 bytes.
        assert!(temp_name.len() <= 255, "{} bytes: {temp_name}", temp_name.len());
        assert!(temp_name.starts_with(&format!(".{}", &name[..127])), "{temp_name}");
        // Nothing but the target is left.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from(&name)]);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        // pid 4294967295 cannot exist (Linux pids stay below 2^22).
        let stale = dir.path().join(".model.safetensors.tmp-4294967295-3");
        let mine = temporary_path(&path).unwrap();
        let other_file = dir.path().join(".state.safetensors.tmp-4294967295-0");
        let not_ours = dir.path().join(".model.safetensors.tmp-notes");
        for p in [&stale, &mine, &other_file, &not_ours] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temporaries(&path), std::slice::from_ref(&stale));
        assert!(!stale.exists() && mine.exists() && other_file.exists() && not_ours.exists());
        assert_eq!(remove_stale_temporaries(&path), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_live_process_keeps_its_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        // pid 1 is always alive where there is a /proc.
        let live = dir.path().join(".grid.png.tmp-1-0");
        std::fs::write(&live, b"x").unwrap();
        let removed = remove_stale_temporaries(&path);
        assert_eq!(removed.is_empty(), Path::new("/proc/1").exists());
    }
}
