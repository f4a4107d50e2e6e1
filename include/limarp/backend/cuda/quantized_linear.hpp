#pragma once
/// \file quantized_linear.hpp
/// \brief `QuantizedLinear<Int8Rowwise, Cuda<Sm>>`: the int8 row-wise projection on the GPU, the
/// same `Linear` as the CPU layer (so `Lora<QuantizedLinear<Int8Rowwise, Cuda<>>>` composes).
///
/// Loading is the CPU layer's (pre-quantized tensors used as they are, or f32/bf16 quantized at
/// load with the same scales), then the values and scales are uploaded once into a
/// `DeviceInt8Weight` and the host copy is dropped. The layer keeps the `QuantOptions` ("quant.*"
/// options at load). Products (see `cuda_api::qmatmul_int8`):
/// - one token (decode): the int8 GEMV with f32 activations (weight-only, whatever the options;
///   the CPU layer quantizes the activations there too when they are int8);
/// - more tokens (prefill), "quant.activations" = "int8" (the default): LLM.int8() as the CPU
///   layer computes it, with the same quantized bytes: input columns with some |x| >=
///   "quant.outlier_threshold" (default 6; 0 = none) multiplied close to f32 with the int8 weight
///   columns, the rest quantized per row (absmax / 127) and multiplied int8 x int8 on the tensor
///   cores (backend/cuda/qgemm_int8.cuh); results equal the CPU layer's up to f32 rounding;
/// - more tokens, "quant.activations" = "f32" (weight-only): the int8 weights widened to bf16 and
///   the activations split into bf16 hi + lo (twice the tensor-core work), products close to f32.
/// - fused one-token forms (`try_forward_qkv`, `try_forward_group`, `try_forward_swiglu`): q/k/v in
///   one GEMV launch, gate and up in one launch with SwiGLU in its epilogue; `GqaAttention` and
///   `SwiGluMlp` use them when the projection type has them (`Lora` forwards them to its base);
/// - shared-input forms for more tokens (`try_forward_qkv`, `try_forward_pair`): the int8
///   activations of x (outlier columns, row quantization) computed once for q/k/v and for gate/up.
/// Included by layers/quantized_linear.hpp when `LIMARP_WITH_CUDA_BACKEND` is defined.

#include <cstdint>
#include <string>

#include "limarp/backend/cuda/api.hpp"
#include "limarp/backend/cuda/device_int8_weight.cuh"
#include "limarp/layers/quantized_linear.hpp"

namespace limarp {

/// The int8 row-wise projection on CUDA (see the file comment).
template <int Sm>
class QuantizedLinear<Int8Rowwise, Cuda<Sm>> {
public:
    using backend_type = Cuda<Sm>;         ///< backend tag
    using scheme_type = Int8Rowwise;       ///< quantization scheme tag
    using weight_type = DeviceInt8Weight;  ///< device storage

    QuantizedLinear() = default;
    /// Uploads `w` (values and scales).
    explicit QuantizedLinear(const QuantizedWeight<Int8Rowwise>& w, QuantOptions opt = {}) : w_(w), opt_(opt) {}

    /// Loads like `QuantizedLinear<Int8Rowwise, Cpu<>>::load`, then uploads.
    /// \throws as the CPU layer; CudaError naming the tensor when the device is out of memory
    static QuantizedLinear load(const LoadContext& ctx, const std::string& name, std::int64_t n_in,
                                std::int64_t n_out) {
        const auto host = QuantizedLinear<Int8Rowwise, Cpu<>>::load(ctx, name, n_in, n_out);
        return QuantizedLinear(host.weight(), host.options());
    }
    /// Input width.
    std::int64_t in_features() const noexcept { return w_.n_in(); }
    /// Output width.
    std::int64_t out_features() const noexcept { return w_.n_out(); }
    /// The device weight.
    const DeviceInt8Weight& weight() const noexcept { return w_; }
    /// The run-time options.
    const QuantOptions& options() const noexcept { return opt_; }
    /// Changes the run-time options (no re-quantization needed).
    void set_options(const QuantOptions& opt) noexcept { opt_ = opt; }

    /// y = x · Wᵀ, or y += x · Wᵀ when `accumulate` (device pointers).
    void forward(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T, bool accumulate = false) {
        cuda_api::qmatmul_int8(y, x, w_, T, accumulate, opt_);
    }

    /// y (=|+=) x · Wᵀ + z · Bᵀ: the product with one unmerged LoRA term (z = scale · x Aᵀ [T, r] and
    /// B bf16 [n_out, r], device pointers). One token: one pass, the B rows read next to the int8
    /// rows (`cuda_detail::QGemvLora`); more tokens: the product, then B accumulated. `Lora` calls
    /// it when the base has it (saves a launch per projection and token).
    void forward_lora(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T, const bf16* b,
                      const float* z /*[T, r]*/, std::int64_t r, bool accumulate = false) {
        cuda_api::qmatmul_int8_lora(y, x, w_, T, opt_, b, z, r, accumulate);
    }

