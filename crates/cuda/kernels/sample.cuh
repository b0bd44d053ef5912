// The next token of each logits row on the device: greedy, or a draw with temperature, top-k,
// top-p and min-p; with its log-probability and the N most likely alternatives. One block
// of 1024 threads per row; the host twin is gptoss_engine::sampler::pick_on_host.
//
// Weights w = exp((z - max) / T) lie in (0, 1] (the best token has exactly 1). The top-k and
// top-p boundaries are found by radix selection on w's bits (w >= 0, so bit order is value
// order); masses are summed in 2^-40 fixed point, so every sum is exact and order-free and a
// row picks the same token however the block is scheduled. The draw walks the kept tokens in
// index order (the host sampler walks them by weight: another order of the same
// distribution).
#pragma once
#include "common.cuh"

struct PickSpec {
    float temperature;  // 0: greedy
    int top_k;          // 0: all
    float top_p;        // 1: all
    float min_p;        // 0: all
    double u;           // uniform in [0, 1) for the draw
    int top_n;          // alternatives to report
    int pad;
};

#define PICK_THREADS 1024
#define FIX_ONE 1099511627776.0  // 2^40

DEV unsigned long long fixed_mass(float w) { return (unsigned long long)((double)w * FIX_ONE); }

// The exclusive prefix (in thread order) and the total of one u64 per thread.
DEV unsigned long long block_scan_u64(unsigned long long v, unsigned long long* red, unsigned long long& total) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    unsigned long long inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        unsigned long long n = __shfl_sync(0xffffffffu, inc, lane - o < 0 ? 0 : lane - o);
        if (lane >= o) inc += n;
    }
    __syncthreads();
    if (lane == 31) red[warp] = inc;
    __syncthreads();
    unsigned long long before = 0;
    total = 0;
    for (int w = 0; w < nw; w++) {
        if (w < warp) before += red[w];
        total += red[w];
    }
    return before + inc - v;
}

