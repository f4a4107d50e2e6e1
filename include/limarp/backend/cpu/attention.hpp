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
///
/// Training (whole sequence from position 0, no cache): `attention_sliding_window_lse` is the
/// same attention that also returns the log-sum-exp of every (token, head) score row, and
/// `attention_sliding_window_backward` the flash-attention-style backward that recomputes the
/// probabilities tile by tile from it: never a T x T matrix, and only the key blocks inside a
/// tile's window are visited, so its cost is O(T * window * n_heads * head_dim).

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/attention_shape.hpp"
#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/eigen.hpp"
#include "limarp/backend/cpu/detail/gemm_kernel.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/backend/cpu/gemm_backward.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

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
    float* kf;    // [kKeyBlock, hd] a block of keys, staged (stage_rows)
    float* vf;    // [kKeyBlock, hd] a block of values, staged
    std::int64_t M, n_rep, hd;
    std::int64_t q_pos0;  // absolute position of the tile's first token
    std::int64_t W;       // window_keys (0 = unlimited)
    float scale;
};

/// Folds `nb` <= kKeyBlock consecutive key/value rows at absolute positions [pos, pos + nb)
/// (key rows of stride ldk, value rows of stride ld, already offset to the kv head) into the tile.
template <class A>
void attend_block(AttnTile& a, const float* k, std::int64_t ldk, const float* v, std::int64_t ld, std::int64_t pos,
                  std::int64_t nb) noexcept {
    using B = fbatch<A>;
    using Blk = GemmBlocking<A>;
    constexpr std::int64_t L = lanes<A>, NR = Blk::NR, MR = Blk::MR, KB = kKeyBlock;
    const std::int64_t hd = a.hd, M = a.M;
    const std::int64_t n_panels = (nb + NR - 1) / NR;
    // S = Q · Kᵀ
    pack_panels(a.kp, k, ldk, nb, 0, hd, NR);
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

/// Rows ahead that `stage_rows` prefetches: enough lines in flight to hide the latency of strided
/// rows (a kv head's rows are kv_dim values apart), few enough not to overflow the miss queues.
inline constexpr std::int64_t kStageAhead = 12;

/// Copies `nb` rows of `hd` values (f32, or bf16 widened exactly; row stride ld) into dst [nb, hd]
/// f32, prefetching the row kStageAhead ahead while there is one (`avail` rows readable from src).
/// A running prefetch: issuing a whole block's lines at once (the first version) overflowed the
/// miss queues and left the loads waiting (benchmarks/NOTES.md, session 13).
template <class A, class KV>
void stage_rows(float* dst, const KV* src, std::int64_t ld, std::int64_t nb, std::int64_t hd,
                std::int64_t avail) noexcept {
    constexpr std::int64_t L = lanes<A>, per_line = 64 / static_cast<std::int64_t>(sizeof(KV));
    for (std::int64_t j = 0; j < nb; ++j) {
        if (j + kStageAhead < avail)
            for (std::int64_t c = 0; c < hd; c += per_line) __builtin_prefetch(src + (j + kStageAhead) * ld + c, 0, 3);
        const KV* s = src + j * ld;
        float* d = dst + j * hd;
        std::int64_t c = 0;
        for (; c + L <= hd; c += L) load_f32<A>(s + c).store_unaligned(d + c);
        for (; c < hd; ++c) d[c] = to_f32(s[c]);
    }
}

/// Folds `n` consecutive key/value rows starting at absolute position `pos` into the tile, by
/// blocks: each block's rows are first staged (`stage_rows`: contiguous f32 in the tile's kf/vf,
/// with a running prefetch of the rows ahead), then folded from there.
template <class A, class KV>
void attend_rows(AttnTile& a, const KV* k, const KV* v, std::int64_t ld, std::int64_t pos,
                 std::int64_t n) noexcept {
    for (std::int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
        const std::int64_t nb = std::min(kKeyBlock, n - j0);
        stage_rows<A>(a.kf, k + j0 * ld, ld, nb, a.hd, n - j0);
        stage_rows<A>(a.vf, v + j0 * ld, ld, nb, a.hd, n - j0);
        attend_block<A>(a, a.kf, a.hd, a.vf, a.hd, pos + j0, nb);
    }
}

// attention_sliding_window (below) over an f32 or bf16 ring.
template <class A, class KV>
void attention_sliding_window_impl(Cpu<A>, float* out, const float* q, const float* k_new, const float* v_new,
                                   const KV* k_cache, const KV* v_cache, std::int64_t C, std::int64_t p0, std::int64_t T,
                                   const AttentionShape& s, float scale, ThreadPool* pool) {
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
        const std::int64_t staged = 2 * KB * hd;  // kf, vf
        float* buf =
            cpu_detail::scratch<2>(static_cast<std::size_t>(2 * M * hd + M * KB + 2 * M + kp_size + KB * NR + staged));
        cpu_detail::AttnTile a{};
        a.qbuf = buf;
        a.o = a.qbuf + M * hd;
        a.s = a.o + M * hd;
        a.m = a.s + M * KB;
        a.l = a.m + M;
        a.kp = a.l + M;
        a.vt = a.kp + kp_size;
        a.kf = a.vt + KB * NR;
        a.vf = a.kf + KB * hd;
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

}  // namespace cpu_detail
/// \endcond

/// Sliding-window grouped-query causal attention of T new tokens (absolute positions
/// p0 .. p0+T-1) over themselves and a ring-buffer KV cache: for query head h of the token at
/// position p, out = softmax_j(q·k_j * scale) · v_j over key positions
/// max(0, p - window_keys + 1) .. p (0 .. p when window_keys == 0), using kv head
/// h / (n_heads / n_kv_heads). Keys/values at positions >= p0 are rows (pos - p0) of
/// k_new/v_new; positions < p0 are rows (pos % C) of k_cache/v_cache (f32 here; bf16 in the
/// overload below). f32 arithmetic throughout, exact exp (~1 ulp), streaming softmax
/// with max subtraction; the T x T score matrix is never formed.
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
    cpu_detail::attention_sliding_window_impl(Cpu<A>{}, out, q, k_new, v_new, k_cache, v_cache, C, p0, T, s, scale, pool);
}

