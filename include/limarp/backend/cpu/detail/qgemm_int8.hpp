#pragma once
/// \file qgemm_int8.hpp
/// \brief CPU kernels for `Int8Rowwise` weights: GEMV tiles (int8 x int8 and weight-only) and the
/// packed GEMM micro-kernels (VNNI vpdpbusd, AVX2 vpmaddwd), plus a scalar reference family.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "limarp/backend/cpu/detail/qgemm_common.hpp"
#include "limarp/core/thread_pool.hpp"
#include "limarp/quant/int8_rowwise.hpp"

LIMARP_QGEMM_DIAG_PUSH

namespace limarp::ops {

/// \cond
namespace qdetail {

using I8Weight = QuantizedWeight<Int8Rowwise>;

/// sum_j xo[t, j] * w[o, cols[j]] over the outlier columns, in column order (f32).
inline float outlier_dot(const XQuant& xq, std::int64_t t, const std::int8_t* wrow) noexcept {
    float s = 0.0f;
    const float* xo = xq.xo + t * xq.n_outl;
    for (std::int64_t j = 0; j < xq.n_outl; ++j) s += xo[j] * static_cast<float>(wrow[xq.cols[j]]);
    return s;
}

/// The int8 x int8 output: (sx * sw) * float(dot) + sw * outlier_dot.
inline float int8_output(const XQuant& xq, const I8Weight& w, std::int64_t t, std::int64_t o, std::int32_t dot) noexcept {
    const float sw = w.scales()[o];
    float v = (xq.scale[t] * sw) * static_cast<float>(dot);
    if (xq.n_outl) v += sw * outlier_dot(xq, t, w.row(o));
    return v;
}

/// Horizontal sum of 16 int32 / floats; 8 int32 / floats.
#if LIMARP_QGEMM_AVX2
inline std::int32_t hsum_i32(__m256i v) noexcept {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}
inline float hsum_f32(__m256 v) noexcept {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

// ---------------------------------------------------------------------------------------------
// GEMV tiles: RX rows of x against G consecutive weight rows, the weights streamed once.

/// Integer dots dot[r][g] = sum_k q_x[t0 + r, k] * q_w[o0 + g, k] for int8 row-wise weights.
template <QIsa I, int RX, int G>
inline void dots_i8(std::int32_t (&dot)[RX][G], const XQuant& xq, std::int64_t t0, const I8Weight& w,
                    std::int64_t o0) noexcept {
    const std::int64_t n = w.n_in();
    const std::int8_t* wr[G];
    LIMARP_UNROLL
    for (int g = 0; g < G; ++g) wr[g] = w.row(o0 + g);
    const std::int8_t* xr[RX];
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r) xr[r] = xq.s8(t0 + r);
    std::int64_t k = 0;
#if LIMARP_QGEMM_VNNI
    if constexpr (I == QIsa::Avx512Vnni) {
        __m512i acc[RX][G];
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_si512();
        const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
        for (; k + 64 <= n; k += 64) {
            __m512i wv[G];
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                wv[g] = _mm512_loadu_si512(wr[g] + k);
                gemv_prefetch(wr[g] + k, n, G);
            }
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r) {
                const __m512i xv = _mm512_xor_si512(_mm512_loadu_si512(xr[r] + k), flip);
                LIMARP_UNROLL
                for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbusd_epi32(acc[r][g], xv, wv[g]);
            }
        }
        if (k < n) {  // masked tail: weights beyond the row read as 0
            const __mmask64 m = (~0ull) >> (64 - (n - k));
            __m512i wv[G];
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) wv[g] = _mm512_maskz_loadu_epi8(m, wr[g] + k);
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r) {
                const __m512i xv = _mm512_xor_si512(_mm512_loadu_si512(xr[r] + k), flip);
                LIMARP_UNROLL
                for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbusd_epi32(acc[r][g], xv, wv[g]);
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) dot[r][g] = _mm512_reduce_add_epi32(acc[r][g]) - 128 * w.row_sums()[o0 + g];
        return;
    }
