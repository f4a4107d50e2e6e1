#pragma once
/// \file qgemm_q8_0.hpp
/// \brief CPU kernels for `Q8_0` weights: GEMV tiles (q8_0 x q8_0 and weight-only) and the packed
/// GEMM micro-kernels (VNNI vpdpbusd, AVX2 vpmaddwd), plus a scalar reference family.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "limarp/backend/cpu/detail/qgemm_common.hpp"
#include "limarp/backend/cpu/detail/qgemm_int8.hpp"
#include "limarp/core/thread_pool.hpp"
#include "limarp/quant/q8_0.hpp"

LIMARP_QGEMM_DIAG_PUSH

namespace limarp::ops {

/// \cond
namespace qdetail {

using Q8Weight = QuantizedWeight<Q8_0>;

/// q8_0 x q8_0 GEMV with AVX-512: 1 (default) prefetches both lines a pair of blocks spans, 0
/// only the first (an A/B switch for benchmarks/NOTES.md). The AVX2 path keeps one prefetch per
/// pair (a second one, built with -march=x86-64-v3 and run on an AVX-512 VM, gained nothing) and
/// the weight-only path one per block.
#ifndef LIMARP_QGEMV_Q8_PF_PAIR
#define LIMARP_QGEMV_Q8_PF_PAIR 1
#endif

/// Bytes of one Q8_0 block.
inline constexpr std::int64_t kQ8Bytes = 34;

// ---------------------------------------------------------------------------------------------
// GEMV tiles.

/// y[t, o] (=|+=) sum_b (d_w[o, b] * d_x[t, b]) * float(sum_i q_w q_x) for an RX x G tile.
template <QIsa I, int RX, int G>
inline void gemv_q8_tile(float* y, std::int64_t ldy, const XQuant& xq, std::int64_t t0, const Q8Weight& w,
                         std::int64_t o0, bool accumulate) noexcept {
    const std::int64_t nb = w.blocks_per_row();
    const std::uint8_t* wr[G];
    LIMARP_UNROLL
    for (int g = 0; g < G; ++g) wr[g] = w.row(o0 + g);
    const std::int8_t* xr[RX];
    const float* dx[RX];
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r) {
        xr[r] = xq.s8(t0 + r);
        dx[r] = xq.scale + (t0 + r) * nb;
    }
    float s[RX][G];
    const std::int64_t rb = nb * kQ8Bytes;
#if LIMARP_QGEMM_VNNI
    if constexpr (I == QIsa::Avx512Vnni) {
        // Two blocks per zmm: |x| (u8) x sign(w, x) (s8) with vpdpbusd; the sign comes from a
        // mask of the negative x bytes (AVX-512 has no vpsignb on zmm).
        __m512 acc[RX][G];
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
        const __m512i zero = _mm512_setzero_si512();
        const __m512i lane_block = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        for (std::int64_t b = 0; b < nb; b += 2) {
            const bool pair = b + 1 < nb;
            __m512i ax[RX];
            __mmask64 neg[RX];
            __m128 dxp[RX];
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r) {
                const __m512i xv = _mm512_loadu_si512(xr[r] + 32 * b);  // within ld: the row is padded to 64
                ax[r] = _mm512_abs_epi8(xv);
                neg[r] = _mm512_movepi8_mask(xv);
                dxp[r] = pair ? _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(dx[r] + b)))
                              : _mm_load_ss(dx[r] + b);
            }
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                const std::uint8_t* p = wr[g] + b * kQ8Bytes;
                gemv_prefetch(p, rb, G);
#if LIMARP_QGEMV_Q8_PF_PAIR
                // A pair of blocks is 68 bytes: p's line and the next cover it (with the next
                // pair's first line); one prefetch per pair would skip a line every 16 pairs.
                gemv_prefetch(p + 64, rb, G);
#endif
                const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
                const __m512i wv = pair ? _mm512_inserti64x4(_mm512_castsi256_si512(lo),
                                                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 36)), 1)
                                        : _mm512_zextsi256_si512(lo);
                __m128i h = _mm_cvtsi32_si128(load_u16(p));
                if (pair) h = _mm_insert_epi16(h, load_u16(p + kQ8Bytes), 1);
                const __m128 dw = _mm_cvtph_ps(h);
                LIMARP_UNROLL
                for (int r = 0; r < RX; ++r) {
                    const __m512i sw = _mm512_mask_sub_epi8(wv, neg[r], zero, wv);
                    const __m512i dot = _mm512_dpbusd_epi32(zero, ax[r], sw);
                    const __m512 sc = _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(_mm_mul_ps(dw, dxp[r])));
                    acc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r][g]);
                }
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) s[r][g] = _mm512_reduce_add_ps(acc[r][g]);
    } else
