#pragma once
/// \file swiglu.hpp
/// \brief `SwiGluMlp<B, Proj>`: down(silu(gate(x)) * up(x)), the Mistral MLP.

#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/backend/memory.hpp"
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
    /// y = down(silu(gate(x)) * up(x)). y must not alias x. Where the projection type has a fused
    /// form (`Proj::try_forward_swiglu`, e.g. the CUDA int8 GEMV for one token), gate, up and the
    /// SwiGLU run as one pass.
    void forward(float* y /*[T, d_model]*/, const float* x /*[T, d_model]*/, std::int64_t T) {
        forward_hidden(x, T);
        down_.forward(y, g_.data(), T);
    }
    /// y += down(silu(gate(x)) * up(x)): the residual add inside down_proj's own pass. Exists when
    /// the projection can accumulate (`forward(y, x, T, true)`). y must not alias x.
    void forward_add(float* y /*[T, d_model]*/, const float* x /*[T, d_model]*/, std::int64_t T)
        requires requires(Proj& p) { p.forward(y, x, T, true); }
    {
        forward_hidden(x, T);
        down_.forward(y, g_.data(), T, true);
    }
    /// What `forward_train` keeps for `backward`, and the backward's scratch: one block's
    /// feed-forward working set (reused from call to call).
    struct Saved {
        Tensor<float> gate;   ///< [T, d_ff] gate(x), then its gradient
        Tensor<float> up;     ///< [T, d_ff] up(x), then its gradient
        Tensor<float> act;    ///< [T, d_ff] silu(gate) * up, the input of down
        Tensor<float> d_act;  ///< [T, d_ff] gradient of act
        Tensor<float> dx;     ///< [T, d_model] scratch of the input gradient
    };

    /// Training forward: y = down(silu(gate(x)) * up(x)) through the projections'
    /// `forward_train`, keeping gate, up and act in `s`. y must not alias x.
    void forward_train(float* y /*[T, d_model]*/, const float* x /*[T, d_model]*/, std::int64_t T, Saved& s)
        requires TrainableLinear<Proj>
    {
        const std::int64_t d_ff = gate_.out_features();
        if (s.gate.size() < T * d_ff) {
            s.gate = Tensor<float>({T, d_ff});
            s.up = Tensor<float>({T, d_ff});
            s.act = Tensor<float>({T, d_ff});
        }
        gate_.forward_train(s.gate.data(), x, T);
        up_.forward_train(s.up.data(), x, T);
        ops::swiglu(B{}, s.act.data(), s.gate.data(), s.up.data(), T * d_ff);
        down_.forward_train(y, s.act.data(), T);
    }

    /// Backward of `forward_train` on the same x: writes dx [T, d_model] from dy and adds the
    /// projections' parameter gradients. Consumes `s` (gate and up are overwritten by their
    /// gradients). dx must not alias dy or x.
    void backward(float* dx /*[T, d_model]*/, const float* dy /*[T, d_model]*/, const float* x /*[T, d_model]*/,
                  std::int64_t T, Saved& s)
        requires TrainableLinear<Proj>
    {
        const std::int64_t d_ff = gate_.out_features(), d = gate_.in_features();
        if (s.d_act.size() < T * d_ff) s.d_act = Tensor<float>({T, d_ff});
        if (s.dx.size() < T * d) s.dx = Tensor<float>({T, d});
        down_.backward(s.d_act.data(), dy, s.act.data(), T);
        ops::swiglu_backward(B{}, s.gate.data(), s.up.data(), s.d_act.data(), s.gate.data(), s.up.data(), T * d_ff);
        gate_.backward(dx, s.gate.data(), x, T);
        up_.backward(s.dx.data(), s.up.data(), x, T);
        ops::add_inplace(B{}, dx, s.dx.data(), T * d);
    }

    /// The gate projection.
    Proj& gate() noexcept { return gate_; }
    /// The up projection.
    Proj& up() noexcept { return up_; }
    /// The down projection.
    Proj& down() noexcept { return down_; }

private:
    /// g_ [T, d_ff] = silu(gate(x)) * up(x) (the input of down_proj).
    void forward_hidden(const float* x, std::int64_t T) {
        const std::int64_t d_ff = gate_.out_features();
        float* g = g_.ensure(T * d_ff);
        if constexpr (requires { { Proj::try_forward_swiglu(gate_, up_, g, x, T) } -> std::convertible_to<bool>; }) {
            if (Proj::try_forward_swiglu(gate_, up_, g, x, T)) return;
        }
        float* u = u_.ensure(T * d_ff);
        bool pair = false;  // gate and up from one preparation of x where the projection type can
        if constexpr (requires { { Proj::try_forward_pair(gate_, g, up_, u, x, T) } -> std::convertible_to<bool>; })
            pair = Proj::try_forward_pair(gate_, g, up_, u, x, T);
        if (!pair) {
            gate_.forward(g, x, T);
            up_.forward(u, x, T);
        }
        ops::swiglu(B{}, g, g, u, T * d_ff);
    }

    Proj gate_, up_, down_;
    // per-call working buffers, shared with the other layers' (SharedScratch)
    SharedScratch<B, float> g_{ScratchSlot::mlp_hidden}, u_{ScratchSlot::mlp_up};
};

}  // namespace limarp
