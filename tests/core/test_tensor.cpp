// Tests for limarp/core/tensor.hpp and thread_pool.hpp.
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "limarp/backend/memory.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/core/thread_pool.hpp"

using namespace limarp;

BOOST_AUTO_TEST_SUITE(tensor)

BOOST_AUTO_TEST_CASE(owning_tensor_is_aligned_and_zeroed) {
    for (std::int64_t n : {1, 3, 17, 1000}) {
        Tensor<float> t({n, 3});
        BOOST_CHECK_EQUAL(reinterpret_cast<std::uintptr_t>(t.data()) % 64, 0u);
        for (std::int64_t i = 0; i < t.size(); ++i) BOOST_REQUIRE_EQUAL(t[i], 0.f);
    }
    Tensor<float> a({2, 3}, 1.5f);
    Tensor<float> b = a;
    b[0] = 2;
    BOOST_CHECK_EQUAL(a[0], 1.5f);
    BOOST_CHECK_THROW(a.reshape({4, 2}), ShapeError);
    a.reshape({3, 2});
    BOOST_CHECK_EQUAL(a.dim(0), 3);
}

BOOST_AUTO_TEST_CASE(tensor_without_storage_has_no_elements) {
    // A default-constructed or moved-from tensor holds nothing: size 0, its copy empty too, and
    // a backend buffer grown from it to one element gets real storage (before, a fresh buffer
    // reported size 1, so ensure(b, 1) returned a null pointer: the [1, 1] A product of a rank-1
    // LoRA at decode would have been written through it).
    Tensor<float> none;
    BOOST_CHECK_EQUAL(none.size(), 0);
    BOOST_CHECK(none.empty());
    const Tensor<float> copy(none);
    BOOST_CHECK(copy.empty() && copy.data() == nullptr);
    Tensor<float> assigned({3});
    assigned = none;
    BOOST_CHECK(assigned.empty());
    float* one = BackendMemory<Cpu<>>::ensure(none, 1);
    BOOST_REQUIRE(one != nullptr);
    one[0] = 2.0f;
    BOOST_CHECK_EQUAL(none.size(), 1);
    Tensor<float> big({1 << 19});  // 2 MiB: mapped pages
    big[(1 << 19) - 1] = 1.0f;
    Tensor<float> moved(std::move(big));
    BOOST_CHECK_EQUAL(big.size(), 0);  // NOLINT(bugprone-use-after-move): the moved-from state is the point
    BOOST_CHECK_EQUAL(moved[(1 << 19) - 1], 1.0f);
    const Tensor<float> big_copy(moved);
    BOOST_CHECK_EQUAL(big_copy[(1 << 19) - 1], 1.0f);
    BOOST_CHECK_EQUAL(big_copy[0], 0.0f);
}

BOOST_AUTO_TEST_CASE(views_and_strides) {
    Tensor<int> t({2, 3, 4});
    for (int i = 0; i < 24; ++i) t[i] = i;
    auto v = t.view();
    BOOST_CHECK(v.is_contiguous());
    BOOST_CHECK_EQUAL(v(1, 2, 3), 23);
    BOOST_CHECK_EQUAL(v(0, 1, 2), 6);
    // transposed view of the last two dims
    TensorView<int> tv(t.data(), {2, 4, 3}, {12, 1, 4});
    BOOST_CHECK(!tv.is_contiguous());
    BOOST_CHECK_EQUAL(tv(1, 3, 2), v(1, 2, 3));
    BOOST_CHECK_THROW(v.expect_shape({2, 3, 5}, "t"), ShapeError);
    BOOST_CHECK_THROW(TensorView<int>(t.data(), {2, 3}, {1}), ShapeError);
}

BOOST_AUTO_TEST_CASE(thread_pool_covers_range_once) {
    for (unsigned threads : {1u, 2u, 3u}) {
        ThreadPool pool(threads);
        for (std::int64_t n : {0, 1, 5, 1000, 1001}) {
            std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
            pool.parallel_for(0, n, [&](std::int64_t b, std::int64_t e, unsigned) {
                for (auto i = b; i < e; ++i) hits[static_cast<std::size_t>(i)]++;
            }, 7);
            for (auto& h : hits) BOOST_REQUIRE_EQUAL(h.load(), 1);
        }
    }
}

// Back-to-back calls with the workers polling (the default) and sleeping (spin 0) between jobs, and
// calls after a pause longer than the polling time (the workers have gone to sleep): every call has
// covered its range exactly once when parallel_for returns; ranges of 2 leave the third thread of a
// 3-thread pool without a part.
BOOST_AUTO_TEST_CASE(thread_pool_polls_then_sleeps) {
    for (const long spin_us : {0L, 200L, 1000L})
        for (unsigned threads : {2u, 3u}) {
            ThreadPool pool(threads, std::chrono::microseconds(spin_us));
            BOOST_CHECK_EQUAL(pool.spin().count(), spin_us);
            std::vector<std::atomic<int>> hits(64);
            for (int call = 0; call < 600; ++call) {
                const std::int64_t n = call % 3 == 0 ? 2 : 64;
                pool.parallel_for(0, n, [&](std::int64_t b, std::int64_t e, unsigned) {
                    for (auto i = b; i < e; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
                });
                for (std::int64_t i = 0; i < n; ++i) {  // this call's elements, counted once each, now
                    const int h = hits[static_cast<std::size_t>(i)].exchange(0);
                    if (h != 1) BOOST_FAIL("call " << call << ": element " << i << " counted " << h << " times");
                }
                if (call % 200 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
        }
    BOOST_CHECK_EQUAL(ThreadPool(2, std::chrono::microseconds(-5)).spin().count(), 0);
}

BOOST_AUTO_TEST_CASE(thread_pool_rethrows_and_survives) {
    ThreadPool pool(2);
    BOOST_CHECK_THROW(pool.parallel_for(0, 100, [](std::int64_t b, std::int64_t, unsigned) {
        if (b > 0) throw std::runtime_error("boom");
    }), std::runtime_error);
    std::atomic<int> sum{0};
    pool.parallel_for(0, 10, [&](std::int64_t b, std::int64_t e, unsigned) {
        // nested calls run serially instead of deadlocking
        pool.parallel_for(b, e, [&](std::int64_t b2, std::int64_t e2, unsigned) { sum += int(e2 - b2); });
    });
    BOOST_CHECK_EQUAL(sum.load(), 10);
}

BOOST_AUTO_TEST_SUITE_END()
