#pragma once
/// \file grad.hpp
/// \brief Model-level causal-LM loss and LoRA gradients with gradient checkpointing:
/// `loss_and_lora_grads` (the training step's forward + backward), `lm_loss` (forward only),
/// `zero_lora_grads`, `set_lora_dropout`, and the gradients under PEFT's tensor names
/// (`lora_grad_tensors`, `save_lora_grads`).
///
/// Loss: Hugging Face's causal-LM loss, the mean over the counted targets of
/// -log softmax(logits[t])[ids[t + 1]], t = 0 .. T-2 (a `loss_mask` drops targets, as labels
/// -100 do). Memory: one checkpoint per block (its input, [T, d_model]) plus one block's working
/// set (`MistralBlock::Saved`); logits are computed `loss_chunk` rows at a time, never [T, vocab].
/// Backward: each block's forward is recomputed from its checkpoint (the last block's is still
/// in the working set), then run backward; LoRA dA, dB are added (+=) into each `Lora` layer's
/// gradient buffers.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "limarp/backend/cpu/loss.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/concepts.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/model/adapters.hpp"

namespace limarp::train {

/// Options of `loss_and_lora_grads` / `lm_loss`.
struct LossOptions {
    /// [T] or empty: loss_mask[t] != 0 when token t counts as a prediction target (t >= 1;
    /// entry 0 is ignored). Empty: every token 1..T-1 counts (train_on_inputs: true).
    std::span<const std::uint8_t> loss_mask{};
    float lora_dropout = 0.0f;     ///< PEFT lora_dropout applied in training (0: eval mode)
    std::uint64_t dropout_seed = 0;  ///< seed of this step's dropout masks
    float grad_scale = 1.0f;       ///< gradients are those of grad_scale x the mean loss (e.g. 1 / accumulation steps)
    std::int64_t loss_chunk = 256; ///< rows of logits computed at once
};

/// Result of a loss evaluation.
struct LossResult {
    double loss = 0.0;            ///< mean cross-entropy over the counted targets (0 when there are none)
    double loss_sum = 0.0;        ///< sum of the counted targets' cross-entropies
    std::int64_t n_targets = 0;   ///< number of counted targets
};

/// True when `Model` is built with trainable `Lora<...>` projections (a base with
/// `forward_train` / `backward`, e.g. `Lora<DenseLinear<Cpu<>>>`) on a host backend (training
/// runs on the CPU backend).
template <class Model>
inline constexpr bool supports_lora_grads_v = Model::backend_type::host_memory &&
    is_lora_v<typename Model::block_type::proj_type> && TrainableLinear<typename Model::block_type::proj_type>;

/// True when `loss_and_grads` can train `Model`: its projections are `TrainableLinear` (LoRA
/// wrappers over a trainable base, or layers that train their own weights such as `FullLinear`).
template <class Model>
inline constexpr bool supports_training_v =
    Model::backend_type::host_memory && TrainableLinear<typename Model::block_type::proj_type>;

/// Buffers of `loss_and_lora_grads`, reusable across calls (one per model type): the block
/// checkpoints [n_layers, T, d_model], the residual stream and its gradient, and one block's
/// working set.
template <class Model>
struct LossWorkspace {
    Tensor<float> checkpoints;              ///< [n_layers, T, d_model] input of every block
    Tensor<float> x;                        ///< [T, d_model] residual stream
    Tensor<float> h;                        ///< [T, d_model] final-norm output
    Tensor<float> dx;                       ///< [T, d_model] gradient of the residual stream
    Tensor<float> dh;                       ///< [T, d_model] gradient of the final-norm output
    std::vector<std::int64_t> positions;    ///< [T] 0 .. T-1
    std::vector<std::int32_t> targets;      ///< [T - 1] next-token targets, -1 when not counted
    typename Model::block_type::Saved saved;  ///< one block's working set
};

/// \cond
namespace detail {

inline void ensure(Tensor<float>& t, std::int64_t rows, std::int64_t cols) {
    if (t.size() < rows * cols) t = Tensor<float>({rows, cols});
}

/// Targets of rows 0..T-2 (-1 where not counted); returns how many count.
inline std::int64_t next_token_targets(std::vector<std::int32_t>& targets, std::span<const std::int32_t> ids,
                                       std::span<const std::uint8_t> mask) {
    const std::int64_t T = static_cast<std::int64_t>(ids.size());
    if (!mask.empty() && static_cast<std::int64_t>(mask.size()) != T)
        throw ArgumentError("loss_mask has " + std::to_string(mask.size()) + " entries for " + std::to_string(T) +
                            " tokens");
    targets.assign(static_cast<std::size_t>(std::max<std::int64_t>(0, T - 1)), -1);
    std::int64_t n = 0;
    for (std::int64_t t = 0; t + 1 < T; ++t)
        if (mask.empty() || mask[static_cast<std::size_t>(t + 1)]) {
            targets[static_cast<std::size_t>(t)] = ids[static_cast<std::size_t>(t + 1)];
            ++n;
        }
    return n;
}

/// Runs the embedding and every block's training forward, keeping each block's input in
/// ws.checkpoints when `keep` is true; leaves the last block's working set in ws.saved and the
/// final-norm output in ws.h.
template <class Model>
void forward_blocks(Model& model, std::span<const std::int32_t> ids, LossWorkspace<Model>& ws, bool keep) {
    const std::int64_t T = static_cast<std::int64_t>(ids.size()), d = model.config().d_model;
    const std::int64_t L = static_cast<std::int64_t>(model.blocks().size());
    ensure(ws.x, T, d);
    ensure(ws.h, T, d);
    if (keep && ws.checkpoints.size() < L * T * d) ws.checkpoints = Tensor<float>({L, T, d});
    ws.positions.resize(static_cast<std::size_t>(T));
    std::iota(ws.positions.begin(), ws.positions.end(), std::int64_t{0});
    model.embedding().forward(ws.x.data(), ids.data(), T);
    for (std::int64_t l = 0; l < L; ++l) {
        if (keep) std::copy_n(ws.x.data(), T * d, ws.checkpoints.data() + l * T * d);
        model.blocks()[static_cast<std::size_t>(l)].forward_train(ws.x.data(), T, ws.positions.data(), ws.saved);
    }
    model.final_norm().forward(ws.h.data(), ws.x.data(), T);
}

template <class Model>
void check_model() {
    static_assert(supports_training_v<Model>,
                  "loss_and_grads: build the model with trainable projections, e.g. "
                  "MistralModel<Cpu<>, MistralBlock<Cpu<>, Lora<DenseLinear<Cpu<>>>>> (the base must provide "
                  "forward_train/backward: see the TrainableLinear concept) or FullLinear (layers/trainable.hpp)");
}

/// The lm_head's weight gradient buffer when the head trains its weight (`param()`), else null.
template <class Head>
float* head_grad(Head& head) {
    if constexpr (requires { head.param().grad.data(); })
        return head.param().grad.data();
    else
        return nullptr;
}

}  // namespace detail
/// \endcond

/// Sets LoRA dropout probability `p` and the seed of the masks on every projection of `model`
/// (each module and adapter derives its own mask from `seed`).
template <class Model>
void set_lora_dropout(Model& model, float p, std::uint64_t seed) {
    if constexpr (is_lora_v<typename Model::block_type::proj_type>)
        for_each_projection(model, [&](auto& proj) { proj.set_dropout(p, seed); });
}

/// Zeroes the LoRA gradient buffers of every projection.
template <class Model>
void zero_lora_grads(Model& model) {
    if constexpr (is_lora_v<typename Model::block_type::proj_type>)
        for_each_projection(model, [&](auto& proj) { proj.zero_grad(); });
}

/// The causal-LM loss of `ids` and its gradient with respect to every attached, unmerged LoRA
/// factor, added (+=) into the `Lora` layers' gradient buffers (see `zero_lora_grads`,
/// `lora_grad_tensors`). Gradient checkpointing per block (see the file comment); the base and
/// the norms are frozen. With `opt.lora_dropout` > 0 the adapters see PEFT's dropout with masks
/// from `opt.dropout_seed`; dropout is off again on return.
///
/// \param model the model (built with `Lora<...>` projections whose base is trainable)
/// \param ids   [T] token ids
/// \param opt   loss mask, dropout, gradient scale, logits chunk
/// \param ws    reusable buffers
/// \return      the mean loss over the counted targets (and the sum and count); with no counted
///              target the loss is 0 and no gradient is added
/// \throws ArgumentError when an id is outside the vocabulary or the mask has the wrong length.
template <class Model>
LossResult loss_and_lora_grads(Model& model, std::span<const std::int32_t> ids, const LossOptions& opt,
                               LossWorkspace<Model>& ws) {
    detail::check_model<Model>();
    using B = typename Model::backend_type;
    const std::int64_t T = static_cast<std::int64_t>(ids.size()), d = model.config().d_model;
    const std::int64_t vocab = model.config().vocab;
    const std::int64_t L = static_cast<std::int64_t>(model.blocks().size());
    LossResult res;
    res.n_targets = detail::next_token_targets(ws.targets, ids, opt.loss_mask);
    if (res.n_targets == 0) return res;
    set_lora_dropout(model, opt.lora_dropout, opt.dropout_seed);
    struct DropoutOff {
        Model& m;
        ~DropoutOff() { set_lora_dropout(m, 0.0f, 0); }
    } off{model};

    detail::forward_blocks(model, ids, ws, /*keep=*/true);
    // Loss over rows 0..T-2 and its gradient with respect to the final-norm output.
    detail::ensure(ws.dh, T, d);
    detail::ensure(ws.dx, T, d);
    const float gscale = static_cast<float>(static_cast<double>(opt.grad_scale) / static_cast<double>(res.n_targets));
    visit_weight(model.lm_head().weight(), [&](const auto* w) {
        res.loss_sum = ops::lm_head_cross_entropy(B{}, ws.dh.data(), ws.h.data(), w, ws.targets.data(), T - 1, d, vocab,
                                                  gscale, opt.loss_chunk, nullptr, detail::head_grad(model.lm_head()));
    });
    std::fill(ws.dh.data() + (T - 1) * d, ws.dh.data() + T * d, 0.0f);  // the last token predicts nothing
    res.loss = res.loss_sum / static_cast<double>(res.n_targets);
    model.final_norm().backward(ws.dx.data(), ws.dh.data(), ws.x.data(), T);
    // Blocks in reverse; the last one's working set is still in ws.saved.
    for (std::int64_t l = L - 1; l >= 0; --l) {
        auto& block = model.blocks()[static_cast<std::size_t>(l)];
        const float* x_in = ws.checkpoints.data() + l * T * d;
        if (l != L - 1) {
            std::copy_n(x_in, T * d, ws.x.data());
            block.forward_train(ws.x.data(), T, ws.positions.data(), ws.saved);
        }
        block.backward(ws.dx.data(), x_in, T, ws.positions.data(), ws.saved);
    }
    if constexpr (requires { model.embedding().backward(ws.dx.data(), ids.data(), T); })
        model.embedding().backward(ws.dx.data(), ids.data(), T);  // a trained embedding table
    return res;
}

/// The causal-LM loss of `ids` and the gradients of every trained parameter: the LoRA factors
/// of `Lora` projections and the weights of layers that train their own (layers/trainable.hpp:
/// projections, norms, embedding table, lm_head), added (+=) into the layers' gradient buffers.
/// The same computation as `loss_and_lora_grads` (which handles both).
template <class Model>
LossResult loss_and_grads(Model& model, std::span<const std::int32_t> ids, const LossOptions& opt,
                          LossWorkspace<Model>& ws) {
    return loss_and_lora_grads(model, ids, opt, ws);
}

/// `loss_and_lora_grads` with temporary buffers.
template <class Model>
LossResult loss_and_lora_grads(Model& model, std::span<const std::int32_t> ids, const LossOptions& opt = {}) {
    LossWorkspace<Model> ws;
    return loss_and_lora_grads(model, ids, opt, ws);
}

/// The causal-LM loss of `ids` only (no gradient, no checkpoints; same kernels and chunking as
/// `loss_and_lora_grads`, dropout as in `opt`).
/// \throws ArgumentError when an id is outside the vocabulary or the mask has the wrong length.
template <class Model>
LossResult lm_loss(Model& model, std::span<const std::int32_t> ids, const LossOptions& opt = {}) {
    detail::check_model<Model>();
    using B = typename Model::backend_type;
    LossWorkspace<Model> ws;
    const std::int64_t T = static_cast<std::int64_t>(ids.size()), d = model.config().d_model;
    LossResult res;
    res.n_targets = detail::next_token_targets(ws.targets, ids, opt.loss_mask);
    if (res.n_targets == 0) return res;
    set_lora_dropout(model, opt.lora_dropout, opt.dropout_seed);
    struct DropoutOff {
        Model& m;
        ~DropoutOff() { set_lora_dropout(m, 0.0f, 0); }
    } off{model};
    detail::forward_blocks(model, ids, ws, /*keep=*/false);
    visit_weight(model.lm_head().weight(), [&](const auto* w) {
        res.loss_sum = ops::lm_head_cross_entropy(B{}, nullptr, ws.h.data(), w, ws.targets.data(), T - 1, d,
                                                  model.config().vocab, 1.0f, opt.loss_chunk);
    });
    res.loss = res.loss_sum / static_cast<double>(res.n_targets);
    return res;
}

/// PEFT's name of factor `factor` ("A" or "B") of `module`, without the adapter name:
/// "base_model.model.<module>.lora_<factor>.weight" (as in a saved adapter file).
inline std::string peft_factor_name(const std::string& module, const char* factor) {
    return "base_model.model." + module + ".lora_" + factor + ".weight";
}

/// The gradient tensors of adapter `adapter` in every projection that has them, under PEFT's
/// tensor names (`peft_factor_name`), in model order (layer, then q k v o gate up down, A then B).
/// The pointers stay valid until the model's gradients are reallocated (attach/detach).
template <class Model>
std::vector<std::pair<std::string, const Tensor<float>*>> lora_grad_tensors(Model& model, const std::string& adapter) {
    std::vector<std::pair<std::string, const Tensor<float>*>> out;
    for_each_projection(model, [&](auto& proj) {
        if (const LoraGrads* g = std::as_const(proj).grad(adapter)) {
            out.emplace_back(peft_factor_name(proj.module(), "A"), &g->A);
            out.emplace_back(peft_factor_name(proj.module(), "B"), &g->B);
        }
    });
    return out;
}

/// Writes the gradients of adapter `adapter` as an f32 safetensors file (atomically) with
/// PEFT's tensor names; returns the number of tensors written.
/// \throws IoError when the file cannot be written.
template <class Model>
std::int64_t save_lora_grads(Model& model, const std::string& adapter, const std::filesystem::path& path) {
    io::SafeTensorsWriter w;
    const auto grads = lora_grad_tensors(model, adapter);
    for (const auto& [name, t] : grads) w.add(name, *t);
    w.write(path);
    return static_cast<std::int64_t>(grads.size());
}

}  // namespace limarp::train
