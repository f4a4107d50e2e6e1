#pragma once
/// \file peft_adapter.hpp
/// \brief `PeftAdapter`: a Hugging Face PEFT LoRA adapter folder as written by `save_pretrained`
/// (adapter_config.json + adapter_model.safetensors).
///
/// Tensor names: `base_model.model.MODULE.lora_A.weight` [r, in] and `...lora_B.weight` [out, r],
/// where MODULE is the base model's module path, e.g. `model.layers.7.self_attn.q_proj`.
/// Supported config fields: r, lora_alpha, lora_dropout, target_modules (list of name suffixes or
/// one regex matched against the full module name), use_rslora, rank_pattern, alpha_pattern.
/// Refused with UnsupportedError: fan_in_fan_out true, use_dora true, bias other than "none",
/// lora_bias true, modules_to_save, layers_to_transform, peft_type other than LORA.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"
#include "limarp/io/safetensors.hpp"

namespace limarp::io {

/// The LoRA hyper-parameters of an adapter (adapter_config.json).
struct LoraConfig {
    std::int64_t r = 8;                                ///< default rank
    double lora_alpha = 8;                             ///< default alpha
    double lora_dropout = 0;                           ///< dropout probability on the LoRA input (training)
    bool use_rslora = false;                           ///< scale alpha/sqrt(r) instead of alpha/r
    std::vector<std::string> target_modules;           ///< name suffixes (list form)
    std::optional<std::string> target_regex;           ///< full-match regex (string form)
    std::map<std::string, std::int64_t> rank_pattern;  ///< per-module rank overrides (regex keys)
    std::map<std::string, double> alpha_pattern;       ///< per-module alpha overrides (regex keys)
};

/// The LoRA factors of one module.
struct LoraModule {
    std::string module;  ///< base-model module path, e.g. "model.layers.0.self_attn.q_proj"
    std::int64_t r = 0;  ///< rank
    double alpha = 0;    ///< alpha
    double scale = 0;    ///< alpha / r, or alpha / sqrt(r) with rsLoRA
    TensorInfo A;        ///< lora_A.weight [r, in]
    TensorInfo B;        ///< lora_B.weight [out, r]
};

/// A PEFT LoRA adapter opened from a folder (zero copy: factors stay in the file mapping).
class PeftAdapter {
public:
    /// Opens `dir`. `name` identifies the adapter at run time (default: the folder name).
    /// \throws IoError / FormatError naming the file and field, UnsupportedError for unsupported options.
    static PeftAdapter open(const std::filesystem::path& dir, std::string name = "") {
        PeftAdapter a;
        a.dir_ = dir;
        a.name_ = name.empty() ? std::filesystem::path(dir).lexically_normal().filename().string() : std::move(name);
        if (a.name_.empty()) a.name_ = "adapter";
        const auto cfg_path = dir / "adapter_config.json";
        std::ifstream f(cfg_path);
        if (!f) throw IoError(cfg_path.string() + ": cannot open (is this a PEFT adapter folder?)");
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(f);
        } catch (const nlohmann::json::exception& e) {
            throw FormatError(cfg_path.string() + ": not valid JSON: " + e.what());
        }
        a.cfg_ = parse_config(j, cfg_path.string());
        const auto st = dir / "adapter_model.safetensors";
        if (!std::filesystem::exists(st))
            throw IoError(st.string() + ": missing (adapter_model.bin pickles are not supported; re-save with "
                                        "safe_serialization=True)");
        a.file_ = std::make_shared<SafeTensorsFile>(SafeTensorsFile::open(st));
        for (const auto& n : a.file_->names()) {
            if (n.rfind("base_model.model.", 0) != 0 || (n.find(".lora_A.") == std::string::npos &&
                                                         n.find(".lora_B.") == std::string::npos))
                throw FormatError(st.string() + ": tensor " + n +
                                  " is not a LoRA factor (expected base_model.model.<module>.lora_A/lora_B.weight)");
        }
        return a;
    }

