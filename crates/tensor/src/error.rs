use crate::Shape;

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
}

pub type Result<T> = std::result::Result<T, TensorError>;

impl TensorError {
    /// An `Invalid` error for `op` with a message.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        TensorError::Invalid { op, msg: msg.into() }
    }
}