#endif
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r)
        LIMARP_UNROLL
        for (int g = 0; g < G; ++g) dot[r][g] = 0;
#if LIMARP_QGEMM_AVX2
    if constexpr (I == QIsa::Avx2) {
        __m256i acc[RX][G];
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) acc[r][g] = _mm256_setzero_si256();
        const __m256i ones = _mm256_set1_epi16(1);
        for (; k + 32 <= n; k += 32) {
            __m256i wv[G];
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                wv[g] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[g] + k));
                if (k % 64 == 0) gemv_prefetch(wr[g] + k, n, G);
            }
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r) {
                const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[r] + k));
                const __m256i ax = _mm256_sign_epi8(xv, xv);
                LIMARP_UNROLL
                for (int g = 0; g < G; ++g) {
                    const __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv[g], xv));
                    acc[r][g] = _mm256_add_epi32(acc[r][g], _mm256_madd_epi16(p, ones));
                }
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) dot[r][g] = hsum_i32(acc[r][g]);
    }
#endif
    if (k < n)
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) dot[r][g] += scalar_dot_i8(xr[r] + k, wr[g] + k, n - k);
}

/// y[t0 + r, o0 + g] (=|+=) int8 x int8 product for an RX x G tile.
template <QIsa I, int RX, int G>
inline void gemv_i8_tile(float* y, std::int64_t ldy, const XQuant& xq, std::int64_t t0, const I8Weight& w,
                         std::int64_t o0, bool accumulate) noexcept {
    std::int32_t dot[RX][G];
    dots_i8<I, RX, G>(dot, xq, t0, w, o0);
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r)
        LIMARP_UNROLL
        for (int g = 0; g < G; ++g) {
            const float v = int8_output(xq, w, t0 + r, o0 + g, dot[r][g]);
            float& out = y[(t0 + r) * ldy + o0 + g];
            out = accumulate ? out + v : v;
        }
}

/// Weight-only tile: y[t, o] (=|+=) sw[o] * sum_k x[t, k] * q[o, k] with f32 x.
template <QIsa I, int RX, int G>
inline void gemv_i8w_tile(float* y, std::int64_t ldy, const float* x, std::int64_t ldx, std::int64_t t0,
                          const I8Weight& w, std::int64_t o0, bool accumulate) noexcept {
    const std::int64_t n = w.n_in();
    const std::int8_t* wr[G];
    LIMARP_UNROLL
    for (int g = 0; g < G; ++g) wr[g] = w.row(o0 + g);
    const float* xr[RX];
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r) xr[r] = x + (t0 + r) * ldx;
    float s[RX][G];
    std::int64_t k = 0;
#if LIMARP_QGEMM_VNNI
    if constexpr (I == QIsa::Avx512Vnni) {
        __m512 acc[RX][G];
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
        for (; k < n; k += 16) {
            const bool tail = k + 16 > n;
            const __mmask16 m = tail ? static_cast<__mmask16>((1u << (n - k)) - 1u) : static_cast<__mmask16>(0xffff);
            __m512 wv[G];
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                if (k % 64 == 0) gemv_prefetch(wr[g] + k, n, G);
                const __m128i b = tail ? _mm_maskz_loadu_epi8(m, wr[g] + k)
                                       : _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[g] + k));
                wv[g] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
            }
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r) {
                const __m512 xv = tail ? _mm512_maskz_loadu_ps(m, xr[r] + k) : _mm512_loadu_ps(xr[r] + k);
                LIMARP_UNROLL
                for (int g = 0; g < G; ++g) acc[r][g] = _mm512_fmadd_ps(xv, wv[g], acc[r][g]);
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) s[r][g] = _mm512_reduce_add_ps(acc[r][g]);
    } else
