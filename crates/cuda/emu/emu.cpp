// The CPU emulator's runtime: fibers, collectives, launches, and the table of kernels (the
// same sources as the GPU's, compiled here with GPTOSS_EMU). x86-64 only (the context switch
// is a few lines of assembly).
#define GPTOSS_EMU 1
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "cuda_emu.h"
// The kernels.
#include "../kernels/attention.cuh"
#include "../kernels/linear.cuh"
#include "../kernels/misc.cuh"
#include "../kernels/sample.cuh"

#include "../kernels/entries.cuh"

// ---- fibers --------------------------------------------------------------------------

extern "C" void emu_switch(void** save_sp, void* load_sp);
extern "C" void emu_fiber_entry();
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch

    .globl emu_fiber_entry
    .type emu_fiber_entry,@function
emu_fiber_entry:
    movq %rbx, %rdi
    call emu_fiber_main
    ud2
    .size emu_fiber_entry, .-emu_fiber_entry
)");

namespace {

constexpr size_t STACK = 128 << 10;

struct Fiber;

struct Barrier {
    int arrived = 0;
    unsigned gen = 0;
};

struct WarpState {
    Barrier bar;
    uint64_t slot[2][32];
    uint32_t mma[2][32][6];
};

struct BlockRun {
    emu_dim3 block_idx, block_dim, grid_dim;
    void* dyn = nullptr;
    int live = 0;
    Barrier bar;
    WarpState warps[32];
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
};

struct Fiber {
    EmuThread t;
    void* sp = nullptr;
    bool done = false;
    unsigned seq = 0;  // collectives this lane took part in (parity picks the buffer)
};

struct Sched {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t nstacks = 0;
    void* main_sp = nullptr;
    Fiber* cur = nullptr;
    BlockRun* run = nullptr;
};

thread_local Sched S;

void yield_to_main() { emu_switch(&S.cur->sp, S.main_sp); }

// Waits at `b` until `need` fibers arrived (the last to arrive releases the others).
void barrier_wait(Barrier& b, int need) {
    unsigned g = b.gen;
    if (++b.arrived >= need) {
        b.arrived = 0;
        b.gen++;
        return;
    }
    while (b.gen == g) yield_to_main();
}

int warp_size_of(int w) {
    int n = (int)S.run->block_dim.x - 32 * w;
    return n < 32 ? n : 32;
}

}  // namespace

extern "C" void emu_fiber_main(Fiber* f) {
    S.run->body(S.run->body_arg);
    f->done = true;
    S.run->live--;
    // A block barrier that waited only for this thread can now open.
    Barrier& b = S.run->bar;
    if (b.arrived > 0 && b.arrived >= S.run->live) {
        b.arrived = 0;
        b.gen++;
    }
    emu_switch(&f->sp, S.main_sp);
    __builtin_unreachable();
}

EmuThread* emu_cur() { return &S.cur->t; }
const emu_dim3& emu_block_idx() { return S.run->block_idx; }
const emu_dim3& emu_block_dim() { return S.run->block_dim; }
const emu_dim3& emu_grid_dim() { return S.run->grid_dim; }
void* emu_dyn_smem() { return S.run->dyn; }

void __syncthreads() { barrier_wait(S.run->bar, S.run->live); }

void __syncwarp(unsigned) {
    int w = S.cur->t.tidx.x / 32;
    barrier_wait(S.run->warps[w].bar, warp_size_of(w));
}

uint64_t emu_exchange(uint64_t mine, int src) {
    int w = S.cur->t.tidx.x / 32, lane = S.cur->t.tidx.x % 32;
    WarpState& ws = S.run->warps[w];
    unsigned p = S.cur->seq++ & 1;
    ws.slot[p][lane] = mine;
    barrier_wait(ws.bar, warp_size_of(w));
    return ws.slot[p][src];
}

