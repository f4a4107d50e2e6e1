#pragma once
/// \file rope.hpp
/// \brief CPU rotary position embedding in Hugging Face's rotate-half layout, with HF's f32 numerics.
///
/// Numerics follow transformers' default RoPE: inv_freq[i] = 1 / theta^(2i / head_dim) computed in
/// f32, angle = f32(pos) * inv_freq[i] rounded to f32, cos/sin of that f32 angle (here correctly
/// rounded from double), then x_i * cos - x_{i+h/2} * sin and x_{i+h/2} * cos + x_i * sin with
/// separately rounded products (no FMA), as PyTorch's `q * cos + rotate_half(q) * sin`.

#include <cmath>
#include <cstdint>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// The RoPE inverse frequency of pair `i`, as PyTorch computes it in f32:
/// `1.0 / (theta ** (float(2 i) / head_dim))`.
/// \pre head_dim > 0 even, 0 <= i < head_dim / 2, theta > 0.
inline float rope_inv_freq(std::int64_t i, std::int64_t head_dim, double theta) noexcept {
    const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float p = static_cast<float>(std::pow(static_cast<double>(static_cast<float>(theta)), static_cast<double>(e)));
    return 1.0f / p;
}

/// cos and sin of the RoPE angles of one position: cos_out[i], sin_out[i] for i < head_dim / 2.
/// \pre head_dim > 0 even; cos_out and sin_out hold head_dim / 2 floats.
inline void rope_cos_sin(float* cos_out /*[head_dim/2]*/, float* sin_out /*[head_dim/2]*/, std::int64_t pos,
                         std::int64_t head_dim, double theta) noexcept {
    const std::int64_t half = head_dim / 2;
    for (std::int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(pos) * rope_inv_freq(i, head_dim, theta);
        cos_out[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
        sin_out[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
}

/// Precomputed RoPE cos/sin for positions [0, n_positions), so that applying RoPE costs no
/// trigonometry. Values are identical to what `rope_rotate_half` computes on the fly.
class RopeTable {
public:
    /// Tabulates positions [0, n_positions) for `head_dim` and base `theta`.
    /// \pre head_dim > 0 even, n_positions >= 0, theta > 0.
    RopeTable(std::int64_t head_dim, double theta, std::int64_t n_positions)
        : head_dim_(head_dim), n_positions_(n_positions), theta_(theta),
          cos_(static_cast<std::size_t>(n_positions * (head_dim / 2))),
          sin_(static_cast<std::size_t>(n_positions * (head_dim / 2))) {
        const std::int64_t half = head_dim / 2;
        std::vector<float> inv(static_cast<std::size_t>(half));
        for (std::int64_t i = 0; i < half; ++i) inv[static_cast<std::size_t>(i)] = rope_inv_freq(i, head_dim, theta);
        for (std::int64_t p = 0; p < n_positions; ++p)
            for (std::int64_t i = 0; i < half; ++i) {
                const float angle = static_cast<float>(p) * inv[static_cast<std::size_t>(i)];
                cos_[static_cast<std::size_t>(p * half + i)] = static_cast<float>(std::cos(static_cast<double>(angle)));
                sin_[static_cast<std::size_t>(p * half + i)] = static_cast<float>(std::sin(static_cast<double>(angle)));
            }
    }
    /// Head dimension the table was built for.
    std::int64_t head_dim() const noexcept { return head_dim_; }
    /// Number of tabulated positions.
    std::int64_t n_positions() const noexcept { return n_positions_; }
    /// RoPE base the table was built for.
    double theta() const noexcept { return theta_; }
    /// cos of the head_dim / 2 angles of position `pos`. \pre 0 <= pos < n_positions().
    const float* cos(std::int64_t pos) const noexcept { return cos_.data() + pos * (head_dim_ / 2); }
    /// sin of the head_dim / 2 angles of position `pos`. \pre 0 <= pos < n_positions().
    const float* sin(std::int64_t pos) const noexcept { return sin_.data() + pos * (head_dim_ / 2); }

private:
    std::int64_t head_dim_, n_positions_;
    double theta_;
    cpu_detail::AlignedFloats cos_, sin_;
};

/// \cond
namespace cpu_detail {
/// Rotates the n_heads heads of one token by the given cos/sin.
template <class A>
inline void rope_apply_token(float* x /*[n_heads, head_dim]*/, const float* c /*[head_dim/2]*/,
                             const float* s /*[head_dim/2]*/, std::int64_t n_heads, std::int64_t head_dim) noexcept {
    using B = fbatch<A>;
    constexpr std::int64_t L = lanes<A>;
    const std::int64_t half = head_dim / 2, hv = half - half % L;
    for (std::int64_t h = 0; h < n_heads; ++h) {
        float* x1 = x + h * head_dim;
        float* x2 = x1 + half;
        std::int64_t i = 0;
        for (; i < hv; i += L) {
            const B cv = B::load_unaligned(c + i), sv = B::load_unaligned(s + i);
            const B a = B::load_unaligned(x1 + i), b = B::load_unaligned(x2 + i);
            const B ac = rounded<A>(a * cv), bs = rounded<A>(b * sv), bc = rounded<A>(b * cv), as = rounded<A>(a * sv);
            (ac - bs).store_unaligned(x1 + i);
            (bc + as).store_unaligned(x2 + i);
        }
        for (; i < half; ++i) {
            const float a = x1[i], b = x2[i];
            const float ac = rounded(a * c[i]), bs = rounded(b * s[i]), bc = rounded(b * c[i]), as = rounded(a * s[i]);
            x1[i] = ac - bs;
            x2[i] = bc + as;
        }
    }
}
}  // namespace cpu_detail
/// \endcond

/// Applies RoPE in place (HF rotate-half layout): for every token t, head and i < head_dim / 2,
/// (x_i, x_{i+h/2}) -> (x_i cos - x_{i+h/2} sin, x_{i+h/2} cos + x_i sin) with angle
/// positions[t] * inv_freq_i (see the file comment for the exact f32 numerics).
///
/// \param x         [T, n_heads, head_dim] queries or keys, rotated in place
/// \param positions [T] absolute position of every token
/// \param T         number of tokens
/// \param n_heads   heads per token (n_heads for q, n_kv_heads for k)
/// \param head_dim  head dimension
/// \param theta     RoPE base (rope_theta)
/// \param pool      thread pool (nullptr: ThreadPool::global())
/// \pre head_dim > 0 even, positions[t] >= 0, theta > 0.
template <class A>
void rope_rotate_half(Cpu<A>, float* x /*[T, n_heads, head_dim]*/, const std::int64_t* positions /*[T]*/,
                      std::int64_t T, std::int64_t n_heads, std::int64_t head_dim, double theta,
                      ThreadPool* pool = nullptr) {
    const std::int64_t half = head_dim / 2;
    std::vector<float> inv(static_cast<std::size_t>(half));
    for (std::int64_t i = 0; i < half; ++i) inv[static_cast<std::size_t>(i)] = rope_inv_freq(i, head_dim, theta);
    auto rows = [&](std::int64_t t0, std::int64_t t1) {
        float* cs = cpu_detail::scratch<1>(static_cast<std::size_t>(2 * half));
        for (std::int64_t t = t0; t < t1; ++t) {
            const float pos = static_cast<float>(positions[t]);
            for (std::int64_t i = 0; i < half; ++i) {
                const double angle = static_cast<double>(pos * inv[static_cast<std::size_t>(i)]);
                cs[i] = static_cast<float>(std::cos(angle));
                cs[half + i] = static_cast<float>(std::sin(angle));
            }
            cpu_detail::rope_apply_token<A>(x + t * n_heads * head_dim, cs, cs + half, n_heads, head_dim);
        }
    };
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), T, static_cast<double>(n_heads * head_dim + 20 * half),
                              rows);
}

/// Applies RoPE in place like the overload taking `theta`, with cos/sin read from `table`.
///
/// \param x         [T, n_heads, head_dim] queries or keys, rotated in place
/// \param positions [T] absolute position of every token
/// \param T         number of tokens
/// \param n_heads   heads per token
/// \param head_dim  head dimension
/// \param table     precomputed cos/sin
/// \param pool      thread pool (nullptr: ThreadPool::global())
/// \pre table.head_dim() == head_dim, 0 <= positions[t] < table.n_positions().
template <class A>
void rope_rotate_half(Cpu<A>, float* x /*[T, n_heads, head_dim]*/, const std::int64_t* positions /*[T]*/,
                      std::int64_t T, std::int64_t n_heads, std::int64_t head_dim, const RopeTable& table,
                      ThreadPool* pool = nullptr) {
    auto rows = [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t)
            cpu_detail::rope_apply_token<A>(x + t * n_heads * head_dim, table.cos(positions[t]),
                                            table.sin(positions[t]), n_heads, head_dim);
    };
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), T, static_cast<double>(n_heads * head_dim), rows);
}

