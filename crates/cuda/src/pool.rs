//! A caching allocator for a backend's buffers, as PyTorch's CUDA caching
//! allocator: a freed buffer goes back to a pool keyed by its length, and
//! the next request of that length takes it instead of allocating (a
//! training step asks for the same sizes every time; `cudaMalloc` and
//! `cudaFree` synchronise the device and cost far more than a kernel).
//!
//! Bounded: at most [`MAX_CACHED_BYTES`] wait in the pool; beyond that a
//! freed buffer is really freed. When an allocation fails (the device is
//! full), the pool frees everything it holds and tries once more.
//!
//! A buffer of length 0 holds no device memory at all (CUDA refuses to
//! allocate 0 bytes); the kernels get a null pointer for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ddpm_tensor::backend::DeviceBuffer;

use crate::exec::Executor;
use crate::ops::{In, Out};
use crate::Result;

/// The most the pool keeps for reuse: 8 GiB, a small part of an H200's 141 GB.
pub const MAX_CACHED_BYTES: usize = 8 << 30;

/// The freed buffers of one device, by length.
pub struct Pool<B> {
    cache: Mutex<Cache<B>>,
    limit: usize,
}

struct Cache<B> {
    free: HashMap<usize, Vec<B>>,
    bytes: usize,
}

impl<B> Pool<B> {
    /// A pool that keeps at most `limit` bytes.
    pub fn new(limit: usize) -> Pool<B> {
        Pool { cache: Mutex::new(Cache { free: HashMap::new(), bytes: 0 }), limit }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache<B>> {
        // A panic elsewhere cannot leave the cache inconsistent: reuse a poisoned lock.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A freed buffer of `len` floats, if one waits.
    fn take(&self, len: usize) -> Option<B> {
        let mut cache = self.cache();
        let buf = cache.free.get_mut(&len)?.pop()?;
        cache.bytes -= bytes(len);
        Some(buf)
    }

    /// Keeps `buf` (of `len` floats) for the next request of its length,
    /// unless the pool is full: then it is dropped (freed).
    fn give(&self, len: usize, buf: B) {
        let mut cache = self.cache();
        if cache.bytes + bytes(len) <= self.limit {
            cache.bytes += bytes(len);
            cache.free.entry(len).or_default().push(buf);
        }
    }

    /// Frees every buffer the pool holds.
    pub fn clear(&self) {
        let freed = {
            let mut cache = self.cache();
            cache.bytes = 0;
            std::mem::take(&mut cache.free)
        };
        drop(freed); // outside the lock: freeing device memory takes time
    }

    /// The bytes waiting for reuse.
    pub fn cached_bytes(&self) -> usize {
        self.cache().bytes
    }
}

fn bytes(len: usize) -> usize {
    len * std::mem::size_of::<f32>()
}

/// A buffer of `len` floats from `pool`, made by `e`: a freed one
/// (recycled, see [`Executor::recycle`]) or a fresh one. When the device
/// cannot allocate, the pool is emptied and the allocation tried once more.
pub fn alloc<E: Executor>(e: &E, pool: &Arc<Pool<E::Buf>>, len: usize) -> Result<PoolBuffer<E::Buf>>
where
    E::Buf: Send + Sync + 'static,
{
    let buf = if len == 0 {
        None
    } else if let Some(mut reused) = pool.take(len) {
        e.recycle(&mut reused);
        Some(reused)
    } else {
        Some(match e.output(len) {
            Ok(fresh) => fresh,
            Err(_) => {
                pool.clear();
                e.synchronize()?;
                e.output(len)?
            }
        })
    };
    Ok(PoolBuffer { len, buf, pool: Arc::clone(pool) })
}

/// A device buffer that goes back to its pool when dropped.
pub struct PoolBuffer<B: Send + Sync + 'static> {
    len: usize,
    /// None exactly when `len` is 0 (and while dropping).
    buf: Option<B>,
    pool: Arc<Pool<B>>,
}

impl<B: Send + Sync + 'static> PoolBuffer<B> {
    /// The executor's buffer; None for an empty one.
    pub fn get(&self) -> Option<&B> {
        self.buf.as_ref()
    }

    pub fn get_mut(&mut self) -> Option<&mut B> {
        self.buf.as_mut()
    }

    /// This buffer as a kernel's input.
    pub fn input(&self) -> In<'_, B> {
        In::from_parts(self.len, self.buf.as_ref())
    }

    /// This buffer as a kernel's output.
    pub fn output(&mut self) -> Out<'_, B> {
        Out::from_parts(self.len, self.buf.as_mut())
    }
}

