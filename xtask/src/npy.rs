//! NumPy `.npy` files (x_T in, samples out, labels in), through the `npyz` crate.
//!
//! `npyz` parses the header (magic, version 1.0/2.0/3.0, the Python dict with `descr`,
//! `fortran_order` and `shape`), reads elements of either byte order and writes files `np.load`
//! reads. This layer adds what the CLI promises on top of it:
//!
//! * every error is one line naming the file, and never echoes raw bytes from it;
//! * `float64` is read as `float32`, labels of any integer dtype (or whole-number floats) as
//!   `usize`;
//! * only C order, and data of exactly the size the header's shape promises, checked before
//!   anything is read or allocated, so an absurd shape is refused rather than attempted;
//! * files appear atomically (encoded in memory, then `ddpm_nn::fs::write_atomically`).

use std::fs;
use std::io;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use npyz::{DType, Deserialize, NpyFile, NpyHeader, Order, TypeChar, TypeStr, WriterBuilder};

/// The six magic bytes every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The longest header read: what version 1.0 can hold. Ours are about 120 bytes; the cap keeps a
/// hostile version 2.0 file from making the header parser chew through megabytes of digits.
const MAX_HEADER_LEN: usize = u16::MAX as usize;

/// Writes `data` (C order, shape `shape`) as a little-endian `float32` `.npy` file.
///
/// The file appears atomically: it is written to a temporary file in the same directory and
/// renamed over `path`, so a crash or a full disk never leaves a truncated array behind. The
/// jobs write theirs with [`f32_file_bytes`] and `outputs::commit` (all of a job's files or
/// none); this one serves the tests' round trips.
#[cfg(test)]
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes = f32_file_bytes(shape, data).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    ddpm_nn::fs::write_atomically(path, &bytes).map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))
}

/// A little-endian `float32` `.npy` file of `data` (C order, shape `shape`), in memory: the
/// caller writes it once all its outputs are made (`outputs::commit`).
pub fn f32_file_bytes(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if numel != Some(data.len()) {
        bail!("shape {:?} does not match {} values", shape, data.len());
    }
    encode_f32(shape, data).map_err(|e| anyhow!("cannot encode: {e}"))
}

/// Reads a `float32` or `float64` (converted) C-ordered array, of either byte order.
///
/// Returns the shape and the values in C order. A 0-d array has shape `[]` and one value.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode_f32(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Reads a 1-D array of class labels.
///
/// Accepts the integer dtypes NumPy writes (`<i8`, `<i4`, `<i2`, `|i1`, `<u8`, `<u4`, `<u2`,
/// `|u1`; `<`-prefixed one-byte codes and big-endian ones too) and float arrays holding whole
/// numbers. Negative or fractional values are refused; checking against the number of classes
/// is the caller's job, since only it knows that number.
pub fn read_labels(path: &Path) -> Result<Vec<usize>> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode_labels(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The whole file in memory: `npyz`'s header (`'<f4'`, C order, the shape, padded so the data
/// starts at a multiple of 64 bytes), then the values.
fn encode_f32(shape: &[usize], data: &[f32]) -> io::Result<Vec<u8>> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let dtype = DType::new_scalar("<f4".parse().expect("a valid type string"));
    let mut bytes = Vec::with_capacity(128 + 4 * data.len());
    let mut writer = npyz::WriteOptions::new().dtype(dtype).shape(&shape).writer(&mut bytes).begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    Ok(bytes)
}

fn decode_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    let (header, data) = open(bytes)?;
    let wide = match scalar(&header) {
        Some(ty) if ty.type_char() == TypeChar::Float && ty.size_field() == 4 => false,
        Some(ty) if ty.type_char() == TypeChar::Float && ty.size_field() == 8 => true,
        _ => return Err(format!("expected a float32 or float64 array, found {}", describe(&header))),
    };
    let shape = check_size(&header, data)?;
    let file = NpyFile::with_header(header, data);
    let values = if wide {
        file.into_vec::<f64>().map(|v| v.into_iter().map(|x| x as f32).collect())
    } else {
        file.into_vec::<f32>()
    };
    Ok((shape, values.map_err(|e| format!("cannot read the data: {}", one_line(&e.to_string())))?))
}

