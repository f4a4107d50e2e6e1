#pragma once
/// \file quantized_linear.hpp
/// \brief `QuantizedLinear<Scheme, B>`: a frozen y = x · Wᵀ with 8-bit weights (`Int8Rowwise` or
/// `Q8_0`), a drop-in `Linear` for `MistralBlock`, `Lora`, ...
///
/// Loading (`load(ctx, name, n_in, n_out)`):
/// - when the checkpoint behind `ctx` holds "<name>.weight" pre-quantized in the scheme's format
///   (Int8Rowwise: I8 [n_out, n_in] + "<name>.weight_scale" F32 [n_out]; Q8_0: U8
///   [n_out, n_in / 32 * 34]; see quant/int8_rowwise.hpp and quant/q8_0.hpp), the layer uses
///   those bytes in place (zero copy, the mapping stays alive with the layer);
/// - otherwise it takes "<name>.weight" [n_out, n_in] as f32/bf16 (`ctx.weight`, also for
///   provider contexts without a checkpoint) and quantizes it at load, in parallel.
/// A tensor pre-quantized in the other scheme is an error (FormatError naming it).
///
/// Run-time options, read from `ctx.option(key)` (see `QuantOptions`):
/// - "quant.activations": "int8" (default: int8 x int8 products; q8_0 activations for Q8_0) or
///   "f32" (weight-only quantization);
/// - "quant.outlier_threshold": default "6.0"; "0" turns the outlier columns off (Int8Rowwise).
/// Invalid values throw ArgumentError naming the option.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/qgemm.hpp"
#include "limarp/backend/cpu/qgemm_backward.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/weight.hpp"
#include "limarp/quant/int8_rowwise.hpp"
#include "limarp/quant/q8_0.hpp"
#include "limarp/quant/scheme.hpp"

namespace limarp {

/// Option key of `QuantOptions::int8_activations` ("int8" or "f32").
inline constexpr const char* kQuantActivationsOption = "quant.activations";
/// Option key of `QuantOptions::outlier_threshold` (a number >= 0).
inline constexpr const char* kQuantOutlierOption = "quant.outlier_threshold";

/// Reads `QuantOptions` from the "quant.*" options of `ctx` (defaults where absent).
/// \throws ArgumentError naming the option for an invalid value.
inline QuantOptions quant_options_from(const LoadContext& ctx) {
    return parse_quant_options(ctx.option(kQuantActivationsOption), ctx.option(kQuantOutlierOption));
}

/// The scheme of a checkpoint's linear weights: the `__metadata__` entry "limarp.quant" when
/// present ("int8", "q8_0", "none"), else the dtype of the first "*.weight" tensor that is I8
/// (Int8) or U8 (Q8_0), else None.
/// \throws ArgumentError when the metadata names an unknown scheme.
inline QuantScheme detect_quant_scheme(const io::SafeTensorsCheckpoint& ckpt) {
    if (const auto m = ckpt.metadata().find("limarp.quant"); m != ckpt.metadata().end())
        return parse_quant_scheme(m->second);
    for (const auto& name : ckpt.names()) {
        if (name.size() < 7 || name.compare(name.size() - 7, 7, ".weight") != 0) continue;
        const DType t = ckpt.get(name).dtype;
        if (t == DType::I8) return QuantScheme::Int8;
        if (t == DType::U8) return QuantScheme::Q8_0;
    }
    return QuantScheme::None;
}

/// A frozen linear layer with 8-bit weights, no bias: y = x · Wᵀ computed by `ops::qmatmul_wt`.
/// \tparam Scheme `Int8Rowwise` or `Q8_0`
/// \tparam B      backend tag (`Cpu<A>`; `Cuda<Sm>` with Int8Rowwise is the specialisation in
///                backend/cuda/quantized_linear.hpp)
template <class Scheme, Backend B>
class QuantizedLinear {
public:
    using backend_type = B;       ///< backend tag
    using scheme_type = Scheme;   ///< quantization scheme tag
    using weight_type = QuantizedWeight<Scheme>;  ///< quantized storage
    static_assert(std::is_same_v<Scheme, Int8Rowwise> || std::is_same_v<Scheme, Q8_0>,
                  "QuantizedLinear<Scheme, B>: Scheme must be Int8Rowwise or Q8_0");
    static_assert(is_cpu_backend_v<B>,
                  "QuantizedLinear<Scheme, B>: the CPU backend runs Int8Rowwise and Q8_0; the CUDA backend runs "
                  "Int8Rowwise only (QuantizedLinear<Int8Rowwise, Cuda<>>, with limarp::cuda linked)");

    QuantizedLinear() = default;
    /// Wraps quantized weights with run-time options `opt`.
    explicit QuantizedLinear(weight_type w, QuantOptions opt = {}) : w_(std::move(w)), opt_(opt) {}

