#pragma once
// Scalar references for the quantized products: they quantize exactly as the kernels do
// (quantize_row_int8 per row / per block of 32) and sum in plain loops.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "limarp/quant/int8_rowwise.hpp"
#include "limarp/quant/q8_0.hpp"

namespace limarp::test {

/// a * b for int8 values, kept out of GCC's int8 dot-product vectorizer (GCC 12 turns such loops
/// into vpdpbusd, which is wrong for signed x signed bytes).
inline std::int32_t mul_i8(std::int32_t a, std::int32_t b) {
    std::int32_t p = a * b;
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("" : "+r"(p));
#endif
    return p;
}

/// A reference output value and the magnitude of the terms that were summed (for tolerances).
struct RefOut {
    std::vector<float> y;    // [T, n_out]
    std::vector<double> mag;  // [T, n_out]
};

inline std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (auto& e : v) e = u(g);
    return v;
}

/// Columns with some |x| >= thr (thr > 0), ascending.
inline std::vector<std::int64_t> ref_outlier_columns(const float* x, std::int64_t T, std::int64_t n, float thr) {
    std::vector<std::int64_t> c;
    if (!(thr > 0)) return c;
    for (std::int64_t k = 0; k < n; ++k) {
        bool o = false;
        for (std::int64_t t = 0; t < T; ++t) o = o || std::fabs(x[t * n + k]) >= thr;
        if (o) c.push_back(k);
    }
    return c;
}

/// int8 x int8 with outlier decomposition.
inline RefOut ref_int8(const float* x, std::int64_t T, const QuantizedWeight<Int8Rowwise>& w, float thr) {
    const std::int64_t n = w.n_in(), n_out = w.n_out();
    const auto cols = ref_outlier_columns(x, T, n, thr);
    RefOut r{std::vector<float>(static_cast<std::size_t>(T * n_out)), std::vector<double>(static_cast<std::size_t>(T * n_out))};
    std::vector<float> tmp(static_cast<std::size_t>(n));
    std::vector<std::int8_t> q(static_cast<std::size_t>(n));
    for (std::int64_t t = 0; t < T; ++t) {
        std::copy(x + t * n, x + (t + 1) * n, tmp.begin());
        for (auto c : cols) tmp[static_cast<std::size_t>(c)] = 0.0f;
        const float sx = quantize_row_int8(tmp.data(), n, q.data());
        for (std::int64_t o = 0; o < n_out; ++o) {
            const std::int8_t* wr = w.row(o);
            const float sw = w.scales()[o];
            std::int32_t dot = 0;
            double m = 0;
            for (std::int64_t k = 0; k < n; ++k) {
                const std::int32_t p = mul_i8(q[static_cast<std::size_t>(k)], wr[k]);
                dot += p;
                m += std::abs(p);
            }
            float v = (sx * sw) * static_cast<float>(dot);
            m *= static_cast<double>(sx) * sw;
            if (!cols.empty()) {
                float s = 0.0f;
                double ms = 0;
                for (auto c : cols) {
                    s += x[t * n + c] * static_cast<float>(wr[c]);
                    ms += std::fabs(x[t * n + c] * static_cast<double>(wr[c]));
                }
                v += sw * s;
                m += ms * sw;
            }
            r.y[static_cast<std::size_t>(t * n_out + o)] = v;
            r.mag[static_cast<std::size_t>(t * n_out + o)] = m;
        }
    }
    return r;
}

/// Weight-only int8 in double.
inline RefOut ref_int8_weight_only(const float* x, std::int64_t T, const QuantizedWeight<Int8Rowwise>& w) {
    const std::int64_t n = w.n_in(), n_out = w.n_out();
    RefOut r{std::vector<float>(static_cast<std::size_t>(T * n_out)), std::vector<double>(static_cast<std::size_t>(T * n_out))};
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t o = 0; o < n_out; ++o) {
            double s = 0, m = 0;
            for (std::int64_t k = 0; k < n; ++k) {
                s += static_cast<double>(x[t * n + k]) * w.row(o)[k];
                m += std::fabs(static_cast<double>(x[t * n + k]) * w.row(o)[k]);
            }
            r.y[static_cast<std::size_t>(t * n_out + o)] = static_cast<float>(s * w.scales()[o]);
            r.mag[static_cast<std::size_t>(t * n_out + o)] = m * w.scales()[o];
        }
    return r;
}

/// q8_0 x q8_0 (activation blocks with f32 scales), f32 accumulation in block order.
inline RefOut ref_q8_0(const float* x, std::int64_t T, const QuantizedWeight<Q8_0>& w) {
    const std::int64_t n = w.n_in(), n_out = w.n_out(), nb = n / 32;
    RefOut r{std::vector<float>(static_cast<std::size_t>(T * n_out)), std::vector<double>(static_cast<std::size_t>(T * n_out))};
    std::vector<std::int8_t> q(static_cast<std::size_t>(n));
    std::vector<float> dx(static_cast<std::size_t>(nb));
    for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t b = 0; b < nb; ++b) dx[static_cast<std::size_t>(b)] = quantize_row_int8(x + t * n + 32 * b, 32, q.data() + 32 * b);
        for (std::int64_t o = 0; o < n_out; ++o) {
            float s = 0.0f;
            double m = 0;
            for (std::int64_t b = 0; b < nb; ++b) {
                const BlockQ8_0 blk = w.block(o, b);
                std::int32_t dot = 0, ad = 0;
                for (int i = 0; i < 32; ++i) {
                    const std::int32_t p = mul_i8(q[static_cast<std::size_t>(32 * b + i)], blk.qs[i]);
                    dot += p;
                    ad += std::abs(p);
                }
                const float d = f16_to_f32(blk.d) * dx[static_cast<std::size_t>(b)];
                s += d * static_cast<float>(dot);
                m += std::fabs(static_cast<double>(d)) * ad;
            }
            r.y[static_cast<std::size_t>(t * n_out + o)] = s;
            r.mag[static_cast<std::size_t>(t * n_out + o)] = m;
        }
    }
    return r;
}

/// Weight-only q8_0 in double.
inline RefOut ref_q8_0_weight_only(const float* x, std::int64_t T, const QuantizedWeight<Q8_0>& w) {
    const std::int64_t n = w.n_in(), n_out = w.n_out(), nb = n / 32;
    RefOut r{std::vector<float>(static_cast<std::size_t>(T * n_out)), std::vector<double>(static_cast<std::size_t>(T * n_out))};
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t o = 0; o < n_out; ++o) {
            double s = 0, m = 0;
            for (std::int64_t b = 0; b < nb; ++b) {
                const BlockQ8_0 blk = w.block(o, b);
                const double d = f16_to_f32(blk.d);
                for (int i = 0; i < 32; ++i) {
                    const double p = static_cast<double>(x[t * n + 32 * b + i]) * blk.qs[i] * d;
                    s += p;
                    m += std::fabs(p);
                }
            }
            r.y[static_cast<std::size_t>(t * n_out + o)] = static_cast<float>(s);
            r.mag[static_cast<std::size_t>(t * n_out + o)] = m;
        }
    return r;
}

}  // namespace limarp::test
