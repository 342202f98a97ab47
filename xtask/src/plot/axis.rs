//! The axes of a plot: a range in axis space (log10 of the value on a log
//! axis) and ticks at "nice" values (1, 2 or 5 times a power of ten), with
//! labels that carry as many decimals as the step needs.

/// One axis: its range in axis space (log10 of the value for a log axis) and its ticks,
/// each an axis-space position and a label.
pub(super) struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Where axis-space value `t` lies between the ends, 0 to 1 (halved first so that ranges
    /// near the limits of f64 do not overflow to infinity).
    pub fn frac(&self, t: f64) -> f64 {
        (t * 0.5 - self.lo * 0.5) / (self.hi * 0.5 - self.lo * 0.5)
    }
}

/// The step among 1, 2, 5 times a power of ten nearest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    mag * if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// A linear axis covering `[min, max]` with about `target` ticks at multiples of a nice step;
/// the ends are rounded out to whole steps, and a zero-width range is widened.
pub(super) fn linear_axis(min: f64, max: f64, target: f64) -> Axis {
    let (mut min, mut max) = (min, max);
    if max - min <= min.abs().max(max.abs()) * 1e-9 {
        let pad = if min == 0.0 { 1.0 } else { min.abs() * 0.1 };
        (min, max) = (min - pad, max + pad);
    }
    let span = max - min;
    if !span.is_finite() || span <= 0.0 {
        // Only for ranges near the limits of f64: no nice ticks, just the ends.
        let sci = true;
        return Axis {
            lo: min,
            hi: max,
            ticks: vec![(min, format_number(min, 1.0, sci)), (max, format_number(max, 1.0, sci))],
        };
    }
    let step = nice_step(span / target);
    let (lo, hi) = ((min / step).floor() * step, (max / step).ceil() * step);
    let largest = lo.abs().max(hi.abs());
    let sci = !(1e-3..1e6).contains(&largest);
    let count = ((hi - lo) / step).round().clamp(0.0, 100.0) as usize;
    let ticks = (0..=count)
        .map(|k| {
            let v = lo + k as f64 * step;
            let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
            (v, format_number(v, step, sci))
        })
        .collect();
    Axis { lo, hi, ticks }
}

/// A log10 axis over positive `[min, max]`, a little padded. Ticks at powers of ten for wide
/// ranges, at 1-2-5 for a few decades, at every digit within about one decade, and at linear
/// nice values when the range is too narrow for any of those.
pub(super) fn log_axis(min: f64, max: f64) -> Axis {
    let (mut lo, mut hi) = (min.log10(), max.log10());
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    } else {
        let pad = (hi - lo) * 0.03;
        (lo, hi) = (lo - pad, hi + pad);
    }
    let span = hi - lo;
    let (mantissas, stride): (&[f64], i64) = if span > 3.0 {
        (&[1.0], (span / 8.0).ceil() as i64)
    } else if span > 1.2 {
        (&[1.0, 2.0, 5.0], 1)
    } else {
        (&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 1)
    };
    let mut ticks = Vec::new();
    let mut e = lo.floor() as i64;
    while e as f64 <= hi.ceil() {
        if e.rem_euclid(stride.max(1)) == 0 {
            for &m in mantissas {
                let v = m * 10f64.powi(e as i32);
                let t = v.log10();
                if (lo..=hi).contains(&t) && v.is_finite() && v > 0.0 {
                    let label = if (-4..6).contains(&e) {
                        format!("{:.*}", (-e).max(0) as usize, v)
                    } else {
                        format!("{m}e{e}")
                    };
                    ticks.push((t, label));
                }
            }
        }
        e += 1;
    }
    if ticks.len() < 2 {
        // Narrower than the gap between two digits: plain nice values, placed logarithmically.
        let linear = linear_axis(10f64.powf(lo), 10f64.powf(hi), 4.0);
        ticks = linear.ticks.into_iter().filter(|(v, _)| *v > 0.0).map(|(v, s)| (v.log10(), s)).collect();
        ticks.retain(|(t, _)| (lo..=hi).contains(t));
    }
    Axis { lo, hi, ticks }
}

/// Formats a tick value on an axis with the given step: as many decimals as the step needs,
/// or scientific notation (`2.5e-4`) when the axis' values are very large or very small.
fn format_number(v: f64, step: f64, sci: bool) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let step_exp = step.abs().log10().floor();
    if sci {
        let digits = (v.abs().log10().floor() - step_exp).clamp(0.0, 6.0) as usize;
        let s = format!("{v:.digits$e}");
        // Trim trailing zeros of the mantissa: 2.50e-4 -> 2.5e-4, 1.0e6 -> 1e6.
        match s.split_once('e') {
            Some((mantissa, exp)) if mantissa.contains('.') => {
                format!("{}e{exp}", mantissa.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => s,
        }
    } else {
        let decimals = (-step_exp).clamp(0.0, 12.0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_have_nice_ticks() {
        let a = linear_axis(0.03, 0.97, 5.0);
        assert_eq!((a.lo, a.hi), (0.0, 1.0));
        let labels: Vec<&str> = a.ticks.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let a = linear_axis(0.0, 20000.0, 6.0);
        assert_eq!(a.ticks.last().unwrap().1, "20000");
        let a = linear_axis(0.0, 3e6, 6.0);
        assert_eq!(a.ticks[1].1, "5e5");
        let a = linear_axis(0.0, 2.5e-4, 5.0);
        assert_eq!(a.ticks[1].1, "5e-5");
        let a = log_axis(0.012, 0.9);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.02", "0.05", "0.1", "0.2", "0.5", "1"]);
        let a = log_axis(1e-6, 1.0);
        assert!(a.ticks.iter().any(|(_, s)| s == "1e-6"));
        assert!(log_axis(0.05, 0.0501).ticks.len() >= 2);
        assert_eq!(format_number(2.5e-4, 1e-5, true), "2.5e-4");
    }
}
