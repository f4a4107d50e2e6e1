#pragma once
/// \file lora.hpp
/// \brief `Lora<Base>`: LoRA adapters around any `Linear`: y = base(x) + Σ_a scale_a · B_a (A_a x).
///
/// Several adapters can be active at once, each with its own scale; they are attached, detached
/// and rescaled at run time without reloading the base (hot swap), and can be merged into the
/// base weight (and unmerged) when the base supports `add_delta`.
///
/// Training (when the base is a `TrainableLinear`): `forward_train` applies PEFT's dropout to
/// each adapter's input, y = base(x) + Σ scale · B (A dropout(x)), with a mask that is a pure
/// function of (seed, module, adapter, element index), so that `backward` (and a recomputed
/// forward under gradient checkpointing) sees the same mask. `backward` adds dA and dB into
/// per-adapter gradient buffers (`grads()`) and writes dx. The training activations (x Aᵀ, its
/// gradient, the dropped input) live in per-thread scratch shared by all `Lora` layers, not in
/// the layers, so a model's memory holds only one layer's worth of them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <memory>
#include <string>
#include <vector>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/backend/memory.hpp"
#include "limarp/backend/scaled_product.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/layers/concepts.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// A base layer whose frozen weight can absorb a dense update (needed for LoRA merge).
template <class L>
concept MergeableLinear = Linear<L> && requires(L& l, const float* delta, float alpha) {
    { l.add_delta(delta, alpha) } -> std::convertible_to<double>;
};

/// One attached adapter of a `Lora` layer.
struct LoraFactors {
    std::string adapter;  ///< adapter name
    Weight A;             ///< [r, in] (f32 or bf16, usually in the adapter's file mapping)
    Weight B;             ///< [out, r]
    float file_scale = 0; ///< alpha / r (or alpha / sqrt(r)) from the adapter's config
    float user_scale = 1; ///< run-time multiplier (e.g. --adapter DIR:0.5)
    bool merged = false;  ///< true while folded into the base weight
    /// Effective scale.
    float scale() const noexcept { return file_scale * user_scale; }
    /// Whether the forward adds it (unmerged, non-zero scale).
    bool active() const noexcept { return !merged && scale() != 0.0f; }
};

/// Statistics of a merge or unmerge.
struct MergeReport {
    double max_abs_change = 0;   ///< max |scale · B A| over the weight
    double max_abs_error = 0;    ///< max rounding error of storing W + delta in the base's format
};

/// Gradients of one adapter's factors, accumulated (+=) by `Lora::backward`.
struct LoraGrads {
    std::string adapter;  ///< adapter name
    Tensor<float> A;      ///< [r, in] d loss / d lora_A
    Tensor<float> B;      ///< [out, r] d loss / d lora_B
};

/// \cond
namespace detail {
/// SplitMix64 finaliser: a well-mixed 64-bit hash of `x`.
inline std::uint64_t lora_mix64(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
/// FNV-1a hash of a string.
inline std::uint64_t lora_hash(std::string_view s) noexcept {
    std::uint64_t h = 1469598103934665603ull;
    for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return h;
}
}  // namespace detail
/// \endcond

/// LoRA wrapper around a `Linear` base (dense, quantized or user-defined).
template <Linear Base>
class Lora {
public:
    using backend_type = typename Base::backend_type;  ///< backend tag
    using base_type = Base;                            ///< wrapped layer type

    Lora() = default;
    /// Wraps `base`, known as module `module` (e.g. "model.layers.0.self_attn.q_proj").
    Lora(Base base, std::string module) : base_(std::move(base)), module_(std::move(module)) {}

    /// Loads the base and attaches every adapter of `ctx.adapters` that targets this module.
    static Lora load(const LoadContext& ctx, const std::string& name, std::int64_t n_in, std::int64_t n_out) {
        Lora l(Base::load(ctx, name, n_in, n_out), name);
        for (const auto& a : ctx.adapters) l.attach(*a.adapter, a.scale);
        return l;
    }

    /// Input width.
    std::int64_t in_features() const { return base_.in_features(); }
    /// Output width.
    std::int64_t out_features() const { return base_.out_features(); }
    /// The module path.
    const std::string& module() const noexcept { return module_; }
    /// The wrapped layer.
    Base& base() noexcept { return base_; }
    /// The attached adapters.
    const std::vector<LoraFactors>& adapters() const noexcept { return factors_; }

