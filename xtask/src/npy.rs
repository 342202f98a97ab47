//! NumPy `.npy` files, read and written by hand.
//!
//! The format (<https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>) is small
//! enough that a crate would cost more than it saves:
//!
//! ```text
//! \x93NUMPY  major minor  header_len (u16 LE in v1, u32 LE in v2/v3)  header  data
//! ```
//!
//! The header is the `repr` of a Python dict, padded with spaces and ended by `\n` so that the
//! data starts at a multiple of 64 bytes:
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (16, 1, 28, 28), }`.
//!
//! What this module writes is what `np.save` writes for a C-ordered little-endian `float32`
//! array. What it reads is deliberately narrow: C order, little-endian (or byte-order-free)
//! dtypes, and exactly the sizes the header promises; everything else is refused with a
//! one-line message that names the file, rather than guessed at. The header parser understands
//! the Python literal syntax NumPy produces (single or double quoted strings, `True`/`False`,
//! tuples of integers including `(5,)` and `()`, trailing commas), not arbitrary Python.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// The six magic bytes every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// NumPy aligns the start of the data to this many bytes (64 since NumPy 1.14; older files
/// used 16, which we still read since we only need `header_len`).
const ALIGN: usize = 64;

/// Writes `data` (C order, shape `shape`) as a little-endian `float32` `.npy` file.
///
/// The file appears atomically: it is written to a temporary file in the same directory and
/// renamed over `path`, so a crash or a full disk never leaves a truncated array behind.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if numel != Some(data.len()) {
        bail!("{}: shape {:?} does not match {} values", path.display(), shape, data.len());
    }
    let mut bytes = header_bytes("<f4", shape);
    bytes.reserve(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_file_atomically(path, &bytes)
}

/// Reads a `float32` (`'<f4'`) or `float64` (`'<f8'`, converted) C-ordered array.
///
/// Returns the shape and the values in C order. A 0-d array has shape `[]` and one value.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode_f32(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Reads a 1-D array of class labels.
///
/// Accepts the integer dtypes NumPy commonly writes (`<i8`, `<i4`, `<i2`, `|i1`, `<u8`, `<u4`,
/// `<u2`, `|u1`; `<`-prefixed one-byte codes too) and float arrays holding whole numbers.
/// Negative or fractional values are refused; checking against the number of classes is the
/// caller's job, since only it knows that number.
pub fn read_labels(path: &Path) -> Result<Vec<usize>> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode_labels(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// `ddpm_nn::fs::write_atomically` (the one atomic write of the project), its error naming the
/// file. Shared with `picture.rs`, which encodes its images in memory and hands them over here.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    ddpm_nn::fs::write_atomically(path, bytes).map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Magic, version, header length and the padded header dict for a C-ordered array.
///
/// Version 1.0 unless the header does not fit its 16-bit length (only with absurd ranks), in
/// which case 2.0 with a 32-bit length, as NumPy does.
fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_repr = match dims.len() {
        0 => "()".to_string(),
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_repr}, }}");
    let (version, len_bytes) = if dict.len() + 1 + 10 <= u16::MAX as usize { (1u8, 2) } else { (2u8, 4) };
    let prefix = MAGIC.len() + 2 + len_bytes;
    // Pad with spaces so that prefix + dict + '\n' is a multiple of ALIGN.
    let total = (prefix + dict.len() + 1).div_ceil(ALIGN) * ALIGN;
    let pad = total - prefix - dict.len() - 1;
    dict.extend(std::iter::repeat_n(' ', pad));
    dict.push('\n');

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        // Fits: checked above.
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A parsed header: element type, shape, and the data bytes that follow it.
struct Npy<'a> {
    descr: String,
    shape: Vec<usize>,
    data: &'a [u8],
}

impl Npy<'_> {
    /// The number of elements the shape promises (1 for a 0-d array).
    fn numel(&self) -> Result<usize, String> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("header shape {:?} has too many elements", self.shape))
    }

    /// Checks that the data is exactly `numel * itemsize` bytes and returns the element count.
    fn check_size(&self, itemsize: usize) -> Result<usize, String> {
        let numel = self.numel()?;
        let expected = numel
            .checked_mul(itemsize)
            .ok_or_else(|| format!("header shape {:?} has too many elements", self.shape))?;
        let got = self.data.len();
        if got < expected {
            return Err(format!(
                "truncated: shape {:?} of {} needs {expected} data bytes, file has {got}",
                self.shape, self.descr
            ));
        }
        if got > expected {
            return Err(format!(
                "{} trailing bytes after the {expected} data bytes of shape {:?} ({})",
                got - expected,
                self.shape,
                self.descr
            ));
        }
        Ok(numel)
    }
}

fn decode_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    let npy = parse(bytes)?;
    let values: Vec<f32> = match npy.descr.as_str() {
        "<f4" => {
            npy.check_size(4)?;
            npy.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        "<f8" => {
            npy.check_size(8)?;
            npy.data.chunks_exact(8).map(|c| f64_le(c) as f32).collect()
        }
        other => return Err(format!("dtype '{other}' is not supported (expected '<f4' or '<f8')")),
    };
    Ok((npy.shape, values))
}

fn decode_labels(bytes: &[u8]) -> Result<Vec<usize>, String> {
    let npy = parse(bytes)?;
    if npy.shape.len() != 1 {
        return Err(format!("labels must be a 1-D array, header shape is {:?}", npy.shape));
    }
    /// How to turn one element's bytes into a label.
    enum Kind {
        Signed,
        Unsigned,
        Float,
    }
    let (kind, size) = match npy.descr.as_str() {
        "|i1" | "<i1" => (Kind::Signed, 1),
        "<i2" => (Kind::Signed, 2),
        "<i4" => (Kind::Signed, 4),
        "<i8" => (Kind::Signed, 8),
        "|u1" | "<u1" => (Kind::Unsigned, 1),
        "<u2" => (Kind::Unsigned, 2),
        "<u4" => (Kind::Unsigned, 4),
        "<u8" => (Kind::Unsigned, 8),
        "<f4" => (Kind::Float, 4),
        "<f8" => (Kind::Float, 8),
        other => return Err(format!("dtype '{other}' is not supported for labels (expected an integer dtype)")),
    };
    npy.check_size(size)?;
    npy.data
        .chunks_exact(size)
        .enumerate()
        .map(|(i, c)| {
            // Sign-extend (or zero-extend) into 8 bytes, then read as i128 so every u64 fits.
            let mut wide = [0u8; 8];
            wide[..size].copy_from_slice(c);
            let value: i128 = match kind {
                Kind::Unsigned => u64::from_le_bytes(wide) as i128,
                Kind::Signed => {
                    if c[size - 1] & 0x80 != 0 {
                        wide[size..].fill(0xff);
                    }
                    i64::from_le_bytes(wide) as i128
                }
                Kind::Float => {
                    let f = if size == 4 { f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64 } else { f64_le(c) };
                    if !f.is_finite() || f.fract() != 0.0 {
                        return Err(format!("label {i} is {f}, not a whole number"));
                    }
                    if f >= usize::MAX as f64 || f <= i64::MIN as f64 {
                        return Err(format!("label {i} is {f}, out of range"));
                    }
                    f as i128
                }
            };
            if value < 0 {
                return Err(format!("label {i} is negative ({value})"));
            }
            usize::try_from(value).map_err(|_| format!("label {i} is {value}, out of range"))
        })
        .collect()
}

fn f64_le(c: &[u8]) -> f64 {
    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
}

/// Checks magic and version, parses the header dict, and returns it with the data bytes.
fn parse(bytes: &[u8]) -> Result<Npy<'_>, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a .npy file (bad magic; expected \\x93NUMPY)".to_string());
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return Err("truncated .npy preamble".to_string()),
    };
    // v1 has a 16-bit header length; v2 widened it to 32 bits; v3 only allows UTF-8 in the
    // header, which our parser handles like ASCII.
    let len_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => return Err(format!("unsupported .npy version {major}.{minor} (expected 1.0, 2.0 or 3.0)")),
    };
    let start = 8 + len_bytes;
    let header_len = match bytes.get(8..start) {
        Some(b) if len_bytes == 2 => u16::from_le_bytes([b[0], b[1]]) as usize,
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
        None => return Err("truncated .npy preamble".to_string()),
    };
    let header = start
        .checked_add(header_len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| format!("truncated header (header length {header_len}, file has {} bytes)", bytes.len()))?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not valid UTF-8".to_string())?;
    let (descr, fortran_order, shape) = parse_header(header)?;
    if fortran_order {
        return Err("fortran_order is True; only C-ordered arrays are supported".to_string());
    }
    Ok(Npy { descr, shape, data: &bytes[start + header_len..] })
}

/// A value in the header dict.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses `{'descr': ..., 'fortran_order': ..., 'shape': (...), }` and checks it has exactly
/// those three keys with the right kinds of value, as `numpy.lib.format` itself insists.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), String> {
    let mut p = Parser { s: header.as_bytes(), pos: 0 };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    p.expect(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        if !matches!(key.as_str(), "descr" | "fortran_order" | "shape") {
            return Err(format!("unexpected key '{key}' in header"));
        }
        p.expect(b':')?;
        let value = p.value()?;
        let slot = match key.as_str() {
            "descr" => match value {
                Value::Str(s) => descr.replace(s).is_some(),
                _ => return Err("header 'descr' is not a string (structured dtypes are not supported)".into()),
            },
            "fortran_order" => match value {
                Value::Bool(b) => fortran.replace(b).is_some(),
                _ => return Err("header 'fortran_order' is not True or False".into()),
            },
            "shape" => match value {
                Value::Tuple(t) => shape.replace(t).is_some(),
                _ => return Err("header 'shape' is not a tuple of integers".into()),
            },
            other => return Err(format!("unexpected key '{other}' in header")),
        };
        if slot {
            return Err(format!("key '{key}' appears twice in header"));
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(format!("unexpected text after the header dict at byte {}", p.pos));
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err("header lacks one of 'descr', 'fortran_order', 'shape'".to_string()),
    }
}

/// A cursor over the header text; every method skips leading white space.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("malformed header: expected '{}' at byte {}", c as char, self.pos))
        }
    }

    /// A single- or double-quoted string without escapes (NumPy never writes any).
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("malformed header: expected a quoted string at byte {}", self.pos)),
        };
        let start = self.pos + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == quote)
            .ok_or_else(|| "malformed header: unterminated string".to_string())?;
        self.pos = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                loop {
                    if self.eat(b')') {
                        break;
                    }
                    dims.push(self.integer()?);
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Value::Tuple(dims))
            }
            _ => {
                let word = self.word();
                match word.as_str() {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    _ => Err(format!("malformed header: unexpected value '{word}' at byte {}", self.pos)),
                }
            }
        }
    }

    /// A non-negative decimal integer; Python 2's long suffix `L` is accepted.
    fn integer(&mut self) -> Result<usize, String> {
        let word = self.word();
        let digits = word.strip_suffix('L').unwrap_or(&word);
        digits.parse().map_err(|_| format!("malformed header: '{word}' is not a dimension size"))
    }

    /// The run of alphanumeric characters (and `_`, `-`) at the cursor.
    fn word(&mut self) -> String {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.s.len() && (self.s[self.pos].is_ascii_alphanumeric() || b"_-".contains(&self.s[self.pos]))
        {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.pos]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built file: v1.0 preamble, the given dict padded to 64, then `data`.
    fn build(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f4(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn err_f32(bytes: &[u8]) -> String {
        decode_f32(bytes).unwrap_err()
    }

    #[test]
    fn round_trip_and_header_alignment() {
        let dir = tempfile::tempdir().unwrap();
        for shape in [vec![], vec![5], vec![2, 3], vec![16, 1, 28, 28], vec![0, 4]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.25).collect();
            let path = dir.path().join("a.npy");
            write_f32(&path, &shape, &data).unwrap();
            let bytes = fs::read(&path).unwrap();
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0, "shape {shape:?}");
            assert_eq!(bytes[10 + header_len - 1], b'\n');
            assert_eq!(bytes.len(), 10 + header_len + 4 * n);
            let (s, d) = read_f32(&path).unwrap();
            assert_eq!(s, shape);
            assert_eq!(d, data);
        }
        // Nothing but the file itself is left behind: no temporaries.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.npy")]);
    }

    #[test]
    fn header_text_is_what_numpy_writes() {
        let h = header_bytes("<f4", &[16, 1, 28, 28]);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (16, 1, 28, 28), }"));
        let h = header_bytes("<f4", &[5]);
        assert!(std::str::from_utf8(&h[10..]).unwrap().contains("'shape': (5,), }"));
        let h = header_bytes("<f4", &[]);
        assert!(std::str::from_utf8(&h[10..]).unwrap().contains("'shape': (), }"));
    }

    #[test]
    fn write_refuses_shape_mismatch_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.npy");
        let err = write_f32(&path, &[2, 2], &[1.0; 3]).unwrap_err().to_string();
        assert!(err.contains("b.npy") && err.contains("does not match"), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn reads_f8_and_one_tuple_and_double_quotes() {
        let data: Vec<u8> = [1.5f64, -2.0, 3.25, 0.0, 1e-3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = build("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }", &data);
        let (shape, values) = decode_f32(&bytes).unwrap();
        assert_eq!(shape, vec![5]);
        assert_eq!(values, vec![1.5, -2.0, 3.25, 0.0, 1e-3f64 as f32]);

        let bytes = build(r#"{"shape": (2L, 1), "fortran_order": False, "descr": "<f4"}"#, &f4(&[7.0, 8.0]));
        assert_eq!(decode_f32(&bytes).unwrap(), (vec![2, 1], vec![7.0, 8.0]));

        let bytes = build("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", &f4(&[4.5]));
        assert_eq!(decode_f32(&bytes).unwrap(), (vec![], vec![4.5]));
    }

    #[test]
    fn refusals() {
        let good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        let ok = build(good, &f4(&[1.0, 2.0]));
        assert!(decode_f32(&ok).is_ok());

        let mut bad_magic = ok.clone();
        bad_magic[1] = b'X';
        assert!(err_f32(&bad_magic).contains("bad magic"));
        assert!(err_f32(b"\x93NUM").contains("bad magic"));

        let mut bad_version = ok.clone();
        bad_version[6] = 4;
        assert!(err_f32(&bad_version).contains("unsupported .npy version 4.0"));

        let fortran = build("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", &f4(&[1.0, 2.0]));
        assert!(err_f32(&fortran).contains("fortran_order is True"));

        let int = build("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", &[0; 8]);
        assert!(err_f32(&int).contains("dtype '<i4' is not supported"));
        let big_endian = build("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", &[0; 8]);
        assert!(err_f32(&big_endian).contains("dtype '>f4'"));

        let truncated = &ok[..ok.len() - 1];
        assert!(err_f32(truncated).contains("truncated"), "{}", err_f32(truncated));

        let mut trailing = ok.clone();
        trailing.push(0);
        assert!(err_f32(&trailing).contains("1 trailing bytes"));

        let mismatch = build("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", &f4(&[1.0, 2.0]));
        assert!(err_f32(&mismatch).contains("truncated"));

        let overflow =
            build("{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 2), }", &f4(&[1.0, 2.0]));
        assert!(err_f32(&overflow).contains("too many elements"));

        let header_cut = &ok[..20];
        assert!(err_f32(header_cut).contains("truncated header"));

        for (dict, what) in [
            ("{'descr': '<f4', 'shape': (2,), }", "lacks"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", "unexpected key 'x'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", "not a dimension size"),
            ("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", "unexpected value 'Maybe'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) } junk", "after the header dict"),
            ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "malformed header"),
        ] {
            let err = err_f32(&build(dict, &f4(&[1.0, 2.0])));
            assert!(err.contains(what), "{dict}: {err}");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.npy");
        fs::write(&path, b"hello world").unwrap();
        let err = read_f32(&path).unwrap_err().to_string();
        assert!(err.contains("broken.npy") && err.contains("bad magic") && !err.contains('\n'), "{err}");
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.contains("broken.npy"), "{err}");
        let err = read_f32(&dir.path().join("missing.npy")).unwrap_err();
        assert!(format!("{err:#}").contains("missing.npy"));
    }

    #[test]
    fn labels_of_every_dtype() {
        let values = [0u8, 3, 9, 1];
        for (descr, size) in
            [("|u1", 1), ("<u1", 1), ("|i1", 1), ("<i2", 2), ("<u2", 2), ("<i4", 4), ("<u4", 4), ("<i8", 8), ("<u8", 8)]
        {
            let data: Vec<u8> = values
                .iter()
                .flat_map(|&v| {
                    let mut b = vec![0u8; size];
                    b[0] = v;
                    b
                })
                .collect();
            let bytes = build(&format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (4,), }}"), &data);
            assert_eq!(decode_labels(&bytes).unwrap(), vec![0, 3, 9, 1], "{descr}");
        }
        let floats = build("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", &f4(&[2.0, 0.0, 7.0]));
        assert_eq!(decode_labels(&floats).unwrap(), vec![2, 0, 7]);
        let doubles: Vec<u8> = [5.0f64, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let doubles = build("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", &doubles);
        assert_eq!(decode_labels(&doubles).unwrap(), vec![5, 1]);
        // A large unsigned value survives (range checks belong to the caller).
        let big = build("{'descr': '<u8', 'fortran_order': False, 'shape': (1,), }", &u64::MAX.to_le_bytes());
        assert!(decode_labels(&big).is_ok() || usize::BITS < 64);
    }

    #[test]
    fn label_refusals() {
        let neg =
            build("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode_labels(&neg).unwrap_err().contains("label 1 is negative (-1)"));
        let neg1 = build("{'descr': '|i1', 'fortran_order': False, 'shape': (1,), }", &[0x80]);
        assert!(decode_labels(&neg1).unwrap_err().contains("negative (-128)"));
        let frac = build("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", &f4(&[1.0, 2.5]));
        assert!(decode_labels(&frac).unwrap_err().contains("not a whole number"));
        let nan = build("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", &f4(&[f32::NAN]));
        assert!(decode_labels(&nan).unwrap_err().contains("not a whole number"));
        let negf = build("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", &f4(&[-3.0]));
        assert!(decode_labels(&negf).unwrap_err().contains("negative"));
        let two_d = build("{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2), }", &[1, 2]);
        assert!(decode_labels(&two_d).unwrap_err().contains("1-D"));
        let text = build("{'descr': '<U1', 'fortran_order': False, 'shape': (1,), }", &[0; 4]);
        assert!(decode_labels(&text).unwrap_err().contains("dtype '<U1'"));
        let short = build("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", &[0; 12]);
        assert!(decode_labels(&short).unwrap_err().contains("truncated"));
    }
}