#endif
#if LIMARP_QGEMM_AVX2
    if constexpr (I == QIsa::Avx2) {
        __m256 acc[RX][G];
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) acc[r][g] = _mm256_setzero_ps();
        const __m256i ones = _mm256_set1_epi16(1);
        for (std::int64_t b = 0; b < nb; ++b) {
            __m256i xv[RX], ax[RX];
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r) {
                xv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[r] + 32 * b));
                ax[r] = _mm256_sign_epi8(xv[r], xv[r]);
            }
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                const std::uint8_t* p = wr[g] + b * kQ8Bytes;
                if (b % 2 == 0) gemv_prefetch(p, rb, G);
                const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
                const float dw = half_to_float(load_u16(p));
                LIMARP_UNROLL
                for (int r = 0; r < RX; ++r) {
                    const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(ax[r], _mm256_sign_epi8(wv, xv[r])), ones);
                    acc[r][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw * dx[r][b]), acc[r][g]);
                }
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) s[r][g] = hsum_f32(acc[r][g]);
    } else
#endif
    {
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                float a = 0.0f;
                for (std::int64_t b = 0; b < nb; ++b) {
                    const std::uint8_t* p = wr[g] + b * kQ8Bytes;
                    const std::int32_t dot =
                        scalar_dot_i8(xr[r] + 32 * b, reinterpret_cast<const std::int8_t*>(p + 2), 32);
                    a += (half_to_float(load_u16(p)) * dx[r][b]) * static_cast<float>(dot);
                }
                s[r][g] = a;
            }
    }
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r)
        LIMARP_UNROLL
        for (int g = 0; g < G; ++g) {
            float& out = y[(t0 + r) * ldy + o0 + g];
            out = accumulate ? out + s[r][g] : s[r][g];
        }
}

/// Weight-only tile: y[t, o] (=|+=) sum_b d_w[o, b] * sum_i x[t, 32 b + i] * q_w[o, b, i], f32 x.
template <QIsa I, int RX, int G>
inline void gemv_q8w_tile(float* y, std::int64_t ldy, const float* x, std::int64_t ldx, std::int64_t t0,
                          const Q8Weight& w, std::int64_t o0, bool accumulate) noexcept {
    const std::int64_t nb = w.blocks_per_row();
    const std::uint8_t* wr[G];
    LIMARP_UNROLL
    for (int g = 0; g < G; ++g) wr[g] = w.row(o0 + g);
    const float* xr[RX];
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r) xr[r] = x + (t0 + r) * ldx;
    float s[RX][G];
#if LIMARP_QGEMM_VNNI
    if constexpr (I == QIsa::Avx512Vnni) {
        __m512 acc[RX][G];
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
        for (std::int64_t b = 0; b < nb; ++b) {
            __m512 x0[RX], x1[RX];
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r) {
                x0[r] = _mm512_loadu_ps(xr[r] + 32 * b);
                x1[r] = _mm512_loadu_ps(xr[r] + 32 * b + 16);
            }
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                const std::uint8_t* p = wr[g] + b * kQ8Bytes;
                gemv_prefetch(p, nb * kQ8Bytes, G);
                const __m512 w0 =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2))));
                const __m512 w1 =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 18))));
                const __m512 dw = _mm512_set1_ps(half_to_float(load_u16(p)));
                LIMARP_UNROLL
                for (int r = 0; r < RX; ++r) {
                    const __m512 t = _mm512_fmadd_ps(x1[r], w1, _mm512_mul_ps(x0[r], w0));
                    acc[r][g] = _mm512_fmadd_ps(t, dw, acc[r][g]);
                }
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) s[r][g] = _mm512_reduce_add_ps(acc[r][g]);
    } else
