//! The engine's own guarantees: what is recorded, what is freed, what is returned.

use ddpm_autograd::{live_nodes, no_grad, Tensor, Var};
use rand::{rngs::StdRng, SeedableRng};

fn param(dims: &[usize], seed: u64) -> Var {
    Var::param(Tensor::randn(dims, &mut StdRng::seed_from_u64(seed)))
}

/// A small two-layer network's loss: mean((silu(x W1) W2 - target)^2).
fn loss(w1: &Var, w2: &Var, x: &Var, target: &Var) -> Var {
    let h = x.matmul(w1).unwrap().silu().unwrap();
    h.matmul(w2).unwrap().mse(target).unwrap()
}

#[test]
fn no_grad_records_nothing() {
    let w = param(&[3, 3], 1);
    let y = no_grad(|| w.matmul(&w).unwrap().exp()).unwrap();
    assert!(!y.requires_grad());
    assert!(y.backward().unwrap().is_empty());
    // Recording is back on afterwards.
    assert!(w.matmul(&w).unwrap().requires_grad());
}

#[test]
fn constants_take_no_gradient() {
    let w = param(&[2, 2], 2);
    let c = Var::constant(Tensor::ones([2, 2]));
    let grads = w.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&w).is_some());
    assert!(grads.get(&c).is_none());
    // y = sum(w * 1): dy/dw = 1 everywhere.
    assert_eq!(grads.get(&w).unwrap().to_vec(), vec![1.0; 4]);
}

#[test]
fn gradients_of_a_small_network_step_by_step() {
    // y = sum(w^2 + 3w): dy/dw = 2w + 3, computed by hand for one value.
    let w = Var::param(Tensor::from_vec(vec![2.0], [1]).unwrap());
    let y = w.square().unwrap().add(&w.scale(3.0).unwrap()).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    assert_eq!(g.get(&w).unwrap().to_vec(), vec![7.0]);
}

#[test]
fn the_graph_is_freed_after_backward() {
    let (w1, w2) = (param(&[8, 16], 3), param(&[16, 4], 4));
    let x = Var::constant(Tensor::randn([5, 8], &mut StdRng::seed_from_u64(5)));
    let target = Var::constant(Tensor::zeros([5, 4]));
    let baseline = live_nodes();
    for _ in 0..10 {
        let l = loss(&w1, &w2, &x, &target);
        assert!(live_nodes() > baseline, "the forward pass builds a graph");
        let g = l.backward().unwrap();
        // Backward consumed the graph: only the loss node itself is left.
        assert_eq!(live_nodes(), baseline + 1);
        // A plain SGD step, as an optimiser would do it.
        for w in [&w1, &w2] {
            let step = g.get(w).unwrap().scale(-0.1).unwrap();
            w.set_value(w.value().add(&step).unwrap());
        }
    }
    assert_eq!(live_nodes(), baseline, "ten training steps leave nothing behind");
}

#[test]
fn backward_twice_finds_the_graph_gone() {
    let w = param(&[2], 6);
    let y = w.exp().unwrap().sum_all().unwrap();
    assert_eq!(y.backward().unwrap().len(), 1);
    // Like PyTorch without retain_graph: the graph was used up, and saying so
    // beats returning gradients that silently miss a path.
    let e = y.backward().err().expect("a second backward must fail");
    assert!(e.to_string().contains("already freed"), "{e}");
    // Two losses sharing a subgraph: the second finds the shared part freed.
    let h = w.exp().unwrap();
    let (l1, l2) = (h.sum_all().unwrap(), h.square().unwrap().sum_all().unwrap());
    l1.backward().unwrap();
    assert!(l2.backward().is_err());
}

#[test]
fn training_reduces_the_loss() {
    let (w1, w2) = (param(&[8, 16], 7), param(&[16, 4], 8));
    let mut rng = StdRng::seed_from_u64(9);
    let x = Var::constant(Tensor::randn([32, 8], &mut rng));
    let target = Var::constant(Tensor::randn([32, 4], &mut rng));
    let first = loss(&w1, &w2, &x, &target).value().item().unwrap();
    for _ in 0..200 {
        let g = loss(&w1, &w2, &x, &target).backward().unwrap();
        for w in [&w1, &w2] {
            w.set_value(w.value().sub(&g.get(w).unwrap().scale(0.05).unwrap()).unwrap());
        }
    }
    let last = loss(&w1, &w2, &x, &target).value().item().unwrap();
    assert!(last < 0.5 * first, "loss went from {first} to {last}");
}
