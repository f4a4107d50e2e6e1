#pragma once
/// \file attention_prefill.cuh
/// \brief CUDA prefill attention over the rolling KV cache: `ops::attention_prefill` (T new tokens
/// at consecutive positions attend, causally and inside the sliding window, to the cached keys and
/// to each other; tiled, online softmax; on the tensor cores with bf16 operands by default, see
/// attention_flash.cuh, or f32 on the CUDA cores) and `ops::kv_cache_store_rows` (the newest
/// min(T, C) keys and values into the ring afterwards).
///
/// Same function as the CPU `ops::attention_sliding_window` (and the decode kernel for T = 1).
/// Cache layout: the CPU `KvCache`'s, f32 rings [C, n_kv_heads * head_dim], position p in row
/// p % C. Keys of positions before p0 = positions[0] come from the ring, the others from k_new:
/// the ring is written only after the attention (`kv_cache_store_rows`), so it still holds every
/// earlier key a query needs (C >= window_keys - 1, or C >= p0 without a window).
///
/// Kernels. By default (and for head_dim 32, 64, 128 on sm_80+) the tensor-core kernel of
/// attention_flash.cuh, with bf16 operands. The f32 kernels below (`cuda_api::set_prefill_attention`
/// with `PrefillAttention::f32`, or LIMARP_CUDA_PREFILL_ATTENTION=f32): for head_dim >= 16,
/// `attention_prefill_tiled_kernel<HD, NREP>` (the f32 default): blocks
/// of 64 query rows and tiles of 64 keys, each thread a 4 x 4 block of scores and 4 rows of the
/// output (register tiling: 16 FMAs per 8 shared-memory loads in the score loop, 32 per 12 in
/// P · V), 115 KB of shared memory at head_dim 128. For head_dim 8 (or with the environment
/// variable LIMARP_CUDA_PREFILL_ATTENTION=simple, for measurements), the first version:
/// `attention_prefill_kernel<HD, NREP>`: a block owns kPrefillRows = 32 query rows —
/// 32 / NREP consecutive tokens times the NREP query heads of one kv head — so each key and value
/// tile is loaded once for all heads that share it. 256 threads; a query row is owned by 8
/// consecutive lanes (HD / 8 output dimensions each). Per tile of kPrefillKeys = 32 key positions
/// (only the tiles between the first token's window start and the last token's position: cost
/// O(T x window)): K and V into shared memory (f32), scores of the 32 x 32 tile (each lane 4
/// keys, a dot product over HD from shared memory), the mask (key after the query, or before its
/// window), the online-softmax update with the row max and sum reduced over the row's 8 lanes by
/// shuffles, then O += P · V. Shared memory: Q, K and V tiles (3 x 32 x HD floats, Q and K rows
/// padded by one float against bank conflicts) and P (32 x 32), 52 KB at HD = 128 (opted in once
/// per device). Summation order is fixed: results are
/// reproducible run to run; the f32 kernels differ from the CPU's by f32 rounding, the tensor-core
/// kernel by its bf16 operands (1e-3..1e-2 relative).
///
/// Supported: head_dim 8..256 (powers of two), n_heads / n_kv_heads 1, 2, 4 or 8 (as the decode
/// kernel). Floor and measurements: benchmarks/NOTES.md ("CUDA model").

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "limarp/backend/attention_shape.hpp"
#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/attention.cuh"
#include "limarp/backend/cuda/attention_flash.cuh"
#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/core/error.hpp"

