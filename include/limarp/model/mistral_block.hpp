#pragma once
/// \file mistral_block.hpp
/// \brief `MistralBlock<B, Proj, MlpT, NormT>`: one pre-norm decoder layer.

#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/layers/attention.hpp"
#include "limarp/layers/concepts.hpp"
#include "limarp/layers/linear.hpp"
#include "limarp/layers/rms_norm.hpp"
#include "limarp/layers/swiglu.hpp"
#include "limarp/model/kv_cache.hpp"
#include "limarp/model/mistral_config.hpp"

namespace limarp {

/// x += attn(norm1(x)); x += mlp(norm2(x)). Every part is a type parameter: `Proj` for the
/// seven projections (dense, quantized, LoRA-wrapped, user-defined), `MlpT` for the
/// feed-forward block and `NormT` for the two norms.
template <Backend B, Linear Proj = DenseLinear<B>, Mlp MlpT = SwiGluMlp<B, Proj>, Norm NormT = RmsNorm<B>>
class MistralBlock {
public:
    using backend_type = B;   ///< backend tag
    using proj_type = Proj;   ///< projection type
    using mlp_type = MlpT;    ///< feed-forward type
    using norm_type = NormT;  ///< norm type
    using attention_type = GqaAttention<B, Proj>;  ///< attention type

    MistralBlock() = default;
    /// Composes the parts.
    MistralBlock(NormT input_norm, attention_type attn, NormT post_norm, MlpT mlp)
        : norm1_(std::move(input_norm)), attn_(std::move(attn)), norm2_(std::move(post_norm)), mlp_(std::move(mlp)) {}

    /// Loads layer `index` with Hugging Face's names ("model.layers.<i>.self_attn.q_proj", ...).
    static MistralBlock load(const LoadContext& ctx, const MistralConfig& cfg, std::int64_t index) {
        const std::string p = "model.layers." + std::to_string(index);
        NormT n1 = NormT::load(ctx, p + ".input_layernorm", cfg.d_model, cfg.rms_norm_eps);
        attention_type attn = attention_type::load(ctx, p + ".self_attn", cfg);
        NormT n2 = NormT::load(ctx, p + ".post_attention_layernorm", cfg.d_model, cfg.rms_norm_eps);
        MlpT mlp = MlpT::load(ctx, p + ".mlp", cfg.d_model, cfg.d_ff);
        return MistralBlock(std::move(n1), std::move(attn), std::move(n2), std::move(mlp));
    }

    /// Updates the residual stream `x` in place for `T` tokens at `positions` (consecutive).
    void forward(float* x /*[T, d_model]*/, std::int64_t T, const std::int64_t* positions /*[T]*/, KvLayer cache) {
        const std::int64_t d = cfg_d(T);
        norm1_.forward(h_.data(), x, T);
        attn_.forward(a_.data(), h_.data(), T, positions, cache);
        ops::add_inplace(B{}, x, a_.data(), T * d);
        norm2_.forward(h_.data(), x, T);
        mlp_.forward(a_.data(), h_.data(), T);
        ops::add_inplace(B{}, x, a_.data(), T * d);
    }

    /// The self-attention.
    attention_type& attention() noexcept { return attn_; }
    /// The feed-forward block.
    MlpT& mlp() noexcept { return mlp_; }
    /// The norm before attention.
    NormT& input_norm() noexcept { return norm1_; }
    /// The norm before the feed-forward block.
    NormT& post_attention_norm() noexcept { return norm2_; }

private:
    std::int64_t cfg_d(std::int64_t T) {
        const std::int64_t d = attn_.o_proj().out_features();
        if (h_.size() < T * d) {
            h_ = Tensor<float>({T, d});
            a_ = Tensor<float>({T, d});
        }
        return d;
    }
    NormT norm1_;
    attention_type attn_;
    NormT norm2_;
    MlpT mlp_;
    Tensor<float> h_, a_;
};

}  // namespace limarp
