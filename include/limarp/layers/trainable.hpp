#pragma once
/// \file trainable.hpp
/// \brief Layers whose own weights are trained (full-parameter training, e.g. pretraining a small
/// model from scratch): `FullLinear<B>`, `FullRmsNorm<B>` and `FullEmbedding<B>`. Each keeps an f32
/// copy of its weight and a gradient buffer of the same shape; `backward` adds (+=) the weight
/// gradient and writes the input gradient, as `TrainableLinear` asks. `for_each_parameter` (in
/// model/parameters.hpp) visits them all for the optimizer and the checkpoint writer.
///
/// They compose into the stock model like any other layer:
/// \code
/// using Block = MistralBlock<Cpu<>, FullLinear<Cpu<>>, SwiGluMlp<Cpu<>, FullLinear<Cpu<>>>, FullRmsNorm<Cpu<>>>;
/// using Model = MistralModel<Cpu<>, Block, FullLinear<Cpu<>>, FullEmbedding<Cpu<>>>;
/// \endcode
/// and load from any `LoadContext` (a checkpoint of any dtype, or a provider of initial values).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/gemm_backward.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// One trained tensor: its name (the checkpoint's), f32 values and gradient.
struct Param {
    std::string name;     ///< tensor name, e.g. "model.layers.0.self_attn.q_proj.weight"
    Tensor<float> value;  ///< current values
    Tensor<float> grad;   ///< gradient, accumulated with += by backward passes

    Param() = default;
    /// Copies `w` (any dtype) into f32 values and a zero gradient.
    explicit Param(const Weight& w) : name(w.name), value(w.shape), grad(w.shape) {
        const std::int64_t n = w.size();
        for (std::int64_t i = 0; i < n; ++i) value[i] = w.at(i);
        std::fill(grad.data(), grad.data() + n, 0.0f);
    }
    /// A non-owning f32 view of the values (valid while this Param lives and is not reassigned).
    Weight view() const { return Weight::view(value, name); }
    /// Sets the gradient to zero.
    void zero_grad() { std::fill(grad.data(), grad.data() + grad.size(), 0.0f); }
};

/// A linear map y = x · Wᵀ with a trained f32 weight W [n_out, n_in] (no bias).
template <Backend B>
class FullLinear {
public:
    using backend_type = B;  ///< backend tag

    FullLinear() = default;
    /// Takes the weight [n_out, n_in].
    explicit FullLinear(Param w) : w_(std::move(w)) {}
    /// Loads "<name>.weight" [n_out, n_in] (any stored dtype, copied to f32).
    static FullLinear load(const LoadContext& ctx, const std::string& name, std::int64_t n_in, std::int64_t n_out) {
        return FullLinear(Param(ctx.weight(name + ".weight", {n_out, n_in})));
    }
    /// Input width.
    std::int64_t in_features() const noexcept { return w_.value.dim(1); }
    /// Output width.
    std::int64_t out_features() const noexcept { return w_.value.dim(0); }
    /// The weight as a `Weight` view (f32).
    Weight weight() const { return w_.view(); }
    /// The trained parameter.
    Param& param() noexcept { return w_; }

    /// y = x · Wᵀ, or y += x · Wᵀ when `accumulate`.
    void forward(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T, bool accumulate = false) {
        ops::matmul_wt(B{}, y, x, w_.value.data(), T, in_features(), out_features(), accumulate);
    }
    /// Training forward: the same as `forward`.
    void forward_train(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T) { forward(y, x, T); }
    /// dx = dy · W and dW += dyᵀ · x.
    /// \pre dx does not overlap dy or x.
    void backward(float* dx /*[T, n_in]*/, const float* dy /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T) {
        ops::matmul_w(B{}, dx, dy, w_.value.data(), T, out_features(), in_features());
        ops::matmul_at_b(B{}, w_.grad.data(), dy, x, T, out_features(), in_features(), true);
    }
    /// Calls f(Param&) for the weight.
    template <class F>
    void for_each_param(F&& f) {
        f(w_);
    }

private:
    Param w_;
};

/// RMSNorm (as Hugging Face MistralRMSNorm) with a trained weight [d].
template <Backend B>
class FullRmsNorm {
public:
    using backend_type = B;  ///< backend tag

