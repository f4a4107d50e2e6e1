#pragma once
/// \file rms_norm.hpp
/// \brief `RmsNorm<B>`: y = weight * x / sqrt(mean(x²) + eps), as Hugging Face MistralRMSNorm.

#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/backend/memory.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// Root-mean-square normalisation with a frozen per-channel weight.
template <Backend B>
class RmsNorm {
public:
    using backend_type = B;  ///< backend tag

    RmsNorm() = default;
    /// Wraps `w` [d], placed in the backend's memory (`BackendMemory<B>::place`).
    RmsNorm(Weight w, double eps) : w_(BackendMemory<B>::place(std::move(w))), eps_(eps) {}
    /// Loads "<name>.weight" [d].
    static RmsNorm load(const LoadContext& ctx, const std::string& name, std::int64_t d, double eps) {
        return RmsNorm(ctx.weight(name + ".weight", {d}), eps);
    }
    /// Width.
    std::int64_t dim() const noexcept { return w_.shape.empty() ? 0 : w_.shape[0]; }
    /// Epsilon added to the mean square.
    double eps() const noexcept { return eps_; }
    /// The weight [d].
    const Weight& weight() const noexcept { return w_; }
    /// y = norm(x); y may alias x.
    void forward(float* y /*[T, d]*/, const float* x /*[T, d]*/, std::int64_t T) const {
        visit_weight(w_, [&](const auto* w) { ops::rms_norm(B{}, y, x, w, T, dim(), static_cast<float>(eps_)); });
    }

    /// x += a, then h = norm(x): the residual add and the norm after it in one pass where the
    /// backend fuses them (`ops::add_rms_norm`). h, x and a do not overlap.
    void forward_add(float* h /*[T, d]*/, float* x /*[T, d]*/, const float* a /*[T, d]*/, std::int64_t T) const {
        visit_weight(w_, [&](const auto* w) { ops::add_rms_norm(B{}, h, x, a, w, T, dim(), static_cast<float>(eps_)); });
    }

    /// Backward with the weight frozen: dx from dy and the forward's input x (see
    /// `ops::rms_norm_backward`). dx may alias dy, not x.
    void backward(float* dx /*[T, d]*/, const float* dy /*[T, d]*/, const float* x /*[T, d]*/, std::int64_t T) const {
        visit_weight(w_, [&](const auto* w) {
            ops::rms_norm_backward(B{}, dx, dy, x, w, T, dim(), static_cast<float>(eps_));
        });
    }

private:
    Weight w_;
    double eps_ = 1e-5;
};

}  // namespace limarp
