#pragma once
/// \file qgemm_int8.cuh
/// \brief The CUDA prefill product of `QuantizedLinear<Int8Rowwise, Cuda<Sm>>` with int8
/// activations (LLM.int8(): int8 x int8 on the tensor cores, outlier columns close to f32), the
/// kernels behind `cuda_api::qmatmul_int8` for T > 1.
///
/// Semantics: those of the CPU `ops::qmatmul_wt(Cpu<A>, ..., QuantizedWeight<Int8Rowwise>, ...)`
/// with `QuantOptions::int8_activations` (backend/cpu/qgemm.hpp; quantization in
/// backend/cpu/detail/qgemm_common.hpp `find_outlier_columns` / `quantize_x_int8` /
/// `quantize_row`, output in backend/cpu/detail/qgemm_int8.hpp `int8_output` / `epilogue_i8`):
/// - outlier columns: with threshold thr > 0, the columns j of x [T, n_in] in which some
///   |x[t, j]| >= thr over all T rows of the call (none for thr <= 0 or NaN);
/// - every row t is quantized with the outlier columns set to 0: s_x[t] = max_j |x[t, j]| / 127
///   (f32 division), id = 1 / s_x[t] (0 for an all-zero row, whose q and s_x are then 0),
///   q_x[t, j] = round-half-even(x[t, j] * id) clamped to [-127, 127] (`quantize_row_int8`);
/// - y[t, o] (=|+=) (s_x[t] * s_w[o]) * float(sum_j q_x[t, j] q_w[o, j])
///                  + s_w[o] * sum_{outlier j, ascending} x[t, j] * float(q_w[o, j])   (f32).
/// The integer dots are exact on both sides and the quantized bytes are the same, so the results
/// differ from the CPU only in the outlier part (x split into bf16 hi + lo: about 2^-16 relative
/// per input, step 5) and by f32 rounding (the order of the sums, the final multiply-add).
///
/// Steps (asynchronous on one stream, except one 4-byte read of the outlier count per product,
/// see step 5):
/// 1. outlier columns (thr > 0 only): `column_absmax_kernel` (columns across threads, a slice of
///    rows per block, atomicMax of the f32 bits, which order like the values for |x| >= 0) into
///    colmax [n_in] (zeroed first); `outlier_columns_kernel` (one block: per-thread column
///    counts, a block scan, ascending compaction) writes cols [n_in] and count [1];
///    while a graph is being recorded only (see step 5), `gather_outlier_weights_kernel` copies
///    the weight bytes of those columns into w_outl [count, n_out] (int8, coalesced along o for
///    the epilogue; sized n_in * n_out, the worst case, since the count is not known on the host).
/// 2. `quantize_rows_int8_kernel`: one block per row, absmax over the non-outlier columns (block
///    max), then the int8 row written 4 bytes at a time into xq [T, ld] (ld = `w.ld()`, a
///    multiple of 16), zeros in the outlier columns and in the padding n_in..ld-1; s_x [T].
/// 3. `int8_gemm_imma`: cuBLAS `cublasGemmEx` int8 x int8 -> int32 (CUBLAS_COMPUTE_32I, int32
///    alpha 1 / beta 0), in the column-major view accᵀ [n_out, T] = Wᵀ(op T) · xqᵀ: the "TN"
///    layout int8 tensor-core (IMMA) kernels need, K = ld (the zero padding adds nothing).
///    cuBLAS' requirements for IMMA with the regular data ordering: pointers 4-byte aligned
///    (16 for the best kernels; all buffers here come from cudaMalloc), lda / ldb / ldc
///    multiples of 4, m and k multiples of 4. lda = ldb = ld (multiple of 16), ldc = n_out
///    rounded up to 4 (`int8_gemm_ldc`), k = ld; m = n_out is a multiple of 4 for every Mistral
///    projection (an n_out that is not breaks "m a multiple of 4"; cuBLAS may then run a
///    non-IMMA int8 kernel or refuse). Where cuBLAS returns CUBLAS_STATUS_NOT_SUPPORTED (or
///    ARCH_MISMATCH), the caller (`cuda_api::qmatmul_int8`) widens xq and the weight to bf16
///    (exact) and runs a bf16 GEMM with f32 accumulation instead, then the same epilogue: same
///    quantization, sums exact while below 2^24 (127 * 127 * n_in, so for n_in <= 1040).
/// 4. `int8_gemm_epilogue_kernel<Acc, OUTL>`: one thread per output column o and
///    `kInt8EpilogueRows` rows t; the row scale, the weight scale, the outlier products (x read
///    as a warp-wide broadcast, w_outl coalesced, each byte reused for the block's rows) and
///    the store or accumulate in one pass. Without outliers (OUTL false) it is a plain
///    elementwise pass over acc.
///
/// 5. The outlier columns (thr > 0). Normally the count comes to the host (a 4-byte copy into
///    pinned memory behind an event, which the host waits for after it has queued steps 3 and 4,
///    so the GPU keeps working meanwhile) and `gather_outlier_operands_kernel` copies x's outlier
///    columns split into bf16 hi and lo [T, 2 Kp] and the weight's (exact in bf16, twice)
///    [n_out, 2 Kp], Kp = count rounded up to 64 with zero columns; one bf16 tensor-core GEMM
///    (cuBLAS, f32 accumulation) multiplies them (close to f32), and the product, scaled by s_w,
///    is added to y after the epilogue of step 4 (run without outlier terms). While a CUDA graph
///    is being recorded (no host reads) the count stays on the device:
///    `gather_outlier_weights_kernel` and the outlier terms of the epilogue (CUDA cores) do it
///    instead. Random 7B-shaped weights give hundreds to thousands of outlier columns per
///    4096-token prefill in down_proj's input (silu(g) * u has heavy tails; ~3,300 of 14,336),
///    far more than a trained model's few: summed on the CUDA cores they made the 4096-token
///    prefill 5x slower (H200); as this GEMM the whole outlier path costs about 15% over
///    threshold 0 (H100, benchmarks/NOTES.md, session 7).
/// Several weights that share x (q/k/v, gate/up: `cuda_api::qmatmul_int8_shared`) run steps 1
/// and 2 once, then steps 3-5 per weight.
///
/// Cost: step 1 reads x once; the outlier GEMM of step 5 is 2 x T * n_out * Kp multiply-adds
/// on the tensor cores (the recorded-graph variant: T * n_out * count FMAs on the CUDA cores).

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "limarp/backend/cuda/activation.cuh"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/device_int8_weight.cuh"

