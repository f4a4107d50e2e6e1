#pragma once
/// \file concepts.hpp
/// \brief The layer concepts: what a type must provide to be composed into `MistralBlock`.
///
/// A user-defined layer is any type satisfying the concept; nothing has to derive from
/// a library base class. See examples/custom_layer/ for a wrapper defined outside the library.

#include <concepts>
#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// A linear map y = x · Wᵀ (+ anything the layer adds) from `in_features()` to `out_features()`.
///
/// Requirements:
/// - `typename L::backend_type` is a `Backend` tag;
/// - `l.in_features()`, `l.out_features()`;
/// - `l.forward(y, x, T)` writes y [T, out] from x [T, in] (pointers in the backend's memory);
/// - `L::load(ctx, name, in, out)` builds the layer from the module at `name` (no ".weight" suffix).
///
/// Optional fused forms, used when present (checked at compile time) and when they return true:
/// `L::try_forward_qkv(q, yq, k, yk, v, yv, x, T)` (three projections of the same x in one pass,
/// `GqaAttention`), `L::try_forward_swiglu(gate, up, h, x, T)` (h = silu(gate(x)) * up(x) in
/// one pass, `SwiGluMlp`) and `L::try_forward_pair(a, ya, b, yb, x, T)` (two projections of the
/// same x, gate and up, when the fused SwiGLU form declines: the CUDA int8 layer quantizes x once
/// for both); a false return means "not for these operands": the caller runs the plain
/// `forward`s. The CUDA int8 layer and `Lora` over it have them. With
/// `l.forward(y, x, T, accumulate)` (y += x · Wᵀ) `SwiGluMlp::forward_add` adds down_proj's
/// output to the residual stream in the projection's own pass (`MistralBlock` uses it).
template <class L>
concept Linear = requires(L& l, const L& cl, float* y, const float* x, std::int64_t T, const LoadContext& ctx,
                          const std::string& name) {
    typename L::backend_type;
    requires Backend<typename L::backend_type>;
    { cl.in_features() } -> std::convertible_to<std::int64_t>;
    { cl.out_features() } -> std::convertible_to<std::int64_t>;
    l.forward(y, x, T);
    { L::load(ctx, name, std::int64_t{}, std::int64_t{}) } -> std::same_as<L>;
};

/// A `Linear` that can be trained through (gradient rule: parameter grads `+=`, activation grads `=`):
/// - `l.forward_train(y, x, T)` is the training forward (e.g. with dropout; the same as `forward`
///   for a frozen layer);
/// - `l.backward(dx, dy, x, T)` writes the input gradient dx [T, in] from the output gradient
///   dy [T, out] and the forward's input x [T, in], and adds the gradients of its trainable
///   parameters (if any) into its own gradient buffers. dx must not alias dy or x.
template <class L>
concept TrainableLinear = Linear<L> && requires(L& l, float* y, const float* x, std::int64_t T) {
    l.forward_train(y, x, T);
    l.backward(y, x, x, T);
};

/// A normalisation over the last dimension: `n.forward(y, x, T)` with y, x [T, d]; y may alias x.
/// `N::load(ctx, name, d, eps)` builds it from the weight at `name`.
template <class N>
concept Norm = requires(const N& n, float* y, const float* x, std::int64_t T, const LoadContext& ctx,
                        const std::string& name) {
    typename N::backend_type;
    n.forward(y, x, T);
    { N::load(ctx, name, std::int64_t{}, double{}) } -> std::same_as<N>;
};

/// A feed-forward block d_model -> d_model: `m.forward(y, x, T)` with y, x [T, d_model]
/// (y must not alias x). `M::load(ctx, prefix, d_model, d_ff)` builds it from "<prefix>.*".
template <class M>
concept Mlp = requires(M& m, float* y, const float* x, std::int64_t T, const LoadContext& ctx,
                       const std::string& prefix) {
    typename M::backend_type;
    m.forward(y, x, T);
    { M::load(ctx, prefix, std::int64_t{}, std::int64_t{}) } -> std::same_as<M>;
};

}  // namespace limarp
