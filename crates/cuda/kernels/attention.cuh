// Sink attention over the KV cache (spec §4.3): each query sees the cached positions of its
// sequence before the chunk plus the chunk's own fresh keys up to itself, within the window
// on sliding layers. Keys are split into ranges (flash-decoding); attention_combine merges
// the ranges, counting the sink once, and then stores the chunk's keys and values.
#pragma once
#include "common.cuh"

#define HD 64
#define ATT_TILE 32
#define ATT_PAIRS 8  // (query row, head) pairs per warp: 8 rows x 8 heads per block

struct AttnArgs {
    const float* qkv;        // [T][qkv_stride]: q (nq heads), k (nkv), v (nkv); post-RoPE
    int qkv_stride;
    float* kc;               // full layers: pool [pages][page][kv_dim]; sliding: ring [slots][window][kv_dim]
    float* vc;
    const int* page_table;   // [slots][max_pages]; null on sliding layers
    int max_pages, page;
    int window;              // 0: full attention
    const int* pos;          // [T] absolute positions
    const int* row_item;     // [T]
    const int* item_slot;    // [items] cache slot of the sequence
    const int* item_start;   // [items] positions cached before this chunk
    const int* item_row0;    // [items] first row of the chunk
    const int* item_len;     // [items] rows of the chunk
    const int* qblocks;      // [blocks][2] first row, rows (<= 8, one item)
    const float* sinks;      // [nq]
    float scale;
    int nq, nkv, T;
    int split_keys, splits;
    float* part;             // [T][nq][splits][HD + 2]: acc, max, sum
    float* out;              // [T][nq * HD]
};

// The cache cell of position p of the sequence in `slot`: its ring slot on sliding layers,
// its page's row on full ones.
DEV long long cache_cell(const AttnArgs& a, int slot, int p) {
    if (a.window) return (long long)slot * a.window + p % a.window;
    int pg = a.page_table[(long long)slot * a.max_pages + p / a.page];
    return (long long)pg * a.page + p % a.page;
}

DEV const float* key_src(const AttnArgs& a, int slot, int start, int row0, int p, int kvh, bool value) {
    int kvd = a.nkv * HD;
    if (p >= start) {
        return a.qkv + (long long)(row0 + p - start) * a.qkv_stride + (a.nq + (value ? a.nkv : 0)) * HD + kvh * HD;
    }
    const float* base = value ? a.vc : a.kc;
    long long cell = cache_cell(a, slot, p);
    return base + cell * kvd + kvh * HD;
}

