#pragma once
/// \file qgemm_common.hpp
/// \brief Helpers of the quantized CPU kernels: instruction-set selection, scratch buffers,
/// activation quantization (row-wise int8 with outlier columns, q8_0 blocks) and the packed-GEMM
/// driver shared by both schemes.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"
#include "limarp/quant/detail/quantize_row.hpp"

#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

/// \cond
// GCC 12 reports false -W(maybe-)uninitialized warnings inside AVX-512 intrinsics that use
// _mm512_undefined_* (GCC PR105593, fixed in GCC 13); the kernels below silence them locally.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#define LIMARP_QGEMM_DIAG_PUSH                                      \
    _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
        _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define LIMARP_QGEMM_DIAG_POP _Pragma("GCC diagnostic pop")
#else
#define LIMARP_QGEMM_DIAG_PUSH
#define LIMARP_QGEMM_DIAG_POP
#endif
// Full unrolling of the small register-tile loops (keeps the accumulator arrays in registers).
#if defined(__clang__)
#define LIMARP_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LIMARP_UNROLL _Pragma("GCC unroll 32")
#else
#define LIMARP_UNROLL
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define LIMARP_QGEMM_VNNI 1
#else
#define LIMARP_QGEMM_VNNI 0
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define LIMARP_QGEMM_AVX2 1
#else
#define LIMARP_QGEMM_AVX2 0
#endif
/// \endcond

LIMARP_QGEMM_DIAG_PUSH

