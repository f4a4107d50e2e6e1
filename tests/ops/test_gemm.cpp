// Tests for limarp/backend/cpu/gemm.hpp: matmul_wt (f32 and bf16 weights, both paths) and matmul
// against double references, with 1 and 2 threads.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "limarp/backend/cpu/gemm.hpp"
#include "ops/ops_test_util.hpp"
#include "ops/tolerance.hpp"

using namespace limarp;
using limarp::test::CpuBackends;

namespace {

// Checks matmul_wt for one shape, element type and pool; inputs in [lo, hi).
template <class Bk, class W>
void check_matmul_wt(std::int64_t T, std::int64_t n_in, std::int64_t n_out, bool accumulate, ThreadPool* pool,
                     float lo = -1.0f, float hi = 1.0f) {
    const auto x = test::random_floats(T * n_in, lo, hi);
    const auto w = test::random_weights<W>(n_out * n_in, lo, hi);
    const auto y0 = test::random_floats(T * n_out);
    std::vector<float> y = y0;
    ops::matmul_wt(Bk{}, y.data(), x.data(), w.w.data(), T, n_in, n_out, accumulate, pool);
    double worst = 0;
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t o = 0; o < n_out; ++o) {
            double ref = 0, mag = 0;
            for (std::int64_t i = 0; i < n_in; ++i) {
                const double p = static_cast<double>(x[t * n_in + i]) * w.f32[o * n_in + i];
                ref += p;
                mag += std::fabs(p);
            }
            if (accumulate) {
                ref += y0[t * n_out + o];
                mag += std::fabs(y0[t * n_out + o]);
            }
            const double err = std::fabs(y[t * n_out + o] - ref) / std::max(mag, 1e-30);
            worst = std::max(worst, err);
        }
    constexpr bool is_bf16 = std::is_same_v<W, bf16>;
    BOOST_TEST_CONTEXT("T=" << T << " n_in=" << n_in << " n_out=" << n_out << " acc=" << accumulate
                            << " threads=" << pool->size() << " bf16=" << is_bf16) {
        BOOST_TEST(worst <= test::tol::kMatmul);
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cpu_gemm)

BOOST_AUTO_TEST_CASE_TEMPLATE(matmul_wt_matches_double_reference, Bk, CpuBackends) {
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t T : {1, 2, 3, 4, 5, 7, 17, 40})
            for (std::int64_t n_in : {1, 7, 33, 300})
                for (std::int64_t n_out : {1, 5, 33, 130}) {
                    const bool acc = (T + n_in + n_out) % 2 == 1;
                    check_matmul_wt<Bk, float>(T, n_in, n_out, acc, pool);
                    check_matmul_wt<Bk, bf16>(T, n_in, n_out, !acc, pool);
                }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(matmul_wt_blocked_shapes, Bk, CpuBackends) {
    // Several input blocks, several output blocks, row tails of every size.
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t T : {6, 13, 25})
            for (bool acc : {false, true}) {
                check_matmul_wt<Bk, float>(T, 1000, 301, acc, pool);
                check_matmul_wt<Bk, bf16>(T, 1000, 301, acc, pool);
            }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(matmul_wt_long_rows_relative_accuracy, Bk, CpuBackends) {
    // n_in = 16384 with all-positive inputs: the error bound is a plain relative error.
    ThreadPool* pool = test::test_pools()[1];
    for (std::int64_t T : {1, 3, 9}) {
        check_matmul_wt<Bk, float>(T, 16384, 24, false, pool, 0.0f, 1.0f);
        check_matmul_wt<Bk, bf16>(T, 16384, 24, false, pool, 0.0f, 1.0f);
        check_matmul_wt<Bk, bf16>(T, 16384, 24, false, pool);
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(matmul_wt_empty_inner_dimension, Bk, CpuBackends) {
    std::vector<float> y(6, 3.0f);
    const float* none = nullptr;
    ops::matmul_wt(Bk{}, y.data(), none, none, 2, 0, 3, true);
    BOOST_TEST(y[0] == 3.0f);
    ops::matmul_wt(Bk{}, y.data(), none, none, 2, 0, 3);
    BOOST_TEST(y[5] == 0.0f);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(matmul_matches_double_reference, Bk, CpuBackends) {
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t T : {1, 3, 17})
            for (std::int64_t k : {1, 7, 33, 200})
                for (std::int64_t n : {1, 9, 150})
                    for (bool acc : {false, true}) {
                        const auto x = test::random_floats(T * k), b = test::random_floats(k * n);
                        const auto y0 = test::random_floats(T * n);
                        std::vector<float> y = y0;
                        ops::matmul(Bk{}, y.data(), x.data(), b.data(), T, k, n, acc, pool);
                        double worst = 0;
                        for (std::int64_t t = 0; t < T; ++t)
                            for (std::int64_t j = 0; j < n; ++j) {
                                double ref = acc ? y0[t * n + j] : 0.0, mag = std::fabs(ref);
                                for (std::int64_t i = 0; i < k; ++i) {
                                    const double p = static_cast<double>(x[t * k + i]) * b[i * n + j];
                                    ref += p;
                                    mag += std::fabs(p);
                                }
                                worst = std::max(worst, std::fabs(y[t * n + j] - ref) / mag);
                            }
                        BOOST_TEST_CONTEXT("T=" << T << " k=" << k << " n=" << n << " acc=" << acc) {
                            BOOST_TEST(worst <= test::tol::kMatmul);
                        }
                    }
}

BOOST_AUTO_TEST_SUITE_END()