/// \cond
namespace limarp::cuda_detail {

inline constexpr int kInt8EpilogueRows = 8;  // rows t per epilogue thread (reuse of each w_outl byte)
inline constexpr int kColumnAbsmaxRows = 32; // rows per block of column_absmax_kernel

// ldc of the int32 product [T, ldc]: n_out rounded up to a multiple of 4 (a cuBLAS IMMA requirement).
inline std::int64_t int8_gemm_ldc(std::int64_t n_out) { return (n_out + 3) / 4 * 4; }

// colmax[j] = max(colmax[j], max over this block's rows of |x[t, j]|), as f32 bits (non-negative
// floats order like their bit patterns). colmax must start at 0.
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(256)
    column_absmax_kernel(unsigned* __restrict__ colmax, const float* __restrict__ x, int T, int n_in) {
    const int j = static_cast<int>(blockIdx.x) * 256 + static_cast<int>(threadIdx.x);
    if (j >= n_in) return;
    const int t0 = static_cast<int>(blockIdx.y) * kColumnAbsmaxRows;
    const int t1 = min(T, t0 + kColumnAbsmaxRows);
    float m = 0.0f;
    for (int t = t0; t < t1; ++t) m = fmaxf(m, fabsf(__ldg(x + static_cast<long long>(t) * n_in + j)));
    if (m > 0.0f) atomicMax(colmax + j, __float_as_uint(m));
}

// True when column j is an outlier (some |x| >= thr).
__device__ __forceinline__ bool is_outlier(const unsigned* colmax, int j, float thr) {
    return __uint_as_float(colmax[j]) >= thr;
}

// One block of 1024 threads: cols[0..count) = the outlier columns in ascending order, *count.
// Thread i owns a contiguous range of columns; a block-wide exclusive scan of the per-thread
// counts gives each its first slot.
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(1024)
    outlier_columns_kernel(int* __restrict__ cols, int* __restrict__ count, const unsigned* __restrict__ colmax,
                           int n_in, float thr) {
    __shared__ int warp_total[32];
    const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int per = (n_in + static_cast<int>(blockDim.x) - 1) / static_cast<int>(blockDim.x);
    const int j0 = min(n_in, tid * per), j1 = min(n_in, j0 + per);
    int c = 0;
    for (int j = j0; j < j1; ++j) c += is_outlier(colmax, j, thr) ? 1 : 0;
    int incl = c;  // inclusive scan over the warp
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        const int n_warps = static_cast<int>(blockDim.x) / 32;
        int w = lane < n_warps ? warp_total[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += v;
        }
        warp_total[lane] = w;  // inclusive prefix over the warps
    }
    __syncthreads();
    int pos = incl - c + (warp > 0 ? warp_total[warp - 1] : 0);
    for (int j = j0; j < j1; ++j)
        if (is_outlier(colmax, j, thr)) cols[pos++] = j;
    if (tid == static_cast<int>(blockDim.x) - 1) *count = pos;
}

