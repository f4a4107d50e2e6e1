// Tests for limarp/backend/cpu/norm.hpp: rms_norm against a double reference (f32/bf16 weights,
// in place and out of place, 1 and 2 threads).
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "limarp/backend/cpu/norm.hpp"
#include "ops/ops_test_util.hpp"
#include "ops/tolerance.hpp"

using namespace limarp;
using limarp::test::CpuBackends;

namespace {
template <class Bk, class W>
void check_rms_norm(std::int64_t T, std::int64_t d, bool in_place, ThreadPool* pool) {
    const float eps = 1e-5f;
    const auto x = test::random_floats(T * d, -3.0f, 3.0f);
    const auto w = test::random_weights<W>(d, 0.5f, 1.5f);
    std::vector<float> y(x.size(), -7.0f), xx = x;
    float* out = in_place ? xx.data() : y.data();
    ops::rms_norm(Bk{}, out, xx.data(), w.w.data(), T, d, eps, pool);
    double worst = 0;
    for (std::int64_t t = 0; t < T; ++t) {
        double ss = 0;
        for (std::int64_t i = 0; i < d; ++i) ss += static_cast<double>(x[t * d + i]) * x[t * d + i];
        const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
        for (std::int64_t i = 0; i < d; ++i) {
            const double ref = static_cast<double>(w.f32[i]) * x[t * d + i] * inv;
            worst = std::max(worst, std::fabs(out[t * d + i] - ref) / (std::fabs(ref) + test::tol::kNormAbs));
        }
    }
    BOOST_TEST_CONTEXT("T=" << T << " d=" << d << " in_place=" << in_place << " threads=" << pool->size()) {
        BOOST_TEST(worst <= test::tol::kNorm);
    }
}
}  // namespace

BOOST_AUTO_TEST_SUITE(cpu_norm)

BOOST_AUTO_TEST_CASE_TEMPLATE(rms_norm_matches_double_reference, Bk, CpuBackends) {
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t T : {1, 3, 17, 64})
            for (std::int64_t d : {1, 7, 33, 1000, 4096})
                for (bool in_place : {false, true}) {
                    check_rms_norm<Bk, float>(T, d, in_place, pool);
                    check_rms_norm<Bk, bf16>(T, d, !in_place, pool);
                }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(rms_norm_follows_hf_operation_order, Bk, CpuBackends) {
    // HF: weight * (x * rsqrt(mean(x^2) + eps)) with every step rounded to f32. With d = 4 and
    // exact powers of two the mean is exact, so the result must be bit-identical to that order.
    const std::vector<float> x = {0.5f, -1.25f, 3.0f, 0.75f}, w = {1.1f, 0.9f, -0.3f, 2.0f};
    std::vector<float> y(4);
    const float eps = 1e-5f;
    ops::rms_norm(Bk{}, y.data(), x.data(), w.data(), 1, 4, eps);
    float ss = 0;
    for (float v : x) ss += v * v;
    const float inv = 1.0f / std::sqrt(ss / 4.0f + eps);
    for (int i = 0; i < 4; ++i) BOOST_TEST(y[i] == w[i] * (x[i] * inv));
}

BOOST_AUTO_TEST_SUITE_END()
