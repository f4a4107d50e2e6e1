#pragma once
/// \file check.cuh
/// \brief Error checking for CUDA runtime calls and kernel launches: `LIMARP_CUDA_CHECK`,
/// `LIMARP_CUDA_CHECK_LAUNCH` and `cuda_malloc_checked`, all throwing `limarp::CudaError`.
///
/// Every CUDA runtime call in limarp goes through `LIMARP_CUDA_CHECK`, and every kernel launch is
/// followed by `LIMARP_CUDA_CHECK_LAUNCH()`:
/// \code
/// LIMARP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
/// rms_norm_kernel<<<grid, block, smem, stream>>>(out, x, w, eps, d_model);
/// LIMARP_CUDA_CHECK_LAUNCH();
/// \endcode
/// The header holds no device code: it compiles with nvcc and, given the CUDA include folder, with
/// a plain C++ compiler (link `CUDA::cudart`).
///
/// Define `LIMARP_CUDA_SYNC_CHECK` (e.g. `-DLIMARP_CUDA_SYNC_CHECK` in a debug build) to make
/// `LIMARP_CUDA_CHECK_LAUNCH()` also wait for the kernel, so that a fault inside it is reported at
/// its own launch rather than at a later, unrelated call.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>
#include <string>

#include "limarp/core/error.hpp"

namespace limarp {

/// The message of a failed CUDA call: `"<what> failed at <file>:<line>: <cudaErrorName> (<description>)"`.
/// \param err   the error returned by the call (not cudaSuccess)
/// \param what  the call as written in the source, or a description of it
/// \param file  source file of the call (`__FILE__`)
/// \param line  source line of the call (`__LINE__`)
inline std::string cuda_error_message(cudaError_t err, const char* what, const char* file, int line) {
    std::string msg = std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": ";
    msg += cudaGetErrorName(err);
    msg += " (";
    msg += cudaGetErrorString(err);
    msg += ")";
    return msg;
}

/// Throws `CudaError` with `cuda_error_message(err, what, file, line)` unless `err` is cudaSuccess.
/// Used by `LIMARP_CUDA_CHECK`; call it directly where the call's text is not what should be named.
/// \throws CudaError when `err != cudaSuccess`
inline void cuda_check(cudaError_t err, const char* what, const char* file, int line) {
    if (err != cudaSuccess) throw CudaError(cuda_error_message(err, what, file, line));
}

/// Checks the launch of the kernel launched last on this thread (`cudaGetLastError`, which also
/// clears a non-sticky error). With `LIMARP_CUDA_SYNC_CHECK` defined it then waits for the device,
/// so that an error raised while the kernel runs is reported here too.
/// \throws CudaError naming `file`:`line` when the launch (or, with the sync check, the kernel) failed
inline void cuda_check_launch(const char* file, int line) {
    cuda_check(cudaGetLastError(), "kernel launch", file, line);
#ifdef LIMARP_CUDA_SYNC_CHECK
    cuda_check(cudaDeviceSynchronize(), "kernel execution (cudaDeviceSynchronize after launch)", file, line);
#endif
}

/// `cudaMalloc` of `bytes` bytes that throws instead of returning an error. When the device is out
/// of memory the message gives the bytes requested, what they were for and the free and total
/// device memory from `cudaMemGetInfo`, e.g.
/// `cudaMalloc of 17179869184 bytes (16.00 GiB) for "kv cache" failed: out of memory on device 0
/// (3.20 GiB free of 79.19 GiB)`. The allocation error is cleared, so later calls are unaffected.
/// \param bytes number of bytes to allocate; 0 returns nullptr without calling CUDA
/// \param what  what the memory is for (a tensor or buffer name), for the message
/// \return device pointer, to be released with `cudaFree`
/// \throws CudaError on any allocation failure
inline void* cuda_malloc_checked(std::size_t bytes, const char* what) {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaSuccess) return p;
    (void)cudaGetLastError();  // clear the (non-sticky) allocation error
    const auto gib = [](std::size_t b) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0));
        return std::string(buf);
    };
    std::string msg =
        "cudaMalloc of " + std::to_string(bytes) + " bytes (" + gib(bytes) + ") for \"" + what + "\" failed: ";
    if (err == cudaErrorMemoryAllocation) {
        int device = -1;
        std::size_t free_b = 0, total_b = 0;
        const bool have_device = cudaGetDevice(&device) == cudaSuccess;
        if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
            msg += "out of memory on device " + (have_device ? std::to_string(device) : std::string("?")) + " (" +
                   gib(free_b) + " free of " + gib(total_b) + "; " + std::to_string(free_b) + " bytes free)";
        } else {
            (void)cudaGetLastError();
            msg += "out of memory (cudaMemGetInfo failed as well)";
        }
    } else {
        msg += std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
    }
    throw CudaError(msg);
}

}  // namespace limarp

/// Evaluates the CUDA runtime call `call` once and throws `limarp::CudaError` naming the call's
/// text, the file and line, and the CUDA error name and description unless it returned cudaSuccess.
#define LIMARP_CUDA_CHECK(call) ::limarp::cuda_check((call), #call, __FILE__, __LINE__)

/// Checks the kernel launch just made (`cudaGetLastError`); put it right after each `<<<...>>>`.
/// Throws `limarp::CudaError` naming the file and line. See `LIMARP_CUDA_SYNC_CHECK`.
#define LIMARP_CUDA_CHECK_LAUNCH() ::limarp::cuda_check_launch(__FILE__, __LINE__)
