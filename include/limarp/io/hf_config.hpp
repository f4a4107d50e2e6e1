#pragma once
/// \file hf_config.hpp
/// \brief Reading and writing Hugging Face `config.json` files of Mistral-architecture models.
///
/// Accepted layouts: the older one with `rope_theta` at top level (Mistral-7B-OpenOrca,
/// transformers 4.x) and the newer one with `rope_parameters: {rope_theta, rope_type}`
/// (transformers 5). Fields absent from the file take Hugging Face MistralConfig's defaults,
/// except `sliding_window` (absent or null means full attention) and `head_dim` (absent or null
/// means hidden_size / num_attention_heads).

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"
#include "limarp/io/detail/json.hpp"
#include "limarp/io/detail/posix_file.hpp"
#include "limarp/io/mmap_file.hpp"
#include "limarp/model/mistral_config.hpp"

namespace limarp::io {

/// \cond
namespace detail {

/// Field access with typed errors for `parse_mistral_config`.
struct ConfigReader {
    const nlohmann::json& j;
    const std::string& source;

    /// The field, or nullptr when absent or JSON null.
    const nlohmann::json* find(const nlohmann::json& obj, const char* key) const {
        const auto it = obj.find(key);
        if (it == obj.end() || it->is_null()) return nullptr;
        return &*it;
    }
    [[noreturn]] void wrong_type(const std::string& field, const nlohmann::json& v, const char* expected) const {
        throw FormatError(source + ": field '" + field + "' is " + json_type(v) + " " + json_excerpt(v) +
                          ", expected " + expected);
    }
    std::int64_t to_int(const std::string& field, const nlohmann::json& v) const {
        if (v.is_number_unsigned()) {
            const auto u = v.get<std::uint64_t>();
            if (u > static_cast<std::uint64_t>(INT64_MAX)) wrong_type(field, v, "a 64-bit integer");
            return static_cast<std::int64_t>(u);
        }
        if (v.is_number_integer()) return v.get<std::int64_t>();
        wrong_type(field, v, "an integer");
    }
    std::int64_t required_int(const char* key) const {
        const nlohmann::json* v = find(j, key);
        if (!v) throw FormatError(source + ": missing required field '" + key + "'");
        return to_int(key, *v);
    }
    std::int64_t positive_int(const char* key) const {
        const std::int64_t v = required_int(key);
        if (v <= 0)
            throw FormatError(source + ": field '" + key + "' is " + std::to_string(v) + ", expected a positive integer");
        return v;
    }
    std::optional<std::int64_t> opt_int(const char* key) const {
        const nlohmann::json* v = find(j, key);
        if (!v) return std::nullopt;
        return to_int(key, *v);
    }
    std::optional<double> opt_number(const nlohmann::json& obj, const std::string& field, const char* key) const {
        const nlohmann::json* v = find(obj, key);
        if (!v) return std::nullopt;
        if (!v->is_number()) wrong_type(field, *v, "a number");
        return v->get<double>();
    }
    std::optional<std::string> opt_string(const nlohmann::json& obj, const std::string& field, const char* key) const {
        const nlohmann::json* v = find(obj, key);
        if (!v) return std::nullopt;
        if (!v->is_string()) wrong_type(field, *v, "a string");
        return v->get<std::string>();
    }
    std::optional<bool> opt_bool(const char* key) const {
        const nlohmann::json* v = find(j, key);
        if (!v) return std::nullopt;
        if (!v->is_boolean()) wrong_type(key, *v, "true or false");
        return v->get<bool>();
    }
    /// A token id given as an integer or a non-empty list of integers (the first is returned).
    std::optional<std::int64_t> opt_token(const char* key) const {
        const nlohmann::json* v = find(j, key);
        if (!v) return std::nullopt;
        if (v->is_array()) {
            if (v->empty()) wrong_type(key, *v, "an integer or a non-empty list of integers");
            for (std::size_t i = 1; i < v->size(); ++i) to_int(std::string(key) + "[" + std::to_string(i) + "]", (*v)[i]);
            return to_int(std::string(key) + "[0]", (*v)[0]);
        }
        return to_int(key, *v);
    }
    /// Rejects a rope type other than "default".
    void check_rope_type(const nlohmann::json& obj, const std::string& prefix) const {
        for (const char* key : {"rope_type", "type"}) {
            const auto t = opt_string(obj, prefix + "." + key, key);
            if (t && *t != "default")
                throw UnsupportedError(source + ": field '" + prefix + "." + key + "' is \"" + *t +
                                       "\"; limarp supports only \"default\" RoPE (no scaling)");
        }
    }
};

}  // namespace detail
/// \endcond

/// Builds a `MistralConfig` from a parsed config.json object; `source` (a file name) is used in
/// error messages.
///
/// Required: vocab_size, hidden_size, intermediate_size, num_hidden_layers,
/// num_attention_heads, num_key_value_heads (positive integers). Optional, with defaults:
/// head_dim (hidden_size / num_attention_heads), rms_norm_eps (1e-6), rope_theta or
/// rope_parameters.rope_theta (10000), sliding_window (none), max_position_embeddings (131072),
/// tie_word_embeddings (false), bos_token_id (1), eos_token_id (2; an integer or a list, the
/// first is kept), dtype or torch_dtype ("float32"). The window convention is left at Hugging Face's.
/// \throws FormatError naming the field and `source` when a required field is missing, a field
///         has the wrong type or an impossible value; UnsupportedError naming the field for
///         model_type other than "mistral", hidden_act other than "silu", a RoPE type other than
///         "default" (rope_parameters or a non-null rope_scaling), or num_attention_heads not a
///         multiple of num_key_value_heads.
inline MistralConfig parse_mistral_config(const nlohmann::json& j, const std::string& source) {
    if (!j.is_object())
        throw FormatError(source + ": config is a JSON " + detail::json_type(j) + ", expected an object");
    const detail::ConfigReader r{j, source};

    if (const auto mt = r.opt_string(j, "model_type", "model_type"); mt && *mt != "mistral")
        throw UnsupportedError(source + ": field 'model_type' is \"" + *mt + "\", expected \"mistral\"");
    if (const auto act = r.opt_string(j, "hidden_act", "hidden_act"); act && *act != "silu")
        throw UnsupportedError(source + ": field 'hidden_act' is \"" + *act + "\"; limarp supports only \"silu\"");

    MistralConfig c;
    c.vocab = r.positive_int("vocab_size");
    c.d_model = r.positive_int("hidden_size");
    c.d_ff = r.positive_int("intermediate_size");
    c.n_layers = r.positive_int("num_hidden_layers");
    c.n_heads = r.positive_int("num_attention_heads");
    c.n_kv_heads = r.positive_int("num_key_value_heads");
    if (c.n_heads % c.n_kv_heads != 0)
        throw UnsupportedError(source + ": field 'num_attention_heads' (" + std::to_string(c.n_heads) +
                               ") is not a multiple of 'num_key_value_heads' (" + std::to_string(c.n_kv_heads) + ")");
    if (const auto hd = r.opt_int("head_dim")) {
        if (*hd <= 0)
            throw FormatError(source + ": field 'head_dim' is " + std::to_string(*hd) + ", expected a positive integer");
        c.head_dim = *hd;
    } else {
        if (c.d_model % c.n_heads != 0)
            throw FormatError(source + ": field 'hidden_size' (" + std::to_string(c.d_model) +
                              ") is not a multiple of 'num_attention_heads' (" + std::to_string(c.n_heads) +
                              ") and 'head_dim' is not given");
        c.head_dim = c.d_model / c.n_heads;
    }

    c.rms_norm_eps = r.opt_number(j, "rms_norm_eps", "rms_norm_eps").value_or(1e-6);
    if (!(c.rms_norm_eps > 0))
        throw FormatError(source + ": field 'rms_norm_eps' is " + std::to_string(c.rms_norm_eps) + ", expected > 0");

    // RoPE: rope_parameters (new) wins over top-level rope_theta (old); rope_scaling must be null/default.
    std::optional<double> theta = r.opt_number(j, "rope_theta", "rope_theta");
    if (const nlohmann::json* rp = r.find(j, "rope_parameters")) {
        if (!rp->is_object()) r.wrong_type("rope_parameters", *rp, "an object {rope_theta, rope_type}");
        r.check_rope_type(*rp, "rope_parameters");
        if (const auto t = r.opt_number(*rp, "rope_parameters.rope_theta", "rope_theta")) theta = t;
    }
    if (const nlohmann::json* rs = r.find(j, "rope_scaling")) {
        if (!rs->is_object()) r.wrong_type("rope_scaling", *rs, "null or an object");
        r.check_rope_type(*rs, "rope_scaling");
        if (!rs->contains("rope_type") && !rs->contains("type"))
            throw UnsupportedError(source + ": field 'rope_scaling' is " + detail::json_excerpt(*rs) +
                                   " without a type; limarp supports only null or \"default\" RoPE");
        if (const auto t = r.opt_number(*rs, "rope_scaling.rope_theta", "rope_theta"); t && !theta) theta = t;
    }
    c.rope_theta = theta.value_or(10000.0);
    if (!(c.rope_theta > 0))
        throw FormatError(source + ": field 'rope_theta' is " + std::to_string(c.rope_theta) + ", expected > 0");

    c.window = r.opt_int("sliding_window");
    if (c.window && *c.window <= 0)
        throw FormatError(source + ": field 'sliding_window' is " + std::to_string(*c.window) +
                          ", expected a positive integer or null");
    c.max_position_embeddings = r.opt_int("max_position_embeddings").value_or(131072);
    if (c.max_position_embeddings <= 0)
        throw FormatError(source + ": field 'max_position_embeddings' is " + std::to_string(c.max_position_embeddings) +
                          ", expected a positive integer");
    c.tie_word_embeddings = r.opt_bool("tie_word_embeddings").value_or(false);
    c.bos_token_id = r.opt_token("bos_token_id").value_or(1);
    c.eos_token_id = r.opt_token("eos_token_id").value_or(2);
    if (auto d = r.opt_string(j, "dtype", "dtype"))
        c.torch_dtype = *d;
    else
        c.torch_dtype = r.opt_string(j, "torch_dtype", "torch_dtype").value_or("float32");
    return c;
}

/// Reads `config.json` (given directly, or the folder that holds it) and parses it with
/// `parse_mistral_config`. \throws IoError when the file cannot be read; FormatError for invalid
/// JSON (duplicate keys included) and as `parse_mistral_config`.
inline MistralConfig read_mistral_config(const std::filesystem::path& config_json_or_dir) {
    std::filesystem::path p = config_json_or_dir;
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) p /= "config.json";
    const MmapFile f(p);
    const char* b = reinterpret_cast<const char*>(f.data());
    return parse_mistral_config(detail::parse_json_strict(b, b + f.size(), p.string()), p.string());
}