namespace limarp::ops {

/// \cond
namespace qdetail {

/// Which hand-written kernel family runs for an xsimd arch.
enum class QIsa : std::uint8_t {
    Scalar,      ///< portable loops (any architecture)
    Avx2,        ///< AVX2 + FMA: vpmaddubsw / vpmaddwd integer dots
    Avx512Vnni,  ///< AVX-512 F/BW/VL + VNNI: vpdpbusd
};

/// The kernel family for xsimd arch `A` in this build (the instructions must be enabled by -march).
template <class A>
constexpr QIsa qisa() noexcept {
#if LIMARP_QGEMM_VNNI
    if constexpr (std::is_base_of_v<xsimd::avx512bw, A>) return QIsa::Avx512Vnni;
#endif
#if LIMARP_QGEMM_AVX2
    if constexpr (std::is_base_of_v<xsimd::avx2, A> || std::is_base_of_v<xsimd::avx512f, A>) return QIsa::Avx2;
#endif
    return QIsa::Scalar;
}

/// a rounded up to a multiple of b.
constexpr std::int64_t round_up(std::int64_t a, std::int64_t b) noexcept { return (a + b - 1) / b * b; }

/// A per-thread, 64-byte aligned scratch buffer of at least `bytes` bytes (contents unspecified).
/// `Slot` distinguishes buffers used at the same time by one thread.
template <int Slot>
inline std::byte* qscratch(std::size_t bytes) {
    struct Buf {
        std::byte* p = nullptr;
        std::size_t n = 0;
        ~Buf() {
            if (p) ::operator delete(p, std::align_val_t{64});
        }
    };
    static thread_local Buf buf;
    if (buf.n < bytes) {
        if (buf.p) ::operator delete(buf.p, std::align_val_t{64});
        buf.n = std::max(bytes, buf.n + buf.n / 2);
        buf.p = static_cast<std::byte*>(::operator new(buf.n, std::align_val_t{64}));
    }
    return buf.p;
}

/// Typed view of a scratch buffer.
template <int Slot, class T>
inline T* qscratch_as(std::int64_t count) {
    return reinterpret_cast<T*>(qscratch<Slot>(static_cast<std::size_t>(std::max<std::int64_t>(count, 1)) * sizeof(T)));
}

/// f16 bits -> f32 (F16C when available).
inline float half_to_float(std::uint16_t h) noexcept {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return f16_to_f32(h);
#endif
}

/// Loads an unaligned u16 / i32.
inline std::uint16_t load_u16(const void* p) noexcept {
    std::uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}
/// Loads an unaligned 32-bit integer.
inline std::int32_t load_i32(const void* p) noexcept {
    std::int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

/// Software prefetch of the GEMV weight streams: 0 none, 1 `LIMARP_QGEMV_PF_DIST` bytes ahead in
/// the same row, 2 the same offset in the row one tile-group ahead (the rows the thread reads next).
#ifndef LIMARP_QGEMV_PREFETCH
#define LIMARP_QGEMV_PREFETCH 2
#endif
#ifndef LIMARP_QGEMV_PF_DIST
#define LIMARP_QGEMV_PF_DIST 1024
#endif

/// Prefetches for a GEMV weight stream at `p` (row stride `row_bytes`, `group` rows per tile).
inline void gemv_prefetch(const void* p, std::int64_t row_bytes, std::int64_t group) noexcept {
#if LIMARP_QGEMV_PREFETCH == 1 && (LIMARP_QGEMM_AVX2 || LIMARP_QGEMM_VNNI)
    (void)row_bytes;
    (void)group;
    _mm_prefetch(static_cast<const char*>(p) + LIMARP_QGEMV_PF_DIST, _MM_HINT_T0);
#elif LIMARP_QGEMV_PREFETCH == 2 && (LIMARP_QGEMM_AVX2 || LIMARP_QGEMM_VNNI)
    _mm_prefetch(static_cast<const char*>(p) + row_bytes * group, _MM_HINT_T0);
#else
    (void)p;
    (void)row_bytes;
    (void)group;
#endif
}

/// sum_i a[i] * b[i] over int8 values in plain C++ (the scalar kernels and tails).
/// GCC 12 compiles this loop with -mavx512vnni / -mavxvnni into vpdpbusd, which multiplies
/// *unsigned* bytes of one operand with signed bytes of the other: wrong for int8 x int8. An empty
/// asm statement on the accumulator keeps the loop scalar there.
inline std::int32_t scalar_dot_i8(const std::int8_t* a, const std::int8_t* b, std::int64_t n) noexcept {
    std::int32_t d = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        d += static_cast<std::int32_t>(a[i]) * static_cast<std::int32_t>(b[i]);
#if defined(__GNUC__) && !defined(__clang__) && (defined(__AVX512VNNI__) || defined(__AVXVNNI__))
        __asm__("" : "+r"(d));
#endif
    }
    return d;
}

/// Runs `fn(i)` for i in [0, n) on `pool`, handing indices out dynamically; inline with one thread.
template <class Fn>
void for_each_task(ThreadPool& pool, std::int64_t n, Fn&& fn) {
    if (n <= 0) return;
    const std::int64_t parts = std::min<std::int64_t>(pool.size(), n);
    if (parts <= 1) {
        for (std::int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<std::int64_t> next{0};
    pool.parallel_for(0, parts, [&](std::int64_t, std::int64_t, unsigned) {
        for (std::int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
             i = next.fetch_add(1, std::memory_order_relaxed))
            fn(i);
    });
}

/// Runs `fn(b, e)` on contiguous chunks of [0, n), in parallel when `n * cost` is worth it.
template <class Fn>
void for_each_range(ThreadPool& pool, std::int64_t n, double cost, Fn&& fn) {
    if (n <= 0) return;
    if (pool.size() <= 1 || static_cast<double>(n) * cost < 65536.0) {
        fn(std::int64_t{0}, n);
        return;
    }
    pool.parallel_for(0, n, [&](std::int64_t b, std::int64_t e, unsigned) { fn(b, e); });
}

// ---------------------------------------------------------------------------------------------
// Row quantization with SIMD, bit-identical to `quantize_row_int8`.

/// Max |x[i]| over n values.
template <QIsa I>
inline float absmax(const float* x, std::int64_t n) noexcept {
    std::int64_t k = 0;
    float m = 0.0f;
#if LIMARP_QGEMM_VNNI
    if constexpr (I == QIsa::Avx512Vnni) {
        __m512 v = _mm512_setzero_ps();
        for (; k + 16 <= n; k += 16) v = _mm512_max_ps(v, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
        if (k < n) {
            const __mmask16 msk = static_cast<__mmask16>((1u << (n - k)) - 1u);
            v = _mm512_max_ps(v, _mm512_abs_ps(_mm512_maskz_loadu_ps(msk, x + k)));
        }
        return _mm512_reduce_max_ps(v);
    }
#endif
#if LIMARP_QGEMM_AVX2
    if constexpr (I == QIsa::Avx2) {
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 v = _mm256_setzero_ps();
        for (; k + 8 <= n; k += 8) v = _mm256_max_ps(v, _mm256_and_ps(_mm256_loadu_ps(x + k), absmask));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        m = _mm_cvtss_f32(h);
    }
#endif
    for (; k < n; ++k) m = std::max(m, std::fabs(x[k]));
    return m;
}

/// q[i] = round-half-even(x[i] * id) for n values (|x * id| <= 127 assumed, as for absmax scaling).
template <QIsa I>
inline void quantize_values(const float* x, std::int64_t n, float id, std::int8_t* q) noexcept {
    std::int64_t k = 0;
#if LIMARP_QGEMM_VNNI
    if constexpr (I == QIsa::Avx512Vnni) {
        const __m512 s = _mm512_set1_ps(id);
        for (; k + 16 <= n; k += 16)
            _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k),
                             _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), s))));
        if (k < n) {
            const __mmask16 msk = static_cast<__mmask16>((1u << (n - k)) - 1u);
            _mm512_mask_cvtsepi32_storeu_epi8(q + k, msk,
                                              _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(msk, x + k), s)));
        }
        return;
    }