    /// y = base(x) + Σ scale · (x Aᵀ) Bᵀ over attached, unmerged adapters.
    void forward(float* y /*[T, out]*/, const float* x /*[T, in]*/, std::int64_t T) { forward_impl(y, x, T, false); }
    /// y (=|+=) base(x) + Σ scale · (x Aᵀ) Bᵀ: with `accumulate` the result is added to y (the
    /// residual add of down_proj inside its own pass), where the base can accumulate.
    void forward(float* y /*[T, out]*/, const float* x /*[T, in]*/, std::int64_t T, bool accumulate)
        requires requires(Base& b) { b.forward(y, x, T, accumulate); }
    {
        forward_impl(y, x, T, accumulate);
    }

private:
    void forward_impl(float* y, const float* x, std::int64_t T, bool accumulate) {
        const LoraFactors* fused = nullptr;
        // A base with `forward_lora` (the int8 row-wise layer, CPU and CUDA) adds the first active adapter's B
        // product inside its own pass: z = scale · x Aᵀ first, then base + z Bᵀ.
        if constexpr (requires(Base& b, const bf16* bb, const float* z) { b.forward_lora(y, x, T, bb, z, T, true); }) {
            for (auto& f : factors_) {
                if (!f.active() || f.B.dtype != DType::BF16) continue;
                const float* z = a_product(f, x, T);
                base_.forward_lora(y, x, T, f.B.as<bf16>(), z, f.A.shape[0], accumulate);
                fused = &f;
                break;
            }
        }
        if (!fused) {
            if constexpr (requires(Base& b) { b.forward(y, x, T, true); })
                base_.forward(y, x, T, accumulate);
            else
                base_.forward(y, x, T);  // accumulate is false: the public overload requires the form above
        }
        add_terms(y, x, T, fused);
    }
    // z = scale · x Aᵀ [T, r] of adapter f, in tmp_ (the next call overwrites it).
    const float* a_product(const LoraFactors& f, const float* x, std::int64_t T) {
        float* z = BackendMemory<backend_type>::ensure(tmp_, T * f.A.shape[0]);
        scaled_a_product(f, z, x, T);
        return z;
    }
    // ys[i] = layers[i](x) for n <= 3 layers at T > 1 tokens: the bases' shared-input form
    // (`Base::try_forward_shared`: x's int8 activations computed once), then each layer's active
    // adapters. False, doing nothing, when the bases decline.
    static bool forward_shared(Lora* const* layers, float* const* ys, int n, const float* x, std::int64_t T) {
        Base* bases[3];
        for (int i = 0; i < n; ++i) bases[i] = &layers[i]->base_;
        if (!Base::try_forward_shared(bases, ys, n, x, T)) return false;
        for (int i = 0; i < n; ++i) layers[i]->add_terms(ys[i], x, T);
        return true;
    }
    // y += Σ scale · (x Aᵀ) Bᵀ over the active adapters other than `skip`.
    void add_terms(float* y, const float* x, std::int64_t T, const LoraFactors* skip = nullptr) {
        for (auto& f : factors_) {
            if (&f == skip || !f.active()) continue;
            const std::int64_t r = f.A.shape[0];
            const float* z = a_product(f, x, T);
            visit_weight(f.B, [&](const auto* b) {
                ops::matmul_wt(backend_type{}, y, z, b, T, r, out_features(), /*accumulate=*/true);
            });
        }
    }

public:
    /// The fused one-token forms of the base (`QuantizedLinear<Int8Rowwise, Cuda<>>`) with each
    /// layer's adapter inside the same pass: q/k/v in one launch. Applies when each layer has at
    /// most one active (unmerged, non-zero scale) adapter and its B is bf16; returns false, doing
    /// nothing, otherwise or when the base declines (the caller runs each layer's `forward`).
    /// More tokens: the bases' shared-input form (`try_forward_shared`: x's int8 activations
    /// computed once), then each layer's active adapters added.
    static bool try_forward_qkv(Lora& q, float* yq, Lora& k, float* yk, Lora& v, float* yv, const float* x,
                                std::int64_t T)
        requires requires(Base* const* l, float* const* y, const typename Base::LoraTerm* t) {
            { Base::try_forward_group(l, y, t, 3, x, T) } -> std::convertible_to<bool>;
            { Base::fuses(T) } -> std::convertible_to<bool>;
        }
    {
        Lora* layers[3] = {&q, &k, &v};
        if (!Base::fuses(T)) {  // more tokens: the bases' shared-input form, then each layer's adapters
            if constexpr (requires(Base* const* l, float* const* y) {
                              { Base::try_forward_shared(l, y, 3, x, T) } -> std::convertible_to<bool>;
                          }) {
                float* ys[3] = {yq, yk, yv};
                return forward_shared(layers, ys, 3, x, T);
            }
            return false;
        }
        for (Lora* l : layers)
            if (!l->fusable()) return false;
        Base* bases[3];
        float* ys[3] = {yq, yk, yv};
        typename Base::LoraTerm terms[3];
        fused_terms(layers, x, T, terms);
        for (int i = 0; i < 3; ++i) bases[i] = &layers[i]->base_;
        return Base::try_forward_group(bases, ys, terms, 3, x, T);
    }
    /// h = silu(gate(x)) * up(x) through the base's fused one-token form, with the same
    /// conditions as `try_forward_qkv`.
    static bool try_forward_swiglu(Lora& gate, Lora& up, float* h, const float* x, std::int64_t T)
        requires requires(Base& b, typename Base::LoraTerm t) {
            { Base::try_forward_swiglu(b, b, h, x, T, t, t) } -> std::convertible_to<bool>;
            { Base::fuses(T) } -> std::convertible_to<bool>;
        }
    {
        if (!Base::fuses(T) || !gate.fusable() || !up.fusable()) return false;
        Lora* layers[2] = {&gate, &up};
        typename Base::LoraTerm terms[2];
        fused_terms(layers, x, T, terms);
        return Base::try_forward_swiglu(gate.base_, up.base_, h, x, T, terms[0], terms[1]);
    }