/// Backward of `rope_rotate_half`: RoPE is a rotation per (token, head, pair), so the input
/// gradient is the output gradient rotated back by the same angle:
/// (g_i, g_{i+h/2}) -> (g_i cos + g_{i+h/2} sin, g_{i+h/2} cos - g_i sin). In place.
///
/// \param dx        [T, n_heads, head_dim] on entry the gradient of the rotated tensor, on exit
///                  the gradient of the tensor before rotation
/// \param positions [T] absolute position of every token (as in the forward)
/// \param T         number of tokens
/// \param n_heads   heads per token
/// \param head_dim  head dimension
/// \param theta     RoPE base (rope_theta)
/// \param pool      thread pool (nullptr: ThreadPool::global())
/// \pre head_dim > 0 even, positions[t] >= 0, theta > 0.
template <class A>
void rope_rotate_half_backward(Cpu<A>, float* dx /*[T, n_heads, head_dim]*/, const std::int64_t* positions /*[T]*/,
                               std::int64_t T, std::int64_t n_heads, std::int64_t head_dim, double theta,
                               ThreadPool* pool = nullptr) {
    const std::int64_t half = head_dim / 2;
    std::vector<float> inv(static_cast<std::size_t>(half));
    for (std::int64_t i = 0; i < half; ++i) inv[static_cast<std::size_t>(i)] = rope_inv_freq(i, head_dim, theta);
    auto rows = [&](std::int64_t t0, std::int64_t t1) {
        float* cs = cpu_detail::scratch<1>(static_cast<std::size_t>(2 * half));
        for (std::int64_t t = t0; t < t1; ++t) {
            const float pos = static_cast<float>(positions[t]);
            for (std::int64_t i = 0; i < half; ++i) {
                const double angle = static_cast<double>(pos * inv[static_cast<std::size_t>(i)]);
                cs[i] = static_cast<float>(std::cos(angle));
                cs[half + i] = -static_cast<float>(std::sin(angle));  // rotation by -angle
            }
            cpu_detail::rope_apply_token<A>(dx + t * n_heads * head_dim, cs, cs + half, n_heads, head_dim);
        }
    };
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), T, static_cast<double>(n_heads * head_dim + 20 * half),
                              rows);
}

