// bench_micro_qgemm: quantized CPU products (ops::qmatmul_wt) on Mistral-7B shapes, and the
// memory read bandwidth they are bounded by.
//
//   bench_micro_qgemm [--benchmark_filter=...]        (LIMARP_BENCH_WORKING_SET_MB, default 1024)
//
// - ReadBandwidth/threads:N: a plain SIMD read loop (sum of 64-byte loads) over a 1 GiB buffer.
// - Gemv/<scheme>/<n_in>x<n_out>/threads:N (T = 1, decode): "GB/s" counts the weight bytes read
//   per product (int8: n_out * n_in + 4 n_out; q8_0: n_out * n_in / 32 * 34). Several copies of
//   the weight (LIMARP_BENCH_WORKING_SET_MB in total) are used round-robin so that the weights
//   come from memory, not from the last-level cache. "4096x14336" is the down_proj shape
//   (n_in 14336 -> n_out 4096 is written 14336x4096 here: n_in x n_out).
// - Gemm/<scheme>/<n_in>x<n_out>/T:512/threads:N (prefill): "GFLOP/s" = 2 T n_in n_out / time.
// Weights are random (no download); activations are uniform in [-1, 1] (no outlier columns, except
// in Gemm/int8_8_outlier_columns: 8 columns hold one value of 20).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/cpu/qgemm.hpp"
#include "limarp/core/thread_pool.hpp"
#include "limarp/quant/int8_rowwise.hpp"
#include "limarp/quant/q8_0.hpp"

using namespace limarp;

// GCC 12 false positives inside AVX-512 intrinsics (PR105593), e.g. from xsimd::hadd below.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace {

std::int64_t working_set_bytes() {
    const char* e = std::getenv("LIMARP_BENCH_WORKING_SET_MB");
    return (e ? std::max(1, std::atoi(e)) : 1024) * std::int64_t{1} << 20;
}

ThreadPool& pool_of(unsigned n) {
    static ThreadPool p1(1), p2(2);
    return n == 1 ? p1 : p2;
}

Weight random_weight(std::int64_t n_out, std::int64_t n_in) {
    Tensor<float> t({n_out, n_in});
    const float a = 1.7320508f / std::sqrt(static_cast<float>(n_in));
    ThreadPool::global().parallel_for(0, n_out, [&](std::int64_t b, std::int64_t e, unsigned) {
        std::mt19937 g(static_cast<unsigned>(b * 7919 + 1));
        std::uniform_real_distribution<float> u(-a, a);
        for (std::int64_t i = b * n_in; i < e * n_in; ++i) t[i] = u(g);
    });
    return Weight::owned(std::move(t), "bench.weight");
}

std::vector<float> random_x(std::int64_t n, unsigned seed) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& e : v) e = u(g);
    return v;
}

// `copies` weights with identical values in separate buffers (total >= the working set).
template <class Scheme>
std::vector<QuantizedWeight<Scheme>> weight_copies(std::int64_t n_out, std::int64_t n_in, bool for_gemv) {
    const auto w = QuantizedWeight<Scheme>::quantize(random_weight(n_out, n_in));
    const std::int64_t copies =
        for_gemv ? std::max<std::int64_t>(2, (working_set_bytes() + static_cast<std::int64_t>(w.nbytes()) - 1) /
                                                 static_cast<std::int64_t>(w.nbytes()))
                 : 1;
    std::vector<QuantizedWeight<Scheme>> out;
    out.push_back(w);
    for (std::int64_t c = 1; c < copies; ++c) {
        if constexpr (std::is_same_v<Scheme, Int8Rowwise>) {
            const std::size_t qb = static_cast<std::size_t>(n_out * n_in);
            auto buf = std::shared_ptr<std::byte>(static_cast<std::byte*>(::operator new(qb + 4 * n_out, std::align_val_t{64})),
                                                  [](std::byte* p) { ::operator delete(p, std::align_val_t{64}); });
            std::memcpy(buf.get(), w.data(), qb);
            std::memcpy(buf.get() + qb, w.scales(), static_cast<std::size_t>(4 * n_out));
            out.emplace_back(reinterpret_cast<const std::int8_t*>(buf.get()), reinterpret_cast<const float*>(buf.get() + qb),
                             n_out, n_in, w.name(), std::shared_ptr<const void>(buf));
        } else {
            auto buf = std::shared_ptr<std::byte>(static_cast<std::byte*>(::operator new(w.nbytes(), std::align_val_t{64})),
                                                  [](std::byte* p) { ::operator delete(p, std::align_val_t{64}); });
            std::memcpy(buf.get(), w.data(), w.nbytes());
            out.emplace_back(buf.get(), n_out, n_in, w.name(), std::shared_ptr<const void>(buf));
        }
    }
    return out;
}