    /// ya = a(x), yb = b(x) for more than one token through the bases' shared-input form
    /// (`QuantizedLinear<Int8Rowwise, Cuda<>>::try_forward_shared`: x's int8 activations computed
    /// once), then each layer's active adapters added. Returns false, doing nothing, when the base
    /// declines.
    static bool try_forward_pair(Lora& a, float* ya, Lora& b, float* yb, const float* x, std::int64_t T)
        requires requires(Base* const* l, float* const* y) {
            { Base::try_forward_shared(l, y, 2, x, T) } -> std::convertible_to<bool>;
        }
    {
        Lora* layers[2] = {&a, &b};
        float* ys[2] = {ya, yb};
        return forward_shared(layers, ys, 2, x, T);
    }

    /// Attaches the factors of `adapter` for this module, if it targets it; returns whether it did.
    /// \throws ArgumentError when an adapter of that name is already attached; ShapeError / FormatError
    ///         (naming the tensor) when the factors do not fit this module.
    bool attach(const io::PeftAdapter& adapter, float user_scale = 1.0f) {
        auto m = adapter.module(module_, in_features(), out_features());
        if (!m) return false;
        if (find(adapter.name()))
            throw ArgumentError("adapter \"" + adapter.name() + "\" is already attached to " + module_);
        LoraFactors f;
        f.adapter = adapter.name();
        f.A = BackendMemory<backend_type>::place(to_weight(m->A, adapter));
        f.B = BackendMemory<backend_type>::place(to_weight(m->B, adapter));
        f.file_scale = static_cast<float>(m->scale);
        f.user_scale = user_scale;
        factors_.push_back(std::move(f));
        backend_epoch().fetch_add(1);  // recorded steps (CUDA graphs) do not have it
        return true;
    }
    /// Attaches in-memory factors (A [r, in], B [out, r]; e.g. a trainer's parameters).
    /// \throws ArgumentError when the name is taken, ShapeError when the shapes do not fit.
    void attach(LoraFactors f) {
        if (find(f.adapter)) throw ArgumentError("adapter \"" + f.adapter + "\" is already attached to " + module_);
        if (f.A.shape.size() != 2 || f.B.shape.size() != 2 || f.A.shape[1] != in_features() ||
            f.B.shape[0] != out_features() || f.B.shape[1] != f.A.shape[0])
            throw ShapeError(module_ + ": LoRA factors " + shape_str(f.A.shape) + " / " + shape_str(f.B.shape) +
                             " do not fit a " + std::to_string(out_features()) + "x" + std::to_string(in_features()) +
                             " projection");
        f.A = BackendMemory<backend_type>::place(std::move(f.A));
        f.B = BackendMemory<backend_type>::place(std::move(f.B));
        factors_.push_back(std::move(f));
        backend_epoch().fetch_add(1);
    }
    /// Detaches adapter `name` (unmerging it first if merged). Returns whether it was attached.
    bool detach(const std::string& name) {
        auto* f = find(name);
        if (!f) return false;
        if (f->merged) unmerge(name);
        factors_.erase(factors_.begin() + (f - factors_.data()));
        backend_epoch().fetch_add(1);
        return true;
    }
    /// Sets the run-time multiplier of adapter `name`. \throws ArgumentError if merged.
    bool set_scale(const std::string& name, float user_scale) {
        auto* f = find(name);
        if (!f) return false;
        if (f->merged) throw ArgumentError("adapter \"" + name + "\" is merged into " + module_ + "; unmerge it first");
        f->user_scale = user_scale;
        backend_epoch().fetch_add(1);  // the scale is a recorded kernel argument
        return true;
    }

