// y = x W^T + b for bf16 (frag16) or MXFP4 (frag4) weights, f32 activations split into two
// bf16 terms on the tensor cores, f32 accumulation.
//
// Every output is the same bits whatever the batch: K is cut into S slices fixed by the
// matrix (never by the number of tokens); slice s is summed by one chain of MMAs over its
// k16 steps in order, from zero; the slices are added in order 0..S-1; then the bias. Each
// MMA column is one token and a column's result does not depend on the others. The decode
// kernel (linear_gemv: a warp per slice, few tokens) and the prompt kernel (linear_gemm: a
// 64x64 tile through shared memory) both follow that recipe, so a sequence decodes to the
// same tokens alone or batched with prompts.
#pragma once
#include "common.cuh"

// What one launch computes. Items are (matrix, first n-tile, n-tiles): for a dense layer a
// single matrix; for the experts one item per (expert, run of up to 8 n-tiles of its rows).
struct LinearArgs {
    const uint8_t* w;        // frag16 tiles or frag4 codes of matrix 0
    const uint32_t* scales;  // frag4 scales of matrix 0 (null for bf16)
    long long w_stride;      // bytes between matrices
    long long s_stride;      // u32 between matrices' scales
    const float* bias;       // [matrices][R]
    const float* x;          // [rows][x_stride] f32 activations
    const int* x_rows;       // row r of the product reads x row x_rows[r] (-1: zeros); null = r
    float* y;                // [rows][y_stride]
    float* resid;            // mode 1: resid[r][0..R) += y[r]
    const int* items;        // [n][3] (matrix, first n-tile, n-tiles); null: (0, 8i, up to 8)
    const int* n_items;      // device count of items (null: gridDim.y)
    int ntiles;              // n-tiles of a dense layer (items null)
    int rows;                // valid rows of the product (row index bound; beyond: ignored)
    int R;                   // output features (valid)
    int MT;                  // 16-row tiles (R padded)
    int K;                   // valid input features
    int KB;                  // 64-wide super-steps (K padded)
    int S;                   // K slices
    int x_stride, y_stride;
    int mode;                // 0: y = xW+b; 1: also resid += y; 2: y[r][n] = swiglu(gate 2n, up 2n+1)
    float swiglu_limit;
};

#define SWIGLU_ALPHA 1.702f

// The CPU's swiglu_interleaved_f32, rounding step for step.
DEV float swiglu(float gate, float up, float limit) {
    gate = fminf(gate, limit);
    up = fmaxf(fminf(up, limit), -limit);
    float sig = __fdiv_rn(1.f, __fadd_rn(1.f, expf(__fmul_rn(-SWIGLU_ALPHA, gate))));
    float glu = __fmul_rn(gate, sig);
    return __fmul_rn(glu, __fadd_rn(up, 1.f));
}

DEV void item_of(const LinearArgs& a, int i, int& m, int& nt0, int& nnt) {
    if (a.items) {
        m = a.items[3 * i];
        nt0 = a.items[3 * i + 1];
        nnt = a.items[3 * i + 2];
    } else {
        // A dense layer: runs of 8 n-tiles (one GEMM tile; the decode kernel gets one run).
        m = 0;
        nt0 = 8 * i;
        nnt = min(8, a.ntiles - nt0);
    }
}

DEV int slice_start(int s, int KB, int S) { return (s * KB) / S; }

// The B fragments (two terms) of token column g for k16 step ks, from f32 x.
DEV void load_b(const LinearArgs& a, const float* xrow, int ks, int t, uint32_t& h0, uint32_t& h1, uint32_t& l0,
                uint32_t& l1) {
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    if (xrow) {
        int k = ks * 16 + 2 * t;
        if (k + 9 < a.K) {
            float2 p = *reinterpret_cast<const float2*>(xrow + k);
            float2 q = *reinterpret_cast<const float2*>(xrow + k + 8);
            v[0] = p.x, v[1] = p.y, v[2] = q.x, v[3] = q.y;
        } else {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int kk = k + (i & 1) + (i >> 1) * 8;
                if (kk < a.K) v[i] = xrow[kk];
            }
        }
    }
    split2(v[0], v[1], h0, l0);
    split2(v[2], v[3], h1, l1);
}

