#pragma once
/// \file attention_shape.hpp
/// \brief `ops::AttentionShape`: the head layout and window of an attention call, shared by the
/// CPU (`backend/cpu/attention.hpp`) and CUDA (`backend/cuda/attention.cuh`) kernels. No kernels
/// here, so that nvcc can include it without the CPU SIMD headers.

#include <cstdint>

namespace limarp::ops {

/// Head layout and window of an attention call.
struct AttentionShape {
    std::int64_t n_heads;      ///< query heads
    std::int64_t n_kv_heads;   ///< key/value heads (n_heads is a multiple of it)
    std::int64_t head_dim;     ///< dimension of one head
    std::int64_t window_keys;  ///< keys a query sees, itself included; 0 = unlimited (full causal)
};

/// RoPE on q and k_new, the attention of T new tokens over the ring, and the ring update, in one
/// call: the optional fused form of `Rotary::forward_qk` followed by `ops::attention_with_cache`.
/// This deleted template stands for every backend without it; a backend that fuses them
/// overloads it for its tag (CUDA: backend/cuda/ops.hpp), and `GqaAttention` calls it only where
/// such an overload exists (a requires-expression), so the CPU keeps its three steps.
template <class B>
void attention_with_cache_rope(B, float* out, float* q, float* k_new, const float* v_new, float* k_cache,
                               float* v_cache, std::int64_t C, const std::int64_t* positions, std::int64_t T,
                               const AttentionShape& s, float scale, double theta) = delete;

}  // namespace limarp::ops
