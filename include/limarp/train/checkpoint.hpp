#pragma once
/// \file checkpoint.hpp
/// \brief Training checkpoints: the trainable LoRA factors (`LoraParameters`), written as a
/// Hugging Face PEFT adapter folder that `PeftModel.from_pretrained` and io::PeftAdapter load,
/// plus the optimizer and run state for a bit-for-bit `--resume`; every write is crash-safe.
///
/// A checkpoint folder holds:
///  - `adapter_config.json`: PEFT's LoraConfig (peft_type LORA, task_type CAUSAL_LM, r,
///    lora_alpha, lora_dropout, target_modules, use_rslora, bias none, fan_in_fan_out false,
///    inference_mode true, base_model_name_or_path, ...);
///  - `adapter_model.safetensors`: `base_model.model.MODULE.lora_A.weight` [r, in] and
///    `base_model.model.MODULE.lora_B.weight` [out, r], F32 (the master weights themselves, so
///    resuming loses no bit), metadata `format: pt` as PEFT writes it;
///  - `training_state.safetensors` (write_checkpoint() only): AdamW's m, v and step per tensor
///    (AdamW::save, prefix `adamw.`) and, as metadata `limarp.training_state`, a JSON object
///    with the TrainingState (optimizer step, schedule step, data epoch/position, dropout RNG
///    state, the trainer's extra JSON). PEFT ignores this file.
///
/// Crash safety: the files are written into a hidden sibling folder (`.NAME.tmp.*`), fsynced,
/// and the folder is renamed over the destination in one step (an atomic exchange when it
/// already exists). Killing the process at any moment leaves either the previous complete
/// checkpoint or the new complete one; leftovers of a killed write are cleaned up by the next
/// write or read of the same folder. One process writes a given folder at a time.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/detail/json.hpp"
#include "limarp/io/detail/posix_file.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/train/adamw.hpp"
#include "limarp/train/detail/fs.hpp"
#include "limarp/train/detail/random.hpp"

namespace limarp::train {

/// The trainable LoRA factors of one module, with their gradients. The trainer owns a list of
/// them (one per adapted Linear); layers read A and B and accumulate into dA and dB (`+=`).
/// dA and dB are optional: a trainer whose `Lora` layers keep their own gradient buffers builds
/// the parameters without them (`with_grads = false`) and points its `ParamSlot`s at the layers'
/// buffers, so that no second copy the size of the parameters is allocated.
struct LoraParameters {
    std::string module;  ///< base-model module path, e.g. "model.layers.0.self_attn.q_proj"
    Tensor<float> A;     ///< [r, in]
    Tensor<float> B;     ///< [out, r]
    Tensor<float> dA;    ///< [r, in] gradient of the loss w.r.t. A
    Tensor<float> dB;    ///< [out, r] gradient of the loss w.r.t. B

    LoraParameters() = default;
    /// Zero factors (and zero gradients when `with_grads`) for a module of `in` -> `out` features
    /// with rank `r`.
    /// \throws ArgumentError for non-positive sizes.
    LoraParameters(std::string module_path, std::int64_t in, std::int64_t out, std::int64_t r, bool with_grads = true)
        : module(std::move(module_path)), A({r, in}), B({out, r}) {
        if (with_grads) allocate_grads();
        if (in <= 0 || out <= 0 || r <= 0)
            throw ArgumentError("LoraParameters " + module + ": sizes must be positive (in " + std::to_string(in) +
                                ", out " + std::to_string(out) + ", r " + std::to_string(r) + ")");
    }

    /// Allocates zero dA and dB of the factors' shapes when they are absent.
    void allocate_grads() {
        if (dA.shape() != A.shape()) dA = Tensor<float>(A.shape());
        if (dB.shape() != B.shape()) dB = Tensor<float>(B.shape());
    }
    /// True when dA and dB are allocated.
    bool has_grads() const { return dA.shape() == A.shape() && dB.shape() == B.shape() && !A.shape().empty(); }

    /// Rank r.
    std::int64_t r() const { return A.dim(0); }
    /// Input features.
    std::int64_t in_features() const { return A.dim(1); }
    /// Output features.
    std::int64_t out_features() const { return B.dim(0); }

    /// PEFT's initialisation: A ~ kaiming_uniform(a = sqrt(5)), i.e. uniform in
    /// [-1/sqrt(in), 1/sqrt(in)), B = 0 (so the adapter starts as the identity). The values are
    /// drawn from `rng` in row-major order (24-bit uniform floats), not from torch's generator.
    void init_peft(std::mt19937_64& rng) {
        const float bound = 1.0f / std::sqrt(static_cast<float>(in_features()));
        for (std::int64_t i = 0; i < A.size(); ++i) A[i] = bound * (2.0f * detail::uniform_float01(rng) - 1.0f);
        std::fill(B.data(), B.data() + B.size(), 0.0f);
    }

