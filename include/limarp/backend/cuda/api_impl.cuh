#pragma once
/// \file api_impl.cuh
/// \brief Definitions of `cuda_api::` (backend/cuda/api.hpp): the kernels of backend/cuda/*.cuh
/// behind a compiled boundary, plus cuBLAS for the multi-token products. Include it in exactly
/// one CUDA translation unit of a program (CMake's `limarp::cuda` target does: cmake/limarp_cuda.cu)
/// and link cuBLAS (`CUDA::cublas`).
///
/// Per host thread: one stream (blocking flavour: it synchronises with the legacy default stream,
/// so the blocking `cudaMemcpy` of weight uploads is ordered with it), one cuBLAS handle bound to
/// it, and scratch buffers (bf16 copies of activations and of widened int8 weights, the int8
/// activations / int32 products / outlier columns of the int8 prefill GEMM, the decode
/// attention's split workspace), grown on demand. The tensor-core prefill attention keeps its
/// bf16 key/value copies in its own per-thread scratch (attention_flash.cuh).

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "limarp/backend/cuda/activation.cuh"
#include "limarp/backend/cuda/api.hpp"
#include "limarp/backend/cuda/attention.cuh"
#include "limarp/backend/cuda/attention_prefill.cuh"
#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/cuda/device_int8_weight.cuh"
#include "limarp/backend/cuda/detail/pdl.cuh"
#include "limarp/backend/cuda/embedding.cuh"
#include "limarp/backend/cuda/norm.cuh"
#include "limarp/backend/cuda/qgemm_int8.cuh"
#include "limarp/backend/cuda/qgemv.cuh"
#include "limarp/backend/cuda/rope.cuh"
#include "limarp/backend/cuda/sampler.cuh"

/// \cond
namespace limarp {
namespace cuda_detail {

inline void cublas_check(cublasStatus_t st, const char* what, const char* file, int line) {
    if (st != CUBLAS_STATUS_SUCCESS)
        throw CudaError(std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": cuBLAS status " +
                        std::to_string(static_cast<int>(st)) + " (" + cublasGetStatusString(st) + ")");
}
#define LIMARP_CUBLAS_CHECK(call) ::limarp::cuda_detail::cublas_check((call), #call, __FILE__, __LINE__)

// The calling thread's stream, cuBLAS handle and scratch.
struct ThreadState {
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    DeviceBuffer<__nv_bfloat16> x_bf16, w_bf16;
    DeviceBuffer<float> partial;
    // int8-activation GEMM (qgemm_int8.cuh): x quantized [T, ld] and its row scales [T], the
    // int32 product [T, ldc]; outlier columns: |x| column maxima (f32 bits) [n_in], the columns
    // [n_in] and their count [1] (written and read on the device), the weight bytes of those
    // columns [count, n_out] (sized n_in * n_out, the worst case).
    DeviceBuffer<std::int8_t> x_int8, w_outliers;
    DeviceBuffer<float> x_scale, x_aligned;
    DeviceBuffer<std::int32_t> acc_int32;
    DeviceBuffer<unsigned> col_absmax;
    DeviceBuffer<int> outlier_cols, outlier_count;
    DeviceBuffer<unsigned char> blas_workspace{32u << 20, "cuBLAS workspace"};
    std::unique_ptr<AttentionDecodeWorkspace> attn_ws;
    // the outlier column count read back on the host: pinned, so that the copy is asynchronous, and
    // an event the host waits on while the int8 GEMM already runs
    int* count_host = nullptr;
    cudaEvent_t count_ready = nullptr;
    ThreadState() {
        LIMARP_CUDA_CHECK(cudaStreamCreate(&stream));
        LIMARP_CUDA_CHECK(cudaHostAlloc(&count_host, sizeof(int), cudaHostAllocDefault));
        LIMARP_CUDA_CHECK(cudaEventCreateWithFlags(&count_ready, cudaEventDisableTiming));
        LIMARP_CUBLAS_CHECK(cublasCreate(&blas));
        LIMARP_CUBLAS_CHECK(cublasSetStream(blas, stream));
        // A workspace of our own, so that cuBLAS allocates nothing while a step is being recorded.
        LIMARP_CUBLAS_CHECK(cublasSetWorkspace(blas, blas_workspace.data(), blas_workspace.size()));
    }
    ~ThreadState() {  // the buffers' frees bump backend_epoch(): graphs using this scratch are stale
        if (blas) (void)cublasDestroy(blas);
        if (count_ready) (void)cudaEventDestroy(count_ready);
        if (count_host) (void)cudaFreeHost(count_host);
        if (stream) (void)cudaStreamDestroy(stream);
    }
    ThreadState(const ThreadState&) = delete;
    ThreadState& operator=(const ThreadState&) = delete;
};
inline ThreadState& thread_state() {
    static thread_local ThreadState s;
    return s;
}

template <class T>
T* grow(DeviceBuffer<T>& b, std::int64_t n, const char* what) {
    return grow_device_buffer(b, n, what, thread_state().stream);
}

// With split false only the hi rows are written (x rounded to bf16).
__global__ void split_bf16_kernel(__nv_bfloat16* xs, const float* x, long long n, bool split) {
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const float v = x[i];
        const __nv_bfloat16 hi = __float2bfloat16_rn(v);
        xs[i] = hi;
        if (split) xs[n + i] = __float2bfloat16_rn(v - __bfloat162float(hi));
    }
}

// y[t, o] = (accumulate ? y[t, o] : 0) + s[o] * (p[t, o] + p[T + t, o]) (s null: 1; without
// split there is no second half).
__global__ void combine_split_kernel(float* y, const float* p, const float* s, long long T, long long n_out,
                                     bool accumulate, bool split) {
    const long long n = T * n_out;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        float v = split ? p[i] + p[n + i] : p[i];
        if (s) v *= s[i % n_out];
        y[i] = accumulate ? y[i] + v : v;
    }
}