// grid (blocks, nkv, splits), block 256.
extern "C" __global__ void __launch_bounds__(256) attention_partial(AttnArgs a) {
    __shared__ __align__(16) float q_s[8 * ATT_PAIRS][HD];
    __shared__ __align__(16) float k_s[ATT_TILE][HD + 1];
    __shared__ __align__(16) float v_s[ATT_TILE][HD];
    int b = blockIdx.x, kvh = blockIdx.y, sp = blockIdx.z;
    int r0 = a.qblocks[2 * b], nr = a.qblocks[2 * b + 1];
    int item = a.row_item[r0];
    int slot = a.item_slot[item], start = a.item_start[item], row0 = a.item_row0[item];
    int G = a.nq / a.nkv;
    int pairs = nr * G;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    for (int i = threadIdx.x; i < pairs * HD; i += blockDim.x) {
        int p = i / HD, d = i % HD;
        int row = r0 + p / G, head = kvh * G + p % G;
        q_s[p][d] = a.qkv[(long long)row * a.qkv_stride + head * HD + d];
    }

    float m[ATT_PAIRS], l[ATT_PAIRS], acc0[ATT_PAIRS], acc1[ATT_PAIRS];
    int plo[ATT_PAIRS], phi[ATT_PAIRS];
#pragma unroll
    for (int i = 0; i < ATT_PAIRS; i++) {
        int p = warp + 8 * i;
        int head = kvh * G + (p % G);
        bool live = p < pairs;
        int ppos = live ? a.pos[r0 + p / G] : 0;
        plo[i] = a.window ? max(0, ppos - a.window + 1) : 0;
        phi[i] = live ? ppos : -1;
        // The sink is one more logit with no value: counted once, in range 0.
        m[i] = (sp == 0 && live) ? a.sinks[head] : -INFINITY;
        l[i] = (sp == 0 && live) ? 1.f : 0.f;
        acc0[i] = acc1[i] = 0.f;
    }

    int pos_first = a.pos[r0], pos_last = a.pos[r0 + nr - 1];
    int lo = a.window ? max(0, pos_first - a.window + 1) : 0;
    int k_begin = max(lo, sp * a.split_keys), k_end = min(pos_last + 1, (sp + 1) * a.split_keys);
    __syncthreads();

    // Tiles start at multiples of 32 whatever the block's first key, so each row's keys are
    // visited in the same tiles (same online-softmax steps, same bits) however the rows are
    // batched or chunked; keys outside a row's window are masked, and a tile with none of
    // them leaves its state as it was.
    for (int t0 = k_begin & ~(ATT_TILE - 1); t0 < k_end; t0 += ATT_TILE) {
        // 32 keys x 64 dims of K and of V: 8 floats of each per thread.
        {
            int key = threadIdx.x >> 3, d0 = (threadIdx.x & 7) * 8;
            int p = t0 + key;
            if (p < k_end && p >= k_begin) {
                const float* ks = key_src(a, slot, start, row0, p, kvh, false) + d0;
                const float* vs = key_src(a, slot, start, row0, p, kvh, true) + d0;
                float4 k0 = *reinterpret_cast<const float4*>(ks), k1 = *reinterpret_cast<const float4*>(ks + 4);
                float4 v0 = *reinterpret_cast<const float4*>(vs), v1 = *reinterpret_cast<const float4*>(vs + 4);
                k_s[key][d0 + 0] = k0.x, k_s[key][d0 + 1] = k0.y, k_s[key][d0 + 2] = k0.z, k_s[key][d0 + 3] = k0.w;
                k_s[key][d0 + 4] = k1.x, k_s[key][d0 + 5] = k1.y, k_s[key][d0 + 6] = k1.z, k_s[key][d0 + 7] = k1.w;
                *reinterpret_cast<float4*>(&v_s[key][d0]) = v0;
                *reinterpret_cast<float4*>(&v_s[key][d0 + 4]) = v1;
            } else {
                for (int d = 0; d < 8; d++) k_s[key][d0 + d] = 0.f, v_s[key][d0 + d] = 0.f;
            }
        }
        __syncthreads();
        int kp = t0 + lane;
#pragma unroll
        for (int i = 0; i < ATT_PAIRS; i++) {
            int p = warp + 8 * i;
            if (p >= pairs) continue;  // uniform across the warp
            bool valid = kp < k_end && kp >= k_begin && kp >= plo[i] && kp <= phi[i];
            float s = -INFINITY;
            if (valid) {
                float d = 0.f;
#pragma unroll 16
                for (int e = 0; e < HD; e++) d = fmaf(q_s[p][e], k_s[lane][e], d);
                s = d * a.scale;
            }
            float m_new = fmaxf(m[i], warp_max(s));
            if (m_new == -INFINITY) continue;
            float alpha = expf(m[i] - m_new);
            float e = valid ? expf(s - m_new) : 0.f;
            l[i] = l[i] * alpha + warp_sum(e);
            float o0 = acc0[i] * alpha, o1 = acc1[i] * alpha;
#pragma unroll 8
            for (int j = 0; j < ATT_TILE; j++) {
                float ej = __shfl_sync(0xffffffffu, e, j);
                o0 = fmaf(ej, v_s[j][lane], o0);
                o1 = fmaf(ej, v_s[j][lane + 32], o1);
            }
            acc0[i] = o0, acc1[i] = o1;
            m[i] = m_new;
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < ATT_PAIRS; i++) {
        int p = warp + 8 * i;
        if (p >= pairs) continue;
        int row = r0 + p / G, head = kvh * G + p % G;
        float* dst = a.part + (((long long)row * a.nq + head) * a.splits + sp) * (HD + 2);
        dst[lane] = acc0[i];
        dst[lane + 32] = acc1[i];
        if (lane == 0) dst[HD] = m[i], dst[HD + 1] = l[i];
    }
}

// Stores row `row`'s keys and values in the cache (the block's threads share the copy).
// Sliding layers keep only the chunk's last `window` positions; the others would overwrite
// slots that no later query can see anyway.
DEV void store_row_kv(const AttnArgs& a, int row) {
    int item = a.row_item[row];
    int slot = a.item_slot[item], start = a.item_start[item], len = a.item_len[item];
    int p = a.pos[row];
    if (a.window && p < start + len - a.window) return;
    int kvd = a.nkv * HD;
    long long cell = cache_cell(a, slot, p);
    const float* src = a.qkv + (long long)row * a.qkv_stride + a.nq * HD;
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
        a.kc[cell * kvd + i] = src[i];
        a.vc[cell * kvd + i] = src[kvd + i];
    }
}

