#pragma once
/// \file linear.hpp
/// \brief `DenseLinear<B>`: a frozen y = x · Wᵀ with f32 or bf16 weights used in place.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/gemm_backward.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/backend/memory.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// A frozen dense projection, no bias (Mistral has none). bf16 weights stay bf16 in memory
/// (usually inside the file mapping) and are widened to f32 in registers by the kernel.
template <Backend B>
class DenseLinear {
public:
    using backend_type = B;  ///< backend tag

    DenseLinear() = default;
    /// Wraps `w` [n_out, n_in], placed in the backend's memory (`BackendMemory<B>::place`: in
    /// place on the CPU, uploaded once on CUDA). \throws ShapeError unless `w` is 2-D.
    explicit DenseLinear(Weight w) : w_(BackendMemory<B>::place(std::move(w))) {
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

    /// Training forward: the same as `forward` (a frozen layer keeps nothing for the backward).
    void forward_train(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T) { forward(y, x, T); }

    /// Backward of the frozen projection: dx = dy · W, with W (f32 or bf16) used in place; no
    /// parameter gradient. `x` is not needed (accepted for the `TrainableLinear` interface).
    /// \pre dx does not overlap dy.
    void backward(float* dx /*[T, n_in]*/, const float* dy /*[T, n_out]*/, const float* /*x [T, n_in]*/,
                  std::int64_t T) const {
        visit_weight(w_, [&](const auto* w) { ops::matmul_w(B{}, dx, dy, w, T, out_features(), in_features()); });
    }

    /// W += alpha · delta, keeping the weight's dtype (a mapped weight is first copied into owned
    /// memory). Returns the largest rounding error of storing the result (0 for f32 weights up to
    /// f32 rounding; bf16 rounding otherwise).
    double add_delta(const float* delta /*[n_out, n_in]*/, float alpha) {
        static_assert(B::host_memory, "DenseLinear::add_delta: merge on the CPU backend, then load the merged model");
        const std::int64_t n = w_.size();
        double err = 0;
        if (w_.dtype == DType::F32) {
            if (!owns_) {
                Tensor<float> t(w_.shape);
                std::copy_n(w_.as<float>(), n, t.data());
                w_ = Weight::owned(std::move(t), w_.name);
                owns_ = true;
            }
            auto* w = const_cast<float*>(w_.as<float>());
            for (std::int64_t i = 0; i < n; ++i) w[i] += alpha * delta[i];
            return 0.0;
        }
        if (!owns_) {
            Tensor<bf16> t(w_.shape);
            std::copy_n(w_.as<bf16>(), n, t.data());
            w_ = Weight::owned(std::move(t), w_.name);
            owns_ = true;
        }
        auto* w = const_cast<bf16*>(w_.as<bf16>());
        for (std::int64_t i = 0; i < n; ++i) {
            const float exact = bf16_to_f32(w[i].bits) + alpha * delta[i];
            w[i].bits = f32_to_bf16(exact);
            err = std::max(err, static_cast<double>(std::fabs(bf16_to_f32(w[i].bits) - exact)));
        }
        return err;
    }

private:
    Weight w_;
    bool owns_ = false;
};

}  // namespace limarp
