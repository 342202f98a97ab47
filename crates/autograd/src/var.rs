//! The graph's node type.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ddpm_tensor::{Shape, Tensor};

use crate::grad_mode::is_grad_enabled;
use crate::op::Op;

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
}

/// How many graph nodes are alive on this thread: a test that the graph is
/// freed after each training step watches this number stay flat.
pub fn live_nodes() -> usize {
    LIVE.with(|n| n.get())
}

pub(crate) struct Node {
    pub(crate) id: usize,
    /// Only a leaf's value ever changes (an optimiser step, through `set_value`).
    pub(crate) value: RefCell<Tensor>,
    /// How this node was computed; `None` for leaves, and taken out (freeing the
    /// graph behind it) once backward has used it.
    pub(crate) op: RefCell<Option<Op>>,
    pub(crate) requires_grad: bool,
    /// Made by `param` or `constant` rather than by an op.
    pub(crate) is_leaf: bool,
}

impl Drop for Node {
    fn drop(&mut self) {
        LIVE.with(|n| n.set(n.get() - 1));
    }
}

/// A tensor in the autodiff graph. Cloning shares the node.
#[derive(Clone)]
pub struct Var(pub(crate) Rc<Node>);

impl Var {
    fn make(value: Tensor, op: Option<Op>, requires_grad: bool) -> Var {
        LIVE.with(|n| n.set(n.get() + 1));
        let op_is_none = op.is_none();
        Var(Rc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            value: RefCell::new(value),
            op: RefCell::new(op),
            requires_grad,
            is_leaf: op_is_none,
        }))
    }

    /// A leaf whose gradient backward will report: a parameter, or an input
    /// under a gradient check.
    pub fn param(value: Tensor) -> Var {
        Var::make(value, None, true)
    }

    /// A leaf that takes no gradient: data, noise, a dropout mask.
    pub fn constant(value: Tensor) -> Var {
        Var::make(value, None, false)
    }

    /// The result of an op: records `op` only when some input wants a gradient
    /// and recording is on; otherwise the result is a constant.
    pub(crate) fn from_op(value: Tensor, op: Op) -> Var {
        if is_grad_enabled() && op.inputs().iter().any(|v| v.requires_grad()) {
            Var::make(value, Some(op), true)
        } else {
            Var::constant(value)
        }
    }

    pub fn id(&self) -> usize {
        self.0.id
    }

    /// The current value (a cheap clone sharing the buffer).
    pub fn value(&self) -> Tensor {
        self.0.value.borrow().clone()
    }

    /// Replaces a leaf's value, as an optimiser does after a step.
    pub fn set_value(&self, value: Tensor) {
        assert!(self.0.is_leaf, "set_value on a non-leaf node");
        assert_eq!(value.shape(), &self.shape(), "set_value must keep the shape");
        *self.0.value.borrow_mut() = value;
    }

    pub fn shape(&self) -> Shape {
        self.0.value.borrow().shape().clone()
    }

    pub fn dims(&self) -> Vec<usize> {
        self.0.value.borrow().dims().to_vec()
    }

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// The same value cut off from the graph: no gradient flows through it.
    pub fn detach(&self) -> Var {
        Var::constant(self.value())
    }
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0.op.borrow().as_ref().map(|o| o.name()).unwrap_or("leaf");
        write!(f, "Var#{} {} {:?}", self.0.id, op, self.0.value.borrow())
    }
}
