// Shared helpers: bf16 conversion, the tensor-core MMA, warp reductions, the weight layouts.
//
// Layouts (host twins in src/layout.rs, which the tests check both ways):
//
// bf16 dense weights [R, K] ("frag16"): R and K padded to multiples of 16 (K to 64), cut
// into 16x16 tiles stored tile (mt, ks) at ((mt * KS + ks) * 32 + lane) * 16 bytes. Lane
// L = 4g + t holds, as four u32 of two bf16 each (low half = lower k), the A fragment of
// mma.m16n8k16: {W[g][2t..2t+1], W[g+8][2t..2t+1], W[g][2t+8..2t+9], W[g+8][2t+8..2t+9]}
// with rows relative to 16 mt and columns to 16 ks. A warp reads 512 contiguous bytes.
//
// MXFP4 weights [R, K] ("frag4"): K padded to a multiple of 64 (a super-step of four k16
// steps and two 32-wide scale blocks). Codes: super-tile (mt, kb) at ((mt * KB + kb) * 32 +
// lane) * 16 bytes; word j (k16 step 4kb + j) holds the lane's 8 values of that step's A
// fragment, 4 bits each: for register r (0..3) and half h (0 = even k, 1 = odd k) the
// magnitude (3 bits) sits at bit 16h + 3r and the sign at bit 16h + 12 + r. Scales:
// ((mt * KB + kb) * 8 + g) as u32 with bytes {row g block 0, row g block 1, row g+8 block 0,
// row g+8 block 1} (block 0 = k 64kb..64kb+31).
#pragma once
#ifdef GPTOSS_EMU
#include "../emu/cuda_emu.h"  // the CPU emulator (tests without a GPU)
#define DYN_SMEM(T, name) EMU_DYN_SMEM(T, name)
#else
#include <cuda_bf16.h>
#include <stdint.h>
#define DYN_SMEM(T, name) extern __shared__ __align__(16) T name[]
#endif

#define DEV __device__ __forceinline__

DEV float bf16_bits_to_f32(uint32_t b) { return __uint_as_float(b << 16); }

// Round to nearest even, as the CPU's f32_to_bf16 (NaN payloads aside).
DEV uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// x ~ hi + lo in two bf16 (16 significant bits): the activations of every tensor-core
// product, so that bf16 weights times them summed in f32 stay within ~1e-5 of float32.
DEV void split2(float a, float b, uint32_t& hi, uint32_t& lo) {
    hi = pack_bf16x2(a, b);
    float ha = bf16_bits_to_f32(hi & 0xffffu), hb = bf16_bits_to_f32(hi >> 16);
    lo = pack_bf16x2(__fsub_rn(a, ha), __fsub_rn(b, hb));
}

DEV void mma_bf16_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                        uint32_t b1) {
#ifdef GPTOSS_EMU
    emu_mma(d, a0, a1, a2, a3, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

DEV uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
    __nv_bfloat162 x = *reinterpret_cast<__nv_bfloat162*>(&a);
    __nv_bfloat162 y = *reinterpret_cast<__nv_bfloat162*>(&b);
    __nv_bfloat162 r = __hmul2(x, y);
    return *reinterpret_cast<uint32_t*>(&r);
}

// E8M0 scale byte s -> bf16 2^(s-127) in both halves (s = 0 is the subnormal 2^-127, s = 255
// is +inf, as the CPU's e8m0_to_f32).
DEV uint32_t e8m0_bf16x2(uint32_t s) {
    uint32_t b = s == 0 ? 0x0040u : (s == 255 ? 0x7f80u : (s << 7));
    return b | (b << 16);
}

// 2^126 in both halves: turns the bit-placed E2M1 codes into their values (see decode_fp4).
#define BF16X2_2P126 0x7e807e80u

// Word j of a frag4 super-tile -> the four A registers of one k16 step, scaled. f_lo is the
// scale of row g, f_hi of row g+8 (registers 0, 2 are row g; 1, 3 row g+8). Placing the
// 2-bit exponent and 1-bit mantissa of E2M1 at bf16's exponent/mantissa bits gives the value
// times 2^-126 (the subnormal 0.5 included), which one exact multiply restores.
DEV void decode_fp4(uint32_t w, uint32_t f_lo, uint32_t f_hi, uint32_t (&a)[4]) {
    const uint32_t M = 0x01c001c0u, S = 0x80008000u;
    uint32_t r0 = ((w << 6) & M) | ((w << 3) & S);
    uint32_t r1 = ((w << 3) & M) | ((w << 2) & S);
    uint32_t r2 = (w & M) | ((w << 1) & S);
    uint32_t r3 = ((w >> 3) & M) | (w & S);
    a[0] = bf16x2_mul(bf16x2_mul(r0, BF16X2_2P126), f_lo);
    a[1] = bf16x2_mul(bf16x2_mul(r1, BF16X2_2P126), f_hi);
    a[2] = bf16x2_mul(bf16x2_mul(r2, BF16X2_2P126), f_lo);
    a[3] = bf16x2_mul(bf16x2_mul(r3, BF16X2_2P126), f_hi);
}

DEV float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

DEV float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of `nthreads` (a multiple of 32, <= 1024) in a fixed order, so the
// result does not depend on scheduling. `red` holds 32 floats. All threads get the sum.
DEV float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.f;
    for (int i = 0; i < nw; i++) s += red[i];
    return s;
}

DEV float clean_logit(float z) { return isnan(z) ? -INFINITY : z; }

// Block-wide argmax over logits not in `skip` (first index wins ties). Returns (value, index).
// (value, index) of the warp's best: the larger value, the lower index on ties.
DEV void warp_argmax(float& bv, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
}

DEV void block_argmax(const float* z, int V, const int* skip, int nskip, float& bv, int& bi, float* sv, int* si) {
    bv = -INFINITY;
    bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        bool taken = false;
        for (int s = 0; s < nskip; s++) taken |= skip[s] == i;
        if (taken) continue;
        float v = clean_logit(z[i]);
        if (v > bv || (v == bv && i < bi)) bv = v, bi = i;
    }
    warp_argmax(bv, bi);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sv[warp] = bv, si[warp] = bi;
    __syncthreads();
    bv = sv[0], bi = si[0];
    for (int w = 1; w < nw; w++)
        if (sv[w] > bv || (sv[w] == bv && si[w] < bi)) bv = sv[w], bi = si[w];
}