namespace limarp {
/// \cond
namespace cuda_detail {

inline constexpr int kPrefillRows = 32;     // query rows per block (tokens x heads of one kv head)
inline constexpr int kPrefillKeys = 32;     // key positions per tile
inline constexpr int kPrefillThreads = 256; // 8 lanes per query row

// Shared-memory row strides: Q and K padded by one float (the score loop reads 4 rows of Q and
// 8 rows of K at the same d: distinct banks), V unpadded (a lane reads dims sub, sub + 8, ...).
template <int HD>
constexpr int prefill_smem_floats() {
    return kPrefillRows * (HD + 1) + kPrefillKeys * (HD + 1) + kPrefillKeys * HD + kPrefillRows * kPrefillKeys;
}

template <int HD, int NREP>
__global__ void __launch_bounds__(kPrefillThreads)
    attention_prefill_kernel(float* __restrict__ out, const float* __restrict__ q, const float* __restrict__ k_new,
                             const float* __restrict__ v_new, const float* __restrict__ k_cache,
                             const float* __restrict__ v_cache, int C, const std::int64_t* __restrict__ positions,
                             int T, int n_kv_heads, int window, float scale) {
    constexpr int QT = kPrefillRows / NREP;  // tokens per block
    constexpr int DL = HD / 8;               // output dims per lane: sub, sub + 8, ...
    constexpr int LD = HD + 1;               // padded stride of Qs and Ks
    extern __shared__ float smem[];
    float* Qs = smem;                          // [32][LD]
    float* Ks = Qs + kPrefillRows * LD;        // [32][LD]
    float* Vs = Ks + kPrefillKeys * LD;        // [32][HD]
    float* Ps = Vs + kPrefillKeys * HD;        // [32][32]

    const int g = blockIdx.y;
    const int t0 = blockIdx.x * QT;
    const int nt = min(QT, T - t0);
    const long long p0 = positions[0];
    const int qd = n_kv_heads * NREP * HD, kvd = n_kv_heads * HD;
    const int tid = threadIdx.x;
    const int row = tid >> 3, sub = tid & 7;
    const int tt = row / NREP, rh = row % NREP;
    const bool row_valid = tt < nt;
    const long long qpos = p0 + t0 + tt;

    // Q tile: row (tt, rh) = q[t0 + tt, (g * NREP + rh) * HD ...], pre-scaled.
    for (int i = tid; i < kPrefillRows * HD; i += kPrefillThreads) {
        const int r = i / HD, d = i % HD, rt = r / NREP, rr = r % NREP;
        Qs[r * LD + d] = rt < nt ? q[static_cast<long long>(t0 + rt) * qd + (g * NREP + rr) * HD + d] * scale : 0.0f;
    }

    float o[DL];
#pragma unroll
    for (int i = 0; i < DL; ++i) o[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    const long long last = p0 + t0 + nt - 1;
    const long long first = window > 0 ? max(0LL, p0 + t0 - window + 1) : 0LL;
    for (long long k0 = first; k0 <= last; k0 += kPrefillKeys) {
        __syncthreads();  // the previous tile's K, V, P are consumed
        for (int i = tid; i < kPrefillKeys * HD; i += kPrefillThreads) {
            const int j = i / HD, d = i % HD;
            const long long kp = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (kp <= last) {
                if (kp < p0) {
                    const long long r = (kp % C) * kvd + g * HD + d;
                    kv = k_cache[r];
                    vv = v_cache[r];
                } else {
                    const long long r = (kp - p0) * kvd + g * HD + d;
                    kv = k_new[r];
                    vv = v_new[r];
                }
            }
            Ks[j * LD + d] = kv;
            Vs[i] = vv;
        }
        __syncthreads();
        // scores: this lane's keys sub, sub + 8, sub + 16, sub + 24
        float s[4];
        float tmax = -INFINITY;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int j = sub + 8 * c;
            const long long kp = k0 + j;
            float acc = 0.0f;
#pragma unroll 8
            for (int d = 0; d < HD; ++d) acc += Qs[row * LD + d] * Ks[j * LD + d];
            const bool visible = row_valid && kp <= qpos && (window <= 0 || kp > qpos - window);
            s[c] = visible ? acc : -INFINITY;
            tmax = fmaxf(tmax, s[c]);
        }
#pragma unroll
        for (int off = 1; off < 8; off <<= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
        const float m_new = fmaxf(m, tmax);
        float psum = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const float p = m_new == -INFINITY ? 0.0f : __expf(s[c] - m_new);
            Ps[row * kPrefillKeys + sub + 8 * c] = p;
            psum += p;
        }
#pragma unroll
        for (int off = 1; off < 8; off <<= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
        const float corr = m == -INFINITY ? 0.0f : __expf(m - m_new);
        l = l * corr + psum;
        m = m_new;
        __syncwarp();
#pragma unroll
        for (int i = 0; i < DL; ++i) o[i] *= corr;
        for (int j = 0; j < kPrefillKeys; ++j) {
            const float p = Ps[row * kPrefillKeys + j];
#pragma unroll
            for (int i = 0; i < DL; ++i) o[i] += p * Vs[j * HD + i * 8 + sub];
        }
    }
    if (!row_valid) return;
    float* dst = out + static_cast<long long>(t0 + tt) * qd + (g * NREP + rh) * HD + sub;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int i = 0; i < DL; ++i) dst[i * 8] = o[i] * inv;
}

// The register-tiled variant (head_dim >= 16, the default): 64 query rows x 64 keys per tile,
// 256 threads as a 16 x 16 grid; thread (ty, tx) computes the scores of rows 4ty..4ty+3 with
// keys tx, tx + 16, tx + 32, tx + 48 (16 FMAs per 8 shared loads), keeps the softmax state of its
// 4 rows (reduced over the 16 tx lanes by shuffles) and accumulates O for its 4 rows at dims
// tx, tx + 16, ... (HD / 16 of them). Shared: Q, K (rows padded by one float), V, P (padded).
inline constexpr int kTiledRows = 64;
inline constexpr int kTiledKeys = 64;

template <int HD>
constexpr int tiled_smem_floats() {
    return kTiledRows * (HD + 1) + kTiledKeys * (HD + 1) + kTiledKeys * HD + kTiledRows * (kTiledKeys + 1);
}

template <int HD, int NREP>
__global__ void __launch_bounds__(256)
    attention_prefill_tiled_kernel(float* __restrict__ out, const float* __restrict__ q, const float* __restrict__ k_new,
                                   const float* __restrict__ v_new, const float* __restrict__ k_cache,
                                   const float* __restrict__ v_cache, int C, const std::int64_t* __restrict__ positions,
                                   int T, int n_kv_heads, int window, float scale) {
    constexpr int QT = kTiledRows / NREP;  // tokens per block
    constexpr int DT = HD / 16;            // output dims per thread
    constexpr int LD = HD + 1, LP = kTiledKeys + 1;
    extern __shared__ float smem[];
    float* Qs = smem;                       // [64][LD]
    float* Ks = Qs + kTiledRows * LD;       // [64][LD]
    float* Vs = Ks + kTiledKeys * LD;       // [64][HD]
    float* Ps = Vs + kTiledKeys * HD;       // [64][LP]

    const int g = blockIdx.y;
    const int t0 = blockIdx.x * QT;
    const int nt = min(QT, T - t0);
    const long long p0 = positions[0];
    const int qd = n_kv_heads * NREP * HD, kvd = n_kv_heads * HD;
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;

    for (int i = tid; i < kTiledRows * HD; i += 256) {
        const int r = i / HD, d = i % HD, rt = r / NREP, rr = r % NREP;
        Qs[r * LD + d] = rt < nt ? q[static_cast<long long>(t0 + rt) * qd + (g * NREP + rr) * HD + d] * scale : 0.0f;
    }
    long long qpos[4];
    bool valid[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int tt = (ty * 4 + r) / NREP;
        valid[r] = tt < nt;
        qpos[r] = p0 + t0 + tt;
    }
    float o[4][DT];
    float m[4], l[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DT; ++i) o[r][i] = 0.0f;
    }

