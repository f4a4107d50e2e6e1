// Tests for limarp/backend/cpu/loss.hpp: logsumexp_row and cross_entropy_rows against double
// references, including large offsets (stability) and a full Mistral vocabulary.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "limarp/backend/cpu/loss.hpp"
#include "ops/ops_test_util.hpp"
#include "ops/tolerance.hpp"

using namespace limarp;
using limarp::test::CpuBackends;

namespace {
double lse_ref(const float* x, std::int64_t n) {
    double m = x[0];
    for (std::int64_t i = 1; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
    return m + std::log(s);
}
}  // namespace

BOOST_AUTO_TEST_SUITE(cpu_loss)

BOOST_AUTO_TEST_CASE_TEMPLATE(cross_entropy_matches_double_reference, Bk, CpuBackends) {
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t T : {1, 3, 17})
            for (std::int64_t vocab : {1, 7, 33, 1000, 32002})
                for (float offset : {0.0f, 1000.0f, -500.0f}) {
                    auto logits = test::random_floats(T * vocab, offset - 15.0f, offset + 15.0f);
                    std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(vocab - 1));
                    std::vector<std::int32_t> targets(static_cast<std::size_t>(T));
                    for (auto& t : targets) t = pick(test::rng());
                    const double got = ops::cross_entropy_rows(Bk{}, logits.data(), targets.data(), T, vocab, pool);
                    double ref = 0;
                    for (std::int64_t t = 0; t < T; ++t)
                        ref += lse_ref(logits.data() + t * vocab, vocab) - logits[t * vocab + targets[t]];
                    BOOST_TEST_CONTEXT("T=" << T << " vocab=" << vocab << " offset=" << offset
                                            << " threads=" << pool->size()) {
                        BOOST_TEST(std::fabs(got - ref) <= test::tol::kLoss * (std::fabs(ref) + static_cast<double>(T)));
                        const double lse = ops::logsumexp_row(Bk{}, logits.data(), vocab);
                        const double lref = lse_ref(logits.data(), vocab);
                        BOOST_TEST(std::fabs(lse - lref) <= test::tol::kLoss * (std::fabs(lref) + 1.0));
                    }
                }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(cross_entropy_of_uniform_logits_is_log_vocab, Bk, CpuBackends) {
    const std::int64_t vocab = 32002;
    std::vector<float> logits(2 * vocab, 3.25f);
    std::vector<std::int32_t> targets = {5, 32001};
    const double got = ops::cross_entropy_rows(Bk{}, logits.data(), targets.data(), 2, vocab);
    BOOST_TEST(std::fabs(got - 2 * std::log(double(vocab))) <= 1e-9);
    BOOST_TEST(ops::cross_entropy_rows(Bk{}, logits.data(), targets.data(), 0, vocab) == 0.0);
}

BOOST_AUTO_TEST_SUITE_END()
