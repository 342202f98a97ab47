// The runtime of cuda_emu.h: thread-local indices, the block barrier, and
// emu_launch. See cuda_emu.h for the model.
//
// The threads of a block are fibers on the calling OS thread, not OS
// threads: __syncthreads switches to the next fiber, and once every fiber of
// the block has reached the barrier (or finished) they all go on. A switch
// costs tens of nanoseconds (_setjmp/_longjmp; each fiber's stack is set up
// once per block with makecontext), where a barrier of 256 OS threads cost
// milliseconds. Fibers run in order 0, 1, ... in even blocks and in reverse
// in odd ones; races other than a missing barrier (two threads writing one
// word, say) are not found: the emulation checks indexing, tiling and
// barrier placement.
#undef _FORTIFY_SOURCE  // longjmp between fiber stacks is deliberate here
#include "cuda_emu.h"

#include <csetjmp>
#include <cstdlib>
#include <mutex>
#include <ucontext.h>
#include <vector>

namespace emu {
thread_local uint3 thread_idx;
thread_local uint3 block_idx;
thread_local dim3 block_dim;
thread_local dim3 grid_dim;
}  // namespace emu

namespace {

// Each fiber's stack: the kernels' frames are small, the Rust closure that
// calls them smaller.
constexpr size_t STACK = 128 * 1024;

struct Fiber {
    ucontext_t start;
    jmp_buf resume;
    char* stack = nullptr;
    bool started = false;
    bool done = false;
};

struct Block {
    std::vector<Fiber> fibers;
    jmp_buf scheduler;
    unsigned int current = 0;
    unsigned int count = 0;  // threads in this launch's blocks (fibers may be more)
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
};

Block* running = nullptr;

void fiber_main() {
    Block* b = running;
    b->body(b->ctx);
    b->fibers[b->current].done = true;
    _longjmp(b->scheduler, 1);
}

// Runs the block's fibers round-robin until all are done; each round takes
// every fiber that is not done up to its next barrier. Odd blocks take the
// fibers in reverse order, so that a missing barrier shows whichever way a
// race goes (a thread reading what a lower or a higher thread writes).
void run_block(Block& b, dim3 block, bool reverse) {
    unsigned int threads = b.count;
    for (unsigned int t = 0; t < threads; ++t) {
        b.fibers[t].started = false;
        b.fibers[t].done = false;
    }
    for (;;) {
        bool any = false;
        for (unsigned int i = 0; i < threads; ++i) {
            unsigned int t = reverse ? threads - 1 - i : i;
            Fiber& f = b.fibers[t];
            if (f.done) continue;
            any = true;
            b.current = t;
            emu::thread_idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            if (_setjmp(b.scheduler) == 0) {
                if (!f.started) {
                    f.started = true;
                    getcontext(&f.start);
                    f.start.uc_stack.ss_sp = f.stack;
                    f.start.uc_stack.ss_size = STACK;
                    f.start.uc_link = nullptr;
                    makecontext(&f.start, fiber_main, 0);
                    setcontext(&f.start);
                } else {
                    _longjmp(f.resume, 1);
                }
            }
        }
        if (!any) return;
    }
}

}  // namespace

void emu::sync_threads() {
    Block* b = running;
    if (_setjmp(b->fibers[b->current].resume) == 0) {
        _longjmp(b->scheduler, 1);
    }
}

extern "C" void emu_launch(dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
    // Shared memory is static storage, and the fibers' state is global: one launch at a time.
    static std::mutex one_launch;
    std::lock_guard<std::mutex> guard(one_launch);

    static Block b;  // the stacks are kept from launch to launch
    unsigned int threads = block.x * block.y * block.z;
    while (b.fibers.size() < threads) {
        b.fibers.emplace_back();
        b.fibers.back().stack = static_cast<char*>(std::malloc(STACK));
    }
    b.count = threads;
    b.body = body;
    b.ctx = ctx;
    running = &b;
    emu::block_dim = block;
    emu::grid_dim = grid;
    for (unsigned int bz = 0; bz < grid.z; ++bz) {
        for (unsigned int by = 0; by < grid.y; ++by) {
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                emu::block_idx = uint3{bx, by, bz};
                run_block(b, block, (bx + by + bz) % 2 == 1);
            }
        }
    }
    running = nullptr;
}
