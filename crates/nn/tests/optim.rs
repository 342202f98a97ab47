//! Adam, gradient clipping and the EMA: against numbers worked out by hand and
//! against tensors written by PyTorch (`scripts/make_fixtures.py`, function
//! `adam_fixture`, into `tests/fixtures/adam.safetensors` at the workspace root).

use std::path::PathBuf;

use ddpm_autograd::{Gradients, Tensor, Var};
use ddpm_nn::checkpoint::load_tensors;
use ddpm_nn::optim::{clip_grad_norm, Adam, AdamConfig, Ema};

fn t(values: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), dims.to_vec()).unwrap()
}

/// Gradients in which dL/dp_i is exactly `g_i`: backward of
/// L = sum_i sum(p_i * g_i), since d/dp sum(p * g) = g.
fn grads_equal_to(params: &[Var], gs: &[&Tensor]) -> Gradients {
    let mut loss: Option<Var> = None;
    for (p, g) in params.iter().zip(gs) {
        let term = p.mul(&Var::constant((*g).clone())).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            None => term,
            Some(l) => l.add(&term).unwrap(),
        });
    }
    let grads = loss.unwrap().backward().unwrap();
    for (p, g) in params.iter().zip(gs) {
        assert_eq!(grads.get(p).unwrap().to_vec(), g.to_vec(), "the gradient is g exactly");
    }
    grads
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let diff = got.max_abs_diff(want).unwrap();
    assert!(diff <= atol, "{what}: max |got - want| = {diff:e} > {atol:e}\n got  {got:?}\n want {want:?}");
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

// ------------------------------------------------------------------ Adam

/// Two steps worked out by hand, lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8.
///
/// Element 0: theta_0 = 1, g_1 = 1, g_2 = 3.
///   t = 1: m = 0.1 * 1 = 0.1, v = 0.001 * 1 = 0.001,
///          mhat = 0.1 / (1 - 0.9) = 1, vhat = 0.001 / (1 - 0.999) = 1,
///          theta_1 = 1 - 0.1 * 1 / (1 + 1e-8) = 0.9 (the first step is lr * sign(g)).
///   t = 2: m = 0.9 * 0.1 + 0.1 * 3 = 0.39, v = 0.999 * 0.001 + 0.001 * 9 = 0.009999,
///          mhat = 0.39 / (1 - 0.81) = 2.0526316, vhat = 0.009999 / (1 - 0.998001) = 5.0020010,
///          theta_2 = 0.9 - 0.1 * 2.0526316 / (2.2365154 + 1e-8) = 0.8082219.
/// Element 1: theta_0 = -2, g_1 = -0.5, g_2 = 0 (momentum keeps it moving).
///   t = 1: mhat = -0.5, vhat = 0.25, theta_1 = -2 - 0.1 * (-0.5 / 0.5) = -1.9.
///   t = 2: m = 0.9 * -0.05 = -0.045, v = 0.999 * 0.00025 = 0.00024975,
///          mhat = -0.045 / 0.19 = -0.2368421, vhat = 0.00024975 / 0.001999 = 0.1249375,
///          theta_2 = -1.9 - 0.1 * -0.2368421 / 0.3534649 = -1.8329942.
/// One f32 detail: the betas are stored as the nearest f32, b1 = 0.89999998 and
/// b2 = 0.99900001, so 1 - b1 = 0.10000002 and 1 - b2 = 0.00099998713; m is
/// off the decimal values above by 2e-7 (relative) and v by 1.3e-5. PyTorch
/// keeps the betas in doubles and does not see this; theta does not either,
/// because the bias corrections 1 - b^t are made of the same betas and cancel it.
#[test]
fn adam_takes_the_steps_worked_out_by_hand() {
    let params = [Var::param(t(&[1.0, -2.0], &[2]))];
    let p = &params[0];
    let config = AdamConfig { lr: 0.1, ..AdamConfig::default() };
    let mut adam = Adam::new(&params, config).unwrap();

    adam.step(&params, &grads_equal_to(&params, &[&t(&[1.0, -0.5], &[2])])).unwrap();
    assert_close("theta_1", &p.value(), &t(&[0.9, -1.9], &[2]), 1e-6);
    assert_close("m_1", &adam.moments().0[0], &t(&[0.1, -0.05], &[2]), 1e-6);
    assert!(adam.moments().1[0].all_close(&t(&[0.001, 0.00025], &[2]), 2e-5, 0.0), "v_1 {:?}", adam.moments().1[0]);

    adam.step(&params, &grads_equal_to(&params, &[&t(&[3.0, 0.0], &[2])])).unwrap();
    assert_close("theta_2", &p.value(), &t(&[0.8082219, -1.8329942], &[2]), 1e-6);
    assert_close("m_2", &adam.moments().0[0], &t(&[0.39, -0.045], &[2]), 1e-6);
    assert!(
        adam.moments().1[0].all_close(&t(&[0.009999, 0.00024975], &[2]), 2e-5, 0.0),
        "v_2 {:?}",
        adam.moments().1[0]
    );
    assert_eq!(adam.step_count(), 2);
}