/// Backward of the table overload of `rope_rotate_half` (see the overload taking `theta`).
///
/// \param dx        [T, n_heads, head_dim] gradient, rotated back in place
/// \param positions [T] absolute position of every token
/// \param T         number of tokens
/// \param n_heads   heads per token
/// \param head_dim  head dimension
/// \param table     precomputed cos/sin
/// \param pool      thread pool (nullptr: ThreadPool::global())
/// \pre table.head_dim() == head_dim, 0 <= positions[t] < table.n_positions().
template <class A>
void rope_rotate_half_backward(Cpu<A>, float* dx /*[T, n_heads, head_dim]*/, const std::int64_t* positions /*[T]*/,
                               std::int64_t T, std::int64_t n_heads, std::int64_t head_dim, const RopeTable& table,
                               ThreadPool* pool = nullptr) {
    const std::int64_t half = head_dim / 2;
    auto rows = [&](std::int64_t t0, std::int64_t t1) {
        float* ns = cpu_detail::scratch<1>(static_cast<std::size_t>(half));
        for (std::int64_t t = t0; t < t1; ++t) {
            const float* s = table.sin(positions[t]);
            for (std::int64_t i = 0; i < half; ++i) ns[i] = -s[i];
            cpu_detail::rope_apply_token<A>(dx + t * n_heads * head_dim, table.cos(positions[t]), ns, n_heads,
                                            head_dim);
        }
    };
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), T, static_cast<double>(n_heads * head_dim), rows);
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
