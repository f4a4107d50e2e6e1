#pragma once
/// \file quantize_row.hpp
/// \brief The rounding rule shared by every limarp quantizer (weights at load, activations in the
/// kernels, the scalar references of the tests), and owned aligned byte buffers.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "limarp/core/dtype.hpp"
#include "limarp/core/tensor.hpp"

namespace limarp {

/// Absmax int8 quantization of `n` values: d = max|x| / 127, q[i] = round(x[i] * (1/d)) with
/// ties to even (the rounding of `std::nearbyint` in the default mode and of the SIMD float->int
/// conversions), clamped to [-127, 127]; an all-zero row gives d = 0 and q = 0. The reciprocal
/// 1/d is computed once in f32 and the products are rounded in f32, so SIMD and scalar code that
/// follow this recipe produce the same bytes. Returns d.
/// \pre `x` holds `n` finite values, `q` has room for `n`.
inline float quantize_row_int8(const float* x /*[n]*/, std::int64_t n, std::int8_t* q /*[n]*/) noexcept {
    float amax = 0.0f;
    for (std::int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (std::int64_t i = 0; i < n; ++i) {
        const float r = std::nearbyint(x[i] * id);
        q[i] = static_cast<std::int8_t>(std::min(127.0f, std::max(-127.0f, r)));
    }
    return d;
}

/// \cond
namespace quant_detail {

/// An uninitialised, 64-byte aligned, shared byte buffer (no zero fill: quantizers write every byte).
inline std::shared_ptr<std::byte> make_buffer(std::size_t bytes) {
    void* p = ::operator new(std::max<std::size_t>(bytes, 64), std::align_val_t{kTensorAlign});
    return std::shared_ptr<std::byte>(static_cast<std::byte*>(p),
                                      [](std::byte* q) { ::operator delete(q, std::align_val_t{kTensorAlign}); });
}

/// Row `r` of a float or bf16 matrix [*, n] converted to f32 in `out`.
inline void row_to_f32(const void* data, DType t, std::int64_t r, std::int64_t n, float* out) noexcept {
    if (t == DType::BF16) {
        const auto* p = static_cast<const std::uint16_t*>(data) + r * n;
        for (std::int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(p[i]);
    } else {
        const float* p = static_cast<const float*>(data) + r * n;
        std::copy(p, p + n, out);
    }
}

}  // namespace quant_detail
/// \endcond

}  // namespace limarp
