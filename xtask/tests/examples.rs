//! The examples in examples/ do what the README says they do: the sample
//! example's grid is `cargo xtask sample`'s grid, to the byte, for the same
//! checkpoint and seed (the example's code is compiled in here as it stands).

mod common;

#[path = "../../examples/sample.rs"]
#[allow(dead_code)] // its `main`: the test calls the function main calls
mod sample_example;

use common::{stderr, temp_dir, xtask, FIXTURE};

#[test]
fn the_sample_example_draws_the_grid_cargo_xtask_sample_draws() {
    let tmp = temp_dir("example-sample");
    let (example, cli) = (tmp.path().join("example.png"), tmp.path().join("cli.png"));
    sample_example::sample_digits(FIXTURE.as_ref(), &example, 3).unwrap();

    let result =
        xtask(&["sample", "--checkpoint", FIXTURE, "--n", "10", "--seed", "3", "--out", cli.to_str().unwrap()]);
    assert!(result.status.success(), "{}", stderr(&result));
    let (example, cli) = (std::fs::read(&example).unwrap(), std::fs::read(&cli).unwrap());
    assert!(example == cli, "the example's PNG ({} bytes) differs from the CLI's ({} bytes)", example.len(), cli.len());
}
