// Just enough of CUDA to run this crate's kernels, unchanged, on a CPU: every CUDA thread of a
// block is a fiber on one OS thread; __syncthreads, warp shuffles, __match_any_sync and the
// tensor-core MMA are collectives the fibers meet at. Blocks run one after another. Slow, and
// exact where the kernels depend on it (bf16 rounding, MMA fragment layouts, barriers), so
// the kernels are tested on machines without a GPU (cargo test -p gptoss-cuda --features emu).
#pragma once
#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared arrays: one copy per OS thread, shared by the fibers of the block it runs.
#define __shared__ static thread_local

struct uint4 {
    uint32_t x, y, z, w;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct emu_dim3 {
    unsigned x, y, z;
};

struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

// The state of the fiber (CUDA thread) running now.
struct EmuThread {
    emu_dim3 tidx;
};
EmuThread* emu_cur();
const emu_dim3& emu_block_idx();
const emu_dim3& emu_block_dim();
const emu_dim3& emu_grid_dim();
void* emu_dyn_smem();

#define threadIdx (emu_cur()->tidx)
#define blockIdx (emu_block_idx())
#define blockDim (emu_block_dim())
#define gridDim (emu_grid_dim())

// Collectives.
void __syncthreads();
void __syncwarp(unsigned mask = 0xffffffffu);
// Every lane of the warp publishes `mine`; returns lane `src`'s.
uint64_t emu_exchange(uint64_t mine, int src);
unsigned __match_any_sync(unsigned mask, int v);
void emu_mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1);

template <class T>
inline uint64_t emu_bits(T v) {
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T emu_from(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
inline int emu_lane() { return threadIdx.x & 31; }
template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
    return emu_from<T>(emu_exchange(emu_bits(v), src & 31));
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    return emu_from<T>(emu_exchange(emu_bits(v), (emu_lane() ^ mask) & 31));
}

// Arithmetic, as the device rounds it.
inline float __uint_as_float(uint32_t u) { return emu_from<float>(u); }
inline float __int_as_float(int u) { return emu_from<float>((uint32_t)u); }
inline uint32_t __float_as_uint(float f) { return (uint32_t)emu_bits(f); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
using std::isfinite;
using std::isnan;
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
template <class T>
inline T __ldg(const T* p) {
    return *p;
}

// bf16: round to nearest even (NaN kept quiet), products formed exactly in f32 and rounded.
inline uint16_t emu_f32_to_bf16(float f) {
    uint32_t b = __float_as_uint(f);
    if (std::isnan(f)) return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}
inline float emu_bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {{emu_f32_to_bf16(lo)}, {emu_f32_to_bf16(hi)}};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {emu_f32_to_bf16(f)}; }
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) {
    return {{emu_f32_to_bf16(emu_bf16_to_f32(a.x.bits) * emu_bf16_to_f32(b.x.bits))},
            {emu_f32_to_bf16(emu_bf16_to_f32(a.y.bits) * emu_bf16_to_f32(b.y.bits))}};
}

#define EMU_DYN_SMEM(T, name) T* name = static_cast<T*>(emu_dyn_smem())
