#pragma once
/// \file embedding.hpp
/// \brief CPU embedding lookup: rows of an f32 or bf16 table gathered into f32 activations.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// Embedding lookup: y[t] = table[ids[t]] (bf16 widened exactly to f32).
///
/// \param y     [T, d] output rows
/// \param table [vocab, d] embedding table (f32 or bf16)
/// \param ids   [T] token ids
/// \param T     number of tokens
/// \param d     embedding width (d_model)
/// \param pool  thread pool (nullptr: ThreadPool::global())
/// \pre 0 <= ids[t] < vocab (validated by the caller); y does not overlap table.
template <class A, class W>
    requires CpuWeight<W>
void embedding_gather(Cpu<A>, float* y /*[T, d]*/, const W* table /*[vocab, d]*/, const std::int32_t* ids /*[T]*/,
                      std::int64_t T, std::int64_t d, ThreadPool* pool = nullptr) {
    constexpr std::int64_t L = cpu_detail::lanes<A>;
    auto rows = [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t) {
            const W* src = table + static_cast<std::int64_t>(ids[t]) * d;
            float* dst = y + t * d;
            if constexpr (std::is_same_v<W, float>) {
                std::memcpy(dst, src, static_cast<std::size_t>(d) * sizeof(float));
            } else {
                std::int64_t i = 0;
                for (; i + L <= d; i += L) cpu_detail::load_f32<A>(src + i).store_unaligned(dst + i);
                for (; i < d; ++i) dst[i] = cpu_detail::to_f32(src[i]);
            }
        }
    };
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), T, 0.25 * static_cast<double>(d), rows);
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
