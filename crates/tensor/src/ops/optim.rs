//! The optimiser's fused elementwise updates, on the parameters' device: one
//! Adam step, and the linear interpolation of the weights' moving average.
//! The formulas are explained where they are used (`ddpm_nn::optim`).
//!
//! On the host each update is one loop over the elements, split across
//! rayon's threads in chunks; element by element, so the split changes no
//! value.

use rayon::prelude::*;

use crate::backend::AdamStep;
use crate::{placement, Placement, Result, Tensor};

/// Elements a parallel task handles.
const CHUNK: usize = 1 << 14;

impl Tensor {
    /// One Adam step on the weights theta (self) with gradient g: the moment
    /// estimates m and v are updated in place, and the new weights returned
    /// (in a new buffer: theta's is usually shared with the model's `Var`):
    ///
    /// ```text
    /// m_t = b1 m_{t-1} + (1 - b1) g_t
    /// v_t = b2 v_{t-1} + (1 - b2) g_t^2
    /// theta_t = theta_{t-1} - step_size m_t / (sqrt(v_t) / bias_correction2_sqrt + eps)
    /// ```
    pub fn adam_update(&self, g: &Tensor, m: &mut Tensor, v: &mut Tensor, s: &AdamStep) -> Result<Tensor> {
        for (t, what) in [(g, "adam_update (gradient)"), (&*m, "adam_update (m)"), (&*v, "adam_update (v)")] {
            t.expect_shape(what, self.shape())?;
        }
        let AdamStep { step_size, beta1: b1, beta2: b2, bias_correction2_sqrt, eps } = *s;
        match placement("adam_update", &[self, g, m, v])? {
            Placement::Cpu => {
                let mut next = crate::pool::take(self.numel());
                next.par_chunks_mut(CHUNK)
                    .zip(self.as_slice().par_chunks(CHUNK))
                    .zip(m.as_mut_slice().par_chunks_mut(CHUNK))
                    .zip(v.as_mut_slice().par_chunks_mut(CHUNK))
                    .zip(g.as_slice().par_chunks(CHUNK))
                    .for_each(|((((next, theta), m), v), g)| {
                        for ((((next, &theta), m), v), &g) in next.iter_mut().zip(theta).zip(m).zip(v).zip(g) {
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * (g * g);
                            let denom = v.sqrt() / bias_correction2_sqrt + eps;
                            *next = theta - step_size * (*m / denom);
                        }
                    });
                Ok(Tensor::from_parts(next, self.shape().clone()))
            }
            Placement::Device(backend) => {
                let mut next = backend.alloc(self.numel())?;
                backend.adam(self.buffer(), g.buffer(), m.buffer_mut()?, v.buffer_mut()?, &mut *next, s)?;
                Ok(Tensor::from_device(&backend, next, self.shape().clone()))
            }
        }
    }

    /// self += weight (end - self), in place: the EMA's update
    /// `shadow <- d shadow + (1 - d) theta` with weight = 1 - d, written so
    /// that a shadow equal to theta stays exactly equal.
    pub fn lerp_assign(&mut self, end: &Tensor, weight: f32) -> Result<()> {
        end.expect_shape("lerp_assign", self.shape())?;
        match placement("lerp_assign", &[self, end])? {
            Placement::Cpu => {
                let chunks = self.as_mut_slice().par_chunks_mut(CHUNK).zip(end.as_slice().par_chunks(CHUNK));
                chunks.for_each(|(x, end)| x.iter_mut().zip(end).for_each(|(x, &e)| *x += weight * (e - *x)));
                Ok(())
            }
            Placement::Device(backend) => backend.lerp(self.buffer_mut()?, end.buffer(), weight),
        }
    }
}