    const long long last = p0 + t0 + nt - 1;
    const long long first = window > 0 ? max(0LL, p0 + t0 - window + 1) : 0LL;
    for (long long k0 = first; k0 <= last; k0 += kTiledKeys) {
        __syncthreads();  // the previous tile is consumed (and Q is stored, the first time)
        for (int i = tid; i < kTiledKeys * HD; i += 256) {
            const int j = i / HD, d = i % HD;
            const long long kp = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (kp <= last) {
                const long long r = kp < p0 ? (kp % C) * kvd + g * HD + d : (kp - p0) * kvd + g * HD + d;
                kv = kp < p0 ? k_cache[r] : k_new[r];
                vv = kp < p0 ? v_cache[r] : v_new[r];
            }
            Ks[j * LD + d] = kv;
            Vs[i] = vv;
        }
        __syncthreads();
        float sc[4][4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int c = 0; c < 4; ++c) sc[r][c] = 0.0f;
#pragma unroll 4
        for (int d = 0; d < HD; ++d) {
            float a[4], b[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) a[r] = Qs[(ty * 4 + r) * LD + d];
#pragma unroll
            for (int c = 0; c < 4; ++c) b[c] = Ks[(tx + 16 * c) * LD + d];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c) sc[r][c] += a[r] * b[c];
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            float tmax = -INFINITY;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const long long kp = k0 + tx + 16 * c;
                const bool vis = valid[r] && kp <= qpos[r] && (window <= 0 || kp > qpos[r] - window);
                sc[r][c] = vis ? sc[r][c] : -INFINITY;
                tmax = fmaxf(tmax, sc[r][c]);
            }
#pragma unroll
            for (int off = 1; off < 16; off <<= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
            const float m_new = fmaxf(m[r], tmax);
            float psum = 0.0f;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const float p = m_new == -INFINITY ? 0.0f : __expf(sc[r][c] - m_new);
                Ps[(ty * 4 + r) * LP + tx + 16 * c] = p;
                psum += p;
            }
#pragma unroll
            for (int off = 1; off < 16; off <<= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
            const float corr = m[r] == -INFINITY ? 0.0f : __expf(m[r] - m_new);
            l[r] = l[r] * corr + psum;
            m[r] = m_new;
#pragma unroll
            for (int i = 0; i < DT; ++i) o[r][i] *= corr;
        }
        __syncthreads();  // P complete
#pragma unroll 4
        for (int j = 0; j < kTiledKeys; ++j) {
            float p[4], v[DT];
#pragma unroll
            for (int r = 0; r < 4; ++r) p[r] = Ps[(ty * 4 + r) * LP + j];
#pragma unroll
            for (int i = 0; i < DT; ++i) v[i] = Vs[j * HD + tx + 16 * i];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int i = 0; i < DT; ++i) o[r][i] += p[r] * v[i];
        }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        if (!valid[r]) continue;
        const int row = ty * 4 + r, tt = row / NREP, rh = row % NREP;
        float* dst = out + static_cast<long long>(t0 + tt) * qd + (g * NREP + rh) * HD + tx;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
        for (int i = 0; i < DT; ++i) dst[16 * i] = o[r][i] * inv;
    }
}

