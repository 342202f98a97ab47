//! `ddpm-rs`: the facade over the workspace's crates.
//!
//! Each concern lives in its own crate under `crates/`; this package only
//! re-exports them so that the top-level `tests/` and `benches/` can reach all
//! of them through one name.

pub use ddpm_autograd as autograd;
pub use ddpm_nn as nn;
pub use ddpm_tensor as tensor;
