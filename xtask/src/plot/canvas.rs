//! An RGB picture to draw a plot on: filled rectangles, outlines, text in the
//! bitmap font (upright and turned), and anti-aliased strokes blended through
//! a coverage mask. Drawing is clipped: nothing lands outside the picture and
//! nothing panics.

use super::font::{glyph, ADVANCE, GLYPH_W};

/// A colour: red, green, blue.
pub type Rgb = [u8; 3];

/// Adds to `coverage` (max, not sum) an anti-aliased stroke of half-width `hw` from `a` to `b`
/// (pixel coordinates, pixel `(x, y)` covering `[x, x+1) × [y, y+1)`), clipped to `clip`.
/// Coverage falls off linearly over the one pixel around the stroke's edge.
pub(super) fn stroke(coverage: &mut [f32], width: usize, clip: Rect, a: (f64, f64), b: (f64, f64), hw: f64) {
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
pub(super) struct Rect {
    pub x0: i64,
    pub y0: i64,
    pub x1: i64,
    pub y1: i64,
}

/// An RGB picture with clipped drawing: nothing drawn outside it, nothing panics.
pub(super) struct Canvas {
    w: usize,
    h: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(w: usize, h: usize, background: Rgb) -> Canvas {
        Canvas { w, h, rgb: background.repeat(w * h) }
    }

    pub fn blend(&mut self, x: i64, y: i64, colour: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 || alpha <= 0.0 {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        for (dst, &src) in self.rgb[i..i + 3].iter_mut().zip(&colour) {
            *dst = (*dst as f32 + (src as f32 - *dst as f32) * alpha.min(1.0)).round() as u8;
        }
    }

    pub fn fill(&mut self, r: Rect, colour: Rgb) {
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                self.blend(x, y, colour, 1.0);
            }
        }
    }

    /// A one-pixel border just inside `r`.
    pub fn outline(&mut self, r: Rect, colour: Rgb) {
        self.fill(Rect { y1: r.y0 + 1, ..r }, colour);
        self.fill(Rect { y0: r.y1 - 1, ..r }, colour);
        self.fill(Rect { x1: r.x0 + 1, ..r }, colour);
        self.fill(Rect { x0: r.x1 - 1, ..r }, colour);
    }

    /// Blends `colour` over the picture with per-pixel alpha `mask` (same size as the picture).
    pub fn blend_mask(&mut self, mask: &[f32], colour: Rgb) {
        for (i, &a) in mask.iter().enumerate() {
            if a > 0.0 {
                self.blend((i % self.w) as i64, (i / self.w) as i64, colour, a);
            }
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale`×`scale`.
    pub fn text(&mut self, x: i64, y: i64, text: &str, colour: Rgb, scale: i64) {
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
    pub fn text_up(&mut self, x: i64, y: i64, text: &str, colour: Rgb) {
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
