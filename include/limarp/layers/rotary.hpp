#pragma once
/// \file rotary.hpp
/// \brief `Rotary<B>`: rotary position embedding in Hugging Face's rotate-half layout.

#include <cstdint>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"

namespace limarp {

/// Rotates query/key heads by position-dependent angles pos * theta^(-2i/head_dim),
/// pairing element i with element i + head_dim/2 (HF `rotate_half`). Works at arbitrary positions.
template <Backend B>
class Rotary {
public:
    using backend_type = B;  ///< backend tag
    Rotary() = default;
    /// Rotary embedding for heads of width `head_dim` with base `theta`.
    Rotary(std::int64_t head_dim, double theta) : head_dim_(head_dim), theta_(theta) {}
    /// Head width.
    std::int64_t head_dim() const noexcept { return head_dim_; }
    /// Base.
    double theta() const noexcept { return theta_; }
    /// Rotates `x` in place; row t is at absolute position `positions[t]`.
    void forward(float* x /*[T, n_heads, head_dim]*/, const std::int64_t* positions /*[T]*/, std::int64_t T,
                 std::int64_t n_heads) const {
        ops::rope_rotate_half(B{}, x, positions, T, n_heads, head_dim_, theta_);
    }

    /// Rotates queries `q` and keys `k` of the same tokens in place (one pass where the backend
    /// fuses them: `ops::rope_rotate_half_qk`).
    void forward_qk(float* q /*[T, n_heads, head_dim]*/, float* k /*[T, n_kv_heads, head_dim]*/,
                    const std::int64_t* positions /*[T]*/, std::int64_t T, std::int64_t n_heads,
                    std::int64_t n_kv_heads) const {
        ops::rope_rotate_half_qk(B{}, q, k, positions, T, n_heads, n_kv_heads, head_dim_, theta_);
    }

    /// Backward: rotates the gradient `dx` back in place (the inverse rotation of `forward`).
    void backward(float* dx /*[T, n_heads, head_dim]*/, const std::int64_t* positions /*[T]*/, std::int64_t T,
                  std::int64_t n_heads) const {
        ops::rope_rotate_half_backward(B{}, dx, positions, T, n_heads, head_dim_, theta_);
    }

private:
    std::int64_t head_dim_ = 0;
    double theta_ = 10000.0;
};

}  // namespace limarp
