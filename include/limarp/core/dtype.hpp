#pragma once
/// \file dtype.hpp
/// \brief Element types (f32, bf16, f16, ...) and exact round-to-nearest-even conversions.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "limarp/core/error.hpp"

namespace limarp {

/// Element types that can appear in model files.
enum class DType : std::uint8_t { F32, F16, BF16, F64, I8, U8, I16, I32, I64, Bool };

/// Size in bytes of one element of `t`.
constexpr std::size_t dtype_size(DType t) noexcept {
    switch (t) {
        case DType::F64:
        case DType::I64: return 8;
        case DType::F32:
        case DType::I32: return 4;
        case DType::F16:
        case DType::BF16:
        case DType::I16: return 2;
        case DType::I8:
        case DType::U8:
        case DType::Bool: return 1;
    }
    return 0;
}

/// The safetensors name of `t` ("F32", "BF16", ...).
constexpr std::string_view dtype_name(DType t) noexcept {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::F64: return "F64";
        case DType::I8: return "I8";
        case DType::U8: return "U8";
        case DType::I16: return "I16";
        case DType::I32: return "I32";
        case DType::I64: return "I64";
        case DType::Bool: return "BOOL";
    }
    return "?";
}

/// Parses a safetensors dtype name. \throws FormatError naming `context` for an unknown name.
inline DType parse_dtype(std::string_view s, std::string_view context = "") {
    for (DType t : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I8, DType::U8, DType::I16,
                    DType::I32, DType::I64, DType::Bool})
        if (dtype_name(t) == s) return t;
    throw FormatError(std::string(context) + ": unknown dtype \"" + std::string(s) +
                      "\" (expected one of F32, F16, BF16, F64, I8, U8, I16, I32, I64, BOOL)");
}

/// A bfloat16 value, stored as its 16 raw bits.
struct bf16 {
    std::uint16_t bits;  ///< raw IEEE bfloat16 bits
};
/// An IEEE binary16 value, stored as its 16 raw bits.
struct f16 {
    std::uint16_t bits;  ///< raw IEEE half bits
};

/// bf16 bits -> f32 (exact).
inline float bf16_to_f32(std::uint16_t b) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// f32 -> bf16 bits with round-to-nearest-even; NaN stays NaN (quiet), Inf stays Inf.
inline std::uint16_t f32_to_bf16(float f) noexcept {
    std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
    const std::uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb;
    return static_cast<std::uint16_t>(u >> 16);
}

/// f16 bits -> f32 (exact, including subnormals, Inf and NaN payloads).
inline float f16_to_f32(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t mant = h & 0x3ffu;
    std::uint32_t out;
    if (exp == 0x1f) {
        out = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        if (mant == 0) {
            out = sign;
        } else {  // subnormal: normalise
            int e = -1;
            do {
                ++e;
                mant <<= 1;
            } while ((mant & 0x400u) == 0);
            mant &= 0x3ffu;
            out = sign | static_cast<std::uint32_t>(127 - 15 - e) << 23 | (mant << 13);
        }
    } else {
        out = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
    }
    return std::bit_cast<float>(out);
}

/// f32 -> f16 bits with round-to-nearest-even, overflow to Inf, gradual underflow to subnormals.
inline std::uint16_t f32_to_f16(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
    if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to Inf
    if (a >= 0x38800000u) {  // normal f16 range (>= 2^-14)
        std::uint32_t m = a - 0x38000000u;  // rebias exponent 127 -> 15
        m += 0xfffu + ((m >> 13) & 1u);
        return static_cast<std::uint16_t>(sign | (m >> 13));
    }
    if (a < 0x33000000u) return sign;  // < 2^-25: rounds to zero (2^-25 exactly ties to even = 0)
    // subnormal: value = mant * 2^-24
    const std::uint32_t e = a >> 23;
    const std::uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 113 + 13 ... keeps bits for 2^-24 units
    const std::uint32_t q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    std::uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return static_cast<std::uint16_t>(sign | r);
}

/// Maps a C++ element type to its DType.
template <class T>
struct DTypeOf;
/// \cond
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::F64; };
template <> struct DTypeOf<bf16> { static constexpr DType value = DType::BF16; };
template <> struct DTypeOf<f16> { static constexpr DType value = DType::F16; };
template <> struct DTypeOf<std::int8_t> { static constexpr DType value = DType::I8; };
template <> struct DTypeOf<std::uint8_t> { static constexpr DType value = DType::U8; };
template <> struct DTypeOf<std::int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<std::int64_t> { static constexpr DType value = DType::I64; };
/// \endcond

/// Loads element `i` of a buffer of type `t` as f32.
/// \pre `t` is F32, BF16 or F16.
inline float load_as_f32(const void* p, DType t, std::size_t i) noexcept {
    switch (t) {
        case DType::BF16: return bf16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
        case DType::F16: return f16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
        default: return static_cast<const float*>(p)[i];
    }
}

}  // namespace limarp