// w[o, k] = q[o, k] (int8 values are exact in bf16; the row scales are applied after the product).
__global__ void int8_to_bf16_kernel(__nv_bfloat16* w, const std::int8_t* q, int n_out, int n_in, int ld) {
    const long long n = static_cast<long long>(n_out) * n_in;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long o = i / n_in, k = i - o * n_in;
        w[i] = __float2bfloat16_rn(static_cast<float>(q[o * ld + k]));
    }
}

__global__ void scale_kernel(float* x, float s, long long n) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x)
        x[i] *= s;
}

// 8 bf16 weights read once (volatile: stays ahead of griddepcontrol.wait and of the arithmetic).
__device__ __forceinline__ uint4 load_bf16x8_streaming(const __nv_bfloat16* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// The VEC steps of the bf16 GEMVs for one lane: sum over k = k0, k0 + kStride, ... < n_in of the
// 8 weights of `row` at k times x[k .. k+7], in increasing k. The weights go out in batches of
// kBatch 16-byte loads (all in flight at once: a long row, such as the down_proj LoRA A [r, 14336],
// costs about one memory latency per batch instead of one per chunk); the first chunk (which no
// kernel writes) is loaded before pdl_enter(), the rest of the first batch after it. Every lane
// calls it (pdl_enter() is for the whole grid); a lane without a row (has_row false) returns 0.
template <int kStride, int kBatch = 8>
__device__ __forceinline__ float bf16_row_dot_chained(const __nv_bfloat16* row, const float* __restrict__ x,
                                                      int n_in, int k0, bool has_row) {
    uint4 wv[kBatch];
    if (has_row && k0 < n_in) wv[0] = load_bf16x8_streaming(row + k0);
    pdl_enter();
    float acc = 0.0f;
    if (!has_row) return acc;
#pragma unroll
    for (int b = 1; b < kBatch; ++b)
        if (k0 + b * kStride < n_in) wv[b] = load_bf16x8_streaming(row + k0 + b * kStride);
    for (int kb = k0; kb < n_in; kb += kBatch * kStride) {
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int k = kb + b * kStride;
            if (k < n_in)
                acc += dot8_bf16(wv[b], __ldg(reinterpret_cast<const float4*>(x + k)),
                                 __ldg(reinterpret_cast<const float4*>(x + k + 4)));
        }
        const int next = kb + kBatch * kStride;
#pragma unroll
        for (int b = 0; b < kBatch; ++b)
            if (next + b * kStride < n_in) wv[b] = load_bf16x8_streaming(row + next + b * kStride);
    }
    return acc;
}