DEV const float* x_row_ptr(const LinearArgs& a, int r) {
    if (r >= a.rows) return nullptr;
    int src = a.x_rows ? a.x_rows[r] : r;
    return src < 0 ? nullptr : a.x + (long long)src * a.x_stride;
}

// Bias, mode and store for output feature `f` (of the matrix `m`) and product row `r`.
// For mode 2 `v` is the gate (even f) and `v2` the up value (f + 1).
DEV void store_out(const LinearArgs& a, int m, int f, int r, float v, float v2) {
    if (r >= a.rows || f >= a.R) return;
    const float* b = a.bias + (long long)m * a.R;
    if (a.mode == 2) {
        float g = __fadd_rn(v, b[f]), u = __fadd_rn(v2, b[f + 1]);
        a.y[(long long)r * a.y_stride + f / 2] = swiglu(g, u, a.swiglu_limit);
        return;
    }
    float y = __fadd_rn(v, b[f]);
    a.y[(long long)r * a.y_stride + f] = y;
    if (a.mode == 1) {
        float* x = a.resid + (long long)r * a.y_stride + f;
        *x = __fadd_rn(*x, y);
    }
}

// ---------------------------------------------------------------------------------------
// Decode: grid (ceil(MT / MTW), items), block 32 * S. Warp s sums slice s for MTW m-tiles
// and NT n-tiles; the CTA adds the slices in order through shared memory.
template <bool MX, int MTW, int NT>
DEV void linear_gemv(const LinearArgs& a) {
    DYN_SMEM(float, red);  // [S][MTW*16][NT*8]
    int item = blockIdx.y;
    if (a.n_items && item >= *a.n_items) return;
    int m, nt0, nnt;
    item_of(a, item, m, nt0, nnt);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int mt0 = blockIdx.x * MTW;
    int S = a.S;
    int kb0 = slice_start(warp, a.KB, S), kb1 = slice_start(warp + 1, a.KB, S);

    const float* xrow[NT];
#pragma unroll
    for (int n = 0; n < NT; n++) xrow[n] = n < nnt ? x_row_ptr(a, (nt0 + n) * 8 + g) : nullptr;

    float acc[MTW][NT][4];
#pragma unroll
    for (int i = 0; i < MTW; i++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][n][c] = 0.f;

    const uint8_t* wm = a.w + (long long)m * a.w_stride;
    const uint32_t* sm = MX ? a.scales + (long long)m * a.s_stride : nullptr;
    int KS = a.KB * 4;

    // Weights of the next super-step are loaded while this one is multiplied.
    constexpr int WJ = MX ? 1 : 4;
    uint4 wv[MTW][WJ], wn[MTW][WJ];
    uint32_t sc[MTW], scn[MTW];
    auto load_w = [&](int kb, uint4 (&dst)[MTW][WJ], uint32_t (&dsc)[MTW]) {
#pragma unroll
        for (int i = 0; i < MTW; i++) {
            int mt = min(mt0 + i, a.MT - 1);  // past the end: read a valid tile, store nothing
            if (MX) {
                dst[i][0] = __ldg(reinterpret_cast<const uint4*>(wm) + ((long long)mt * a.KB + kb) * 32 + lane);
                dsc[i] = __ldg(sm + ((long long)mt * a.KB + kb) * 8 + g);
            } else {
#pragma unroll
                for (int j = 0; j < WJ; j++)
                    dst[i][j] = __ldg(reinterpret_cast<const uint4*>(wm) + ((long long)mt * KS + kb * 4 + j) * 32 + lane);
                dsc[i] = 0;
            }
        }
    };
    if (kb0 < kb1) load_w(kb0, wv, sc);
    for (int kb = kb0; kb < kb1; kb++) {
        if (kb + 1 < kb1) load_w(kb + 1, wn, scn);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t bh0[NT], bh1[NT], bl0[NT], bl1[NT];
#pragma unroll
            for (int n = 0; n < NT; n++) load_b(a, xrow[n], kb * 4 + j, t, bh0[n], bh1[n], bl0[n], bl1[n]);
#pragma unroll
            for (int i = 0; i < MTW; i++) {
                uint32_t ar[4];
                if (MX) {
                    uint32_t s4 = sc[i];
                    uint32_t blk = j >> 1;  // k16 steps 0, 1: block 0; 2, 3: block 1
                    uint32_t f_lo = e8m0_bf16x2((s4 >> (8 * blk)) & 0xff);
                    uint32_t f_hi = e8m0_bf16x2((s4 >> (16 + 8 * blk)) & 0xff);
                    uint32_t wj = j == 0 ? wv[i][0].x : j == 1 ? wv[i][0].y : j == 2 ? wv[i][0].z : wv[i][0].w;
                    decode_fp4(wj, f_lo, f_hi, ar);
                } else {
                    uint4 q = wv[i][MX ? 0 : j];
                    ar[0] = q.x, ar[1] = q.y, ar[2] = q.z, ar[3] = q.w;
                }
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    mma_bf16_16816(acc[i][n], ar[0], ar[1], ar[2], ar[3], bh0[n], bh1[n]);
                    mma_bf16_16816(acc[i][n], ar[0], ar[1], ar[2], ar[3], bl0[n], bl1[n]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < MTW; i++) {
            sc[i] = scn[i];
#pragma unroll
            for (int j = 0; j < WJ; j++) wv[i][j] = wn[i][j];
        }
    }

    // Slices in order: warp s writes its partial sums, then each output adds them 0..S-1.
    const int W = MTW * 16, N = NT * 8;
    float* mine = red + warp * W * N;
#pragma unroll
    for (int i = 0; i < MTW; i++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            int r0 = i * 16 + g, c0 = n * 8 + 2 * t;
            mine[r0 * N + c0] = acc[i][n][0];
            mine[r0 * N + c0 + 1] = acc[i][n][1];
            mine[(r0 + 8) * N + c0] = acc[i][n][2];
            mine[(r0 + 8) * N + c0 + 1] = acc[i][n][3];
        }
    __syncthreads();
    int outs = W * nnt * 8;
    int step = a.mode == 2 ? 2 : 1;
    for (int o = threadIdx.x * step; o < outs; o += blockDim.x * step) {
        // Features fastest, so stores of one token are contiguous.
        int fl = o % W, c = o / W;
        float v = red[fl * N + c], v2 = a.mode == 2 ? red[(fl + 1) * N + c] : 0.f;
        for (int s = 1; s < S; s++) {
            v = __fadd_rn(v, red[s * W * N + fl * N + c]);
            if (a.mode == 2) v2 = __fadd_rn(v2, red[s * W * N + (fl + 1) * N + c]);
        }
        store_out(a, m, mt0 * 16 + fl, nt0 * 8 + c, v, v2);
    }
}

// ---------------------------------------------------------------------------------------
// Prompts: grid (ceil(MT / 4), items), block 128. A CTA computes 64 features x 64 tokens:
// four warps of 32 x 32, the weights and activations of each 64-wide step staged in shared
// memory by cp.async, double buffered.

#ifdef GPTOSS_EMU
// Copies now; waiting is then a no-op.
DEV void cp_async16(void* smem, const void* gmem, bool valid) {
    if (valid)
        std::memcpy(smem, gmem, 16);
    else
        std::memset(smem, 0, 16);
}
DEV void cp_async_commit() {}
template <int N>
DEV void cp_async_wait() {}
#else
DEV void cp_async16(void* smem, const void* gmem, bool valid) {
    uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    int n = valid ? 16 : 0;  // 0: fill with zeros
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
DEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
DEV void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif

#define GEMM_XS 72  // floats per staged token row: 64 + 8 keeps 16-byte rows and conflict-free float2 reads

template <bool MX>
struct GemmStage {
    // bf16: 4 m-tiles x 4 k16 steps x 32 lanes x 16 B; MXFP4: codes 4 x 32 x 16 B + scales 4 x 8.
    uint4 w[MX ? 4 * 32 : 4 * 4 * 32];
    uint32_t s[MX ? 4 * 8 : 4];  // 4 keeps x 16-byte aligned
    float x[64 * GEMM_XS];
};

template <bool MX>
DEV void gemm_load_stage(const LinearArgs& a, GemmStage<MX>& st, const uint8_t* wm, const uint32_t* sm, int mt0,
                         int kb, const int* xsrc) {
    int tid = threadIdx.x;
    int KS = a.KB * 4;
    if (MX) {
        for (int i = tid; i < 4 * 32; i += 128) {
            int mi = i >> 5, lane = i & 31;
            int mt = min(mt0 + mi, a.MT - 1);
            cp_async16(&st.w[i], reinterpret_cast<const uint4*>(wm) + ((long long)mt * a.KB + kb) * 32 + lane, true);
        }
        if (tid < 8) {  // 4 m-tiles x 8 words = 128 bytes
            int mi = tid >> 1, half = tid & 1;
            int mt = min(mt0 + mi, a.MT - 1);
            cp_async16(&st.s[mi * 8 + half * 4], sm + ((long long)mt * a.KB + kb) * 8 + half * 4, true);
        }
    } else {
        for (int i = tid; i < 4 * 4 * 32; i += 128) {
            int mi = i >> 7, j = (i >> 5) & 3, lane = i & 31;
            int mt = min(mt0 + mi, a.MT - 1);
            cp_async16(&st.w[i], reinterpret_cast<const uint4*>(wm) + ((long long)mt * KS + kb * 4 + j) * 32 + lane,
                       true);
        }
    }
    // 64 tokens x 64 k of f32: 16 chunks of 16 bytes per token.
    for (int i = tid; i < 64 * 16; i += 128) {
        int tok = i >> 4, c = i & 15;
        int src = xsrc[tok];
        int k = kb * 64 + c * 4;
        bool valid = src >= 0 && k + 3 < a.K;
        const float* row = src >= 0 ? a.x + (long long)src * a.x_stride + k : a.x;
        if (src >= 0 && !valid && k < a.K) {
            // A ragged last chunk (K not a multiple of 4): plain loads.
            for (int e = 0; e < 4; e++) st.x[tok * GEMM_XS + c * 4 + e] = k + e < a.K ? row[e] : 0.f;
            continue;
        }
        cp_async16(&st.x[tok * GEMM_XS + c * 4], valid ? row : a.x, valid);
    }
}

template <bool MX>
DEV void linear_gemm(const LinearArgs& a) {
    DYN_SMEM(unsigned char, smem_raw);
    GemmStage<MX>* st = reinterpret_cast<GemmStage<MX>*>(smem_raw);
    __shared__ int xsrc[64];
    int item = blockIdx.y;
    if (a.n_items && item >= *a.n_items) return;
    int m, nt0, nnt;
    item_of(a, item, m, nt0, nnt);
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int wm_ = warp >> 1, wn = warp & 1;  // warp tile: m-tiles 2wm_..2wm_+1, n-tiles 4wn..4wn+3
    int mt0 = blockIdx.x * 4;
    if (tid < 64) {
        int r = nt0 * 8 + tid;
        int src = -1;
        if (tid < nnt * 8 && r < a.rows) src = a.x_rows ? a.x_rows[r] : r;
        xsrc[tid] = src;
    }
    __syncthreads();

    const uint8_t* wmat = a.w + (long long)m * a.w_stride;
    const uint32_t* smat = MX ? a.scales + (long long)m * a.s_stride : nullptr;

    float total[2][4][4], acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int c = 0; c < 4; c++) total[i][n][c] = 0.f, acc[i][n][c] = 0.f;

    int S = a.S, KBn = a.KB;
    int s_cur = 0, s_end = slice_start(1, KBn, S);
    gemm_load_stage<MX>(a, st[0], wmat, smat, mt0, 0, xsrc);
    cp_async_commit();
    for (int kb = 0; kb < KBn; kb++) {
        int buf = kb & 1;
        if (kb + 1 < KBn) gemm_load_stage<MX>(a, st[buf ^ 1], wmat, smat, mt0, kb + 1, xsrc);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        GemmStage<MX>& sg = st[buf];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t bh0[4], bh1[4], bl0[4], bl1[4];
#pragma unroll
            for (int n = 0; n < 4; n++) {
                const float* xr = &sg.x[((wn * 4 + n) * 8 + g) * GEMM_XS + j * 16 + 2 * t];
                float2 p = *reinterpret_cast<const float2*>(xr);
                float2 q = *reinterpret_cast<const float2*>(xr + 8);
                split2(p.x, p.y, bh0[n], bl0[n]);
                split2(q.x, q.y, bh1[n], bl1[n]);
            }
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int mi = wm_ * 2 + i;
                uint32_t ar[4];
                if (MX) {
                    uint4 q = sg.w[mi * 32 + lane];
                    uint32_t s4 = sg.s[mi * 8 + g];
                    uint32_t blk = j >> 1;
                    uint32_t f_lo = e8m0_bf16x2((s4 >> (8 * blk)) & 0xff);
                    uint32_t f_hi = e8m0_bf16x2((s4 >> (16 + 8 * blk)) & 0xff);
                    uint32_t wj = j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w;
                    decode_fp4(wj, f_lo, f_hi, ar);
                } else {
                    uint4 q = sg.w[(mi * 4 + j) * 32 + lane];
                    ar[0] = q.x, ar[1] = q.y, ar[2] = q.z, ar[3] = q.w;
                }
#pragma unroll
                for (int n = 0; n < 4; n++) {
                    mma_bf16_16816(acc[i][n], ar[0], ar[1], ar[2], ar[3], bh0[n], bh1[n]);
                    mma_bf16_16816(acc[i][n], ar[0], ar[1], ar[2], ar[3], bl0[n], bl1[n]);
                }
            }
        }
        if (kb + 1 == s_end) {
            // End of slice s_cur: fold it into the total, exactly as the decode kernel does.
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int n = 0; n < 4; n++)
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        total[i][n][c] = s_cur == 0 ? acc[i][n][c] : __fadd_rn(total[i][n][c], acc[i][n][c]);
                        acc[i][n][c] = 0.f;
                    }
            s_cur++;
            s_end = slice_start(s_cur + 1, KBn, S);
        }
        __syncthreads();
    }
    cp_async_wait<0>();
    __syncthreads();

    // Through shared memory, so the epilogue (swiglu pairs rows) reads whole tiles.
    float* out = reinterpret_cast<float*>(smem_raw);  // [64 features][64 tokens]
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int n = 0; n < 4; n++) {
            int r0 = (wm_ * 2 + i) * 16 + g, c0 = (wn * 4 + n) * 8 + 2 * t;
            out[r0 * 64 + c0] = total[i][n][0];
            out[r0 * 64 + c0 + 1] = total[i][n][1];
            out[(r0 + 8) * 64 + c0] = total[i][n][2];
            out[(r0 + 8) * 64 + c0 + 1] = total[i][n][3];
        }
    __syncthreads();
    int outs = 64 * nnt * 8;
    int step = a.mode == 2 ? 2 : 1;
    for (int o = tid * step; o < outs; o += 128 * step) {
        int fl = o % 64, c = o / 64;
        float v = out[fl * 64 + c], v2 = a.mode == 2 ? out[(fl + 1) * 64 + c] : 0.f;
        store_out(a, m, mt0 * 16 + fl, nt0 * 8 + c, v, v2);
    }
}

