#pragma once
/// \file fused.hpp
/// \brief Pairs of CPU kernels that other backends fuse into one launch: `ops::add_rms_norm`
/// (residual add, then RMSNorm) and `ops::rope_rotate_half_qk` (RoPE on queries and keys). On the
/// CPU they are the two calls in order, so results are those of the separate kernels.

#include <cstdint>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/activation.hpp"
#include "limarp/backend/cpu/norm.hpp"
#include "limarp/backend/cpu/rope.hpp"

namespace limarp::ops {

/// x += a; h = rms_norm(x) with weight `w` [d] (f32 or bf16). h, x and a do not overlap.
template <class A, class W>
void add_rms_norm(Cpu<A>, float* h /*[T, d]*/, float* x /*[T, d]*/, const float* a /*[T, d]*/, const W* w /*[d]*/,
                  std::int64_t T, std::int64_t d, float eps) {
    add_inplace(Cpu<A>{}, x, a, T * d);
    rms_norm(Cpu<A>{}, h, x, w, T, d, eps);
}

/// RoPE (rotate-half) in place on the queries and the keys of the same tokens.
template <class A>
void rope_rotate_half_qk(Cpu<A>, float* q /*[T, n_heads, head_dim]*/, float* k /*[T, n_kv_heads, head_dim]*/,
                         const std::int64_t* positions /*[T]*/, std::int64_t T, std::int64_t n_heads,
                         std::int64_t n_kv_heads, std::int64_t head_dim, double theta) {
    rope_rotate_half(Cpu<A>{}, q, positions, T, n_heads, head_dim, theta);
    rope_rotate_half(Cpu<A>{}, k, positions, T, n_kv_heads, head_dim, theta);
}

}  // namespace limarp::ops
