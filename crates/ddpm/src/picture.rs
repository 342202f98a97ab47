//! Pictures of digits: a grid of samples (PNG), the denoising chain as an
//! animation (GIF) and as a strip (PNG, one row per image), with nothing
//! beyond the `png` and `gif` encoders.
//!
//! ```
//! use ddpm::picture;
//! use ddpm_tensor::Tensor;
//!
//! // Ten 28x28 images, as Pipeline::sample returns them: [n, 1, 28, 28] in [-1, 1].
//! let images = Tensor::from_vec((0..10 * 784).map(|i| (i % 7) as f32 / 3.0 - 1.0).collect(), [10, 1, 28, 28])?;
//! # let dir = tempfile::tempdir().unwrap();
//! # let out = dir.path().join("digits.png");
//! picture::grid_png(&out, &images, 10, 2)?; // one row of ten, each pixel 2x2
//! # Ok::<(), ddpm::picture::PictureError>(())
//! ```
//!
//! Images come in as the model sees them: a tensor [n, 1, h, w] (or
//! [n, h, w]) of grey values in [-1, 1], on any device. A value `v` becomes
//! the grey level `round((clamp(v) + 1) * 127.5)`, so -1 is black (0) and 1 is
//! white (255); NaN becomes black rather than an error, so that a diverged
//! sample is still visible in the picture.
//!
//! Every file is encoded in memory and then written atomically
//! ([`ddpm_nn::fs::write_atomically`]): a picture on disk is always a whole
//! picture. The `encode_*` functions hand back the encoded bytes instead, for
//! a caller that writes several files only once all of them are made.

use std::path::{Path, PathBuf};

use ddpm_nn::fs::write_atomically;
use ddpm_tensor::{Device, Tensor, TensorError};
use thiserror::Error;

/// Gap between tiles, and border around the grid, in output pixels (not
/// scaled with `scale`): enough to tell digits apart without wasting room.
pub const GAP: usize = 2;

/// Grey level of the gap. MNIST digits are white on black, so a black gap
/// would merge with the digits' own background; mid-grey keeps the tile edges
/// visible.
pub const BACKGROUND: u8 = 128;

/// The most pixels a picture may have (a guard against absurd arguments, far
/// above any grid of digits we make): 256 megapixels.
const MAX_PIXELS: usize = 1 << 28;

#[derive(Debug, Error)]
pub enum PictureError {
    /// The images, or the layout asked for, cannot make a picture.
    #[error("{0}")]
    Layout(String),
    #[error("cannot encode the {format}: {reason}")]
    Encode { format: &'static str, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

type Result<T> = std::result::Result<T, PictureError>;

/// A picture in memory: `width` x `height` pixels, row-major, one byte per
/// channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    pub colour: Colour,
    pub data: Vec<u8>,
}

/// What a pixel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// One grey byte.
    Grey,
    /// Red, green, blue.
    Rgb,
}

