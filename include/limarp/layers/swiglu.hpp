#pragma once
/// \file swiglu.hpp
/// \brief `SwiGluMlp<B, Proj>`: down(silu(gate(x)) * up(x)), the Mistral MLP.

#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/layers/concepts.hpp"

namespace limarp {

/// The gated feed-forward block of Mistral, composed of three projections of type `Proj`
/// (any `Linear`: dense, quantized, LoRA-wrapped or user-defined).
template <Backend B, Linear Proj>
class SwiGluMlp {
public:
    using backend_type = B;  ///< backend tag
    using proj_type = Proj;  ///< projection type
    static_assert(std::is_same_v<typename Proj::backend_type, B>,
                  "SwiGluMlp<B, Proj>: Proj must run on the same backend B");

    SwiGluMlp() = default;
    /// Composes the three projections.
    SwiGluMlp(Proj gate, Proj up, Proj down) : gate_(std::move(gate)), up_(std::move(up)), down_(std::move(down)) {}
    /// Loads "<prefix>.gate_proj", "<prefix>.up_proj", "<prefix>.down_proj".
    static SwiGluMlp load(const LoadContext& ctx, const std::string& prefix, std::int64_t d_model, std::int64_t d_ff) {
        Proj gate = Proj::load(ctx, prefix + ".gate_proj", d_model, d_ff);  // in file order, so that
        Proj up = Proj::load(ctx, prefix + ".up_proj", d_model, d_ff);        // the first bad tensor is
        Proj down = Proj::load(ctx, prefix + ".down_proj", d_ff, d_model);    // the one reported
        return SwiGluMlp(std::move(gate), std::move(up), std::move(down));
    }
    /// y = down(silu(gate(x)) * up(x)). y must not alias x.
    void forward(float* y /*[T, d_model]*/, const float* x /*[T, d_model]*/, std::int64_t T) {
        const std::int64_t d_ff = gate_.out_features();
        if (g_.size() < T * d_ff) {
            g_ = Tensor<float>({T, d_ff});
            u_ = Tensor<float>({T, d_ff});
        }
        gate_.forward(g_.data(), x, T);
        up_.forward(u_.data(), x, T);
        ops::swiglu(B{}, g_.data(), g_.data(), u_.data(), T * d_ff);
        down_.forward(y, g_.data(), T);
    }
    /// The gate projection.
    Proj& gate() noexcept { return gate_; }
    /// The up projection.
    Proj& up() noexcept { return up_; }
    /// The down projection.
    Proj& down() noexcept { return down_; }

private:
    Proj gate_, up_, down_;
    Tensor<float> g_, u_;
};

}  // namespace limarp
