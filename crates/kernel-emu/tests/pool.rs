//! The caching allocator under the emulated backend: a freed buffer comes
//! back for the next request of its length, poisoned with NaN again, so that
//! a kernel which misses part of its output cannot hide behind the numbers
//! of the buffer's previous owner.

use ddpm_cuda::pool::PoolBuffer;
use ddpm_cuda::KernelBackend;
use ddpm_kernel_emu::Emu;
use ddpm_tensor::backend::{Backend, BlockCopy, DeviceBuffer};
use ddpm_tensor::Device;

/// Where a buffer of the emulated backend keeps its numbers.
fn address(buf: &dyn DeviceBuffer) -> *const f32 {
    let pooled: &PoolBuffer<Vec<f32>> = buf.as_any().downcast_ref().unwrap();
    pooled.get().unwrap().as_ptr()
}

#[test]
fn a_dropped_buffer_comes_back_for_its_length_poisoned_again() {
    // A backend of its own, not the registered one: its pool is this test's alone.
    let backend = KernelBackend::new(Emu, Device::Emulated, "the pool test's");
    let mut a = backend.alloc(1000).unwrap();
    backend.fill(&mut *a, 1.0).unwrap();
    let first = address(&*a);
    drop(a);
    assert_eq!(backend.pool().cached_bytes(), 4000);

    let other = backend.alloc(999).unwrap();
    assert_ne!(address(&*other), first, "a request of another length takes a fresh buffer");
    let mut b = backend.alloc(1000).unwrap();
    assert_eq!(address(&*b), first, "the freed buffer of that length is reused");
    assert_eq!(backend.pool().cached_bytes(), 0);
    assert!(backend.download(&*b).unwrap().iter().all(|v| v.is_nan()), "the old 1s are gone: NaN again");

    // A kernel that writes half of its output: the other half stays NaN,
    // which any comparison with the host's result fails on.
    let src = backend.upload(&[2.0; 1000]).unwrap();
    let half = BlockCopy { width: 500, ..BlockCopy::whole(1000) };
    backend.copy_blocks(&*src, &mut *b, &half).unwrap();
    let got = backend.download(&*b).unwrap();
    assert!(got[..500].iter().all(|&v| v == 2.0) && got[500..].iter().all(|v| v.is_nan()));
}

#[test]
fn empty_buffers_move_and_compute() {
    let backend = KernelBackend::new(Emu, Device::Emulated, "the pool test's");
    let mut empty = backend.alloc(0).unwrap();
    backend.fill(&mut *empty, 3.0).unwrap();
    assert_eq!(backend.download(&*empty).unwrap(), Vec::<f32>::new());
    assert_eq!(backend.upload(&[]).unwrap().len(), 0);
}