#endif
#if LIMARP_QGEMM_AVX2
        if constexpr (I == QIsa::Avx2) {
        __m256 acc[RX][G];
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) acc[r][g] = _mm256_setzero_ps();
        for (std::int64_t b = 0; b < nb; ++b) {
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                const std::uint8_t* p = wr[g] + b * kQ8Bytes;
                if (b % 2 == 0) gemv_prefetch(p, nb * kQ8Bytes, G);
                __m256 wv[4];
                LIMARP_UNROLL
                for (int j = 0; j < 4; ++j)
                    wv[j] = _mm256_cvtepi32_ps(
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 2 + 8 * j))));
                const __m256 dw = _mm256_set1_ps(half_to_float(load_u16(p)));
                LIMARP_UNROLL
                for (int r = 0; r < RX; ++r) {
                    const float* xb = xr[r] + 32 * b;
                    __m256 t = _mm256_mul_ps(_mm256_loadu_ps(xb), wv[0]);
                    t = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 8), wv[1], t);
                    t = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 16), wv[2], t);
                    t = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 24), wv[3], t);
                    acc[r][g] = _mm256_fmadd_ps(t, dw, acc[r][g]);
                }
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) s[r][g] = hsum_f32(acc[r][g]);
    } else
#endif
    {
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                float a = 0.0f;
                for (std::int64_t b = 0; b < nb; ++b) {
                    const std::uint8_t* p = wr[g] + b * kQ8Bytes;
                    float t = 0.0f;
                    for (int i = 0; i < 32; ++i) t += xr[r][32 * b + i] * static_cast<float>(static_cast<std::int8_t>(p[2 + i]));
                    a += half_to_float(load_u16(p)) * t;
                }
                s[r][g] = a;
            }
    }
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r)
        LIMARP_UNROLL
        for (int g = 0; g < G; ++g) {
            float& out = y[(t0 + r) * ldy + o0 + g];
            out = accumulate ? out + s[r][g] : s[r][g];
        }
}

/// \cond
template <QIsa I, int RX, int G>
struct GemvQ8Tile {
    static void run(float* y, std::int64_t ldy, const XQuant& xq, std::int64_t t0, const Q8Weight& w,
                    std::int64_t o0, bool acc) noexcept {
        gemv_q8_tile<I, RX, G>(y, ldy, xq, t0, w, o0, acc);
    }
};
template <QIsa I, int RX, int G>
struct GemvQ8wTile {
    static void run(float* y, std::int64_t ldy, const float* x, std::int64_t ldx, std::int64_t t0,
                    const Q8Weight& w, std::int64_t o0, bool acc) noexcept {
        gemv_q8w_tile<I, RX, G>(y, ldy, x, ldx, t0, w, o0, acc);
    }
};
/// \endcond

/// GEMV-style q8_0 x q8_0 product for any T (weights streamed once per kGemvX rows of x).
template <QIsa I>
void gemv_q8(float* y, const XQuant& xq, const Q8Weight& w, std::int64_t T, bool accumulate, ThreadPool& pool) {
    const std::int64_t n_out = w.n_out();
    const std::int64_t n_groups = (n_out + kGemvRows - 1) / kGemvRows;
    for_each_range(pool, n_groups, static_cast<double>(T * kGemvRows * w.n_in()) / 8.0,
                   [&](std::int64_t gb, std::int64_t ge) {
                       for (std::int64_t gi = gb; gi < ge; ++gi) {
                           const std::int64_t o = gi * kGemvRows;
                           const int g = static_cast<int>(std::min<std::int64_t>(kGemvRows, n_out - o));
                           for (std::int64_t t = 0; t < T; t += kGemvX) {
                               const int rx = static_cast<int>(std::min<std::int64_t>(kGemvX, T - t));
                               tile_dispatch<GemvQ8Tile, I, kGemvX, kGemvRows>(rx, g, y, n_out, xq, t, w, o,
                                                                              accumulate);
                           }
                       }
                   });
}

