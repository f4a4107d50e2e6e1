#pragma once
/// \file quantize_row.hpp
/// \brief Helpers of the quantizers: owned aligned byte buffers, rows converted to f32.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "limarp/core/dtype.hpp"
#include "limarp/core/tensor.hpp"

namespace limarp {

/// \cond
namespace quant_detail {

/// A zeroed, 64-byte aligned, shared byte buffer (`Tensor`'s allocator: large ones map their own pages).
inline std::shared_ptr<std::byte> make_buffer(std::size_t bytes) {
    const std::size_t n = std::max<std::size_t>(bytes, 64);
    return std::shared_ptr<std::byte>(static_cast<std::byte*>(limarp::detail::tensor_alloc(n)),
                                      [n](std::byte* q) { limarp::detail::AlignedFree{n}(q); });
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
