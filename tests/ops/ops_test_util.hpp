#pragma once
// Shared helpers of the CPU kernel tests: backend list, thread pools, random data.

#include <cstdint>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"

namespace limarp::test {

/// The CPU backends under test: the build's best arch, plus AVX2 (the portable x86-64-v3 path)
/// and SSE4.2 (the path without a wide bf16 load) when the build can run them.
using CpuBackends = std::tuple<Cpu<xsimd::default_arch>
#if XSIMD_WITH_AVX2
                               ,
                               Cpu<xsimd::avx2>
#endif
#if XSIMD_WITH_SSE4_2
                               ,
                               Cpu<xsimd::sse4_2>
#endif
                               >;

/// Pools with 1 and 2 threads; every kernel test runs with both.
inline std::vector<ThreadPool*> test_pools() {
    static ThreadPool one(1), two(2);
    return {&one, &two};
}

/// A deterministic generator per test.
inline std::mt19937_64& rng() {
    static std::mt19937_64 g(20240607);
    return g;
}

/// n uniform floats in [lo, hi).
inline std::vector<float> random_floats(std::int64_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = d(rng());
    return v;
}

/// Weights of element type W (f32, or bf16 rounded from uniform floats) and their f32 values.
template <class W>
struct RandomWeights {
    std::vector<W> w;        ///< as passed to the kernel
    std::vector<float> f32;  ///< exact f32 value of every element
};

template <class W>
RandomWeights<W> random_weights(std::int64_t n, float lo = -1.0f, float hi = 1.0f) {
    RandomWeights<W> r;
    r.f32 = random_floats(n, lo, hi);
    if constexpr (std::is_same_v<W, float>) {
        r.w = r.f32;
    } else {
        r.w.resize(r.f32.size());
        for (std::size_t i = 0; i < r.f32.size(); ++i) {
            r.w[i].bits = f32_to_bf16(r.f32[i]);
            r.f32[i] = bf16_to_f32(r.w[i].bits);
        }
    }
    return r;
}

}  // namespace limarp::test