    /// `base_model.model.MODULE.lora_A.weight` (PEFT's saved name, without the adapter name).
    std::string peft_name_A() const { return "base_model.model." + module + ".lora_A.weight"; }
    /// `base_model.model.MODULE.lora_B.weight`.
    std::string peft_name_B() const { return "base_model.model." + module + ".lora_B.weight"; }

    /// \throws ShapeError unless A is [r, in], B [out, r] and the gradients match them.
    void check() const {
        if (A.shape().size() != 2 || B.shape().size() != 2 || B.dim(1) != A.dim(0))
            throw ShapeError("LoraParameters " + module + ": A " + shape_str(A.shape()) + " and B " +
                             shape_str(B.shape()) + " are not [r, in] and [out, r]");
        const bool no_grads = dA.shape().empty() && dB.shape().empty();
        if (!no_grads && (dA.shape() != A.shape() || dB.shape() != B.shape()))
            throw ShapeError("LoraParameters " + module + ": gradients " + shape_str(dA.shape()) + ", " +
                             shape_str(dB.shape()) + " do not match A " + shape_str(A.shape()) + ", B " +
                             shape_str(B.shape()));
    }
};

/// The optimizer's view of `params`: per module `MODULE.lora_A` then `MODULE.lora_B`, with the
/// gradients dA and dB (allocated here when absent).
inline std::vector<ParamSlot> param_slots(std::span<LoraParameters> params) {
    std::vector<ParamSlot> s;
    s.reserve(params.size() * 2);
    for (auto& p : params) {
        p.check();
        p.allocate_grads();
        s.push_back({p.module + ".lora_A", p.A.data(), p.dA.data(), p.A.size()});
        s.push_back({p.module + ".lora_B", p.B.data(), p.dB.data(), p.B.size()});
    }
    return s;
}

/// What adapter_config.json says besides the tensors.
struct AdapterInfo {
    io::LoraConfig lora;                   ///< r, lora_alpha, lora_dropout, use_rslora, target_modules (or regex), patterns
    std::string base_model_name_or_path;  ///< the base model (a hub id or a folder); empty writes null
};

/// The run state saved next to the optimizer state.
struct TrainingState {
    std::int64_t step = 0;           ///< optimizer updates done
    std::int64_t schedule_step = 0;  ///< position of the LR schedule (normally == step)
    std::uint64_t epoch = 0;         ///< data: current epoch (Sampler::epoch)
    std::uint64_t position = 0;      ///< data: examples taken in that epoch (Sampler::position)
    std::string rng_state;           ///< dropout RNG (rng_state_string()), empty when unused
    nlohmann::json extra = nlohmann::json::object();  ///< trainer-defined (best eval loss, config digest, ...)