// One token with bf16 weights (decode: LoRA factors, the lm_head, dense projections):
// y[o] (=|+=) sum_k W[o, k] x[k], f32 accumulation of the exact bf16 x f32 products. 8 warps per
// block; WPR warps share a row (split-K, partial sums through shared memory: WPR = 8 for short
// columns such as LoRA A [r, n_in], where a warp per row would leave most SMs idle), so a block
// covers 8 / WPR rows. With VEC each lane reads 8 weights (16 bytes) and 8 x values per step.
// Chained (detail/pdl.cuh): with VEC each lane loads its first 16 weight bytes (which no kernel
// writes) before waiting for the previous kernel, and the next ones before each step's arithmetic.
template <bool VEC, int WPR>
__global__ void __launch_bounds__(256)
    gemv_bf16_kernel(float* __restrict__ y, const float* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                     int n_in, int n_out, bool accumulate, float alpha) {
    static_assert(WPR == 1 || WPR == 8, "gemv_bf16_kernel: a warp per row, or the whole block per row");
    __shared__ float part[8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int o = blockIdx.x * (8 / WPR) + warp / WPR, slice = warp % WPR;
    float acc = 0.0f;
    const __nv_bfloat16* row = w + static_cast<long long>(o < n_out ? o : 0) * n_in;
    if constexpr (VEC) {
        acc = bf16_row_dot_chained<256 * WPR>(row, x, n_in, (slice * 32 + lane) * 8, o < n_out);
    } else {
        pdl_enter();
        if (o < n_out)
            for (int k = slice * 32 + lane; k < n_in; k += 32 * WPR) acc += __bfloat162float(row[k]) * x[k];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if constexpr (WPR == 1) {
        if (lane == 0 && o < n_out) y[o] = accumulate ? y[o] + alpha * acc : alpha * acc;
    } else {
        if (lane == 0) part[warp] = acc;
        __syncthreads();
        if (threadIdx.x == 0 && o < n_out) {
            float sum = 0.0f;
            for (int i = 0; i < WPR; ++i) sum += part[i];
            y[o] = accumulate ? y[o] + alpha * sum : alpha * sum;
        }
    }
}

// Up to three bf16 GEMVs of one token that share x, one block per row of their concatenation
// (the LoRA A products of q/k/v or gate/up): row `row` of part p, y_p[o] = alpha_p · W_p[o, :] x,
// with the arithmetic and summation order of gemv_bf16_kernel<true, 8> (bitwise the same result).
// The parts are selected with constant indices only (a dynamic index into the kernel parameter
// would copy it to local memory).
struct Bf16GemvGroup {
    const __nv_bfloat16* w[3];
    float* y[3];
    float alpha[3];
    int row_end[3];  // cumulative rows
    int n_parts;
    int n_in;        // % 8 == 0, rows and x 16-byte aligned
};
__global__ void __launch_bounds__(256) gemv_bf16_group_kernel(const float* __restrict__ x, const Bf16GemvGroup g) {
    __shared__ float part[8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = static_cast<int>(blockIdx.x);
    const int p = (g.n_parts > 1 && row >= g.row_end[0]) + (g.n_parts > 2 && row >= g.row_end[1]);
    const int o = row - (p == 0 ? 0 : p == 1 ? g.row_end[0] : g.row_end[1]);
    const __nv_bfloat16* w = p == 0 ? g.w[0] : p == 1 ? g.w[1] : g.w[2];
    float acc = bf16_row_dot_chained<256 * 8>(w + static_cast<long long>(o) * g.n_in, x, g.n_in,
                                              (warp * 32 + lane) * 8, true);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int i = 0; i < 8; ++i) sum += part[i];
        float* y = p == 0 ? g.y[0] : p == 1 ? g.y[1] : g.y[2];
        y[o] = (p == 0 ? g.alpha[0] : p == 1 ? g.alpha[1] : g.alpha[2]) * sum;
    }
}

// y (=|+=) s[o] * P[t, o] (+ P[T + t, o] when `split`) with P = alpha · Xs · Wᵀ: Xs bf16 [halves * T, k]
// (halves = 2 when split: the hi rows, then the lo rows), W bf16 row-major [n_out, k]; one
// tensor-core GEMM (f32 accumulation) into the partial products, then one pass that sums the
// halves, scales (s null: 1) and stores or accumulates.
inline void gemm_bf16_scaled(float* y, const __nv_bfloat16* xs, const __nv_bfloat16* w, const float* s,
                             std::int64_t T, std::int64_t k, std::int64_t n_out, bool accumulate, bool split,
                             float alpha) {
    ThreadState& st = thread_state();
    const std::int64_t halves = split ? 2 : 1;
    float* p = grow(st.partial, halves * T * n_out, "GEMM partial products");
    const float beta = 0.0f;  // alpha scales the products (the LoRA scale: no extra pass)
    // Column-major view: Pᵀ [n_out, halves T] = op(W) [n_out, k] · Xsᵀ [k, halves T].
    LIMARP_CUBLAS_CHECK(cublasGemmEx(st.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n_out),
                                     static_cast<int>(halves * T), static_cast<int>(k), &alpha, w, CUDA_R_16BF,
                                     static_cast<int>(k), xs, CUDA_R_16BF, static_cast<int>(k), &beta, p, CUDA_R_32F,
                                     static_cast<int>(n_out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    launch_checked(__FILE__, __LINE__, combine_split_kernel, dim3(elementwise_blocks(T * n_out, 1)), dim3(256), 0,
                   st.stream, y, p, s, static_cast<long long>(T), static_cast<long long>(n_out), accumulate, split);
}

// y (=|+=) (x · Wᵀ) * s[o] with W bf16 row-major [n_out, n_in] and x f32 [T, n_in]: x split into
// bf16 hi + lo rows, one tensor-core GEMM over the 2T rows (W read once, f32 accumulation), then
// the two halves summed and scaled. Close to an f32 product with the bf16 weights: about 2^-16
// relative per input instead of bf16's 2^-9.
inline void gemm_bf16_split(float* y, const float* x, const __nv_bfloat16* w, const float* s, std::int64_t T,
                            std::int64_t n_in, std::int64_t n_out, bool accumulate, bool split = true,
                            float alpha = 1.0f) {
    ThreadState& st = thread_state();
    const std::int64_t halves = split ? 2 : 1;
    __nv_bfloat16* xs = grow(st.x_bf16, halves * T * n_in, "bf16 split of a GEMM input");
    launch_checked(__FILE__, __LINE__, split_bf16_kernel, dim3(elementwise_blocks(T * n_in, 1)), dim3(256), 0,
                   st.stream, xs, x, static_cast<long long>(T * n_in), split);
    gemm_bf16_scaled(y, xs, w, s, T, n_in, n_out, accumulate, split, alpha);
}

// The int8 values of `w` widened to bf16 (exact) [n_out, n_in] in the weight scratch.
inline __nv_bfloat16* widen_int8_weight(const DeviceInt8Weight& w) {
    const std::int64_t n_out = w.n_out(), n_in = w.n_in();
    __nv_bfloat16* wb = grow(thread_state().w_bf16, n_out * n_in, "bf16 copy of an int8 weight (GEMM scratch)");
    launch_checked(__FILE__, __LINE__, int8_to_bf16_kernel, dim3(elementwise_blocks(n_out * n_in, 1)), dim3(256), 0,
                   thread_state().stream, wb, w.data(), static_cast<int>(n_out), static_cast<int>(n_in),
                   static_cast<int>(w.ld()));
    return wb;
}

}  // namespace cuda_detail
}  // namespace limarp
/// \endcond

namespace limarp {
namespace cuda_api {

cudaStream_t stream() { return cuda_detail::thread_state().stream; }

void synchronize() { LIMARP_CUDA_CHECK(cudaStreamSynchronize(stream())); }

std::shared_ptr<void> upload(const void* host, std::size_t bytes, const std::string& what) {
    auto buf = std::make_shared<DeviceBuffer<unsigned char>>(bytes, what);  // its free bumps backend_epoch()
    buf->upload(static_cast<const unsigned char*>(host), bytes);
    return std::shared_ptr<void>(buf, buf->data());
}

void to_device(void* dst, const void* host, std::size_t bytes) {
    if (bytes) LIMARP_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream()));
}

void copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes) LIMARP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void to_host(void* host, const void* src, std::size_t bytes) {
    if (bytes) LIMARP_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, stream()));
    synchronize();
}

