#pragma once
// Relative error metrics shared by the tests (host code only: the CUDA tests include it too).
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace limarp::test {

/// ||a - b|| / ||b|| (Euclidean norms; ||a - b|| when b is zero)
inline double norm_rel_err(const float* a, const float* b, std::int64_t n) {
    double num = 0, den = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(a[i]) - b[i];
        num += d * d;
        den += static_cast<double>(b[i]) * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// max |a - b| / max |b|
inline double max_rel_err(const float* a, const float* b, std::int64_t n) {
    double num = 0, den = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
        den = std::max(den, std::fabs(static_cast<double>(b[i])));
    }
    return den > 0 ? num / den : num;
}

}  // namespace limarp::test
