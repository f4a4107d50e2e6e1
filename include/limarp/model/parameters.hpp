#pragma once
/// \file parameters.hpp
/// \brief Full-parameter training helpers for models built from the trained layers of
/// layers/trainable.hpp: `for_each_parameter` (every `Param` of the model, for the optimizer),
/// `zero_grads`, `parameter_count`, and `save_model` (a Hugging Face model folder:
/// model.safetensors with MistralForCausalLM's tensor names + config.json).

#include <cstdint>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <type_traits>

#include "limarp/core/dtype.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/hf_config.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/trainable.hpp"
#include "limarp/model/adapters.hpp"

namespace limarp {

/// \cond
namespace detail {
template <class L, class F>
void visit_params_of(L& layer, F& f) {
    if constexpr (requires { layer.for_each_param(f); }) layer.for_each_param(f);
}
}  // namespace detail
/// \endcond

/// Calls `f(Param&)` on every trained tensor of `model`: the embedding table, each block's norms
/// and projections (q, k, v, o, gate, up, down), the final norm and the lm_head, for the layers
/// that train their own weights (`FullLinear`, `FullRmsNorm`, `FullEmbedding`; frozen layers
/// and LoRA wrappers are skipped).
template <class Model, class F>
void for_each_parameter(Model& model, F&& f) {
    detail::visit_params_of(model.embedding(), f);
    for (auto& b : model.blocks()) {
        detail::visit_params_of(b.input_norm(), f);
        auto& at = b.attention();
        detail::visit_params_of(at.q_proj(), f);
        detail::visit_params_of(at.k_proj(), f);
        detail::visit_params_of(at.v_proj(), f);
        detail::visit_params_of(at.o_proj(), f);
        detail::visit_params_of(b.post_attention_norm(), f);
        auto& m = b.mlp();
        detail::visit_params_of(m.gate(), f);
        detail::visit_params_of(m.up(), f);
        detail::visit_params_of(m.down(), f);
    }
    detail::visit_params_of(model.final_norm(), f);
    detail::visit_params_of(model.lm_head(), f);
}

/// Zeroes the gradient of every trained tensor.
template <class Model>
void zero_grads(Model& model) {
    for_each_parameter(model, [](Param& p) { p.zero_grad(); });
}

/// Number of trained values.
template <class Model>
std::int64_t parameter_count(Model& model) {
    std::int64_t n = 0;
    for_each_parameter(model, [&](Param& p) { n += p.value.size(); });
    return n;
}

/// A `LoadContext` of initial values for a model trained from scratch, as Hugging Face
/// initialises MistralForCausalLM: every 2-D weight (projections, embedding table, lm_head)
/// drawn from N(0, std²) (initializer_range, 0.02 by default), every norm weight 1. The values
/// of a tensor depend only on `seed` and its name.
inline LoadContext random_init_context(std::uint64_t seed, float std = 0.02f) {
    return LoadContext(
        [seed, std](const std::string& name, const Shape& shape) {
            Tensor<float> t(shape);
            if (shape.size() == 1) {
                std::fill(t.data(), t.data() + t.size(), 1.0f);
            } else {
                std::mt19937_64 g(seed ^ (std::hash<std::string>{}(name) * 0x9E3779B97F4A7C15ull));
                std::normal_distribution<float> n(0.0f, std);
                for (std::int64_t i = 0; i < t.size(); ++i) t[i] = n(g);
            }
            return Weight::owned(std::move(t), name);
        },
        [](const std::string&) { return false; });
}

/// Writes `model`'s trained tensors as a Hugging Face model folder `dir`: model.safetensors
/// (dtype F32 or BF16, round-to-nearest-even; metadata format=pt) and config.json from
/// `model.config()` with torch_dtype set to the stored dtype. Both files are written atomically (temp file + rename).
/// \throws ArgumentError for another dtype; IoError when a file cannot be written.
template <class Model>
void save_model(Model& model, const std::filesystem::path& dir, DType dtype = DType::F32) {
    if (dtype != DType::F32 && dtype != DType::BF16) throw ArgumentError("save_model: dtype must be f32 or bf16");
    std::filesystem::create_directories(dir);
    io::SafeTensorsWriter w;
    w.set_metadata("format", "pt");
    for_each_parameter(model, [&](Param& p) {
        if (dtype == DType::F32) {
            w.add(p.name, p.value);
        } else {
            Tensor<bf16> t(p.value.shape());
            for (std::int64_t i = 0; i < t.size(); ++i) t[i].bits = f32_to_bf16(p.value[i]);
            w.add(p.name, t);
        }
    });
    w.write(dir / "model.safetensors");
    MistralConfig cfg = model.config();
    cfg.torch_dtype = dtype == DType::F32 ? "float32" : "bfloat16";
    io::write_hf_config(dir / "config.json", cfg);
}

}  // namespace limarp
