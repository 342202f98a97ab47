//! `ddpm-nn`: the layers of a DDPM U-Net, the U-Net itself, and what training
//! needs around it (Adam, gradient clipping, EMA, checkpoints); and the
//! LeNet-style classifier that judges generated digits.
//!
//! Parameter names are the PyTorch reference's `state_dict()` keys
//! (`scripts/ddpm_ref.py`), so checkpoints interchange both ways.

pub mod checkpoint;
pub mod classifier;
pub mod fs;
pub mod layers;
mod module;
pub mod optim;
pub mod unet;

pub use classifier::Classifier;
pub use module::{Module, NamedParams};
pub use unet::{Preset, UNet};
