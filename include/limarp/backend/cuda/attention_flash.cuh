#pragma once
/// \file attention_flash.cuh
/// \brief Prefill attention on the tensor cores (flash-attention style, bf16 operands, f32
/// accumulation and softmax): the default prefill kernel for head_dim 32, 64 and 128 on sm_80 and
/// newer (`ops::attention_prefill` picks it, see `cuda_api::set_prefill_attention`).
///
/// Same function as the f32 kernels of attention_prefill.cuh (T new tokens at consecutive
/// positions attend causally, inside the sliding window, to the ring and to each other), with
/// bf16 operands for Q·Kᵀ and P·V, as transformers' bf16 SDPA / flash attention: errors in the
/// 1e-3..1e-2 band of bf16 (tested against the CPU in tests/cuda_model).
///
/// Two kernels:
/// - `kv_window_to_bf16_kernel`: the keys and values a prefill can see — ring rows of positions
///   kfirst .. p0 - 1 (kfirst = max(0, p0 - window + 1), or 0 without a window) and the T new
///   rows — into contiguous bf16 arrays [nk, kv_dim] indexed by position - kfirst (p0 is read on
///   the device; the arrays are sized for the largest nk, min(C, window - 1) + T).
/// - `attention_prefill_mma_kernel<HD, NREP>`: 8 warps, 128 query rows per block (128 / NREP
///   tokens times the NREP heads that share one kv head, so a key tile serves them all; the
///   blocks of the last tokens, which have the most key tiles, are scheduled first); each
///   warp owns 16 rows and keeps their Q fragments (pre-scaled by scale * log2 e), the online
///   softmax state and O [16, HD] in registers. Key tiles of 64 positions (only those between the
///   first row's window start and the last row's position: cost O(T x window)) are copied into
///   shared memory with `cp.async` (16 bytes, double-buffered: tile i + 1 loads while tile i is
///   computed; rows past the block's last key are zero-filled), read into fragments with
///   `ldmatrix` (`.trans` for V), multiplied with `mma.sync.m16n8k16` bf16 -> f32. The scores stay
///   in registers: the S accumulator fragment is re-packed as the A fragment of P · V (as in
///   FlashAttention-2). The mask is applied only on tiles that cross a row's causal or window
///   edge. Shared memory: 2 x 2 x 64 x (HD + 8) bf16 (rows padded by 16 bytes against bank
///   conflicts), 69.6 KB at HD = 128.
///
/// Floor and measurements: benchmarks/NOTES.md ("CUDA model"; 8 warps and the heavy blocks first:
/// session 17, 0.73 -> 0.58 ms for a 4096-token prompt's layer on an H200, one profiling call).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "limarp/backend/attention_shape.hpp"
#include "limarp/backend/cuda/attention.cuh"
#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/core/error.hpp"