void matmul_wt_f32(float* y, const float* x, const float* w, std::int64_t T, std::int64_t n_in,
                          std::int64_t n_out, bool accumulate, float alpha) {
    if (T <= 0 || n_out <= 0) return;
    const float beta = accumulate ? 1.0f : 0.0f;
    LIMARP_CUBLAS_CHECK(cublasSgemm(cuda_detail::thread_state().blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n_out),
                                    static_cast<int>(T), static_cast<int>(n_in), &alpha, w, static_cast<int>(n_in), x,
                                    static_cast<int>(n_in), &beta, y, static_cast<int>(n_out)));
}

void matmul_wt_bf16(float* y, const float* x, const void* w_bf16, std::int64_t T, std::int64_t n_in,
                    std::int64_t n_out, bool accumulate, float alpha) {
    using namespace cuda_detail;
    if (T <= 0 || n_out <= 0) return;
    if (T == 1) {  // memory bound: the GEMV reads each weight once, exact products
        const auto* w = static_cast<const __nv_bfloat16*>(w_bf16);
        const bool vec = n_in % 8 == 0 && aligned_to(x, 16) && aligned_to(w, 16);
        // few rows (LoRA A, r <= 1024): a block per row, 8 warps splitting it; else a warp per row
        const bool split = n_out <= 1024;
        const dim3 grid(static_cast<unsigned>(split ? n_out : (n_out + 7) / 8));
        const auto args = [&](auto kernel) {
            launch_chained(__FILE__, __LINE__, kernel, grid, dim3(256), 0, stream(), y, x, w, static_cast<int>(n_in),
                           static_cast<int>(n_out), accumulate, alpha);
        };
        if (vec) split ? args(gemv_bf16_kernel<true, 8>) : args(gemv_bf16_kernel<true, 1>);
        else split ? args(gemv_bf16_kernel<false, 8>) : args(gemv_bf16_kernel<false, 1>);
        return;
    }
    cuda_detail::gemm_bf16_split(y, x, static_cast<const __nv_bfloat16*>(w_bf16), nullptr, T, n_in, n_out, accumulate,
                                 /*split=*/true, alpha);
}

bool matmul_wt_bf16_group(const float* x, std::int64_t T, std::int64_t n_in, const ops::ScaledProduct* p, int n) {
    using namespace cuda_detail;
    if (T != 1 || n < 1 || n > 3 || n_in % 8 != 0 || n_in > (1 << 30) || !aligned_to(x, 16)) return false;
    Bf16GemvGroup g{};
    std::int64_t rows = 0;
    for (int i = 0; i < n; ++i) {
        if (p[i].n_out <= 0 || !aligned_to(p[i].w, 16)) return false;
        g.w[i] = reinterpret_cast<const __nv_bfloat16*>(p[i].w);
        g.y[i] = p[i].y;
        g.alpha[i] = p[i].alpha;
        rows += p[i].n_out;
        g.row_end[i] = static_cast<int>(rows);
    }
    if (rows > (1 << 30)) return false;
    g.n_parts = n;
    g.n_in = static_cast<int>(n_in);
    launch_chained(__FILE__, __LINE__, gemv_bf16_group_kernel, dim3(static_cast<unsigned>(rows)), dim3(256), 0,
                   stream(), x, g);
    return true;
}

