#pragma once
/// \file pdl.cuh
/// \brief Programmatic dependent launch (sm_90) for the kernels of a decode step.
///
/// A decode step is a chain of short kernels (9 per layer); between two plain launches the GPU
/// drains the first kernel completely, flushes its writes and only then starts the second one's
/// blocks, a few microseconds per edge that no byte moves in. With programmatic dependent launch
/// the next kernel is launched while the current one still runs:
/// - `launch_chained` launches with `cudaLaunchAttributeProgrammaticStreamSerialization` (also
///   inside a CUDA graph recording, where it becomes a programmatic edge);
/// - every chained kernel calls `pdl_wait()` (`griddepcontrol.wait`: blocks until the previous
///   kernel has completed and its writes are visible) before it reads anything an earlier kernel
///   wrote or writes anything an earlier kernel reads, then `pdl_launch_dependents()`
///   (`griddepcontrol.launch_dependents`), which lets the *next* kernel launch once every block of
///   this one has passed its wait. Triggering only after the wait keeps at most one kernel
///   waiting ahead of the running one, so waiting blocks never crowd out running ones;
/// - before its wait a kernel may touch what no kernel of the step writes: the bf16 GEMVs issue
///   their first weight loads there, the int8 GEMV's cp.async path its first copies. (The int8
///   register path waits first: hoisting its loads above the wait, or asking the L2 for each
///   block's rows with `cp.async.bulk.prefetch.L2`, made decode slower on an H200:
///   benchmarks/NOTES.md, session 5.)
/// `pdl_enter()` is the usual prologue: wait, then trigger. A kernel launched through
/// `launch_chained` that did not wait would race with its predecessor: only kernels that start
/// with `pdl_enter()` (or call `pdl_wait()` before their first dependent access) may be.
/// Without the launch attribute (older GPUs, `LIMARP_CUDA_PDL=0`) both instructions are no-ops and
/// the launches serialize as usual.

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"

namespace limarp::cuda_detail {

/// Lets the next kernel in the stream launch (when it was launched programmatically) once every
/// block of this kernel has executed this. No-op before sm_90.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/// Waits until the kernels this one depends on have completed and their memory is visible
/// (returns at once when the kernel was not launched programmatically). No-op before sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/// The prologue of a chained kernel: wait for the previous kernel, then let the next one launch.
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch_dependents();
}

/// False when the environment sets `name` to "0", true otherwise: the measurement and debugging
/// switches of the CUDA backend (LIMARP_CUDA_PDL, LIMARP_CUDA_ATTN_CLUSTER, LIMARP_CUDA_GRAPHS,
/// LIMARP_CUDA_QGEMV_WAVES).
/// Callers read it once (a function-local static).
inline bool env_switch_on(const char* name) {
    const char* e = std::getenv(name);
    return !(e && std::string(e) == "0");
}

/// True when kernels are launched programmatically: the current device is sm_90 or newer and the
/// environment does not set `LIMARP_CUDA_PDL=0` (read once; a measurement and debugging switch).
inline bool pdl_enabled() {
    static const bool env_on = env_switch_on("LIMARP_CUDA_PDL");
    return env_on && device_info().compute_capability >= 90;
}

/// The launch attribute that groups blocks into thread-block clusters of `cluster` blocks (sm_90).
inline cudaLaunchAttribute cluster_dim_attribute(dim3 cluster) {
    cudaLaunchAttribute a{};
    a.id = cudaLaunchAttributeClusterDimension;
    a.val.clusterDim.x = cluster.x;
    a.val.clusterDim.y = cluster.y;
    a.val.clusterDim.z = cluster.z;
    return a;
}

/// `launch_chained` (below) in thread-block clusters of `cluster` blocks (sm_90; a 1 x 1 x 1 cluster: none).
template <class... KArgs, class... Args>
void launch_chained_clusters(const char* file, int line, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                             std::size_t smem, cudaStream_t stream, dim3 cluster, Args&&... args) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[2]{};
    unsigned n = 0;
    if (pdl_enabled()) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        ++n;
    }
    if (cluster.x * cluster.y * cluster.z > 1) attr[n++] = cluster_dim_attribute(cluster);
    cfg.attrs = attr;
    cfg.numAttrs = n;
    cuda_check(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...), "cudaLaunchKernelEx", file, line);
    cuda_check_launch(file, line);
}

/// Launches `kernel<<<grid, block, smem, stream>>>(args...)` as the next link of a chain
/// (programmatic stream serialization when `pdl_enabled()`, a plain launch otherwise) and checks
/// the launch, naming the caller's `file`:`line`. `kernel` must begin with `pdl_enter()` or call
/// `pdl_wait()` before its first access to memory that earlier work in the stream touches.
template <class... KArgs, class... Args>
void launch_chained(const char* file, int line, void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem,
                    cudaStream_t stream, Args&&... args) {
    launch_chained_clusters(file, line, kernel, grid, block, smem, stream, dim3(1, 1, 1), std::forward<Args>(args)...);
}

}  // namespace limarp::cuda_detail