    /// The dense update scale · B A [out, in] of adapter `name` in f32.
    Tensor<float> delta(const std::string& name) const {
        static_assert(backend_type::host_memory, "Lora::delta / merge: merge on the CPU backend, then load the merged model");
        const auto* f = find(name);
        if (!f) throw ArgumentError("adapter \"" + name + "\" is not attached to " + module_);
        const std::int64_t r = f->A.shape[0], n_in = in_features(), n_out = out_features();
        Tensor<float> a({r, n_in}), bs({n_out, r}), d({n_out, n_in});
        for (std::int64_t i = 0; i < r * n_in; ++i) a[i] = f->A.at(i);
        for (std::int64_t i = 0; i < n_out * r; ++i) bs[i] = f->B.at(i) * f->scale();
        ops::matmul(backend_type{}, d.data(), bs.data(), a.data(), n_out, r, n_in);  // [out, r] x [r, in]
        return d;
    }

    /// Folds adapter `name` into the base weight (W += scale · B A).
    MergeReport merge(const std::string& name) { return fold(name, +1.0f, true); }
    /// Takes a merged adapter back out of the base weight.
    MergeReport unmerge(const std::string& name) { return fold(name, -1.0f, false); }

    // ---- training ------------------------------------------------------------------------

    /// Sets the dropout probability `p` (PEFT's lora_dropout; 0 = off) of the adapter inputs in
    /// `forward_train` / `backward`, and the seed of its masks. Use a new seed for every step;
    /// keep it for the forward, any recomputation and the backward of that step.
    /// \throws ArgumentError unless 0 <= p < 1.
    void set_dropout(float p, std::uint64_t seed) {
        if (!(p >= 0.0f && p < 1.0f)) throw ArgumentError(module_ + ": LoRA dropout must be in [0, 1)");
        dropout_p_ = p;
        dropout_seed_ = seed;
    }
    /// The dropout probability of `forward_train` / `backward`.
    float dropout() const noexcept { return dropout_p_; }
    /// True when element `i` (= t * in + j) of adapter `adapter`'s dropout mask keeps its input
    /// (probability 1 - dropout(), see `ops::dropout`); kept inputs are scaled by 1 / (1 - dropout()).
    bool dropout_keeps(const std::string& adapter, std::int64_t i) const noexcept {
        return ops::dropout_keeps(mask_seed(adapter), i, ops::dropout_threshold(dropout_p_));
    }

    /// Training forward: y = base.forward_train(x) + Σ scale · (dropout(x) Aᵀ) Bᵀ over the
    /// attached, unmerged adapters (see `set_dropout`). Without dropout it equals `forward`.
    void forward_train(float* y /*[T, out]*/, const float* x /*[T, in]*/, std::int64_t T)
        requires TrainableLinear<Base>
    {
        base_.forward_train(y, x, T);
        for (auto& f : factors_) {
            if (!f.active()) continue;
            const std::int64_t r = f.A.shape[0];
            const float* xin = dropped_input(f, x, T);
            float* z = scratch(0, T * r);
            scaled_a_product(f, z, xin, T);
            visit_weight(f.B, [&](const auto* b) {
                ops::matmul_wt(backend_type{}, y, z, b, T, r, out_features(), /*accumulate=*/true);
            });
        }
    }

