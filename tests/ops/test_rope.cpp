// Tests for limarp/backend/cpu/rope.hpp: rope_rotate_half against a double evaluation (with HF's
// f32 angle), bit-exactness against a scalar emulation of PyTorch's f32 operation order, and the
// RopeTable overload.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "limarp/backend/cpu/rope.hpp"
#include "ops/ops_test_util.hpp"
#include "ops/tolerance.hpp"

using namespace limarp;
using limarp::test::CpuBackends;

namespace {
// PyTorch (transformers' default RoPE): inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim)).
float torch_inv_freq(std::int64_t i, std::int64_t dim, double base) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(dim);
    return 1.0f / static_cast<float>(std::pow(static_cast<double>(static_cast<float>(base)), static_cast<double>(e)));
}

std::vector<std::int64_t> random_positions(std::int64_t T, std::int64_t max_pos) {
    std::uniform_int_distribution<std::int64_t> d(0, max_pos);
    std::vector<std::int64_t> p(static_cast<std::size_t>(T));
    for (auto& v : p) v = d(test::rng());
    return p;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(cpu_rope)

BOOST_AUTO_TEST_CASE_TEMPLATE(rope_matches_reference_and_torch_operation_order, Bk, CpuBackends) {
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t T : {1, 3, 17})
            for (std::int64_t n_heads : {1, 4, 8})
                for (std::int64_t hd : {2, 8, 14, 64, 128})
                    for (double theta : {10000.0, 1e6}) {
                        const auto x0 = test::random_floats(T * n_heads * hd, -4.0f, 4.0f);
                        const auto pos = random_positions(T, 40000);
                        std::vector<float> x = x0;
                        ops::rope_rotate_half(Bk{}, x.data(), pos.data(), T, n_heads, hd, theta, pool);
                        const std::int64_t half = hd / 2;
                        double worst = 0;
                        bool bit_exact = true;
                        for (std::int64_t t = 0; t < T; ++t)
                            for (std::int64_t h = 0; h < n_heads; ++h)
                                for (std::int64_t i = 0; i < half; ++i) {
                                    const std::int64_t a = (t * n_heads + h) * hd + i, b = a + half;
                                    const float angle = static_cast<float>(pos[t]) * torch_inv_freq(i, hd, theta);
                                    const double c = std::cos(static_cast<double>(angle));
                                    const double s = std::sin(static_cast<double>(angle));
                                    const double r1 = x0[a] * c - x0[b] * s, r2 = x0[b] * c + x0[a] * s;
                                    const double mag = std::fabs(x0[a]) + std::fabs(x0[b]);
                                    worst = std::max({worst, std::fabs(x[a] - r1) / mag, std::fabs(x[b] - r2) / mag});
                                    // torch: q * cos + rotate_half(q) * sin, each product rounded.
                                    const float cf = static_cast<float>(c), sf = static_cast<float>(s);
                                    const volatile float p1 = x0[a] * cf, p2 = x0[b] * sf, p3 = x0[b] * cf, p4 = x0[a] * sf;
                                    const float e1 = p1 - p2, e2 = p3 + p4;
                                    bit_exact = bit_exact && std::bit_cast<std::uint32_t>(e1) == std::bit_cast<std::uint32_t>(x[a]) &&
                                                std::bit_cast<std::uint32_t>(e2) == std::bit_cast<std::uint32_t>(x[b]);
                                }
                        BOOST_TEST_CONTEXT("T=" << T << " heads=" << n_heads << " hd=" << hd << " theta=" << theta
                                                << " threads=" << pool->size()) {
                            BOOST_TEST(worst <= test::tol::kRope);
                            BOOST_TEST(bit_exact);
                        }
                    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(rope_table_equals_on_the_fly, Bk, CpuBackends) {
    const std::int64_t T = 33, n_heads = 3, hd = 128, max_pos = 5000;
    const ops::RopeTable table(hd, 10000.0, max_pos);
    BOOST_TEST(table.n_positions() == max_pos);
    BOOST_TEST(table.head_dim() == hd);
    for (ThreadPool* pool : test::test_pools()) {
        const auto x0 = test::random_floats(T * n_heads * hd);
        auto pos = random_positions(T, max_pos - 1);
        pos[0] = 0;
        pos[1] = max_pos - 1;
        std::vector<float> a = x0, b = x0;
        ops::rope_rotate_half(Bk{}, a.data(), pos.data(), T, n_heads, hd, 10000.0, pool);
        ops::rope_rotate_half(Bk{}, b.data(), pos.data(), T, n_heads, hd, table, pool);
        BOOST_TEST(a == b);
        // Position 0 is the identity.
        for (std::int64_t i = 0; i < n_heads * hd; ++i) BOOST_TEST(a[i] == x0[i]);
    }
}

BOOST_AUTO_TEST_CASE(rope_inv_freq_values) {
    // inv_freq[0] = 1 exactly; the last pair of head_dim 128 is 10000^(-126/128).
    BOOST_TEST(ops::rope_inv_freq(0, 128, 10000.0) == 1.0f);
    const double last = std::pow(10000.0, -126.0 / 128.0);
    BOOST_TEST(std::fabs(ops::rope_inv_freq(63, 128, 10000.0) - last) <= 2.5e-7 * last);
    BOOST_TEST(ops::rope_inv_freq(1, 128, 10000.0) == torch_inv_freq(1, 128, 10000.0));
}

BOOST_AUTO_TEST_SUITE_END()