/// GEMV-style weight-only product (f32 x) for any T.
template <QIsa I>
void gemv_q8w(float* y, const float* x, const Q8Weight& w, std::int64_t T, bool accumulate, ThreadPool& pool) {
    const std::int64_t n_out = w.n_out(), n_in = w.n_in();
    const std::int64_t n_groups = (n_out + kGemvRows - 1) / kGemvRows;
    for_each_range(pool, n_groups, static_cast<double>(T * kGemvRows * n_in) / 8.0,
                   [&](std::int64_t gb, std::int64_t ge) {
                       for (std::int64_t gi = gb; gi < ge; ++gi) {
                           const std::int64_t o = gi * kGemvRows;
                           const int g = static_cast<int>(std::min<std::int64_t>(kGemvRows, n_out - o));
                           for (std::int64_t t = 0; t < T; t += kGemvX) {
                               const int rx = static_cast<int>(std::min<std::int64_t>(kGemvX, T - t));
                               tile_dispatch<GemvQ8wTile, I, kGemvX, kGemvRows>(rx, g, y, n_out, x, n_in, t, w, o,
                                                                               accumulate);
                           }
                       }
                   });
}

// ---------------------------------------------------------------------------------------------
// Packed GEMM (q8_0 x q8_0): int32 per block, f32 accumulation of the scaled block sums.

/// Shared epilogue of the Q8_0 GEMMs: y[t, o] (=|+=) acc[t, o].
inline void epilogue_q8(float* y, std::int64_t n_out, bool accumulate, const float* acc, std::int64_t NR,
                        std::int64_t t0, std::int64_t t1, std::int64_t o0, std::int64_t rows) noexcept {
    for (std::int64_t t = t0; t < t1; ++t) {
        const float* a = acc + (t - t0) * NR;
        float* yr = y + t * n_out + o0;
        for (std::int64_t r = 0; r < rows; ++r) yr[r] = accumulate ? yr[r] + a[r] : a[r];
    }
}

#if LIMARP_QGEMM_VNNI
/// VNNI GEMM kernel for Q8_0: x as u8 (q + 128) with f32 block scales; per block of 32 inputs the
/// panel holds qs [8][NR][4], d_w f32 [NR] and the offset correction -128 * sum(qs) int32 [NR].
template <int MR_, int NV>
struct GemmQ8Vnni {
    static constexpr std::int64_t NR = 16 * NV;  ///< weight rows per panel
    static constexpr std::int64_t MR = MR_;      ///< x rows per micro-tile
    static constexpr std::int64_t KC = 2048;     ///< inputs per packed chunk
    static constexpr std::int64_t kBlock = 32 * NR + 8 * NR;  ///< packed bytes per block
    using Acc = float;

    float* y;
    const XQuant& xq;
    const Q8Weight& w;
    bool accumulate;

    static std::int64_t pack_bytes(std::int64_t kc) { return kc / 32 * kBlock; }

    void pack(std::byte* dst, std::int64_t o0, std::int64_t rows, std::int64_t k0, std::int64_t kc) const noexcept {
        const std::int64_t nbk = kc / 32, b0 = k0 / 32;
        for (std::int64_t b = 0; b < nbk; ++b) {
            std::byte* blk = dst + b * kBlock;
            auto* q = reinterpret_cast<std::int32_t*>(blk);
            auto* dw = reinterpret_cast<float*>(blk + 32 * NR);
            auto* corr = reinterpret_cast<std::int32_t*>(blk + 36 * NR);
            for (std::int64_t r = 0; r < NR; ++r) {
                if (r >= rows) {
                    LIMARP_UNROLL
                    for (int g = 0; g < 8; ++g) q[g * NR + r] = 0;
                    dw[r] = 0.0f;
                    corr[r] = 0;
                    continue;
                }
                const std::uint8_t* p = w.row(o0 + r) + (b0 + b) * kQ8Bytes;
                dw[r] = half_to_float(load_u16(p));
                std::int32_t sum = 0;
                for (int i = 0; i < 32; ++i) sum += static_cast<std::int8_t>(p[2 + i]);
                corr[r] = -128 * sum;
                LIMARP_UNROLL
                for (int g = 0; g < 8; ++g) q[g * NR + r] = load_i32(p + 2 + 4 * g);
            }
        }
    }