namespace {
// y_i (=|+=) LLM.int8() products of the same x [T, n_in] with n weights of the same n_in and ld
// (qgemm_int8.cuh): x's outlier columns found and the rows quantized once, then per weight the
// int8 x int8 GEMM, the epilogue and the outlier columns' GEMM.
void int8_activation_products(const float* x, std::int64_t T, const DeviceInt8Weight* const* ws, float* const* ys,
                              int n, bool accumulate, float thr) {
    using namespace cuda_detail;
    ThreadState& st = thread_state();
    const DeviceInt8Weight& w0 = *ws[0];
    const std::int64_t n_in = w0.n_in();
    const bool outl = thr > 0.0f;
    std::int8_t* xq = grow(st.x_int8, T * w0.ld(), "int8 activations (GEMM scratch)");
    float* sx = grow(st.x_scale, T, "int8 activation scales (GEMM scratch)");
    unsigned* colmax = outl ? grow(st.col_absmax, n_in, "outlier column maxima (GEMM scratch)") : nullptr;
    int* cols = outl ? grow(st.outlier_cols, n_in, "outlier columns (GEMM scratch)") : nullptr;
    int* count = outl ? grow(st.outlier_count, 1, "outlier column count (GEMM scratch)") : nullptr;
    // Outside graph capture the outlier count comes to the host (one 4-byte read per call), and
    // the outlier columns go through a tensor-core GEMM after the int8 epilogue; while a graph is
    // being recorded (no host reads) the epilogue sums them from the device count, with the
    // weight's outlier columns gathered for it (one weight per call then). (The model records only
    // one-token steps, which take the GEMV; a prefill recorded by a caller must find the scratch
    // grown, or its recording fails and the step runs eagerly.)
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    LIMARP_CUDA_CHECK(cudaStreamIsCapturing(st.stream, &capturing));
    const bool device_count = outl && capturing != cudaStreamCaptureStatusNone;
    if (device_count && n > 1) {
        for (int i = 0; i < n; ++i) int8_activation_products(x, T, ws + i, ys + i, 1, accumulate, thr);
        return;
    }
    std::int8_t* w_outl =
        device_count ? grow(st.w_outliers, n_in * w0.n_out(), "outlier weight columns (GEMM scratch)") : nullptr;
    quantize_activations_int8(xq, sx, colmax, cols, count, w_outl, x, w0, T, thr, st.stream);
    // The count goes to pinned host memory behind an event; the host waits for it only after it has
    // queued the first int8 GEMM and its epilogue, so the GPU is not idle while the count travels.
    const bool host_count = outl && !device_count;
    if (host_count) {
        LIMARP_CUDA_CHECK(cudaMemcpyAsync(st.count_host, count, sizeof(int), cudaMemcpyDeviceToHost, st.stream));
        LIMARP_CUDA_CHECK(cudaEventRecord(st.count_ready, st.stream));
    }
    int n_outl = -1;  // not read yet
    const float epi_thr = device_count ? thr : 0.0f;  // 0: the epilogue without outlier terms
    for (int i = 0; i < n; ++i) {
        const DeviceInt8Weight& w = *ws[i];
        float* y = ys[i];
        const std::int64_t n_out = w.n_out();
        const std::int64_t ldc = int8_gemm_ldc(n_out);
        std::int32_t* acc = grow(st.acc_int32, T * ldc, "int32 GEMM product (scratch)");
        const cublasStatus_t s = int8_gemm_imma(st.blas, acc, xq, w, T);
        if (s == CUBLAS_STATUS_SUCCESS) {
            int8_gemm_epilogue(y, acc, ldc, sx, x, w, T, epi_thr, cols, count, w_outl, accumulate, st.stream);
        } else {
            if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_ARCH_MISMATCH)
                cublas_check(s, "cublasGemmEx (int8 x int8 -> int32)", __FILE__, __LINE__);  // throws
            // No int8 kernel for this shape: the same quantized operands, exact in bf16, through a
            // bf16 GEMM with f32 accumulation (exact while the partial sums stay below 2^24).
            __nv_bfloat16* wb = widen_int8_weight(w);
            __nv_bfloat16* xb = grow(st.x_bf16, T * n_in, "bf16 copy of int8 activations (GEMM scratch)");
            float* p = grow(st.partial, T * n_out, "GEMM partial products");
            launch_checked(__FILE__, __LINE__, int8_to_bf16_kernel, dim3(elementwise_blocks(T * n_in, 1)), dim3(256),
                           0, st.stream, xb, xq, static_cast<int>(T), static_cast<int>(n_in), static_cast<int>(w.ld()));
            const float alpha = 1.0f, beta = 0.0f;
            LIMARP_CUBLAS_CHECK(cublasGemmEx(st.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n_out),
                                             static_cast<int>(T), static_cast<int>(n_in), &alpha, wb, CUDA_R_16BF,
                                             static_cast<int>(n_in), xb, CUDA_R_16BF, static_cast<int>(n_in), &beta, p,
                                             CUDA_R_32F, static_cast<int>(n_out), CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT));
            int8_gemm_epilogue(y, p, n_out, sx, x, w, T, epi_thr, cols, count, w_outl, accumulate, st.stream);
        }
        if (!host_count) continue;
        if (n_outl < 0) {
            LIMARP_CUDA_CHECK(cudaEventSynchronize(st.count_ready));
            n_outl = *st.count_host;
        }
        if (n_outl == 0) continue;
        // y += s_w[o] * x[:, outl] · q[o, outl]ᵀ: bf16 hi + lo x, exact q, one GEMM over 2 kp
        const std::int64_t kp = (n_outl + 63) / 64 * 64;  // zero-padded (aligned GEMM kernels)
        __nv_bfloat16* xo = grow(st.x_bf16, T * 2 * kp, "outlier activation columns, bf16 hi + lo (GEMM scratch)");
        __nv_bfloat16* wo = grow(st.w_bf16, n_out * 2 * kp, "outlier weight columns (GEMM scratch)");
        launch_checked(__FILE__, __LINE__, gather_outlier_operands_kernel<>,
                       dim3(elementwise_blocks((T + n_out) * kp, 1)), dim3(256), 0, st.stream, xo, wo, x, w.data(),
                       static_cast<int>(w.ld()), static_cast<int>(n_in), static_cast<int>(T), static_cast<int>(n_out),
                       cols, n_outl, static_cast<int>(kp));
        gemm_bf16_scaled(y, xo, wo, w.scales(), T, 2 * kp, n_out, /*accumulate=*/true, /*split=*/false, 1.0f);
    }
}
}  // namespace

