// Uses the installed limarp headers through find_package(limarp): a bf16 round trip over a
// Tensor, summed on the thread pool. Prints "limarp consumer OK" and exits 0 on success.
#if __has_include(<limarp/limarp.hpp>)
#include <limarp/limarp.hpp>
#endif
#include <limarp/backend/backend.hpp>
#include <limarp/core/dtype.hpp>
#include <limarp/core/error.hpp>
#include <limarp/core/tensor.hpp>
#include <limarp/core/thread_pool.hpp>

#include <atomic>
#include <cmath>
#include <cstdio>

int main() {
    static_assert(limarp::Backend<limarp::Cpu<>>, "Cpu<> must satisfy the Backend concept");
    const std::int64_t T = 64, d_model = 96;
    limarp::Tensor<float> x({T, d_model});                                                         // [T, d_model]
    for (std::int64_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(i % 17) - 2.0f;  // exact in bf16

    limarp::ThreadPool pool(2);
    std::atomic<std::int64_t> bad{0};
    pool.parallel_for(0, T, [&](std::int64_t r0, std::int64_t r1, unsigned) {
        for (std::int64_t r = r0; r < r1; ++r)
            for (std::int64_t c = 0; c < d_model; ++c) {
                const float v = x.row(r)[c];
                if (limarp::bf16_to_f32(limarp::f32_to_bf16(v)) != v) ++bad;
            }
    });
    try {
        x.reshape({T + 1, d_model});
        std::puts("limarp consumer FAILED: reshape to a wrong size did not throw");
        return 1;
    } catch (const limarp::ShapeError&) {}
    if (bad != 0) {
        std::printf("limarp consumer FAILED: %lld bf16 round trips differ\n", static_cast<long long>(bad.load()));
        return 1;
    }
    std::printf("limarp consumer OK (%s, %lld elements, %u threads)\n", std::string(limarp::Cpu<>::name).c_str(),
                static_cast<long long>(x.size()), pool.size());
    return 0;
}