    template <int M>
    void micro_m(std::int64_t t, std::int64_t k0, std::int64_t kc, const std::byte* packed, float* acc,
                 bool first) const noexcept {
        __m512 f[M][NV];
        LIMARP_UNROLL
        for (int r = 0; r < M; ++r)
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v) f[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + r * NR + 16 * v);
        const std::int64_t nb = w.blocks_per_row(), nbk = kc / 32, b0 = k0 / 32;
        const std::byte* xp = xq.tile_base(t) + k0 * MR;  // [k/4][MR][4] u8
        const float* dx[M];
        LIMARP_UNROLL
        for (int r = 0; r < M; ++r) dx[r] = xq.scale + (t + r) * nb + b0;
        for (std::int64_t b = 0; b < nbk; ++b) {
            const std::byte* blk = packed + b * kBlock;
            const auto* q = reinterpret_cast<const std::int32_t*>(blk);
            __m512i c[M][NV];
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v) {
                const __m512i corr = _mm512_load_si512(blk + 36 * NR + 64 * v);
                LIMARP_UNROLL
                for (int r = 0; r < M; ++r) c[r][v] = corr;
            }
            LIMARP_UNROLL
            for (int g = 0; g < 8; ++g) {
                __m512i bv[NV];
                LIMARP_UNROLL
                for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_si512(q + g * NR + 16 * v);
                LIMARP_UNROLL
                for (int r = 0; r < M; ++r) {
                    const __m512i a = _mm512_set1_epi32(load_i32(xp + ((8 * b + g) * MR + r) * 4));
                    LIMARP_UNROLL
                    for (int v = 0; v < NV; ++v) c[r][v] = _mm512_dpbusd_epi32(c[r][v], a, bv[v]);
                }
            }
            __m512 dw[NV];
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v) dw[v] = _mm512_load_ps(reinterpret_cast<const float*>(blk + 32 * NR) + 16 * v);
            LIMARP_UNROLL
            for (int r = 0; r < M; ++r) {
                const __m512 d = _mm512_set1_ps(dx[r][b]);
                LIMARP_UNROLL
                for (int v = 0; v < NV; ++v)
                    f[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c[r][v]), _mm512_mul_ps(dw[v], d), f[r][v]);
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < M; ++r)
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v) _mm512_storeu_ps(acc + r * NR + 16 * v, f[r][v]);
    }

    template <int M = MR_>
    void micro(int m, std::int64_t t, std::int64_t k0, std::int64_t kc, const std::byte* packed, float* acc,
               bool first) const noexcept {
        if constexpr (M > 1) {
            if (m < M) return micro<M - 1>(m, t, k0, kc, packed, acc, first);
        }
        micro_m<M>(t, k0, kc, packed, acc, first);
    }

    void epilogue(const float* acc, std::int64_t t0, std::int64_t t1, std::int64_t o0, std::int64_t rows) const noexcept {
        epilogue_q8(y, w.n_out(), accumulate, acc, NR, t0, t1, o0, rows);
    }
};
#endif

#if LIMARP_QGEMM_AVX2
/// AVX2 GEMM kernel for Q8_0: x as int16 with f32 block scales; per block of 32 inputs the panel
/// holds qs as int16 pairs [16][NR][2] and d_w f32 [NR].
template <int MR_, int NV>
struct GemmQ8Avx2 {
    static constexpr std::int64_t NR = 8 * NV;  ///< weight rows per panel
    static constexpr std::int64_t MR = MR_;     ///< x rows per micro-tile
    static constexpr std::int64_t KC = 1024;    ///< inputs per packed chunk
    static constexpr std::int64_t kBlock = 64 * NR + 4 * NR;  ///< packed bytes per block
    using Acc = float;

    float* y;
    const XQuant& xq;
    const Q8Weight& w;
    bool accumulate;

    static std::int64_t pack_bytes(std::int64_t kc) { return kc / 32 * kBlock; }

