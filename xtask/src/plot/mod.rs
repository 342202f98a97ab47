//! The training-loss plot (an RGB PNG), drawn by hand: `plot.png` of a run
//! and the README's loss curve. Hand-written so that the project needs no
//! system fonts and no plotting stack; the parts, each in its file:
//!
//! - [`axis`]: the axes' ranges and their "nice" ticks (linear and log10);
//! - [`canvas`]: an RGB picture with clipped fills, anti-aliased strokes and text;
//! - [`font`]: a 5x7 bitmap font for the title, labels and numbers;
//! - [`labels`]: class names above the columns of a grid of samples.

mod axis;
mod canvas;
mod font;
mod labels;

use anyhow::Result;
use ddpm::picture::{encode_png, Colour, Pixels};

use axis::{linear_axis, log_axis};
use canvas::{stroke, Canvas, Rect, Rgb};
use font::{text_width, GLYPH_H};
pub use labels::with_column_names;

/// Size of [`line_plot_png`]'s picture.
pub const PLOT_SIZE: (usize, usize) = (640, 400);

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [40, 40, 40];
const FRAME: Rgb = [90, 90, 90];
const GRID: Rgb = [232, 232, 232];
const LIGHT_GREY: Rgb = [175, 175, 175];
const DARK_BLUE: Rgb = [25, 60, 150];
/// Colours after the first two, for plots with more series.
const MORE_COLOURS: [Rgb; 4] = [[225, 115, 20], [40, 150, 60], [200, 40, 40], [120, 60, 170]];

/// Colour and line width of series `i` of `count`. The convention follows the loss plot: with
/// several series the first is the raw, noisy one, drawn thin and light grey underneath the
/// smoothed one drawn on top in dark blue; a lone series is dark blue.
fn series_style(i: usize, count: usize) -> (Rgb, f64) {
    match (i, count) {
        (_, 1) => (DARK_BLUE, 1.8),
        (0, _) => (LIGHT_GREY, 1.0),
        (1, _) => (DARK_BLUE, 1.8),
        _ => (MORE_COLOURS[(i - 2) % MORE_COLOURS.len()], 1.8),
    }
}

/// Draws a line plot of `series` (name, points) as a 640×400 RGB PNG, in memory: frame, light grid lines
/// and labelled ticks at "nice" values, anti-aliased lines, a legend (top right) naming the
/// series with a non-empty name, the title and the axis labels.
///
/// Points with a non-finite coordinate are skipped, and with `log_y` so are points with
/// `y <= 0`; a skipped point breaks the line there. An isolated point is drawn as a dot. With
/// no drawable point at all the plot still has its axes (over [0, 1]) and says "no data".
pub fn line_plot_png(
    series: &[(&str, &[(f64, f64)])],
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
) -> Result<Vec<u8>> {
    let (width, height, data) = line_plot_pixels(series, title, x_label, y_label, log_y);
    Ok(encode_png(&Pixels { width, height, colour: Colour::Rgb, data })?)
}

