#pragma once
// Helpers shared by the CUDA decode-kernel tests: fresh random inputs, bf16 rounding, the
// relative L2 error, and the tolerances (METHOD.md: f32 arithmetic lands far under 1e-3; bf16
// operands between 1e-3 and 1e-2).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/rel_err.hpp"

namespace limarp::test {

/// ||a - b|| / ||b|| bound for kernels computing in f32 against the CPU f32 kernels (orders and
/// exp implementations differ by a few ulp).
inline constexpr double kTolF32 = 1e-5;
/// The same for a result whose inputs were rounded to bf16 on one side only (bf16 has 8 bits of
/// mantissa: 2^-9 = 2e-3 relative per value).
inline constexpr double kTolBf16 = 1e-2;

inline std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float lo = -2.f, float hi = 2.f) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& e : v) e = d(g);
    return v;
}

/// bf16 copies of `x` (round to nearest even) as device values and as raw bits; `x` is replaced by
/// the rounded values widened back to f32, so a reference sees exactly what the kernel sees.
inline void round_to_bf16(std::vector<float>& x, std::vector<__nv_bfloat16>& dev, std::vector<std::uint16_t>& bits) {
    dev.resize(x.size());
    bits.resize(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        dev[i] = __float2bfloat16_rn(x[i]);
        std::memcpy(&bits[i], &dev[i], 2);
        x[i] = __bfloat162float(dev[i]);
    }
}

inline double rel_l2(const float* a, const float* b, std::size_t n) {
    return norm_rel_err(a, b, static_cast<std::int64_t>(n));
}
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) { return rel_l2(a.data(), b.data(), b.size()); }

/// Elements that are not finite (a NaN poison that was never overwritten, or a blow-up).
inline std::size_t count_non_finite(const std::vector<float>& v) {
    std::size_t n = 0;
    for (float e : v) n += !std::isfinite(e);
    return n;
}

/// Elements whose bits differ.
inline std::size_t count_bit_differences(const std::vector<float>& a, const std::vector<float>& b) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return n;
}

inline const float kNaN = std::numeric_limits<float>::quiet_NaN();

}  // namespace limarp::test
