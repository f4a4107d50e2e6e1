// Tests for limarp/backend/cpu/qgemm.hpp: every quantized kernel (GEMV and packed GEMM, int8 x
// int8 with and without outlier columns, q8_0 x q8_0, weight-only) against the scalar references
// of reference.hpp, on shapes that are not multiples of the SIMD widths, with 1 and 2 threads,
// for every kernel family this build has (VNNI, AVX2, scalar).
#include <boost/mpl/list.hpp>
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "limarp/backend/cpu/qgemm.hpp"
#include "quant/reference.hpp"

using namespace limarp;

namespace {

// Arch tags whose kernel families are compiled in this build.
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
using Archs = boost::mpl::list<xsimd::default_arch, xsimd::fma3<xsimd::avx2>, xsimd::sse4_2>;
#elif defined(__AVX2__)
using Archs = boost::mpl::list<xsimd::default_arch, xsimd::sse4_2>;
#else
using Archs = boost::mpl::list<xsimd::default_arch>;
#endif

template <class A>
std::string isa_name() {
    switch (ops::qdetail::qisa<A>()) {
        case ops::qdetail::QIsa::Avx512Vnni: return "avx512-vnni";
        case ops::qdetail::QIsa::Avx2: return "avx2";
        default: return "scalar";
    }
}

Weight random_weight(std::int64_t n_out, std::int64_t n_in, std::uint32_t seed) {
    Tensor<float> t({n_out, n_in});
    const auto v = test::random_floats(static_cast<std::size_t>(n_out * n_in), seed, -0.5f, 0.5f);
    std::copy(v.begin(), v.end(), t.data());
    // vary the row scales over two orders of magnitude
    for (std::int64_t o = 0; o < n_out; ++o)
        for (std::int64_t k = 0; k < n_in; ++k) t[o * n_in + k] *= 0.05f + static_cast<float>(o % 7);
    return Weight::owned(std::move(t), "test.weight");
}

// Checks |y - ref| <= tol * mag + tiny for every element; returns the worst ratio.
double check(const std::vector<float>& y, const test::RefOut& ref, double tol, const std::string& what) {
    double worst = 0;
    std::size_t bad = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
        const double err = std::fabs(static_cast<double>(y[i]) - ref.y[i]);
        const double lim = tol * ref.mag[i] + 1e-30;
        worst = std::max(worst, err / (ref.mag[i] + 1e-30));
        if (!(err <= lim)) ++bad;
    }
    BOOST_CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << y.size() << " values off, worst rel " << worst);
    return worst;
}

const std::int64_t kTs[] = {1, 2, 5, 13, 33};
const std::int64_t kOuts[] = {1, 5, 33, 70};

}  // namespace

BOOST_AUTO_TEST_SUITE(qgemm)