/// [`line_plot_png`]'s picture as `(width, height, rgb)`.
pub fn line_plot_pixels(
    series: &[(&str, &[(f64, f64)])],
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
) -> (usize, usize, Vec<u8>) {
    let (w, h) = PLOT_SIZE;
    let mut canvas = Canvas::new(w, h, WHITE);
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);

    // Data ranges over the drawable points.
    let mut range: Option<(f64, f64, f64, f64)> = None;
    for &p in series.iter().flat_map(|(_, pts)| pts.iter()).filter(|p| usable(p)) {
        let (x, y) = p;
        range = Some(match range {
            None => (x, x, y, y),
            Some((x0, x1, y0, y1)) => (x0.min(x), x1.max(x), y0.min(y), y1.max(y)),
        });
    }
    let (x_axis, y_axis) = match range {
        Some((x0, x1, y0, y1)) => {
            (linear_axis(x0, x1, 6.0), if log_y { log_axis(y0, y1) } else { linear_axis(y0, y1, 5.0) })
        }
        None => (linear_axis(0.0, 1.0, 6.0), linear_axis(0.0, 1.0, 5.0)),
    };

    // Layout: margins sized to the labels they hold.
    let y_tick_w = y_axis.ticks.iter().map(|(_, s)| text_width(s, 1)).max().unwrap_or(0) as i64;
    let last_x_tick_w = x_axis.ticks.last().map_or(0, |(_, s)| text_width(s, 1)) as i64;
    let title_scale = if text_width(title, 2) + 20 <= w { 2 } else { 1 };
    let left = 6 + if y_label.is_empty() { 0 } else { GLYPH_H + 8 } + y_tick_w + 8;
    let right = (last_x_tick_w / 2 + 6).max(16);
    let top = if title.is_empty() { 14 } else { 10 + GLYPH_H * title_scale + 10 };
    let bottom = 4 + 4 + GLYPH_H + if x_label.is_empty() { 8 } else { 10 + GLYPH_H + 8 };
    let plot = Rect { x0: left, y0: top, x1: w as i64 - right, y1: h as i64 - bottom };

    let to_px = |x: f64| plot.x0 as f64 + x_axis.frac(x) * (plot.x1 - plot.x0) as f64;
    let to_py = |y: f64| plot.y1 as f64 - y_axis.frac(if log_y { y.log10() } else { y }) * (plot.y1 - plot.y0) as f64;

    // Grid lines, ticks and tick labels.
    for (t, label) in &x_axis.ticks {
        let x = to_px(*t).floor() as i64;
        canvas.fill(Rect { x0: x, y0: plot.y0, x1: x + 1, y1: plot.y1 }, GRID);
        canvas.fill(Rect { x0: x, y0: plot.y1, x1: x + 1, y1: plot.y1 + 4 }, FRAME);
        canvas.text(x - text_width(label, 1) as i64 / 2, plot.y1 + 8, label, INK, 1);
    }
    for (t, label) in &y_axis.ticks {
        let y = (plot.y1 as f64 - y_axis.frac(*t) * (plot.y1 - plot.y0) as f64).floor() as i64;
        canvas.fill(Rect { x0: plot.x0, y0: y, x1: plot.x1, y1: y + 1 }, GRID);
        canvas.fill(Rect { x0: plot.x0 - 4, y0: y, x1: plot.x0, y1: y + 1 }, FRAME);
        canvas.text(plot.x0 - 6 - text_width(label, 1) as i64, y - GLYPH_H / 2, label, INK, 1);
    }

    // The series, each rendered as a coverage mask first so overlapping segments of one line do
    // not darken its joints, then blended over what is already drawn.
    let mut coverage = vec![0f32; w * h];
    for (i, (_, points)) in series.iter().enumerate() {
        let (colour, line_width) = series_style(i, series.len());
        coverage.fill(0.0);
        let mapped: Vec<Option<(f64, f64)>> =
            points.iter().map(|p| usable(p).then(|| (to_px(p.0), to_py(p.1)))).collect();
        for (j, p) in mapped.iter().enumerate() {
            let Some(a) = *p else { continue };
            let prev = j.checked_sub(1).and_then(|k| mapped[k]);
            let next = mapped.get(j + 1).copied().flatten();
            if let Some(b) = next {
                stroke(&mut coverage, w, plot, a, b, line_width / 2.0);
            } else if prev.is_none() {
                stroke(&mut coverage, w, plot, a, a, 2.0);
            }
        }
        canvas.blend_mask(&coverage, colour);
    }

    // Frame on top of the data's edges.
    canvas.outline(Rect { x0: plot.x0 - 1, y0: plot.y0 - 1, x1: plot.x1 + 1, y1: plot.y1 + 1 }, FRAME);
    if range.is_none() {
        let msg = "no data";
        let (cx, cy) = ((plot.x0 + plot.x1) / 2, (plot.y0 + plot.y1) / 2);
        canvas.text(cx - text_width(msg, 2) as i64 / 2, cy - GLYPH_H, msg, INK, 2);
    }

    // Legend, top right inside the frame.
    let named: Vec<(usize, &str)> =
        series.iter().enumerate().filter(|(_, (name, _))| !name.is_empty()).map(|(i, (name, _))| (i, *name)).collect();
    if !named.is_empty() {
        let name_w = named.iter().map(|(_, s)| text_width(s, 1)).max().unwrap_or(0) as i64;
        let bw = 8 + 20 + 6 + name_w + 8;
        let bh = 6 + 12 * named.len() as i64;
        let b = Rect { x0: plot.x1 - 8 - bw, y0: plot.y0 + 8, x1: plot.x1 - 8, y1: plot.y0 + 8 + bh };
        canvas.fill(b, WHITE);
        canvas.outline(b, [170, 170, 170]);
        for (row, (i, name)) in named.iter().enumerate() {
            let (colour, _) = series_style(*i, series.len());
            let y = b.y0 + 6 + 12 * row as i64;
            canvas.fill(Rect { x0: b.x0 + 8, y0: y + 2, x1: b.x0 + 28, y1: y + 5 }, colour);
            canvas.text(b.x0 + 34, y, name, INK, 1);
        }
    }

    // Title and axis labels.
    canvas.text((w as i64 - text_width(title, title_scale) as i64) / 2, 10, title, INK, title_scale);
    let x_label_y = plot.y1 + 8 + GLYPH_H + 10;
    canvas.text((plot.x0 + plot.x1 - text_width(x_label, 1) as i64) / 2, x_label_y, x_label, INK, 1);
    canvas.text_up(6, (plot.y0 + plot.y1 + text_width(y_label, 1) as i64) / 2, y_label, INK);

    (w, h, canvas.rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn decode_png(path: &Path) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(fs::File::open(path).unwrap()).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    /// A tiny deterministic generator, so the tests need no `rand`.
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn line_plot_writes_valid_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 7;
        let raw: Vec<(f64, f64)> =
            (0..2000).map(|i| (i as f64, 0.05 + 0.9 * (-(i as f64) / 300.0).exp() * lcg(&mut seed))).collect();
        let mut ema = raw[0].1;
        let smooth: Vec<(f64, f64)> = raw
            .iter()
            .map(|&(x, y)| {
                ema = 0.98 * ema + 0.02 * y;
                (x, ema)
            })
            .collect();
        let with_bad = [(0.0, 1.0), (1.0, f64::NAN), (2.0, -1.0), (3.0, 0.0), (4.0, 0.5), (5.0, f64::INFINITY)];
        type Case<'a> = (&'a str, Vec<(&'a str, &'a [(f64, f64)])>, bool);
        let cases: Vec<Case> = vec![
            ("linear.png", vec![("loss", &raw[..]), ("ema", &smooth[..])], false),
            ("log.png", vec![("loss", &raw[..]), ("ema", &smooth[..])], true),
            ("empty.png", vec![], true),
            ("empty_series.png", vec![("loss", &[][..])], false),
            ("single.png", vec![("one point", &[(3.0, 2.0)][..])], false),
            ("single_log.png", vec![("", &[(3.0, 2.0)][..])], true),
            ("bad_values.png", vec![("bad", &with_bad[..])], true),
            ("all_nonpositive.png", vec![("zero", &[(0.0, 0.0), (1.0, -2.0)][..])], true),
            ("flat.png", vec![("flat", &[(0.0, 0.5), (1.0, 0.5)][..])], false),
            ("huge.png", vec![("huge", &[(-1e300, -1e308), (1e300, 1e308)][..])], false),
            ("tiny_log.png", vec![("narrow", &[(0.0, 0.05), (1.0, 0.0501)][..])], true),
        ];
        for (name, series, log_y) in &cases {
            let path = dir.path().join(name);
            fs::write(&path, line_plot_png(series, "Training loss (MSE)", "step", "loss", *log_y).unwrap()).unwrap();
            let (info, data) = decode_png(&path);
            assert_eq!((info.width as usize, info.height as usize), PLOT_SIZE, "{name}");
            assert_eq!(info.color_type, png::ColorType::Rgb, "{name}");
            assert_eq!(data.len(), PLOT_SIZE.0 * PLOT_SIZE.1 * 3);
        }
        // Something blue was drawn for the smoothed series.
        let (_, _, rgb) = line_plot_pixels(&[("a", &raw[..]), ("b", &smooth[..])], "", "", "", false);
        assert!(rgb.chunks_exact(3).any(|p| p == DARK_BLUE));
    }
}
