#pragma once
// Shared by the whole-model benchmarks: random bf16 weights generated in the program (no
// download) and the process's peak RSS.
#include <sys/resource.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>

#include "limarp/core/dtype.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/core/thread_pool.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp::bench {

/// Random bf16 weights ~ U(-a, a) with a = sqrt(3) / sqrt(fan_in) (fan_in = the last extent);
/// 1-D tensors (norms) are 1. Deterministic for a name; generated in parallel.
inline Weight random_weight(const std::string& name, const Shape& shape) {
    Tensor<bf16> t(shape);
    const std::int64_t n = t.size();
    const bool norm = shape.size() == 1;
    const float a = norm ? 0.f : 1.7320508f / std::sqrt(static_cast<float>(shape.back()));
    ThreadPool::global().parallel_for(0, n, [&](std::int64_t b, std::int64_t e, unsigned) {
        std::uint64_t s = 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(b + 1) ^ std::hash<std::string>{}(name);
        for (std::int64_t i = b; i < e; ++i) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            const float u = static_cast<float>(s >> 40) * (1.0f / 16777216.0f) * 2.f - 1.f;
            t[i].bits = f32_to_bf16(norm ? 1.f : u * a);
        }
    }, 1 << 16);
    return Weight::owned(std::move(t), name);
}

/// The process's peak resident set (getrusage high-water mark) in GiB.
inline double peak_rss_gb() {
    rusage r{};
    getrusage(RUSAGE_SELF, &r);
    return static_cast<double>(r.ru_maxrss) / (1024.0 * 1024.0);
}

}  // namespace limarp::bench