fn decode_labels(bytes: &[u8]) -> Result<Vec<usize>, String> {
    let (header, data) = open(bytes)?;
    if header.shape().len() != 1 {
        return Err(format!("labels must be a 1-D array, header shape is {:?}", header.shape()));
    }
    let kind = scalar(&header).map(|ty| (ty.type_char(), ty.size_field()));
    if !matches!(kind, Some((TypeChar::Int | TypeChar::Uint, 1 | 2 | 4 | 8) | (TypeChar::Float, 4 | 8))) {
        return Err(format!("expected an integer array for labels, found {}", describe(&header)));
    }
    check_size(&header, data)?;
    let file = NpyFile::with_header(header, data);
    match kind {
        Some((TypeChar::Int, 1)) => int_labels::<i8>(file),
        Some((TypeChar::Int, 2)) => int_labels::<i16>(file),
        Some((TypeChar::Int, 4)) => int_labels::<i32>(file),
        Some((TypeChar::Int, _)) => int_labels::<i64>(file),
        Some((TypeChar::Uint, 1)) => int_labels::<u8>(file),
        Some((TypeChar::Uint, 2)) => int_labels::<u16>(file),
        Some((TypeChar::Uint, 4)) => int_labels::<u32>(file),
        Some((TypeChar::Uint, _)) => int_labels::<u64>(file),
        Some((_, 4)) => float_labels::<f32>(file),
        _ => float_labels::<f64>(file),
    }
}

/// Labels from an integer array: widened to `i128` (every `u64` fits), then refused if negative.
fn int_labels<T: Deserialize + Into<i128>>(file: NpyFile<&[u8]>) -> Result<Vec<usize>, String> {
    let reader = file.data::<T>().map_err(|e| one_line(&e.to_string()))?;
    reader.enumerate().map(|(i, v)| label(i, v.map_err(|e| one_line(&e.to_string()))?.into())).collect()
}

/// Labels from a float array: each must be a whole number in range.
fn float_labels<T: Deserialize + Into<f64>>(file: NpyFile<&[u8]>) -> Result<Vec<usize>, String> {
    let reader = file.data::<T>().map_err(|e| one_line(&e.to_string()))?;
    reader
        .enumerate()
        .map(|(i, v)| {
            let f: f64 = v.map_err(|e| one_line(&e.to_string()))?.into();
            if !f.is_finite() || f.fract() != 0.0 {
                return Err(format!("label {i} is {f}, not a whole number"));
            }
            if f >= usize::MAX as f64 || f <= i64::MIN as f64 {
                return Err(format!("label {i} is {f}, out of range"));
            }
            label(i, f as i128)
        })
        .collect()
}

fn label(i: usize, value: i128) -> Result<usize, String> {
    if value < 0 {
        return Err(format!("label {i} is negative ({value})"));
    }
    usize::try_from(value).map_err(|_| format!("label {i} is {value}, out of range"))
}

/// Parses the header with `npyz` and returns it with the data bytes after it; refuses Fortran
/// order (we would have to transpose, and nothing of ours writes it).
fn open(bytes: &[u8]) -> Result<(NpyHeader, &[u8]), String> {
    check_header_len(bytes)?;
    let mut data = bytes;
    let header = NpyHeader::from_reader(&mut data).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => "truncated .npy preamble".to_string(),
        _ => format!("bad .npy header: {}", one_line(&e.to_string())),
    })?;
    if header.order() == Order::Fortran {
        return Err("fortran_order is True; only C-ordered arrays are supported".to_string());
    }
    Ok((header, data))
}

/// `npyz` allocates the header length the preamble states before reading that many bytes (up
/// to 4 GiB in versions 2.0 and 3.0): refuse a length the file cannot hold, or one past
/// [`MAX_HEADER_LEN`], before it gets there. Anything else is left to `npyz` to judge.
fn check_header_len(bytes: &[u8]) -> Result<(), String> {
    if bytes.get(..6) != Some(MAGIC) {
        return Ok(());
    }
    let len = match (bytes.get(6..8), bytes.get(8..10), bytes.get(8..12)) {
        (Some([1, 0]), Some(&[a, b]), _) => u16::from_le_bytes([a, b]) as usize,
        (Some([2 | 3, 0]), _, Some(&[a, b, c, d])) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => return Ok(()),
    };
    let start = if bytes[6] == 1 { 10 } else { 12 };
    if len > MAX_HEADER_LEN {
        return Err(format!("header length {len} is over the {MAX_HEADER_LEN} bytes this reader accepts"));
    }
    if start + len > bytes.len() {
        return Err(format!("truncated header (header length {len}, file has {} bytes)", bytes.len()));
    }
    Ok(())
}

