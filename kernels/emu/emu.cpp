// The runtime of cuda_emu.h: thread-local indices, the block barrier, and
// emu_launch. See cuda_emu.h for the model.
#include "cuda_emu.h"

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace emu {
thread_local uint3 thread_idx;
thread_local uint3 block_idx;
thread_local dim3 block_dim;
thread_local dim3 grid_dim;

// A reusable barrier for the threads of one block: the last to arrive starts
// a new generation and wakes the others.
struct Barrier {
    std::mutex mutex;
    std::condition_variable cv;
    unsigned int count;
    unsigned int waiting = 0;
    unsigned long long generation = 0;

    explicit Barrier(unsigned int n) : count(n) {}

    void wait() {
        std::unique_lock<std::mutex> lock(mutex);
        unsigned long long gen = generation;
        if (++waiting == count) {
            waiting = 0;
            ++generation;
            cv.notify_all();
        } else {
            cv.wait(lock, [&] { return generation != gen; });
        }
    }
};

static thread_local Barrier* block_barrier = nullptr;

void sync_threads() { block_barrier->wait(); }
}  // namespace emu

extern "C" void emu_launch(dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
    // Shared memory is static storage: one launch at a time.
    static std::mutex one_launch;
    std::lock_guard<std::mutex> guard(one_launch);

    unsigned int threads = block.x * block.y * block.z;
    emu::Barrier barrier(threads);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned int t = 0; t < threads; ++t) {
        pool.emplace_back([=, &barrier] {
            emu::block_barrier = &barrier;
            emu::block_dim = block;
            emu::grid_dim = grid;
            emu::thread_idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned int bz = 0; bz < grid.z; ++bz) {
                for (unsigned int by = 0; by < grid.y; ++by) {
                    for (unsigned int bx = 0; bx < grid.x; ++bx) {
                        emu::block_idx = uint3{bx, by, bz};
                        body(ctx);
                        // No thread starts the next block (and overwrites the
                        // shared statics) before every thread finished this one.
                        barrier.wait();
                    }
                }
            }
        });
    }
    for (auto& thread : pool) {
        thread.join();
    }
}