namespace limarp {
/// \cond
namespace cuda_detail {

inline constexpr int kMmaRows = 128;  // query rows per block (16 per warp)
inline constexpr int kMmaKeys = 64;   // key positions per tile
inline constexpr int kMmaThreads = 256;

template <int HD>
constexpr int mma_smem_bytes() {
    return 2 * 2 * kMmaKeys * (HD + 8) * 2;  // [K, V][2 stages][64][HD + 8] bf16
}

// Keys / values kfirst .. p0 + T - 1 as bf16 rows [nk, kvd] (4 values per thread step).
template <int = 0>  // a template, so that this header-defined kernel has one definition per program
__global__ void __launch_bounds__(256)
    kv_window_to_bf16_kernel(__nv_bfloat16* __restrict__ kb, __nv_bfloat16* __restrict__ vb,
                             const float* __restrict__ k_new, const float* __restrict__ v_new,
                             const float* __restrict__ k_cache, const float* __restrict__ v_cache, int C,
                             const std::int64_t* __restrict__ positions, int T, int kvd, int window, int max_rows) {
    const long long p0 = positions[0];
    const long long kfirst = window > 0 ? (p0 - window + 1 > 0 ? p0 - window + 1 : 0) : 0;
    const long long nk = p0 + T - kfirst;
    const long long rows = nk < max_rows ? nk : max_rows;
    const int q4 = kvd / 4;
    const long long n = rows * q4;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long row = i / q4;
        const int d = static_cast<int>(i % q4) * 4;
        const long long kp = kfirst + row;
        const long long src = kp < p0 ? (kp % C) * kvd + d : (kp - p0) * kvd + d;
        const float4 k4 = *reinterpret_cast<const float4*>((kp < p0 ? k_cache : k_new) + src);
        const float4 v4 = *reinterpret_cast<const float4*>((kp < p0 ? v_cache : v_new) + src);
        __nv_bfloat162* kd = reinterpret_cast<__nv_bfloat162*>(kb + row * kvd + d);
        __nv_bfloat162* vd = reinterpret_cast<__nv_bfloat162*>(vb + row * kvd + d);
        kd[0] = __floats2bfloat162_rn(k4.x, k4.y);
        kd[1] = __floats2bfloat162_rn(k4.z, k4.w);
        vd[0] = __floats2bfloat162_rn(v4.x, v4.y);
        vd[1] = __floats2bfloat162_rn(v4.z, v4.w);
    }
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit_group() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
// c += a · b, m16n8k16, bf16 operands, f32 accumulators.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
}

template <int HD, int NREP>
__global__ void __launch_bounds__(kMmaThreads)
    attention_prefill_mma_kernel(float* __restrict__ out, const float* __restrict__ q,
                                 const __nv_bfloat16* __restrict__ kb, const __nv_bfloat16* __restrict__ vb,
                                 const std::int64_t* __restrict__ positions, int T, int n_kv_heads, int window,
                                 float scale_log2, int max_rows) {
    static_assert(HD % 32 == 0 && HD <= 128, "attention_prefill_mma_kernel: head_dim 32, 64 or 128");
    constexpr int LDS = HD + 8;          // bf16 per shared row (16 bytes of padding)
    constexpr int QT = kMmaRows / NREP;  // tokens per block
    constexpr int KC = HD / 16;          // k-chunks of Q · Kᵀ
    constexpr int NT = kMmaKeys / 8;     // n-tiles of S (8 keys each)
    constexpr int ND = HD / 8;           // n-tiles of O (8 dims each)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [2][64][LDS]
    __nv_bfloat16* Vs = Ks + 2 * kMmaKeys * LDS;                      // [2][64][LDS]

    const int g = blockIdx.y;  // kv head
    // The blocks of the last tokens (the most key tiles) first: the short ones fill the tail.
    const int t0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * QT;
    const int nt = min(QT, T - t0);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int lr = lane >> 2, lc = lane & 3;  // fragment row (0..7) and column pair (0..3)
    const long long p0 = positions[0];
    const int kvd = n_kv_heads * HD, qd = n_kv_heads * NREP * HD;
    const long long kfirst = window > 0 ? (p0 - window + 1 > 0 ? p0 - window + 1 : 0) : 0;

    // This thread's two rows (lr and lr + 8 of the warp's 16): token, head, position, validity.
    int row_tok[2], row_head[2];
    long long row_pos[2];
    bool row_ok[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = warp * 16 + lr + 8 * h;
        row_tok[h] = t0 + r / NREP;
        row_head[h] = g * NREP + r % NREP;
        row_ok[h] = r / NREP < nt;
        row_pos[h] = p0 + row_tok[h];
    }
    // Q fragments (A operand, row-major 16 x HD), scaled by scale * log2(e), rounded to bf16.
    unsigned qa[KC][4];
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                float2 v = make_float2(0.f, 0.f);
                if (row_ok[h])
                    v = *reinterpret_cast<const float2*>(q + static_cast<long long>(row_tok[h]) * qd +
                                                         row_head[h] * HD + kc * 16 + half * 8 + lc * 2);
                qa[kc][h + 2 * half] = pack_bf16x2(v.x * scale_log2, v.y * scale_log2);
            }
        }
    }

    float o[ND][4];
