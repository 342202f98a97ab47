use ddpm_autograd::{Result, Var};
use rand::rngs::StdRng;
use rand::Rng;

/// Whether a forward pass is for training (dropout active, drawing from the
/// generator) or for evaluation and sampling (dropout off).
pub enum Mode<'a> {
    Eval,
    Train(&'a mut StdRng),
}

/// Inverted dropout, as torch.nn.Dropout: in training each element is zeroed
/// with probability p and the survivors are scaled by 1 / (1 - p), so the
/// expected value is unchanged; in evaluation it is the identity.
/// The gradient is g * mask, the same op on g.
///
/// Each call draws one u64 from the generator and takes the mask from that
/// Philox stream ([`dropout_mask`]), as one fused op (`Var::dropout`) that
/// recomputes the mask in the backward pass instead of storing it. The GPU
/// (`kernels/elementwise.cu`, `dropout_f32`) computes the same mask from the
/// same seed.
pub fn dropout(x: &Var, p: f32, mode: &mut Mode) -> Result<Var> {
    match mode {
        Mode::Train(rng) if p > 0.0 => {
            let seed: u64 = rng.gen();
            x.dropout(seed, p)
        }
        _ => Ok(x.clone()),
    }
}

/// The mask of inverted dropout: element i is 0 where Philox stream `seed`
/// draws below p, else 1 / (1 - p) (the tensor crate's, which `Var::dropout`
/// multiplies by).
pub use ddpm_tensor::philox::dropout_mask;

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm_autograd::Tensor;
    use rand::SeedableRng;

    #[test]
    fn training_multiplies_by_the_seeds_mask_and_evaluation_is_the_identity() {
        let x = Tensor::randn([2, 3, 4, 5], &mut StdRng::seed_from_u64(1));
        let mut rng = StdRng::seed_from_u64(9);
        let seed: u64 = StdRng::seed_from_u64(9).gen();
        let y = dropout(&Var::constant(x.clone()), 0.3, &mut Mode::Train(&mut rng)).unwrap().value();
        let mask = dropout_mask(seed, 0.3, x.numel());
        let expected: Vec<f32> = x.as_slice().iter().zip(&mask).map(|(a, m)| a * m).collect();
        assert_eq!(y.to_vec(), expected);
        let same = dropout(&Var::constant(x.clone()), 0.3, &mut Mode::Eval).unwrap().value();
        assert_eq!(same.to_vec(), x.to_vec());
    }

    #[test]
    fn about_p_of_the_mask_is_zero_and_the_rest_is_one_over_one_minus_p() {
        let (n, p) = (200_000, 0.1);
        let mask = dropout_mask(77, p, n);
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / n as f64;
        // The binomial standard deviation is sqrt(p (1 - p) / n) = 0.00067.
        assert!((dropped - p as f64).abs() < 0.004, "dropped {dropped}");
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / (1.0 - p)));
        // Neighbouring elements (which share a Philox counter) are not correlated.
        let d: Vec<f64> = mask.iter().map(|&m| f64::from(m == 0.0)).collect();
        for lag in 1..=4 {
            let both = d.iter().zip(&d[lag..]).filter(|(a, b)| **a == 1.0 && **b == 1.0).count() as f64;
            let rate = both / (n - lag) as f64;
            assert!((rate - (p * p) as f64).abs() < 0.003, "lag {lag}: both dropped at rate {rate}");
        }
    }
}