#endif
#if LIMARP_QGEMM_AVX2
    if constexpr (I == QIsa::Avx2) {
        const __m256 s = _mm256_set1_ps(id);
        const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (; k + 32 <= n; k += 32) {
            const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), s));
            const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), s));
            const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 16), s));
            const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 24), s));
            const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k), _mm256_permutevar8x32_epi32(p, perm));
        }
    }
#endif
    for (; k < n; ++k) {
        const float r = std::nearbyint(x[k] * id);
        q[k] = static_cast<std::int8_t>(std::min(127.0f, std::max(-127.0f, r)));
    }
}

/// SIMD `quantize_row_int8`: same bytes, same scale.
template <QIsa I>
inline float quantize_row(const float* x, std::int64_t n, std::int8_t* q) noexcept {
    const float amax = absmax<I>(x, n);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    quantize_values<I>(x, n, id, q);
    return d;
}

// ---------------------------------------------------------------------------------------------
// Quantized activations.

/// How the kernels want the int8 activation values laid out.
enum class XFormat : std::uint8_t {
    S8,   ///< int8 q (GEMV kernels, scalar code)
    U8,   ///< uint8 q + 128 (VNNI packed GEMM: vpdpbusd wants u8 x s8)
    I16,  ///< int16 q (AVX2 packed GEMM: vpmaddwd)
};

/// Bytes per element of an XFormat.
constexpr std::int64_t xformat_size(XFormat f) noexcept { return f == XFormat::I16 ? 2 : 1; }