unsigned __match_any_sync(unsigned, int v) {
    int w = S.cur->t.tidx.x / 32, lane = S.cur->t.tidx.x % 32;
    WarpState& ws = S.run->warps[w];
    unsigned p = S.cur->seq++ & 1;
    ws.slot[p][lane] = (uint64_t)(uint32_t)v;
    barrier_wait(ws.bar, warp_size_of(w));
    unsigned m = 0;
    for (int i = 0; i < warp_size_of(w); i++)
        if (ws.slot[p][i] == (uint64_t)(uint32_t)v) m |= 1u << i;
    return m;
}

// mma.m16n8k16 row.col f32.bf16.bf16.f32 with the fragment layouts of the PTX ISA: products
// exact in f32, summed in k order, then the accumulator.
void emu_mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    int w = S.cur->t.tidx.x / 32, lane = S.cur->t.tidx.x % 32;
    WarpState& ws = S.run->warps[w];
    unsigned p = S.cur->seq++ & 1;
    uint32_t* mine = ws.mma[p][lane];
    mine[0] = a0, mine[1] = a1, mine[2] = a2, mine[3] = a3, mine[4] = b0, mine[5] = b1;
    barrier_wait(ws.bar, 32);
    auto half = [](uint32_t r, int h) { return emu_bf16_to_f32((uint16_t)(h ? r >> 16 : r & 0xffff)); };
    auto A = [&](int r, int k) {
        int g = r % 8, t = (k % 8) / 2, reg = r / 8 + 2 * (k / 8);
        return half(ws.mma[p][g * 4 + t][reg], k % 2);
    };
    auto B = [&](int k, int n) {
        int t = (k % 8) / 2, reg = k / 8;
        return half(ws.mma[p][n * 4 + t][4 + reg], k % 2);
    };
    int g = lane / 4, t = lane % 4;
    int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; i++) {
        float s = 0.f;
        for (int k = 0; k < 16; k++) s += A(rows[i], k) * B(k, cols[i]);
        d[i] = s + d[i];
    }
}

