// All kernels of the CUDA backend, in one module. Built by tools/build-cuda-kernels.sh into
// gptoss.fatbin, which the crate embeds; entry points have C names for cuModuleGetFunction.
#include "attention.cuh"
#include "linear.cuh"
#include "misc.cuh"
#include "sample.cuh"

#include "entries.cuh"