/// The header's dtype if it is a plain one (not a structured or pickled-object dtype).
fn scalar(header: &NpyHeader) -> Option<TypeStr> {
    match header.dtype() {
        DType::Plain(ty) if !ty.uses_pickled_array() => Some(ty),
        _ => None,
    }
}

/// The dtype for a message: its type string, which `npyz` rebuilt from parsed parts (so it
/// holds nothing from the file verbatim); field names of a structured dtype are left out.
fn describe(header: &NpyHeader) -> String {
    match header.dtype() {
        DType::Plain(ty) => ty.to_string(),
        _ => "a structured dtype".to_string(),
    }
}

/// Checks that the data is exactly what the shape promises, and returns the shape.
///
/// The element count is computed with checked arithmetic here (`npyz` multiplies unchecked,
/// which is why the workspace turns its overflow checks off), so a shape like
/// `(4294967296, 1, 28, 28)` over a few bytes of data is refused before anything is allocated.
fn check_size(header: &NpyHeader, data: &[u8]) -> Result<Vec<usize>, String> {
    let ty = describe(header);
    let too_many = || format!("header shape {:?} has too many elements", header.shape());
    let shape: Vec<usize> =
        header.shape().iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>().map_err(|_| too_many())?;
    let itemsize = header.dtype().num_bytes().ok_or_else(too_many)?;
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(itemsize))
        .ok_or_else(too_many)?;
    let got = data.len();
    if got < expected {
        return Err(format!("truncated: shape {shape:?} of {ty} needs {expected} data bytes, file has {got}"));
    }
    if got > expected {
        return Err(format!(
            "{} trailing bytes after the {expected} data bytes of shape {shape:?} ({ty})",
            got - expected
        ));
    }
    Ok(shape)
}