/// Maps a model value in [-1, 1] to a grey level; see the module docs.
pub fn to_grey(v: f32) -> u8 {
    // `as u8` saturates, and maps NaN to 0.
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Writes `images` [n, 1, h, w] as a grey PNG grid of `cols` columns, each
/// pixel `scale` x `scale`; see [`grid_pixels`] for the layout.
pub fn grid_png(path: &Path, images: &Tensor, cols: usize, scale: usize) -> Result<()> {
    write(path, &encode_grid_png(images, cols, scale)?)
}

/// [`grid_png`]'s file, in memory.
pub fn encode_grid_png(images: &Tensor, cols: usize, scale: usize) -> Result<Vec<u8>> {
    let (values, geometry) = host_images(images)?;
    encode_png(&grid_pixels(&values, geometry, cols, scale)?)
}

/// Writes a denoising strip: one row per image, one column per frame of its
/// chain (from noise on the left to the sample on the right, if `frames` is
/// in sampling order). Every frame is [n, 1, h, w].
pub fn strip_png(path: &Path, frames: &[Tensor], scale: usize) -> Result<()> {
    write(path, &encode_strip_png(frames, scale)?)
}

/// [`strip_png`]'s file, in memory.
pub fn encode_strip_png(frames: &[Tensor], scale: usize) -> Result<Vec<u8>> {
    let (frames, geometry) = host_frames(frames)?;
    let strip = strip_images(&frames, geometry);
    let count = frames.len();
    encode_png(&grid_pixels(&strip, Geometry { n: geometry.n * count, ..geometry }, count, scale)?)
}

/// Writes an animated grey GIF, one grid (as [`grid_pixels`]) per frame,
/// `delay_cs` hundredths of a second apart, looping forever. The last frame
/// (the finished samples) is held three times as long, so the eye gets to
/// rest on the result before the loop restarts.
///
/// The palette is the 256 greys, so grey level = palette index and nothing
/// is quantised. Browsers treat delays below 2 cs as 10 cs; use at least 2.
pub fn gif(path: &Path, frames: &[Tensor], cols: usize, scale: usize, delay_cs: u16) -> Result<()> {
    write(path, &encode_gif(frames, cols, scale, delay_cs)?)
}

/// The width and height of [`gif`]'s frames: [`grid_size`]'s, or an error if
/// either is more than the 65,535 pixels a GIF can be.
pub fn gif_size(geometry: Geometry, cols: usize, scale: usize) -> Result<(u16, u16)> {
    let (width, height) = grid_size(geometry, cols, scale)?;
    match (u16::try_from(width), u16::try_from(height)) {
        (Ok(width), Ok(height)) => Ok((width, height)),
        _ => Err(PictureError::Layout(format!("a GIF of {width}x{height} pixels: larger than a GIF can be (65535)"))),
    }
}

/// [`gif`]'s file, in memory.
pub fn encode_gif(frames: &[Tensor], cols: usize, scale: usize, delay_cs: u16) -> Result<Vec<u8>> {
    let (frames, geometry) = host_frames(frames)?;
    let (width, height) = gif_size(geometry, cols, scale)?;
    let encode_error = |e: gif::EncodingError| PictureError::Encode { format: "GIF", reason: e.to_string() };
    let palette: Vec<u8> = (0..=255u8).flat_map(|g| [g, g, g]).collect();
    let mut encoder: Option<gif::Encoder<Vec<u8>>> = None;
    for (f, values) in frames.iter().enumerate() {
        let grid = grid_pixels(values, geometry, cols, scale)?;
        let e = match encoder.as_mut() {
            Some(e) => e,
            None => {
                let mut e = gif::Encoder::new(Vec::new(), width, height, &palette).map_err(encode_error)?;
                e.set_repeat(gif::Repeat::Infinite).map_err(encode_error)?;
                encoder.insert(e)
            }
        };
        let mut frame = gif::Frame::from_indexed_pixels(width, height, grid.data, None);
        frame.delay = if f + 1 == frames.len() { delay_cs.saturating_mul(3) } else { delay_cs };
        e.write_frame(&frame).map_err(encode_error)?;
    }
    // `into_inner` writes the GIF trailer and hands back the bytes.
    encoder
        .expect("host_frames refuses an empty chain")
        .into_inner()
        .map_err(|e| PictureError::Encode { format: "GIF", reason: e.to_string() })
}

/// The size of each of `n` images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

/// The width and height in pixels of a grid of `geometry.n` images of
/// `h` x `w` in `cols` columns at `scale`, or an error if any is zero or the
/// grid would exceed 2^28 pixels (268 million: a quarter of a gigabyte of
/// grey, far past what a viewer shows): a caller can check this before it
/// makes the images.
pub fn grid_size(geometry: Geometry, cols: usize, scale: usize) -> Result<(usize, usize)> {
    let Geometry { n, h, w } = geometry;
    let layout = |reason: String| Err(PictureError::Layout(reason));
    if n == 0 || h == 0 || w == 0 || cols == 0 || scale == 0 {
        return layout(format!(
            "an image grid needs n, h, w, cols and scale all positive (got n={n}, h={h}, w={w}, cols={cols}, scale={scale})"
        ));
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let side = |count: usize, tile: usize| {
        tile.checked_mul(scale)?.checked_add(GAP)?.checked_mul(count)?.checked_add(GAP).filter(|&s| s <= MAX_PIXELS)
    };
    let (Some(width), Some(height)) = (side(cols, w), side(rows, h)) else {
        return layout(format!("an image grid of {rows}x{cols} images of {h}x{w} at scale {scale} is too large"));
    };
    if width.checked_mul(height).is_none_or(|p| p > MAX_PIXELS) {
        return layout(format!(
            "an image grid of {width}x{height} pixels is too large (at most {MAX_PIXELS} pixels); use a smaller --scale \
             or fewer images"
        ));
    }
    Ok((width, height))
}

/// Lays out `n` images of `h` x `w` (`values`: row-major, one after the
/// other) in a grid of `cols` columns (fewer if `n < cols`), each pixel
/// repeated `scale` x `scale` times (nearest neighbour), tiles separated and
/// framed by [`GAP`] pixels of [`BACKGROUND`].
///
/// The grid's size in pixels is [`grid_size`]'s; image `k` has its top-left
/// corner at `x = GAP + (k % cols) * (w * scale + GAP)`,
/// `y = GAP + (k / cols) * (h * scale + GAP)`.
pub fn grid_pixels(values: &[f32], geometry: Geometry, cols: usize, scale: usize) -> Result<Pixels> {
    let Geometry { n, h, w } = geometry;
    let (width, height) = grid_size(geometry, cols, scale)?;
    if h * w * n != values.len() {
        return Err(PictureError::Layout(format!(
            "an image grid: {} values given for {n} images of {h}x{w}",
            values.len()
        )));
    }
    let cols = cols.min(n);
    let (tile_w, tile_h) = (w * scale, h * scale);

    let mut data = vec![BACKGROUND; width * height];
    for (k, image) in values.chunks_exact(h * w).enumerate() {
        let x0 = GAP + (k % cols) * (tile_w + GAP);
        let y0 = GAP + (k / cols) * (tile_h + GAP);
        for (y, row) in image.chunks_exact(w).enumerate() {
            let top = (y0 + y * scale) * width + x0;
            // Fill the first output row of this image row, then copy it scale - 1 times.
            for (x, &v) in row.iter().enumerate() {
                data[top + x * scale..top + (x + 1) * scale].fill(to_grey(v));
            }
            for dy in 1..scale {
                data.copy_within(top..top + tile_w, top + dy * width);
            }
        }
    }
    Ok(Pixels { width, height, colour: Colour::Grey, data })
}

/// Encodes `pixels` as a PNG and writes it atomically.
pub fn write_png(path: &Path, pixels: &Pixels) -> Result<()> {
    write(path, &encode_png(pixels)?)
}

/// Encodes `pixels` as a PNG, in memory.
pub fn encode_png(pixels: &Pixels) -> Result<Vec<u8>> {
    let encode_error = |e: png::EncodingError| PictureError::Encode { format: "PNG", reason: e.to_string() };
    let (Ok(width), Ok(height)) = (u32::try_from(pixels.width), u32::try_from(pixels.height)) else {
        return Err(PictureError::Layout(format!(
            "a picture of {}x{} pixels is too large for a PNG",
            pixels.width, pixels.height
        )));
    };
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(match pixels.colour {
        Colour::Grey => png::ColorType::Grayscale,
        Colour::Rgb => png::ColorType::Rgb,
    });
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(encode_error)?;
    writer.write_image_data(&pixels.data).map_err(encode_error)?;
    writer.finish().map_err(encode_error)?;
    Ok(bytes)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes).map_err(|source| PictureError::Write { path: path.to_owned(), source })
}

/// The values of `images` [n, 1, h, w] or [n, h, w] on the host, and their
/// geometry.
fn host_images(images: &Tensor) -> Result<(Vec<f32>, Geometry)> {
    let geometry = match *images.dims() {
        [n, 1, h, w] | [n, h, w] => Geometry { n, h, w },
        _ => {
            return Err(PictureError::Layout(format!(
                "pictures take grey images [n, 1, h, w], not a tensor of shape {:?}",
                images.dims()
            )))
        }
    };
    Ok((images.to(Device::Cpu)?.to_vec(), geometry))
}

/// Every frame's values on the host; the frames must be alike and there
/// must be at least one.
fn host_frames(frames: &[Tensor]) -> Result<(Vec<Vec<f32>>, Geometry)> {
    let mut values = Vec::with_capacity(frames.len());
    let mut geometry = None;
    for (f, frame) in frames.iter().enumerate() {
        let (v, g) = host_images(frame)?;
        match geometry {
            None => geometry = Some(g),
            Some(first) if g != first => {
                return Err(PictureError::Layout(format!("frame {f} is {g:?}, frame 0 is {first:?}")));
            }
            Some(_) => {}
        }
        values.push(v);
    }
    let geometry = geometry.ok_or_else(|| PictureError::Layout("a denoising chain needs at least one frame".into()))?;
    Ok((values, geometry))
}

/// Reorders denoising frames so that image `i`'s chain becomes row `i`:
/// `frames[f]` holds `n` images; the result holds `n * frames.len()` images,
/// image `i` of frame `f` at `i * F + f`.
fn strip_images(frames: &[Vec<f32>], geometry: Geometry) -> Vec<f32> {
    let per_image = geometry.h * geometry.w;
    let mut out = Vec::with_capacity(per_image * geometry.n * frames.len());
    for i in 0..geometry.n {
        for frame in frames {
            out.extend_from_slice(&frame[i * per_image..(i + 1) * per_image]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn decode_png(path: &Path) -> (png::OutputInfo, Vec<u8>) {
        let decoder = png::Decoder::new(fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    fn images(values: Vec<f32>, n: usize, h: usize, w: usize) -> Tensor {
        Tensor::from_vec(values, [n, 1, h, w]).unwrap()
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
        let mut values = vec![-1.0f32; n * h * w];
        // Image 3 (row 1, column 1) gets a gradient pixel pattern; others stay black.
        let marked: Vec<f32> = vec![1.0, 0.0, -1.0, -0.5, 0.5, 1.0];
        values[3 * h * w..4 * h * w].copy_from_slice(&marked);
        let grid = grid_pixels(&values, Geometry { n, h, w }, cols, scale).unwrap();
        let (width, px) = (grid.width, &grid.data);
        assert_eq!(width, GAP + cols * (w * scale + GAP));
        assert_eq!(grid.height, GAP + 3 * (h * scale + GAP));
        assert_eq!(px.len(), width * grid.height);
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
        let g = Geometry { n: 1, h: 2, w: 3 };
        assert!(grid_pixels(&[0.0; 5], g, 1, 1).is_err());
        assert!(grid_pixels(&[], Geometry { n: 0, ..g }, 1, 1).is_err());
        assert!(grid_pixels(&[0.0; 6], g, 0, 1).is_err());
        assert!(grid_pixels(&[0.0; 6], g, 1, 0).is_err());
        assert!(grid_pixels(&[0.0; 6], g, 1, usize::MAX).is_err());
        assert!(grid_pixels(&[], Geometry { n: 2, h: usize::MAX, w: 2 }, 1, 1).is_err());
        // More columns than images: the grid shrinks to the images.
        assert_eq!(grid_pixels(&[0.0; 6], g, 8, 1).unwrap().width, 3 + 2 * GAP);
        // Only grey images.
        let rgb = Tensor::from_vec(vec![0.0; 12], [1, 3, 2, 2]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(grid_png(&dir.path().join("x.png"), &rgb, 1, 1), Err(PictureError::Layout(_))));
    }

    #[test]
    fn grid_png_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let values: Vec<f32> = (0..16 * 28 * 28).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
        grid_png(&path, &images(values.clone(), 16, 28, 28), 4, 2).unwrap();
        let (info, data) = decode_png(&path);
        let grid = grid_pixels(&values, Geometry { n: 16, h: 28, w: 28 }, 4, 2).unwrap();
        assert_eq!((info.width as usize, info.height as usize), (grid.width, grid.height));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(data, grid.data);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left behind");
        // The bytes in memory are the file's.
        assert_eq!(encode_grid_png(&images(values.clone(), 16, 28, 28), 4, 2).unwrap(), fs::read(&path).unwrap());
    }

    #[test]
    fn strip_rows_are_chains() {
        let g = Geometry { n: 2, h: 1, w: 1 };
        let frames = vec![vec![-1.0, 1.0], vec![0.0, -1.0], vec![1.0, 0.0]];
        assert_eq!(strip_images(&frames, g), vec![-1.0, 0.0, 1.0, 1.0, -1.0, 0.0]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strip.png");
        let tensors: Vec<Tensor> = frames.iter().map(|f| images(f.clone(), 2, 1, 1)).collect();
        strip_png(&path, &tensors, 4).unwrap();
        let (info, _) = decode_png(&path);
        assert_eq!(info.width as usize, GAP + 3 * (4 + GAP));
        assert_eq!(info.height as usize, GAP + 2 * (4 + GAP));
        assert!(strip_png(&path, &[], 4).is_err());
        assert!(strip_png(&path, &[images(vec![0.0; 2], 2, 1, 1), images(vec![0.0; 3], 3, 1, 1)], 4).is_err());
    }

    #[test]
    fn gif_has_every_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.gif");
        let (n, h, w) = (3, 4, 5);
        let values: Vec<Vec<f32>> =
            (0..7).map(|f| (0..n * h * w).map(|i| ((i + f) % 11) as f32 / 5.0 - 1.0).collect()).collect();
        let frames: Vec<Tensor> = values.iter().map(|v| images(v.clone(), n, h, w)).collect();
        gif(&path, &frames, 2, 3, 5).unwrap();

        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::Indexed);
        let mut decoder = options.read_info(fs::File::open(&path).unwrap()).unwrap();
        let first = grid_pixels(&values[0], Geometry { n, h, w }, 2, 3).unwrap();
        assert_eq!((decoder.width() as usize, decoder.height() as usize), (first.width, first.height));
        assert_eq!(decoder.repeat(), gif::Repeat::Infinite);
        let mut delays = Vec::new();
        while let Some(frame) = decoder.read_next_frame().unwrap() {
            if delays.is_empty() {
                assert_eq!(&frame.buffer[..], &first.data[..], "indices are grey levels");
            }
            delays.push(frame.delay);
        }
        assert_eq!(delays, [5, 5, 5, 5, 5, 5, 15]);

        assert!(gif(&path, &[], 2, 3, 5).is_err());
        assert!(gif(&dir.path().join("big.gif"), &frames[..1], 1, 20_000, 5).is_err());
    }
}