    /// Builds the layer for module `name` (without ".weight") with weight [n_out, n_in]: zero copy
    /// from a pre-quantized checkpoint, or quantized at load from f32/bf16 (see the file comment).
    /// \throws FormatError / ShapeError naming the tensor (missing, wrong dtype or shape, a Q8_0
    ///         weight whose n_in is not a multiple of 32, a scale tensor of the wrong shape);
    ///         ArgumentError for invalid "quant.*" options.
    static QuantizedLinear load(const LoadContext& ctx, const std::string& name, std::int64_t n_in,
                                std::int64_t n_out) {
        const QuantOptions opt = quant_options_from(ctx);
        const std::string wn = name + ".weight";
        if (const auto& ck = ctx.checkpoint(); ck && ck->contains(wn)) {
            const DType t = ck->get(wn).dtype;
            if (weight_type::stored_in(*ck, name)) return QuantizedLinear(weight_type::from_checkpoint(ck, name, n_in, n_out), opt);
            if (t == DType::I8 || t == DType::U8)
                throw FormatError(ck->get(wn).file + ": tensor " + wn + " is pre-quantized as " +
                                  (t == DType::I8 ? "int8" : "q8_0") + ", but this layer was built for " +
                                  std::string(Scheme::name) + " (load it with --quant " +
                                  (t == DType::I8 ? "int8" : "q8_0") + ")");
        }
        if constexpr (std::is_same_v<Scheme, Q8_0>) weight_type::check_shape(wn, n_out, n_in);
        return QuantizedLinear(weight_type::quantize(ctx.weight(wn, {n_out, n_in})), opt);
    }

    /// Input width.
    std::int64_t in_features() const noexcept { return w_.n_in(); }
    /// Output width.
    std::int64_t out_features() const noexcept { return w_.n_out(); }
    /// The quantized weight (raw data for writers: `weight().write_to(writer, module)`).
    const weight_type& weight() const noexcept { return w_; }
    /// The run-time options.
    const QuantOptions& options() const noexcept { return opt_; }
    /// Changes the run-time options (no re-quantization needed).
    void set_options(const QuantOptions& opt) noexcept { opt_ = opt; }
    /// The weights in f32 [n_out, n_in] (for merging adapters, tests).
    Tensor<float> dequantize() const { return w_.dequantize(); }

    /// y = x · Wᵀ, or y += x · Wᵀ when `accumulate`.
    void forward(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T, bool accumulate = false) {
        ops::qmatmul_wt(B{}, y, x, w_, T, accumulate, opt_);
    }

    /// y (=|+=) x · Wᵀ + z · Bᵀ with one unmerged LoRA term (z = scale · x Aᵀ [T, r], B bf16
    /// [n_out, r]): int8 row-wise weights, the B rows added in the GEMV's own pass
    /// (`ops::qmatmul_wt_lora`). `Lora` calls it when the base has it.
    void forward_lora(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T, const bf16* b,
                      const float* z /*[T, r]*/, std::int64_t r, bool accumulate = false)
        requires std::is_same_v<Scheme, Int8Rowwise>
    {
        ops::qmatmul_wt_lora(B{}, y, x, w_, T, accumulate, opt_, b, z, r);
    }

    /// W += alpha · delta in the 8-bit format (an in-memory LoRA merge into a quantized base):
    /// dequantize, add in f32, quantize again with fresh scales (the layer then owns its bytes;
    /// a mapped checkpoint is not touched). Returns the largest |stored - exact| of the result,
    /// the requantization error. Merging then unmerging does not restore the original bytes
    /// exactly: each call requantizes.
    double add_delta(const float* delta /*[n_out, n_in]*/, float alpha) {
        Tensor<float> w = w_.dequantize();
        const std::int64_t n = w.size();
        for (std::int64_t i = 0; i < n; ++i) w[i] += alpha * delta[i];
        weight_type q = weight_type::quantize(Weight::owned(Tensor<float>(w), w_.name()));
        const Tensor<float> back = q.dequantize();
        double err = 0;
        for (std::int64_t i = 0; i < n; ++i) err = std::max(err, static_cast<double>(std::fabs(back[i] - w[i])));
        w_ = std::move(q);
        return err;
    }

    /// Training forward: the same as `forward` (the layer is frozen and keeps nothing).
    void forward_train(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T) { forward(y, x, T); }

    /// Backward of the frozen projection: dx = dy · W computed from the 8-bit weights
    /// (`ops::qmatmul_w`: dequantized a block at a time, never the whole f32 matrix); no
    /// parameter gradient. `x` is not needed (accepted for the `TrainableLinear` interface).
    /// The gradient is that of the dequantized weights (the straight-through view of a frozen
    /// quantized layer, as bitsandbytes' 8-bit layers compute it).
    /// \pre dx does not overlap dy.
    void backward(float* dx /*[T, n_in]*/, const float* dy /*[T, n_out]*/, const float* /*x [T, n_in]*/,
                  std::int64_t T) const {
        ops::qmatmul_w(B{}, dx, dy, w_, T);
    }

private:
    weight_type w_;
    QuantOptions opt_;
};

}  // namespace limarp

#if defined(LIMARP_WITH_CUDA_BACKEND)
#include "limarp/backend/cuda/quantized_linear.hpp"
#endif