// grid rows, block 1024.
extern "C" __global__ void __launch_bounds__(PICK_THREADS)
    pick_tokens(const float* logits, int V, const PickSpec* specs, int* out_token, float* out_logprob, int* top_ids,
                float* top_lps, int max_top) {
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ double sd[32];
    __shared__ unsigned long long hist_n[256], hist_m[256], red[32];
    __shared__ int chosen[32];
    const float* z = logits + (long long)blockIdx.x * V;
    PickSpec sp = specs[blockIdx.x];
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, nw = blockDim.x >> 5;

    float zmax;
    int zarg;
    block_argmax(z, V, nullptr, 0, zmax, zarg, sv, si);
    if (zarg == 0x7fffffff) zarg = 0;

    // log-sum-exp, as the host's log_sum_exp: f32 differences, f64 exponentials.
    float lse = zmax;
    if (isfinite(zmax)) {
        double s = 0.0;
        for (int i = tid; i < V; i += blockDim.x) s += exp((double)(clean_logit(z[i]) - zmax));
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        __syncthreads();
        if (lane == 0) sd[warp] = s;
        __syncthreads();
        double tot = 0.0;
        for (int w = 0; w < nw; w++) tot += sd[w];
        lse = zmax + (float)log(tot);
    }

    int token = zarg;
    float inv_t = 1.f / sp.temperature;
    bool greedy = sp.temperature == 0.f || sp.top_k == 1 || !isfinite(zmax) || !isfinite(inv_t);
    if (!greedy) {
        // Weight bits (w in [0, 1], so at most 0x3f800000) of token i.
        auto wbits = [&](int i) { return __float_as_uint(expf((clean_logit(z[i]) - zmax) * inv_t)); };
        // Radix descent to the largest threshold t such that the tokens with w >= t (ties at t
        // counted up to `need` in index order) reach the goal: `count` tokens for top-k, a
        // fixed-point mass for top-p. Restricted to tokens with w >= floor_t (top-k's cut).
        unsigned floor_t = 0;
        int floor_eq = 0x7fffffff;  // tokens equal to floor_t kept: those with index <= floor_eq
        auto kept_k = [&](int i, unsigned w) { return w > floor_t || (w == floor_t && i <= floor_eq); };
        // Index of the `need`-th (1-based) token with w == t in index order.
        auto nth_equal = [&](unsigned t, long long need) -> int {
            int chunk = (V + blockDim.x - 1) / blockDim.x, lo = tid * chunk, hi = min(V, lo + chunk);
            unsigned long long mine = 0;
            for (int i = lo; i < hi; i++) mine += wbits(i) == t && kept_k(i, t);
            unsigned long long all;
            unsigned long long before = block_scan_u64(mine, red, all);
            __syncthreads();
            if (tid == 0) chosen[0] = V - 1;
            __syncthreads();
            if ((long long)before < need && (long long)(before + mine) >= need) {
                long long c = (long long)before;
                for (int i = lo; i < hi; i++)
                    if (wbits(i) == t && kept_k(i, t) && ++c == need) chosen[0] = i;
            }
            __syncthreads();
            return chosen[0];
        };
        // by_mass false: goal counts tokens; true: goal is a mass. Returns (threshold, last
        // index kept among the ties).
        auto select = [&](bool by_mass, unsigned long long goal, unsigned& t_out, int& eq_out) {
            unsigned prefix = 0;
            unsigned long long above = 0;  // count or mass strictly above the current prefix
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int b = tid; b < 256; b += blockDim.x) hist_n[b] = 0, hist_m[b] = 0;
                __syncthreads();
                unsigned mask_hi = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
                for (int i = tid; i < V; i += blockDim.x) {
                    unsigned w = wbits(i);
                    if (!kept_k(i, w) || (w & mask_hi) != prefix) continue;
                    unsigned b = (w >> shift) & 0xff;
                    atomicAdd(&hist_n[b], 1ull);
                    atomicAdd(&hist_m[b], fixed_mass(__uint_as_float(w)));
                }
                __syncthreads();
                // From the top bucket down: the first where the goal is reached.
                unsigned pick = 0;
                unsigned long long acc = above;
                for (int b = 255; b >= 0; b--) {
                    unsigned long long add = by_mass ? hist_m[b] : hist_n[b];
                    if (acc + add >= goal || b == 0) {
                        pick = (unsigned)b;
                        break;
                    }
                    acc += add;
                }
                __syncthreads();
                above = acc;
                prefix |= pick << shift;
            }
            // `above` is what lies strictly above t = prefix; the ties at t make up the rest.
            t_out = prefix;
            long long need;
            if (by_mass) {
                unsigned long long m = fixed_mass(__uint_as_float(prefix));
                need = m == 0 ? 1 : (long long)((goal - above + m - 1) / m);
            } else {
                need = (long long)(goal - above);
            }
            if (need < 1) need = 1;
            eq_out = nth_equal(prefix, need);
        };
        if (sp.top_k > 0 && sp.top_k < V) select(false, (unsigned long long)sp.top_k, floor_t, floor_eq);
        unsigned p_t = floor_t;
        int p_eq = floor_eq;
        if (sp.top_p < 1.f) {
            // The kept mass so far (top-k), then the top-p cut within it.
            unsigned long long m = 0;
            for (int i = tid; i < V; i += blockDim.x) {
                unsigned w = wbits(i);
                if (kept_k(i, w)) m += fixed_mass(__uint_as_float(w));
            }
            unsigned long long all;
            block_scan_u64(m, red, all);
            unsigned long long goal = (unsigned long long)((double)sp.top_p * (double)all);
            if (goal < 1) goal = 1;
            select(true, goal, p_t, p_eq);
        }
        unsigned min_t = sp.min_p > 0.f ? __float_as_uint(sp.min_p) : 0u;
        auto kept = [&](int i, unsigned w) {
            return (w > p_t || (w == p_t && i <= p_eq)) && kept_k(i, w) && w >= min_t;
        };
        // The draw: u times the kept mass, walked in index order.
        int chunk = (V + blockDim.x - 1) / blockDim.x, lo = tid * chunk, hi = min(V, lo + chunk);
        unsigned long long mine = 0;
        for (int i = lo; i < hi; i++) {
            unsigned w = wbits(i);
            if (kept(i, w)) mine += fixed_mass(__uint_as_float(w));
        }
        unsigned long long all;
        unsigned long long before = block_scan_u64(mine, red, all);
        unsigned long long target = (unsigned long long)(sp.u * (double)all);
        __syncthreads();
        if (tid == 0) chosen[0] = zarg;
        __syncthreads();
        if (all > 0 && before <= target && target < before + mine) {
            unsigned long long c = before;
            for (int i = lo; i < hi; i++) {
                unsigned w = wbits(i);
                if (!kept(i, w)) continue;
                c += fixed_mass(__uint_as_float(w));
                if (c > target) {
                    chosen[0] = i;
                    break;
                }
            }
        }
        __syncthreads();
        token = chosen[0];
    }

    // Log-probabilities under the model's own distribution, as the host reports them.
    auto lp = [&](float zz) {
        zz = clean_logit(zz);
        if (lse == INFINITY) return zz == INFINITY ? 0.f : -INFINITY;
        if (lse == -INFINITY) return -INFINITY;
        return zz - lse;
    };
    if (tid == 0) {
        out_token[blockIdx.x] = token;
        out_logprob[blockIdx.x] = lp(z[token]);
    }
    int n = min(sp.top_n, min(max_top, 32));
    if (n > 0) {
        __syncthreads();
        if (tid < 32) chosen[tid] = -1;
        __syncthreads();
        for (int j = 0; j < n && j < V; j++) {
            float bv;
            int bi;
            block_argmax(z, V, chosen, j, bv, bi, sv, si);
            __syncthreads();
            if (tid == 0) {
                chosen[j] = bi;
                top_ids[blockIdx.x * max_top + j] = bi;
                top_lps[blockIdx.x * max_top + j] = lp(z[bi]);
            }
            __syncthreads();
        }
    }
}
