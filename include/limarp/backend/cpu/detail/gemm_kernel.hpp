#pragma once
/// \file gemm_kernel.hpp
/// \brief Building blocks of the packed GEMM, shared by gemm.hpp and attention.hpp: panel packing
/// (bf16 widened, transposed into NR-column panels) and the MR x NR register-tiled micro-kernel.

#include <algorithm>
#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/dtype.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// \cond
namespace cpu_detail {

/// Blocking parameters of the GEMM path for arch A.
template <class A>
struct GemmBlocking {
    static constexpr int NV = 2;                                     ///< vectors per micro-tile row
    static constexpr std::int64_t NR = NV * lanes<A>;                ///< output columns per panel
    static constexpr int MR = lanes<A> >= 16 ? 12 : 6;               ///< x rows per micro-tile
    static constexpr std::int64_t KC = 256;                          ///< inputs per packed block
    static constexpr std::int64_t NC = NR * ((128 + NR - 1) / NR);   ///< output rows per task
};

#if defined(__AVX2__)
/// In-register transpose of 8 rows of 8 floats.
inline void transpose8x8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                         __m256& r7) noexcept {
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
    r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
    r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
    r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
    r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
    r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
    r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
    r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}
inline __m256 load8_f32(const float* p) noexcept { return _mm256_loadu_ps(p); }
inline __m256 load8_f32(const bf16* p) noexcept {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

/// Packs rows [0, rows) x inputs [k0, k0 + kc) of `w` (row stride ldw) into panels of NR
/// output columns: dst[p][k][j] = w[p * NR + j][k0 + k], zero for rows >= rows.
template <class W>
void pack_panels(float* dst /*[ceil(rows/NR), kc, NR]*/, const W* w /*[rows, ldw]*/, std::int64_t ldw,
                 std::int64_t rows, std::int64_t k0, std::int64_t kc, std::int64_t NR) noexcept {
    const std::int64_t n_panels = (rows + NR - 1) / NR;
    for (std::int64_t p = 0; p < n_panels; ++p) {
        float* d = dst + p * kc * NR;
        for (std::int64_t j0 = 0; j0 < NR; j0 += 8) {
            const std::int64_t r0 = p * NR + j0;
            const std::int64_t nr = std::clamp<std::int64_t>(rows - r0, 0, std::min<std::int64_t>(8, NR - j0));
            std::int64_t k = 0;
#if defined(__AVX2__)
            if (nr == 8 && NR % 8 == 0) {
                const W* s = w + r0 * ldw + k0;
                for (; k + 8 <= kc; k += 8) {
                    __m256 a0 = load8_f32(s + 0 * ldw + k), a1 = load8_f32(s + 1 * ldw + k);
                    __m256 a2 = load8_f32(s + 2 * ldw + k), a3 = load8_f32(s + 3 * ldw + k);
                    __m256 a4 = load8_f32(s + 4 * ldw + k), a5 = load8_f32(s + 5 * ldw + k);
                    __m256 a6 = load8_f32(s + 6 * ldw + k), a7 = load8_f32(s + 7 * ldw + k);
                    transpose8x8(a0, a1, a2, a3, a4, a5, a6, a7);
                    float* o = d + k * NR + j0;
                    _mm256_storeu_ps(o + 0 * NR, a0);
                    _mm256_storeu_ps(o + 1 * NR, a1);
                    _mm256_storeu_ps(o + 2 * NR, a2);
                    _mm256_storeu_ps(o + 3 * NR, a3);
                    _mm256_storeu_ps(o + 4 * NR, a4);
                    _mm256_storeu_ps(o + 5 * NR, a5);
                    _mm256_storeu_ps(o + 6 * NR, a6);
                    _mm256_storeu_ps(o + 7 * NR, a7);
                }
            }
#endif
            const std::int64_t jn = std::min<std::int64_t>(8, NR - j0);
            for (; k < kc; ++k) {
                float* o = d + k * NR + j0;
                for (std::int64_t j = 0; j < jn; ++j)
                    o[j] = j < nr ? to_f32(w[(r0 + j) * ldw + k0 + k]) : 0.0f;
            }
        }
    }
}

/// The MR x NR micro-kernel: acc = x[0:MR, 0:kc] · panel[0:kc, 0:NR] (panel rows ldw floats
/// apart: NR for a packed panel, or any row-major matrix whose rows hold NR readable floats);
/// then y[0:MR, 0:n_valid] = acc (add = false) or += acc (add = true).
template <class A, int MR>
inline void micro_kernel(const float* x /*[MR, ldx]*/, std::int64_t ldx, const float* wp /*[kc, ldw]*/,
                         std::int64_t ldw, std::int64_t kc, float* y /*[MR, ldy]*/, std::int64_t ldy, std::int64_t n_valid,
                         bool add) noexcept {
    using B = fbatch<A>;
    using Blk = GemmBlocking<A>;
    constexpr int NV = Blk::NV;
    constexpr std::int64_t NR = Blk::NR, L = lanes<A>;
    B acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = B(0.0f);
    for (std::int64_t k = 0; k < kc; ++k) {
        B b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = B::load_unaligned(wp + k * ldw + v * L);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const B a(x[r * ldx + k]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a, b[v], acc[r][v]);
        }
    }
    if (n_valid == NR) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                float* p = y + r * ldy + v * L;
                B s = acc[r][v];
                if (add) s += B::load_unaligned(p);
                s.store_unaligned(p);
            }
    } else {
        alignas(64) float tmp[NR];
        for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v].store_aligned(tmp + v * L);
            float* p = y + r * ldy;
            for (std::int64_t j = 0; j < n_valid; ++j) p[j] = add ? p[j] + tmp[j] : tmp[j];
        }
    }
}

/// Calls micro_kernel with a run-time row count m <= MR.
template <class A, int MR>
inline void micro_kernel_dispatch(int m, const float* x, std::int64_t ldx, const float* wp, std::int64_t ldw,
                                  std::int64_t kc, float* y, std::int64_t ldy, std::int64_t n_valid, bool add) noexcept {
    if constexpr (MR > 1) {
        if (m < MR) return micro_kernel_dispatch<A, MR - 1>(m, x, ldx, wp, ldw, kc, y, ldy, n_valid, add);
    }
    micro_kernel<A, MR>(x, ldx, wp, ldw, kc, y, ldy, n_valid, add);
}

}  // namespace cpu_detail
/// \endcond

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
