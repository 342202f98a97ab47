use ddpm_autograd::{Result, Tensor, Var};
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
/// The mask is a constant, so the gradient is g * mask with no rule of its own.
///
/// Each call draws one u64 from the generator and takes the mask from that
/// Philox stream ([`dropout_mask`]): the GPU (`kernels/elementwise.cu`,
/// `dropout_f32`) computes the same mask from the same seed.
pub fn dropout(x: &Var, p: f32, mode: &mut Mode) -> Result<Var> {
    match mode {
        Mode::Train(rng) if p > 0.0 => {
            let seed: u64 = rng.gen();
            x.mul(&Var::constant(Tensor::from_vec(dropout_mask(seed, p, x.shape().numel()), x.shape())?))
        }
        _ => Ok(x.clone()),
    }
}

/// The mask of inverted dropout: element i is 0 where Philox stream `seed`
/// draws below p, else 1 / (1 - p).
pub fn dropout_mask(seed: u64, p: f32, len: usize) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    let mut mask = ddpm_tensor::pool::take(len);
    ddpm_tensor::philox::uniforms(seed, 0, 0, &mut mask);
    mask.iter_mut().for_each(|m| *m = if *m < p { 0.0 } else { keep });
    mask
}
