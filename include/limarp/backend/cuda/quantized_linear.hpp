#pragma once
/// \file quantized_linear.hpp
/// \brief `QuantizedLinear<Int8Rowwise, Cuda<Sm>>`: the int8 row-wise projection on the GPU, the
/// same `Linear` as the CPU layer (so `Lora<QuantizedLinear<Int8Rowwise, Cuda<>>>` composes).
///
/// Loading is the CPU layer's (pre-quantized tensors used as they are, or f32/bf16 quantized at
/// load with the same scales), then the values and scales are uploaded once into a
/// `DeviceInt8Weight` and the host copy is dropped. Products (see `cuda_api::qmatmul_int8`): the
/// int8 GEMV with f32 activations for one token (decode); for more tokens (prefill) int8 widened
/// to bf16 on the tensor cores, with the activations rounded to bf16 by default, or kept close to
/// f32 (bf16 hi + lo, twice the tensor-core work) with the option "quant.activations" = "f32"
/// (the CPU layer's weight-only setting). The outlier threshold does not apply here.
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
    explicit QuantizedLinear(const QuantizedWeight<Int8Rowwise>& w, QuantOptions opt = {})
        : w_(w), exact_(!opt.int8_activations) {}

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

    /// y = x · Wᵀ, or y += x · Wᵀ when `accumulate` (device pointers).
    void forward(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T, bool accumulate = false) {
        cuda_api::qmatmul_int8(y, x, w_, T, accumulate, exact_);
    }

private:
    DeviceInt8Weight w_;
    bool exact_ = false;  // prefill GEMM activations: bf16 hi + lo (true) or bf16
};

}  // namespace limarp