/// `attention_sliding_window` over a bf16 ring (its rows widened exactly to f32 block by block;
/// `KV` is deduced so that a null cache still picks the f32 form).
template <class A, class KV>
    requires std::same_as<KV, bf16>
void attention_sliding_window(Cpu<A>, float* out /*[T, n_heads*head_dim]*/, const float* q /*[T, n_heads*head_dim]*/,
                              const float* k_new /*[T, n_kv_heads*head_dim]*/,
                              const float* v_new /*[T, n_kv_heads*head_dim]*/,
                              const KV* k_cache /*[C, n_kv_heads*head_dim]*/,
                              const KV* v_cache /*[C, n_kv_heads*head_dim]*/, std::int64_t C, std::int64_t p0,
                              std::int64_t T, const AttentionShape& s, float scale, ThreadPool* pool = nullptr) {
    cpu_detail::attention_sliding_window_impl(Cpu<A>{}, out, q, k_new, v_new, k_cache, v_cache, C, p0, T, s, scale, pool);
}

/// One attention layer's step over the rolling cache (what `GqaAttention::forward` runs between
/// RoPE and o_proj): `attention_sliding_window` of the T new tokens at positions[0] to
/// positions[0] + T - 1, then their keys and values into the ring (the newest min(T, C) of them,
/// row pos % C). Every backend provides it with this signature for an f32 ring; the host
/// backends also for a bf16 ring (`KV` = bf16: rows rounded to nearest-even when stored).
/// Positions are in the backend's memory (host here).
/// \pre as `attention_sliding_window`; positions consecutive.
template <class A, class KV>
    requires std::same_as<KV, float> || std::same_as<KV, bf16>
