// The small steps of the forward pass: embedding, RMSNorm, RoPE, the router and its top-k
// with the expert grouping, the weighted sum of the experts, greedy picks; plus weight
// relayouts, random weights for benchmarks, and the bandwidth probe.
#pragma once
#include "common.cuh"

// grid T, block 256: x[t] = widen(embedding[token t]).
extern "C" __global__ void embed_rows(const uint16_t* emb, const int* tokens, int H, float* x) {
    int t = blockIdx.x;
    const uint16_t* row = emb + (long long)tokens[t] * H;
    for (int h = threadIdx.x; h < H; h += blockDim.x) x[(long long)t * H + h] = bf16_bits_to_f32(row[h]);
}

// grid rows, block 256: out[r] = x[src r] / rms * gain, as the CPU's rmsnorm_f32 rounds.
extern "C" __global__ void rmsnorm_rows(const float* x, const int* src_rows, const float* gain, float eps, int H, float* out) {
    __shared__ float red[32];
    int r = blockIdx.x;
    int src = src_rows ? src_rows[r] : r;
    const float* xr = x + (long long)src * H;
    float ss = 0.f;
    for (int h = threadIdx.x; h < H; h += blockDim.x) ss = fmaf(xr[h], xr[h], ss);
    ss = block_sum(ss, red);
    float inv = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)H), eps)));
    for (int h = threadIdx.x; h < H; h += blockDim.x)
        out[(long long)r * H + h] = __fmul_rn(__fmul_rn(xr[h], inv), gain[h]);
}

// grid T, block 256: rotate q and k of row t at its position (cos/sin precomputed on the
// host by the CPU's own YaRN code: [positions][HD/2] each). Rounded as the CPU rounds.
extern "C" __global__ void rope_qk(float* qkv, int stride, const int* pos, const float* cos_t, const float* sin_t, int heads,
                        int half) {
    int t = blockIdx.x;
    const float* c = cos_t + (long long)pos[t] * half;
    const float* s = sin_t + (long long)pos[t] * half;
    float* row = qkv + (long long)t * stride;
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
        int h = i / half, j = i % half;
        float* x = row + h * 2 * half;
        float a = x[j], b = x[j + half];
        x[j] = __fsub_rn(__fmul_rn(a, c[j]), __fmul_rn(b, s[j]));
        x[j + half] = __fadd_rn(__fmul_rn(b, c[j]), __fmul_rn(a, s[j]));
    }
}

// grid (E, ceil(T/8)), block 128: router logits in f32 (the choice of experts is
// discontinuous, so no bf16 shortcut), each token's sum in a fixed order.
extern "C" __global__ void __launch_bounds__(128) router_f32(const float* x, int T, int H, const uint16_t* w, const float* bias,
                                                  int E, float* out) {
    __shared__ float red[4][8];
    int e = blockIdx.x, t0 = blockIdx.y * 8;
    int nt = min(8, T - t0);
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.f;
    const uint16_t* wr = w + (long long)e * H;
    for (int k = threadIdx.x; k < H; k += 128) {
        float wk = bf16_bits_to_f32(wr[k]);
#pragma unroll
        for (int i = 0; i < 8; i++)
            if (i < nt) acc[i] = fmaf(x[(long long)(t0 + i) * H + k], wk, acc[i]);
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float v = warp_sum(acc[i]);
        if (lane == 0) red[warp][i] = v;
    }
    __syncthreads();
    if (threadIdx.x < nt) {
        int i = threadIdx.x;
        float v = __fadd_rn(__fadd_rn(__fadd_rn(red[0][i], red[1][i]), red[2][i]), red[3][i]);
        out[(long long)(t0 + i) * E + e] = __fadd_rn(v, bias[e]);
    }
}

struct RouteArgs {
    const float* logits;  // [T][E]
    int T, E, k;
    int* experts;         // [T*k] best first
    float* gates;         // [T*k]
    int* prow;            // [T*k] grouped (padded) row of each slot
    int* row_src;         // [max_rows] token of each grouped row, -1 for padding
    int* items;           // [max_items][3] (expert, first n-tile, n-tiles)
    int* counts;          // [2]: items, grouped rows
    int max_rows, max_items, item_ntiles;
};