/// Activations quantized for an int8 x int8 product, in format `fmt`.
/// Layout of `data`: with tile == 0, row t holds `ld` elements (the n values of row t, then zeros
/// up to ld; for U8 the padding is 0x80, i.e. the value 0). With tile > 0 (packed GEMM), rows are
/// grouped by `tile` (the micro-kernel's MR; T is padded with zero rows to a multiple) and
/// interleaved in 4-byte units: element k of row t lies at
///   tile_base(t) + ((k / G) * tile + t % tile) * 4 bytes + (k % G) * element size, G = 4 / size,
/// so that a micro-kernel broadcasts the 4 bytes of consecutive rows from one pointer.
struct XQuant {
    XFormat fmt = XFormat::S8;       ///< element format of `data`
    std::int64_t T = 0;              ///< rows
    std::int64_t n = 0;              ///< values per row
    std::int64_t ld = 0;             ///< elements per row (multiple of 64)
    std::int64_t tile = 0;           ///< rows per interleaved tile, 0 = row-major
    const void* data = nullptr;      ///< the values
    const float* scale = nullptr;    ///< int8 row-wise: [T] row scales; q8_0: [T, n / 32] block scales
    const std::int32_t* cols = nullptr;  ///< int8 row-wise: the outlier columns, ascending [n_outl]
    std::int64_t n_outl = 0;         ///< number of outlier columns
    const float* xo = nullptr;       ///< [T, n_outl]: x at the outlier columns (f32)

    /// Row t as int8. \pre fmt == S8, tile == 0.
    const std::int8_t* s8(std::int64_t t) const noexcept { return static_cast<const std::int8_t*>(data) + t * ld; }
    /// First byte of the tile holding row t (tile > 0).
    const std::byte* tile_base(std::int64_t t) const noexcept {
        return static_cast<const std::byte*>(data) + (t / tile) * tile * ld * xformat_size(fmt);
    }
};

/// Writes row t (n int8 values `q`, zero padded to ld; q may be null when n == 0) into `base`
/// in format `fmt` and the layout of `XQuant` (row-major for tile == 0, else interleaved).
inline void store_xrow(XFormat fmt, void* base, std::int64_t t, std::int64_t ld, std::int64_t tile,
                       const std::int8_t* q, std::int64_t n) noexcept {
    const std::int64_t es = xformat_size(fmt);
    auto put = [fmt](std::byte* d, std::int8_t v) {
        switch (fmt) {
            case XFormat::S8: *reinterpret_cast<std::int8_t*>(d) = v; break;
            case XFormat::U8: *reinterpret_cast<std::uint8_t*>(d) = static_cast<std::uint8_t>(v ^ 0x80); break;
            case XFormat::I16: {
                const std::int16_t w = v;
                std::memcpy(d, &w, 2);
                break;
            }
        }
    };
    if (tile == 0) {
        std::byte* d = static_cast<std::byte*>(base) + t * ld * es;
        if (fmt == XFormat::S8) {
            if (n) std::memcpy(d, q, static_cast<std::size_t>(n));
            std::memset(d + n, 0, static_cast<std::size_t>(ld - n));
            return;
        }
        for (std::int64_t k = 0; k < ld; ++k) put(d + k * es, k < n ? q[k] : std::int8_t{0});
        return;
    }
    const std::int64_t G = 4 / es;
    std::byte* tb = static_cast<std::byte*>(base) + (t / tile) * tile * ld * es + (t % tile) * 4;
    for (std::int64_t g = 0; g < ld / G; ++g) {
        std::byte* d = tb + g * tile * 4;
        for (std::int64_t j = 0; j < G; ++j) {
            const std::int64_t k = g * G + j;
            put(d + j * es, k < n ? q[k] : std::int8_t{0});
        }
    }
}

/// Columns of x [T, n] in which some |x| >= thr, ascending (none when thr <= 0).
template <class A>
void find_outlier_columns(std::vector<std::int32_t>& cols, const float* x, std::int64_t T, std::int64_t n, float thr) {
    cols.clear();
    if (!(thr > 0.0f)) return;
    using B = xsimd::batch<float, A>;
    constexpr std::int64_t L = static_cast<std::int64_t>(B::size);
    float* cm = qscratch_as<7, float>(n);
    std::fill(cm, cm + n, 0.0f);
    for (std::int64_t t = 0; t < T; ++t) {
        const float* r = x + t * n;
        std::int64_t k = 0;
        for (; k + L <= n; k += L)
            xsimd::max(B::load_unaligned(cm + k), xsimd::abs(B::load_unaligned(r + k))).store_unaligned(cm + k);
        for (; k < n; ++k) cm[k] = std::max(cm[k], std::fabs(r[k]));
    }
    for (std::int64_t k = 0; k < n; ++k)
        if (cm[k] >= thr) cols.push_back(static_cast<std::int32_t>(k));
}

