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
pub fn dropout(x: &Var, p: f32, mode: &mut Mode) -> Result<Var> {
    match mode {
        Mode::Train(rng) if p > 0.0 => {
            let keep = 1.0 / (1.0 - p);
            let mut mask = ddpm_tensor::pool::take(x.shape().numel());
            mask.iter_mut().for_each(|m| *m = if rng.gen::<f32>() < p { 0.0 } else { keep });
            x.mul(&Var::constant(Tensor::from_vec(mask, x.shape())?))
        }
        _ => Ok(x.clone()),
    }
}
