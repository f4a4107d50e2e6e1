// Tests for limarp/backend/cpu/activation.hpp: swiglu against a double reference (aliasing,
// saturated gates) and add_inplace.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "limarp/backend/cpu/activation.hpp"
#include "ops/ops_test_util.hpp"
#include "ops/tolerance.hpp"

using namespace limarp;
using limarp::test::CpuBackends;

namespace {
double silu_ref(double g) { return g / (1.0 + std::exp(-g)); }
}  // namespace

BOOST_AUTO_TEST_SUITE(cpu_activation)

BOOST_AUTO_TEST_CASE_TEMPLATE(swiglu_matches_double_reference, Bk, CpuBackends) {
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t n : {1, 7, 33, 1000, 100003})
            for (int alias = 0; alias < 3; ++alias) {
                auto gate = test::random_floats(n, -12.0f, 12.0f);
                const auto up = test::random_floats(n, -2.0f, 2.0f);
                if (n > 8) {  // saturated and extreme gates
                    gate[0] = -100.0f;
                    gate[1] = 100.0f;
                    gate[2] = -87.0f;
                    gate[3] = 0.0f;
                    gate[4] = 1e-20f;
                    gate[5] = -30.0f;
                }
                std::vector<float> g = gate, u = up, h(static_cast<std::size_t>(n), 5.0f);
                float* out = alias == 0 ? h.data() : alias == 1 ? g.data() : u.data();
                ops::swiglu(Bk{}, out, g.data(), u.data(), n, pool);
                double worst = 0;
                for (std::int64_t i = 0; i < n; ++i) {
                    const double ref = silu_ref(gate[i]) * up[i];
                    worst = std::max(worst, std::fabs(out[i] - ref) / (std::fabs(ref) + test::tol::kSwigluAbs));
                }
                BOOST_TEST_CONTEXT("n=" << n << " alias=" << alias << " threads=" << pool->size()) {
                    BOOST_TEST(worst <= test::tol::kSwiglu);
                }
            }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(add_inplace_is_exact, Bk, CpuBackends) {
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t n : {1, 7, 33, 1000, 300001}) {
            const auto y0 = test::random_floats(n), x = test::random_floats(n);
            std::vector<float> y = y0;
            ops::add_inplace(Bk{}, y.data(), x.data(), n, pool);
            bool ok = true;
            for (std::int64_t i = 0; i < n; ++i) ok = ok && y[i] == y0[i] + x[i];
            BOOST_TEST(ok, "n=" << n << " threads=" << pool->size());
        }
}

BOOST_AUTO_TEST_SUITE_END()