    /// Backward: dx = base.backward(dy) + Σ scale · mask ∘ ((dy B) A), and for every attached,
    /// unmerged adapter dB += scale · dyᵀ (dropout(x) Aᵀ), dA += scale · (dy B)ᵀ dropout(x)
    /// (added into `grads()`). Merged adapters are part of the frozen base: no gradient.
    /// \pre x is the input of the matching `forward_train` (same dropout seed); dx does not
    ///      overlap dy or x.
    void backward(float* dx /*[T, in]*/, const float* dy /*[T, out]*/, const float* x /*[T, in]*/, std::int64_t T)
        requires TrainableLinear<Base>
    {
        base_.backward(dx, dy, x, T);
        const std::int64_t n_in = in_features(), n_out = out_features();
        for (auto& f : factors_) {
            if (f.merged) continue;
            const std::int64_t r = f.A.shape[0];
            LoraGrads& g = grads_of(f);
            const float s = f.scale();
            if (s == 0.0f) continue;
            const float* xin = dropped_input(f, x, T);
            float* z = scratch(0, T * r);
            float* dz = scratch(1, T * r);
            // z = s · dropout(x) Aᵀ; dB += dyᵀ z
            scaled_a_product(f, z, xin, T);
            ops::matmul_at_b(backend_type{}, g.B.data(), dy, z, T, n_out, r, /*accumulate=*/true);
            // dz = s · dy B; dA += dzᵀ dropout(x)
            visit_weight(f.B, [&](const auto* b) { ops::matmul_w(backend_type{}, dz, dy, b, T, n_out, r); });
            ops::scale_inplace(backend_type{}, dz, s, T * r);
            ops::matmul_at_b(backend_type{}, g.A.data(), dz, xin, T, r, n_in, /*accumulate=*/true);
            // dx += mask ∘ (dz A) / (1 - p)
            if (dropout_p_ == 0.0f) {
                visit_weight(f.A, [&](const auto* a) {
                    ops::matmul_w(backend_type{}, dx, dz, a, T, r, n_in, /*accumulate=*/true);
                });
            } else {
                float* t = scratch(2, T * n_in);  // the dropped input is no longer needed
                visit_weight(f.A, [&](const auto* a) { ops::matmul_w(backend_type{}, t, dz, a, T, r, n_in); });
                ops::dropout(backend_type{}, dx, t, T * n_in, dropout_p_, mask_seed(f.adapter), /*accumulate=*/true);
            }
        }
    }

    /// The gradient buffers, one per adapter that went through `backward` since the last
    /// `zero_grad` (in the order they were first needed).
    const std::vector<LoraGrads>& grads() const noexcept { return grads_; }
    /// The gradients of adapter `name`, or nullptr when it has none.
    const LoraGrads* grad(const std::string& name) const {
        for (const auto& g : grads_)
            if (g.adapter == name) return &g;
        return nullptr;
    }
    /// Mutable gradients of adapter `name` (e.g. for clipping), or nullptr when it has none.
    LoraGrads* grad(const std::string& name) {
        for (auto& g : grads_)
            if (g.adapter == name) return &g;
        return nullptr;
    }
    /// Sets every gradient buffer to zero (keeping the allocations).
    void zero_grad() {
        for (auto& g : grads_) {
            std::fill(g.A.data(), g.A.data() + g.A.size(), 0.0f);
            std::fill(g.B.data(), g.B.data() + g.B.size(), 0.0f);
        }
    }

private:
    /// At most one active adapter, with a bf16 B (what the fused forms can carry).
    bool fusable() const {
        int active = 0;
        for (const auto& f : factors_) {
            if (!f.active()) continue;
            if (f.B.dtype != DType::BF16 || ++active > 1) return false;
        }
        return true;
    }
    /// The active adapter, or null.
    const LoraFactors* active_adapter() const {
        for (const auto& f : factors_)
            if (f.active()) return &f;
        return nullptr;
    }
    /// The base's LoRA terms of the active adapters of N layers that share x (z = scale · x Aᵀ
    /// into each layer's tmp_): the A products in one grouped call (`ops::matmul_wt_scaled_group`:
    /// one launch on CUDA) when they are all bf16, else one product per layer.
    template <class Term, std::size_t N>
    static void fused_terms(Lora* const (&layers)[N], const float* x, std::int64_t T, Term (&terms)[N]) {
        ops::ScaledProduct p[N];
        float* zs[N]{};
        int n = 0;
        bool grouped = true;
        for (std::size_t i = 0; i < N; ++i) {
            terms[i] = Term{};
            const LoraFactors* f = layers[i]->active_adapter();
            if (!f) continue;
            const std::int64_t r = f->A.shape[0];
            float* z = zs[i] = BackendMemory<backend_type>::ensure(layers[i]->tmp_, T * r);
            terms[i] = Term{f->B.template as<bf16>(), z, r};
            if (f->A.dtype == DType::BF16)
                p[n++] = ops::ScaledProduct{z, f->A.template as<bf16>(), r, f->scale()};
            else
                grouped = false;
        }
        if (grouped) {
            if (n > 0) ops::matmul_wt_scaled_group(backend_type{}, x, T, layers[0]->in_features(), p, n);
            return;
        }
        for (std::size_t i = 0; i < N; ++i)
            if (const LoraFactors* f = layers[i]->active_adapter())
                layers[i]->scaled_a_product(*f, zs[i], x, T);
    }
    /// z [T, r] = scale · x Aᵀ (the scale inside the product's own pass on CUDA).
    void scaled_a_product(const LoraFactors& f, float* z, const float* x, std::int64_t T) const {
        visit_weight(f.A, [&](const auto* a) {
            ops::matmul_wt_scaled(backend_type{}, z, x, a, T, in_features(), f.A.shape[0], f.scale());
        });
    }

