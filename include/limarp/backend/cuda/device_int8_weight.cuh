#pragma once
/// \file device_int8_weight.cuh
/// \brief `DeviceInt8Weight`: an `Int8Rowwise` weight (int8 values + one f32 scale per output
/// row) uploaded once to device memory, the operand of the CUDA int8 kernels (`ops::qgemv_int8`).
///
/// Device layout: the int8 values are row-major [n_out, ld] with the row stride `ld` = n_in rounded
/// up to a multiple of `kRowAlign` (16) bytes, so that every row starts 16-byte aligned and a
/// kernel can read any row with 16-byte loads; the padding columns n_in..ld-1 hold zeros. The
/// scales are [n_out] f32. For the Mistral shapes (n_in 4096 or 14336) ld == n_in.
///
/// No device code: compiles with nvcc or, given the CUDA include folder, a plain C++ compiler.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/quant/int8_rowwise.hpp"

namespace limarp {

/// An int8 row-wise weight [n_out, n_in] in device memory (see the file comment for the layout).
/// Move-only; frees its memory on destruction.
class DeviceInt8Weight {
public:
    /// Row stride alignment in bytes (= int8 elements).
    static constexpr std::int64_t kRowAlign = 16;

    /// An empty weight (0 x 0).
    DeviceInt8Weight() = default;

    /// Uploads `w` (values and scales) to the current device and waits for the copies, so `w` may
    /// be released right after.
    /// \throws CudaError naming the weight (e.g. "model.layers.0.mlp.down_proj.weight (int8
    ///         values)") when the allocation or a copy fails, with the free device memory on OOM
    explicit DeviceInt8Weight(const QuantizedWeight<Int8Rowwise>& w)
        : n_out_(w.n_out()),
          n_in_(w.n_in()),
          ld_((w.n_in() + kRowAlign - 1) / kRowAlign * kRowAlign),
          name_(w.name()),
          q_(static_cast<std::size_t>(w.n_out() * ld_), w.name() + " (int8 values)"),
          scale_(static_cast<std::size_t>(w.n_out()), w.name() + " (scales)") {
        if (ld_ != n_in_) {
            LIMARP_CUDA_CHECK(cudaMemset(q_.data(), 0, q_.bytes()));
            LIMARP_CUDA_CHECK(cudaMemcpy2D(q_.data(), static_cast<std::size_t>(ld_), w.data(),
                                           static_cast<std::size_t>(n_in_), static_cast<std::size_t>(n_in_),
                                           static_cast<std::size_t>(n_out_), cudaMemcpyHostToDevice));
        } else {
            q_.upload(w.data(), q_.size());
        }
        scale_.upload(w.scales(), scale_.size());
    }

    /// Output features (rows).
    std::int64_t n_out() const noexcept { return n_out_; }
    /// Input features (columns).
    std::int64_t n_in() const noexcept { return n_in_; }
    /// Row stride of `data()` in bytes: n_in rounded up to a multiple of `kRowAlign`.
    std::int64_t ld() const noexcept { return ld_; }
    /// Tensor name, for messages.
    const std::string& name() const noexcept { return name_; }
    /// Device pointer to the int8 values [n_out, ld], row-major, padding columns zero.
    const std::int8_t* data() const noexcept { return q_.data(); }
    /// Device pointer to the scales [n_out].
    const float* scales() const noexcept { return scale_.data(); }
    /// Bytes one product must read: n_out * n_in int8 values + n_out f32 scales (padding not counted).
    std::size_t nbytes() const noexcept {
        return static_cast<std::size_t>(n_out_ * n_in_) + static_cast<std::size_t>(n_out_) * sizeof(float);
    }
    /// True for a default-constructed (or moved-from) weight.
    bool empty() const noexcept { return q_.empty(); }

private:
    std::int64_t n_out_ = 0, n_in_ = 0, ld_ = 0;
    std::string name_;
    DeviceBuffer<std::int8_t> q_;
    DeviceBuffer<float> scale_;
};

}  // namespace limarp