/// Two steps of torch.optim.Adam (lr 1e-3, betas (0.9, 0.999), eps 1e-8) from
/// p0 with gradients g1 then g2 give p1 then p2.
#[test]
fn adam_matches_pytorch() {
    let (f, meta) = load_tensors(&fixture("adam.safetensors")).unwrap();
    assert_eq!(meta["lr"], "1e-3");
    let params = [Var::param(f["p0"].clone())];
    let p = &params[0];
    let mut adam = Adam::new(&params, AdamConfig::default()).unwrap();
    for (g, want) in [("g1", "p1"), ("g2", "p2")] {
        let grads = grads_equal_to(&params, &[&f[g]]);
        adam.step(&params, &grads).unwrap();
        assert_close(want, &p.value(), &f[want], 1e-6);
    }
}

/// Saving (t, m, v) after one step and restoring them into a fresh optimiser
/// gives the same second step as never stopping.
#[test]
fn adam_resumes_from_its_saved_moments() {
    let g1 = t(&[0.3, -1.0, 2.0], &[3]);
    let g2 = t(&[-0.7, 0.1, 0.5], &[3]);
    let start = t(&[0.5, 0.25, -1.0], &[3]);

    let a = [Var::param(start.clone())];
    let mut straight = Adam::new(&a, AdamConfig::default()).unwrap();
    straight.step(&a, &grads_equal_to(&a, &[&g1])).unwrap();
    straight.step(&a, &grads_equal_to(&a, &[&g2])).unwrap();

    let b = [Var::param(start)];
    let mut first = Adam::new(&b, AdamConfig::default()).unwrap();
    first.step(&b, &grads_equal_to(&b, &[&g1])).unwrap();
    let (m, v) = first.moments();
    let (m, v, step) = (m.to_vec(), v.to_vec(), first.step_count());
    drop(first);
    let mut resumed = Adam::new(&b, AdamConfig::default()).unwrap();
    resumed.restore(step, m, v).unwrap();
    resumed.step(&b, &grads_equal_to(&b, &[&g2])).unwrap();

    assert_eq!(a[0].value().to_vec(), b[0].value().to_vec());
    assert_eq!(resumed.step_count(), 2);
}

#[test]
fn adam_leaves_a_parameter_without_gradient_alone() {
    let used = Var::param(t(&[1.0, 2.0], &[2]));
    let unused = Var::param(t(&[5.0], &[1]));
    let params = [used.clone(), unused.clone()];
    let mut adam = Adam::new(&params, AdamConfig::default()).unwrap();
    // L = sum(used * g): L does not depend on `unused`, which gets no gradient.
    let grads = used.mul(&Var::constant(t(&[1.0, 1.0], &[2]))).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&unused).is_none());
    adam.step(&params, &grads).unwrap();
    assert_eq!(unused.value().to_vec(), vec![5.0]);
    assert_eq!(adam.moments().0[1].to_vec(), vec![0.0], "m untouched");
    assert_ne!(used.value().to_vec(), vec![1.0, 2.0]);
}

#[test]
fn adam_refuses_mismatched_parameters_and_gradients() {
    let (p, q) = (Var::param(t(&[1.0, 2.0], &[2])), Var::param(t(&[1.0, 2.0, 3.0], &[3])));
    let (only_p, only_q, both) = ([p.clone()], [q.clone()], [p.clone(), q.clone()]);
    let mut adam = Adam::new(&only_p, AdamConfig::default()).unwrap();

    // Another number of parameters than the optimiser was made for.
    let grads = grads_equal_to(&only_p, &[&t(&[1.0, 1.0], &[2])]);
    let err = adam.step(&both, &grads).unwrap_err();
    assert!(err.to_string().contains("2 parameter tensors given, the state holds 1"), "{err}");
    // A parameter of another shape.
    let grads = grads_equal_to(&only_q, &[&t(&[1.0, 1.0, 1.0], &[3])]);
    let err = adam.step(&only_q, &grads).unwrap_err();
    assert!(err.to_string().contains("parameter 0 has shape [3], the state holds [2]"), "{err}");
    // A gradient of another shape than its parameter.
    let mut grads = grads_equal_to(&only_p, &[&t(&[1.0, 1.0], &[2])]);
    *grads.get_mut(&p).unwrap() = Tensor::zeros([5]);
    let err = adam.step(&only_p, &grads).unwrap_err();
    assert!(err.to_string().contains("the gradient of parameter 0 has shape [5], the parameter [2]"), "{err}");

    // Nothing moved.
    assert_eq!(p.value().to_vec(), vec![1.0, 2.0]);
    assert_eq!(adam.step_count(), 0);
    // A saved state of the wrong shape is refused too.
    let err = adam.restore(3, vec![Tensor::zeros([3])], vec![Tensor::zeros([2])]).unwrap_err();
    assert!(err.to_string().contains("m 0 has shape [3], the state holds [2]"), "{err}");
    assert_eq!(adam.step_count(), 0);
}