    /// Parses adapter_config.json contents; `source` names the file in messages.
    static LoraConfig parse_config(const nlohmann::json& j, const std::string& source) {
        auto field = [&](const char* k) -> const nlohmann::json* {
            auto it = j.find(k);
            return it == j.end() || it->is_null() ? nullptr : &*it;
        };
        auto unsupported = [&](const std::string& what) { throw UnsupportedError(source + ": " + what); };
        if (!j.is_object()) throw FormatError(source + ": expected a JSON object");
        LoraConfig c;
        try {
            if (auto* p = field("peft_type"); p && p->get<std::string>() != "LORA")
                unsupported("peft_type " + p->get<std::string>() + " is not supported (only LORA)");
            if (auto* p = field("r")) c.r = p->get<std::int64_t>();
            else throw FormatError(source + ": missing field r");
            if (auto* p = field("lora_alpha")) c.lora_alpha = p->get<double>();
            else throw FormatError(source + ": missing field lora_alpha");
            if (auto* p = field("lora_dropout")) c.lora_dropout = p->get<double>();
            if (auto* p = field("use_rslora")) c.use_rslora = p->get<bool>();
            if (auto* p = field("fan_in_fan_out"); p && p->get<bool>()) unsupported("fan_in_fan_out must be false");
            if (auto* p = field("use_dora"); p && p->get<bool>()) unsupported("use_dora (DoRA) is not supported");
            if (auto* p = field("lora_bias"); p && p->get<bool>()) unsupported("lora_bias is not supported");
            if (auto* p = field("bias"); p && p->get<std::string>() != "none")
                unsupported("bias \"" + p->get<std::string>() + "\" is not supported (only \"none\")");
            if (auto* p = field("modules_to_save"); p && !p->empty()) unsupported("modules_to_save is not supported");
            if (auto* p = field("layers_to_transform"); p) unsupported("layers_to_transform is not supported");
            if (auto* p = field("target_modules")) {
                if (p->is_string()) c.target_regex = p->get<std::string>();
                else c.target_modules = p->get<std::vector<std::string>>();
            } else {
                throw FormatError(source + ": missing field target_modules");
            }
            if (auto* p = field("rank_pattern"))
                for (auto& [k, v] : p->items()) c.rank_pattern[k] = v.get<std::int64_t>();
            if (auto* p = field("alpha_pattern"))
                for (auto& [k, v] : p->items()) c.alpha_pattern[k] = v.get<double>();
        } catch (const nlohmann::json::exception& e) {
            throw FormatError(source + ": a field has the wrong type: " + e.what());
        }
        if (c.r <= 0) throw FormatError(source + ": r must be positive, got " + std::to_string(c.r));
        return c;
    }

    /// The adapter's run-time name.
    const std::string& name() const noexcept { return name_; }
    /// The folder it was read from.
    const std::filesystem::path& dir() const noexcept { return dir_; }
    /// Its configuration.
    const LoraConfig& config() const noexcept { return cfg_; }
    /// The tensor file.
    const SafeTensorsFile& file() const noexcept { return *file_; }

    /// True when `module` (e.g. "model.layers.0.self_attn.q_proj") is targeted.
    bool targets(const std::string& module) const {
        if (cfg_.target_regex) return std::regex_match(module, std::regex(*cfg_.target_regex));
        for (const auto& t : cfg_.target_modules)
            if (module == t || (module.size() > t.size() && module.ends_with("." + t))) return true;
        return false;
    }

    /// The factors of `module`, or nullopt when it is not targeted.
    /// \throws FormatError when targeted but a factor is missing, ShapeError when a factor's shape
    ///         does not match [r, n_in] / [n_out, r] (the message names the tensor).
    std::optional<LoraModule> module(const std::string& module, std::int64_t n_in, std::int64_t n_out) const {
        const std::string pa = "base_model.model." + module + ".lora_A.weight";
        const std::string pb = "base_model.model." + module + ".lora_B.weight";
        if (!targets(module)) {
            if (file_->contains(pa) || file_->contains(pb))
                throw FormatError(file_->file() + ": holds " + pa + " but adapter_config.json does not target " + module);
            return std::nullopt;
        }
        if (!file_->contains(pa) || !file_->contains(pb)) {
            // PEFT skips targeted names that are not linear layers; a missing pair for a linear
            // module we were asked about means the file does not belong to this model.
            throw FormatError(file_->file() + ": missing " + (file_->contains(pa) ? pb : pa) +
                              " (adapter_config.json targets " + module + ")");
        }
        LoraModule m;
        m.module = module;
        m.r = pattern_value(cfg_.rank_pattern, module, cfg_.r);
        m.alpha = pattern_value(cfg_.alpha_pattern, module, cfg_.lora_alpha);
        m.scale = cfg_.use_rslora ? m.alpha / std::sqrt(static_cast<double>(m.r)) : m.alpha / static_cast<double>(m.r);
        m.A = file_->get(pa);
        m.B = file_->get(pb);
        auto check = [&](const TensorInfo& t, const Shape& want) {
            if (t.shape != want)
                throw ShapeError(file_->file() + ": tensor " + t.name + " has shape " + shape_str(t.shape) + ", expected " +
                                 shape_str(want) + " (rank " + std::to_string(m.r) + " for a " + std::to_string(n_out) +
                                 "x" + std::to_string(n_in) + " module)");
            if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)
                throw FormatError(file_->file() + ": tensor " + t.name + " has dtype " + std::string(dtype_name(t.dtype)) +
                                  ", expected F32, BF16 or F16");
        };
        check(m.A, {m.r, n_in});
        check(m.B, {n_out, m.r});
        return m;
    }

    /// The module paths that have factors in the file.
    std::set<std::string> modules_in_file() const {
        std::set<std::string> s;
        for (const auto& n : file_->names()) {
            const auto p = n.find(".lora_");
            s.insert(n.substr(17, p - 17));  // strip "base_model.model."
        }
        return s;
    }

private:
    template <class V>
    static V pattern_value(const std::map<std::string, V>& pats, const std::string& module, V fallback) {
        // PEFT: the first key whose regex matches the end of the module path at a dot boundary.
        for (const auto& [k, v] : pats)
            if (std::regex_match(module, std::regex("(.*\\.)?(" + k + ")"))) return v;
        return fallback;
    }

    std::filesystem::path dir_;
    std::string name_;
    LoraConfig cfg_;
    std::shared_ptr<SafeTensorsFile> file_;
};

}  // namespace limarp::io
