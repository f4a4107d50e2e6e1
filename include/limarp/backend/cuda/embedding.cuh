#pragma once
/// \file embedding.cuh
/// \brief CUDA embedding lookup `ops::embedding_gather`: rows of an f32 or bf16 table gathered into
/// f32 activations (bf16 widened exactly), the same values as the CPU `ops::embedding_gather`.
///
/// One block per token; 4 elements per thread and step (16-byte f32 / 8-byte bf16 loads) when
/// d % 4 == 0 and the pointers allow, else 1. The ids are read from device memory (the sampled
/// id of the previous step stays on the device; a CUDA graph replays with it).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/detail/pdl.cuh"

namespace limarp {

/// \cond
namespace cuda_detail {

template <int V, class W>
__global__ void __launch_bounds__(256)
    embedding_gather_kernel(float* __restrict__ y /*[T, d]*/, const W* __restrict__ table /*[vocab, d]*/,
                            const std::int32_t* __restrict__ ids /*[T]*/, int d) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    const long long t = blockIdx.x;
    const W* src = table + static_cast<long long>(ids[t]) * d;
    float* dst = y + t * d;
    for (int i = static_cast<int>(threadIdx.x) * V; i < d; i += static_cast<int>(blockDim.x) * V) {
        if constexpr (V == 4)
            *reinterpret_cast<float4*>(dst + i) = load4(src + i);
        else
            dst[i] = to_f32(src[i]);
    }
}

}  // namespace cuda_detail
/// \endcond

namespace ops {

/// Embedding lookup on the GPU: y[t] = table[ids[t]] (bf16 widened exactly to f32). Asynchronous.
///
/// \tparam W     table type, float or __nv_bfloat16
/// \param y      [T, d] device output rows
/// \param table  [vocab, d] device embedding table
/// \param ids    [T] device token ids
/// \param T      tokens
/// \param d      embedding width (d_model), < 2^31
/// \param stream CUDA stream
/// \pre 0 <= ids[t] < vocab (the kernel does not check: validate ids where they enter, e.g. the
///      tokenizer or the sampler); y does not overlap table. \throws CudaError when the launch fails
template <int Sm, class W>
    requires(std::is_same_v<W, float> || std::is_same_v<W, __nv_bfloat16>)
void embedding_gather(Cuda<Sm>, float* y /*[T, d]*/, const W* table /*[vocab, d]*/, const std::int32_t* ids /*[T]*/,
                      std::int64_t T, std::int64_t d, cudaStream_t stream = nullptr) {
    using namespace cuda_detail;
    if (T <= 0 || d <= 0) return;
    const bool vec = d % 4 == 0 && aligned_to(y, 16) && aligned_to(table, 4 * sizeof(W));
    const std::int64_t want = ((vec ? d / 4 : d) + 31) / 32 * 32;
    const unsigned threads = static_cast<unsigned>(want > 256 ? 256 : want);
    if (vec)
        launch_chained(__FILE__, __LINE__, embedding_gather_kernel<4, W>, dim3(static_cast<unsigned>(T)),
                       dim3(threads), 0, stream, y, table, ids, static_cast<int>(d));
    else
        launch_chained(__FILE__, __LINE__, embedding_gather_kernel<1, W>, dim3(static_cast<unsigned>(T)),
                       dim3(threads), 0, stream, y, table, ids, static_cast<int>(d));
}

}  // namespace ops
}  // namespace limarp