impl<B: Send + Sync + 'static> Drop for PoolBuffer<B> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give(self.len, buf);
        }
    }
}

impl<B: Send + Sync + 'static> DeviceBuffer for PoolBuffer<B> {
    fn len(&self) -> usize {
        self.len
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Arg;
    use crate::launch::Launch;
    use crate::source::Module;
    use crate::CudaError;
    use std::cell::Cell;

    /// A device of `capacity` floats whose buffers are host vectors, each
    /// with an id, that counts its allocations and refuses those beyond its memory.
    struct Small {
        capacity: usize,
        in_use: Arc<Mutex<usize>>,
        made: Cell<usize>,
    }

    /// A buffer of [`Small`]: its id, and it gives its memory back when dropped.
    struct Tracked {
        id: usize,
        len: usize,
        in_use: Arc<Mutex<usize>>,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            *self.in_use.lock().unwrap() -= self.len;
        }
    }

    impl Executor for Small {
        type Buf = Tracked;

        fn output(&self, len: usize) -> Result<Tracked> {
            let mut in_use = self.in_use.lock().unwrap();
            if *in_use + len > self.capacity {
                return Err(CudaError::Invalid { op: "output", message: "out of memory".into() });
            }
            *in_use += len;
            self.made.set(self.made.get() + 1);
            Ok(Tracked { id: self.made.get(), len, in_use: Arc::clone(&self.in_use) })
        }
        fn upload(&self, _: &[f32]) -> Result<Tracked> {
            unreachable!("the pool never uploads")
        }
        fn upload_into(&self, _: &[f32], _: &mut Tracked) -> Result<()> {
            unreachable!("the pool never uploads")
        }
        fn download(&self, _: &Tracked) -> Result<Vec<f32>> {
            unreachable!("the pool never downloads")
        }
        fn len(&self, buf: &Tracked) -> usize {
            buf.len
        }
        fn launch(&self, _: &Module, _: &'static str, _: Launch, _: &mut [Arg<'_, Tracked>]) -> Result<()> {
            unreachable!("the pool launches nothing")
        }
    }

    fn small(capacity: usize) -> Small {
        Small { capacity, in_use: Arc::new(Mutex::new(0)), made: Cell::new(0) }
    }

    fn id(b: &PoolBuffer<Tracked>) -> usize {
        b.get().unwrap().id
    }

    #[test]
    fn a_dropped_buffer_is_reused_for_the_next_allocation_of_its_length() {
        let (e, pool) = (small(1000), Arc::new(Pool::new(MAX_CACHED_BYTES)));
        let a = alloc(&e, &pool, 100).unwrap();
        let first = id(&a);
        drop(a);
        assert_eq!(pool.cached_bytes(), 400);
        let other = alloc(&e, &pool, 50).unwrap();
        assert_ne!(id(&other), first, "a buffer of another length is not taken");
        let again = alloc(&e, &pool, 100).unwrap();
        assert_eq!(id(&again), first, "the freed buffer of that length is taken");
        assert_eq!((e.made.get(), pool.cached_bytes()), (2, 0));
    }

    #[test]
    fn a_full_pool_frees_what_it_cannot_keep() {
        let (e, pool) = (small(1000), Arc::new(Pool::new(400)));
        let (a, b) = (alloc(&e, &pool, 100).unwrap(), alloc(&e, &pool, 100).unwrap());
        drop((a, b));
        assert_eq!(pool.cached_bytes(), 400, "one of the two is kept");
        assert_eq!(*e.in_use.lock().unwrap(), 100, "the other is freed");
    }

    #[test]
    fn a_failed_allocation_frees_the_cache_and_tries_again() {
        let (e, pool) = (small(1000), Arc::new(Pool::new(MAX_CACHED_BYTES)));
        drop(alloc(&e, &pool, 700).unwrap());
        // 700 floats wait in the pool: 500 more do not fit beside them, until the pool lets them go.
        let b = alloc(&e, &pool, 500).unwrap();
        assert_eq!((pool.cached_bytes(), *e.in_use.lock().unwrap()), (0, 500));
        assert!(alloc(&e, &pool, 600).is_err(), "what does not fit even then is an error");
        drop(b);
    }

    #[test]
    fn empty_buffers_hold_no_device_memory() {
        let (e, pool) = (small(0), Arc::new(Pool::new(MAX_CACHED_BYTES)));
        let mut empty = alloc(&e, &pool, 0).unwrap();
        assert!(empty.get().is_none() && empty.input().is_empty() && empty.output().is_empty());
        assert_eq!(DeviceBuffer::len(&empty), 0);
        drop(empty);
        assert_eq!((e.made.get(), pool.cached_bytes()), (0, 0));
    }
}
