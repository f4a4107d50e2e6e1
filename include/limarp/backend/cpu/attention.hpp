#pragma once
/// \file attention.hpp
/// \brief CPU sliding-window, grouped-query, causal attention of new tokens over themselves and
/// a rolling (ring-buffer) KV cache, with a streaming (online, flash-attention style) softmax.
///
/// Work is split into (token, kv head) tasks: the n_heads / n_kv_heads query heads that share a
/// kv head are processed together, so every key and value row is read once per task rather than
/// once per query head. Keys are visited in blocks of kKeyBlock: scores of the block, a running
/// max and sum per query head, the accumulator rescaled when the max grows. Memory use is
/// O(n_heads * head_dim) per thread, cost O(T * window * n_heads * head_dim). Tasks are handed
/// out dynamically, latest tokens (most keys) first.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/thread_pool.hpp"

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
inline constexpr std::int64_t kKeyBlock = 32;

/// dot(a, b) over n floats.
template <class A>
inline float dot_f32(const float* a, const float* b, std::int64_t n) noexcept {
    using B = fbatch<A>;
    constexpr std::int64_t L = lanes<A>;
    B s0(0.0f), s1(0.0f);
    std::int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
        s0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), s0);
        s1 = xsimd::fma(B::load_unaligned(a + i + L), B::load_unaligned(b + i + L), s1);
    }
    if (i + L <= n) {
        s0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), s0);
        i += L;
    }
    float s = hsum<A>(s0 + s1);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

/// Online-softmax state of the query heads of one (token, kv head) task.
struct AttnState {
    float* acc;           // [n_rep, head_dim] unnormalised output
    float* m;             // [n_rep] running max of the scaled scores
    float* l;             // [n_rep] running sum of exp(score - m)
    float* sc;            // [n_rep, kKeyBlock] scores of the current block
    const float* q;       // first query head of the group, heads head_dim apart
    std::int64_t n_rep, head_dim;
    float scale;
};