    /// Equality.
    friend bool operator==(const TrainingState&, const TrainingState&) = default;
};

/// The full state of a `std::mt19937_64` as text (the standard's stream format, exact).
inline std::string rng_state_string(const std::mt19937_64& rng) {
    std::ostringstream ss;
    ss << rng;
    return ss.str();
}

/// Restores a state written by rng_state_string(). \throws FormatError when `s` is not one.
inline void set_rng_state(std::mt19937_64& rng, const std::string& s) {
    std::istringstream ss(s);
    std::mt19937_64 r;
    ss >> r;
    if (ss.fail()) throw FormatError("RNG state is not a std::mt19937_64 state (" + std::to_string(s.size()) + " characters)");
    rng = r;
}

/// adapter_config.json's text for `info`, with every field PEFT's LoraConfig writes that
/// limarp has a value for (lora_alpha as an integer when it is one, as PEFT).
inline std::string adapter_config_json(const AdapterInfo& info) {
    const auto& c = info.lora;
    nlohmann::ordered_json j;
    nlohmann::ordered_json alpha_pat = nlohmann::ordered_json::object(), rank_pat = nlohmann::ordered_json::object();
    for (const auto& [k, v] : c.alpha_pattern) alpha_pat[k] = v;
    for (const auto& [k, v] : c.rank_pattern) rank_pat[k] = v;
    j["alpha_pattern"] = alpha_pat;
    j["auto_mapping"] = nullptr;
    if (info.base_model_name_or_path.empty()) j["base_model_name_or_path"] = nullptr;
    else j["base_model_name_or_path"] = info.base_model_name_or_path;
    j["bias"] = "none";
    j["fan_in_fan_out"] = false;
    j["inference_mode"] = true;
    j["init_lora_weights"] = true;
    j["layers_pattern"] = nullptr;
    j["layers_to_transform"] = nullptr;
    j["loftq_config"] = nlohmann::ordered_json::object();
    if (c.lora_alpha == std::floor(c.lora_alpha) && std::fabs(c.lora_alpha) < 1e15)
        j["lora_alpha"] = static_cast<std::int64_t>(c.lora_alpha);
    else
        j["lora_alpha"] = c.lora_alpha;
    j["lora_dropout"] = c.lora_dropout;
    j["megatron_config"] = nullptr;
    j["megatron_core"] = "megatron.core";
    j["modules_to_save"] = nullptr;
    j["peft_type"] = "LORA";
    j["r"] = c.r;
    j["rank_pattern"] = rank_pat;
    j["revision"] = nullptr;
    if (c.target_regex) j["target_modules"] = *c.target_regex;
    else j["target_modules"] = c.target_modules;
    j["task_type"] = "CAUSAL_LM";
    j["use_dora"] = false;
    j["use_rslora"] = c.use_rslora;
    return j.dump(2) + "\n";
}

/// \cond
namespace detail {
inline void check_adapter(std::span<const LoraParameters> params, const AdapterInfo& info) {
    if (params.empty()) throw ArgumentError("checkpoint: no LoRA parameters to write");
    if (info.lora.target_modules.empty() && !info.lora.target_regex)
        throw ArgumentError("checkpoint: adapter config has no target_modules");
    std::vector<std::string> seen;
    for (const auto& p : params) {
        p.check();
        if (p.module.empty()) throw ArgumentError("checkpoint: a LoraParameters has an empty module name");
        if (std::find(seen.begin(), seen.end(), p.module) != seen.end())
            throw ArgumentError("checkpoint: module " + p.module + " is listed twice");
        seen.push_back(p.module);
        if (info.lora.rank_pattern.empty() && p.r() != info.lora.r)
            throw ArgumentError("checkpoint: module " + p.module + " has rank " + std::to_string(p.r()) +
                                " but the adapter config says r = " + std::to_string(info.lora.r));
    }
}

inline void write_adapter_files(const std::filesystem::path& dir, std::span<const LoraParameters> params,
                                const AdapterInfo& info) {
    const std::string cfg = adapter_config_json(info);
    io::detail::write_file_atomic(dir / "adapter_config.json", cfg.data(), cfg.size());
    io::SafeTensorsWriter w;
    w.set_metadata("format", "pt");
    for (const auto& p : params) {
        w.add_borrowed(p.peft_name_A(), DType::F32, p.A.shape(), p.A.data(), static_cast<std::size_t>(p.A.size()) * 4);
        w.add_borrowed(p.peft_name_B(), DType::F32, p.B.shape(), p.B.data(), static_cast<std::size_t>(p.B.size()) * 4);
    }
    w.write(dir / "adapter_model.safetensors");
}

inline nlohmann::json state_to_json(const TrainingState& s) {
    return {{"format", "limarp.training_state"}, {"version", 1},
            {"step", s.step}, {"schedule_step", s.schedule_step}, {"epoch", s.epoch},
            {"position", s.position}, {"rng_state", s.rng_state}, {"extra", s.extra}};
}
}  // namespace detail
/// \endcond

/// File name of the optimizer and run state inside a checkpoint folder.
inline constexpr const char* kTrainingStateFile = "training_state.safetensors";

/// Writes a PEFT adapter folder `dir` (adapter_config.json + adapter_model.safetensors),
/// crash-safely (see the file comment); an existing folder is replaced as a whole.
/// \throws ArgumentError when a module is listed twice, its rank differs from `info.lora.r`
///         (without rank_pattern) or there is nothing to write; ShapeError for inconsistent
///         factor shapes; IoError when the files cannot be written (the old folder stays).
inline void write_peft_adapter(const std::filesystem::path& dir, std::span<const LoraParameters> params,
                               const AdapterInfo& info) {
    detail::check_adapter(params, info);
    detail::replace_dir(dir, [&](const std::filesystem::path& tmp) { detail::write_adapter_files(tmp, params, info); });
}

/// Writes a resumable checkpoint folder `dir`: the PEFT adapter files plus
/// training_state.safetensors (AdamW state and `state`), crash-safely.
/// \throws as write_peft_adapter().
inline void write_checkpoint(const std::filesystem::path& dir, std::span<const LoraParameters> params,
                             const AdapterInfo& info, const AdamW& optimizer, const TrainingState& state) {
    detail::check_adapter(params, info);
    detail::replace_dir(dir, [&](const std::filesystem::path& tmp) {
        detail::write_adapter_files(tmp, params, info);
        io::SafeTensorsWriter w;
        optimizer.save(w, "adamw.");
        w.set_metadata("limarp.training_state", detail::state_to_json(state).dump());
        w.write(tmp / kTrainingStateFile);
    });
}

/// The LoRA factors of a PEFT adapter folder as f32 LoraParameters (BF16/F16 factors are
/// widened; gradients zero), in module-name order, and its config. When `dir` is missing but
/// a complete previous version was set aside by a killed write, that version is put back first.
/// \throws IoError, FormatError, UnsupportedError as io::PeftAdapter::open; FormatError when a
///         module lacks one of its factors or their shapes disagree.
inline std::vector<LoraParameters> read_lora_parameters(const std::filesystem::path& dir, AdapterInfo* info = nullptr) {
    detail::recover_dir(dir, /*clean=*/false);
    const io::PeftAdapter a = io::PeftAdapter::open(dir);
    std::vector<LoraParameters> out;
    const auto& f = a.file();
    for (const auto& module : a.modules_in_file()) {
        const std::string na = "base_model.model." + module + ".lora_A.weight";
        const std::string nb = "base_model.model." + module + ".lora_B.weight";
        if (!f.contains(na) || !f.contains(nb))
            throw FormatError(f.file() + ": module " + module + " has only one of lora_A / lora_B");
        const auto& ta = f.get(na);
        const auto& tb = f.get(nb);
        if (ta.shape.size() != 2 || tb.shape.size() != 2 || tb.shape[1] != ta.shape[0])
            throw FormatError(f.file() + ": " + module + ": lora_A " + shape_str(ta.shape) + " and lora_B " +
                              shape_str(tb.shape) + " are not [r, in] and [out, r]");
        auto m = a.module(module, ta.shape[1], tb.shape[0]);  // validates dtype, targeting, rank
        LoraParameters p(module, ta.shape[1], tb.shape[0], ta.shape[0]);
        for (std::int64_t i = 0; i < p.A.size(); ++i) p.A[i] = load_as_f32(ta.data, ta.dtype, static_cast<std::size_t>(i));
        for (std::int64_t i = 0; i < p.B.size(); ++i) p.B[i] = load_as_f32(tb.data, tb.dtype, static_cast<std::size_t>(i));
        (void)m;
        out.push_back(std::move(p));
    }
    if (info) {
        info->lora = a.config();
        info->base_model_name_or_path.clear();
        std::ifstream cf(dir / "adapter_config.json");
        try {
            const auto j = nlohmann::json::parse(cf);
            if (auto it = j.find("base_model_name_or_path"); it != j.end() && it->is_string())
                info->base_model_name_or_path = it->get<std::string>();
        } catch (const nlohmann::json::exception&) {
        }
    }
    return out;
}

/// Reads a checkpoint written by write_checkpoint(): fills `params` (matched by module name;
/// every module of `params` must be in the checkpoint with the same shapes, and no other),
/// restores `optimizer` and returns the run state. Gradients are zeroed.
/// \throws IoError when a file is missing; FormatError / ShapeError naming the file and module
///         when the checkpoint does not match `params`.
inline TrainingState read_checkpoint(const std::filesystem::path& dir, std::span<LoraParameters> params,
                                     AdamW& optimizer, AdapterInfo* info = nullptr) {
    auto loaded = read_lora_parameters(dir, info);
    if (loaded.size() != params.size())
        throw FormatError(dir.string() + ": holds " + std::to_string(loaded.size()) + " LoRA modules, the model has " +
                          std::to_string(params.size()));
    for (auto& p : params) {
        auto it = std::find_if(loaded.begin(), loaded.end(), [&](const LoraParameters& q) { return q.module == p.module; });
        if (it == loaded.end()) throw FormatError(dir.string() + ": has no LoRA factors for module " + p.module);
        if (it->A.shape() != p.A.shape() || it->B.shape() != p.B.shape())
            throw ShapeError(dir.string() + ": module " + p.module + ": A " + shape_str(it->A.shape()) + ", B " +
                             shape_str(it->B.shape()) + " in the checkpoint, the model has A " + shape_str(p.A.shape()) +
                             ", B " + shape_str(p.B.shape()));
        const bool grads = p.has_grads();
        p.A = std::move(it->A);
        p.B = std::move(it->B);
        p.dA = Tensor<float>();
        p.dB = Tensor<float>();
        if (grads) p.allocate_grads();
    }
    const auto path = dir / kTrainingStateFile;
    if (!std::filesystem::exists(path))
        throw IoError(path.string() + ": missing (the folder is an adapter, not a resumable checkpoint)");
    const auto f = io::SafeTensorsFile::open(path);
    optimizer.load(f, "adamw.");
    const auto it = f.metadata().find("limarp.training_state");
    if (it == f.metadata().end()) throw FormatError(path.string() + ": metadata limarp.training_state missing");
    TrainingState s;
    try {
        const auto j = io::detail::parse_json_strict(it->second, path.string() + ": limarp.training_state");
        if (j.at("version").get<int>() != 1)
            throw FormatError(path.string() + ": training state version " + j.at("version").dump() + " is not supported");
        s.step = j.at("step").get<std::int64_t>();
        s.schedule_step = j.at("schedule_step").get<std::int64_t>();
        s.epoch = j.at("epoch").get<std::uint64_t>();
        s.position = j.at("position").get<std::uint64_t>();
        s.rng_state = j.at("rng_state").get<std::string>();
        s.extra = j.at("extra");
    } catch (const nlohmann::json::exception& e) {
        throw FormatError(path.string() + ": limarp.training_state is malformed: " + e.what());
    }
    return s;
}

/// `output_dir/checkpoint-STEP` (the Hugging Face Trainer's naming).
inline std::filesystem::path checkpoint_dir(const std::filesystem::path& output_dir, std::int64_t step) {
    return output_dir / ("checkpoint-" + std::to_string(step));
}

/// \cond
namespace detail {
inline std::optional<std::int64_t> checkpoint_step(const std::filesystem::path& p) {
    const std::string n = p.filename().string();
    if (n.rfind("checkpoint-", 0) != 0 || n.size() == 11) return std::nullopt;
    std::int64_t v = 0;
    for (std::size_t i = 11; i < n.size(); ++i) {
        if (n[i] < '0' || n[i] > '9' || v > (std::numeric_limits<std::int64_t>::max() - 9) / 10) return std::nullopt;
        v = v * 10 + (n[i] - '0');
    }
    return v;
}
/// checkpoint-N folders of `output_dir` (after crash recovery), sorted by N.
inline std::vector<std::pair<std::int64_t, std::filesystem::path>> list_checkpoints(const std::filesystem::path& output_dir) {
    std::vector<std::pair<std::int64_t, std::filesystem::path>> r;
    std::error_code ec;
    if (!std::filesystem::is_directory(output_dir, ec)) return r;
    // A write killed between the two renames of the fallback path leaves only `.checkpoint-N.old.*`.
    for (const auto& e : std::filesystem::directory_iterator(output_dir, ec)) {
        const std::string n = e.path().filename().string();
        if (n.rfind(".checkpoint-", 0) == 0) {
            const auto dot = n.find('.', 1);
            if (dot != std::string::npos) recover_dir(output_dir / n.substr(1, dot - 1));
        }
    }
    for (const auto& e : std::filesystem::directory_iterator(output_dir, ec))
        if (e.is_directory())
            if (auto s = checkpoint_step(e.path())) r.emplace_back(*s, e.path());
    std::sort(r.begin(), r.end());
    return r;
}
}  // namespace detail
/// \endcond

/// The `checkpoint-N` folder of `output_dir` with the largest N that holds a training state
/// (so `--resume` can continue from it), or nullopt. Repairs leftovers of killed writes first.
inline std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& output_dir) {
    auto all = detail::list_checkpoints(output_dir);
    for (auto it = all.rbegin(); it != all.rend(); ++it)
        if (std::filesystem::exists(it->second / kTrainingStateFile) &&
            std::filesystem::exists(it->second / "adapter_model.safetensors"))
            return it->second;
    return std::nullopt;
}

/// Deletes the oldest `checkpoint-N` folders of `output_dir` so that at most `keep` remain
/// (Trainer's save_total_limit; `keep <= 0` keeps all). Each is renamed away before deletion,
/// so an interrupted prune never leaves a half-deleted folder that looks like a checkpoint.
inline void prune_checkpoints(const std::filesystem::path& output_dir, std::int64_t keep) {
    if (keep <= 0) return;
    auto all = detail::list_checkpoints(output_dir);
    const auto n = static_cast<std::int64_t>(all.size());
    for (std::int64_t i = 0; i + keep < n; ++i) detail::remove_dir(all[static_cast<std::size_t>(i)].second);
}

}  // namespace limarp::train
