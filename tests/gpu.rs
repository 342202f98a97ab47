//! Every tensor op on GPU 0 against the same op on the host: the checks of
//! `tests/emulated.rs`, on the real device. Where there is no GPU (CI, most
//! machines) each test says so and passes, unless DDPM_REQUIRE_GPU is set
//! (the GPU machine's runs, `scripts/gpu_run.sh`): then a missing GPU fails
//! them, with the reason.

mod parity;

use ddpm_tensor::Device;

/// GPU 0 with its backend registered, or None after saying why not.
fn gpu() -> Option<Device> {
    match ddpm_cuda::open(0) {
        Ok(device) => Some(device),
        Err(e) if std::env::var_os("DDPM_REQUIRE_GPU").is_some() => panic!("DDPM_REQUIRE_GPU is set: {e}"),
        Err(e) => {
            eprintln!("skipped: no GPU ({e})");
            None
        }
    }
}

parity::parity_tests!(gpu());