void read_bandwidth(benchmark::State& state) {
    const unsigned threads = static_cast<unsigned>(state.range(0));
    constexpr std::size_t kBytes = std::size_t{1} << 30;
    static std::unique_ptr<std::uint64_t[]> buf = [] {
        std::unique_ptr<std::uint64_t[]> b(new std::uint64_t[kBytes / 8]);
        ThreadPool::global().parallel_for(0, static_cast<std::int64_t>(kBytes / 8), [&](std::int64_t s, std::int64_t e, unsigned) {
            for (std::int64_t i = s; i < e; ++i) b[static_cast<std::size_t>(i)] = static_cast<std::uint64_t>(i);
        });
        return b;
    }();
    using B = xsimd::batch<std::uint64_t>;
    constexpr std::int64_t L = static_cast<std::int64_t>(B::size);
    ThreadPool& p = pool_of(threads);
    const std::int64_t n = static_cast<std::int64_t>(kBytes / 8);
    std::uint64_t sink = 0;
    for (auto _ : state) {
        std::uint64_t part[2] = {0, 0};
        p.parallel_for(0, n / (8 * L), [&](std::int64_t b, std::int64_t e, unsigned tid) {
            B a0(0), a1(0), a2(0), a3(0), a4(0), a5(0), a6(0), a7(0);
            for (std::int64_t i = b * 8 * L; i < e * 8 * L; i += 8 * L) {  // 8 vectors per step
                a0 += B::load_unaligned(buf.get() + i);
                a1 += B::load_unaligned(buf.get() + i + L);
                a2 += B::load_unaligned(buf.get() + i + 2 * L);
                a3 += B::load_unaligned(buf.get() + i + 3 * L);
                a4 += B::load_unaligned(buf.get() + i + 4 * L);
                a5 += B::load_unaligned(buf.get() + i + 5 * L);
                a6 += B::load_unaligned(buf.get() + i + 6 * L);
                a7 += B::load_unaligned(buf.get() + i + 7 * L);
            }
            part[tid] = xsimd::hadd(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)));
        });
        sink += part[0] + part[1];
        benchmark::DoNotOptimize(sink);
    }
    state.counters["GB/s"] = benchmark::Counter(static_cast<double>(kBytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

template <class Scheme>
void gemv(benchmark::State& state, std::int64_t n_in, std::int64_t n_out, QuantOptions opt) {
    const unsigned threads = static_cast<unsigned>(state.range(0));
    static std::map<std::pair<std::int64_t, std::int64_t>, std::vector<QuantizedWeight<Scheme>>> cache;
    auto& ws = cache[{n_in, n_out}];
    if (ws.empty()) ws = weight_copies<Scheme>(n_out, n_in, true);
    const auto x = random_x(n_in, 1u);
    std::vector<float> y(static_cast<std::size_t>(n_out));
    ThreadPool& p = pool_of(threads);
    std::size_t i = 0;
    for (auto _ : state) {
        ops::qmatmul_wt(Cpu<>{}, y.data(), x.data(), ws[i], 1, false, opt, &p);
        i = (i + 1) % ws.size();
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["GB/s"] =
        benchmark::Counter(static_cast<double>(ws[0].nbytes()) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["copies"] = static_cast<double>(ws.size());
}

template <class Scheme>
void gemm(benchmark::State& state, std::int64_t n_in, std::int64_t n_out, std::int64_t T, QuantOptions opt,
          std::int64_t n_outliers = 0) {
    const unsigned threads = static_cast<unsigned>(state.range(0));
    static std::map<std::pair<std::int64_t, std::int64_t>, std::vector<QuantizedWeight<Scheme>>> cache;
    auto& ws = cache[{n_in, n_out}];
    if (ws.empty()) ws = weight_copies<Scheme>(n_out, n_in, false);
    auto x = random_x(T * n_in, 2u);
    for (std::int64_t j = 0; j < n_outliers; ++j)  // outlier columns: one large value each
        x[static_cast<std::size_t>((j * 37 % T) * n_in + (j * 997 + 13) % n_in)] = 20.0f;
    std::vector<float> y(static_cast<std::size_t>(T * n_out));
    ThreadPool& p = pool_of(threads);
    for (auto _ : state) {
        ops::qmatmul_wt(Cpu<>{}, y.data(), x.data(), ws[0], T, false, opt, &p);
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(T) * static_cast<double>(n_in) *
                                                       static_cast<double>(n_out) * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

// Quantization at load of a bf16 weight [n_out, n_in] (what QuantizedLinear::load does without a
// pre-quantized checkpoint); "Melem/s" counts weight elements.
template <class Scheme>
void quantize_at_load(benchmark::State& state, std::int64_t n_in, std::int64_t n_out) {
    static const Weight w = [&] {
        Tensor<bf16> t({n_out, n_in});
        for (std::int64_t i = 0; i < t.size(); ++i) t[i].bits = f32_to_bf16(static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f);
        return Weight::owned(std::move(t), "bench.weight");
    }();
    ThreadPool& p = pool_of(static_cast<unsigned>(state.range(0)));
    for (auto _ : state) {
        auto q = QuantizedWeight<Scheme>::quantize(w, &p);
        benchmark::DoNotOptimize(q.data());
    }
    state.counters["Melem/s"] =
        benchmark::Counter(static_cast<double>(n_in * n_out) * 1e-6, benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
    benchmark::RegisterBenchmark("Quantize/int8/bf16_4096x14336", [](benchmark::State& st) { quantize_at_load<Int8Rowwise>(st, 4096, 14336); })
        ->ArgName("threads")->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("Quantize/q8_0/bf16_4096x14336", [](benchmark::State& st) { quantize_at_load<Q8_0>(st, 4096, 14336); })
        ->ArgName("threads")->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("ReadBandwidth/1GiB", read_bandwidth)
        ->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
    struct Shape {
        std::int64_t n_in, n_out;
    };
    for (Shape s : {Shape{14336, 4096}, Shape{4096, 14336}}) {
        const std::string dims = std::to_string(s.n_in) + "x" + std::to_string(s.n_out);
        benchmark::RegisterBenchmark(("Gemv/q8_0/" + dims).c_str(), [s](benchmark::State& st) { gemv<Q8_0>(st, s.n_in, s.n_out, QuantOptions{}); })
            ->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("Gemv/int8/" + dims).c_str(), [s](benchmark::State& st) { gemv<Int8Rowwise>(st, s.n_in, s.n_out, QuantOptions{}); })
            ->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("Gemv/int8_weight_only/" + dims).c_str(),
                                     [s](benchmark::State& st) { gemv<Int8Rowwise>(st, s.n_in, s.n_out, QuantOptions::weight_only()); })
            ->ArgName("threads")->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("Gemv/q8_0_weight_only/" + dims).c_str(),
                                     [s](benchmark::State& st) { gemv<Q8_0>(st, s.n_in, s.n_out, QuantOptions::weight_only()); })
            ->ArgName("threads")->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
    }
    for (Shape s : {Shape{4096, 14336}, Shape{14336, 4096}}) {
        const std::string dims = std::to_string(s.n_in) + "x" + std::to_string(s.n_out) + "/T:512";
        benchmark::RegisterBenchmark(("Gemm/q8_0/" + dims).c_str(), [s](benchmark::State& st) { gemm<Q8_0>(st, s.n_in, s.n_out, 512, QuantOptions{}); })
            ->ArgName("threads")->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("Gemm/int8/" + dims).c_str(), [s](benchmark::State& st) { gemm<Int8Rowwise>(st, s.n_in, s.n_out, 512, QuantOptions{}); })
            ->ArgName("threads")->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("Gemm/int8_8_outlier_columns/" + dims).c_str(),
                                     [s](benchmark::State& st) { gemm<Int8Rowwise>(st, s.n_in, s.n_out, 512, QuantOptions{}, 8); })
            ->ArgName("threads")->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
    }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