/// Folds `n` consecutive key/value rows (row stride `ld`, already offset to the kv head) into `st`.
template <class A>
inline void attend_rows(AttnState& st, const float* k, const float* v, std::int64_t ld, std::int64_t n) noexcept {
    using B = fbatch<A>;
    constexpr std::int64_t L = lanes<A>;
    const std::int64_t hd = st.head_dim, hv = hd - hd % (4 * L);
    for (std::int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
        const std::int64_t nb = std::min(kKeyBlock, n - j0);
        const float* kb = k + j0 * ld;
        const float* vb = v + j0 * ld;
        for (std::int64_t j = 0; j < nb; ++j)
            for (std::int64_t r = 0; r < st.n_rep; ++r)
                st.sc[r * kKeyBlock + j] = dot_f32<A>(st.q + r * hd, kb + j * ld, hd) * st.scale;
        for (std::int64_t r = 0; r < st.n_rep; ++r) {
            float* s = st.sc + r * kKeyBlock;
            float bm = s[0];
            for (std::int64_t j = 1; j < nb; ++j) bm = std::max(bm, s[j]);
            const float m_old = st.m[r], m_new = std::max(m_old, bm);
            const float alpha = std::exp(m_old - m_new);  // 0 on the first block (m_old = -inf)
            // p_j = exp(s_j - m_new), summed.
            const B vm(m_new);
            B ps(0.0f);
            std::int64_t j = 0;
            for (; j + L <= nb; j += L) {
                const B e = xsimd::exp(B::load_unaligned(s + j) - vm);
                e.store_unaligned(s + j);
                ps += e;
            }
            float psum = hsum<A>(ps);
            for (; j < nb; ++j) {
                s[j] = std::exp(s[j] - m_new);
                psum += s[j];
            }
            st.l[r] = st.l[r] * alpha + psum;
            st.m[r] = m_new;
            float* acc = st.acc + r * hd;
            // acc = acc * alpha + sum_j p_j v_j, in register chunks of 4 vectors.
            const B va(alpha);
            std::int64_t i = 0;
            for (; i < hv; i += 4 * L) {
                B a0 = B::load_unaligned(acc + i) * va, a1 = B::load_unaligned(acc + i + L) * va;
                B a2 = B::load_unaligned(acc + i + 2 * L) * va, a3 = B::load_unaligned(acc + i + 3 * L) * va;
                for (std::int64_t jj = 0; jj < nb; ++jj) {
                    const B p(s[jj]);
                    const float* vr = vb + jj * ld + i;
                    a0 = xsimd::fma(p, B::load_unaligned(vr), a0);
                    a1 = xsimd::fma(p, B::load_unaligned(vr + L), a1);
                    a2 = xsimd::fma(p, B::load_unaligned(vr + 2 * L), a2);
                    a3 = xsimd::fma(p, B::load_unaligned(vr + 3 * L), a3);
                }
                a0.store_unaligned(acc + i);
                a1.store_unaligned(acc + i + L);
                a2.store_unaligned(acc + i + 2 * L);
                a3.store_unaligned(acc + i + 3 * L);
            }
            for (; i + L <= hd; i += L) {
                B a0 = B::load_unaligned(acc + i) * va;
                for (std::int64_t jj = 0; jj < nb; ++jj)
                    a0 = xsimd::fma(B(s[jj]), B::load_unaligned(vb + jj * ld + i), a0);
                a0.store_unaligned(acc + i);
            }
            for (; i < hd; ++i) {
                float a = acc[i] * alpha;
                for (std::int64_t jj = 0; jj < nb; ++jj) a += s[jj] * vb[jj * ld + i];
                acc[i] = a;
            }
        }
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
    const std::int64_t n_kv = s.n_kv_heads, hd = s.head_dim, n_rep = s.n_heads / s.n_kv_heads;
    const std::int64_t kvd = n_kv * hd, qd = s.n_heads * hd, W = s.window_keys;
    if (T <= 0) return;
    ThreadPool& p = cpu_detail::pool_or_global(pool);
    auto task = [&](std::int64_t i, unsigned) {
        const std::int64_t t = T - 1 - i / n_kv, g = i % n_kv;
        const std::int64_t pos = p0 + t;
        const std::int64_t lo = W > 0 ? std::max<std::int64_t>(0, pos - W + 1) : 0;
        float* buf = cpu_detail::scratch<2>(static_cast<std::size_t>(n_rep * (hd + cpu_detail::kKeyBlock + 2)));
        cpu_detail::AttnState st{buf,
                                 buf + n_rep * hd,
                                 buf + n_rep * hd + n_rep,
                                 buf + n_rep * (hd + 2),
                                 q + t * qd + g * n_rep * hd,
                                 n_rep,
                                 hd,
                                 scale};
        std::fill(st.acc, st.acc + n_rep * hd, 0.0f);
        std::fill(st.m, st.m + n_rep, -std::numeric_limits<float>::infinity());
        std::fill(st.l, st.l + n_rep, 0.0f);
        // Earlier positions [lo, min(pos + 1, p0)) from the ring, split where it wraps.
        for (std::int64_t a = lo, b = std::min(pos + 1, p0); a < b;) {
            const std::int64_t r = a % C, len = std::min(b - a, C - r);
            cpu_detail::attend_rows<A>(st, k_cache + r * kvd + g * hd, v_cache + r * kvd + g * hd, kvd, len);
            a += len;
        }
        // New positions [max(lo, p0), pos].
        const std::int64_t a = std::max(lo, p0);
        cpu_detail::attend_rows<A>(st, k_new + (a - p0) * kvd + g * hd, v_new + (a - p0) * kvd + g * hd, kvd,
                                   pos + 1 - a);
        float* o = out + t * qd + g * n_rep * hd;
        for (std::int64_t r = 0; r < n_rep; ++r) {
            const float l = st.l[r];
            for (std::int64_t d = 0; d < hd; ++d) o[r * hd + d] = st.acc[r * hd + d] / l;
        }
    };
    cpu_detail::parallel_dynamic(p, T * n_kv, task);
}

}  // namespace limarp::ops