    /// An unmerged LoRA term for the fused forms: z · Bᵀ with B bf16 [n_out, r] and z [T, r] =
    /// scale · x Aᵀ (device pointers); b null: none.
    struct LoraTerm {
        const bf16* b = nullptr;  ///< LoRA B, or null
        const float* z = nullptr;  ///< the scaled A product
        std::int64_t r = 0;        ///< rank
    };
    /// Whether the fused forms below can run for `T` tokens (one token: the GEMV).
    static bool fuses(std::int64_t T) noexcept { return T == 1; }

    /// ys[i] = x · W_iᵀ (+ lora[i]) for n <= 3 layers that share x, in one GEMV launch (q/k/v:
    /// `cuda_api::qmatmul_int8_group`). Returns false, doing nothing, when it cannot (T != 1,
    /// unaligned operands): the caller runs each layer's `forward`.
    static bool try_forward_group(QuantizedLinear* const* layers, float* const* ys, const LoraTerm* lora, int n,
                                  const float* x, std::int64_t T) {
        if (!fuses(T) || n < 1 || n > 3) return false;
        cuda_api::FusedGemv p[3];
        for (int i = 0; i < n; ++i)
            p[i] = cuda_api::FusedGemv{ys[i], &layers[i]->w_, lora ? lora[i].b : nullptr, lora ? lora[i].z : nullptr,
                                       lora ? lora[i].r : 0};
        return cuda_api::qmatmul_int8_group(x, T, p, n);
    }
    /// ys[i] = x · W_iᵀ for n layers that share x at T > 1 tokens with the same int8-activation
    /// options: x's outlier columns and row quantization computed once for all of them
    /// (`cuda_api::qmatmul_int8_shared`; the values each layer's `forward` gives). Returns false,
    /// doing nothing, when it cannot (T < 2, options that differ or are weight-only).
    static bool try_forward_shared(QuantizedLinear* const* layers, float* const* ys, int n, const float* x,
                                   std::int64_t T) {
        if (T < 2 || n < 1 || n > 3) return false;
        const DeviceInt8Weight* w[3];
        for (int i = 0; i < n; ++i) {
            const QuantOptions& o = layers[i]->opt_;
            if (o.int8_activations != layers[0]->opt_.int8_activations ||
                o.outlier_threshold != layers[0]->opt_.outlier_threshold)
                return false;
            w[i] = &layers[i]->w_;
        }
        return cuda_api::qmatmul_int8_shared(x, T, w, ys, n, layers[0]->opt_);
    }
    /// q/k/v together: one token, `try_forward_group` over three layers without LoRA terms (one
    /// GEMV launch); more tokens, `try_forward_shared` (x quantized once).
    static bool try_forward_qkv(QuantizedLinear& q, float* yq, QuantizedLinear& k, float* yk, QuantizedLinear& v,
                                float* yv, const float* x, std::int64_t T) {
        QuantizedLinear* l[3] = {&q, &k, &v};
        float* y[3] = {yq, yk, yv};
        return T == 1 ? try_forward_group(l, y, nullptr, 3, x, T) : try_forward_shared(l, y, 3, x, T);
    }
    /// ya = x · Aᵀ and yb = x · Bᵀ at T > 1 tokens with x quantized once (`try_forward_shared`;
    /// `SwiGluMlp` uses it for gate and up). Returns false, doing nothing, when it cannot.
    static bool try_forward_pair(QuantizedLinear& a, float* ya, QuantizedLinear& b, float* yb, const float* x,
                                 std::int64_t T) {
        QuantizedLinear* l[2] = {&a, &b};
        float* y[2] = {ya, yb};
        return try_forward_shared(l, y, 2, x, T);
    }
    /// h = silu(x · Gateᵀ (+ lg)) * (x · Upᵀ (+ lu)) in one GEMV launch
    /// (`cuda_api::qmatmul_int8_swiglu`). Returns false, doing nothing, when it cannot (T != 1,
    /// shapes that differ, unaligned operands): the caller runs gate, up and `ops::swiglu`.
    static bool try_forward_swiglu(QuantizedLinear& gate, QuantizedLinear& up, float* h, const float* x,
                                   std::int64_t T, LoraTerm lg = {}, LoraTerm lu = {}) {
        if (!fuses(T)) return false;
        return cuda_api::qmatmul_int8_swiglu(h, x, T, cuda_api::FusedGemv{h, &gate.w_, lg.b, lg.z, lg.r},
                                             cuda_api::FusedGemv{nullptr, &up.w_, lu.b, lu.z, lu.r});
    }

private:
    DeviceInt8Weight w_;
    QuantOptions opt_;
};

}  // namespace limarp