void qmatmul_int8(float* y, const float* x, const DeviceInt8Weight& w, std::int64_t T, bool accumulate,
                  const QuantOptions& opt) {
    using namespace cuda_detail;
    if (T <= 0 || w.n_out() <= 0) return;
    ThreadState& st = thread_state();
    if (T == 1) {  // decode: the weight-only GEMV, from an aligned copy of x when needed
        const float* xa = x;
        if (!aligned_to(x, 16)) {
            float* c = grow(st.x_aligned, w.n_in(), "aligned copy of a GEMV input");
            LIMARP_CUDA_CHECK(cudaMemcpyAsync(c, x, static_cast<std::size_t>(w.n_in()) * sizeof(float),
                                              cudaMemcpyDeviceToDevice, st.stream));
            xa = c;
        }
        return ops::qgemv_int8(Cuda<90>{}, y, xa, w, accumulate, st.stream);
    }
    const std::int64_t n_out = w.n_out(), n_in = w.n_in();
    if (!opt.int8_activations) {  // weight-only: x split into bf16 hi + lo, f32-close products
        gemm_bf16_split(y, x, widen_int8_weight(w), w.scales(), T, n_in, n_out, accumulate, /*split=*/true);
        return;
    }
    // int8 activations (LLM.int8()): outlier columns, row quantization, int8 GEMM, fused epilogue.
    const DeviceInt8Weight* ws[1] = {&w};
    float* ys[1] = {y};
    int8_activation_products(x, T, ws, ys, 1, accumulate, opt.outlier_threshold);
}

bool qmatmul_int8_shared(const float* x, std::int64_t T, const DeviceInt8Weight* const* w, float* const* y, int n,
                         const QuantOptions& opt) {
    if (T < 2 || n < 1 || !opt.int8_activations) return false;
    for (int i = 0; i < n; ++i)
        if (w[i] == nullptr || w[i]->empty() || w[i]->n_in() != w[0]->n_in() || w[i]->ld() != w[0]->ld() ||
            w[i]->n_out() <= 0)
            return false;
    int8_activation_products(x, T, w, y, n, /*accumulate=*/false, opt.outlier_threshold);
    return true;
}

namespace {
// The GEMV form of a fused product, or false when its operands do not allow it.
bool gemv_target(const FusedGemv& p, const float* x, std::int64_t n_in, cuda_detail::QGemvTarget& t) {
    using cuda_detail::aligned_to;
    if (p.w == nullptr || p.w->empty() || p.w->n_in() != n_in || !aligned_to(x, 16)) return false;
    t.y = p.y;
    t.w = p.w;
    t.lora = {};
    if (p.b_bf16 != nullptr) {
        if (p.r <= 0 || p.r % 8 != 0 || !aligned_to(p.b_bf16, 16) || !aligned_to(p.z, 16)) return false;
        t.lora = cuda_detail::QGemvLora{static_cast<const __nv_bfloat16*>(p.b_bf16), p.z, static_cast<int>(p.r)};
    }
    return true;
}
}  // namespace

void qmatmul_int8_lora(float* y, const float* x, const DeviceInt8Weight& w, std::int64_t T, const QuantOptions& opt,
                       const void* b_bf16, const float* z, std::int64_t r, bool accumulate) {
    if (T <= 0 || w.n_out() <= 0) return;
    cuda_detail::QGemvTarget t;
    if (T == 1 && gemv_target(FusedGemv{y, &w, b_bf16, z, r}, x, w.n_in(), t))
        return ops::qgemv_int8(Cuda<90>{}, y, x, w, accumulate, stream(), t.lora);
    qmatmul_int8(y, x, w, T, accumulate, opt);
    matmul_wt_bf16(y, z, b_bf16, T, r, w.n_out(), /*accumulate=*/true);
}


