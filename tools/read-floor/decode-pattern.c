// The read floor of a 20b decode step: what plain loads reach over the bytes one generated
// token reads, in the order and with the split the engine uses, on 2 threads. No arithmetic,
// so the gap between this and `gptoss bench`'s generation is the kernels' (or the glue's),
// and the gap between this and the bench's bandwidth probe is the access pattern's (a stage
// change every ~0.5 ms, 2 MiB pages, one stream per thread).
//
//   cc -O2 -mavx2 -pthread -o /tmp/decode-pattern tools/read-floor/decode-pattern.c
//   /tmp/decode-pattern            # 13 GB of anonymous memory in 2 MiB pages, like the model
//
// Per token and layer: q/k/v (one 29.5 MB stream, bf16), the attention output (23.6 MB),
// 4 of 32 experts' gate_up (8.8 MB each, MXFP4 codes and scales) then their down (4.4 MB);
// then the unembedding (1.16 GB). Each matrix is split in two halves, one per thread, with a
// barrier after it, as the engine's parallel loops end in a join. Like the bench's probe, each
// cache line prefetches the one 4 KiB ahead (the hardware prefetcher stops at pages).
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define LAYERS 24
#define EXPERTS 32
#define ACTIVE 4
#define TOKENS 32
#define PASSES 10

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static char *huge_alloc(size_t n) {
    char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    madvise(p, n, MADV_HUGEPAGE);
    memset(p, 1, n);
    return p;
}

static __m256i read_sum(const char *p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        _mm_prefetch(p + i + 4096, _MM_HINT_T0);
        _mm_prefetch(p + i + 4096 + 64, _MM_HINT_T0);
        a = _mm256_add_epi32(a, _mm256_load_si256((const void *)(p + i)));
        b = _mm256_add_epi32(b, _mm256_load_si256((const void *)(p + i + 32)));
        c = _mm256_add_epi32(c, _mm256_load_si256((const void *)(p + i + 64)));
        d = _mm256_add_epi32(d, _mm256_load_si256((const void *)(p + i + 96)));
    }
    return _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d));
}

enum { QKV, ATTN_OUT, GATE_UP, DOWN, UNEMBEDDING, STAGES };
static const char *stage_names[STAGES] = {"qkv", "attn_out", "gate_up", "down", "unembedding"};
static const size_t stage_bytes[STAGES] = {
    5120UL * 2880 * 2, 2880UL * 4096 * 2, 5760UL * 2880 / 2 + 5760UL * 90,
    2880UL * 2880 / 2 + 2880UL * 90, 201088UL * 2880 * 2,
};

typedef struct { const char *p; size_t n; int stage; } Job;
static Job jobs[LAYERS * (2 + 2 * ACTIVE) + 1];
static int n_jobs;
static volatile __m256i sink[2];
static atomic_int go, arrived, sense;

static void barrier(void) {
    int mine = !atomic_load(&sense);
    if (atomic_fetch_add(&arrived, 1) == 1) {
        atomic_store(&arrived, 0);
        atomic_store(&sense, mine);
    } else {
        while (atomic_load(&sense) != mine) _mm_pause();
    }
}

static void run_half(int thread, Job j) {
    size_t half = (j.n / 2) & ~(size_t)4095;
    const char *p = j.p + (thread ? half : 0);
    sink[thread] = _mm256_add_epi32(sink[thread], read_sum(p, thread ? j.n - half : half));
}

static void *worker(void *arg) {
    (void)arg;
    for (int seen = 0;;) {
        while (atomic_load(&go) == seen) _mm_pause();
        seen = atomic_load(&go);
        for (int j = 0; j < n_jobs; j++) {
            run_half(1, jobs[j]);
            barrier();
        }
    }
    return 0;
}