/// A Hugging Face config.json object for `c`, in the older layout that transformers 4.x and 5
/// both load: model_type "mistral", architectures ["MistralForCausalLM"], hidden_act "silu",
/// top-level rope_theta, sliding_window (null for full attention), head_dim, torch_dtype, etc.
/// `c.window_convention` has no config.json field and is not written.
inline nlohmann::json to_hf_json(const MistralConfig& c) {
    nlohmann::json j;
    j["architectures"] = nlohmann::json::array({"MistralForCausalLM"});
    j["attention_dropout"] = 0.0;
    j["bos_token_id"] = c.bos_token_id;
    j["eos_token_id"] = c.eos_token_id;
    j["head_dim"] = c.head_dim;
    j["hidden_act"] = "silu";
    j["hidden_size"] = c.d_model;
    j["initializer_range"] = 0.02;
    j["intermediate_size"] = c.d_ff;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["model_type"] = "mistral";
    j["num_attention_heads"] = c.n_heads;
    j["num_hidden_layers"] = c.n_layers;
    j["num_key_value_heads"] = c.n_kv_heads;
    j["rms_norm_eps"] = c.rms_norm_eps;
    j["rope_theta"] = c.rope_theta;
    j["sliding_window"] = c.window ? nlohmann::json(*c.window) : nlohmann::json(nullptr);
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["torch_dtype"] = c.torch_dtype;
    j["use_cache"] = true;
    j["vocab_size"] = c.vocab;
    return j;
}

/// Writes `to_hf_json(c)` to `path` (indented, trailing newline) atomically. \throws IoError.
inline void write_hf_config(const std::filesystem::path& path, const MistralConfig& c) {
    const std::string text = to_hf_json(c).dump(2) + "\n";
    detail::write_file_atomic(path, text.data(), text.size());
}

}  // namespace limarp::io

namespace limarp {
using io::parse_mistral_config;  ///< re-export of io::parse_mistral_config
using io::read_mistral_config;   ///< re-export of io::read_mistral_config
using io::to_hf_json;            ///< re-export of io::to_hf_json
using io::write_hf_config;       ///< re-export of io::write_hf_config
}  // namespace limarp
