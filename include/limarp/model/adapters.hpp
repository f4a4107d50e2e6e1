#pragma once
/// \file adapters.hpp
/// \brief Model-wide LoRA management: attach, detach, rescale, merge and unmerge an adapter on
/// every projection of a model built with `Lora<...>` projections, at run time (hot swap).

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <type_traits>

#include "limarp/io/peft_adapter.hpp"
#include "limarp/layers/lora.hpp"

namespace limarp {

/// \cond
namespace detail {
template <class T> struct is_lora : std::false_type {};
template <class B> struct is_lora<Lora<B>> : std::true_type {};
}  // namespace detail
/// \endcond

/// True when `P` is a `Lora<...>` layer.
template <class P>
inline constexpr bool is_lora_v = detail::is_lora<P>::value;

/// Calls `f(proj)` on the seven projections of every block (q, k, v, o, gate, up, down).
template <class Model, class F>
void for_each_projection(Model& model, F&& f) {
    for (auto& b : model.blocks()) {
        auto& at = b.attention();
        f(at.q_proj());
        f(at.k_proj());
        f(at.v_proj());
        f(at.o_proj());
        auto& m = b.mlp();
        f(m.gate());
        f(m.up());
        f(m.down());
    }
}

/// Checks that every module `adapter`'s file holds factors for is a projection of `model` to
/// which the adapter is attached (a file written for another model is refused, not half used).
/// \throws FormatError naming the file and the module otherwise.
template <class Model>
void check_adapter_modules(Model& model, const io::PeftAdapter& adapter) {
    std::set<std::string> used;
    for_each_projection(model, [&](auto& p) {
        for (const auto& f : p.adapters())
            if (f.adapter == adapter.name()) used.insert(p.module());
    });
    for (const auto& m : adapter.modules_in_file())
        if (!used.count(m))
            throw FormatError(adapter.file().file() + ": factors for " + m + ", which is not a projection of this model");
}

/// Attaches `adapter` with multiplier `scale` to every targeted projection; returns how many.
/// \throws FormatError when the adapter holds factors for a module the model does not have,
///         ShapeError naming the tensor when a factor does not fit.
template <class Model>
std::int64_t attach_adapter(Model& model, const io::PeftAdapter& adapter, float scale = 1.0f) {
    using P = typename Model::block_type::proj_type;
    static_assert(is_lora_v<P>, "attach_adapter: build the model with Lora<...> projections, e.g. "
                                "MistralModel<Cpu<>, MistralBlock<Cpu<>, Lora<DenseLinear<Cpu<>>>>>");
    std::int64_t n = 0;
    for_each_projection(model, [&](P& p) {
        for (const auto& f : p.adapters())
            if (f.adapter == adapter.name())
                throw ArgumentError("adapter \"" + adapter.name() + "\" is already attached");
    });
    try {
        for_each_projection(model, [&](P& p) {
            if (p.attach(adapter, scale)) ++n;
        });
        check_adapter_modules(model, adapter);
    } catch (...) {  // leave the model as it was
        for_each_projection(model, [&](P& p) { p.detach(adapter.name()); });
        throw;
    }
    return n;
}

/// Detaches adapter `name` everywhere; returns how many projections had it.
template <class Model>
std::int64_t detach_adapter(Model& model, const std::string& name) {
    std::int64_t n = 0;
    for_each_projection(model, [&](auto& p) { n += p.detach(name) ? 1 : 0; });
    return n;
}

/// Sets the run-time multiplier of adapter `name` everywhere.
template <class Model>
std::int64_t set_adapter_scale(Model& model, const std::string& name, float scale) {
    std::int64_t n = 0;
    for_each_projection(model, [&](auto& p) { n += p.set_scale(name, scale) ? 1 : 0; });
    return n;
}

/// Merges (or with `merge = false` unmerges) adapter `name` into every base weight; returns the
/// largest weight change and the largest rounding error over the model.
template <class Model>
MergeReport merge_adapter(Model& model, const std::string& name, bool merge = true) {
    MergeReport total;
    for_each_projection(model, [&](auto& p) {
        for (const auto& f : p.adapters())
            if (f.adapter == name) {
                const MergeReport r = merge ? p.merge(name) : p.unmerge(name);
                total.max_abs_change = std::max(total.max_abs_change, r.max_abs_change);
                total.max_abs_error = std::max(total.max_abs_error, r.max_abs_error);
                break;
            }
    });
    return total;
}

}  // namespace limarp