#pragma unroll
    for (int i = 0; i < ND; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    const long long qfirst = p0 + t0, qlast = p0 + t0 + nt - 1;
    const long long kstart = window > 0 ? (qfirst - window + 1 > kfirst ? qfirst - window + 1 : kfirst) : 0;
    const int n_tiles = static_cast<int>((qlast - kstart) / kMmaKeys) + 1;

    // Tile i (keys kstart + 64 i ..) into stage s: 16-byte copies, zero-filled past qlast.
    const auto load_tile = [&](int i, int s) {
        const long long k0 = kstart + static_cast<long long>(i) * kMmaKeys;
        constexpr int CPR = HD / 8;  // 16-byte chunks per row
        for (int c = threadIdx.x; c < kMmaKeys * CPR; c += kMmaThreads) {
            const int j = c / CPR, d = (c % CPR) * 8;
            const long long kp = k0 + j;
            const bool ok = kp <= qlast && kp - kfirst < max_rows;  // rows past the staging: zeros
            const long long src = (ok ? kp - kfirst : 0) * kvd + g * HD + d;
            cp_async_16_zfill(Ks + (s * kMmaKeys + j) * LDS + d, kb + src, ok);
            cp_async_16_zfill(Vs + (s * kMmaKeys + j) * LDS + d, vb + src, ok);
        }
        cp_async_commit_group();
    };

    load_tile(0, 0);
    for (int i = 0; i < n_tiles; ++i) {
        const int s = i & 1;
        cp_async_wait_all();
        __syncthreads();  // tile i landed for every thread; tile i - 1's stage is free
        if (i + 1 < n_tiles) load_tile(i + 1, s ^ 1);
        const __nv_bfloat16* Kt = Ks + s * kMmaKeys * LDS;
        const __nv_bfloat16* Vt = Vs + s * kMmaKeys * LDS;
        const long long k0 = kstart + static_cast<long long>(i) * kMmaKeys;

        // S = Q · Kᵀ: 16 x 64 per warp.
        float sc[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int kc = 0; kc < KC; kc += 2) {
                unsigned b[4];  // b0, b1 of k-chunk kc, then of kc + 1
                ldmatrix_x4(b, Kt + (8 * j + (lane & 7)) * LDS + kc * 16 + (lane >> 3) * 8);
                mma_bf16_16816(sc[j], qa[kc], b[0], b[1]);
                mma_bf16_16816(sc[j], qa[kc + 1], b[2], b[3]);
            }
        }
        // Mask only where a row's causal or window edge crosses the tile (or rows are padding).
        const bool full = k0 + kMmaKeys - 1 <= qfirst && (window <= 0 || k0 > qlast - window) && nt == QT;
        if (!full) {
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int h = e >> 1;
                    const long long kp = k0 + 8 * j + 2 * lc + (e & 1);
                    const bool vis = row_ok[h] && kp <= row_pos[h] && (window <= 0 || kp > row_pos[h] - window);
                    if (!vis) sc[j][e] = -INFINITY;
                }
        }
        // Online softmax (base 2) for rows lr (h = 0) and lr + 8 (h = 1).
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < NT; ++j) mx = fmaxf(mx, fmaxf(sc[j][2 * h], sc[j][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[h], mx);
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            const float corr = exp2f(m[h] - m_use);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                sc[j][2 * h] = exp2f(sc[j][2 * h] - m_use);
                sc[j][2 * h + 1] = exp2f(sc[j][2 * h + 1] - m_use);
                sum += sc[j][2 * h] + sc[j][2 * h + 1];
            }
            l[h] = l[h] * corr + sum;  // this thread's share; the 4 lanes of a row are summed at the end
            m[h] = m_new;
#pragma unroll
            for (int i2 = 0; i2 < ND; ++i2) {
                o[i2][2 * h] *= corr;
                o[i2][2 * h + 1] *= corr;
            }
        }
        // O += P · V: the S fragments of keys 16c .. 16c + 15 are the A fragment of chunk c.
#pragma unroll
        for (int c = 0; c < kMmaKeys / 16; ++c) {
            unsigned pa[4];
            pa[0] = pack_bf16x2(sc[2 * c][0], sc[2 * c][1]);
            pa[1] = pack_bf16x2(sc[2 * c][2], sc[2 * c][3]);
            pa[2] = pack_bf16x2(sc[2 * c + 1][0], sc[2 * c + 1][1]);
            pa[3] = pack_bf16x2(sc[2 * c + 1][2], sc[2 * c + 1][3]);
#pragma unroll
            for (int nd = 0; nd < ND; nd += 2) {
                unsigned b[4];  // b0, b1 of dims 8 nd .., then of 8 (nd + 1) ..
                ldmatrix_x4_trans(b, Vt + (16 * c + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + 8 * nd +
                                         (lane >> 4) * 8);
                mma_bf16_16816(o[nd], pa, b[0], b[1]);
                mma_bf16_16816(o[nd + 1], pa, b[2], b[3]);
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float sum = l[h];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (!row_ok[h]) continue;
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        float* dst = out + static_cast<long long>(row_tok[h]) * qd + row_head[h] * HD + 2 * lc;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd)
            *reinterpret_cast<float2*>(dst + 8 * nd) = make_float2(o[nd][2 * h] * inv, o[nd][2 * h + 1] * inv);
    }
}

