//! Damage to a safetensors file, for the property tests of its readers (the
//! checkpoint's here, the training state's in ddpm's tests, which include
//! this file by path).

use proptest::prelude::*;

/// What can happen to a file on the way: cut short, bytes flipped, bytes
/// inserted, or a number of the header rewritten (a digit of a shape or an
/// offset, or the header's length).
#[derive(Debug, Clone)]
pub enum Damage {
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    Insert(usize, u8),
    /// The `n`th digit of the header text becomes `digit`.
    Digit(usize, u8),
    /// The `n`th number of the header text (a run of digits) becomes `value`.
    Number(usize, u64),
    /// The header length becomes this.
    HeaderLength(u64),
}

pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Damage::Flip),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Insert(at, b)),
        (any::<usize>(), b'0'..=b'9').prop_map(|(n, d)| Damage::Digit(n, d)),
        (any::<usize>(), prop_oneof![0u64..64, Just(1 << 32), Just((1 << 62) - 1), Just(u64::MAX), any::<u64>()])
            .prop_map(|(n, value)| Damage::Number(n, value)),
        prop_oneof![0u64..200, any::<u64>()].prop_map(Damage::HeaderLength),
    ]
}

/// `damage` applied to `bytes`, with flips and insertions in the first
/// `region` bytes (a cut may fall anywhere).
pub fn apply(mut bytes: Vec<u8>, damage: &Damage, region: usize) -> Vec<u8> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let region = region.min(bytes.len());
    match damage {
        Damage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        Damage::Flip(flips) => {
            for &(at, mask) in flips {
                bytes[at % region] ^= mask;
            }
        }
        Damage::Insert(at, b) => bytes.insert(at % (region + 1), *b),
        Damage::Digit(n, d) => {
            let digits: Vec<usize> = (8..8 + header_len).filter(|&i| bytes[i].is_ascii_digit()).collect();
            if !digits.is_empty() {
                bytes[digits[n % digits.len()]] = *d;
            }
        }
        Damage::Number(n, value) => {
            let text = String::from_utf8_lossy(&bytes[8..8 + header_len]).into_owned();
            let mut runs = vec![];
            let mut start = None;
            for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
                match (c.is_ascii_digit(), start) {
                    (true, None) => start = Some(i),
                    (false, Some(s)) => {
                        runs.push(s..i);
                        start = None;
                    }
                    _ => {}
                }
            }
            if !runs.is_empty() {
                let mut text = text;
                text.replace_range(runs[n % runs.len()].clone(), &value.to_string());
                let data = bytes[8 + header_len..].to_vec();
                // The length follows the text, so that the damage is the number.
                bytes = [(text.len() as u64).to_le_bytes().as_slice(), text.as_bytes(), &data].concat();
            }
        }
        Damage::HeaderLength(n) => bytes[..8].copy_from_slice(&n.to_le_bytes()),
    }
    bytes
}