#[test]
fn adam_learning_rate_can_change_between_steps() {
    let mut adam = Adam::new(&[], AdamConfig::default()).unwrap();
    assert_eq!(adam.lr(), 1e-3);
    adam.set_lr(2e-4);
    assert_eq!(adam.lr(), 2e-4);
    assert_eq!(adam.config().beta2, 0.999);
}

// ------------------------------------------------------------------ clipping

/// ||g|| over both tensors: sqrt(3^2 + 4^2 + 12^2) = 13. With max_norm 1.3 every
/// element is scaled by 1.3 / (13 + 1e-6), about 0.1, and the clipped norm is
/// 1.3 * 13 / (13 + 1e-6) = 1.3 up to 1e-7.
#[test]
fn clipping_scales_to_max_norm_and_reports_the_norm_before() {
    let a = Var::param(Tensor::zeros([2]));
    let b = Var::param(Tensor::zeros([1, 1]));
    let unused = Var::param(Tensor::zeros([4]));
    let params = [a.clone(), b.clone()];
    let mut grads = grads_equal_to(&params, &[&t(&[3.0, 4.0], &[2]), &t(&[12.0], &[1, 1])]);
    let all = [a.clone(), b.clone(), unused];

    let norm = clip_grad_norm(&all, &mut grads, 1.3).unwrap().item().unwrap();
    assert!((norm - 13.0).abs() < 1e-6, "norm {norm}");
    let coef = 1.3 / (13.0 + 1e-6);
    assert_close("a", grads.get(&a).unwrap(), &t(&[3.0 * coef, 4.0 * coef], &[2]), 1e-6);
    assert_close("b", grads.get(&b).unwrap(), &t(&[12.0 * coef], &[1, 1]), 1e-6);
    let clipped: f32 = [grads.get(&a).unwrap(), grads.get(&b).unwrap()]
        .iter()
        .flat_map(|g| g.as_slice())
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt();
    assert!((clipped - 1.3).abs() < 1e-6, "clipped norm {clipped}");
}

/// ||g|| = 5 <= max_norm = 10: the coefficient 10 / 5 is clamped to 1 and the
/// gradients come back bit for bit.
#[test]
fn clipping_leaves_small_gradients_untouched() {
    let params = [Var::param(Tensor::zeros([2]))];
    let a = &params[0];
    let g = t(&[3.0, -4.0], &[2]);
    let mut grads = grads_equal_to(&params, &[&g]);
    let norm = clip_grad_norm(&params, &mut grads, 10.0).unwrap().item().unwrap();
    assert_eq!(norm, 5.0);
    assert_eq!(grads.get(a).unwrap().to_vec(), g.to_vec());
}

/// torch.nn.utils.clip_grad_norm_(max_norm=1.0) on one gradient (clip_g) and on
/// two at once (clip_a, clip_b), whose norms the fixture records.
#[test]
fn clipping_matches_pytorch() {
    let (f, meta) = load_tensors(&fixture("adam.safetensors")).unwrap();
    let max_norm: f32 = meta["max_norm"].parse().unwrap();

    let params = [Var::param(Tensor::zeros(f["clip_g"].shape().clone()))];
    let g = &params[0];
    let mut grads = grads_equal_to(&params, &[&f["clip_g"]]);
    let norm = clip_grad_norm(&params, &mut grads, max_norm).unwrap().item().unwrap();
    let want: f32 = meta["clip_g_norm"].parse().unwrap();
    assert!((norm - want).abs() < 1e-6 * want, "norm {norm}, torch {want}");
    assert_close("clip_out", grads.get(g).unwrap(), &f["clip_out"], 1e-6);

    let a = Var::param(Tensor::zeros(f["clip_a"].shape().clone()));
    let b = Var::param(Tensor::zeros(f["clip_b"].shape().clone()));
    let params = [a.clone(), b.clone()];
    let mut grads = grads_equal_to(&params, &[&f["clip_a"], &f["clip_b"]]);
    let norm = clip_grad_norm(&params, &mut grads, max_norm).unwrap().item().unwrap();
    let want: f32 = meta["clip_ab_norm"].parse().unwrap();
    assert!((norm - want).abs() < 1e-6 * want, "norm {norm}, torch {want}");
    assert_close("clip_a_out", grads.get(&a).unwrap(), &f["clip_a_out"], 1e-6);
    assert_close("clip_b_out", grads.get(&b).unwrap(), &f["clip_b_out"], 1e-6);
}