/// A message from `npyz` (or the Python-literal parser under it) made fit for one error line:
/// its first line, white space collapsed, anything but printable ASCII escaped, with a parser's
/// `= expected ...` note appended; the source excerpt a parser quotes (the file's own bytes) is
/// dropped.
fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = lines.next().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(note) = lines.next_back().and_then(|l| l.strip_prefix("= ")) {
        out = format!("{out} ({note})");
    }
    out.chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c.to_string() } else { c.escape_default().to_string() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// One line, nothing raw from the file: what every refusal must look like.
    #[track_caller]
    fn assert_clean(err: &str) {
        assert!(!err.chars().any(|c| c.is_control()), "{err:?}");
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
            assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "format 1.0");
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
    fn header_text_is_the_dict_numpy_reads() {
        // npyz writes a trailing ", " after every dimension (valid Python, which is all
        // `np.load` asks: it evaluates the dict as a literal).
        let text = |shape: &[usize]| {
            let n = shape.iter().product();
            let bytes = encode_f32(shape, &vec![0.0; n]).unwrap();
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            String::from_utf8(bytes[10..10 + header_len].to_vec()).unwrap()
        };
        let h = text(&[16, 1, 28, 28]);
        assert!(h.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (16, 1, 28, 28, ), }"), "{h}");
        assert!(h.ends_with(" \n") || h.ends_with("}\n"), "padded with spaces, ended by a newline: {h:?}");
        assert!(text(&[5]).contains("'shape': (5, ), }"));
        assert!(text(&[]).contains("'shape': (), }"));
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

        let bytes = build(r#"{"shape": (2, 1), "fortran_order": False, "descr": "<f4"}"#, &f4(&[7.0, 8.0]));
        assert_eq!(decode_f32(&bytes).unwrap(), (vec![2, 1], vec![7.0, 8.0]));

        let bytes = build("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", &f4(&[4.5]));
        assert_eq!(decode_f32(&bytes).unwrap(), (vec![], vec![4.5]));

        // Python 2's long suffix is not Python 3 syntax: refused, on one line.
        let bytes = build(r#"{"shape": (2L, 1), "fortran_order": False, "descr": "<f4"}"#, &f4(&[7.0, 8.0]));
        let err = err_f32(&bytes);
        assert!(err.starts_with("bad .npy header: could not parse"), "{err}");
        assert_clean(&err);
    }

    #[test]
    fn reads_big_endian_floats() {
        let be4: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let bytes = build("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", &be4);
        assert_eq!(decode_f32(&bytes).unwrap(), (vec![2], vec![1.5, -2.0]));
        let be8: Vec<u8> = [0.25f64].iter().flat_map(|v| v.to_be_bytes()).collect();
        let bytes = build("{'descr': '>f8', 'fortran_order': False, 'shape': (1,), }", &be8);
        assert_eq!(decode_f32(&bytes).unwrap(), (vec![1], vec![0.25]));
    }

    #[test]
    fn refusals() {
        let good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        let ok = build(good, &f4(&[1.0, 2.0]));
        assert!(decode_f32(&ok).is_ok());

        let mut bad_magic = ok.clone();
        bad_magic[1] = b'X';
        assert!(err_f32(&bad_magic).contains("magic not found"));
        assert!(err_f32(b"\x93NUM").contains("magic not found"));

        let mut bad_version = ok.clone();
        bad_version[6] = 4;
        assert!(err_f32(&bad_version).contains("unsupported version: (4, 0)"), "{}", err_f32(&bad_version));

        let fortran = build("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", &f4(&[1.0, 2.0]));
        assert!(err_f32(&fortran).contains("fortran_order is True"));

        let int = build("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", &[0; 8]);
        assert_eq!(err_f32(&int), "expected a float32 or float64 array, found <i4");
        let half = build("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", &[0; 4]);
        assert!(err_f32(&half).contains("found <f2"));

        let truncated = &ok[..ok.len() - 1];
        assert!(err_f32(truncated).contains("truncated"), "{}", err_f32(truncated));

        let mut trailing = ok.clone();
        trailing.push(0);
        assert!(err_f32(&trailing).contains("1 trailing bytes"));

        let mismatch = build("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", &f4(&[1.0, 2.0]));
        assert!(err_f32(&mismatch).contains("truncated"));

        let overflow =
            build("{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 2), }", &f4(&[1.0, 2.0]));
        assert!(err_f32(&overflow).contains("too many elements"), "{}", err_f32(&overflow));

        let header_cut = &ok[..20];
        assert!(err_f32(header_cut).contains("truncated header"));
        assert!(err_f32(&ok[..9]).contains("truncated .npy preamble"), "{}", err_f32(&ok[..9]));

        for (dict, what) in [
            ("{'descr': '<f4', 'shape': (2,), }", "dict is missing key 'fortran_order'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", "dimension cannot be negative"),
            ("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", "bad .npy header: could not parse"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) } junk", "bad .npy header: could not parse"),
            ("{'descr': '<x4', 'fortran_order': False, 'shape': (2,), }", "invalid type string"),
            ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "found a structured dtype"),
            ("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", "found |O"),
        ] {
            let err = err_f32(&build(dict, &f4(&[1.0, 2.0])));
            assert!(err.contains(what), "{dict}: {err}");
            assert_clean(&err);
        }
    }

    /// A version 2.0 file: a 32-bit header length, stated by hand.
    fn v2(header_len: u32, rest: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&header_len.to_le_bytes());
        out.extend_from_slice(rest);
        out
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        // 4 Gi images of 28x28: 13 TB of float32, announced by a file of a hundred bytes. The
        // data size is checked against the file first; allocating it would abort the test.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 1, 28, 28), }";
        let err = err_f32(&build(dict, &f4(&[1.0, 2.0])));
        assert!(err.contains("truncated") && err.contains("needs 13469017440256 data bytes, file has 8"), "{err}");
        let labels = build("{'descr': '<i8', 'fortran_order': False, 'shape': (1152921504606846975,), }", &[0; 8]);
        assert!(decode_labels(&labels).unwrap_err().contains("truncated"));
        // A header length of 4 GiB in a 16-byte file; one past what this reader takes.
        let err = err_f32(&v2(u32::MAX, b"{}\n\n"));
        assert!(err.contains("header length 4294967295 is over"), "{err}");
        let err = err_f32(&v2(1000, b"{}\n\n"));
        assert_eq!(err, "truncated header (header length 1000, file has 16 bytes)");
    }

    #[test]
    fn messages_never_echo_raw_bytes() {
        // An escape sequence and a newline in the dtype, and in text the parser quotes back.
        for dict in [
            "{'descr': '<f4\x1b[31m', 'fortran_order': False, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), \x1b[2J\r}",
            "{'descr': [('\x1b[31m\\n', '<f4')], 'fortran_order': False, 'shape': (2,), }",
        ] {
            let err = err_f32(&build(dict, &f4(&[1.0, 2.0])));
            assert_clean(&err);
            assert!(!err.contains("[31m") && !err.contains("[2J"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.npy");
        fs::write(&path, b"hello world").unwrap();
        let err = read_f32(&path).unwrap_err().to_string();
        assert!(err.contains("broken.npy") && err.contains("magic not found") && !err.contains('\n'), "{err}");
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.contains("broken.npy"), "{err}");
        let err = read_f32(&dir.path().join("missing.npy")).unwrap_err();
        assert!(format!("{err:#}").contains("missing.npy"));
    }

    #[test]
    fn labels_of_every_dtype() {
        let values = [0u8, 3, 9, 1];
        for (descr, size) in [
            ("|u1", 1),
            ("<u1", 1),
            ("|i1", 1),
            ("<i1", 1),
            ("<i2", 2),
            ("<u2", 2),
            ("<i4", 4),
            ("<u4", 4),
            ("<i8", 8),
            ("<u8", 8),
        ] {
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
        let big_endian: Vec<u8> = [2i32, 7].iter().flat_map(|v| v.to_be_bytes()).collect();
        let big_endian = build("{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }", &big_endian);
        assert_eq!(decode_labels(&big_endian).unwrap(), vec![2, 7]);
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
        assert_eq!(decode_labels(&text).unwrap_err(), "expected an integer array for labels, found <U1");
        let flags = build("{'descr': '|b1', 'fortran_order': False, 'shape': (1,), }", &[1]);
        assert!(decode_labels(&flags).unwrap_err().contains("found |b1"));
        let short = build("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", &[0; 12]);
        assert!(decode_labels(&short).unwrap_err().contains("truncated"));
    }

    /// Valid files of the kinds the CLI reads: float32/float64 arrays and labels of several
    /// dtypes, each with a few elements.
    fn valid_file() -> impl Strategy<Value = Vec<u8>> {
        let kinds = prop_oneof![
            Just(("<f4", 4)),
            Just(("<f8", 8)),
            Just(("|u1", 1)),
            Just(("<i4", 4)),
            Just(("<i8", 8)),
            Just((">u2", 2))
        ];
        (kinds, 0usize..6, any::<bool>(), proptest::collection::vec(any::<u8>(), 48)).prop_map(
            |((descr, size), n, four_d, noise)| {
                let shape = if four_d { format!("({n}, 1, 1, 1)") } else { format!("({n},)") };
                let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
                build(&dict, &noise[..n * size])
            },
        )
    }

    /// What can happen to a file on the way: cut short, bytes flipped, bytes inserted.
    #[derive(Debug, Clone)]
    enum Damage {
        Truncate(usize),
        Flip(Vec<(usize, u8)>),
        Insert(usize, u8),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<usize>().prop_map(Damage::Truncate),
            proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Damage::Flip),
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Insert(at, b)),
        ]
    }

    fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
        match damage {
            Damage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
            Damage::Flip(flips) => {
                let len = bytes.len();
                for &(at, mask) in flips {
                    bytes[at % len] ^= mask;
                }
            }
            Damage::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), *b),
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Damaged files give Ok or a clean one-line Err, never a panic.
        #[test]
        fn damaged_files_never_panic(file in valid_file(), damage in damage()) {
            let bytes = apply(file, &damage);
            if let Err(e) = decode_f32(&bytes) {
                prop_assert!(!e.chars().any(|c| c.is_control()), "{:?}", e);
            }
            if let Err(e) = decode_labels(&bytes) {
                prop_assert!(!e.chars().any(|c| c.is_control()), "{:?}", e);
            }
        }
    }
}