/// The prefill attention kernel: 0 tensor cores (bf16 operands, the default), 1 the register-tiled
/// f32 kernel, 2 the first f32 kernel (for measurements). Starts from the environment variable
/// LIMARP_CUDA_PREFILL_ATTENTION (mma | f32 | simple); `cuda_api::set_prefill_attention` sets it.
inline std::atomic<int>& prefill_attention_mode() {
    static std::atomic<int> mode{[] {
        const char* e = std::getenv("LIMARP_CUDA_PREFILL_ATTENTION");
        const std::string v = e ? e : "";
        return v == "simple" ? 2 : (v == "f32" || v == "tiled") ? 1 : 0;
    }()};
    return mode;
}

// The calling thread's bf16 key/value scratch of the tensor-core prefill (grown on demand; a
// prefill is never recorded into a graph, and growth bumps backend_epoch() like every free).
struct FlashScratch {
    DeviceBuffer<__nv_bfloat16> k, v;
};
inline FlashScratch& flash_scratch() {
    static thread_local FlashScratch s;
    return s;
}

/// True when the tensor-core kernel covers this shape on the current device.
inline bool attention_mma_supported(const ops::AttentionShape& s) {
    const std::int64_t hd = s.head_dim;
    return (hd == 32 || hd == 64 || hd == 128) && device_info().compute_capability >= 80 &&
           mma_smem_bytes<128>() <= device_info().max_smem_optin;
}

template <int HD, int NREP>
void launch_attention_prefill_mma(float* out, const float* q, const float* k_new, const float* v_new,
                                  const float* k_cache, const float* v_cache, std::int64_t C,
                                  const std::int64_t* positions, std::int64_t T, const ops::AttentionShape& s,
                                  float scale, cudaStream_t stream) {
    const std::int64_t kvd = s.n_kv_heads * HD;
    const std::int64_t ring_rows = s.window_keys > 0 ? (C < s.window_keys - 1 ? C : s.window_keys - 1) : C;
    const std::int64_t max_rows = ring_rows + T;
    FlashScratch& fs = flash_scratch();
    __nv_bfloat16* kb = grow_device_buffer(fs.k, max_rows * kvd, "bf16 keys of the prefill attention", stream);
    __nv_bfloat16* vb = grow_device_buffer(fs.v, max_rows * kvd, "bf16 values of the prefill attention", stream);
    const std::int64_t n4 = max_rows * kvd / 4;
    const std::int64_t blocks = (n4 + 255) / 256;
    launch_checked(__FILE__, __LINE__, kv_window_to_bf16_kernel<>, dim3(static_cast<unsigned>(blocks > 8192 ? 8192 : blocks)),
                   dim3(256), 0, stream, kb, vb, k_new, v_new, k_cache, v_cache, static_cast<int>(C), positions,
                   static_cast<int>(T), static_cast<int>(kvd), static_cast<int>(s.window_keys),
                   static_cast<int>(max_rows));
    constexpr int smem = mma_smem_bytes<HD>();
    opt_in_dynamic_smem<attention_prefill_mma_kernel<HD, NREP>>(smem);
    constexpr int QT = kMmaRows / NREP;
    const dim3 grid(static_cast<unsigned>((T + QT - 1) / QT), static_cast<unsigned>(s.n_kv_heads));
    constexpr float kLog2e = 1.4426950408889634f;
    launch_checked(__FILE__, __LINE__, attention_prefill_mma_kernel<HD, NREP>, grid, dim3(kMmaThreads),
                   static_cast<std::size_t>(smem), stream, out, q, kb, vb, positions, static_cast<int>(T),
                   static_cast<int>(s.n_kv_heads), static_cast<int>(s.window_keys), scale * kLog2e,
                   static_cast<int>(max_rows));
}

/// Runs the tensor-core prefill for head_dim 32 / 64 / 128 (`attention_mma_supported`).
inline void attention_prefill_mma(float* out, const float* q, const float* k_new, const float* v_new,
                                  const float* k_cache, const float* v_cache, std::int64_t C,
                                  const std::int64_t* positions, std::int64_t T, const ops::AttentionShape& s,
                                  float scale, cudaStream_t stream) {
    with_attention_layout<32, 64, 128>(s, [&](auto hd, auto rep) {
        launch_attention_prefill_mma<decltype(hd)::value, decltype(rep)::value>(out, q, k_new, v_new, k_cache, v_cache,
                                                                                C, positions, T, s, scale, stream);
    });
}

}  // namespace cuda_detail
/// \endcond
}  // namespace limarp