// One block of 1024: top-k and softmax per token (a warp each), then the slots grouped by
// expert, stable in slot order (a counting sort), each expert's rows padded to whole n-tiles
// of 8, and the work items of the expert matmuls. Everything deterministic.
extern "C" __global__ void __launch_bounds__(1024) route_tokens(RouteArgs a) {
    __shared__ int cnt[256], base[256];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int t = warp; t < a.T; t += nw) {
        const float* lg = a.logits + (long long)t * a.E;
        unsigned chosen = 0;  // bit i: expert lane + 32 i taken
        int best_e[8];
        for (int j = 0; j < a.k; j++) {
            float bv = -INFINITY;
            int be = 0x7fffffff;
            for (int i = 0; i * 32 + lane < a.E; i++) {
                int e = i * 32 + lane;
                if (chosen & (1u << i)) continue;
                float v = lg[e];
                if (isnan(v)) v = -INFINITY;
                if (v > bv || (v == bv && e < be)) bv = v, be = e;
            }
            warp_argmax(bv, be);
            if ((be & 31) == lane) chosen |= 1u << (be >> 5);
            if (j < 8) best_e[j] = be;
            if (lane == 0) a.experts[t * a.k + j] = be;
        }
        if (lane == 0) {
            float mx = lg[best_e[0]];
            float w[8], sum = 0.f;
            for (int j = 0; j < a.k && j < 8; j++) {
                w[j] = expf(__fsub_rn(lg[best_e[j]], mx));
                sum = __fadd_rn(sum, w[j]);
            }
            for (int j = 0; j < a.k && j < 8; j++) a.gates[t * a.k + j] = __fdiv_rn(w[j], sum);
        }
    }
    for (int e = threadIdx.x; e < a.E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    int n = a.T * a.k;
    for (int s = threadIdx.x; s < n; s += blockDim.x) atomicAdd(&cnt[a.experts[s]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int rows = 0, items = 0;
        for (int e = 0; e < a.E; e++) {
            base[e] = rows;
            int tiles = (cnt[e] + 7) / 8;
            for (int c = 0; c < tiles && items < a.max_items; c += a.item_ntiles) {
                a.items[3 * items] = e;
                a.items[3 * items + 1] = rows / 8 + c;
                a.items[3 * items + 2] = min(a.item_ntiles, tiles - c);
                items++;
            }
            rows += tiles * 8;
        }
        a.counts[0] = items;
        a.counts[1] = rows;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < a.max_rows; r += blockDim.x) a.row_src[r] = -1;
    __syncthreads();
    if (warp == 0) {
        for (int c = 0; c < n; c += 32) {
            int s = c + lane;
            int e = s < n ? a.experts[s] : -1;
            unsigned peers = __match_any_sync(0xffffffffu, e);
            int rank = __popc(peers & ((1u << lane) - 1));
            int row = e >= 0 ? base[e] + rank : 0;
            __syncwarp();
            if (e >= 0 && rank == 0) base[e] += __popc(peers);
            __syncwarp();
            if (e >= 0) {
                a.prow[s] = row;
                a.row_src[row] = s / a.k;
            }
        }
    }
}

// grid T, block 256: moe_out[t] = sum_j gate[t,j] * down[row of (t,j)] in j order, then the
// residual x[t] += moe_out[t], rounded as the CPU rounds.
extern "C" __global__ void moe_combine(const float* down, const int* prow, const float* gates, int k, int H, float* moe_out,
                            float* x) {
    int t = blockIdx.x;
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        float o = 0.f;
        for (int j = 0; j < k; j++) {
            float g = gates[t * k + j];
            o = __fadd_rn(o, __fmul_rn(g, down[(long long)prow[t * k + j] * H + h]));
        }
        moe_out[(long long)t * H + h] = o;
        x[(long long)t * H + h] = __fadd_rn(x[(long long)t * H + h], o);
    }
}

// grid rows, block 1024: the most likely token of each row (the first on ties; NaN never wins).
extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* logits, int V, int* out) {
    __shared__ float sv[32];
    __shared__ int si[32];
    float bv;
    int bi;
    block_argmax(logits + (long long)blockIdx.x * V, V, nullptr, 0, bv, bi, sv, si);
    if (threadIdx.x == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
}

// --- Layouts (device twins of src/layout.rs) --------------------------------------------

// grid (ceil(words / 256), matrices), block 256: bf16 rows [R][K] -> frag16 (zero padding).
extern "C" __global__ void relayout_frag16(const uint16_t* src, long long src_stride, int R, int K, uint32_t* dst,
                                long long dst_stride, int MT, int KS) {
    long long words = (long long)MT * KS * 32 * 4;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= words) return;
    const uint16_t* s = src + blockIdx.y * src_stride;
    int reg = i & 3, lane = (i >> 2) & 31;
    long long tile = i >> 7;
    int ks = tile % KS, mt = tile / KS;
    int g = lane >> 2, t = lane & 3;
    int r = mt * 16 + g + 8 * (reg & 1), k = ks * 16 + 2 * t + 8 * (reg >> 1);
    uint32_t lo = (r < R && k < K) ? s[(long long)r * K + k] : 0;
    uint32_t hi = (r < R && k + 1 < K) ? s[(long long)r * K + k + 1] : 0;
    dst[blockIdx.y * dst_stride + i] = lo | (hi << 16);
}