/// Quantizes x [T, n] row-wise to int8 for the int8 row-wise kernels: outlier columns (some
/// |x| >= thr; none for thr <= 0) are zeroed before the row absmax and their f32 values gathered
/// into xo. Layout `fmt`/`tile` as in XQuant. Buffers are the calling thread's scratch (slots
/// 1-2), valid until the next call from that thread.
template <class A, QIsa I>
XQuant quantize_x_int8(const float* x /*[T, n]*/, std::int64_t T, std::int64_t n, float thr, XFormat fmt,
                       std::int64_t tile, ThreadPool& pool) {
    static thread_local std::vector<std::int32_t> cols;
    find_outlier_columns<A>(cols, x, T, n, thr);
    XQuant q;
    q.fmt = fmt;
    q.T = T;
    q.n = n;
    q.ld = round_up(n, 64);
    q.tile = tile;
    const std::int64_t n_outl = static_cast<std::int64_t>(cols.size());
    const std::int64_t T_pad = tile ? round_up(T, tile) : T;
    void* data = qscratch<1>(static_cast<std::size_t>(T_pad * q.ld * xformat_size(fmt)));
    float* scale = qscratch_as<2, float>(T + T * n_outl);
    float* xo = scale + T;
    for (std::int64_t t = T; t < T_pad; ++t) store_xrow(fmt, data, t, q.ld, tile, nullptr, 0);
    // `cols` is this thread's thread_local: the workers must read it through a pointer.
    const std::int32_t* col = cols.data();
    for_each_range(pool, T, static_cast<double>(n) * 4.0, [&](std::int64_t b, std::int64_t e) {
        float* tmp = n_outl ? qscratch_as<4, float>(n) : nullptr;
        const bool direct = fmt == XFormat::S8 && tile == 0;
        std::int8_t* qt = direct ? nullptr : qscratch_as<5, std::int8_t>(n);
        for (std::int64_t t = b; t < e; ++t) {
            const float* r = x + t * n;
            if (n_outl) {
                std::memcpy(tmp, r, static_cast<std::size_t>(n) * sizeof(float));
                for (std::int64_t j = 0; j < n_outl; ++j) {
                    xo[t * n_outl + j] = r[col[j]];
                    tmp[col[j]] = 0.0f;
                }
                r = tmp;
            }
            std::int8_t* qr = direct ? static_cast<std::int8_t*>(data) + t * q.ld : qt;
            scale[t] = quantize_row<I>(r, n, qr);
            store_xrow(fmt, data, t, q.ld, tile, qr, n);
        }
    });
    q.data = data;
    q.scale = scale;
    q.cols = cols.data();
    q.n_outl = n_outl;
    q.xo = xo;
    return q;
}