#endif
    {
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) s[r][g] = 0.0f;
#if LIMARP_QGEMM_AVX2
        if constexpr (I == QIsa::Avx2) {
            __m256 acc[RX][G];
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r)
                LIMARP_UNROLL
                for (int g = 0; g < G; ++g) acc[r][g] = _mm256_setzero_ps();
            for (; k + 8 <= n; k += 8) {
                __m256 wv[G];
                LIMARP_UNROLL
                for (int g = 0; g < G; ++g) {
                    if (k % 64 == 0) gemv_prefetch(wr[g] + k, n, G);
                    wv[g] = _mm256_cvtepi32_ps(
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wr[g] + k))));
                }
                LIMARP_UNROLL
                for (int r = 0; r < RX; ++r) {
                    const __m256 xv = _mm256_loadu_ps(xr[r] + k);
                    LIMARP_UNROLL
                    for (int g = 0; g < G; ++g) acc[r][g] = _mm256_fmadd_ps(xv, wv[g], acc[r][g]);
                }
            }
            LIMARP_UNROLL
            for (int r = 0; r < RX; ++r)
                LIMARP_UNROLL
                for (int g = 0; g < G; ++g) s[r][g] = hsum_f32(acc[r][g]);
        }
#endif
        LIMARP_UNROLL
        for (int r = 0; r < RX; ++r)
            LIMARP_UNROLL
            for (int g = 0; g < G; ++g) {
                float t = 0.0f;
                for (std::int64_t kk = k; kk < n; ++kk) t += xr[r][kk] * static_cast<float>(wr[g][kk]);
                s[r][g] += t;
            }
    }
    LIMARP_UNROLL
    for (int r = 0; r < RX; ++r)
        LIMARP_UNROLL
        for (int g = 0; g < G; ++g) {
            const float v = w.scales()[o0 + g] * s[r][g];
            float& out = y[(t0 + r) * ldy + o0 + g];
            out = accumulate ? out + v : v;
        }
}

/// Calls `Tile<I, rx, g>::run(args...)` for run-time rx <= RX, g <= G.
template <template <QIsa, int, int> class Tile, QIsa I, int RX, int G, class... Args>
inline void tile_dispatch(int rx, int g, Args&&... args) {
    if constexpr (RX > 1) {
        if (rx < RX) return tile_dispatch<Tile, I, RX - 1, G>(rx, g, std::forward<Args>(args)...);
    }
    if constexpr (G > 1) {
        if (g < G) return tile_dispatch<Tile, I, RX, G - 1>(rx, g, std::forward<Args>(args)...);
    }
    Tile<I, RX, G>::run(std::forward<Args>(args)...);
}

/// \cond
template <QIsa I, int RX, int G>
struct GemvI8Tile {
    static void run(float* y, std::int64_t ldy, const XQuant& xq, std::int64_t t0, const I8Weight& w,
                    std::int64_t o0, bool acc) noexcept {
        gemv_i8_tile<I, RX, G>(y, ldy, xq, t0, w, o0, acc);
    }
};
template <QIsa I, int RX, int G>
struct GemvI8wTile {
    static void run(float* y, std::int64_t ldy, const float* x, std::int64_t ldx, std::int64_t t0,
                    const I8Weight& w, std::int64_t o0, bool acc) noexcept {
        gemv_i8w_tile<I, RX, G>(y, ldy, x, ldx, t0, w, o0, acc);
    }
};
/// \endcond

/// Weight rows per GEMV tile.
inline constexpr int kGemvRows = 4;
/// x rows per GEMV tile.
inline constexpr int kGemvX = 4;

/// The GEMVs' per-group hook: nothing.
struct NoGroupEpilogue {
    void operator()(std::int64_t, int) const noexcept {}
};

