#pragma once
/// \file linear.hpp
/// \brief `DenseLinear<B>`: a frozen y = x · Wᵀ with f32 or bf16 weights used in place.

#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// A frozen dense projection, no bias (Mistral has none). bf16 weights stay bf16 in memory
/// (usually inside the file mapping) and are widened to f32 in registers by the kernel.
template <Backend B>
class DenseLinear {
public:
    using backend_type = B;  ///< backend tag
    static_assert(is_cpu_backend_v<B>,
                  "DenseLinear: only the Cpu backend has kernels in this build (CUDA kernels arrive with the CUDA "
                  "backend issue); use DenseLinear<Cpu<>>");

    DenseLinear() = default;
    /// Wraps `w` [n_out, n_in]. \throws ShapeError unless `w` is 2-D.
    explicit DenseLinear(Weight w) : w_(std::move(w)) {
        if (w_.shape.size() != 2) throw ShapeError(w_.name + ": a linear weight must be 2-D, got " + shape_str(w_.shape));
    }
    /// Loads "<name>.weight" with shape [n_out, n_in].
    static DenseLinear load(const LoadContext& ctx, const std::string& name, std::int64_t n_in, std::int64_t n_out) {
        return DenseLinear(ctx.weight(name + ".weight", {n_out, n_in}));
    }
    /// Input width.
    std::int64_t in_features() const noexcept { return w_.shape.empty() ? 0 : w_.shape[1]; }
    /// Output width.
    std::int64_t out_features() const noexcept { return w_.shape.empty() ? 0 : w_.shape[0]; }
    /// The weight [n_out, n_in].
    const Weight& weight() const noexcept { return w_; }

    /// y = x · Wᵀ, or y += x · Wᵀ when `accumulate`.
    void forward(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T, bool accumulate = false) {
        visit_weight(w_, [&](const auto* w) {
            ops::matmul_wt(B{}, y, x, w, T, in_features(), out_features(), accumulate);
        });
    }

private:
    Weight w_;
};

}  // namespace limarp