BOOST_AUTO_TEST_CASE_TEMPLATE(int8_x_int8_matches_reference, A, Archs) {
    ThreadPool p1(1), p2(2);
    for (std::int64_t n_in : {1, 7, 33, 64, 1000, 2501}) {
        for (std::int64_t n_out : kOuts) {
            const auto w = QuantizedWeight<Int8Rowwise>::quantize(random_weight(n_out, n_in, 11u + n_in + n_out), &p1);
            for (std::int64_t T : kTs) {
                auto x = test::random_floats(static_cast<std::size_t>(T * n_in), 7u + T, -2.0f, 2.0f);
                // a few outlier columns (|x| >= 6) for the thr = 6 runs
                x[static_cast<std::size_t>((T - 1) * n_in + n_in / 3)] = 9.0f;
                x[static_cast<std::size_t>(n_in - 1)] = -6.5f;
                for (float thr : {0.0f, 6.0f}) {
                    const auto ref = test::ref_int8(x.data(), T, w, thr);
                    for (ThreadPool* p : {&p1, &p2}) {
                        std::vector<float> y(static_cast<std::size_t>(T * n_out), -3.0f);
                        ops::qmatmul_wt(Cpu<A>{}, y.data(), x.data(), w, T, false, QuantOptions::int8(thr), p);
                        check(y, ref, 2e-6,
                              isa_name<A>() + " int8 n_in " + std::to_string(n_in) + " n_out " + std::to_string(n_out) +
                                  " T " + std::to_string(T) + " threads " + std::to_string(p->size()));
                    }
                }
            }
        }
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(int8_outlier_columns, A, Archs) {
    ThreadPool p2(2);
    const std::int64_t n_in = 1200, n_out = 37;  // T * n_in large enough to quantize x in parallel
    const auto w = QuantizedWeight<Int8Rowwise>::quantize(random_weight(n_out, n_in, 5u), &p2);
    const Tensor<float> wf = w.dequantize();
    for (std::int64_t T : {1, 3, 9, 40}) {
        auto x = test::random_floats(static_cast<std::size_t>(T * n_in), 99u + T, -1.0f, 1.0f);
        // plant outliers: column 3 in one row, column 150 in every row, column 299 exactly at 6.0
        x[static_cast<std::size_t>((T / 2) * n_in + 3)] = -40.0f;
        for (std::int64_t t = 0; t < T; ++t) x[static_cast<std::size_t>(t * n_in + 150)] = 7.0f + static_cast<float>(t);
        x[static_cast<std::size_t>(299)] = 6.0f;
        const auto cols = test::ref_outlier_columns(x.data(), T, n_in, 6.0f);
        BOOST_REQUIRE_EQUAL(cols.size(), 3u);
        const auto ref = test::ref_int8(x.data(), T, w, 6.0f);
        std::vector<float> y(static_cast<std::size_t>(T * n_out));
        ops::qmatmul_wt(Cpu<A>{}, y.data(), x.data(), w, T, false, QuantOptions::int8(6.0f), &p2);
        check(y, ref, 2e-6, isa_name<A>() + " outliers T " + std::to_string(T));

        // The outlier decomposition must beat plain int8 against the f32 product with the
        // dequantized weights (the outliers would otherwise blow up every row's scale).
        std::vector<float> y0(y.size());
        ops::qmatmul_wt(Cpu<A>{}, y0.data(), x.data(), w, T, false, QuantOptions::int8(0.0f), &p2);
        double e_dec = 0, e_plain = 0;
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t o = 0; o < n_out; ++o) {
                double exact = 0;
                for (std::int64_t k = 0; k < n_in; ++k) exact += static_cast<double>(x[t * n_in + k]) * wf[o * n_in + k];
                e_dec = std::max(e_dec, std::fabs(y[t * n_out + o] - exact));
                e_plain = std::max(e_plain, std::fabs(y0[t * n_out + o] - exact));
            }
        BOOST_TEST_MESSAGE(isa_name<A>() << " T " << T << ": max err with outlier columns " << e_dec << ", without "
                                         << e_plain);
        BOOST_CHECK_LT(e_dec, 0.5 * e_plain);

        // Only outlier columns non-zero: the result is the f32 product with the dequantized columns.
        std::vector<float> xo(x.size(), 0.0f);
        for (auto c : cols)
            for (std::int64_t t = 0; t < T; ++t) xo[t * n_in + c] = x[t * n_in + c];
        ops::qmatmul_wt(Cpu<A>{}, y.data(), xo.data(), w, T, false, QuantOptions::int8(6.0f), &p2);
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t o = 0; o < n_out; ++o) {
                double exact = 0, mag = 0;
                for (auto c : cols) {
                    exact += static_cast<double>(xo[t * n_in + c]) * w.row(o)[c] * w.scales()[o];
                    mag += std::fabs(static_cast<double>(xo[t * n_in + c]) * w.row(o)[c] * w.scales()[o]);
                }
                BOOST_CHECK_SMALL(y[t * n_out + o] - exact, 1e-6 * mag + 1e-30);
            }
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(int8_weight_only_matches_reference, A, Archs) {
    ThreadPool p1(1), p2(2);
    for (std::int64_t n_in : {1, 7, 33, 1000}) {
        for (std::int64_t n_out : kOuts) {
            const auto w = QuantizedWeight<Int8Rowwise>::quantize(random_weight(n_out, n_in, 3u + n_in), &p1);
            for (std::int64_t T : kTs) {
                const auto x = test::random_floats(static_cast<std::size_t>(T * n_in), 17u + T);
                const auto ref = test::ref_int8_weight_only(x.data(), T, w);
                for (ThreadPool* p : {&p1, &p2}) {
                    std::vector<float> y(static_cast<std::size_t>(T * n_out), 1.0f);
                    ops::qmatmul_wt(Cpu<A>{}, y.data(), x.data(), w, T, false, QuantOptions::weight_only(), p);
                    check(y, ref, 1e-5,
                          isa_name<A>() + " int8 weight-only n_in " + std::to_string(n_in) + " n_out " +
                              std::to_string(n_out) + " T " + std::to_string(T));
                }
            }
        }
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(q8_0_x_q8_0_matches_reference, A, Archs) {
    ThreadPool p1(1), p2(2);
    for (std::int64_t n_in : {32, 96, 4000}) {
        for (std::int64_t n_out : kOuts) {
            const auto w = QuantizedWeight<Q8_0>::quantize(random_weight(n_out, n_in, 23u + n_in + n_out), &p1);
            for (std::int64_t T : kTs) {
                const auto x = test::random_floats(static_cast<std::size_t>(T * n_in), 31u + T, -3.0f, 3.0f);
                const auto ref = test::ref_q8_0(x.data(), T, w);
                for (ThreadPool* p : {&p1, &p2}) {
                    std::vector<float> y(static_cast<std::size_t>(T * n_out), 2.0f);
                    ops::qmatmul_wt(Cpu<A>{}, y.data(), x.data(), w, T, false, QuantOptions{}, p);
                    check(y, ref, 1e-5,
                          isa_name<A>() + " q8_0 n_in " + std::to_string(n_in) + " n_out " + std::to_string(n_out) +
                              " T " + std::to_string(T) + " threads " + std::to_string(p->size()));
                }
            }
        }
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(q8_0_weight_only_matches_reference, A, Archs) {
    ThreadPool p1(1), p2(2);
    for (std::int64_t n_in : {32, 96, 4000}) {
        for (std::int64_t n_out : kOuts) {
            const auto w = QuantizedWeight<Q8_0>::quantize(random_weight(n_out, n_in, 29u + n_in), &p1);
            for (std::int64_t T : kTs) {
                const auto x = test::random_floats(static_cast<std::size_t>(T * n_in), 37u + T);
                const auto ref = test::ref_q8_0_weight_only(x.data(), T, w);
                for (ThreadPool* p : {&p1, &p2}) {
                    std::vector<float> y(static_cast<std::size_t>(T * n_out), 2.0f);
                    ops::qmatmul_wt(Cpu<A>{}, y.data(), x.data(), w, T, false, QuantOptions::weight_only(), p);
                    check(y, ref, 1e-5,
                          isa_name<A>() + " q8_0 weight-only n_in " + std::to_string(n_in) + " n_out " +
                              std::to_string(n_out) + " T " + std::to_string(T));
                }
            }
        }
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(accumulate_adds_to_y, A, Archs) {
    ThreadPool p2(2);
    const std::int64_t n_in = 160, n_out = 45;
    const auto wi = QuantizedWeight<Int8Rowwise>::quantize(random_weight(n_out, n_in, 41u), &p2);
    const auto wq = QuantizedWeight<Q8_0>::quantize(random_weight(n_out, n_in, 43u), &p2);
    for (std::int64_t T : {1, 3, 20}) {
        const auto x = test::random_floats(static_cast<std::size_t>(T * n_in), 47u + T);
        const auto y0 = test::random_floats(static_cast<std::size_t>(T * n_out), 53u + T);
        for (const QuantOptions& opt : {QuantOptions::int8(6.0f), QuantOptions::weight_only()}) {
            std::vector<float> a(y0.size()), b = y0;
            ops::qmatmul_wt(Cpu<A>{}, a.data(), x.data(), wi, T, false, opt, &p2);
            ops::qmatmul_wt(Cpu<A>{}, b.data(), x.data(), wi, T, true, opt, &p2);
            for (std::size_t i = 0; i < a.size(); ++i) BOOST_CHECK_SMALL(b[i] - (y0[i] + a[i]), 1e-5f);
            ops::qmatmul_wt(Cpu<A>{}, a.data(), x.data(), wq, T, false, opt, &p2);
            b = y0;
            ops::qmatmul_wt(Cpu<A>{}, b.data(), x.data(), wq, T, true, opt, &p2);
            for (std::size_t i = 0; i < a.size(); ++i) BOOST_CHECK_SMALL(b[i] - (y0[i] + a[i]), 1e-5f);
        }
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(lora_term_in_the_gemv_pass_matches_two_passes, A, Archs) {
    // ops::qmatmul_wt_lora (the B rows added by each GEMV thread right after its weight rows)
    // against qmatmul_wt followed by a bf16 matmul_wt accumulating z · Bᵀ: the same dot tiles, so
    // the same values up to f32 rounding (bitwise for one token); T = 5 and 9 take the two-pass
    // fallback of the GEMM path. Odd shapes, ranks 8 and 13, both activation modes, overwrite and
    // accumulate, 1 and 2 threads.
    ThreadPool p1(1), p2(2);
    const std::int64_t n_in = 200, n_out = 37;
    const auto w = QuantizedWeight<Int8Rowwise>::quantize(random_weight(n_out, n_in, 61u), &p1);
    for (std::int64_t r : {8, 13}) {
        const auto bf = test::random_floats(static_cast<std::size_t>(n_out * r), 67u + r, -0.5f, 0.5f);
        std::vector<bf16> b(bf.size());
        for (std::size_t i = 0; i < bf.size(); ++i) b[i] = bf16{f32_to_bf16(bf[i])};
        for (std::int64_t T : {1, 2, 4, 5, 9}) {
            const auto x = test::random_floats(static_cast<std::size_t>(T * n_in), 71u + T, -2.0f, 2.0f);
            const auto z = test::random_floats(static_cast<std::size_t>(T * r), 73u + T, -1.0f, 1.0f);
            const auto y0 = test::random_floats(static_cast<std::size_t>(T * n_out), 79u + T);
            for (const QuantOptions& opt : {QuantOptions::int8(6.0f), QuantOptions::weight_only()})
                for (const bool acc : {false, true})
                    for (ThreadPool* p : {&p1, &p2}) {
                        std::vector<float> want = y0, got = y0;
                        ops::qmatmul_wt(Cpu<A>{}, want.data(), x.data(), w, T, acc, opt, p);
                        ops::matmul_wt(Cpu<A>{}, want.data(), z.data(), b.data(), T, r, n_out, true, p);
                        ops::qmatmul_wt_lora(Cpu<A>{}, got.data(), x.data(), w, T, acc, opt, b.data(), z.data(), r,
                                             p);
                        double worst = 0;
                        for (std::size_t i = 0; i < got.size(); ++i)
                            worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]) /
                                                        (std::fabs(static_cast<double>(want[i])) + 1e-3));
                        BOOST_TEST(worst <= (T == 1 ? 0.0 : 1e-6),
                                   isa_name<A>() << " r " << r << " T " << T << (opt.int8_activations ? " int8" : " f32")
                                                 << (acc ? " accumulate" : "") << " threads " << p->size()
                                                 << ": max relative difference " << worst);
                    }
        }
    }
}

BOOST_AUTO_TEST_CASE(activation_quantizer_matches_scalar_definition) {
    // The SIMD row quantizer must produce the bytes and scale of quantize_row_int8, ties included.
    using namespace ops::qdetail;
    constexpr QIsa I = qisa<xsimd::default_arch>();
    for (std::int64_t n : {1, 15, 16, 17, 31, 32, 33, 100, 1000}) {
        auto x = test::random_floats(static_cast<std::size_t>(n), 61u + n, -5.0f, 5.0f);
        if (n > 4) {  // exact ties: amax 127 makes d = 1, so x = k + 0.5 rounds to even
            x[0] = 127.0f;
            x[1] = 2.5f;
            x[2] = -3.5f;
            x[3] = 0.5f;
        }
        std::vector<std::int8_t> a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
        const float da = quantize_row_int8(x.data(), n, a.data());
        const float db = quantize_row<I>(x.data(), n, b.data());
        BOOST_CHECK_EQUAL(da, db);
        BOOST_CHECK(a == b);
        if (n > 4) {
            BOOST_CHECK_EQUAL(a[1], 2);
            BOOST_CHECK_EQUAL(a[2], -4);
            BOOST_CHECK_EQUAL(a[3], 0);
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