bool qmatmul_int8_group(const float* x, std::int64_t T, const FusedGemv* products, int n) {
    using cuda_detail::QGemvTarget;
    if (T != 1 || n < 1 || n > cuda_detail::QGemvArgs::kMaxParts || products[0].w == nullptr) return false;
    QGemvTarget t[cuda_detail::QGemvArgs::kMaxParts];
    for (int i = 0; i < n; ++i)
        if (!gemv_target(products[i], x, products[0].w->n_in(), t[i])) return false;
    ops::qgemv_int8_group(Cuda<90>{}, x, t, n, /*accumulate=*/false, stream());
    return true;
}

bool qmatmul_int8_swiglu(float* h, const float* x, std::int64_t T, const FusedGemv& gate, const FusedGemv& up) {
    cuda_detail::QGemvTarget g, u;
    if (T != 1 || gate.w == nullptr || up.w == nullptr || gate.w->n_out() != up.w->n_out() ||
        !gemv_target(gate, x, gate.w->n_in(), g) || !gemv_target(up, x, gate.w->n_in(), u))
        return false;
    ops::qgemv_int8_swiglu(Cuda<90>{}, h, x, *gate.w, *up.w, stream(), g.lora, u.lora);
    return true;
}

void rms_norm(float* y, const float* x, const void* w, bool w_bf16, std::int64_t T, std::int64_t d, float eps) {
    if (w_bf16)
        ops::rms_norm(Cuda<90>{}, y, x, static_cast<const __nv_bfloat16*>(w), T, d, eps, stream());
    else
        ops::rms_norm(Cuda<90>{}, y, x, static_cast<const float*>(w), T, d, eps, stream());
}

void add_rms_norm(float* h, float* x, const float* a, const void* w, bool w_bf16, std::int64_t T, std::int64_t d,
                  float eps) {
    if (w_bf16)
        ops::add_rms_norm(Cuda<90>{}, h, x, a, static_cast<const __nv_bfloat16*>(w), T, d, eps, stream());
    else
        ops::add_rms_norm(Cuda<90>{}, h, x, a, static_cast<const float*>(w), T, d, eps, stream());
}

void rope_rotate_half_qk(float* q, float* k, const std::int64_t* positions, std::int64_t T, std::int64_t n_heads,
                         std::int64_t n_kv_heads, std::int64_t head_dim, double theta) {
    ops::rope_rotate_half_qk(Cuda<90>{}, q, k, positions, T, n_heads, n_kv_heads, head_dim, theta, stream());
}

void embedding_gather(float* y, const void* table, bool table_bf16, const std::int32_t* ids, std::int64_t T,
                             std::int64_t d) {
    if (table_bf16)
        ops::embedding_gather(Cuda<90>{}, y, static_cast<const __nv_bfloat16*>(table), ids, T, d, stream());
    else
        ops::embedding_gather(Cuda<90>{}, y, static_cast<const float*>(table), ids, T, d, stream());
}

void rope_rotate_half(float* x, const std::int64_t* positions, std::int64_t T, std::int64_t n_heads,
                             std::int64_t head_dim, double theta) {
    ops::rope_rotate_half(Cuda<90>{}, x, positions, T, n_heads, head_dim, theta, stream());
}

namespace {
void attention_with_cache_impl(float* out, const float* q, const float* k_new, const float* v_new, float* k_cache,
                               float* v_cache, std::int64_t C, const std::int64_t* positions, std::int64_t T,
                               const ops::AttentionShape& s, float scale, double rope_theta) {
    using namespace cuda_detail;
    if (T <= 0) return;
    ThreadState& st = thread_state();
    const std::int64_t kvd = s.n_kv_heads * s.head_dim;
    if (T == 1) {  // decode: the split-K kernel (its split workspace), which also stores the token into the ring
        const int splits = attention_decode_default_splits(s, C, device_info().sm_count);
        if (!st.attn_ws || !st.attn_ws->fits(s, splits)) {
            LIMARP_CUDA_CHECK(cudaStreamSynchronize(st.stream));
            st.attn_ws = std::make_unique<AttentionDecodeWorkspace>(s, splits);  // frees bump the epoch
        }
        AttentionDecodeConfig cfg{};
        cfg.splits = splits;
        cfg.rope_theta = rope_theta;  // 0: q and k_new are rotated already
        ops::attention_decode_and_store(Cuda<90>{}, out, q, k_new, v_new, k_cache, v_cache, C, positions, s, scale,
                                        *st.attn_ws, st.stream, cfg);
        return;
    }
    // prefill: the tiled kernel over ring + new keys, then the newest min(T, C) into the ring
    ops::attention_prefill(Cuda<90>{}, out, q, k_new, v_new, k_cache, v_cache, C, positions, T, s, scale, st.stream);
    ops::kv_cache_store_rows(Cuda<90>{}, k_cache, v_cache, k_new, v_new, C, positions, T, kvd, st.stream);
}
}  // namespace

void attention_with_cache(float* out, const float* q, const float* k_new, const float* v_new, float* k_cache,
                          float* v_cache, std::int64_t C, const std::int64_t* positions, std::int64_t T,
                          const ops::AttentionShape& s, float scale) {
    attention_with_cache_impl(out, q, k_new, v_new, k_cache, v_cache, C, positions, T, s, scale, 0.0);
}