void attention_with_cache(Cpu<A>, float* out /*[T, n_heads*head_dim]*/, const float* q /*[T, n_heads*head_dim]*/,
                          const float* k_new /*[T, kv_dim]*/, const float* v_new /*[T, kv_dim]*/,
                          KV* k_cache /*[C, kv_dim]*/, KV* v_cache /*[C, kv_dim]*/, std::int64_t C,
                          const std::int64_t* positions /*[T]*/, std::int64_t T, const AttentionShape& s, float scale) {
    if (T <= 0) return;
    const std::int64_t p0 = positions[0], kvd = s.n_kv_heads * s.head_dim;
    attention_sliding_window(Cpu<A>{}, out, q, k_new, v_new, static_cast<const KV*>(k_cache), static_cast<const KV*>(v_cache), C,
                             p0, T, s, scale);
    for (std::int64_t t = T - std::min(T, C); t < T; ++t) {
        const std::int64_t slot = (p0 + t) % C;
        if constexpr (std::is_same_v<KV, float>) {
            std::copy_n(k_new + t * kvd, kvd, k_cache + slot * kvd);
            std::copy_n(v_new + t * kvd, kvd, v_cache + slot * kvd);
        } else {
            for (std::int64_t i = 0; i < kvd; ++i) {
                k_cache[slot * kvd + i].bits = f32_to_bf16(k_new[t * kvd + i]);
                v_cache[slot * kvd + i].bits = f32_to_bf16(v_new[t * kvd + i]);
            }
        }
    }
}

/// \cond
namespace cpu_detail {

/// Keys per block of the training attention (forward with log-sum-exp, and backward).
inline constexpr std::int64_t kTrainKeyBlock = 64;
/// Query rows (tokens x heads of one kv group) per tile of the training attention.
inline constexpr std::int64_t kTrainQueryRows = 64;

/// Copies the rows of kv group g for tokens [t0, t0 + nt) of a [T, ld] tensor whose heads are
/// `w` floats wide (head_dim, or 1 for per-head scalars) into dst [nt * n_rep, w].
inline void attn_gather(float* dst, const float* src, std::int64_t t0, std::int64_t nt, std::int64_t g,
                        std::int64_t n_rep, std::int64_t w, std::int64_t ld) noexcept {
    for (std::int64_t tt = 0; tt < nt; ++tt)
        std::copy_n(src + (t0 + tt) * ld + g * n_rep * w, n_rep * w, dst + tt * n_rep * w);
}

/// First key position seen by a query at `qpos` with a window of W keys (0 = unlimited).
inline std::int64_t attn_first_key(std::int64_t qpos, std::int64_t W) noexcept {
    return W > 0 ? std::max<std::int64_t>(0, qpos - W + 1) : 0;
}

/// Keys [a, b) of a block starting at key position j0 (nb keys) seen by a query at qpos.
inline std::pair<std::int64_t, std::int64_t> attn_visible(std::int64_t qpos, std::int64_t j0, std::int64_t nb,
                                                          std::int64_t W) noexcept {
    const std::int64_t a = std::clamp<std::int64_t>(attn_first_key(qpos, W) - j0, 0, nb);
    const std::int64_t b = std::clamp<std::int64_t>(qpos + 1 - j0, 0, nb);
    return {a, std::max(a, b)};
}

/// P[r, j] = exp(scale * q_r . k_j - lse_r) for the key positions j0 + j that query row r
/// (token t0 + r / n_rep) sees, 0 for the others: the probabilities of a (query tile, key block).
template <class A>
void attn_probs(float* P /*[M, nb]*/, const float* Qt /*[M, hd]*/, const float* lse_t /*[M]*/,
                const float* k /*[nb, ldk]*/, std::int64_t ldk, std::int64_t M, std::int64_t nb, std::int64_t hd,
                std::int64_t n_rep, std::int64_t t0, std::int64_t j0, std::int64_t W, float scale) noexcept {
    using B = fbatch<A>;
    constexpr std::int64_t L = lanes<A>;
    BwdMap S(P, M, nb, Eigen::OuterStride<>(nb));
    S.noalias() = BwdCMap(Qt, M, hd, Eigen::OuterStride<>(hd)) * BwdCMap(k, nb, hd, Eigen::OuterStride<>(ldk)).transpose();
    for (std::int64_t r = 0; r < M; ++r) {
        float* s = P + r * nb;
        const auto [a, b] = attn_visible(t0 + r / n_rep, j0, nb, W);
        std::fill(s, s + a, 0.0f);
        std::fill(s + b, s + nb, 0.0f);
        const B vs(scale), vl(lse_t[r]);
        std::int64_t j = a;
        for (; j + L <= b; j += L) xsimd::exp(B::load_unaligned(s + j) * vs - vl).store_unaligned(s + j);
        for (; j < b; ++j) s[j] = std::exp(s[j] * scale - lse_t[r]);
    }
}

/// dS = P o (dP - D_r) in place of dP, row by row: the gradient of the scaled scores.
template <class A>
void attn_dscores(float* dP /*[M, nb]*/, const float* P /*[M, nb]*/, const float* D_t /*[M]*/, std::int64_t M,
                  std::int64_t nb) noexcept {
    using B = fbatch<A>;
    constexpr std::int64_t L = lanes<A>;
    for (std::int64_t r = 0; r < M; ++r) {
        float* d = dP + r * nb;
        const float* p = P + r * nb;
        const B vd(D_t[r]);
        std::int64_t j = 0;
        for (; j + L <= nb; j += L)
            (B::load_unaligned(p + j) * (B::load_unaligned(d + j) - vd)).store_unaligned(d + j);
        for (; j < nb; ++j) d[j] = p[j] * (d[j] - D_t[r]);
    }
}

}  // namespace cpu_detail
/// \endcond

