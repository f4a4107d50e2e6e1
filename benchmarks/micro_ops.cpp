// Micro-benchmarks of the CPU kernels (Google Benchmark), with a plain memory-read loop in the same
// binary so that GEMV bandwidth can be reported as a fraction of what the machine can read.
//   bench_micro_ops --benchmark_filter=Gemv     (LIMARP_THREADS sets the thread count)
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/cpu/ops.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"

using namespace limarp;
using Bk = Cpu<>;

LIMARP_CPU_KERNELS_BEGIN  // GCC 12 AVX-512 false positives, see limarp/backend/cpu/detail/simd.hpp

namespace {

std::vector<float> random_floats(std::size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 g(42);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

std::vector<bf16> random_bf16(std::size_t n) {
    std::mt19937 g(7);
    std::uniform_real_distribution<float> d(-0.05f, 0.05f);
    std::vector<bf16> v(n);
    for (auto& x : v) x.bits = f32_to_bf16(d(g));
    return v;
}

// Sum of a 1 GiB buffer with all pool threads: the machine's streaming read bandwidth.
void BM_MemoryRead(benchmark::State& state) {
    const std::size_t n = (std::size_t{1} << 30) / sizeof(float);
    static std::vector<float> buf(n, 1.0f);
    ThreadPool& pool = ThreadPool::global();
    std::vector<double> part(pool.size());
    using B = xsimd::batch<float>;
    constexpr std::int64_t L = B::size;
    for (auto _ : state) {
        pool.parallel_for(
            0, static_cast<std::int64_t>(n),
            [&](std::int64_t b, std::int64_t e, unsigned tid) {
                B s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
                for (std::int64_t i = b; i < e; i += 4 * L) {
                    s0 += B::load_aligned(buf.data() + i);
                    s1 += B::load_aligned(buf.data() + i + L);
                    s2 += B::load_aligned(buf.data() + i + 2 * L);
                    s3 += B::load_aligned(buf.data() + i + 3 * L);
                }
                part[tid] = xsimd::hadd((s0 + s1) + (s2 + s3));
            },
            1 << 16);
        benchmark::DoNotOptimize(part.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n * sizeof(float)));
}
BENCHMARK(BM_MemoryRead)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

// matmul_wt GEMV (T = 1): bytes of weights streamed per second.
template <class W>
void BM_Gemv(benchmark::State& state) {
    const std::int64_t n_in = state.range(0), n_out = state.range(1);
    const std::size_t nw = static_cast<std::size_t>(n_in * n_out);
    std::vector<W> w;
    if constexpr (std::is_same_v<W, bf16>)
        w = random_bf16(nw);
    else
        w = random_floats(nw, -0.05f, 0.05f);
    const auto x = random_floats(static_cast<std::size_t>(n_in));
    std::vector<float> y(static_cast<std::size_t>(n_out));
    for (auto _ : state) {
        ops::matmul_wt(Bk{}, y.data(), x.data(), w.data(), 1, n_in, n_out);
        benchmark::DoNotOptimize(y.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(nw * sizeof(W)));
}
BENCHMARK_TEMPLATE(BM_Gemv, bf16)
    ->ArgNames({"n_in", "n_out"})
    ->Args({4096, 14336})
    ->Args({14336, 4096})
    ->Args({4096, 32002})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gemv, float)->ArgNames({"n_in", "n_out"})->Args({4096, 14336})->Unit(benchmark::kMillisecond)->UseRealTime();

// matmul_wt with T rows: GFLOP/s (2 T n_in n_out flops).
template <class W>
void BM_MatmulWt(benchmark::State& state) {
    const std::int64_t T = state.range(0), n_in = state.range(1), n_out = state.range(2);
    const std::size_t nw = static_cast<std::size_t>(n_in * n_out);
    std::vector<W> w;
    if constexpr (std::is_same_v<W, bf16>)
        w = random_bf16(nw);
    else
        w = random_floats(nw, -0.05f, 0.05f);
    const auto x = random_floats(static_cast<std::size_t>(T * n_in));
    std::vector<float> y(static_cast<std::size_t>(T * n_out));
    for (auto _ : state) {
        ops::matmul_wt(Bk{}, y.data(), x.data(), w.data(), T, n_in, n_out);
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * static_cast<double>(T) * static_cast<double>(nw),
                                                   benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK_TEMPLATE(BM_MatmulWt, bf16)
    ->ArgNames({"T", "n_in", "n_out"})
    ->Args({512, 4096, 4096})
    ->Args({2, 4096, 4096})
    ->Args({4, 4096, 4096})
    ->Args({8, 4096, 4096})
    ->Args({16, 4096, 4096})
    ->Args({64, 4096, 4096})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_MatmulWt, float)
    ->ArgNames({"T", "n_in", "n_out"})
    ->Args({512, 4096, 4096})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Plain matmul (Eigen) for comparison with the packed GEMM.
void BM_MatmulEigen(benchmark::State& state) {
    const std::int64_t T = state.range(0), k = state.range(1), n = state.range(2);
    const auto x = random_floats(static_cast<std::size_t>(T * k)), b = random_floats(static_cast<std::size_t>(k * n));
    std::vector<float> y(static_cast<std::size_t>(T * n));
    for (auto _ : state) {
        ops::matmul(Bk{}, y.data(), x.data(), b.data(), T, k, n);
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * static_cast<double>(T * k) * static_cast<double>(n),
                                                   benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MatmulEigen)->ArgNames({"T", "k", "n"})->Args({512, 4096, 4096})->Unit(benchmark::kMillisecond)->UseRealTime();

// Attention, Mistral heads (32 q / 8 kv, head_dim 128), window 4096 keys: T new tokens after p0
// cached ones in an f32 ring (bf16 = 0) or a bf16 one (bf16 = 1: the rows a bf16 KvCache holds).
// FLOP/s counts 4 * keys * head_dim per (query, head) (q·k and p·v).
void BM_Attention(benchmark::State& state) {
    const std::int64_t T = state.range(0), p0 = state.range(1), W = 4096;
    const bool ring_bf16 = state.range(2) != 0;
    const ops::AttentionShape s{32, 8, 128, W};
    const std::int64_t qd = 32 * 128, kvd = 8 * 128, C = std::max<std::int64_t>(W - 1, 1);
    const auto q = random_floats(static_cast<std::size_t>(T * qd));
    const auto k = random_floats(static_cast<std::size_t>(T * kvd)), v = random_floats(static_cast<std::size_t>(T * kvd));
    const auto kc = random_floats(static_cast<std::size_t>(C * kvd)), vc = random_floats(static_cast<std::size_t>(C * kvd));
    std::vector<bf16> kh(kc.size()), vh(vc.size());
    for (std::size_t i = 0; i < kc.size(); ++i) kh[i].bits = f32_to_bf16(kc[i]), vh[i].bits = f32_to_bf16(vc[i]);
    std::vector<float> out(static_cast<std::size_t>(T * qd));
    double keys = 0;
    for (std::int64_t t = 0; t < T; ++t) keys += static_cast<double>(std::min(p0 + t + 1, W));
    const float scale = 1.0f / std::sqrt(128.0f);
    for (auto _ : state) {
        if (ring_bf16)
            ops::attention_sliding_window(Bk{}, out.data(), q.data(), k.data(), v.data(), kh.data(), vh.data(), C, p0, T,
                                          s, scale);
        else
            ops::attention_sliding_window(Bk{}, out.data(), q.data(), k.data(), v.data(), kc.data(), vc.data(), C, p0, T,
                                          s, scale);
        benchmark::DoNotOptimize(out.data());
    }
    state.counters["GFLOP/s"] =
        benchmark::Counter(4e-9 * keys * 32 * 128, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Attention)
    ->ArgNames({"T", "p0", "bf16"})
    ->Args({512, 0, 0})
    ->Args({512, 3584, 0})
    ->Args({512, 3584, 1})
    ->Args({1, 4095, 0})
    ->Args({1, 4095, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Element-wise and row kernels at prefill size (T = 512).
void BM_RmsNorm(benchmark::State& state) {
    const std::int64_t T = 512, d = 4096;
    const auto x = random_floats(static_cast<std::size_t>(T * d));
    const auto w = random_bf16(static_cast<std::size_t>(d));
    std::vector<float> y(x.size());
    for (auto _ : state) {
        ops::rms_norm(Bk{}, y.data(), x.data(), w.data(), T, d, 1e-5f);
        benchmark::DoNotOptimize(y.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * T * d * 8);
}
BENCHMARK(BM_RmsNorm)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Swiglu(benchmark::State& state) {
    const std::int64_t n = 512 * 14336;
    const auto g = random_floats(static_cast<std::size_t>(n), -6.0f, 6.0f), u = random_floats(static_cast<std::size_t>(n));
    std::vector<float> h(static_cast<std::size_t>(n));
    for (auto _ : state) {
        ops::swiglu(Bk{}, h.data(), g.data(), u.data(), n);
        benchmark::DoNotOptimize(h.data());
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * n);
}
BENCHMARK(BM_Swiglu)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Rope(benchmark::State& state) {
    const std::int64_t T = 512, heads = 32, hd = 128;
    auto x = random_floats(static_cast<std::size_t>(T * heads * hd));
    std::vector<std::int64_t> pos(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t) pos[static_cast<std::size_t>(t)] = 1000 + t;
    for (auto _ : state) {
        ops::rope_rotate_half(Bk{}, x.data(), pos.data(), T, heads, hd, 10000.0);
        benchmark::DoNotOptimize(x.data());
    }
}
BENCHMARK(BM_Rope)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_CrossEntropy(benchmark::State& state) {
    const std::int64_t T = 512, vocab = 32002;
    const auto logits = random_floats(static_cast<std::size_t>(T * vocab), -10.0f, 10.0f);
    std::vector<std::int32_t> targets(static_cast<std::size_t>(T), 17);
    for (auto _ : state) benchmark::DoNotOptimize(ops::cross_entropy_rows(Bk{}, logits.data(), targets.data(), T, vocab));
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * T * vocab);
}
BENCHMARK(BM_CrossEntropy)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

LIMARP_CPU_KERNELS_END

BENCHMARK_MAIN();
