#pragma once
/// \file mistral_block.hpp
/// \brief `MistralBlock<B, Proj, MlpT, NormT>`: one pre-norm decoder layer.

#include <algorithm>
#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/backend/memory.hpp"
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

    /// Updates the residual stream `x` in place for `T` tokens at `positions` (consecutive);
    /// `x`, `positions` and the cache are in the backend's memory.
    void forward(float* x /*[T, d_model]*/, std::int64_t T, const std::int64_t* positions /*[T]*/, KvLayer cache) {
        const std::int64_t d = attn_.o_proj().out_features();
        float* h = h_.ensure(T * d);
        float* a = a_.ensure(T * d);
        norm1_.forward(h, x, T);
        attn_.forward(a, h, T, positions, cache);
        if constexpr (requires { norm2_.forward_add(h, x, a, T); }) {
            norm2_.forward_add(h, x, a, T);  // x += a; h = norm2(x), fused where the backend can
        } else {
            ops::add_inplace(B{}, x, a, T * d);
            norm2_.forward(h, x, T);
        }
        if constexpr (requires { mlp_.forward_add(x, h, T); }) {
            mlp_.forward_add(x, h, T);  // x += mlp(h) inside down_proj's pass
        } else {
            mlp_.forward(a, h, T);
            ops::add_inplace(B{}, x, a, T * d);
        }
    }

    /// One block's training working set: what `forward_train` keeps for `backward` plus the
    /// backward's scratch (reused from block to block and call to call, so that training holds
    /// one working set however many blocks the model has).
    struct Saved {
        Tensor<float> h1;     ///< [T, d_model] input_layernorm(x)
        Tensor<float> x_mid;  ///< [T, d_model] residual stream after attention
        Tensor<float> h2;     ///< [T, d_model] post_attention_layernorm(x_mid)
        Tensor<float> a;      ///< [T, d_model] branch output, then scratch
        Tensor<float> dh;     ///< [T, d_model] gradient of a norm's output
        typename attention_type::Saved attn;  ///< the attention's part
        typename MlpT::Saved mlp;             ///< the feed-forward part
    };

    /// Training forward of a whole sequence (positions 0..T-1, no cache): updates the residual
    /// stream `x` in place through the layers' `forward_train`, keeping what `backward` needs in
    /// `s`. The block's input is not kept: the caller keeps it (a gradient checkpoint).
    void forward_train(float* x /*[T, d_model]*/, std::int64_t T, const std::int64_t* positions /*[T]*/, Saved& s) {
        static_assert(TrainableLinear<Proj>, "MistralBlock::forward_train needs trainable projections (TrainableLinear: "
                                             "DenseLinear, Lora<DenseLinear>, or a type with forward_train/backward)");
        const std::int64_t d = attn_.o_proj().out_features();
        if (s.h1.size() < T * d) {
            s.h1 = Tensor<float>({T, d});
            s.x_mid = Tensor<float>({T, d});
            s.h2 = Tensor<float>({T, d});
            s.a = Tensor<float>({T, d});
            s.dh = Tensor<float>({T, d});
        }
        norm1_.forward(s.h1.data(), x, T);
        attn_.forward_train(s.a.data(), s.h1.data(), T, positions, s.attn);
        ops::add_inplace(B{}, x, s.a.data(), T * d);
        std::copy_n(x, T * d, s.x_mid.data());
        norm2_.forward(s.h2.data(), x, T);
        mlp_.forward_train(s.a.data(), s.h2.data(), T, s.mlp);
        ops::add_inplace(B{}, x, s.a.data(), T * d);
    }

    /// Backward of `forward_train`: on entry `dx` is the gradient of the block's output, on exit
    /// that of its input `x_in` (the same x `forward_train` was last called with, before it
    /// changed it); adds the parameter gradients of the projections. Consumes `s`.
    void backward(float* dx /*[T, d_model]*/, const float* x_in /*[T, d_model]*/, std::int64_t T,
                  const std::int64_t* positions /*[T]*/, Saved& s) {
        const std::int64_t d = attn_.o_proj().out_features();
        // x_out = x_mid + mlp(norm2(x_mid))
        mlp_.backward(s.dh.data(), dx, s.h2.data(), T, s.mlp);
        norm2_.backward(s.a.data(), s.dh.data(), s.x_mid.data(), T);
        ops::add_inplace(B{}, dx, s.a.data(), T * d);
        // x_mid = x_in + attn(norm1(x_in))
        attn_.backward(s.dh.data(), dx, s.h1.data(), T, positions, s.attn);
        norm1_.backward(s.a.data(), s.dh.data(), x_in, T);
        ops::add_inplace(B{}, dx, s.a.data(), T * d);
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
    NormT norm1_;
    attention_type attn_;
    NormT norm2_;
    MlpT mlp_;
    SharedScratch<B, float> h_{ScratchSlot::block_normed}, a_{ScratchSlot::block_branch};  // per call
};

}  // namespace limarp
