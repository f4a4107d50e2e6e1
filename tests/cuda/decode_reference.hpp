#pragma once
// The CPU references of the CUDA decode-kernel tests: the Cpu<> ops (norm, rope, swiglu,
// add_inplace, embedding, attention), compiled as C++ in decode_reference.cpp with the host's SIMD
// flags, so that the .cu files need not compile the CPU kernels. bf16 data is passed as its raw
// 16 bits (the layout of both limarp::bf16 and __nv_bfloat16).
#include <cstdint>

#include "limarp/backend/attention_shape.hpp"

namespace limarp::test {

/// ops::rms_norm(Cpu<>) with an f32 or a bf16 (raw bits) weight.
void cpu_rms_norm(float* y, const float* x, const float* w, std::int64_t T, std::int64_t d, float eps);
void cpu_rms_norm_bf16(float* y, const float* x, const std::uint16_t* w, std::int64_t T, std::int64_t d, float eps);
/// ops::add_inplace(Cpu<>).
void cpu_add_inplace(float* y, const float* x, std::int64_t n);
/// ops::rope_rotate_half(Cpu<>) with theta.
void cpu_rope(float* x, const std::int64_t* positions, std::int64_t T, std::int64_t n_heads, std::int64_t head_dim,
              double theta);
/// ops::swiglu(Cpu<>).
void cpu_swiglu(float* h, const float* gate, const float* up, std::int64_t n);
/// ops::embedding_gather(Cpu<>) with an f32 or a bf16 (raw bits) table.
void cpu_embedding(float* y, const float* table, const std::int32_t* ids, std::int64_t T, std::int64_t d);
void cpu_embedding_bf16(float* y, const std::uint16_t* table, const std::int32_t* ids, std::int64_t T,
                        std::int64_t d);
/// ops::attention_sliding_window(Cpu<>) (f32 rings).
void cpu_attention(float* out, const float* q, const float* k_new, const float* v_new, const float* k_cache,
                   const float* v_cache, std::int64_t C, std::int64_t p0, std::int64_t T, const ops::AttentionShape& s,
                   float scale);

}  // namespace limarp::test
