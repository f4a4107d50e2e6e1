#pragma once
/// \file scheme.hpp
/// \brief Quantization scheme names (`QuantScheme`, `parse_quant_scheme`), run-time options
/// (`QuantOptions`) and the `QuantizedWeight<Scheme>` template that each scheme specialises.
///
/// Design: a scheme tag (`Int8Rowwise`, `Q8_0`) is an empty type that picks the storage format and
/// the kernels at compile time. Everything that can change at run time without re-quantizing the
/// weights (weight-only vs int8 activations, the outlier threshold) lives in `QuantOptions`, which a
/// `QuantizedLinear` receives at load (from the `LoadContext` options "quant.*") and which every
/// `ops::qmatmul_wt` call takes.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <string_view>

#include "limarp/core/error.hpp"

namespace limarp {

/// The quantization of a model's linear weights, as chosen by a `--quant` flag or found in a file.
enum class QuantScheme : std::uint8_t {
    None,  ///< no quantization: f32/bf16 weights (`DenseLinear`)
    Int8,  ///< `Int8Rowwise`: int8 weights, one f32 absmax scale per output row (LLM.int8())
    Q8_0,  ///< `Q8_0`: GGUF/ggml blocks of 32 int8 with one f16 scale (34 bytes)
};

/// The command-line name of a scheme: "none", "int8" or "q8_0".
constexpr std::string_view quant_scheme_name(QuantScheme s) noexcept {
    switch (s) {
        case QuantScheme::None: return "none";
        case QuantScheme::Int8: return "int8";
        case QuantScheme::Q8_0: return "q8_0";
    }
    return "?";
}

/// Parses a scheme name ("none", "int8", "q8_0"; case-sensitive).
/// \throws ArgumentError naming the value and listing the valid names.
inline QuantScheme parse_quant_scheme(std::string_view name) {
    for (QuantScheme s : {QuantScheme::None, QuantScheme::Int8, QuantScheme::Q8_0})
        if (quant_scheme_name(s) == name) return s;
    throw ArgumentError("unknown quantization scheme \"" + std::string(name) +
                        "\" (valid: none, int8, q8_0)");
}

/// Run-time options of the quantized kernels (the scheme itself is a compile-time tag).
///
/// `QuantizedLinear::load` reads them from the `LoadContext` options:
/// - "quant.activations": "int8" (default) or "f32". "int8" quantizes the activations too and
///   multiplies int8 x int8 with int32 accumulation (per row absmax for `Int8Rowwise`, q8_0 blocks
///   of 32 for `Q8_0`); "f32" keeps f32 activations and dequantizes the weights in registers
///   (weight-only quantization: slower for prefill, more accurate).
/// - "quant.outlier_threshold": a non-negative number, default 6.0. `Int8Rowwise` with int8
///   activations only: input columns in which any |x| >= threshold are left out of the int8
///   product and multiplied in f32 with the dequantized weight columns (LLM.int8() outlier
///   decomposition). 0 turns the decomposition off.
struct QuantOptions {
    /// True: quantize activations (int8 x int8 products); false: f32 activations (weight-only).
    bool int8_activations = true;
    /// |x| at or above which an input column goes through the f32 path (`Int8Rowwise`, int8
    /// activations only); 0 = off.
    float outlier_threshold = 6.0f;

    /// Options for weight-only quantization (f32 activations).
    static QuantOptions weight_only() noexcept { return QuantOptions{false, 0.0f}; }
    /// Options for int8 activations with outlier threshold `threshold` (0 = no outliers).
    static QuantOptions int8(float threshold = 6.0f) noexcept { return QuantOptions{true, threshold}; }
};

/// Parses the option strings of `QuantOptions` ("quant.activations", "quant.outlier_threshold");
/// an empty string keeps the default.
/// \throws ArgumentError naming the option, the value and the valid values.
inline QuantOptions parse_quant_options(std::string_view activations, std::string_view outlier_threshold) {
    QuantOptions o;
    if (activations == "int8" || activations.empty()) {
        o.int8_activations = true;
    } else if (activations == "f32") {
        o.int8_activations = false;
    } else {
        throw ArgumentError("option quant.activations: unknown value \"" + std::string(activations) +
                            "\" (valid: int8, f32)");
    }
    if (!outlier_threshold.empty()) {
        const std::string s(outlier_threshold);
        std::size_t used = 0;
        float v = 0.0f;
        try {
            v = std::stof(s, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != s.size() || !(v >= 0.0f) || v == std::numeric_limits<float>::infinity())
            throw ArgumentError("option quant.outlier_threshold: \"" + s +
                                "\" is not a finite non-negative number (default 6.0; 0 = no outlier columns)");
        o.outlier_threshold = v;
    }
    return o;
}

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

/// Quantized weights of a linear layer [n_out, n_in] in the storage format of `Scheme`.
/// Specialised in quant/int8_rowwise.hpp (`QuantizedWeight<Int8Rowwise>`) and quant/q8_0.hpp
/// (`QuantizedWeight<Q8_0>`).
template <class Scheme>
class QuantizedWeight;

}  // namespace limarp
