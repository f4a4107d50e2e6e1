#pragma once
/// \file attention.hpp
/// \brief CPU sliding-window, grouped-query, causal attention of new tokens over themselves and
/// a rolling (ring-buffer) KV cache, with a streaming (online, flash-attention style) softmax.
///
/// Work is split into (tile of consecutive tokens, kv head) tasks. A tile holds up to kQueryRows
/// query rows: its tokens times the n_heads / n_kv_heads query heads that share the kv head, so
/// every key and value row is read once per tile rather than once per (token, head). Keys are
/// visited in blocks of kKeyBlock: S = Q·Kᵀ and O += P·V run on the packed-GEMM micro-kernel,
/// with a running max and sum per query row and the accumulator rescaled when the max grows;
/// keys outside a row's window get probability 0. Memory use is O(kQueryRows * (head_dim +
/// kKeyBlock)) per thread, cost O(T * (window + tile) * n_heads * head_dim); the T x T score
/// matrix is never formed. Tasks are handed out dynamically, latest tokens (most keys) first.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/gemm_kernel.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// Head layout and window of an attention call.
struct AttentionShape {
    std::int64_t n_heads;      ///< query heads
    std::int64_t n_kv_heads;   ///< key/value heads (n_heads is a multiple of it)
    std::int64_t head_dim;     ///< dimension of one head
    std::int64_t window_keys;  ///< keys a query sees, itself included; 0 = unlimited (full causal)
};

/// \cond
namespace cpu_detail {

/// Keys per block of the streaming softmax.
inline constexpr std::int64_t kKeyBlock = 64;
/// Query rows (tokens x heads of one kv group) per task: every key block is read once for all of them.
inline constexpr std::int64_t kQueryRows = 48;

/// Streaming-softmax state and scratch of one task: M query rows (QT tokens x n_rep heads).
struct AttnTile {
    float* qbuf;  // [M, hd] the tile's queries, contiguous
    float* o;     // [M, hd] unnormalised output
    float* s;     // [M, kKeyBlock] scores, then probabilities, of the current key block
    float* m;     // [M] running max of the scaled scores
    float* l;     // [M] running sum of exp(score - m)
    float* kp;    // [ceil(kKeyBlock / NR), hd, NR] packed key block
    float* vt;    // [kKeyBlock, NR] value columns of the head_dim tail (hd % NR != 0)
    std::int64_t M, n_rep, hd;
    std::int64_t q_pos0;  // absolute position of the tile's first token
    std::int64_t W;       // window_keys (0 = unlimited)
    float scale;
};

/// Folds `nb` <= kKeyBlock consecutive key/value rows at absolute positions [pos, pos + nb)
/// (row stride ld, already offset to the kv head) into the tile.
template <class A>
void attend_block(AttnTile& a, const float* k, const float* v, std::int64_t ld, std::int64_t pos,
                  std::int64_t nb) noexcept {
    using B = fbatch<A>;
    using Blk = GemmBlocking<A>;
    constexpr std::int64_t L = lanes<A>, NR = Blk::NR, MR = Blk::MR, KB = kKeyBlock;
    const std::int64_t hd = a.hd, M = a.M;
    const std::int64_t n_panels = (nb + NR - 1) / NR;
    // S = Q · Kᵀ
    pack_panels(a.kp, k, ld, nb, 0, hd, NR);
    for (std::int64_t r0 = 0; r0 < M; r0 += MR) {
        const int mr = static_cast<int>(std::min(MR, M - r0));
        for (std::int64_t p = 0; p < n_panels; ++p)
            micro_kernel_dispatch<A, Blk::MR>(mr, a.qbuf + r0 * hd, hd, a.kp + p * hd * NR, NR, hd, a.s + r0 * KB + p * NR,
                                              KB, std::min(NR, nb - p * NR), false);
    }
    // Online softmax per query row; masked keys get probability 0.
    for (std::int64_t r = 0; r < M; ++r) {
        float* s = a.s + r * KB;
        const std::int64_t qpos = a.q_pos0 + r / a.n_rep;
        const std::int64_t lo = a.W > 0 ? std::max<std::int64_t>(0, qpos - a.W + 1) : 0;
        const std::int64_t ja = std::clamp<std::int64_t>(lo - pos, 0, nb), jb = std::clamp<std::int64_t>(qpos + 1 - pos, 0, nb);
        if (ja >= jb) {
            std::fill(s, s + nb, 0.0f);
            continue;
        }
        float bm = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = ja; j < jb; ++j) {
            s[j] *= a.scale;
            bm = std::max(bm, s[j]);
        }
        const float m_old = a.m[r], m_new = std::max(m_old, bm);
        const float alpha = std::exp(m_old - m_new);  // 0 on the first block (m_old = -inf)
        std::fill(s, s + ja, 0.0f);
        std::fill(s + jb, s + nb, 0.0f);
        const B vm(m_new);
        B ps(0.0f);
        std::int64_t j = ja;
        for (; j + L <= jb; j += L) {
            const B e = xsimd::exp(B::load_unaligned(s + j) - vm);
            e.store_unaligned(s + j);
            ps += e;
        }
        float psum = hsum<A>(ps);
        for (; j < jb; ++j) {
            s[j] = std::exp(s[j] - m_new);
            psum += s[j];
        }
        a.l[r] = a.l[r] * alpha + psum;
        a.m[r] = m_new;
        if (alpha != 1.0f) {
            float* o = a.o + r * hd;
            const B va(alpha);
            const std::int64_t hv = hd - hd % L;
            for (std::int64_t i = 0; i < hv; i += L) (B::load_unaligned(o + i) * va).store_unaligned(o + i);
            for (std::int64_t i = hv; i < hd; ++i) o[i] *= alpha;
        }
    }
    // O += P · V
    const std::int64_t hd_full = hd - hd % NR;
    if (hd_full < hd) {
        for (std::int64_t j = 0; j < nb; ++j)
            for (std::int64_t c = 0; c < NR; ++c) a.vt[j * NR + c] = hd_full + c < hd ? v[j * ld + hd_full + c] : 0.0f;
    }
    for (std::int64_t r0 = 0; r0 < M; r0 += MR) {
        const int mr = static_cast<int>(std::min(MR, M - r0));
        for (std::int64_t d0 = 0; d0 < hd_full; d0 += NR)
            micro_kernel_dispatch<A, Blk::MR>(mr, a.s + r0 * KB, KB, v + d0, ld, nb, a.o + r0 * hd + d0, hd, NR, true);
        if (hd_full < hd)
            micro_kernel_dispatch<A, Blk::MR>(mr, a.s + r0 * KB, KB, a.vt, NR, nb, a.o + r0 * hd + hd_full, hd,
                                              hd - hd_full, true);
    }
}

