#pragma once
// Timing helpers of the CUDA benchmarks (bench_cuda_qgemv, bench_cuda_decode_ops): CUDA events,
// the median, launch timing as plain stream launches and as replays of a captured CUDA graph, and
// the device-to-device copy bandwidth that the floors are computed from.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"

namespace limarp::bench {

struct Events {
    cudaEvent_t a{}, b{};
    Events() {
        LIMARP_CUDA_CHECK(cudaEventCreate(&a));
        LIMARP_CUDA_CHECK(cudaEventCreate(&b));
    }
    ~Events() {
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }
    Events(const Events&) = delete;
    Events& operator=(const Events&) = delete;
    float ms() const {
        float t = 0;
        LIMARP_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
        return t;
    }
};

inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Timing {
    double stream_us = 0, graph_us = 0;
};

// Times `launch(i)` for i over the rotation 0..copies-1: median per-launch microseconds over
// `reps` repetitions of `iters` launches, after a warm-up; once launched one by one on `stream`
// and once replayed from a CUDA graph of the same `iters` launches.
template <class F>
Timing time_launches(F&& launch, int copies, int iters, int reps, cudaStream_t stream) {
    Events ev;
    Timing t;
    for (int i = 0; i < 2 * copies + 10; ++i) launch(i % copies);  // warm-up (module load, L1 x, TLB)
    LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<double> v;
    int next = 0;
    for (int r = 0; r < reps; ++r) {
        LIMARP_CUDA_CHECK(cudaEventRecord(ev.a, stream));
        for (int i = 0; i < iters; ++i) launch(next++ % copies);
        LIMARP_CUDA_CHECK(cudaEventRecord(ev.b, stream));
        LIMARP_CUDA_CHECK(cudaEventSynchronize(ev.b));
        v.push_back(1000.0 * ev.ms() / iters);
    }
    t.stream_us = median(v);

    cudaGraph_t graph{};
    cudaGraphExec_t exec{};
    LIMARP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < iters; ++i) launch(i % copies);
    LIMARP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    LIMARP_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    LIMARP_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up
    LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream));
    v.clear();
    for (int r = 0; r < reps; ++r) {
        LIMARP_CUDA_CHECK(cudaEventRecord(ev.a, stream));
        LIMARP_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        LIMARP_CUDA_CHECK(cudaEventRecord(ev.b, stream));
        LIMARP_CUDA_CHECK(cudaEventSynchronize(ev.b));
        v.push_back(1000.0 * ev.ms() / iters);
    }
    t.graph_us = median(v);
    LIMARP_CUDA_CHECK(cudaGraphExecDestroy(exec));
    LIMARP_CUDA_CHECK(cudaGraphDestroy(graph));
    return t;
}

// Device-to-device copy bandwidth of `bytes` (read + write counted), GB/s: median of `reps`.
inline double copy_bandwidth_gbs(std::size_t bytes, int reps, cudaStream_t stream) {
    DeviceBuffer<std::int8_t> src(bytes, "copy source"), dst(bytes, "copy destination");
    LIMARP_CUDA_CHECK(cudaMemsetAsync(src.data(), 1, bytes, stream));
    Events ev;
    std::vector<double> v;
    for (int r = 0; r < reps + 3; ++r) {
        LIMARP_CUDA_CHECK(cudaEventRecord(ev.a, stream));
        LIMARP_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, stream));
        LIMARP_CUDA_CHECK(cudaEventRecord(ev.b, stream));
        LIMARP_CUDA_CHECK(cudaEventSynchronize(ev.b));
        if (r >= 3) v.push_back(ev.ms());
    }
    return 2.0 * static_cast<double>(bytes) / (median(v) * 1e-3) / 1e9;
}

}  // namespace limarp::bench
