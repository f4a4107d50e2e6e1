#pragma once
/// \file lora.hpp
/// \brief `Lora<Base>`: LoRA adapters around any `Linear`: y = base(x) + Σ_a scale_a · B_a (A_a x).
///
/// Several adapters can be active at once, each with its own scale; they are attached, detached
/// and rescaled at run time without reloading the base (hot swap), and can be merged into the
/// base weight (and unmerged) when the base supports `add_delta`.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
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
};

/// Statistics of a merge or unmerge.
struct MergeReport {
    double max_abs_change = 0;   ///< max |scale · B A| over the weight
    double max_abs_error = 0;    ///< max rounding error of storing W + delta in the base's format
};

/// LoRA wrapper around a `Linear` base (dense, quantized or user-defined).
template <Linear Base>
class Lora {
public:
    using backend_type = typename Base::backend_type;  ///< backend tag
    using base_type = Base;                            ///< wrapped layer type
    static_assert(is_cpu_backend_v<backend_type>, "Lora: only the Cpu backend has kernels in this build");

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
    void forward(float* y /*[T, out]*/, const float* x /*[T, in]*/, std::int64_t T) {
        base_.forward(y, x, T);
        for (auto& f : factors_) {
            if (f.merged || f.scale() == 0.0f) continue;
            const std::int64_t r = f.A.shape[0];
            if (tmp_.size() < T * r) tmp_ = Tensor<float>({T, r});
            visit_weight(f.A, [&](const auto* a) { ops::matmul_wt(backend_type{}, tmp_.data(), x, a, T, in_features(), r); });
            const float s = f.scale();
            for (std::int64_t i = 0; i < T * r; ++i) tmp_[i] *= s;
            visit_weight(f.B, [&](const auto* b) {
                ops::matmul_wt(backend_type{}, y, tmp_.data(), b, T, r, out_features(), /*accumulate=*/true);
            });
        }
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
        f.A = to_weight(m->A, adapter);
        f.B = to_weight(m->B, adapter);
        f.file_scale = static_cast<float>(m->scale);
        f.user_scale = user_scale;
        factors_.push_back(std::move(f));
        return true;
    }
    /// Detaches adapter `name` (unmerging it first if merged). Returns whether it was attached.
    bool detach(const std::string& name) {
        auto* f = find(name);
        if (!f) return false;
        if (f->merged) unmerge(name);
        factors_.erase(factors_.begin() + (f - factors_.data()));
        return true;
    }
    /// Sets the run-time multiplier of adapter `name`. \throws ArgumentError if merged.
    bool set_scale(const std::string& name, float user_scale) {
        auto* f = find(name);
        if (!f) return false;
        if (f->merged) throw ArgumentError("adapter \"" + name + "\" is merged into " + module_ + "; unmerge it first");
        f->user_scale = user_scale;
        return true;
    }

    /// The dense update scale · B A [out, in] of adapter `name` in f32.
    Tensor<float> delta(const std::string& name) const {
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

private:
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

    Base base_;
    std::string module_;
    std::vector<LoraFactors> factors_;
    Tensor<float> tmp_;
};

}  // namespace limarp
