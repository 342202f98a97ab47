//! Where the randomness of a run comes from.
//!
//! Every random draw of training belongs to a *stream* (the data order, or the
//! noise and timesteps of the train steps) and an index within it (the epoch,
//! or the step). Each (seed, stream, index) seeds its own generator. So step k
//! draws the same t, e and label dropout whether the run got there in one go
//! or was stopped and resumed: there is no generator state to save.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// What a generator is for; distinct streams never share numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The initial weights.
    Init = 1,
    /// The permutation of the data for one epoch.
    Shuffle = 2,
    /// A train step's timesteps, noise, label dropout and dropout masks.
    Step = 3,
    /// The noise of the samples drawn for pictures during or after training.
    Sample = 4,
}

/// The generator for `index` within `stream` of the run seeded by `seed`.
pub fn stream(seed: u64, stream: Stream, index: u64) -> StdRng {
    // SplitMix64's finaliser on each input in turn: a change of one bit in any
    // of the three changes about half the bits of the result.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let golden = 0x9e37_79b9_7f4a_7c15u64;
    let h = mix(seed.wrapping_add(golden));
    let h = mix(h ^ (stream as u64).wrapping_mul(golden));
    let h = mix(h ^ index.wrapping_mul(golden).wrapping_add(1));
    StdRng::seed_from_u64(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let first = |seed, s, i| stream(seed, s, i).gen::<u64>();
        assert_eq!(first(0, Stream::Step, 5), first(0, Stream::Step, 5));
        assert_ne!(first(0, Stream::Step, 5), first(0, Stream::Step, 6));
        assert_ne!(first(0, Stream::Step, 5), first(1, Stream::Step, 5));
        assert_ne!(first(0, Stream::Step, 5), first(0, Stream::Shuffle, 5));
    }
}