// grid (ceil(words / 256), matrices), block 256: MXFP4 codes [R][K/2] -> frag4 codes.
extern "C" __global__ void relayout_frag4_codes(const uint8_t* src, long long src_stride, int R, int K, uint32_t* dst,
                                     long long dst_stride, int MT, int KB) {
    long long words = (long long)MT * KB * 32 * 4;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= words) return;
    const uint8_t* s = src + blockIdx.y * src_stride;
    int j = i & 3, lane = (i >> 2) & 31;
    long long tile = i >> 7;
    int kb = tile % KB, mt = tile / KB;
    int g = lane >> 2, t = lane & 3;
    uint32_t w = 0;
    for (int reg = 0; reg < 4; reg++)
        for (int h = 0; h < 2; h++) {
            int r = mt * 16 + g + 8 * (reg & 1), k = kb * 64 + j * 16 + 2 * t + 8 * (reg >> 1) + h;
            uint32_t nib = 0;
            if (r < R && k < K) nib = (s[(long long)r * (K / 2) + k / 2] >> (4 * (k & 1))) & 15;
            w |= (nib & 7) << (16 * h + 3 * reg);
            w |= (nib >> 3) << (16 * h + 12 + reg);
        }
    dst[blockIdx.y * dst_stride + i] = w;
}

// grid (ceil(words / 256), matrices), block 256: MXFP4 scales [R][K/32] -> frag4 scales.
// Padding blocks get 127 (scale 1) so their zero codes stay zero.
extern "C" __global__ void relayout_frag4_scales(const uint8_t* src, long long src_stride, int R, int K, uint32_t* dst,
                                      long long dst_stride, int MT, int KB) {
    long long words = (long long)MT * KB * 8;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= words) return;
    const uint8_t* s = src + blockIdx.y * src_stride;
    int g = i & 7;
    long long tile = i >> 3;
    int kb = tile % KB, mt = tile / KB;
    int nb = K / 32;
    uint32_t w = 0;
    for (int byte = 0; byte < 4; byte++) {
        int r = mt * 16 + g + 8 * (byte >> 1), blk = kb * 2 + (byte & 1);
        uint32_t v = (r < R && blk < nb) ? s[(long long)r * nb + blk] : 127;
        w |= v << (8 * byte);
    }
    dst[blockIdx.y * dst_stride + i] = w;
}

// --- Random weights (gptoss bench --synth) ----------------------------------------------

DEV uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// bf16 uniform in [center - half, center + half], as `gptoss synth` draws them.
extern "C" __global__ void synth_bf16(uint16_t* dst, long long n, uint64_t seed, float center, float half) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float r = (float)(splitmix64(seed ^ (uint64_t)i) >> 40) * (1.f / 16777216.f);
        float v = center + half * (2.f * r - 1.f);
        __nv_bfloat16 b = __float2bfloat16_rn(v);
        dst[i] = *reinterpret_cast<uint16_t*>(&b);
    }
}

// Random bytes (MXFP4 codes), or scale bytes base + (0..2) when `scale_base` >= 0.
extern "C" __global__ void synth_bytes(uint8_t* dst, long long n, uint64_t seed, int scale_base) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        uint64_t h = splitmix64(seed ^ (uint64_t)i);
        dst[i] = scale_base >= 0 ? (uint8_t)(scale_base + h % 3) : (uint8_t)(h >> 24);
    }
}

// f32 uniform in [center - half, center + half] (biases, gains, sinks).
extern "C" __global__ void synth_f32(float* dst, long long n, uint64_t seed, float center, float half) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float r = (float)(splitmix64(seed ^ (uint64_t)i) >> 40) * (1.f / 16777216.f);
        float v = center + half * (2.f * r - 1.f);
        dst[i] = bf16_bits_to_f32(pack_bf16x2(v, 0.f) & 0xffff);
    }
}

// --- The read-bandwidth probe: every byte once, 16-byte loads, grid-stride. ---
extern "C" __global__ void probe_read(const uint4* p, long long n, uint32_t* sink) {
    uint32_t acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        uint4 v = __ldg(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;  // never, in practice; keeps the loads
}
