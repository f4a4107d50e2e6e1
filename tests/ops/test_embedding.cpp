// Tests for limarp/backend/cpu/embedding.hpp: exact gather of f32 and bf16 rows.
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "limarp/backend/cpu/embedding.hpp"
#include "ops/ops_test_util.hpp"

using namespace limarp;
using limarp::test::CpuBackends;

namespace {
template <class Bk, class W>
void check_gather(std::int64_t T, std::int64_t d, std::int64_t vocab, ThreadPool* pool) {
    const auto table = test::random_weights<W>(vocab * d);
    std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(vocab - 1));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T));
    for (auto& id : ids) id = pick(test::rng());
    std::vector<float> y(static_cast<std::size_t>(T * d), -9.0f);
    ops::embedding_gather(Bk{}, y.data(), table.w.data(), ids.data(), T, d, pool);
    bool ok = true;
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t i = 0; i < d; ++i) ok = ok && y[t * d + i] == table.f32[ids[t] * d + i];
    BOOST_TEST(ok, "T=" << T << " d=" << d << " threads=" << pool->size());
}
}  // namespace

BOOST_AUTO_TEST_SUITE(cpu_embedding)

BOOST_AUTO_TEST_CASE_TEMPLATE(embedding_gather_copies_rows_exactly, Bk, CpuBackends) {
    for (ThreadPool* pool : test::test_pools())
        for (std::int64_t T : {1, 3, 17, 300})
            for (std::int64_t d : {1, 7, 33, 256}) {
                check_gather<Bk, float>(T, d, 50, pool);
                check_gather<Bk, bf16>(T, d, 50, pool);
            }
}

BOOST_AUTO_TEST_SUITE_END()