// Rows T - keep .. T - 1 of k_new / v_new into ring rows (p0 + t) % C.
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void kv_cache_store_rows_kernel(float* k_cache, float* v_cache, const float* k_new, const float* v_new,
                                           int C, const std::int64_t* positions, int T, int keep, int kvd) {
    const long long p0 = positions[0];
    const long long n = static_cast<long long>(keep) * kvd;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long t = T - keep + i / kvd, d = i % kvd;
        const long long slot = (p0 + t) % C;
        k_cache[slot * kvd + d] = k_new[t * kvd + d];
        v_cache[slot * kvd + d] = v_new[t * kvd + d];
    }
}

template <int HD, int NREP>
void launch_attention_prefill(float* out, const float* q, const float* k_new, const float* v_new,
                              const float* k_cache, const float* v_cache, std::int64_t C,
                              const std::int64_t* positions, std::int64_t T, const ops::AttentionShape& s,
                              float scale, cudaStream_t stream) {
    // mode 2 (LIMARP_CUDA_PREFILL_ATTENTION=simple) selects the first kernel (kept for measurements)
    const bool simple = prefill_attention_mode().load(std::memory_order_relaxed) == 2;
    constexpr int tiled_smem = tiled_smem_floats<HD>() * static_cast<int>(sizeof(float));
    // the tiled kernel needs up to 209 KB (head_dim 256): devices with less use the first kernel
    if constexpr (HD >= 16) if (!simple && tiled_smem <= device_info().max_smem_optin) {
        constexpr int smem = tiled_smem;
        opt_in_dynamic_smem<attention_prefill_tiled_kernel<HD, NREP>>(smem);
        constexpr int QT = kTiledRows / NREP;
        const dim3 grid(static_cast<unsigned>((T + QT - 1) / QT), static_cast<unsigned>(s.n_kv_heads));
        launch_checked(__FILE__, __LINE__, attention_prefill_tiled_kernel<HD, NREP>, grid, dim3(256),
                       static_cast<std::size_t>(smem), stream, out, q, k_new, v_new, k_cache, v_cache,
                       static_cast<int>(C), positions, static_cast<int>(T), static_cast<int>(s.n_kv_heads),
                       static_cast<int>(s.window_keys), scale);
        return;
    }
    constexpr int smem = prefill_smem_floats<HD>() * static_cast<int>(sizeof(float));
    opt_in_dynamic_smem<attention_prefill_kernel<HD, NREP>>(smem);
    constexpr int QT = kPrefillRows / NREP;
    const dim3 grid(static_cast<unsigned>((T + QT - 1) / QT), static_cast<unsigned>(s.n_kv_heads));
    launch_checked(__FILE__, __LINE__, attention_prefill_kernel<HD, NREP>, grid, dim3(kPrefillThreads),
                   static_cast<std::size_t>(smem), stream, out, q, k_new, v_new, k_cache, v_cache, static_cast<int>(C),
                   positions, static_cast<int>(T), static_cast<int>(s.n_kv_heads), static_cast<int>(s.window_keys),
                   scale);
}

}  // namespace cuda_detail
/// \endcond