/// Quantizes x [T, n] (n a multiple of 32) to q8_0 blocks for the Q8_0 kernels: per block of 32,
/// d = absmax / 127 (kept in f32) and q = round-half-even(x / d). Scratch slots 1-2.
template <QIsa I>
XQuant quantize_x_q8_0(const float* x /*[T, n]*/, std::int64_t T, std::int64_t n, XFormat fmt, std::int64_t tile,
                       ThreadPool& pool) {
    XQuant q;
    q.fmt = fmt;
    q.T = T;
    q.n = n;
    q.ld = round_up(n, 64);
    q.tile = tile;
    const std::int64_t nb = n / 32;
    const std::int64_t T_pad = tile ? round_up(T, tile) : T;
    void* data = qscratch<1>(static_cast<std::size_t>(T_pad * q.ld * xformat_size(fmt)));
    float* scale = qscratch_as<2, float>(T * nb);
    for (std::int64_t t = T; t < T_pad; ++t) store_xrow(fmt, data, t, q.ld, tile, nullptr, 0);
    for_each_range(pool, T, static_cast<double>(n) * 4.0, [&](std::int64_t b, std::int64_t e) {
        const bool direct = fmt == XFormat::S8 && tile == 0;
        std::int8_t* qt = direct ? nullptr : qscratch_as<5, std::int8_t>(n);
        for (std::int64_t t = b; t < e; ++t) {
            std::int8_t* qr = direct ? static_cast<std::int8_t*>(data) + t * q.ld : qt;
            for (std::int64_t j = 0; j < nb; ++j) scale[t * nb + j] = quantize_row<I>(x + t * n + 32 * j, 32, qr + 32 * j);
            store_xrow(fmt, data, t, q.ld, tile, qr, n);
        }
    });
    q.data = data;
    q.scale = scale;
    return q;
}

// ---------------------------------------------------------------------------------------------
// Packed GEMM driver.

/// Runs a packed GEMM described by `K` (a kernel traits type) over y [T, n_out]:
/// - output rows are split into panels of K::NR; tasks are (panel, row chunk) pairs handed out
///   dynamically on the pool;
/// - per task and per chunk of K::KC inputs: `K::pack` writes the panel's weights into a thread
///   scratch buffer, then `K::micro` runs every tile of K::MR activation rows against it,
///   accumulating into a per-task tile buffer acc [rows, NR] of `typename K::Acc`;
/// - `K::epilogue` turns the tile buffer into y.
template <class K>
void packed_gemm(K& k, std::int64_t T, std::int64_t n_out, std::int64_t n_in, ThreadPool& pool) {
    constexpr std::int64_t NR = K::NR, MR = K::MR, KC = K::KC;
    const std::int64_t n_panels = (n_out + NR - 1) / NR;
    const std::int64_t n_threads = pool.size();
    const std::int64_t t_tiles = (T + MR - 1) / MR;
    // Split the rows of x too when there are few panels per thread.
    const std::int64_t t_chunks =
        std::min<std::int64_t>(t_tiles, std::max<std::int64_t>(1, (2 * n_threads + n_panels - 1) / n_panels));
    const std::int64_t tiles_per_chunk = (t_tiles + t_chunks - 1) / t_chunks;
    const std::int64_t n_tasks = n_panels * t_chunks;
    const std::int64_t kc_max = std::min(KC, round_up(n_in, 64));
    for_each_task(pool, n_tasks, [&](std::int64_t task) {
        const std::int64_t p = task / t_chunks, tc = task % t_chunks;
        const std::int64_t o0 = p * NR, rows = std::min(NR, n_out - o0);
        const std::int64_t t0 = tc * tiles_per_chunk * MR, t1 = std::min(T, (tc + 1) * tiles_per_chunk * MR);
        if (t0 >= t1) return;
        std::byte* packed = qscratch<8>(static_cast<std::size_t>(K::pack_bytes(kc_max)));
        auto* acc = qscratch_as<9, typename K::Acc>((t1 - t0) * NR);
        for (std::int64_t k0 = 0; k0 < n_in; k0 += KC) {
            const std::int64_t kc = std::min(KC, n_in - k0);
            k.pack(packed, o0, rows, k0, kc);
            for (std::int64_t t = t0; t < t1; t += MR) {
                const int m = static_cast<int>(std::min<std::int64_t>(MR, t1 - t));
                k.micro(m, t, k0, kc, packed, acc + (t - t0) * NR, k0 == 0);
            }
        }
        k.epilogue(acc, t0, t1, o0, rows);
    });
}

}  // namespace qdetail
/// \endcond

}  // namespace limarp::ops

LIMARP_QGEMM_DIAG_POP