    MergeReport fold(const std::string& name, float sign, bool merging) {
        static_assert(MergeableLinear<Base>, "Lora::merge needs a base layer with add_delta (DenseLinear, QuantizedLinear)");
        auto* f = find(name);
        if (!f) throw ArgumentError("adapter \"" + name + "\" is not attached to " + module_);
        if (f->merged == merging) return {};
        Tensor<float> d = delta(name);
        MergeReport rep;
        for (std::int64_t i = 0; i < d.size(); ++i) rep.max_abs_change = std::max<double>(rep.max_abs_change, std::fabs(d[i]));
        rep.max_abs_error = base_.add_delta(d.data(), sign);
        f->merged = merging;
        return rep;
    }
    LoraFactors* find(const std::string& name) {
        for (auto& f : factors_)
            if (f.adapter == name) return &f;
        return nullptr;
    }
    const LoraFactors* find(const std::string& name) const {
        for (const auto& f : factors_)
            if (f.adapter == name) return &f;
        return nullptr;
    }
    static Weight to_weight(const io::TensorInfo& t, const io::PeftAdapter& adapter) {
        Weight w;
        w.name = t.name;
        w.shape = t.shape;
        if (t.dtype == DType::F16) {
            Tensor<float> f(t.shape);
            for (std::int64_t i = 0; i < f.size(); ++i) f[i] = load_as_f32(t.data, DType::F16, static_cast<std::size_t>(i));
            return Weight::owned(std::move(f), t.name);
        }
        w.data = t.data;
        w.dtype = t.dtype;
        w.owner = std::make_shared<io::PeftAdapter>(adapter);  // keeps the mapping alive
        return w;
    }

    // The gradient buffers of `f`, created (zero) on first use; reallocated if its shapes changed.
    LoraGrads& grads_of(const LoraFactors& f) {
        LoraGrads* g = grad(f.adapter);
        if (!g) {
            grads_.push_back(LoraGrads{f.adapter, Tensor<float>(f.A.shape), Tensor<float>(f.B.shape)});
            return grads_.back();
        }
        if (g->A.shape() != f.A.shape) g->A = Tensor<float>(f.A.shape);
        if (g->B.shape() != f.B.shape) g->B = Tensor<float>(f.B.shape);
        return *g;
    }
    // Seed of the dropout mask of adapter `adapter` in this module.
    std::uint64_t mask_seed(const std::string& adapter) const noexcept {
        return detail::lora_mix64(dropout_seed_ ^ detail::lora_mix64(detail::lora_hash(module_) ^
                                                                      detail::lora_mix64(detail::lora_hash(adapter))));
    }
    // Per-thread training scratch shared by every Lora layer (layers run one at a time), so that
    // a model's LoRA layers hold no activation buffers of their own: slot 0 z [T, r], 1 dz [T, r],
    // 2 the dropped input [T, in].
    static float* scratch(int slot, std::int64_t n) {
        static thread_local Tensor<float> bufs[3];
        Tensor<float>& b = bufs[slot];
        if (b.size() < n) b = Tensor<float>({n});
        return b.data();
    }
    // x itself without dropout; otherwise dropout(x) in scratch slot 2.
    const float* dropped_input(const LoraFactors& f, const float* x, std::int64_t T) {
        if (dropout_p_ == 0.0f) return x;
        const std::int64_t n = T * in_features();
        float* xd = scratch(2, n);
        ops::dropout(backend_type{}, xd, x, n, dropout_p_, mask_seed(f.adapter));
        return xd;
    }

    Base base_;
    std::string module_;
    std::vector<LoraFactors> factors_;
    Buffer<backend_type, float> tmp_;
    std::vector<LoraGrads> grads_;
    float dropout_p_ = 0.0f;
    std::uint64_t dropout_seed_ = 0;
};

}  // namespace limarp