/// Seconds per stage of the current job list, run on both threads.
static void run_jobs(double *secs) {
    atomic_fetch_add(&go, 1);
    for (int j = 0; j < n_jobs; j++) {
        double t = now();
        run_half(0, jobs[j]);
        barrier();
        if (secs) secs[jobs[j].stage] += now() - t;
    }
}

static unsigned long long rng = 88172645463325252ULL;
static unsigned next_rand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (unsigned)rng;
}

static char *qkv[LAYERS], *attn_out[LAYERS], *gate_up[LAYERS][EXPERTS], *down[LAYERS][EXPERTS];
static char *unembedding, *probe;
static const size_t probe_bytes = 512UL << 20;

/// The bench's probe: bytes per second, the best of PASSES passes over 512 MiB.
static double probe_best(void) {
    double best = 0;
    n_jobs = 1;
    jobs[0] = (Job){probe, probe_bytes, 0};
    for (int pass = 0; pass < PASSES; pass++) {
        double t = now();
        run_jobs(0);
        double bw = probe_bytes / (now() - t);
        if (bw > best) best = bw;
    }
    return best;
}

/// One token's job list: per layer q/k/v, the attention output, 4 distinct random experts'
/// gate_up then their down; then the unembedding.
static void token_jobs(void) {
    n_jobs = 0;
    for (int l = 0; l < LAYERS; l++) {
        int chosen[ACTIVE];
        jobs[n_jobs++] = (Job){qkv[l], stage_bytes[QKV], QKV};
        jobs[n_jobs++] = (Job){attn_out[l], stage_bytes[ATTN_OUT], ATTN_OUT};
        for (int k = 0; k < ACTIVE; k++) {
            int again;
            do {
                chosen[k] = next_rand() % EXPERTS;
                again = 0;
                for (int m = 0; m < k; m++) again |= chosen[m] == chosen[k];
            } while (again);
        }
        for (int k = 0; k < ACTIVE; k++)
            jobs[n_jobs++] = (Job){gate_up[l][chosen[k]], stage_bytes[GATE_UP], GATE_UP};
        for (int k = 0; k < ACTIVE; k++) jobs[n_jobs++] = (Job){down[l][chosen[k]], stage_bytes[DOWN], DOWN};
    }
    jobs[n_jobs++] = (Job){unembedding, stage_bytes[UNEMBEDDING], UNEMBEDDING};
}

int main(void) {
    for (int l = 0; l < LAYERS; l++) {
        qkv[l] = huge_alloc(stage_bytes[QKV]);
        attn_out[l] = huge_alloc(stage_bytes[ATTN_OUT]);
        for (int e = 0; e < EXPERTS; e++) {
            gate_up[l][e] = huge_alloc(stage_bytes[GATE_UP]);
            down[l][e] = huge_alloc(stage_bytes[DOWN]);
        }
    }
    unembedding = huge_alloc(stage_bytes[UNEMBEDDING]);
    probe = huge_alloc(probe_bytes);
    pthread_t thread;
    pthread_create(&thread, 0, worker, 0);

    for (int rep = 0; rep < 4; rep++) {
        double secs[STAGES] = {0}, bytes[STAGES] = {0}, total = 0;
        double before = probe_best();
        double t = now();
        for (int tok = 0; tok < TOKENS; tok++) {
            token_jobs();
            for (int j = 0; j < n_jobs; j++) bytes[jobs[j].stage] += jobs[j].n;
            run_jobs(secs);
        }
        double dt = now() - t;
        for (int s = 0; s < STAGES; s++) total += bytes[s];
        printf("pattern %.1f GB/s (%.2f GB per token, %.2f tokens/s):", total / dt / 1e9, total / TOKENS / 1e9,
               TOKENS / dt);
        for (int s = 0; s < STAGES; s++) printf(" %s %.1f", stage_names[s], bytes[s] / secs[s] / 1e9);
        printf("\n");
        double after = probe_best();
        printf("  probe before %.1f, after %.1f GB/s\n", before / 1e9, after / 1e9);
        fflush(stdout);
    }
    return 0;
}