// ------------------------------------------------------------------ EMA

/// The shadow starts at theta = 0; theta then jumps to 1 and stays. With
/// d_n = min(0.999, (1 + n) / (10 + n)):
///   d_0 = 1/10:  s_1 = 0.1 * 0 + 0.9 * 1             = 0.9
///   d_1 = 2/11:  s_2 = 2/11 * 0.9 + 9/11 * 1          = 10.8 / 11 = 0.98181818
///   d_2 = 3/12:  s_3 = 0.25 * 0.98181818 + 0.75 * 1   = 0.99545455
/// (in general 1 - s_n = d_0 d_1 ... d_{n-1}).
#[test]
fn ema_warm_up_follows_the_formula() {
    let params = [Var::param(t(&[0.0], &[1]))];
    let p = &params[0];
    let mut ema = Ema::new(&params, 0.999);
    p.set_value(t(&[1.0], &[1]));
    let mut want = [0.9, 10.8 / 11.0, 0.99545455].into_iter();
    for (n, d) in [(0, 0.1), (1, 2.0 / 11.0), (2, 0.25)] {
        assert_eq!(ema.num_updates(), n);
        assert!((ema.current_decay() - d).abs() < 1e-7, "d_{n} = {}", ema.current_decay());
        ema.update(&params).unwrap();
        let s = ema.shadow()[0].item().unwrap();
        let w: f32 = want.next().unwrap();
        assert!((s - w).abs() < 1e-6, "s_{} = {s}, want {w}", n + 1);
    }
}

/// The warm-up only ever lowers d: min(0.2, (1 + n) / (10 + n)) is 0.1, 2/11,
/// then 0.2 for good (3/12 = 0.25 > 0.2).
#[test]
fn ema_decay_never_exceeds_the_configured_one() {
    let params = [Var::param(t(&[0.0], &[1]))];
    let mut ema = Ema::new(&params, 0.2);
    let mut seen = vec![];
    for _ in 0..5 {
        seen.push(ema.current_decay());
        ema.update(&params).unwrap();
    }
    let want = [0.1, 2.0 / 11.0, 0.2, 0.2, 0.2];
    assert!(seen.iter().zip(want).all(|(d, w)| (d - w).abs() < 1e-7), "{seen:?}");
}

/// On a constant theta, s_n - theta = d_{n-1} (s_{n-1} - theta) shrinks by at
/// least `decay` per update: after 3000 updates at 0.99 it is below 0.99^3000 * 2.5.
#[test]
fn ema_converges_to_a_constant_parameter() {
    let params = [Var::param(t(&[0.0, 0.0, 0.0], &[3]))];
    let p = &params[0];
    let mut ema = Ema::new(&params, 0.99);
    let target = t(&[2.5, -1.0, 0.125], &[3]);
    p.set_value(target.clone());
    for _ in 0..3000 {
        ema.update(&params).unwrap();
    }
    assert_close("shadow", &ema.shadow()[0], &target, 1e-6);
    assert_eq!(ema.num_updates(), 3000);
}

#[test]
fn ema_copies_into_a_model_and_restores_from_a_save() {
    let params = [Var::param(t(&[1.0, 2.0], &[2]))];
    let p = &params[0];
    let mut ema = Ema::new(&params, 0.5);
    p.set_value(t(&[3.0, 4.0], &[2]));
    ema.update(&params).unwrap(); // d_0 = 0.1: s = 0.1 * [1, 2] + 0.9 * [3, 4] = [2.8, 3.8]

    let sampler = [Var::param(Tensor::zeros([2]))];
    ema.copy_to(&sampler).unwrap();
    assert_close("copied", &sampler[0].value(), &t(&[2.8, 3.8], &[2]), 1e-6);

    let mut resumed = Ema::new(&params, 0.5);
    resumed.restore(ema.shadow().to_vec(), ema.num_updates()).unwrap();
    assert_eq!(resumed.num_updates(), 1);
    assert_eq!(resumed.shadow()[0].to_vec(), ema.shadow()[0].to_vec());

    // Shapes that do not match are errors, and change nothing.
    let wrong = [Var::param(Tensor::zeros([3]))];
    assert!(ema.update(&wrong).is_err());
    assert!(ema.copy_to(&wrong).is_err());
    assert!(ema.copy_to(&[]).is_err());
    assert!(resumed.restore(vec![Tensor::zeros([3])], 7).is_err());
    assert_eq!(resumed.num_updates(), 1);
    assert_eq!(wrong[0].value().to_vec(), vec![0.0; 3]);
    assert_eq!(ema.num_updates(), 1);
}