namespace {

void run_block(BlockRun& run) {
    int n = (int)(run.block_dim.x * run.block_dim.y * run.block_dim.z);
    if (S.nstacks < (size_t)n) {
        if (S.stacks) munmap(S.stacks, S.nstacks * STACK);
        S.stacks = static_cast<char*>(mmap(nullptr, (size_t)n * STACK, PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
        if (S.stacks == MAP_FAILED) {
            std::fprintf(stderr, "emu: cannot map fiber stacks\n");
            std::abort();
        }
        S.nstacks = n;
    }
    S.fibers.assign(n, Fiber{});
    S.run = &run;
    run.live = n;
    run.bar = Barrier{};
    for (auto& w : run.warps) w.bar = Barrier{};
    for (int i = 0; i < n; i++) {
        Fiber& f = S.fibers[i];
        f.t.tidx = {(unsigned)i, 0, 0};
        // The frame emu_switch pops: csr word, r15..rbp, then the return address.
        uint64_t* top = reinterpret_cast<uint64_t*>(S.stacks + (size_t)(i + 1) * STACK);
        uint64_t* sp = top - 2;  // keeps entry 16-byte aligned after `ret`
        *--sp = reinterpret_cast<uint64_t>(&emu_fiber_entry);
        *--sp = 0;                                    // rbp
        *--sp = reinterpret_cast<uint64_t>(&f);       // rbx: emu_fiber_entry's argument
        *--sp = 0;                                    // r12
        *--sp = 0;                                    // r13
        *--sp = 0;                                    // r14
        *--sp = 0;                                    // r15
        uint32_t mxcsr = 0;
        uint16_t fpcw = 0;
        asm volatile("stmxcsr %0" : "=m"(mxcsr));
        asm volatile("fnstcw %0" : "=m"(fpcw));
        *--sp = (uint64_t)mxcsr | ((uint64_t)fpcw << 32);
        f.sp = sp;
    }
    int left = n;
    while (left > 0) {
        int progressed = 0;
        for (int i = 0; i < n; i++) {
            Fiber& f = S.fibers[i];
            if (f.done) continue;
            S.cur = &f;
            emu_switch(&S.main_sp, f.sp);
            progressed++;
            if (f.done) left--;
        }
        if (!progressed) break;
    }
    S.cur = nullptr;
}

template <class... A, size_t... I>
void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<A*>(args[I])...);
}

struct Entry {
    const char* name;
    void (*thunk)(void* fn, void** args);
    void* fn;
};

template <class... A>
Entry entry(const char* name, void (*f)(A...)) {
    return Entry{name,
                 [](void* fn, void** args) {
                     call_with(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
                 },
                 reinterpret_cast<void*>(f)};
}

const std::vector<Entry>& table() {
    static const std::vector<Entry> t = {
        entry("embed_rows", embed_rows),
        entry("rmsnorm_rows", rmsnorm_rows),
        entry("rope_qk", rope_qk),
        entry("router_f32", router_f32),
        entry("route_tokens", route_tokens),
        entry("moe_combine", moe_combine),
        entry("argmax_rows", argmax_rows),
        entry("attention_partial", attention_partial),
        entry("attention_combine", attention_combine),
        entry("attention_ref", attention_ref),
        entry("kv_store", kv_store),
        entry("gemv_bf16_m2_n1", gemv_bf16_m2_n1),
        entry("gemv_bf16_m2_n2", gemv_bf16_m2_n2),
        entry("gemv_bf16_m1_n4", gemv_bf16_m1_n4),
        entry("gemv_bf16_m1_n8", gemv_bf16_m1_n8),
        entry("gemv_mxfp4_m2_n1", gemv_mxfp4_m2_n1),
        entry("gemv_mxfp4_m2_n2", gemv_mxfp4_m2_n2),
        entry("gemv_mxfp4_m1_n4", gemv_mxfp4_m1_n4),
        entry("gemv_mxfp4_m1_n8", gemv_mxfp4_m1_n8),
        entry("gemm_bf16", gemm_bf16),
        entry("gemm_mxfp4", gemm_mxfp4),
        entry("linear_ref_bf16", linear_ref_bf16),
        entry("linear_ref_mxfp4", linear_ref_mxfp4),
        entry("relayout_frag16", relayout_frag16),
        entry("relayout_frag4_codes", relayout_frag4_codes),
        entry("relayout_frag4_scales", relayout_frag4_scales),
        entry("synth_bf16", synth_bf16),
        entry("synth_bytes", synth_bytes),
        entry("synth_f32", synth_f32),
        entry("probe_read", probe_read),
        entry("pick_tokens", pick_tokens),
    };
    return t;
}

struct Call {
    const Entry* e;
    void** args;
};

void body_of_call(void* p) {
    Call* c = static_cast<Call*>(p);
    c->e->thunk(c->e->fn, c->args);
}

}  // namespace

// Whether `name` is a kernel here.
extern "C" int gptoss_emu_has(const char* name) {
    for (const Entry& e : table())
        if (std::string(e.name) == name) return 1;
    return 0;
}

// cuLaunchKernel's twin: runs the grid now. 0 on success, -1 for an unknown kernel.
extern "C" int gptoss_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned block,
                                 unsigned smem, void** args) {
    const Entry* e = nullptr;
    for (const Entry& x : table())
        if (std::string(x.name) == name) e = &x;
    if (!e) return -1;
    std::vector<unsigned char> dyn((size_t)smem + 16);
    BlockRun run;
    run.block_dim = {block, 1, 1};
    run.grid_dim = {gx, gy, gz};
    run.dyn = dyn.data();
    Call call{e, args};
    run.body = body_of_call;
    run.body_arg = &call;
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                run.block_idx = {x, y, z};
                run_block(run);
            }
    return 0;
}
