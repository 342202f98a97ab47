//! The training loop around [`Trainer::train_step`]: when to stop, when to
//! save, and what to tell an observer (a progress bar, a log).
//!
//! ```
//! use ddpm::data::{Images, Split};
//! use ddpm::fit::{Fit, Progress, Stop};
//! use ddpm::{TrainConfig, Trainer};
//! use ddpm_nn::Preset;
//!
//! // Eight blank 28x28 images of digit 0 (a real run loads MNIST with Split::load).
//! let data = Split { images: Images { count: 8, rows: 28, cols: 28, pixels: vec![0; 8 * 784] }, labels: vec![0; 8] };
//! let mut trainer = Trainer::new(TrainConfig { batch: 4, ..TrainConfig::new(Preset::Tiny, 10) }, data.len())?;
//! let mut losses = vec![];
//! trainer.fit(&data, &Fit { stop: Stop::Steps(2), save_every: 500, dir: None, interrupt: None }, |event| {
//!     if let Progress::Step { stats, .. } = event {
//!         losses.push(stats.loss);
//!     }
//!     Ok::<(), ddpm::train::TrainError>(())
//! })?;
//! assert_eq!((trainer.step_count(), losses.len()), (2, 2));
//! # Ok::<(), ddpm::train::TrainError>(())
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ddpm_nn::checkpoint;

use crate::data::Split;
use crate::train::{StepStats, TrainError, Trainer, MODEL_STEP};

/// The resumable state in a run's folder (raw weights, EMA, Adam's moments,
/// counters): what `--resume` reads.
pub const STATE_FILE: &str = "state.safetensors";
/// The EMA weights in the interchange format: what sampling loads.
pub const MODEL_FILE: &str = "model.safetensors";

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// When the run has this many steps in all (a resumed run's count on).
    Steps(u64),
    /// When the run has made this many passes over the data in all.
    Epochs(u64),
    /// After this much wall-clock time of this call.
    Time(Duration),
}

/// How [`Trainer::fit`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Fit<'a> {
    pub stop: Stop,
    /// Write the state and the model every this many steps (and at the end).
    pub save_every: u64,
    /// The run's folder; `None` saves nothing.
    pub dir: Option<&'a Path>,
    /// Set (by a signal handler, say) to stop the run after the step under
    /// way, saving it as at the end.
    pub interrupt: Option<&'a AtomicBool>,
}

/// How a [`Trainer::fit`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// At its stopping rule.
    Done,
    /// Early, by [`Fit::interrupt`], after this step (saved, if the run has a folder).
    Interrupted { step: u64 },
}

/// What [`Trainer::fit`] tells its observer.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A step was taken: its statistics, how long it took, and how long the
    /// run has gone on in this call.
    Step { stats: &'a StepStats, took: Duration, elapsed: Duration },
    /// The state and the model are about to be written after step `step`: an
    /// observer that keeps a log writes it to disk up to here now, so that the
    /// log never lacks a step that a saved state has.
    Saving { step: u64 },
    /// The state and then the model were written (each atomically) after
    /// step `step`: a kill from now on loses nothing before it.
    Saved { step: u64, dir: &'a Path },
}

impl Stop {
    /// The run's step count at which it stops, or `None` for a time limit.
    fn last_step(&self, trainer: &Trainer) -> Option<u64> {
        match *self {
            Stop::Steps(n) => Some(n),
            Stop::Epochs(e) => Some(e.saturating_mul(trainer.batches_per_epoch())),
            Stop::Time(_) => None,
        }
    }
}

impl Trainer {
    /// Trains on `data` until `fit.stop` (or `fit.interrupt`), saving into
    /// `fit.dir` every `fit.save_every` steps and when it stops, and telling
    /// `observe` about each step and each save; an error from `observe` stops
    /// the run there. A run already at its step target takes no step.
    pub fn fit<E: From<TrainError>>(
        &mut self,
        data: &Split,
        fit: &Fit<'_>,
        mut observe: impl FnMut(Progress<'_>) -> Result<(), E>,
    ) -> Result<Ended, E> {
        if fit.save_every == 0 {
            return Err(TrainError::Config("the save cadence must be at least 1 step".into()).into());
        }
        let last = fit.stop.last_step(self);
        let started = Instant::now();
        let done = |step: u64, elapsed: Duration| match (fit.stop, last) {
            (Stop::Time(limit), _) => elapsed >= limit,
            (_, Some(last)) => step >= last,
            _ => unreachable!("a step limit has a last step"),
        };
        if last.is_some_and(|last| self.step_count() >= last) {
            return Ok(Ended::Done);
        }
        loop {
            let step_started = Instant::now();
            let stats = self.train_step(data)?;
            let elapsed = started.elapsed();
            observe(Progress::Step { stats: &stats, took: step_started.elapsed(), elapsed })?;
            let stop = done(stats.step, elapsed);
            // Read once: a signal between two reads must not skip the save.
            let interrupted = !stop && fit.interrupt.is_some_and(|flag| flag.load(Ordering::SeqCst));
            if stop || interrupted || stats.step % fit.save_every == 0 {
                if let Some(dir) = fit.dir {
                    observe(Progress::Saving { step: stats.step })?;
                    self.save(dir)?;
                    observe(Progress::Saved { step: stats.step, dir })?;
                }
            }
            if stop {
                return Ok(Ended::Done);
            }
            if interrupted {
                return Ok(Ended::Interrupted { step: stats.step });
            }
        }
    }

    /// Writes the run into `dir`: [`STATE_FILE`] first, then [`MODEL_FILE`],
    /// each atomically, so that after a kill the state is never older than
    /// the model. The model file names its step in its metadata ([`MODEL_STEP`]), and
    /// [`Trainer::repair_model`] brings a model left behind by a kill between
    /// the two up to the state.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.save_state(&dir.join(STATE_FILE))?;
        self.save_model(&dir.join(MODEL_FILE))
    }

    /// Makes `dir`'s [`MODEL_FILE`] that of this (resumed) run's step: a kill
    /// after the state's rename and before the model's leaves an older model
    /// (or none) beside the state. Returns `None` if the model was already of
    /// this step, else the step the model had (`Some(None)`: none, or a file
    /// that does not say or cannot be read) after rewriting it from the EMA.
    pub fn repair_model(&self, dir: &Path) -> Result<Option<Option<u64>>, TrainError> {
        let path = dir.join(MODEL_FILE);
        let saved =
            checkpoint::read_metadata_map(&path).ok().and_then(|meta| meta.get(MODEL_STEP)?.parse::<u64>().ok());
        if saved == Some(self.step_count()) {
            return Ok(None);
        }
        self.save_model(&path)?;
        Ok(Some(saved))
    }
}