namespace ops {

/// Prefill attention on the GPU (see the file comment): out[t] for the T new tokens at positions
/// p0 = positions[0] .. p0 + T - 1 (device memory), keys and values before p0 from the rings,
/// the rest from k_new / v_new. Asynchronous on `stream`; the launch is checked. The kernel is the
/// one `cuda_api::set_prefill_attention` chose: the tensor cores (bf16 operands) by default when
/// head_dim is 32, 64 or 128, the device is sm_80+, and q, out are 8-byte and k_new, v_new and the
/// rings 16-byte aligned; the f32 kernels otherwise. The tensor-core path stages bf16 keys and
/// values in a per-thread scratch: a thread's prefills must all use one stream (as `cuda_api`
/// does).
/// \pre positions consecutive; the rings hold every earlier key a query needs (C >= window_keys - 1
///      when windowed, C >= p0 without a window) and are not yet written with the new tokens;
///      out does not overlap any input.
/// \throws ArgumentError for an unsupported head_dim or n_heads / n_kv_heads; CudaError when the
///         launch fails
template <int Sm>
void attention_prefill(Cuda<Sm>, float* out /*[T, n_heads*head_dim]*/, const float* q /*[T, n_heads*head_dim]*/,
                       const float* k_new /*[T, kv_dim]*/, const float* v_new /*[T, kv_dim]*/,
                       const float* k_cache /*[C, kv_dim]*/, const float* v_cache /*[C, kv_dim]*/, std::int64_t C,
                       const std::int64_t* positions /*[T]*/, std::int64_t T, const AttentionShape& s, float scale,
                       cudaStream_t stream = nullptr) {
    if (T <= 0) return;
    cuda_detail::check_attention_heads("attention_prefill", s);  // the decode kernel's set: what prefills, decodes
    if (C < 1) throw ArgumentError("attention_prefill (CUDA): the ring needs at least one row");
    if (cuda_detail::prefill_attention_mode().load(std::memory_order_relaxed) == 0 &&
        cuda_detail::attention_mma_supported(s) && cuda_detail::aligned_to(q, 8) && cuda_detail::aligned_to(out, 8) &&
        cuda_detail::aligned_to(k_new, 16) && cuda_detail::aligned_to(v_new, 16) &&
        cuda_detail::aligned_to(k_cache, 16) && cuda_detail::aligned_to(v_cache, 16))
        return cuda_detail::attention_prefill_mma(out, q, k_new, v_new, k_cache, v_cache, C, positions, T, s, scale,
                                                  stream);
    cuda_detail::with_attention_layout<8, 16, 32, 64, 128, 256>(s, [&](auto hd, auto rep) {
        cuda_detail::launch_attention_prefill<decltype(hd)::value, decltype(rep)::value>(
            out, q, k_new, v_new, k_cache, v_cache, C, positions, T, s, scale, stream);
    });
}

/// After `attention_prefill`: the newest min(T, C) new keys and values into ring rows pos % C
/// (positions[0] read on the device). Asynchronous on `stream`.
template <int Sm>
void kv_cache_store_rows(Cuda<Sm>, float* k_cache, float* v_cache, const float* k_new, const float* v_new,
                         std::int64_t C, const std::int64_t* positions, std::int64_t T, std::int64_t kv_dim,
                         cudaStream_t stream = nullptr) {
    if (T <= 0 || kv_dim <= 0) return;
    const std::int64_t keep = T < C ? T : C, n = keep * kv_dim;
    const std::int64_t blocks = (n + 255) / 256;
    cuda_detail::launch_checked(__FILE__, __LINE__, cuda_detail::kv_cache_store_rows_kernel<>,
                                dim3(static_cast<unsigned>(blocks > 4096 ? 4096 : blocks)), dim3(256), 0, stream,
                                k_cache, v_cache, k_new, v_new, static_cast<int>(C), positions, static_cast<int>(T),
                                static_cast<int>(keep), static_cast<int>(kv_dim));
}

}  // namespace ops
}  // namespace limarp