/// GEMV-style int8 x int8 product for any T: parallel over groups of weight rows, every weight
/// row streamed once from memory per call (per kGemvX rows of x). `epi(o, g)` runs after the
/// group of rows [o, o + g) is done, on the thread that did it (e.g. a LoRA term of those rows).
template <QIsa I, class Epi = NoGroupEpilogue>
void gemv_i8(float* y, const XQuant& xq, const I8Weight& w, std::int64_t T, bool accumulate, ThreadPool& pool,
             const Epi& epi = {}) {
    const std::int64_t n_out = w.n_out();
    const std::int64_t n_groups = (n_out + kGemvRows - 1) / kGemvRows;
    for_each_range(pool, n_groups, static_cast<double>(T * kGemvRows * w.n_in()) / 16.0,
                   [&](std::int64_t gb, std::int64_t ge) {
                       for (std::int64_t gi = gb; gi < ge; ++gi) {
                           const std::int64_t o = gi * kGemvRows;
                           const int g = static_cast<int>(std::min<std::int64_t>(kGemvRows, n_out - o));
                           for (std::int64_t t = 0; t < T; t += kGemvX) {
                               const int rx = static_cast<int>(std::min<std::int64_t>(kGemvX, T - t));
                               tile_dispatch<GemvI8Tile, I, kGemvX, kGemvRows>(rx, g, y, n_out, xq, t, w, o,
                                                                              accumulate);
                           }
                           epi(o, g);
                       }
                   });
}

/// GEMV-style weight-only product (f32 x) for any T; `epi` as in `gemv_i8`.
template <QIsa I, class Epi = NoGroupEpilogue>
void gemv_i8w(float* y, const float* x, const I8Weight& w, std::int64_t T, bool accumulate, ThreadPool& pool,
              const Epi& epi = {}) {
    const std::int64_t n_out = w.n_out(), n_in = w.n_in();
    const std::int64_t n_groups = (n_out + kGemvRows - 1) / kGemvRows;
    for_each_range(pool, n_groups, static_cast<double>(T * kGemvRows * n_in) / 8.0,
                   [&](std::int64_t gb, std::int64_t ge) {
                       for (std::int64_t gi = gb; gi < ge; ++gi) {
                           const std::int64_t o = gi * kGemvRows;
                           const int g = static_cast<int>(std::min<std::int64_t>(kGemvRows, n_out - o));
                           for (std::int64_t t = 0; t < T; t += kGemvX) {
                               const int rx = static_cast<int>(std::min<std::int64_t>(kGemvX, T - t));
                               tile_dispatch<GemvI8wTile, I, kGemvX, kGemvRows>(rx, g, y, n_out, x, n_in, t, w, o,
                                                                               accumulate);
                           }
                           epi(o, g);
                       }
                   });
}

// ---------------------------------------------------------------------------------------------
// Packed GEMM (int8 x int8), int32 accumulation over the whole row.

/// Shared epilogue of the int8 GEMMs: y[t, o] (=|+=) int8_output(acc[t, o] - offset * rowsum[o]).
inline void epilogue_i8(float* y, std::int64_t n_out, const XQuant& xq, const I8Weight& w, bool accumulate,
                        std::int32_t offset, const std::int32_t* acc, std::int64_t NR, std::int64_t t0,
                        std::int64_t t1, std::int64_t o0, std::int64_t rows) noexcept {
    const float* sw = w.scales() + o0;
    const std::int32_t* rs = w.row_sums() + o0;
    alignas(64) float v[64];
    // The panel's weights at the outlier columns as f32 [n_outl][64].
    float* wo = nullptr;
    if (xq.n_outl) {
        wo = qscratch_as<12, float>(xq.n_outl * 64);
        for (std::int64_t j = 0; j < xq.n_outl; ++j)
            for (std::int64_t r = 0; r < 64; ++r)
                wo[j * 64 + r] = r < rows ? static_cast<float>(w.row(o0 + r)[xq.cols[j]]) : 0.0f;
    }
    for (std::int64_t t = t0; t < t1; ++t) {
        const std::int32_t* a = acc + (t - t0) * NR;
        float* yr = y + t * n_out + o0;
        const float sx = xq.scale[t];
        for (std::int64_t r = 0; r < rows; ++r) v[r] = (sx * sw[r]) * static_cast<float>(a[r] - offset * rs[r]);
        if (xq.n_outl) {
            // sw * sum_j xo[t, j] * W[o, cols[j]], vectorized over the panel's rows (j ascending,
            // as outlier_dot)
            alignas(64) float od[64] = {};
            const float* xo = xq.xo + t * xq.n_outl;
            for (std::int64_t j = 0; j < xq.n_outl; ++j) {
                const float* wj = wo + j * 64;
                for (std::int64_t r = 0; r < 64; ++r) od[r] += xo[j] * wj[r];
            }
            for (std::int64_t r = 0; r < rows; ++r) v[r] += sw[r] * od[r];
        }
        if (accumulate)
            for (std::int64_t r = 0; r < rows; ++r) yr[r] += v[r];
        else
            for (std::int64_t r = 0; r < rows; ++r) yr[r] = v[r];
    }
}

