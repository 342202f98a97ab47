//! A job's output files: decided before the work starts, written at the end,
//! all of them or none.
//!
//! [`Plan`] checks every output path first, so that a run does not spend
//! minutes sampling to fail on a path it could have refused at once: an output
//! must not be one of the job's inputs (by path, through a link, or as a hard
//! link: the same device and inode), nor another output, nor anything but a
//! regular file where something already exists (a directory, a FIFO, or a
//! device such as `/dev/null`, which a write by rename would replace with a
//! regular file), and its folder must exist.
//!
//! The job then makes every file in memory (a PNG, a GIF, an .npy or a JSON
//! report are small) and hands them to [`commit`], which writes each one
//! atomically ([`ddpm_nn::fs::write_atomically`]). If one write fails after
//! others succeeded, those are undone (an earlier file at the same path is put
//! back, a new one removed), so that a failed run leaves its folder as it found
//! it. A kill can still stop a run between two of the renames; it never leaves
//! a half-written file, and the temporary files it may leave are cleared by the
//! next run that writes the same path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use ddpm_nn::fs::{check_regular, folder_of, remove_stale_temporaries, temporary_path, write_atomically};

/// Where a path leads: its canonical form (links resolved; for a file not yet
/// there, its folder's canonical form and its name) and, if it exists, its
/// device and inode (which also tell two hard links of one file apart).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    canonical: PathBuf,
    file: Option<(u64, u64)>,
}

impl Identity {
    fn same_file(&self, other: &Identity) -> bool {
        self.canonical == other.canonical || (self.file.is_some() && self.file == other.file)
    }
}

/// The identity of an existing path, or `None` if it does not exist or cannot
/// be looked at (the job's reader of that input says why, with its own words).
fn existing(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ok()?;
    let canonical = fs::canonicalize(path).ok()?;
    Some(Identity { canonical, file: Some((meta.dev(), meta.ino())) })
}

/// The inputs and the outputs of one job, checked against each other.
#[derive(Default)]
pub struct Plan {
    inputs: Vec<(String, PathBuf, Identity)>,
    outputs: Vec<(String, PathBuf, Identity)>,
}

impl Plan {
    pub fn new() -> Plan {
        Plan::default()
    }

    /// Notes a file the job reads, named by `flag` in messages (`--checkpoint`).
    /// An input that does not exist is left to the job's reader to refuse.
    pub fn input(&mut self, flag: &str, path: &Path) {
        if let Some(identity) = existing(path) {
            self.inputs.push((flag.to_string(), path.to_path_buf(), identity));
        }
    }

    /// Notes the data files `names` of the folder `dir` (each as it is, or
    /// compressed as `.gz`: whichever exist) as inputs.
    pub fn data_files(&mut self, dir: &Path, names: &[&str]) {
        for name in names {
            for file in [dir.join(name), dir.join(format!("{name}.gz"))] {
                self.input("the data file", &file);
            }
        }
    }