/// Folds `n` consecutive key/value rows starting at absolute position `pos` into the tile, by blocks.
template <class A>
void attend_rows(AttnTile& a, const float* k, const float* v, std::int64_t ld, std::int64_t pos,
                 std::int64_t n) noexcept {
    for (std::int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
        // Rows of one head are ld floats apart (often a page): prefetch the next block's rows,
        // which the hardware prefetchers do not follow across pages.
        const std::int64_t nxt = std::min(kKeyBlock, n - j0 - kKeyBlock);
        for (std::int64_t j = 0; j < nxt; ++j)
            for (std::int64_t c = 0; c < a.hd; c += 16) {
                __builtin_prefetch(k + (j0 + kKeyBlock + j) * ld + c, 0, 2);
                __builtin_prefetch(v + (j0 + kKeyBlock + j) * ld + c, 0, 2);
            }
        attend_block<A>(a, k + j0 * ld, v + j0 * ld, ld, pos + j0, std::min(kKeyBlock, n - j0));
    }
}

}  // namespace cpu_detail
/// \endcond

/// Sliding-window grouped-query causal attention of T new tokens (absolute positions
/// p0 .. p0+T-1) over themselves and a ring-buffer KV cache: for query head h of the token at
/// position p, out = softmax_j(q·k_j * scale) · v_j over key positions
/// max(0, p - window_keys + 1) .. p (0 .. p when window_keys == 0), using kv head
/// h / (n_heads / n_kv_heads). Keys/values at positions >= p0 are rows (pos - p0) of
/// k_new/v_new; positions < p0 are rows (pos % C) of k_cache/v_cache. f32 throughout, exact exp
/// (~1 ulp), streaming softmax with max subtraction; the T x T score matrix is never formed.
///
/// \param out     [T, n_heads * head_dim] attention output (before o_proj)
/// \param q       [T, n_heads * head_dim] queries (RoPE applied)
/// \param k_new   [T, n_kv_heads * head_dim] keys of the new tokens (RoPE applied)
/// \param v_new   [T, n_kv_heads * head_dim] values of the new tokens
/// \param k_cache [C, n_kv_heads * head_dim] ring buffer of earlier keys (row pos % C); may be null when p0 == 0
/// \param v_cache [C, n_kv_heads * head_dim] ring buffer of earlier values
/// \param C       ring buffer rows
/// \param p0      absolute position of the first new token (= number of tokens before it)
/// \param T       number of new tokens
/// \param s       heads and window
/// \param scale   score scale, normally 1 / sqrt(head_dim)
/// \param pool    thread pool (nullptr: ThreadPool::global())
/// \pre n_heads % n_kv_heads == 0; head_dim > 0; window_keys >= 0; p0 >= 0; T >= 0.
/// \pre The cache holds every earlier position a query needs and has not been overwritten by
///      the new tokens yet (write k_new/v_new into the ring after the call): C >= window_keys - 1
///      when windowed, C >= p0 when unlimited.
/// \pre out does not overlap any input.
template <class A>
void attention_sliding_window(Cpu<A>, float* out /*[T, n_heads*head_dim]*/, const float* q /*[T, n_heads*head_dim]*/,
                              const float* k_new /*[T, n_kv_heads*head_dim]*/,
                              const float* v_new /*[T, n_kv_heads*head_dim]*/,
                              const float* k_cache /*[C, n_kv_heads*head_dim]*/,
                              const float* v_cache /*[C, n_kv_heads*head_dim]*/, std::int64_t C, std::int64_t p0,
                              std::int64_t T, const AttentionShape& s, float scale, ThreadPool* pool = nullptr) {
    using Blk = cpu_detail::GemmBlocking<A>;
    constexpr std::int64_t NR = Blk::NR, KB = cpu_detail::kKeyBlock;
    const std::int64_t n_kv = s.n_kv_heads, hd = s.head_dim, n_rep = s.n_heads / s.n_kv_heads;
    const std::int64_t kvd = n_kv * hd, qd = s.n_heads * hd, W = s.window_keys;
    if (T <= 0) return;
    const std::int64_t QT = std::max<std::int64_t>(1, cpu_detail::kQueryRows / n_rep);  // tokens per tile
    const std::int64_t n_tiles = (T + QT - 1) / QT;
    ThreadPool& p = cpu_detail::pool_or_global(pool);
    auto task = [&](std::int64_t i, unsigned) {
        // Latest tiles (most keys) first.
        const std::int64_t tile = n_tiles - 1 - i / n_kv, g = i % n_kv;
        const std::int64_t t0 = tile * QT, nt = std::min(QT, T - t0), M = nt * n_rep;
        const std::int64_t kp_size = (KB + NR - 1) / NR * NR * hd;
        float* buf = cpu_detail::scratch<2>(static_cast<std::size_t>(2 * M * hd + M * KB + 2 * M + kp_size + KB * NR));
        cpu_detail::AttnTile a{};
        a.qbuf = buf;
        a.o = a.qbuf + M * hd;
        a.s = a.o + M * hd;
        a.m = a.s + M * KB;
        a.l = a.m + M;
        a.kp = a.l + M;
        a.vt = a.kp + kp_size;
        a.M = M;
        a.n_rep = n_rep;
        a.hd = hd;
        a.q_pos0 = p0 + t0;
        a.W = W;
        a.scale = scale;
        for (std::int64_t tt = 0; tt < nt; ++tt)
            std::copy_n(q + (t0 + tt) * qd + g * n_rep * hd, n_rep * hd, a.qbuf + tt * n_rep * hd);
        std::fill(a.o, a.o + M * hd, 0.0f);
        std::fill(a.m, a.m + M, -std::numeric_limits<float>::infinity());
        std::fill(a.l, a.l + M, 0.0f);
        // Keys of the tile: [lo of its first token, position of its last token].
        const std::int64_t lo = W > 0 ? std::max<std::int64_t>(0, p0 + t0 - W + 1) : 0, hi = p0 + t0 + nt - 1;
        // Earlier positions from the ring, split where it wraps.
        for (std::int64_t pa = lo, pb = std::min(hi + 1, p0); pa < pb;) {
            const std::int64_t r = pa % C, len = std::min(pb - pa, C - r);
            cpu_detail::attend_rows<A>(a, k_cache + r * kvd + g * hd, v_cache + r * kvd + g * hd, kvd, pa, len);
            pa += len;
        }
        // New positions.
        const std::int64_t pa = std::max(lo, p0);
        cpu_detail::attend_rows<A>(a, k_new + (pa - p0) * kvd + g * hd, v_new + (pa - p0) * kvd + g * hd, kvd, pa,
                                   hi + 1 - pa);
        for (std::int64_t tt = 0; tt < nt; ++tt) {
            float* o = out + (t0 + tt) * qd + g * n_rep * hd;
            for (std::int64_t r = 0; r < n_rep; ++r) {
                const float* acc = a.o + (tt * n_rep + r) * hd;
                const float l = a.l[tt * n_rep + r];
                for (std::int64_t d = 0; d < hd; ++d) o[r * hd + d] = acc[d] / l;
            }
        }
    };
    cpu_detail::parallel_dynamic(p, n_tiles * n_kv, task);
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
