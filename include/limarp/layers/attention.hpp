#pragma once
/// \file attention.hpp
/// \brief `GqaAttention<B, Proj>`: grouped-query self-attention with rotary embeddings,
/// a sliding window and a rolling KV cache.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/backend/memory.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/layers/concepts.hpp"
#include "limarp/layers/rotary.hpp"
#include "limarp/model/kv_cache.hpp"
#include "limarp/model/mistral_config.hpp"

namespace limarp {

/// Mistral self-attention: q/k/v/o projections of type `Proj`, rotary on q and k, causal
/// attention over at most `cfg.window_keys()` keys per query (its own included).
template <Backend B, Linear Proj>
class GqaAttention {
public:
    using backend_type = B;  ///< backend tag
    using proj_type = Proj;  ///< projection type
    static_assert(std::is_same_v<typename Proj::backend_type, B>,
                  "GqaAttention<B, Proj>: Proj must run on the same backend B");

    GqaAttention() = default;
    /// Composes the projections. \throws ShapeError when their widths disagree with `cfg`.
    GqaAttention(const MistralConfig& cfg, Proj q, Proj k, Proj v, Proj o)
        : q_(std::move(q)), k_(std::move(k)), v_(std::move(v)), o_(std::move(o)), rope_(cfg.head_dim, cfg.rope_theta) {
        shape_ = ops::AttentionShape{cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.window_keys()};
        if (q_.out_features() != cfg.q_dim() || k_.out_features() != cfg.kv_dim() ||
            v_.out_features() != cfg.kv_dim() || o_.in_features() != cfg.q_dim())
            throw ShapeError("GqaAttention: projection widths do not match n_heads/n_kv_heads/head_dim");
    }
    /// Loads "<prefix>.{q,k,v,o}_proj".
    static GqaAttention load(const LoadContext& ctx, const std::string& prefix, const MistralConfig& cfg) {
        Proj q = Proj::load(ctx, prefix + ".q_proj", cfg.d_model, cfg.q_dim());
        Proj k = Proj::load(ctx, prefix + ".k_proj", cfg.d_model, cfg.kv_dim());
        Proj v = Proj::load(ctx, prefix + ".v_proj", cfg.d_model, cfg.kv_dim());
        Proj o = Proj::load(ctx, prefix + ".o_proj", cfg.q_dim(), cfg.d_model);
        return GqaAttention(cfg, std::move(q), std::move(k), std::move(v), std::move(o));
    }

    /// Attends `T` new tokens at positions p0..p0+T-1 to themselves and to the cached keys,
    /// then stores their keys and values into `cache` (the last min(T, C) of them).
    /// `x`, `y`, `positions` and the cache are in the backend's memory.
    /// \pre cache.capacity >= window_keys - 1 when windowed, or >= p0 + T without a window.
    void forward(float* y /*[T, d_model]*/, const float* x /*[T, d_model]*/, std::int64_t T,
                 const std::int64_t* positions /*[T]: p0..p0+T-1*/, KvLayer cache) {
        const std::int64_t qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
        float* qb = q_buf_.ensure(T * qd);
        float* ob = o_buf_.ensure(T * qd);
        float* kb = k_buf_.ensure(T * kvd);
        float* vb = v_buf_.ensure(T * kvd);
        bool fused = false;  // q/k/v in one pass where the projection type has that form
        if constexpr (requires { { Proj::try_forward_qkv(q_, qb, k_, kb, v_, vb, x, T) } -> std::convertible_to<bool>; })
            fused = Proj::try_forward_qkv(q_, qb, k_, kb, v_, vb, x, T);
        if (!fused) {
            q_.forward(qb, x, T);
            k_.forward(kb, x, T);
            v_.forward(vb, x, T);
        }
        // RoPE, attend, then keep the newest keys/values in the ring: in one call where the
        // backend fuses them (CUDA: one launch for a decode step), else in three steps
        if (cache.k_bf16) {  // a bf16 ring (the cache refuses one on backends without these ops)
            if constexpr (requires {
                              ops::attention_with_cache(B{}, ob, qb, kb, vb, cache.k_bf16, cache.v_bf16, cache.capacity,
                                                        positions, T, shape_, score_scale());
                          }) {
                rope_.forward_qk(qb, kb, positions, T, shape_.n_heads, shape_.n_kv_heads);
                ops::attention_with_cache(B{}, ob, qb, kb, vb, cache.k_bf16, cache.v_bf16, cache.capacity, positions, T,
                                          shape_, score_scale());
            } else {
                throw ArgumentError("GqaAttention: this backend has no bf16 key/value cache");
            }
        } else if constexpr (requires {
                          ops::attention_with_cache_rope(B{}, ob, qb, kb, vb, cache.k, cache.v, cache.capacity,
                                                         positions, T, shape_, score_scale(), rope_.theta());
                      }) {
            ops::attention_with_cache_rope(B{}, ob, qb, kb, vb, cache.k, cache.v, cache.capacity, positions, T, shape_,
                                           score_scale(), rope_.theta());
        } else {
            rope_.forward_qk(qb, kb, positions, T, shape_.n_heads, shape_.n_kv_heads);
            ops::attention_with_cache(B{}, ob, qb, kb, vb, cache.k, cache.v, cache.capacity, positions, T, shape_,
                                      score_scale());
        }
        o_.forward(y, ob, T);
    }

