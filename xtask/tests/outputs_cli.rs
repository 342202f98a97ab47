//! Outputs and interruptions, as a user meets them: every output path is
//! checked before the work (an input, a device, a folder, two outputs at one
//! path), a run that fails late leaves no outputs, long names and the
//! temporaries of killed runs are handled, and a training run killed with
//! SIGKILL at any moment, or stopped with SIGINT, can be sampled from and
//! resumed with a log that has every step once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{assert_fails_with, assert_succeeds, stderr, temp_dir, write_npy, xtask, FIXTURE, SHARED_MNIST};

/// `sample` from the fixture with the cheapest settings, plus `extra`.
fn sample(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["sample", "--checkpoint", FIXTURE, "--n", "2", "--steps", "2", "--device", "cpu"];
    args.extend(extra);
    xtask(&args)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let tmp = temp_dir("same");
    let model = tmp.path().join("model.safetensors");
    std::fs::copy(FIXTURE, &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let result = xtask(&["sample", "--checkpoint", s(&model), "--n", "2", "--steps", "2", "--out", s(&model)]);
    assert_fails_with(&result, "--out");
    assert!(stderr(&result).contains("is the same file as --checkpoint"), "{}", stderr(&result));
    // Through a symbolic link to it, too.
    let link = tmp.path().join("grid.png");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let result = xtask(&["sample", "--checkpoint", s(&model), "--n", "2", "--steps", "2", "--out", s(&link)]);
    assert_fails_with(&result, "is the same file as --checkpoint");
    assert_eq!(std::fs::read(&model).unwrap(), before);

    let noise = tmp.path().join("noise.npy");
    write_npy(&noise, &[2, 1, 28, 28], &vec![0.5; 2 * 784]);
    let out = tmp.path().join("out.png");
    let result = sample(&["--init-noise", s(&noise), "--npy", s(&noise), "--out", s(&out)]);
    assert_fails_with(&result, "--npy");
    assert!(stderr(&result).contains("is the same file as --init-noise"), "{}", stderr(&result));
    assert!(!out.exists(), "nothing is written when an output is refused");
}

#[test]
fn devices_folders_and_two_outputs_at_one_path_are_refused() {
    let tmp = temp_dir("kinds");
    // /dev/null itself where a broken check could not replace it (not root);
    // as root, a node of the same device made in the test's folder, so that a
    // broken check replaces that one and not the machine's.
    let null = device_like_dev_null(tmp.path());
    let said = format!("--out {} is a device, not a regular file; outputs are written by replacing the file", s(&null));
    assert_fails_with(&sample(&["--out", s(&null)]), &said);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&null).unwrap().file_type().is_char_device(), "{} is still a device", null.display());
    if null != Path::new("/dev/null") {
        std::fs::remove_file(&null).unwrap();
    }
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_fails_with(&sample(&["--out", s(&fifo)]), "is a FIFO, not a regular file");
    std::fs::remove_file(&fifo).unwrap();

    assert_fails_with(&sample(&["--out", s(tmp.path())]), "is a directory");

    let grid = tmp.path().join("a.png");
    assert_fails_with(&sample(&["--out", s(&grid), "--strip", s(&grid)]), "--out and --strip both name");
    // The same file by another spelling.
    let other = tmp.path().join(".").join("a.png");
    assert_fails_with(&sample(&["--out", s(&grid), "--gif", s(&other)]), "--out and --gif both name");
    assert!(names_in(tmp.path()).is_empty());

    // eval's report may not overwrite the samples it judges.
    let samples = tmp.path().join("samples.npy");
    write_npy(&samples, &[2, 1, 28, 28], &vec![0.0; 2 * 784]);
    let result = xtask(&["eval", "--samples", s(&samples), "--json", s(&samples), "--data-dir", SHARED_MNIST]);
    assert_fails_with(&result, "--json");
    assert!(stderr(&result).contains("is the same file as --samples"), "{}", stderr(&result));
}

/// `/dev/null` for a user who cannot replace it; for root, a character
/// device 1:3 (what /dev/null is) made in `dir`.
fn device_like_dev_null(dir: &Path) -> PathBuf {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        return PathBuf::from("/dev/null");
    }
    let node = dir.join("null");
    let made = Command::new("mknod").args([s(&node), "c", "1", "3"]).status().is_ok_and(|s| s.success());
    assert!(made, "as root, mknod must work, to test a device without risking /dev/null");
    node
}