// w_outl[i, o] = q[o, cols[i]] for i < *count (rows i split over blockIdx.y).
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(256)
    gather_outlier_weights_kernel(std::int8_t* __restrict__ w_outl, const std::int8_t* __restrict__ q, int ld,
                                  int n_out, const int* __restrict__ cols, const int* __restrict__ count) {
    const int o = static_cast<int>(blockIdx.x) * 256 + static_cast<int>(threadIdx.x);
    if (o >= n_out) return;
    const int K = *count;
    for (int i = static_cast<int>(blockIdx.y); i < K; i += static_cast<int>(gridDim.y))
        w_outl[static_cast<long long>(i) * n_out + o] = q[static_cast<long long>(o) * ld + cols[i]];
}

// The outlier columns as the operands of one bf16 tensor-core GEMM with the inner dimension 2 Kp:
// xo[t, i] = hi(x[t, cols[i]]) and xo[t, Kp + i] = lo(x[t, cols[i]]) (x split into bf16 hi + lo:
// about 2^-16 relative), wo[o, i] = wo[o, Kp + i] = q[o, cols[i]] (exact in bf16), for i < K;
// zeros for K <= i < Kp. So xo · woᵀ = x[:, outl] · q[:, outl]ᵀ close to f32 in one product, and
// Kp (a multiple of 64) keeps cuBLAS on its aligned sm_90 kernels (with an odd K it ran an old
// unaligned kernel, several times slower: benchmarks/NOTES.md, session 7).
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(256)
    gather_outlier_operands_kernel(__nv_bfloat16* __restrict__ xo, __nv_bfloat16* __restrict__ wo,
                                   const float* __restrict__ x, const std::int8_t* __restrict__ q, int ld, int n_in,
                                   int T, int n_out, const int* __restrict__ cols, int K, int Kp) {
    const long long nx = static_cast<long long>(T) * Kp, n = nx + static_cast<long long>(n_out) * Kp;
    const __nv_bfloat16 zero = __float2bfloat16_rn(0.0f);
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        if (i < nx) {
            const long long t = i / Kp;
            const int c = static_cast<int>(i % Kp);
            __nv_bfloat16 hi = zero, lo = zero;
            if (c < K) {
                const float v = x[t * n_in + __ldg(cols + c)];
                hi = __float2bfloat16_rn(v);
                lo = __float2bfloat16_rn(v - __bfloat162float(hi));
            }
            xo[t * 2 * Kp + c] = hi;
            xo[t * 2 * Kp + Kp + c] = lo;
        } else {
            const long long j = i - nx, o = j / Kp;
            const int c = static_cast<int>(j % Kp);
            const __nv_bfloat16 v = c < K ? __float2bfloat16_rn(static_cast<float>(q[o * ld + __ldg(cols + c)])) : zero;
            wo[o * 2 * Kp + c] = v;
            wo[o * 2 * Kp + Kp + c] = v;
        }
    }
}

// round-half-even(v * id) clamped to [-127, 127], as `quantize_row_int8` (no FMA, no fast math).
__device__ __forceinline__ int quantize_int8(float v, float id) {
    return max(-127, min(127, __float2int_rn(__fmul_rn(v, id))));
}