    /// What `forward_train` keeps for `backward`, and the backward's scratch: one block's
    /// attention working set (reused from call to call).
    struct Saved {
        Tensor<float> q;    ///< [T, n_heads * head_dim] queries after RoPE, then their gradient
        Tensor<float> k;    ///< [T, n_kv_heads * head_dim] keys after RoPE, then their gradient
        Tensor<float> v;    ///< [T, n_kv_heads * head_dim] values
        Tensor<float> o;    ///< [T, n_heads * head_dim] attention output (input of o_proj)
        Tensor<float> lse;  ///< [T, n_heads] log-sum-exp of every score row
        Tensor<float> d_o;  ///< [T, n_heads * head_dim] gradient of o
        Tensor<float> dq;   ///< [T, n_heads * head_dim] gradient of the rotated queries
        Tensor<float> dk;   ///< [T, n_kv_heads * head_dim] gradient of the rotated keys
        Tensor<float> dv;   ///< [T, n_kv_heads * head_dim] gradient of the values
        Tensor<float> dx;   ///< [T, d_model] scratch of the input gradient
    };

    /// Training forward over a whole sequence (positions 0..T-1 in `positions`, no cache):
    /// projections through `forward_train`, RoPE, sliding-window attention that also keeps the
    /// log-sum-exp rows (`ops::attention_sliding_window_lse`), o_proj. Keeps q, k, v, o and lse
    /// in `s`. y must not alias x.
    void forward_train(float* y /*[T, d_model]*/, const float* x /*[T, d_model]*/, std::int64_t T,
                       const std::int64_t* positions /*[T]*/, Saved& s)
        requires TrainableLinear<Proj>
    {
        const std::int64_t qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
        if (s.q.size() < T * qd) {
            s.q = Tensor<float>({T, qd});
            s.o = Tensor<float>({T, qd});
            s.k = Tensor<float>({T, kvd});
            s.v = Tensor<float>({T, kvd});
            s.lse = Tensor<float>({T, shape_.n_heads});
        }
        q_.forward_train(s.q.data(), x, T);
        k_.forward_train(s.k.data(), x, T);
        v_.forward_train(s.v.data(), x, T);
        rope_.forward(s.q.data(), positions, T, shape_.n_heads);
        rope_.forward(s.k.data(), positions, T, shape_.n_kv_heads);
        ops::attention_sliding_window_lse(B{}, s.o.data(), s.lse.data(), s.q.data(), s.k.data(), s.v.data(), T, shape_,
                                          score_scale());
        o_.forward_train(y, s.o.data(), T);
    }

    /// Backward of `forward_train` on the same x and positions: writes dx [T, d_model] from dy
    /// and adds the projections' parameter gradients (flash-attention-style backward, inverse
    /// RoPE). Consumes `s`. dx must not alias dy or x.
    void backward(float* dx /*[T, d_model]*/, const float* dy /*[T, d_model]*/, const float* x /*[T, d_model]*/,
                  std::int64_t T, const std::int64_t* positions /*[T]*/, Saved& s)
        requires TrainableLinear<Proj>
    {
        const std::int64_t qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
        const std::int64_t d = q_.in_features();
        if (s.d_o.size() < T * qd) {
            s.d_o = Tensor<float>({T, qd});
            s.dq = Tensor<float>({T, qd});
            s.dk = Tensor<float>({T, kvd});
            s.dv = Tensor<float>({T, kvd});
        }
        if (s.dx.size() < T * d) s.dx = Tensor<float>({T, d});
        o_.backward(s.d_o.data(), dy, s.o.data(), T);
        ops::attention_sliding_window_backward(B{}, s.dq.data(), s.dk.data(), s.dv.data(), s.d_o.data(), s.q.data(),
                                               s.k.data(), s.v.data(), s.o.data(), s.lse.data(), T, shape_,
                                               score_scale());
        rope_.backward(s.dq.data(), positions, T, shape_.n_heads);
        rope_.backward(s.dk.data(), positions, T, shape_.n_kv_heads);
        q_.backward(dx, s.dq.data(), x, T);
        k_.backward(s.dx.data(), s.dk.data(), x, T);
        ops::add_inplace(B{}, dx, s.dx.data(), T * d);
        v_.backward(s.dx.data(), s.dv.data(), x, T);
        ops::add_inplace(B{}, dx, s.dx.data(), T * d);
    }

    /// The q projection.
    Proj& q_proj() noexcept { return q_; }
    /// The k projection.
    Proj& k_proj() noexcept { return k_; }
    /// The v projection.
    Proj& v_proj() noexcept { return v_; }
    /// The o projection.
    Proj& o_proj() noexcept { return o_; }
    /// Head geometry and window.
    const ops::AttentionShape& shape() const noexcept { return shape_; }

private:
    float score_scale() const noexcept { return 1.0f / std::sqrt(static_cast<float>(shape_.head_dim)); }

    Proj q_, k_, v_, o_;
    Rotary<B> rope_;
    ops::AttentionShape shape_{};
    // per-call working buffers, shared with the other layers' (SharedScratch)
    SharedScratch<B, float> q_buf_{ScratchSlot::attn_q}, k_buf_{ScratchSlot::attn_k}, v_buf_{ScratchSlot::attn_v},
        o_buf_{ScratchSlot::attn_o};
};

}  // namespace limarp