// ---------------------------------------------------------------------------------------
// The scalar twin on the device: one thread per output, weights decoded one by one from the
// same layouts, f32 products summed in k order. Slow; checks the fast kernels and serves as
// the reference path (GPTOSS_CUDA_KERNELS=simple).

DEV float frag16_at(const uint8_t* w, int KS, int r, int k) {
    int mt = r >> 4, rr = r & 15, ks = k >> 4, kk = k & 15;
    int g = rr & 7, hi_row = rr >> 3, t = (kk & 7) >> 1, hi_k = kk >> 3, half = kk & 1;
    int lane = g * 4 + t, reg = hi_row + 2 * hi_k;
    const uint32_t* p = reinterpret_cast<const uint32_t*>(w) + (((long long)mt * KS + ks) * 32 + lane) * 4 + reg;
    return bf16_bits_to_f32(half ? (*p >> 16) : (*p & 0xffff));
}

DEV float frag4_at(const uint8_t* w, const uint32_t* sc, int KB, int r, int k) {
    const float fp4[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
    int mt = r >> 4, rr = r & 15, kb = k >> 6, kk = k & 63;
    int j = kk >> 4, k16 = kk & 15;
    int g = rr & 7, hi_row = rr >> 3, t = (k16 & 7) >> 1, hi_k = k16 >> 3, half = k16 & 1;
    int lane = g * 4 + t, reg = hi_row + 2 * hi_k;
    uint32_t word = reinterpret_cast<const uint32_t*>(w)[(((long long)mt * KB + kb) * 32 + lane) * 4 + j];
    uint32_t mag = (word >> (16 * half + 3 * reg)) & 7, sign = (word >> (16 * half + 12 + reg)) & 1;
    uint32_t s4 = sc[((long long)mt * KB + kb) * 8 + g];
    uint32_t s = (s4 >> (8 * ((kk >> 5) + 2 * hi_row))) & 0xff;
    float scale = s == 0 ? __uint_as_float(0x00400000u) : (s == 255 ? __int_as_float(0x7f800000) : __uint_as_float(s << 23));
    return fp4[mag | (sign << 3)] * scale;
}

template <bool MX>
DEV void linear_ref(const LinearArgs& a) {
    int item = blockIdx.y;
    if (a.n_items && item >= *a.n_items) return;
    int m, nt0, nnt;
    item_of(a, item, m, nt0, nnt);
    const uint8_t* wm = a.w + (long long)m * a.w_stride;
    const uint32_t* sm = MX ? a.scales + (long long)m * a.s_stride : nullptr;
    int step = a.mode == 2 ? 2 : 1;
    for (int o = (blockIdx.x * blockDim.x + threadIdx.x) * step; o < a.R * nnt * 8; o += gridDim.x * blockDim.x * step) {
        int f = o % a.R, c = o / a.R;
        int r = nt0 * 8 + c;
        const float* xr = x_row_ptr(a, r);
        float v = 0.f, v2 = 0.f;
        if (xr) {
            for (int k = 0; k < a.K; k++) {
                float w1 = MX ? frag4_at(wm, sm, a.KB, f, k) : frag16_at(wm, a.KB * 4, f, k);
                v = fmaf(xr[k], w1, v);
                if (a.mode == 2) {
                    float w2 = MX ? frag4_at(wm, sm, a.KB, f + 1, k) : frag16_at(wm, a.KB * 4, f + 1, k);
                    v2 = fmaf(xr[k], w2, v2);
                }
            }
        }
        store_out(a, m, f, r, v, v2);
    }
}