/// Training form of `attention_sliding_window`: T tokens at positions 0 .. T-1 attend to
/// themselves (no cache), and the log-sum-exp of every scaled score row is returned for
/// `attention_sliding_window_backward`. Same masking and f32 streaming softmax as the inference
/// form; the T x T score matrix is never formed and only key blocks inside a query tile's
/// window are visited.
///
/// \param out    [T, n_heads * head_dim] attention output (before o_proj)
/// \param lse    [T, n_heads] log(sum_j exp(scale * q . k_j)) over the keys each row sees
/// \param q      [T, n_heads * head_dim] queries (RoPE applied)
/// \param k      [T, n_kv_heads * head_dim] keys (RoPE applied)
/// \param v      [T, n_kv_heads * head_dim] values
/// \param T      number of tokens
/// \param s      heads and window
/// \param scale  score scale, normally 1 / sqrt(head_dim)
/// \param pool   thread pool (nullptr: ThreadPool::global())
/// \pre n_heads % n_kv_heads == 0; head_dim > 0; window_keys >= 0; T >= 0; out and lse do not
///      overlap any input.
template <class A>
void attention_sliding_window_lse(Cpu<A>, float* out /*[T, n_heads*head_dim]*/, float* lse /*[T, n_heads]*/,
                                  const float* q /*[T, n_heads*head_dim]*/, const float* k /*[T, n_kv_heads*head_dim]*/,
                                  const float* v /*[T, n_kv_heads*head_dim]*/, std::int64_t T, const AttentionShape& s,
                                  float scale, ThreadPool* pool = nullptr) {
    using namespace cpu_detail;
    using Bt = fbatch<A>;
    constexpr std::int64_t L = lanes<A>, KB = kTrainKeyBlock;
    const std::int64_t n_kv = s.n_kv_heads, hd = s.head_dim, nh = s.n_heads, n_rep = nh / n_kv;
    const std::int64_t kvd = n_kv * hd, qd = nh * hd, W = s.window_keys;
    if (T <= 0) return;
    const std::int64_t QT = std::max<std::int64_t>(1, kTrainQueryRows / n_rep);  // tokens per tile
    const std::int64_t n_tiles = (T + QT - 1) / QT;
    auto task = [&](std::int64_t i, unsigned) {
        const std::int64_t tile = n_tiles - 1 - i / n_kv, g = i % n_kv;  // latest tiles (most keys) first
        const std::int64_t t0 = tile * QT, nt = std::min(QT, T - t0), M = nt * n_rep;
        float* Q = scratch<7>(static_cast<std::size_t>(2 * M * hd + M * KB + 2 * M));
        float* O = Q + M * hd;
        float* S = O + M * hd;
        float* m = S + M * KB;
        float* l = m + M;
        attn_gather(Q, q, t0, nt, g, n_rep, hd, qd);
        std::fill(O, O + M * hd, 0.0f);
        std::fill(m, m + M, -std::numeric_limits<float>::infinity());
        std::fill(l, l + M, 0.0f);
        const std::int64_t hi = t0 + nt;
        for (std::int64_t j0 = attn_first_key(t0, W); j0 < hi; j0 += KB) {
            const std::int64_t nb = std::min(KB, hi - j0);
            BwdMap Sm(S, M, nb, Eigen::OuterStride<>(nb));
            Sm.noalias() = BwdCMap(Q, M, hd, Eigen::OuterStride<>(hd)) *
                           BwdCMap(k + j0 * kvd + g * hd, nb, hd, Eigen::OuterStride<>(kvd)).transpose();
            for (std::int64_t r = 0; r < M; ++r) {
                float* sr = S + r * nb;
                const auto [a, b] = attn_visible(t0 + r / n_rep, j0, nb, W);
                if (a >= b) {
                    std::fill(sr, sr + nb, 0.0f);
                    continue;
                }
                float bm = -std::numeric_limits<float>::infinity();
                for (std::int64_t j = a; j < b; ++j) {
                    sr[j] *= scale;
                    bm = std::max(bm, sr[j]);
                }
                const float m_new = std::max(m[r], bm);
                const float alpha = std::exp(m[r] - m_new);  // 0 on the first visible block
                std::fill(sr, sr + a, 0.0f);
                std::fill(sr + b, sr + nb, 0.0f);
                const Bt vm(m_new);
                Bt ps(0.0f);
                std::int64_t j = a;
                for (; j + L <= b; j += L) {
                    const Bt e = xsimd::exp(Bt::load_unaligned(sr + j) - vm);
                    e.store_unaligned(sr + j);
                    ps += e;
                }
                float psum = hsum<A>(ps);
                for (; j < b; ++j) {
                    sr[j] = std::exp(sr[j] - m_new);
                    psum += sr[j];
                }
                l[r] = l[r] * alpha + psum;
                m[r] = m_new;
                if (alpha != 1.0f)
                    for (std::int64_t d = 0; d < hd; ++d) O[r * hd + d] *= alpha;
            }
            BwdMap(O, M, hd, Eigen::OuterStride<>(hd)).noalias() +=
                Sm * BwdCMap(v + j0 * kvd + g * hd, nb, hd, Eigen::OuterStride<>(kvd));
        }
        for (std::int64_t r = 0; r < M; ++r) {
            const std::int64_t t = t0 + r / n_rep, h = g * n_rep + r % n_rep;
            float* o = out + t * qd + h * hd;
            const float inv = 1.0f / l[r];
            for (std::int64_t d = 0; d < hd; ++d) o[d] = O[r * hd + d] * inv;
            lse[t * nh + h] = m[r] + std::log(l[r]);
        }
    };
    parallel_dynamic(pool_or_global(pool), n_tiles * n_kv, task);
}

