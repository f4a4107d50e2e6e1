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

}  // namespace limarp::ops