    FullRmsNorm() = default;
    /// Takes the weight [d].
    FullRmsNorm(Param w, double eps) : w_(std::move(w)), eps_(eps) {}
    /// Loads "<name>.weight" [d].
    static FullRmsNorm load(const LoadContext& ctx, const std::string& name, std::int64_t d, double eps) {
        return FullRmsNorm(Param(ctx.weight(name + ".weight", {d})), eps);
    }
    /// Width.
    std::int64_t dim() const noexcept { return w_.value.dim(0); }
    /// The weight as a `Weight` view (f32).
    Weight weight() const { return w_.view(); }
    /// The trained parameter.
    Param& param() noexcept { return w_; }

    /// y = norm(x); y may alias x.
    void forward(float* y /*[T, d]*/, const float* x /*[T, d]*/, std::int64_t T) const {
        ops::rms_norm(B{}, y, x, w_.value.data(), T, dim(), static_cast<float>(eps_));
    }
    /// dw += sum_t dy[t] * x[t] / rms(x[t]); then dx from dy (dx may alias dy, not x).
    void backward(float* dx /*[T, d]*/, const float* dy /*[T, d]*/, const float* x /*[T, d]*/, std::int64_t T) {
        const std::int64_t d = dim();
        float* g = w_.grad.data();
        for (std::int64_t t = 0; t < T; ++t) {
            const float* xr = x + t * d;
            const float* gr = dy + t * d;
            float ss = 0.0f;
            for (std::int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
            const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + static_cast<float>(eps_));
            for (std::int64_t i = 0; i < d; ++i) g[i] += gr[i] * xr[i] * inv;
        }
        ops::rms_norm_backward(B{}, dx, dy, x, w_.value.data(), T, d, static_cast<float>(eps_));
    }
    /// Calls f(Param&) for the weight.
    template <class F>
    void for_each_param(F&& f) {
        f(w_);
    }

private:
    Param w_;
    double eps_ = 1e-5;
};

/// Token embeddings with a trained table [vocab, d].
template <Backend B>
class FullEmbedding {
public:
    using backend_type = B;  ///< backend tag

    FullEmbedding() = default;
    /// Takes the table [vocab, d].
    explicit FullEmbedding(Param table) : w_(std::move(table)) {}
    /// Loads "<name>.weight" [vocab, d].
    static FullEmbedding load(const LoadContext& ctx, const std::string& name, std::int64_t vocab, std::int64_t d) {
        return FullEmbedding(Param(ctx.weight(name + ".weight", {vocab, d})));
    }
    /// Number of rows.
    std::int64_t vocab() const noexcept { return w_.value.dim(0); }
    /// Width.
    std::int64_t dim() const noexcept { return w_.value.dim(1); }
    /// The table as a `Weight` view (f32).
    Weight weight() const { return w_.view(); }
    /// The trained parameter.
    Param& param() noexcept { return w_; }

    /// Gathers rows. \throws ArgumentError naming the position when an id is outside [0, vocab).
    void forward(float* y /*[T, d]*/, const std::int32_t* ids /*[T]*/, std::int64_t T) const {
        for (std::int64_t t = 0; t < T; ++t)
            if (ids[t] < 0 || ids[t] >= vocab())
                throw ArgumentError("token id " + std::to_string(ids[t]) + " at position " + std::to_string(t) +
                                    " is outside the vocabulary [0, " + std::to_string(vocab()) + ")");
        ops::embedding_gather(B{}, y, w_.value.data(), ids, T, dim());
    }
    /// table_grad[ids[t]] += dy[t] (ids were checked by `forward`).
    void backward(const float* dy /*[T, d]*/, const std::int32_t* ids /*[T]*/, std::int64_t T) {
        const std::int64_t d = dim();
        for (std::int64_t t = 0; t < T; ++t) {
            float* g = w_.grad.data() + static_cast<std::int64_t>(ids[t]) * d;
            const float* s = dy + t * d;
            for (std::int64_t i = 0; i < d; ++i) g[i] += s[i];
        }
    }
    /// Calls f(Param&) for the table.
    template <class F>
    void for_each_param(F&& f) {
        f(w_);
    }

private:
    Param w_;
};

}  // namespace limarp
