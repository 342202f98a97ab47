//! Naming parameters the way PyTorch's `state_dict()` does.

use ddpm_autograd::{Result, Var};
use ddpm_tensor::Device;

/// Parameters with their dotted names (`down.0.conv1.weight`), in the order
/// PyTorch registers them (the order of `named_parameters()`).
pub type NamedParams = Vec<(String, Var)>;

/// Anything holding parameters.
pub trait Module {
    /// Appends this module's parameters to `out`, each name prefixed by
    /// `prefix` (which is empty or ends with a dot).
    fn visit_params(&self, prefix: &str, out: &mut NamedParams);

    /// All parameters, named as in the reference's `state_dict()`.
    fn named_params(&self) -> NamedParams {
        let mut out = vec![];
        self.visit_params("", &mut out);
        out
    }

    /// The number of trainable scalars.
    fn num_params(&self) -> usize {
        self.named_params().iter().map(|(_, p)| p.shape().numel()).sum()
    }

    /// Moves every parameter to `device` (`Tensor::to`: those already there
    /// stay as they are). The forward pass then runs there.
    fn to_device(&self, device: Device) -> Result<()> {
        for (_, p) in self.named_params() {
            p.set_value(p.value().to(device)?);
        }
        Ok(())
    }

    /// Where the parameters are (the first one's device; the host for a
    /// module without parameters).
    fn device(&self) -> Device {
        self.named_params().first().map_or(Device::Cpu, |(_, p)| p.value().device())
    }
}