void attention_with_cache_rope(float* out, float* q, float* k_new, const float* v_new, float* k_cache, float* v_cache,
                               std::int64_t C, const std::int64_t* positions, std::int64_t T,
                               const ops::AttentionShape& s, float scale, double theta) {
    if (!(theta > 0.0)) throw ArgumentError("attention_with_cache_rope (CUDA): the RoPE base must be > 0");
    if (T == 1) {  // decode: RoPE inside the attention launch
        attention_with_cache_impl(out, q, k_new, v_new, k_cache, v_cache, C, positions, T, s, scale, theta);
        return;
    }
    rope_rotate_half_qk(q, k_new, positions, T, s.n_heads, s.n_kv_heads, s.head_dim, theta);
    attention_with_cache_impl(out, q, k_new, v_new, k_cache, v_cache, C, positions, T, s, scale, 0.0);
}

void set_prefill_attention(PrefillAttention mode) {
    // mode 2 ("simple", from the environment only) stays an f32 kernel unless tensor cores are asked for
    auto& m = cuda_detail::prefill_attention_mode();
    if (mode == PrefillAttention::tensor_cores) m.store(0);
    else if (m.load() != 2) m.store(1);
}

PrefillAttention prefill_attention() {
    return cuda_detail::prefill_attention_mode().load() == 0 ? PrefillAttention::tensor_cores : PrefillAttention::f32;
}

void add_inplace(float* y, const float* x, std::int64_t n) { ops::add_inplace(Cuda<90>{}, y, x, n, stream()); }

void swiglu(float* h, const float* gate, const float* up, std::int64_t n) {
    ops::swiglu(Cuda<90>{}, h, gate, up, n, stream());
}

void scale_inplace(float* x, float s, std::int64_t n) {
    using namespace cuda_detail;
    if (n <= 0) return;
    launch_chained(__FILE__, __LINE__, scale_kernel, dim3(elementwise_blocks(n, 1)), dim3(256), 0, stream(), x, s,
                   static_cast<long long>(n));
}

/// The state behind `TokenSampler`.
struct TokenSampler::Impl {
    DeviceSampler sampler;  ///< the device sampler (backend/cuda/sampler.cuh)
};

TokenSampler::TokenSampler(const generate::SamplerParams& params)
    : impl_(std::make_unique<Impl>(Impl{DeviceSampler(params)})) {}
TokenSampler::~TokenSampler() = default;
TokenSampler::TokenSampler(TokenSampler&& o) noexcept = default;
TokenSampler& TokenSampler::operator=(TokenSampler&& o) noexcept = default;

std::int32_t TokenSampler::sample(float* logits, std::int64_t vocab, std::span<const std::int32_t> history) {
    return impl_->sampler.sample(Cuda<90>{}, logits, vocab, history, stream());
}

void TokenSampler::reseed(std::uint64_t seed) { impl_->sampler.reseed(seed); }

void TokenSampler::prepare(std::int64_t vocab, std::span<const std::int32_t> history) {
    impl_->sampler.prepare(Cuda<90>{}, vocab, history, stream());
}

void TokenSampler::enqueue(float* logits, std::int64_t vocab) {
    impl_->sampler.enqueue_prepared(Cuda<90>{}, logits, vocab, stream());
}

std::int32_t TokenSampler::finish() { return impl_->sampler.finish(stream()); }

std::uint64_t TokenSampler::version() const { return impl_->sampler.version(); }

void run_step(StepGraph& g, const StepKey& key, const std::function<void()>& body,
              const std::function<StepKey()>& key_now) {
    static const bool enabled = cuda_detail::env_switch_on("LIMARP_CUDA_GRAPHS");
    // Only one-token steps (decode) are recorded: a prefill is bound by the GPU's work, not by
    // launches, and recording it would evict the decode graph.
    if (!enabled || g.disabled || key.tokens != 1) return body();
    const cudaStream_t s = stream();
    // A graph uses its recording thread's stream, scratch and cuBLAS workspace: other threads
    // run eagerly (and record their own graph when they keep the model).
    if (g.exec && key == g.captured && g.stream == s) {
        LIMARP_CUDA_CHECK(cudaGraphLaunch(g.exec, s));
        return;
    }
    if (!(key == g.seen)) {
        body();
        g.seen = key_now();
        return;
    }
    // Second step with this key: every workspace has its size, nothing is allocated; record.
    LIMARP_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    const auto abandon = [&] {
        (void)cudaStreamEndCapture(s, &graph);
        if (graph) (void)cudaGraphDestroy(graph);
        (void)cudaGetLastError();
    };
    try {
        body();
    } catch (const CudaError&) {  // not capturable: run this and later steps eagerly
        abandon();
        g.disabled = true;
        return body();
    } catch (...) {
        abandon();
        throw;
    }
    if (cudaStreamEndCapture(s, &graph) != cudaSuccess || graph == nullptr) {
        if (graph) (void)cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        g.disabled = true;
        return body();
    }
    g.reset();
    const cudaError_t err = cudaGraphInstantiate(&g.exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    LIMARP_CUDA_CHECK(err);
    g.captured = key;
    g.stream = s;
    LIMARP_CUDA_CHECK(cudaGraphLaunch(g.exec, s));
}

}  // namespace cuda_api
}  // namespace limarp
