// Tests for limarp/backend/cpu/qgemm_backward.hpp: the input gradient dx = dy · W of a quantized
// linear map (Int8Rowwise and Q8_0) against a double-precision product with the dequantized
// weights, on shapes that cross the 256-row / 256-column blocks and are not multiples of the
// SIMD widths, with 1 and 2 threads, overwrite and accumulate.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "limarp/backend/cpu/qgemm_backward.hpp"
#include "limarp/layers/concepts.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "quant/reference.hpp"

using namespace limarp;

static_assert(TrainableLinear<QuantizedLinear<Int8Rowwise, Cpu<>>>);
static_assert(TrainableLinear<QuantizedLinear<Q8_0, Cpu<>>>);

namespace {

Weight random_weight(std::int64_t n_out, std::int64_t n_in, std::uint32_t seed) {
    Tensor<float> t({n_out, n_in});
    const auto v = test::random_floats(static_cast<std::size_t>(n_out * n_in), seed, -0.5f, 0.5f);
    std::copy(v.begin(), v.end(), t.data());
    for (std::int64_t o = 0; o < n_out; ++o)  // row scales over two orders of magnitude
        for (std::int64_t k = 0; k < n_in; ++k) t[o * n_in + k] *= 0.05f + static_cast<float>(o % 7);
    return Weight::owned(std::move(t), "test.weight");
}

/// Checks dx (computed with `accumulate` over dx0) against dx0 + dy · Wdq in double; returns the
/// worst |err| / (sum of |terms|).
double check_dx(const std::vector<float>& dx, const std::vector<float>& dx0, bool accumulate, const std::vector<float>& dy,
                const Tensor<float>& wdq, std::int64_t T, const std::string& what) {
    const std::int64_t n_out = wdq.dim(0), n_in = wdq.dim(1);
    double worst = 0;
    std::int64_t bad = 0;
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t i = 0; i < n_in; ++i) {
            double ref = accumulate ? dx0[static_cast<std::size_t>(t * n_in + i)] : 0.0, mag = std::fabs(ref);
            for (std::int64_t o = 0; o < n_out; ++o) {
                const double p = static_cast<double>(dy[static_cast<std::size_t>(t * n_out + o)]) * wdq[o * n_in + i];
                ref += p;
                mag += std::fabs(p);
            }
            const double err = std::fabs(dx[static_cast<std::size_t>(t * n_in + i)] - ref) / (mag + 1e-30);
            worst = std::max(worst, err);
            if (!(err <= 1e-5)) ++bad;
        }
    BOOST_CHECK_MESSAGE(bad == 0, what << ": " << bad << " values off, worst rel " << worst);
    return worst;
}

template <class Scheme>
void run_case(std::int64_t n_out, std::int64_t n_in, std::uint32_t seed) {
    ThreadPool p1(1), p2(2);
    const auto w = QuantizedWeight<Scheme>::quantize(random_weight(n_out, n_in, seed), &p2);
    const Tensor<float> wdq = w.dequantize();
    for (std::int64_t T : {1, 5, 40}) {
        const auto dy = test::random_floats(static_cast<std::size_t>(T * n_out), seed + 7u * static_cast<std::uint32_t>(T));
        const auto dx0 = test::random_floats(static_cast<std::size_t>(T * n_in), seed + 11u);
        for (ThreadPool* p : {&p1, &p2})
            for (bool acc : {false, true}) {
                std::vector<float> dx = dx0;
                ops::qmatmul_w(Cpu<>{}, dx.data(), dy.data(), w, T, acc, p);
                check_dx(dx, dx0, acc, dy, wdq, T,
                         std::string(Scheme::name) + " " + std::to_string(n_out) + "x" + std::to_string(n_in) + " T " +
                             std::to_string(T) + " threads " + std::to_string(p->size()) + (acc ? " accumulate" : ""));
            }
    }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(qgemm_backward)

BOOST_AUTO_TEST_CASE(int8_rowwise_input_grad_matches_dequantized_product) {
    for (auto [n_out, n_in] : {std::pair<std::int64_t, std::int64_t>{1, 1}, {5, 37}, {300, 301}, {70, 520}})
        run_case<Int8Rowwise>(n_out, n_in, 101u + static_cast<std::uint32_t>(n_in));
}

BOOST_AUTO_TEST_CASE(q8_0_input_grad_matches_dequantized_product) {
    for (auto [n_out, n_in] : {std::pair<std::int64_t, std::int64_t>{1, 32}, {5, 96}, {300, 288}, {70, 544}})
        run_case<Q8_0>(n_out, n_in, 201u + static_cast<std::uint32_t>(n_in));
}

BOOST_AUTO_TEST_CASE(layer_backward_is_the_kernel) {
    ThreadPool& p = ThreadPool::global();
    QuantizedLinear<Int8Rowwise, Cpu<>> l(QuantizedWeight<Int8Rowwise>::quantize(random_weight(33, 64, 5u), &p));
    const std::int64_t T = 3;
    const auto dy = test::random_floats(static_cast<std::size_t>(T * 33), 9u);
    std::vector<float> a(static_cast<std::size_t>(T * 64), 7.f), b(a.size());
    l.backward(a.data(), dy.data(), nullptr, T);  // overwrites
    ops::qmatmul_w(Cpu<>{}, b.data(), dy.data(), l.weight(), T);
    for (std::size_t i = 0; i < a.size(); ++i) BOOST_CHECK_EQUAL(a[i], b[i]);
}

BOOST_AUTO_TEST_SUITE_END()
