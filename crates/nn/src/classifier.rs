//! A LeNet-style MNIST classifier: the judge of generated digits.
//!
//! ```text
//! x [N, 1, 28, 28] in [-1, 1]
//!   conv1  5x5, 1 -> 16, pad 2   [N, 16, 28, 28]   ReLU, 2x2 max-pool -> [N, 16, 14, 14]
//!   conv2  5x5, 16 -> 32, pad 2  [N, 32, 14, 14]   ReLU, 2x2 max-pool -> [N, 32, 7, 7]
//!   flatten                      [N, 1568]
//!   fc1    1568 -> 128           [N, 128]          ReLU: the features
//!   fc2    128 -> 10             [N, 10]           the logits
//! ```
//!
//! LeCun et al.'s LeNet-5 (1998) with today's ReLU and max-pooling in place of
//! its sigmoids and trainable sub-sampling, and "same" padding so that 28x28
//! halves twice to 7x7. 215,370 parameters.
//!
//! [`Classifier::features`] returns the 128 activations of fc1 after its ReLU,
//! the penultimate layer: the Fréchet distance between generated and real
//! digits (`ddpm::eval`) is measured on them, as FID measures on Inception's
//! 2048 pool features.

use ddpm_autograd::{Result, Var};
use rand::Rng;

use crate::layers::{Conv2d, Linear};
use crate::{Module, NamedParams};

/// The classifier's layers, named `conv1`, `conv2`, `fc1`, `fc2` in checkpoints.
pub struct Classifier {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Classifier {
    /// Image side: the network takes [N, 1, SIDE, SIDE].
    pub const SIDE: usize = 28;
    /// The length of a feature vector (fc1's width).
    pub const FEATURES: usize = 128;
    /// The number of classes (digits 0-9).
    pub const CLASSES: usize = 10;
    /// Channels after the second convolution, times the 7x7 that two poolings leave.
    const FLAT: usize = 32 * 7 * 7;

    /// Weights drawn as PyTorch initialises Conv2d and Linear.
    pub fn new(rng: &mut impl Rng) -> Classifier {
        Classifier {
            conv1: Conv2d::new(1, 16, 5, 1, 2, rng),
            conv2: Conv2d::new(16, 32, 5, 1, 2, rng),
            fc1: Linear::new(Self::FLAT, Self::FEATURES, rng),
            fc2: Linear::new(Self::FEATURES, Self::CLASSES, rng),
        }
    }

    /// x [N, 1, 28, 28] -> the penultimate features [N, 128] (non-negative: after ReLU).
    pub fn features(&self, x: &Var) -> Result<Var> {
        let n = x.dims()[0];
        let h = self.conv1.forward(x)?.relu()?.max_pool2x2()?; // [N, 16, 14, 14]
        let h = self.conv2.forward(&h)?.relu()?.max_pool2x2()?; // [N, 32, 7, 7]
        let h = h.reshape([n, Self::FLAT])?; // [N, 1568]
        self.fc1.forward(&h)?.relu() // [N, 128]
    }

    /// The logits [N, 10] of features [N, 128] (softmax gives the class probabilities).
    pub fn head(&self, features: &Var) -> Result<Var> {
        self.fc2.forward(features)
    }

    /// x [N, 1, 28, 28] -> logits [N, 10].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        self.head(&self.features(x)?)
    }
}

impl Module for Classifier {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        self.conv1.visit_params(&format!("{prefix}conv1."), out);
        self.conv2.visit_params(&format!("{prefix}conv2."), out);
        self.fc1.visit_params(&format!("{prefix}fc1."), out);
        self.fc2.visit_params(&format!("{prefix}fc2."), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm_autograd::Tensor;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn shapes_names_and_parameter_count() {
        let model = Classifier::new(&mut StdRng::seed_from_u64(0));
        let x = Var::constant(Tensor::randn([3, 1, 28, 28], &mut StdRng::seed_from_u64(1)));
        let f = model.features(&x).unwrap();
        assert_eq!(f.dims(), vec![3, Classifier::FEATURES]);
        assert!(f.value().as_slice().iter().all(|&v| v >= 0.0), "features come after a ReLU");
        assert_eq!(model.forward(&x).unwrap().dims(), vec![3, Classifier::CLASSES]);
        let names: Vec<String> = model.named_params().into_iter().map(|(name, _)| name).collect();
        let expected = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"];
        assert_eq!(names[..6], expected);
        // 16*25 + 16 + 32*16*25 + 32 + 1568*128 + 128 + 128*10 + 10
        assert_eq!(model.num_params(), 215_370);
    }
}