// grid T, block 256: merge the key ranges of every head of a row, then store the row's keys
// and values in the cache (after every query of the chunk has read it).
extern "C" __global__ void __launch_bounds__(256) attention_combine(AttnArgs a) {
    int row = blockIdx.x;
    for (int i = threadIdx.x; i < a.nq * HD; i += blockDim.x) {
        int head = i / HD, d = i % HD;
        const float* pp = a.part + ((long long)row * a.nq + head) * a.splits * (HD + 2);
        float M = -INFINITY;
        for (int s = 0; s < a.splits; s++) M = fmaxf(M, pp[s * (HD + 2) + HD]);
        float L = 0.f, o = 0.f;
        for (int s = 0; s < a.splits; s++) {
            float ms = pp[s * (HD + 2) + HD];
            if (ms == -INFINITY) continue;
            float f = expf(ms - M);
            L += pp[s * (HD + 2) + HD + 1] * f;
            o += pp[s * (HD + 2) + d] * f;
        }
        a.out[(long long)row * a.nq * HD + i] = o / L;
    }
    store_row_kv(a, row);
}

// The scalar twin: one thread per (row, head), two passes over the keys, as the CPU does.
extern "C" __global__ void attention_ref(AttnArgs a) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= a.T * a.nq) return;
    int row = idx / a.nq, head = idx % a.nq;
    int G = a.nq / a.nkv, kvh = head / G;
    int item = a.row_item[row];
    int slot = a.item_slot[item], start = a.item_start[item], row0 = a.item_row0[item];
    int pos = a.pos[row];
    int lo = a.window ? max(0, pos - a.window + 1) : 0;
    const float* q = a.qkv + (long long)row * a.qkv_stride + head * HD;
    float mx = a.sinks[head];
    for (int p = lo; p <= pos; p++) {
        const float* k = key_src(a, slot, start, row0, p, kvh, false);
        float d = 0.f;
        for (int e = 0; e < HD; e++) d = fmaf(q[e], k[e], d);
        mx = fmaxf(mx, d * a.scale);
    }
    float denom = expf(a.sinks[head] - mx);
    float o[HD];
    for (int e = 0; e < HD; e++) o[e] = 0.f;
    for (int p = lo; p <= pos; p++) {
        const float* k = key_src(a, slot, start, row0, p, kvh, false);
        const float* v = key_src(a, slot, start, row0, p, kvh, true);
        float d = 0.f;
        for (int e = 0; e < HD; e++) d = fmaf(q[e], k[e], d);
        float w = expf(d * a.scale - mx);
        denom += w;
        for (int e = 0; e < HD; e++) o[e] = fmaf(w, v[e], o[e]);
    }
    for (int e = 0; e < HD; e++) a.out[(long long)row * a.nq * HD + head * HD + e] = o[e] / denom;
}

// The cache write of attention_combine alone (after attention_ref).
extern "C" __global__ void kv_store(AttnArgs a) { store_row_kv(a, blockIdx.x); }
