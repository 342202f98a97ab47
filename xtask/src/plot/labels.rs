//! Column names above a grid of samples: which class each column was asked
//! for ("T-shirt/top", "Trouser", ...), for pictures in the README.

use ddpm::picture::{Colour, Pixels, GAP};

use super::canvas::{Canvas, Rgb};
use super::font::{text_width, GLYPH_H};

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [40, 40, 40];

/// `grid` (grey, tiles `tile_w` pixels wide laid out as `ddpm::picture`
/// does) with a white band on top naming each column, `names[c]` centred
/// over column c; RGB. Names wider than their column run into the gaps.
pub fn with_column_names(grid: &Pixels, tile_w: usize, names: &[&str]) -> Pixels {
    let band = GLYPH_H as usize + 8;
    let (width, height) = (grid.width, grid.height + band);
    let mut canvas = Canvas::new(width, height, WHITE);
    for (i, &g) in grid.data.iter().enumerate() {
        let at = (band * width + i) * 3;
        canvas.rgb[at..at + 3].fill(g);
    }
    for (c, name) in names.iter().enumerate() {
        let centre = GAP + c * (tile_w + GAP) + tile_w / 2;
        let x = centre as i64 - text_width(name, 1) as i64 / 2;
        canvas.text(x, 5, name, INK, 1);
    }
    Pixels { width, height, colour: Colour::Rgb, data: canvas.rgb }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm::picture::{grid_pixels, Geometry};

    #[test]
    fn names_sit_above_their_columns_and_the_grid_is_kept() {
        let (n, h, w, scale) = (3, 4, 10, 2);
        let grid = grid_pixels(&vec![1.0; n * h * w], Geometry { n, h, w }, 3, scale).unwrap();
        let named = with_column_names(&grid, w * scale, &["a", "", "b"]);
        let band = GLYPH_H as usize + 8;
        assert_eq!((named.width, named.height, named.colour), (grid.width, grid.height + band, Colour::Rgb));
        // The grid below the band, grey as it was.
        for (i, &g) in grid.data.iter().enumerate() {
            assert_eq!(named.data[(band * named.width + i) * 3..][..3], [g, g, g]);
        }
        // Ink in the band above columns 0 and 2, none above the unnamed column 1.
        let inked = |x0: usize, x1: usize| {
            (0..band).any(|y| (x0..x1).any(|x| named.data[(y * named.width + x) * 3..][..3] == INK))
        };
        let column = |c: usize| (GAP + c * (w * scale + GAP), GAP + c * (w * scale + GAP) + w * scale);
        assert!(inked(column(0).0, column(0).1));
        assert!(!inked(column(1).0, column(1).1));
        assert!(inked(column(2).0, column(2).1));
    }
}