// One block per row t: s_x[t] = absmax / 127 over the non-outlier columns (OUTL: colmax >= thr
// marks an outlier), xq[t, 0..ld) = the int8 row with zeros in the outlier and padding columns.
template <bool OUTL>
__global__ void __launch_bounds__(256)
    quantize_rows_int8_kernel(std::int8_t* __restrict__ xq, float* __restrict__ sx, const float* __restrict__ x,
                              int n_in, int ld, const unsigned* __restrict__ colmax, float thr) {
    __shared__ float scratch[32];
    const long long t = blockIdx.x;
    const float* row = x + t * n_in;
    float m = 0.0f;
    for (int j = static_cast<int>(threadIdx.x); j < n_in; j += static_cast<int>(blockDim.x)) {
        if (OUTL && is_outlier(colmax, j, thr)) continue;
        m = fmaxf(m, fabsf(row[j]));
    }
    const float amax = block_max(m, scratch);
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    std::int8_t* q = xq + t * ld;
    for (int j4 = static_cast<int>(threadIdx.x) * 4; j4 < ld; j4 += static_cast<int>(blockDim.x) * 4) {
        int v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int j = j4 + i;
            v[i] = (j < n_in && !(OUTL && is_outlier(colmax, j, thr))) ? quantize_int8(row[j], id) : 0;
        }
        *reinterpret_cast<char4*>(q + j4) = make_char4(static_cast<signed char>(v[0]), static_cast<signed char>(v[1]),
                                                       static_cast<signed char>(v[2]), static_cast<signed char>(v[3]));
    }
    if (threadIdx.x == 0) sx[t] = d;
}

__device__ __forceinline__ float acc_to_f32(std::int32_t a) { return static_cast<float>(a); }
__device__ __forceinline__ float acc_to_f32(float a) { return a; }

// y[t, o] (=|+=) (s_x[t] * s_w[o]) * float(acc[t, o]) + s_w[o] * sum_i x[t, cols[i]] * w_outl[i, o]
// (the second term only with OUTL, over i < *count). Thread: column o, rows t0..t0+kInt8EpilogueRows-1.
template <class Acc, bool OUTL>
__global__ void __launch_bounds__(256)
    int8_gemm_epilogue_kernel(float* __restrict__ y, const Acc* __restrict__ acc, int ldc, const float* __restrict__ sx,
                              const float* __restrict__ sw, const float* __restrict__ x, int n_in,
                              const int* __restrict__ cols, const int* __restrict__ count,
                              const std::int8_t* __restrict__ w_outl, int T, int n_out, bool accumulate) {
    constexpr int R = kInt8EpilogueRows;
    const int o = static_cast<int>(blockIdx.x) * 256 + static_cast<int>(threadIdx.x);
    if (o >= n_out) return;
    const int t0 = static_cast<int>(blockIdx.y) * R;
    const int rows = min(R, T - t0);
    const float s_w = sw[o];
    float od[R];  // the outlier sums of the R rows (OUTL only)
#pragma unroll
    for (int r = 0; r < R; ++r) od[r] = 0.0f;
    int K = 0;
    if constexpr (OUTL) {
        K = *count;
        const float* xt = x + static_cast<long long>(t0) * n_in;
        for (int i = 0; i < K; ++i) {
            const float wi = static_cast<float>(w_outl[static_cast<long long>(i) * n_out + o]);
            const int c = __ldg(cols + i);
#pragma unroll
            for (int r = 0; r < R; ++r)
                if (r < rows) od[r] = fmaf(__ldg(xt + static_cast<long long>(r) * n_in + c), wi, od[r]);
        }
    } else {
        (void)x, (void)n_in, (void)cols, (void)count, (void)w_outl;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r >= rows) break;
        const long long t = t0 + r;
        float v = __fmul_rn(__fmul_rn(sx[t], s_w), acc_to_f32(acc[t * ldc + o]));
        if (K > 0) v = __fadd_rn(v, __fmul_rn(s_w, od[r]));
        float* yp = y + t * n_out + o;
        *yp = accumulate ? *yp + v : v;
    }
}