#if LIMARP_QGEMM_VNNI
/// VNNI GEMM kernel: x as u8 (q + 128), weights packed [k/4][NR][4] so that one vpdpbusd
/// multiplies 4 inputs of one x row (broadcast) with 4 inputs of 16 weight rows.
template <int MR_, int NV>
struct GemmI8Vnni {
    static constexpr std::int64_t NR = 16 * NV;  ///< weight rows per panel
    static constexpr std::int64_t MR = MR_;      ///< x rows per micro-tile
    static constexpr std::int64_t KC = 2048;     ///< inputs per packed chunk
    using Acc = std::int32_t;

    float* y;
    const XQuant& xq;
    const I8Weight& w;
    bool accumulate;

    static std::int64_t pack_bytes(std::int64_t kc) { return round_up(kc, 4) * NR; }

    void pack(std::byte* dst, std::int64_t o0, std::int64_t rows, std::int64_t k0, std::int64_t kc) const noexcept {
        auto* d = reinterpret_cast<std::int32_t*>(dst);
        const std::int64_t kg = (kc + 3) / 4, full = kc / 4;
        for (std::int64_t r = 0; r < NR; ++r) {
            if (r >= rows) {
                for (std::int64_t g = 0; g < kg; ++g) d[g * NR + r] = 0;
                continue;
            }
            const std::int8_t* src = w.row(o0 + r) + k0;
            for (std::int64_t g = 0; g < full; ++g) d[g * NR + r] = load_i32(src + 4 * g);
            if (kg > full) {
                std::int32_t v = 0;
                std::memcpy(&v, src + 4 * full, static_cast<std::size_t>(kc - 4 * full));
                d[full * NR + r] = v;
            }
        }
    }

    template <int M>
    void micro_m(std::int64_t t, std::int64_t k0, std::int64_t kc, const std::byte* packed, std::int32_t* acc,
                 bool first) const noexcept {
        __m512i c[M][NV];
        LIMARP_UNROLL
        for (int r = 0; r < M; ++r)
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v)
                c[r][v] = first ? _mm512_setzero_si512() : _mm512_loadu_si512(acc + r * NR + 16 * v);
        const std::byte* xp = xq.tile_base(t) + k0 * MR;  // [kg][MR][4] u8
        const auto* p = reinterpret_cast<const std::int32_t*>(packed);
        const std::int64_t kg = (kc + 3) / 4;
        for (std::int64_t g = 0; g < kg; ++g) {
            __m512i b[NV];
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v) b[v] = _mm512_load_si512(p + g * NR + 16 * v);
            LIMARP_UNROLL
            for (int r = 0; r < M; ++r) {
                const __m512i a = _mm512_set1_epi32(load_i32(xp + (g * MR + r) * 4));
                LIMARP_UNROLL
                for (int v = 0; v < NV; ++v) c[r][v] = _mm512_dpbusd_epi32(c[r][v], a, b[v]);
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < M; ++r)
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v) _mm512_storeu_si512(acc + r * NR + 16 * v, c[r][v]);
    }

    template <int M = MR_>
    void micro(int m, std::int64_t t, std::int64_t k0, std::int64_t kc, const std::byte* packed, std::int32_t* acc,
               bool first) const noexcept {
        if constexpr (M > 1) {
            if (m < M) return micro<M - 1>(m, t, k0, kc, packed, acc, first);
        }
        micro_m<M>(t, k0, kc, packed, acc, first);
    }

    void epilogue(const std::int32_t* acc, std::int64_t t0, std::int64_t t1, std::int64_t o0,
                  std::int64_t rows) const noexcept {
        epilogue_i8(y, w.n_out(), xq, w, accumulate, 128, acc, NR, t0, t1, o0, rows);
    }
};
#endif