    void pack(std::byte* dst, std::int64_t o0, std::int64_t rows, std::int64_t k0, std::int64_t kc) const noexcept {
        const std::int64_t nbk = kc / 32, b0 = k0 / 32;
        for (std::int64_t b = 0; b < nbk; ++b) {
            std::byte* blk = dst + b * kBlock;
            auto* q = reinterpret_cast<std::int16_t*>(blk);
            auto* dw = reinterpret_cast<float*>(blk + 64 * NR);
            for (std::int64_t r = 0; r < NR; ++r) {
                if (r >= rows) {
                    for (int i = 0; i < 32; ++i) q[(i / 2 * NR + r) * 2 + i % 2] = 0;
                    dw[r] = 0.0f;
                    continue;
                }
                const std::uint8_t* p = w.row(o0 + r) + (b0 + b) * kQ8Bytes;
                dw[r] = half_to_float(load_u16(p));
                for (int i = 0; i < 32; ++i) q[(i / 2 * NR + r) * 2 + i % 2] = static_cast<std::int8_t>(p[2 + i]);
            }
        }
    }

    // The f32 sums live in the tile buffer `acc` (L1): AVX2 has too few registers for both the
    // int32 block sums and the f32 sums of a 4 x 16 tile.
    template <int M>
    void micro_m(std::int64_t t, std::int64_t k0, std::int64_t kc, const std::byte* packed, float* acc,
                 bool first) const noexcept {
        if (first) std::fill(acc, acc + M * NR, 0.0f);
        const std::int64_t nb = w.blocks_per_row(), nbk = kc / 32, b0 = k0 / 32;
        const std::byte* xp = xq.tile_base(t) + k0 * MR * 2;  // [k/2][MR][2] i16
        const float* dx[M];
        LIMARP_UNROLL
        for (int r = 0; r < M; ++r) dx[r] = xq.scale + (t + r) * nb + b0;
        for (std::int64_t b = 0; b < nbk; ++b) {
            const std::byte* blk = packed + b * kBlock;
            const auto* q = reinterpret_cast<const std::int32_t*>(blk);
            __m256i c[M][NV];
            LIMARP_UNROLL
            for (int r = 0; r < M; ++r)
                LIMARP_UNROLL
                for (int v = 0; v < NV; ++v) c[r][v] = _mm256_setzero_si256();
            for (int g = 0; g < 16; ++g) {  // not unrolled: GCC would hoist all loads and spill
                __m256i bv[NV];
                LIMARP_UNROLL
                for (int v = 0; v < NV; ++v) bv[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + g * NR + 8 * v));
                LIMARP_UNROLL
                for (int r = 0; r < M; ++r) {
                    const __m256i a = _mm256_set1_epi32(load_i32(xp + ((16 * b + g) * MR + r) * 4));
                    LIMARP_UNROLL
                    for (int v = 0; v < NV; ++v) c[r][v] = _mm256_add_epi32(c[r][v], _mm256_madd_epi16(a, bv[v]));
                }
            }
            const float* dwp = reinterpret_cast<const float*>(blk + 64 * NR);
            LIMARP_UNROLL
            for (int r = 0; r < M; ++r) {
                const __m256 d = _mm256_set1_ps(dx[r][b]);
                LIMARP_UNROLL
                for (int v = 0; v < NV; ++v) {
                    float* fp = acc + r * NR + 8 * v;
                    const __m256 sc = _mm256_mul_ps(_mm256_load_ps(dwp + 8 * v), d);
                    _mm256_storeu_ps(fp, _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[r][v]), sc, _mm256_loadu_ps(fp)));
                }
            }
        }
    }

    template <int M = MR_>
    void micro(int m, std::int64_t t, std::int64_t k0, std::int64_t kc, const std::byte* packed, float* acc,
               bool first) const noexcept {
        if constexpr (M > 1) {
            if (m < M) return micro<M - 1>(m, t, k0, kc, packed, acc, first);
        }
        micro_m<M>(t, k0, kc, packed, acc, first);
    }

    void epilogue(const float* acc, std::int64_t t0, std::int64_t t1, std::int64_t o0, std::int64_t rows) const noexcept {
        epilogue_q8(y, w.n_out(), accumulate, acc, NR, t0, t1, o0, rows);
    }
};
#endif

}  // namespace qdetail
/// \endcond

}  // namespace limarp::ops

LIMARP_QGEMM_DIAG_POP