// Step 1 and 2 of the file comment: outlier columns (when thr > 0: colmax, cols, count, w_outl),
// then xq [T, w.ld()] and sx [T]. colmax [n_in], cols [n_in], count [1] and w_outl
// [n_in * n_out] are only touched when thr > 0.
// w_outl null: the weight columns are not gathered (the caller reads the count on the host and
// multiplies the outlier columns with `gather_outlier_operands_kernel` + a GEMM instead).
inline void quantize_activations_int8(std::int8_t* xq, float* sx, unsigned* colmax, int* cols, int* count,
                                      std::int8_t* w_outl, const float* x, const DeviceInt8Weight& w, std::int64_t T,
                                      float thr, cudaStream_t stream) {
    const int n_in = static_cast<int>(w.n_in()), n_out = static_cast<int>(w.n_out()), ld = static_cast<int>(w.ld());
    const bool outl = thr > 0.0f;
    if (outl) {
        LIMARP_CUDA_CHECK(cudaMemsetAsync(colmax, 0, static_cast<std::size_t>(n_in) * sizeof(unsigned), stream));
        const dim3 g_cols(static_cast<unsigned>((n_in + 255) / 256),
                          static_cast<unsigned>((T + kColumnAbsmaxRows - 1) / kColumnAbsmaxRows));
        launch_checked(__FILE__, __LINE__, column_absmax_kernel<>, g_cols, dim3(256), 0, stream, colmax, x,
                       static_cast<int>(T), n_in);
        launch_checked(__FILE__, __LINE__, outlier_columns_kernel<>, dim3(1), dim3(1024), 0, stream, cols, count, colmax,
                       n_in, thr);
        if (w_outl) {
            const dim3 g_gather(static_cast<unsigned>((n_out + 255) / 256),
                                static_cast<unsigned>(n_in < 16 ? n_in : 16));
            launch_checked(__FILE__, __LINE__, gather_outlier_weights_kernel<>, g_gather, dim3(256), 0, stream, w_outl,
                           w.data(), ld, n_out, cols, count);
        }
        launch_checked(__FILE__, __LINE__, quantize_rows_int8_kernel<true>, dim3(static_cast<unsigned>(T)), dim3(256), 0,
                       stream, xq, sx, x, n_in, ld, colmax, thr);
    } else {
        launch_checked(__FILE__, __LINE__, quantize_rows_int8_kernel<false>, dim3(static_cast<unsigned>(T)), dim3(256),
                       0, stream, xq, sx, x, n_in, ld, static_cast<const unsigned*>(nullptr), thr);
    }
}

// Step 3: acc [T, ldc] = xq · Wᵀ in int32 (ldc = int8_gemm_ldc(n_out)). Returns cuBLAS' status
// (CUBLAS_STATUS_NOT_SUPPORTED: no int8 kernel for this shape; the caller falls back).
inline cublasStatus_t int8_gemm_imma(cublasHandle_t blas, std::int32_t* acc, const std::int8_t* xq,
                                     const DeviceInt8Weight& w, std::int64_t T) {
    const std::int32_t alpha = 1, beta = 0;
    const int ld = static_cast<int>(w.ld());
    // Column-major view: accᵀ [n_out, T] = op_T(W [ld, n_out]) · xqᵀ [ld, T].
    return cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.n_out()), static_cast<int>(T), ld, &alpha,
                        w.data(), CUDA_R_8I, ld, xq, CUDA_R_8I, ld, &beta, acc, CUDA_R_32I,
                        static_cast<int>(int8_gemm_ldc(w.n_out())), CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT);
}

// Step 4 for an int32 (`Acc` = std::int32_t) or f32 (the bf16 fallback) product acc [T, ldc].
// `thr` > 0 selects the outlier terms (cols, count, w_outl as written by
// quantize_activations_int8).
template <class Acc>
void int8_gemm_epilogue(float* y, const Acc* acc, std::int64_t ldc, const float* sx, const float* x,
                        const DeviceInt8Weight& w, std::int64_t T, float thr, const int* cols, const int* count,
                        const std::int8_t* w_outl, bool accumulate, cudaStream_t stream) {
    const int n_out = static_cast<int>(w.n_out());
    const dim3 grid(static_cast<unsigned>((n_out + 255) / 256),
                    static_cast<unsigned>((T + kInt8EpilogueRows - 1) / kInt8EpilogueRows));
    const auto run = [&](auto kernel) {
        launch_checked(__FILE__, __LINE__, kernel, grid, dim3(256), 0, stream, y, acc, static_cast<int>(ldc), sx,
                       w.scales(), x, static_cast<int>(w.n_in()), cols, count, w_outl, static_cast<int>(T), n_out,
                       accumulate);
    };
    if (thr > 0.0f)
        run(int8_gemm_epilogue_kernel<Acc, true>);
    else
        run(int8_gemm_epilogue_kernel<Acc, false>);
}

}  // namespace limarp::cuda_detail
/// \endcond
