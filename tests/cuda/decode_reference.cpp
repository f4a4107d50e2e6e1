// See decode_reference.hpp.
#include "decode_reference.hpp"

#include "limarp/backend/cpu/activation.hpp"
#include "limarp/backend/cpu/attention.hpp"
#include "limarp/backend/cpu/embedding.hpp"
#include "limarp/backend/cpu/norm.hpp"
#include "limarp/backend/cpu/rope.hpp"
#include "limarp/core/dtype.hpp"

namespace limarp::test {

void cpu_rms_norm(float* y, const float* x, const float* w, std::int64_t T, std::int64_t d, float eps) {
    ops::rms_norm(Cpu<>{}, y, x, w, T, d, eps);
}
void cpu_rms_norm_bf16(float* y, const float* x, const std::uint16_t* w, std::int64_t T, std::int64_t d, float eps) {
    ops::rms_norm(Cpu<>{}, y, x, reinterpret_cast<const bf16*>(w), T, d, eps);
}
void cpu_add_inplace(float* y, const float* x, std::int64_t n) { ops::add_inplace(Cpu<>{}, y, x, n); }
void cpu_rope(float* x, const std::int64_t* positions, std::int64_t T, std::int64_t n_heads, std::int64_t head_dim,
              double theta) {
    ops::rope_rotate_half(Cpu<>{}, x, positions, T, n_heads, head_dim, theta);
}
void cpu_swiglu(float* h, const float* gate, const float* up, std::int64_t n) { ops::swiglu(Cpu<>{}, h, gate, up, n); }
void cpu_embedding(float* y, const float* table, const std::int32_t* ids, std::int64_t T, std::int64_t d) {
    ops::embedding_gather(Cpu<>{}, y, table, ids, T, d);
}
void cpu_embedding_bf16(float* y, const std::uint16_t* table, const std::int32_t* ids, std::int64_t T,
                        std::int64_t d) {
    ops::embedding_gather(Cpu<>{}, y, reinterpret_cast<const bf16*>(table), ids, T, d);
}
void cpu_attention(float* out, const float* q, const float* k_new, const float* v_new, const float* k_cache,
                   const float* v_cache, std::int64_t C, std::int64_t p0, std::int64_t T, const ops::AttentionShape& s,
                   float scale) {
    ops::attention_sliding_window(Cpu<>{}, out, q, k_new, v_new, k_cache, v_cache, C, p0, T, s, scale);
}

}  // namespace limarp::test