#if LIMARP_QGEMM_AVX2
/// AVX2 GEMM kernel: x as int16, weights packed as int16 pairs [k/2][NR][2]; one vpmaddwd
/// multiplies 2 inputs of one x row (broadcast) with 2 inputs of 8 weight rows.
template <int MR_, int NV>
struct GemmI8Avx2 {
    static constexpr std::int64_t NR = 8 * NV;  ///< weight rows per panel
    static constexpr std::int64_t MR = MR_;     ///< x rows per micro-tile
    static constexpr std::int64_t KC = 1024;    ///< inputs per packed chunk
    using Acc = std::int32_t;

    float* y;
    const XQuant& xq;
    const I8Weight& w;
    bool accumulate;

    static std::int64_t pack_bytes(std::int64_t kc) { return round_up(kc, 2) * NR * 2; }

    void pack(std::byte* dst, std::int64_t o0, std::int64_t rows, std::int64_t k0, std::int64_t kc) const noexcept {
        auto* d = reinterpret_cast<std::int16_t*>(dst);
        const std::int64_t kg = (kc + 1) / 2;
        for (std::int64_t r = 0; r < NR; ++r) {
            if (r >= rows) {
                for (std::int64_t g = 0; g < kg; ++g) d[(g * NR + r) * 2] = d[(g * NR + r) * 2 + 1] = 0;
                continue;
            }
            const std::int8_t* src = w.row(o0 + r) + k0;
            for (std::int64_t g = 0; g < kg; ++g) {
                d[(g * NR + r) * 2] = src[2 * g];
                d[(g * NR + r) * 2 + 1] = 2 * g + 1 < kc ? src[2 * g + 1] : std::int8_t{0};
            }
        }
    }

    template <int M>
    void micro_m(std::int64_t t, std::int64_t k0, std::int64_t kc, const std::byte* packed, std::int32_t* acc,
                 bool first) const noexcept {
        __m256i c[M][NV];
        LIMARP_UNROLL
        for (int r = 0; r < M; ++r)
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v)
                c[r][v] = first ? _mm256_setzero_si256()
                                : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + r * NR + 8 * v));
        const std::byte* xp = xq.tile_base(t) + k0 * MR * 2;  // [kg][MR][2] i16
        const auto* p = reinterpret_cast<const std::int32_t*>(packed);
        const std::int64_t kg = (kc + 1) / 2;
        for (std::int64_t g = 0; g < kg; ++g) {
            __m256i b[NV];
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v) b[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + g * NR + 8 * v));
            LIMARP_UNROLL
            for (int r = 0; r < M; ++r) {
                const __m256i a = _mm256_set1_epi32(load_i32(xp + (g * MR + r) * 4));
                LIMARP_UNROLL
                for (int v = 0; v < NV; ++v) c[r][v] = _mm256_add_epi32(c[r][v], _mm256_madd_epi16(a, b[v]));
            }
        }
        LIMARP_UNROLL
        for (int r = 0; r < M; ++r)
            LIMARP_UNROLL
            for (int v = 0; v < NV; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * NR + 8 * v), c[r][v]);
    }

    template <int M = MR_>
    void micro(int m, std::int64_t t, std::int64_t k0, std::int64_t kc, const std::byte* packed, std::int32_t* acc,
               bool first) const noexcept {
        if constexpr (M > 1) {
            if (m < M) return micro<M - 1>(m, t, k0, kc, packed, acc, first);
        }
        micro_m<M>(t, k0, kc, packed, acc, first);
    }

    void epilogue(const std::int32_t* acc, std::int64_t t0, std::int64_t t1, std::int64_t o0,
                  std::int64_t rows) const noexcept {
        epilogue_i8(y, w.n_out(), xq, w, accumulate, 0, acc, NR, t0, t1, o0, rows);
    }
};
#endif

}  // namespace qdetail
/// \endcond

}  // namespace limarp::ops

LIMARP_QGEMM_DIAG_POP
