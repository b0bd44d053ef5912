// The linear kernels' entry points, one per (weights, m-tiles per warp, n-tiles) the host
// picks; shared by the GPU build (gptoss.cu) and the CPU emulator (emu/emu.cpp).
#pragma once
#include "linear.cuh"

// The linear kernels, one entry point per (weights, m-tiles per warp, n-tiles) the host picks.
#define GEMV(MXN, MX, MTW, NT)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) gemv_##MXN##_m##MTW##_n##NT(LinearArgs a) { \
        linear_gemv<MX, MTW, NT>(a);                                                               \
    }
GEMV(bf16, false, 2, 1)
GEMV(bf16, false, 2, 2)
GEMV(bf16, false, 1, 4)
GEMV(bf16, false, 1, 8)
GEMV(mxfp4, true, 2, 1)
GEMV(mxfp4, true, 2, 2)
GEMV(mxfp4, true, 1, 4)
GEMV(mxfp4, true, 1, 8)

extern "C" __global__ void __launch_bounds__(128) gemm_bf16(LinearArgs a) { linear_gemm<false>(a); }
extern "C" __global__ void __launch_bounds__(128) gemm_mxfp4(LinearArgs a) { linear_gemm<true>(a); }
extern "C" __global__ void linear_ref_bf16(LinearArgs a) { linear_ref<false>(a); }
extern "C" __global__ void linear_ref_mxfp4(LinearArgs a) { linear_ref<true>(a); }
