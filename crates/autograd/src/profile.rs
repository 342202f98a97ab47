//! An opt-in per-op timer: where does a training step spend its time?
//!
//! With `DDPM_PROFILE=1` in the environment, every forward op and every
//! backward rule adds its wall time to a table keyed by op name;
//! [`report`] formats it. Off (the default), a scope costs one relaxed load.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// 0: not yet read from the environment, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Calls and total time, per (op, pass).
type Table = HashMap<(&'static str, Pass), (u64, Duration)>;

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(HashMap::new());
}

/// Which half of the computation a time belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    Forward,
    Backward,
}

pub fn is_enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("DDPM_PROFILE").is_some_and(|v| v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Times its own lifetime under `name` (when profiling is on).
pub struct Scope {
    name: &'static str,
    pass: Pass,
    start: Option<Instant>,
}

pub fn scope(name: &'static str, pass: Pass) -> Scope {
    Scope { name, pass, start: is_enabled().then(Instant::now) }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let elapsed = start.elapsed();
            TABLE.with(|t| {
                let mut t = t.borrow_mut();
                let e = t.entry((self.name, self.pass)).or_default();
                e.0 += 1;
                e.1 += elapsed;
            });
        }
    }
}

/// Empties the table (after warm-up steps, say).
pub fn reset() {
    TABLE.with(|t| t.borrow_mut().clear());
}

/// The table as text, slowest first, with times divided by `steps`; `None`
/// when profiling is off.
pub fn report(steps: usize) -> Option<String> {
    if !is_enabled() {
        return None;
    }
    let mut rows: Vec<_> = TABLE.with(|t| t.borrow().iter().map(|(&k, &v)| (k, v)).collect());
    rows.sort_by_key(|&(_, (_, time))| std::cmp::Reverse(time));
    let total: Duration = rows.iter().map(|r| r.1 .1).sum();
    let mut out = String::from("| op | pass | calls/step | ms/step | share |\n|---|---|--:|--:|--:|\n");
    for ((name, pass), (calls, time)) in rows {
        let ms = time.as_secs_f64() * 1e3 / steps as f64;
        let share = 100.0 * time.as_secs_f64() / total.as_secs_f64();
        out += &format!("| {name} | {pass:?} | {} | {ms:.2} | {share:.1}% |\n", calls / steps as u64);
    }
    Some(out)
}