/// Backward of `attention_sliding_window_lse` (flash-attention style): with P recomputed per
/// (query tile, key block) as exp(scale * q . k - lse) and D_r = dout_r . out_r,
/// dv = Pᵀ dout, dS = P o (dout vᵀ - D), dq = scale * dS k, dk = scale * dSᵀ q. Two passes, so
/// that no two threads write the same rows: one over (key block, kv head) for dk and dv, one
/// over (query tile, kv head) for dq. Only the blocks inside the window are visited: cost
/// O(T * window * n_heads * head_dim), memory O(tile * (head_dim + key block)) per thread plus
/// D [T, n_heads]; no T x T matrix.
///
/// \param dq     [T, n_heads * head_dim] gradient of the queries (overwritten)
/// \param dk     [T, n_kv_heads * head_dim] gradient of the keys (overwritten)
/// \param dv     [T, n_kv_heads * head_dim] gradient of the values (overwritten)
/// \param dout   [T, n_heads * head_dim] gradient of the attention output
/// \param q      [T, n_heads * head_dim] the forward's queries (RoPE applied)
/// \param k      [T, n_kv_heads * head_dim] the forward's keys (RoPE applied)
/// \param v      [T, n_kv_heads * head_dim] the forward's values
/// \param out    [T, n_heads * head_dim] the forward's output
/// \param lse    [T, n_heads] the forward's log-sum-exp rows
/// \param T      number of tokens
/// \param s      heads and window (as in the forward)
/// \param scale  score scale (as in the forward)
/// \param pool   thread pool (nullptr: ThreadPool::global())
/// \pre The forward inputs are those `attention_sliding_window_lse` was called with; the
///      outputs do not overlap each other or any input.
template <class A>
void attention_sliding_window_backward(Cpu<A>, float* dq /*[T, n_heads*head_dim]*/,
                                       float* dk /*[T, n_kv_heads*head_dim]*/, float* dv /*[T, n_kv_heads*head_dim]*/,
                                       const float* dout /*[T, n_heads*head_dim]*/,
                                       const float* q /*[T, n_heads*head_dim]*/,
                                       const float* k /*[T, n_kv_heads*head_dim]*/,
                                       const float* v /*[T, n_kv_heads*head_dim]*/,
                                       const float* out /*[T, n_heads*head_dim]*/, const float* lse /*[T, n_heads]*/,
                                       std::int64_t T, const AttentionShape& s, float scale,
                                       ThreadPool* pool = nullptr) {
    using namespace cpu_detail;
    constexpr std::int64_t KB = kTrainKeyBlock;
    const std::int64_t n_kv = s.n_kv_heads, hd = s.head_dim, nh = s.n_heads, n_rep = nh / n_kv;
    const std::int64_t kvd = n_kv * hd, qd = nh * hd, W = s.window_keys;
    if (T <= 0) return;
    ThreadPool& p = pool_or_global(pool);
    const std::int64_t QT = std::max<std::int64_t>(1, kTrainQueryRows / n_rep);
    const std::int64_t M_max = QT * n_rep;
    // D[t, h] = dout . out
    AlignedFloats D(static_cast<std::size_t>(T * nh));
    parallel_rows(p, T, static_cast<double>(2 * qd), [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t)
            for (std::int64_t h = 0; h < nh; ++h) {
                const float* a = dout + t * qd + h * hd;
                const float* b = out + t * qd + h * hd;
                float acc = 0.0f;
                for (std::int64_t d = 0; d < hd; ++d) acc += a[d] * b[d];
                D[static_cast<std::size_t>(t * nh + h)] = acc;
            }
    });
    // Per-thread buffers: Qt, dOt [M, hd]; P, dP [M, KB]; lse_t, D_t [M]; acc0, acc1 [max(M, KB), hd].
    const std::int64_t acc_rows = std::max(M_max, KB);
    const std::size_t buf_size = static_cast<std::size_t>(2 * M_max * hd + 2 * M_max * KB + 2 * M_max + 2 * acc_rows * hd);
    struct Bufs {
        float *Qt, *dOt, *P, *dP, *lse_t, *D_t, *acc0, *acc1;
    };
    auto bufs = [&] {
        Bufs b{};
        b.Qt = scratch<7>(buf_size);
        b.dOt = b.Qt + M_max * hd;
        b.P = b.dOt + M_max * hd;
        b.dP = b.P + M_max * KB;
        b.lse_t = b.dP + M_max * KB;
        b.D_t = b.lse_t + M_max;
        b.acc0 = b.D_t + M_max;
        b.acc1 = b.acc0 + acc_rows * hd;
        return b;
    };
    auto load_tile = [&](const Bufs& b, std::int64_t t0, std::int64_t nt, std::int64_t g) {
        attn_gather(b.Qt, q, t0, nt, g, n_rep, hd, qd);
        attn_gather(b.dOt, dout, t0, nt, g, n_rep, hd, qd);
        attn_gather(b.lse_t, lse, t0, nt, g, n_rep, 1, nh);
        attn_gather(b.D_t, D.data(), t0, nt, g, n_rep, 1, nh);
    };
    // dS of (query tile at t0 with M rows, key block at j0 with nb keys) into b.dP; P into b.P.
    auto tile_grads = [&](const Bufs& b, std::int64_t t0, std::int64_t M, std::int64_t j0, std::int64_t nb,
                          std::int64_t g) {
        const float* kb = k + j0 * kvd + g * hd;
        const float* vb = v + j0 * kvd + g * hd;
        attn_probs<A>(b.P, b.Qt, b.lse_t, kb, kvd, M, nb, hd, n_rep, t0, j0, W, scale);
        BwdMap(b.dP, M, nb, Eigen::OuterStride<>(nb)).noalias() =
            BwdCMap(b.dOt, M, hd, Eigen::OuterStride<>(hd)) * BwdCMap(vb, nb, hd, Eigen::OuterStride<>(kvd)).transpose();
        attn_dscores<A>(b.dP, b.P, b.D_t, M, nb);
    };

    // Pass 1: dk, dv per (key block, kv head), over the query tiles that see the block.
    const std::int64_t n_kblocks = (T + KB - 1) / KB;
    parallel_dynamic(p, n_kblocks * n_kv, [&](std::int64_t i, unsigned) {
        const std::int64_t jb = i / n_kv, g = i % n_kv;
        const std::int64_t j0 = jb * KB, nb = std::min(KB, T - j0);
        const std::int64_t q_end = W > 0 ? std::min(T, j0 + nb - 1 + W) : T;  // queries [j0, q_end) see the block
        const Bufs b = bufs();
        BwdMap dK(b.acc0, nb, hd, Eigen::OuterStride<>(hd)), dV(b.acc1, nb, hd, Eigen::OuterStride<>(hd));
        dK.setZero();
        dV.setZero();
        for (std::int64_t t0 = j0; t0 < q_end; t0 += QT) {
            const std::int64_t nt = std::min(QT, q_end - t0), M = nt * n_rep;
            load_tile(b, t0, nt, g);
            tile_grads(b, t0, M, j0, nb, g);
            const BwdCMap Pm(b.P, M, nb, Eigen::OuterStride<>(nb)), dSm(b.dP, M, nb, Eigen::OuterStride<>(nb));
            dV.noalias() += Pm.transpose() * BwdCMap(b.dOt, M, hd, Eigen::OuterStride<>(hd));
            dK.noalias() += dSm.transpose() * BwdCMap(b.Qt, M, hd, Eigen::OuterStride<>(hd));
        }
        for (std::int64_t j = 0; j < nb; ++j) {
            float* dkr = dk + (j0 + j) * kvd + g * hd;
            float* dvr = dv + (j0 + j) * kvd + g * hd;
            for (std::int64_t d = 0; d < hd; ++d) {
                dkr[d] = scale * b.acc0[j * hd + d];
                dvr[d] = b.acc1[j * hd + d];
            }
        }
    });

    // Pass 2: dq per (query tile, kv head), over the key blocks of the tile's window.
    const std::int64_t n_tiles = (T + QT - 1) / QT;
    parallel_dynamic(p, n_tiles * n_kv, [&](std::int64_t i, unsigned) {
        const std::int64_t tile = n_tiles - 1 - i / n_kv, g = i % n_kv;
        const std::int64_t t0 = tile * QT, nt = std::min(QT, T - t0), M = nt * n_rep;
        const Bufs b = bufs();
        load_tile(b, t0, nt, g);
        BwdMap dQ(b.acc0, M, hd, Eigen::OuterStride<>(hd));
        dQ.setZero();
        const std::int64_t hi = t0 + nt;
        for (std::int64_t j0 = attn_first_key(t0, W); j0 < hi; j0 += KB) {
            const std::int64_t nb = std::min(KB, hi - j0);
            tile_grads(b, t0, M, j0, nb, g);
            dQ.noalias() += BwdCMap(b.dP, M, nb, Eigen::OuterStride<>(nb)) *
                            BwdCMap(k + j0 * kvd + g * hd, nb, hd, Eigen::OuterStride<>(kvd));
        }
        for (std::int64_t r = 0; r < M; ++r) {
            float* dqr = dq + (t0 + r / n_rep) * qd + (g * n_rep + r % n_rep) * hd;
            for (std::int64_t d = 0; d < hd; ++d) dqr[d] = scale * b.acc0[r * hd + d];
        }
    });
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
