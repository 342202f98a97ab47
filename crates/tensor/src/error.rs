use crate::{Device, Shape};

/// Why a tensor operation refused its inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("{op}: shapes {lhs} and {rhs} do not match")]
    ShapeMismatch { op: &'static str, lhs: Shape, rhs: Shape },
    #[error("{op}: shapes {lhs} and {rhs} cannot be broadcast together")]
    Broadcast { op: &'static str, lhs: Shape, rhs: Shape },
    #[error("{len} values cannot fill shape {shape} ({} elements)", shape.numel())]
    DataLength { len: usize, shape: Shape },
    #[error("{op}: axis {axis} is out of range for a tensor of rank {rank}")]
    Axis { op: &'static str, axis: usize, rank: usize },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    #[error("{op}: one operand is on {lhs} and another on {rhs}; move one of them with .to(device)")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },
    #[error("{op} has no kernel on {device}: it runs on the CPU only (move the tensor with .to(Device::Cpu))")]
    NoDeviceKernel { op: &'static str, device: Device },
    /// A device refused or failed a launch, an allocation or a copy.
    #[error("{op} on {device}: {msg}")]
    Device { op: &'static str, device: Device, msg: String },
}

pub type Result<T> = std::result::Result<T, TensorError>;

impl TensorError {
    /// An `Invalid` error for `op` with a message.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        TensorError::Invalid { op, msg: msg.into() }
    }
}