    /// Checks that the job may write `path` (named by `flag` in messages): see
    /// the module's documentation for what is refused.
    pub fn output(&mut self, flag: &str, path: &Path) -> Result<()> {
        let shown = path.display();
        let Some(name) = path.file_name() else {
            bail!("{flag} {shown} does not name a file");
        };
        match fs::metadata(path) {
            Ok(_) => {
                if let Err(e) = check_regular(path) {
                    bail!("{flag} {shown} is {e}; outputs are written by replacing the file");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot write {flag} {shown}: {e}"),
        }
        let dir = folder_of(path);
        if !dir.is_dir() {
            let what = if dir.exists() { "is not a folder" } else { "does not exist" };
            bail!("cannot write {shown}: the folder {} {what}", dir.display());
        }
        let identity = match existing(path) {
            Some(identity) => identity,
            None => {
                let folder = fs::canonicalize(dir).map_err(|e| anyhow::anyhow!("cannot write {shown}: {e}"))?;
                Identity { canonical: folder.join(name), file: None }
            }
        };
        if let Some((input_flag, input, _)) = self.inputs.iter().find(|(_, _, i)| i.same_file(&identity)) {
            bail!(
                "{flag} {shown} is the same file as {input_flag} {}: writing it would destroy the input; choose another {flag}",
                input.display()
            );
        }
        if let Some((other_flag, _, _)) = self.outputs.iter().find(|(_, _, o)| o.same_file(&identity)) {
            bail!("{other_flag} and {flag} both name {shown}: give each output its own file");
        }
        self.outputs.push((flag.to_string(), path.to_path_buf(), identity));
        Ok(())
    }
}

/// One output written by [`commit`], and how to undo it.
struct Written<'a> {
    path: &'a Path,
    /// A hard link to the file that was there before, to put back.
    backup: Option<PathBuf>,
}

/// Writes every file (each atomically, in order), or, if one fails, none:
/// the files written before it are undone and the error says so.
///
/// Before each file replaces an existing one, the old one is kept under a
/// temporary name (a hard link, so nothing is copied) until all are written.
/// Temporary files of the same paths that a killed run left are removed first,
/// with a note.
pub fn commit(files: &[(impl AsRef<Path>, Vec<u8>)]) -> Result<()> {
    let mut written: Vec<Written> = vec![];
    for (path, bytes) in files {
        let path = path.as_ref();
        remove_stale(path);
        let backup = keep_old(path);
        match write_atomically(path, bytes) {
            Ok(()) => written.push(Written { path, backup }),
            Err(e) => {
                if let Some(backup) = backup {
                    let _ = fs::remove_file(backup);
                }
                let undone = undo(written);
                let undone = if undone.is_empty() { String::new() } else { format!("; undone: {undone}") };
                bail!("cannot write {}: {e}{undone}", path.display());
            }
        }
    }
    for backup in written.into_iter().filter_map(|w| w.backup) {
        let _ = fs::remove_file(backup);
    }
    Ok(())
}

/// Removes the temporary files of `path` that a killed run left (see
/// [`remove_stale_temporaries`]), saying so for each.
pub fn remove_stale(path: &Path) {
    for stale in remove_stale_temporaries(path) {
        eprintln!("note: removed {}, a temporary file left by an earlier run that was killed", stale.display());
    }
}

/// A hard link to the regular file at `path`, if there is one and the file
/// system allows it.
fn keep_old(path: &Path) -> Option<PathBuf> {
    if !fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let backup = temporary_path(path).ok()?;
    fs::hard_link(path, &backup).ok().map(|()| backup)
}

/// Puts back what `written` replaced (or removes what it created), last first;
/// says what it did, e.g. `removed a.npy, put back the earlier b.png`.
fn undo(written: Vec<Written>) -> String {
    let mut done = vec![];
    for w in written.into_iter().rev() {
        let path = w.path.display();
        match w.backup {
            Some(backup) => match fs::rename(&backup, w.path) {
                Ok(()) => done.push(format!("put back the earlier {path}")),
                Err(e) => {
                    done.push(format!("could not put back the earlier {path} ({e}; it is in {})", backup.display()))
                }
            },
            None => match fs::remove_file(w.path) {
                Ok(()) => done.push(format!("removed {path}")),
                Err(e) => done.push(format!("could not remove {path} ({e})")),
            },
        }
    }
    done.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_may_not_be_an_input_a_link_to_it_or_another_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.safetensors");
        fs::write(&input, b"weights").unwrap();
        let link = dir.path().join("link.png");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let hard = dir.path().join("hard.png");
        fs::hard_link(&input, &hard).unwrap();
        let mut plan = Plan::new();
        plan.input("--checkpoint", &input);
        for path in [&input, &link, &hard, &dir.path().join(".").join("model.safetensors")] {
            let err = plan.output("--out", path).unwrap_err().to_string();
            assert!(err.contains("the same file as --checkpoint"), "{err}");
        }
        plan.output("--out", &dir.path().join("grid.png")).unwrap();
        let err = plan.output("--npy", &dir.path().join("grid.png")).unwrap_err().to_string();
        assert!(err.contains("--out and --npy both name"), "{err}");
    }

    #[test]
    fn devices_folders_and_missing_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = Plan::new();
        let err = plan.output("--out", Path::new("/dev/null")).unwrap_err().to_string();
        assert!(err.contains("is a device, not a regular file; outputs are written by replacing the file"), "{err}");
        let err = plan.output("--out", dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let err = plan.output("--out", &dir.path().join("missing").join("a.png")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_failed_write_undoes_the_ones_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old.png"), dir.path().join("new.npy"));
        fs::write(&old, b"earlier").unwrap();
        // A folder in /proc takes no new file, even from root.
        let impossible = Path::new("/proc/self/x.gif");
        let files = [(old.as_path(), b"A".to_vec()), (new.as_path(), b"B".to_vec()), (impossible, b"C".to_vec())];
        let err = commit(&files).unwrap_err().to_string();
        assert!(
            err.contains("cannot write /proc/self/x.gif")
                && err.contains("undone: removed")
                && err.contains("put back the earlier"),
            "{err}"
        );
        assert_eq!(fs::read(&old).unwrap(), b"earlier");
        assert!(!new.exists());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["old.png"], "no temporary or backup left");
        // And all of them when nothing fails.
        commit(&files[..2]).unwrap();
        assert_eq!((fs::read(&old).unwrap(), fs::read(&new).unwrap()), (b"A".to_vec(), b"B".to_vec()));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