/// The last output cannot be written: its folder is one in /proc, where no
/// process, root included, can create a file (chmod would not stop root, and
/// these tests may run as root). The outputs before it were written by then;
/// they must be undone: the new one removed, the replaced one put back.
#[test]
fn a_late_failure_leaves_no_outputs() {
    let tmp = temp_dir("late");
    let (grid, npy) = (tmp.path().join("grid.png"), tmp.path().join("x.npy"));
    std::fs::write(&grid, b"an earlier grid").unwrap();
    let result = sample(&["--out", s(&grid), "--npy", s(&npy), "--gif", "/proc/self/chain.gif"]);
    assert_fails_with(&result, "cannot write /proc/self/chain.gif");
    let err = stderr(&result);
    assert!(err.contains("removed") && err.contains("put back the earlier"), "{err}");
    assert_eq!(std::fs::read(&grid).unwrap(), b"an earlier grid");
    assert_eq!(names_in(tmp.path()), ["grid.png"], "no .npy, temporary or backup left");
}

#[test]
fn a_250_byte_name_is_written_and_stale_temporaries_are_cleared() {
    let tmp = temp_dir("names");
    let name = format!("{}.png", "d".repeat(246));
    assert_eq!(name.len(), 250);
    let out = tmp.path().join(&name);
    assert_succeeds(&sample(&["--out", s(&out)]));
    assert_eq!(names_in(tmp.path()), [name]);

    // What a run killed while writing grid.png leaves (pid 4294967295 cannot
    // exist), next to a file that only looks alike.
    let stale = tmp.path().join(".grid.png.tmp-4294967295-0");
    let unrelated = tmp.path().join(".grid.png.tmp-notes");
    std::fs::write(&stale, b"half a picture").unwrap();
    std::fs::write(&unrelated, b"mine").unwrap();
    let result = sample(&["--out", s(&tmp.path().join("grid.png"))]);
    assert_succeeds(&result);
    assert!(stderr(&result).contains(&format!("note: removed {}", stale.display())), "{}", stderr(&result));
    assert!(!stale.exists() && unrelated.exists());
}

#[test]
fn a_fresh_run_that_fails_before_saving_leaves_nothing() {
    let tmp = temp_dir("fresh-fail");
    // A learning rate this large makes the loss NaN at step 2, before the save at step 3.
    let out = tmp.path().join("new").join("run");
    let result = train(&out, &["--steps", "3", "--save-every", "100", "--lr", "1e30"]);
    assert_fails_with(&result, "diverged");
    assert!(names_in(tmp.path()).is_empty(), "left behind: {:?}", names_in(tmp.path()));

    // In a folder that exists, a picture's path that is a folder is refused
    // before any step, and no log is left.
    let existing = tmp.path().join("existing");
    std::fs::create_dir_all(existing.join("samples.png")).unwrap();
    assert_fails_with(&train(&existing, &["--steps", "2"]), "samples.png is a directory");
    assert_eq!(names_in(&existing), ["samples.png"]);
}

fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["train", "--data-dir", SHARED_MNIST, "--out", s(out), "--batch", "8", "--grid", "4"];
    args.extend(["--device", "cpu"]);
    args.extend(extra);
    args.into_iter().map(String::from).collect()
}

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let args = train_args(out, extra);
    xtask(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A training run started by a test, killed when the test ends (so that a
/// failing test leaves no run behind, training on).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `train` with its stderr read line by line on a thread: the lines
/// come back through the channel.
fn spawn_train(out: &Path, extra: &[&str]) -> (Running, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(train_args(out, extra))
        .env_remove("DDPM_DATA")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (send, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (Running(child), lines)
}

/// Waits (at most 60 s) for a line containing `needle`; returns the lines up to it.
fn wait_for(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = vec![];
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return seen;
        }
    }
    panic!("no line with {needle:?} in time: {seen:?}");
}

/// The steps of the log's step lines, in order.
fn logged_steps(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

/// The `step` entry of a safetensors file's metadata, read by hand: an 8-byte
/// little-endian header length, then the JSON header.
fn saved_step(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header["__metadata__"]["step"].as_str()?.parse().ok()
}

/// Returns `after` once a file whose name starts with `prefix` is in `dir`
/// (polled as fast as the folder can be read; at most 60 s).
fn wait_for_file(dir: &Path, prefix: &str, after: Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !names_in(dir).iter().any(|n| n.starts_with(prefix)) {
        assert!(Instant::now() < deadline, "no {prefix}* in {} in time", dir.display());
    }
    std::thread::sleep(after);
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    names_in(dir).into_iter().filter(|n| n.contains(".tmp-")).map(|n| dir.join(n)).collect()
}

#[test]
fn kill_9_at_any_moment_loses_nothing_saved() {
    let tmp = temp_dir("kill9");
    let out = tmp.path().join("run");
    // Kills at chosen moments: as soon as the state's or the model's
    // temporary file appears (during its write), a little after (around the
    // renames), or at a delay into a step. Each kill that leaves a temporary
    // file, or a model a save behind the state, landed during a save.
    // A model left a save behind is rewritten by the next run, which says so.
    let (mut kills, mut during_save, mut model_behind) = (0, 0, false);
    while kills < 6 || (during_save == 0 && kills < 16) {
        let resume: &[&str] = if out.join("state.safetensors").exists() { &["--resume"] } else { &[] };
        let (mut child, lines) = spawn_train(&out, &[&["--steps", "100000", "--save-every", "1"], resume].concat());
        let said = wait_for(&lines, "saved to");
        let rewrote = said.iter().any(|l| l.contains("rewrote model.safetensors from the state's EMA weights"));
        assert_eq!(rewrote, model_behind, "{said:?}");
        match kills % 3 {
            0 => wait_for_file(&out, ".state.safetensors.tmp-", Duration::ZERO),
            1 => wait_for_file(&out, ".model.safetensors.tmp-", Duration::ZERO),
            _ => wait_for_file(&out, ".state.safetensors.tmp-", Duration::from_millis(kills as u64 % 5)),
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        kills += 1;
        let state = saved_step(&out.join("state.safetensors"));
        model_behind = saved_step(&out.join("model.safetensors")) != state;
        if !temporaries(&out).is_empty() || model_behind {
            during_save += 1;
        }
    }
    assert!(during_save > 0, "none of {kills} kills landed during a save");

    // The model loads whatever instant the kill came at.
    let grid = tmp.path().join("grid.png");
    let model = out.join("model.safetensors");
    assert_succeeds(&xtask(&["sample", "--checkpoint", s(&model), "--n", "2", "--steps", "2", "--out", s(&grid)]));
    // And the run continues, its log holding each step once.
    let step = saved_step(&out.join("state.safetensors")).unwrap();
    let target = (step + 2).to_string();
    let resumed = train(&out, &["--resume", "--steps", &target, "--save-every", "1"]);
    assert_succeeds(&resumed);
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    assert_eq!(saved_step(&out.join("model.safetensors")), Some(step + 2));
    assert_eq!(logged_steps(&out.join("log.jsonl")), (1..=step + 2).collect::<Vec<_>>());
}

#[test]
fn sigint_saves_says_so_and_resumes() {
    let tmp = temp_dir("sigint");
    let out = tmp.path().join("run");
    // No save before the interruption's own: it is the one that counts.
    let (mut child, lines) = spawn_train(&out, &["--steps", "100000", "--save-every", "100000"]);
    wait_for(&lines, "training tiny");
    std::thread::sleep(Duration::from_millis(500));
    let sent = Command::new("kill").args(["-INT", &child.0.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let said = wait_for(&lines, "interrupted at step");
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{said:?}");
    let line = said.last().unwrap();
    let step: u64 = line.split("interrupted at step ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
    assert_eq!(line, &format!("error: interrupted at step {step}: saved to {}; continue with --resume", out.display()));
    assert_eq!(saved_step(&out.join("state.safetensors")), Some(step));
    assert_eq!(saved_step(&out.join("model.safetensors")), Some(step));
    assert_eq!(logged_steps(&out.join("log.jsonl")), (1..=step).collect::<Vec<_>>());

    let target = (step + 1).to_string();
    let resumed = train(&out, &["--resume", "--steps", &target]);
    assert_succeeds(&resumed);
    assert_eq!(logged_steps(&out.join("log.jsonl")), (1..=step + 1).collect::<Vec<_>>());
}
