//! Pictures out: sample grids (PNG), denoising animations (GIF), denoising strips for the README
//! (PNG), and the training-loss plot (PNG), with nothing beyond the `png` and `gif` encoders.
//!
//! Images come in as the model sees them: `n` grayscale `h`×`w` images, row-major, one after
//! the other, values in [-1, 1]. A value `v` becomes the grey level `round((clamp(v) + 1) * 127.5)`,
//! so -1 is black (0) and 1 is white (255); NaN becomes black rather than an error, so that a
//! diverged sample is still visible in the picture.
//!
//! Every file is encoded in memory and then written atomically (temporary file + rename, see
//! [`crate::npy::write_file_atomically`]): a picture on disk is always a whole picture.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::npy::write_file_atomically;

/// Gap between tiles, and border around the grid, in output pixels (not scaled with `scale`):
/// enough to tell digits apart without wasting room.
pub const GAP: usize = 2;

/// Grey level of the gap. MNIST digits are white on black, so a black gap would merge with the
/// digits' own background; mid-grey keeps the tile edges visible.
pub const BACKGROUND: u8 = 128;

/// The most pixels a picture may have (a guard against absurd arguments, far above any grid of
/// digits we make): 256 megapixels.
const MAX_PIXELS: usize = 1 << 28;

/// Maps a model value in [-1, 1] to a grey level; see the module docs.
pub fn to_grey(v: f32) -> u8 {
    // `as u8` saturates, and maps NaN to 0.
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Lays out `n` images of `h`×`w` in a grid of `cols` columns (fewer if `n < cols`), each pixel
/// repeated `scale`×`scale` times (nearest neighbour), tiles separated and framed by [`GAP`]
/// pixels of [`BACKGROUND`].
///
/// Returns `(width, height, pixels)` with one grey byte per pixel, row-major. Image `k` has its
/// top-left corner at `x = GAP + (k % cols) * (w * scale + GAP)`,
/// `y = GAP + (k / cols) * (h * scale + GAP)`.
pub fn grid_pixels(
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    cols: usize,
    scale: usize,
) -> Result<(usize, usize, Vec<u8>)> {
    if n == 0 || h == 0 || w == 0 || cols == 0 || scale == 0 {
        bail!("image grid needs n, h, w, cols and scale all positive (got n={n}, h={h}, w={w}, cols={cols}, scale={scale})");
    }
    let per_image = h.checked_mul(w).context("image size overflows")?;
    if n.checked_mul(per_image) != Some(images.len()) {
        bail!("image grid: {} values given for {n} images of {h}x{w}", images.len());
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let (tile_w, tile_h) = (w.checked_mul(scale), h.checked_mul(scale));
    let side = |count: usize, tile: Option<usize>| {
        tile?.checked_add(GAP)?.checked_mul(count)?.checked_add(GAP).filter(|&s| s <= MAX_PIXELS)
    };
    let (Some(width), Some(height)) = (side(cols, tile_w), side(rows, tile_h)) else {
        bail!("image grid of {rows}x{cols} images of {h}x{w} at scale {scale} is too large");
    };
    if width.checked_mul(height).is_none_or(|p| p > MAX_PIXELS) {
        bail!("image grid of {width}x{height} pixels is too large");
    }
    let (tile_w, tile_h) = (w * scale, h * scale);

    let mut pixels = vec![BACKGROUND; width * height];
    for (k, image) in images.chunks_exact(per_image).enumerate() {
        let x0 = GAP + (k % cols) * (tile_w + GAP);
        let y0 = GAP + (k / cols) * (tile_h + GAP);
        for (y, row) in image.chunks_exact(w).enumerate() {
            let top = (y0 + y * scale) * width + x0;
            // Fill the first output row of this image row, then copy it scale - 1 times.
            for (x, &v) in row.iter().enumerate() {
                pixels[top + x * scale..top + (x + 1) * scale].fill(to_grey(v));
            }
            for dy in 1..scale {
                pixels.copy_within(top..top + tile_w, top + dy * width);
            }
        }
    }
    Ok((width, height, pixels))
}

/// Writes `n` images as a grayscale PNG grid; see [`grid_pixels`] for the layout.
pub fn grid_png(path: &Path, images: &[f32], n: usize, h: usize, w: usize, cols: usize, scale: usize) -> Result<()> {
    let (width, height, pixels) = grid_pixels(images, n, h, w, cols, scale)?;
    let bytes = encode_png(width, height, png::ColorType::Grayscale, &pixels)?;
    write_file_atomically(path, &bytes)
}

/// Reorders denoising frames so that image `i`'s chain becomes row `i`: `frames[f]` holds `n`
/// images; the result holds `n * frames.len()` images, image `i` of frame `f` at `i * F + f`.
pub fn strip_images(frames: &[Vec<f32>], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
    let per_image = h.checked_mul(w).context("image size overflows")?;
    let per_frame = n.checked_mul(per_image).context("frame size overflows")?;
    if frames.is_empty() {
        bail!("denoising strip needs at least one frame");
    }
    if let Some((f, frame)) = frames.iter().enumerate().find(|(_, fr)| fr.len() != per_frame) {
        bail!("frame {f} has {} values, expected {n} images of {h}x{w}", frame.len());
    }
    let mut out = Vec::with_capacity(per_frame * frames.len());
    for i in 0..n {
        for frame in frames {
            out.extend_from_slice(&frame[i * per_image..(i + 1) * per_image]);
        }
    }
    Ok(out)
}

/// Writes a denoising strip: one row per image, one column per chosen frame of its chain (from
/// noise on the left to the final sample on the right, if `frames` is in sampling order).
pub fn strip_png(path: &Path, frames: &[Vec<f32>], n: usize, h: usize, w: usize, scale: usize) -> Result<()> {
    let images = strip_images(frames, n, h, w)?;
    grid_png(path, &images, n * frames.len(), h, w, frames.len(), scale)
}

/// Writes an animated grayscale GIF, one grid (as [`grid_pixels`]) per frame, `delay_cs`
/// hundredths of a second apart, looping forever. The last frame (the finished samples) is
/// held three times as long, so the eye gets to rest on the result before the loop restarts.
///
/// The palette is the 256 greys, so grey level = palette index and nothing is quantised.
/// Browsers treat delays below 2 cs as 10 cs; use at least 2.
// The grid's geometry as plain arguments, like `grid_png`, rather than a one-use struct.
#[allow(clippy::too_many_arguments)]
pub fn gif(
    path: &Path,
    frames: &[Vec<f32>],
    n: usize,
    h: usize,
    w: usize,
    cols: usize,
    scale: usize,
    delay_cs: u16,
) -> Result<()> {
    if frames.is_empty() {
        bail!("{}: an animation needs at least one frame", path.display());
    }
    let palette: Vec<u8> = (0..=255u8).flat_map(|g| [g, g, g]).collect();
    let mut encoder: Option<gif::Encoder<Vec<u8>>> = None;
    for (f, images) in frames.iter().enumerate() {
        let (width, height, pixels) =
            grid_pixels(images, n, h, w, cols, scale).with_context(|| format!("{}: frame {f}", path.display()))?;
        let (Ok(gw), Ok(gh)) = (u16::try_from(width), u16::try_from(height)) else {
            bail!("{}: {width}x{height} pixels is larger than a GIF can be (65535)", path.display());
        };
        let e = match encoder.as_mut() {
            Some(e) => e,
            None => {
                let mut e = gif::Encoder::new(Vec::new(), gw, gh, &palette)?;
                e.set_repeat(gif::Repeat::Infinite)?;
                encoder.insert(e)
            }
        };
        let mut frame = gif::Frame::from_indexed_pixels(gw, gh, pixels, None);
        frame.delay = if f + 1 == frames.len() { delay_cs.saturating_mul(3) } else { delay_cs };
        e.write_frame(&frame)?;
    }
    // `into_inner` writes the GIF trailer and hands back the bytes.
    let bytes = match encoder {
        Some(e) => e.into_inner()?,
        None => bail!("{}: an animation needs at least one frame", path.display()),
    };
    write_file_atomically(path, &bytes)
}

/// Encodes 8-bit pixels (grey or RGB, per `color`) as a PNG in memory.
fn encode_png(width: usize, height: usize, color: png::ColorType, pixels: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, u32::try_from(width)?, u32::try_from(height)?);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// The line plot

/// Size of [`line_plot_png`]'s picture.
pub const PLOT_SIZE: (usize, usize) = (640, 400);

type Rgb = [u8; 3];
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

/// Draws a line plot of `series` (name, points) as a 640×400 RGB PNG: frame, light grid lines
/// and labelled ticks at "nice" values, anti-aliased lines, a legend (top right) naming the
/// series with a non-empty name, the title and the axis labels.
///
/// Points with a non-finite coordinate are skipped, and with `log_y` so are points with
/// `y <= 0`; a skipped point breaks the line there. An isolated point is drawn as a dot. With
/// no drawable point at all the plot still has its axes (over [0, 1]) and says "no data".
pub fn line_plot_png(
    path: &Path,
    series: &[(&str, &[(f64, f64)])],
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
) -> Result<()> {
    let (width, height, pixels) = line_plot_pixels(series, title, x_label, y_label, log_y);
    let bytes = encode_png(width, height, png::ColorType::Rgb, &pixels)?;
    write_file_atomically(path, &bytes)
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

/// One axis: its range in axis space (log10 of the value for a log axis) and its ticks,
/// each an axis-space position and a label.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Where axis-space value `t` lies between the ends, 0 to 1 (halved first so that ranges
    /// near the limits of f64 do not overflow to infinity).
    fn frac(&self, t: f64) -> f64 {
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
fn linear_axis(min: f64, max: f64, target: f64) -> Axis {
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
fn log_axis(min: f64, max: f64) -> Axis {
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

/// Adds to `coverage` (max, not sum) an anti-aliased stroke of half-width `hw` from `a` to `b`
/// (pixel coordinates, pixel `(x, y)` covering `[x, x+1) × [y, y+1)`), clipped to `clip`.
/// Coverage falls off linearly over the one pixel around the stroke's edge.
fn stroke(coverage: &mut [f32], width: usize, clip: Rect, a: (f64, f64), b: (f64, f64), hw: f64) {
    if ![a.0, a.1, b.0, b.1].iter().all(|v| v.is_finite()) {
        return;
    }
    let reach = hw + 1.0;
    let x0 = ((a.0.min(b.0) - reach).floor() as i64).max(clip.x0);
    let x1 = ((a.0.max(b.0) + reach).ceil() as i64).min(clip.x1);
    let y0 = ((a.1.min(b.1) - reach).floor() as i64).max(clip.y0);
    let y1 = ((a.1.max(b.1) + reach).ceil() as i64).min(clip.y1);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = if len2 > 0.0 { (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
            let (ex, ey) = (px - (a.0 + t * dx), py - (a.1 + t * dy));
            let c = (hw + 0.5 - (ex * ex + ey * ey).sqrt()).clamp(0.0, 1.0) as f32;
            let cell = &mut coverage[y as usize * width + x as usize];
            *cell = cell.max(c);
        }
    }
}

/// A rectangle of pixels, `x0..x1` × `y0..y1` (ends excluded).
#[derive(Clone, Copy)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

/// An RGB picture with clipped drawing: nothing drawn outside it, nothing panics.
struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize, background: Rgb) -> Canvas {
        Canvas { w, h, rgb: background.repeat(w * h) }
    }

    fn blend(&mut self, x: i64, y: i64, colour: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 || alpha <= 0.0 {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        for (dst, &src) in self.rgb[i..i + 3].iter_mut().zip(&colour) {
            *dst = (*dst as f32 + (src as f32 - *dst as f32) * alpha.min(1.0)).round() as u8;
        }
    }

    fn fill(&mut self, r: Rect, colour: Rgb) {
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                self.blend(x, y, colour, 1.0);
            }
        }
    }

    /// A one-pixel border just inside `r`.
    fn outline(&mut self, r: Rect, colour: Rgb) {
        self.fill(Rect { y1: r.y0 + 1, ..r }, colour);
        self.fill(Rect { y0: r.y1 - 1, ..r }, colour);
        self.fill(Rect { x1: r.x0 + 1, ..r }, colour);
        self.fill(Rect { x0: r.x1 - 1, ..r }, colour);
    }

    /// Blends `colour` over the picture with per-pixel alpha `mask` (same size as the picture).
    fn blend_mask(&mut self, mask: &[f32], colour: Rgb) {
        for (i, &a) in mask.iter().enumerate() {
            if a > 0.0 {
                self.blend((i % self.w) as i64, (i / self.w) as i64, colour, a);
            }
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale`×`scale`.
    fn text(&mut self, x: i64, y: i64, text: &str, colour: Rgb, scale: i64) {
        for (i, c) in text.chars().enumerate() {
            let gx = x + i as i64 * ADVANCE * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (0x10 >> col) != 0 {
                        let (px, py) = (gx + col * scale, y + row as i64 * scale);
                        self.fill(Rect { x0: px, y0: py, x1: px + scale, y1: py + scale }, colour);
                    }
                }
            }
        }
    }

    /// Draws `text` turned a quarter left (reading upwards, as y-axis labels do), starting at
    /// `(x, y)` = the bottom-left corner of the turned text.
    fn text_up(&mut self, x: i64, y: i64, text: &str, colour: Rgb) {
        for (i, c) in text.chars().enumerate() {
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (0x10 >> col) != 0 {
                        self.blend(x + row as i64, y - (i as i64 * ADVANCE + col), colour, 1.0);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The font

/// Glyph cell: 5 pixels wide, 7 high; characters advance by 6 (one pixel of spacing).
const GLYPH_W: i64 = 5;
const GLYPH_H: i64 = 7;
const ADVANCE: i64 = 6;

/// Width in pixels of `text` drawn at `scale` (no trailing spacing).
fn text_width(text: &str, scale: i64) -> usize {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        ((n * ADVANCE - 1) * scale) as usize
    }
}

/// The glyph for `c`: seven rows, top first, the five low bits of each row a pixel each, bit 4
/// the leftmost. Characters not in [`FONT`] are drawn as `?`.
fn glyph(c: char) -> [u8; 7] {
    FONT.iter()
        .find(|(g, _)| *g == c)
        .or_else(|| FONT.iter().find(|(g, _)| *g == '?'))
        .map_or([0; 7], |(_, rows)| *rows)
}

/// A hand-made 5×7 bitmap font in the style of the HD44780 character LCD: digits, upper and
/// lower case letters (descenders squeezed into the cell), and the punctuation that titles,
/// labels and numbers need. One line per glyph, rows top to bottom; read a row's bits as pixels.
#[rustfmt::skip]
const FONT: &[(char, [u8; 7])] = &[
    (' ', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001]),
    ('Y', [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111]),
    ('a', [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111]),
    ('b', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110]),
    ('c', [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110]),
    ('d', [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111]),
    ('e', [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110]),
    ('f', [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000]),
    ('g', [0b00000, 0b00000, 0b01111, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('h', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001]),
    ('i', [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('j', [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('k', [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010]),
    ('l', [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('m', [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001]),
    ('n', [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001]),
    ('o', [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('p', [0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('q', [0b00000, 0b00000, 0b01101, 0b10011, 0b01111, 0b00001, 0b00001]),
    ('r', [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000]),
    ('s', [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110]),
    ('t', [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110]),
    ('u', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101]),
    ('v', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100]),
    ('w', [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010]),
    ('x', [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001]),
    ('y', [0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('z', [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000]),
    (';', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000]),
    ('*', [0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000]),
    ('[', [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110]),
    (']', [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110]),
    ('<', [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010]),
    ('>', [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000]),
    ('|', [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('\'', [0b01100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('"', [0b01010, 0b01010, 0b01010, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('#', [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010]),
    ('!', [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use std::fs;

    fn decode_png(path: &Path) -> (png::OutputInfo, Vec<u8>) {
        let decoder = png::Decoder::new(fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
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
    fn grey_mapping() {
        assert_eq!(to_grey(-1.0), 0);
        assert_eq!(to_grey(1.0), 255);
        assert_eq!(to_grey(-7.0), 0);
        assert_eq!(to_grey(3.0), 255);
        assert_eq!(to_grey(0.0), 128);
        assert_eq!(to_grey(f32::NAN), 0);
    }

    #[test]
    fn grid_places_images() {
        // 5 images of 2x3 in 2 columns at scale 2: 3 rows of tiles 6 wide, 4 high.
        let (n, h, w, cols, scale) = (5, 2, 3, 2, 2);
        let mut images = vec![-1.0f32; n * h * w];
        // Image 3 (row 1, column 1) gets a gradient pixel pattern; others stay black.
        let marked: Vec<f32> = vec![1.0, 0.0, -1.0, -0.5, 0.5, 1.0];
        images[3 * h * w..4 * h * w].copy_from_slice(&marked);
        let (width, height, px) = grid_pixels(&images, n, h, w, cols, scale).unwrap();
        assert_eq!(width, GAP + cols * (w * scale + GAP));
        assert_eq!(height, GAP + 3 * (h * scale + GAP));
        assert_eq!(px.len(), width * height);
        let (x0, y0) = (GAP + (w * scale + GAP), GAP + (h * scale + GAP));
        for y in 0..h * scale {
            for x in 0..w * scale {
                let want = to_grey(marked[(y / scale) * w + x / scale]);
                assert_eq!(px[(y0 + y) * width + x0 + x], want, "({x}, {y})");
            }
        }
        assert_eq!(px[(y0 * width) + x0], 255);
        assert_eq!(px[(y0 * width) + x0 + 4], 0);
        // Gaps and the unused sixth tile are background; image 0's first pixel is black.
        assert_eq!(px[0], BACKGROUND);
        assert_eq!(px[(y0 - 1) * width + x0], BACKGROUND);
        assert_eq!(px[GAP * width + GAP], 0);
        let (x5, y5) = (GAP + (w * scale + GAP), GAP + 2 * (h * scale + GAP));
        assert_eq!(px[y5 * width + x5], BACKGROUND);
    }

    #[test]
    fn grid_refuses_bad_arguments() {
        assert!(grid_pixels(&[0.0; 5], 1, 2, 3, 1, 1).is_err());
        assert!(grid_pixels(&[], 0, 2, 3, 1, 1).is_err());
        assert!(grid_pixels(&[0.0; 6], 1, 2, 3, 0, 1).is_err());
        assert!(grid_pixels(&[0.0; 6], 1, 2, 3, 1, 0).is_err());
        assert!(grid_pixels(&[0.0; 6], 1, 2, 3, 1, usize::MAX).is_err());
        // More columns than images: the grid shrinks to the images.
        let (w, _, _) = grid_pixels(&[0.0; 6], 1, 2, 3, 8, 1).unwrap();
        assert_eq!(w, 3 + 2 * GAP);
    }

    #[test]
    fn grid_png_decodes() {
        let dir = TempDir::new("picture-png");
        let path = dir.0.join("grid.png");
        let images: Vec<f32> = (0..16 * 28 * 28).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
        grid_png(&path, &images, 16, 28, 28, 4, 2).unwrap();
        let (info, data) = decode_png(&path);
        let (w, h, px) = grid_pixels(&images, 16, 28, 28, 4, 2).unwrap();
        assert_eq!((info.width as usize, info.height as usize), (w, h));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(data, px);
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1, "no temporary left behind");
    }

    #[test]
    fn strip_rows_are_chains() {
        let (n, h, w) = (2, 1, 1);
        let frames = vec![vec![-1.0, 1.0], vec![0.0, -1.0], vec![1.0, 0.0]];
        let images = strip_images(&frames, n, h, w).unwrap();
        assert_eq!(images, vec![-1.0, 0.0, 1.0, 1.0, -1.0, 0.0]);
        assert!(strip_images(&[vec![0.0; 2], vec![0.0; 3]], n, h, w).is_err());
        assert!(strip_images(&[], n, h, w).is_err());

        let dir = TempDir::new("picture-strip");
        let path = dir.0.join("strip.png");
        strip_png(&path, &frames, n, h, w, 4).unwrap();
        let (info, _) = decode_png(&path);
        assert_eq!(info.width as usize, GAP + 3 * (4 + GAP));
        assert_eq!(info.height as usize, GAP + 2 * (4 + GAP));
    }

    #[test]
    fn gif_has_every_frame() {
        let dir = TempDir::new("picture-gif");
        let path = dir.0.join("chain.gif");
        let (n, h, w) = (3, 4, 5);
        let frames: Vec<Vec<f32>> =
            (0..7).map(|f| (0..n * h * w).map(|i| ((i + f) % 11) as f32 / 5.0 - 1.0).collect()).collect();
        gif(&path, &frames, n, h, w, 2, 3, 5).unwrap();

        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::Indexed);
        let mut decoder = options.read_info(fs::File::open(&path).unwrap()).unwrap();
        let (width, height, first) = grid_pixels(&frames[0], n, h, w, 2, 3).unwrap();
        assert_eq!((decoder.width() as usize, decoder.height() as usize), (width, height));
        assert_eq!(decoder.repeat(), gif::Repeat::Infinite);
        let mut delays = Vec::new();
        while let Some(frame) = decoder.read_next_frame().unwrap() {
            if delays.is_empty() {
                assert_eq!(&frame.buffer[..], &first[..], "indices are grey levels");
            }
            delays.push(frame.delay);
        }
        assert_eq!(delays.len(), 7);
        assert_eq!(delays[0], 5);
        assert_eq!(delays[6], 15);

        assert!(gif(&path, &[], n, h, w, 2, 3, 5).is_err());
        assert!(gif(&dir.0.join("big.gif"), &frames[..1], n, h, w, 1, 20_000, 5).is_err());
    }

    #[test]
    fn line_plot_writes_valid_pngs() {
        let dir = TempDir::new("picture-plot");
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
            let path = dir.0.join(name);
            line_plot_png(&path, series, "Training loss (MSE)", "step", "loss", *log_y).unwrap();
            let (info, data) = decode_png(&path);
            assert_eq!((info.width as usize, info.height as usize), PLOT_SIZE, "{name}");
            assert_eq!(info.color_type, png::ColorType::Rgb, "{name}");
            assert_eq!(data.len(), PLOT_SIZE.0 * PLOT_SIZE.1 * 3);
        }
        // Something blue was drawn for the smoothed series.
        let (_, _, rgb) = line_plot_pixels(&[("a", &raw[..]), ("b", &smooth[..])], "", "", "", false);
        assert!(rgb.chunks_exact(3).any(|p| p == DARK_BLUE));
    }

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

    #[test]
    fn font_is_complete_for_plots() {
        let needed = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz .,:;-+=*/%_()[]<>|'\"#!?";
        for c in needed.chars() {
            assert!(FONT.iter().any(|(g, _)| *g == c), "missing glyph {c:?}");
        }
        for (c, rows) in FONT {
            assert!(rows.iter().all(|r| r >> 5 == 0), "glyph {c:?} is wider than 5");
            assert_eq!(FONT.iter().filter(|(g, _)| g == c).count(), 1, "glyph {c:?} twice");
        }
        assert_eq!(glyph('\u{263a}'), glyph('?'));
        assert_eq!(text_width("", 1), 0);
        assert_eq!(text_width("ab", 2), 22);
    }
}
