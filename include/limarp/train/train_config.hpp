#pragma once
/// \file train_config.hpp
/// \brief `TrainConfig`: the limarp-train YAML config, with Axolotl's field names where Axolotl
/// has the setting, the seed's recipe as defaults, `key=value` overrides (the same names as
/// command-line flags) and validation.
///
/// **Link requirement:** parses YAML with yaml-cpp: link `yaml-cpp` (see train/dataset.hpp).
///
/// Example (every key is optional except base_model and datasets; train_config_keys() lists
/// them all with their defaults):
/// \verbatim
/// base_model: ./models/Mistral-7B-OpenOrca
/// datasets:
///   - path: ./data/limarp        # a folder of LimaRP YAML files
///     type: limarp
/// lora_r: 256
/// lora_alpha: 16
/// learning_rate: 0.0002
/// output_dir: ./lora-out
/// \endverbatim
///
/// Defaults: the seed's recipe where its model card states it (8-bit base, LoRA r 256,
/// alpha 16, dropout 0.05 on q,k,v,o,gate,up,down; sequence_len 9500; loss on the entire
/// sequence (train_on_inputs true); effective batch 4, here micro_batch_size 1 x
/// gradient_accumulation_steps 4 on one machine). The card does not state the rest; ours:
/// learning_rate 2e-4, cosine schedule with 10 warmup steps, 2 epochs, val_set_size 0.05,
/// AdamW (betas 0.9/0.999, eps 1e-8, weight_decay 0, as the Hugging Face Trainer),
/// max_grad_norm 1.0, seed 42.
///
/// Unknown keys are an error that names the key, its line and the closest known key (a typo
/// must not silently train with a default). Axolotl keys that have no effect here (bf16,
/// flash_attention, wandb_*, ...) are accepted and reported in TrainConfig::warnings;
/// Axolotl settings that would change the result in a way limarp does not implement
/// (load_in_4bit true, lora_fan_in_fan_out true, lora_modules_to_save, ...) are errors.

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "limarp/core/error.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/train/adamw.hpp"
#include "limarp/train/dataset.hpp"
#include "limarp/train/length_bins.hpp"
#include "limarp/train/lr_schedule.hpp"

namespace limarp::train {

/// The seven Mistral projections LimaRP adapts.
inline const std::vector<std::string>& mistral_lora_targets() {
    static const std::vector<std::string> t = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    return t;
}

/// A limarp-train configuration (field names as in the YAML file; see the file comment).
struct TrainConfig {
    // ---- model
    std::string base_model;          ///< base model folder (config.json, safetensors, tokenizer)
    bool load_in_8bit = true;        ///< int8 frozen base (LLM.int8()-style rows); false = as stored
    std::string adapter = "lora";    ///< only `lora`
    std::string lora_model_dir;      ///< start from this PEFT adapter instead of a fresh init (empty: fresh)
    // ---- LoRA
    std::int64_t lora_r = 256;       ///< rank
    double lora_alpha = 16;          ///< alpha (scale alpha / r, or alpha / sqrt(r) with rsLoRA)
    double lora_dropout = 0.05;      ///< dropout on the LoRA input while training
    std::vector<std::string> lora_target_modules = mistral_lora_targets();  ///< adapted projections (name suffixes)
    bool lora_target_linear = false; ///< Axolotl: adapt every linear projection (= the seven)
    bool peft_use_rslora = false;    ///< rank-stabilised scale alpha / sqrt(r)
    // ---- data
    std::vector<DatasetSource> datasets;  ///< `[{path, type}]`, type limarp / jsonl / auto
    std::int64_t sequence_len = 9500;     ///< max tokens per example
    bool train_on_inputs = true;          ///< loss on every token (true) or on responses only
    double val_set_size = 0.05;           ///< eval split: fraction (< 1) or count (>= 1); 0 = none
    bool length_tags = true;              ///< `(length = TAG)` on every response header
    LengthUnit length_unit = LengthUnit::Words;  ///< unit of length_bins
    std::optional<std::array<std::int64_t, 9>> length_bins;  ///< upper bounds of micro..humongous (unset: defaults of length_unit)
    OversizeTurn oversize_turn = OversizeTurn::Truncate;  ///< first turn longer than sequence_len
    bool add_eos = false;                 ///< append EOS to every example
    bool shuffle = true;                  ///< shuffle the split and each epoch
    // ---- optimisation
    std::string optimizer = "adamw_torch";  ///< adamw_torch / adamw_hf / adamw_bnb_8bit / paged_adamw_8bit / paged_adamw_32bit: all run as f32 AdamW
    double learning_rate = 2e-4;          ///< peak learning rate
    ScheduleKind lr_scheduler = ScheduleKind::Cosine;  ///< constant / constant_with_warmup / linear / cosine
    std::int64_t warmup_steps = 10;       ///< linear warmup updates
    double warmup_ratio = 0;              ///< used when warmup_steps is 0: ceil(ratio * total updates)
    std::int64_t num_epochs = 2;          ///< passes over the train set
    std::int64_t max_steps = 0;           ///< > 0: stop after this many updates (overrides num_epochs)
    std::int64_t micro_batch_size = 1;    ///< examples per forward/backward
    std::int64_t gradient_accumulation_steps = 4;  ///< micro-batches per update
    double weight_decay = 0;              ///< AdamW decoupled weight decay
    double adam_beta1 = 0.9;              ///< AdamW beta1
    double adam_beta2 = 0.999;            ///< AdamW beta2
    double adam_epsilon = 1e-8;           ///< AdamW eps
    double max_grad_norm = 1.0;           ///< global-norm clipping (0: off)
    bool gradient_checkpointing = true;   ///< recompute each block in backward
    // ---- output
    std::string output_dir = "./lora-out";  ///< checkpoints, final adapter, metrics, plot
    std::int64_t logging_steps = 1;       ///< a metrics row every N updates
    std::int64_t eval_steps = 0;          ///< evaluate every N updates (0: at the end of each epoch)
    std::int64_t save_steps = 0;          ///< checkpoint every N updates (0: at the end of each epoch)
    std::int64_t save_total_limit = 0;    ///< keep the newest N checkpoints (0: all)
    std::string resume_from_checkpoint;   ///< a checkpoint folder, `auto`/`latest` (newest in output_dir), or empty
    std::uint64_t seed = 42;              ///< data order, split, LoRA init, dropout
    // ---- filled by parsing
    std::vector<std::string> warnings;    ///< Axolotl keys accepted without effect (file:line: key ...)

    /// The length bins in effect (length_bins, or the defaults of length_unit).
    LengthBins bins() const {
        LengthBins b = LengthBins::defaults(length_unit);
        if (length_bins) b.upper = *length_bins;
        return b;
    }
    /// The dataset options of this config.
    DatasetOptions dataset_options() const {
        DatasetOptions o;
        o.sequence_len = sequence_len;
        o.train_on_inputs = train_on_inputs;
        o.length_tags = length_tags;
        o.length_bins = bins();
        o.oversize_turn = oversize_turn;
        o.add_eos = add_eos;
        o.val_set_size = val_set_size;
        o.seed = seed;
        o.shuffle = shuffle;
        return o;
    }
    /// The optimizer options (lr = learning_rate; the schedule scales it per step).
    AdamWOptions adamw_options() const { return {learning_rate, adam_beta1, adam_beta2, adam_epsilon, weight_decay}; }
    /// The adapter config written with checkpoints.
    io::LoraConfig lora_config() const {
        io::LoraConfig c;
        c.r = lora_r;
        c.lora_alpha = lora_alpha;
        c.lora_dropout = lora_dropout;
        c.use_rslora = peft_use_rslora;
        c.target_modules = lora_target_linear ? mistral_lora_targets() : lora_target_modules;
        return c;
    }
    /// Warmup updates for a run of `total_steps` (warmup_steps, else ceil(warmup_ratio * total)).
    std::int64_t warmup_for(std::int64_t total_steps) const {
        if (warmup_steps > 0) return warmup_steps;
        return static_cast<std::int64_t>(std::ceil(warmup_ratio * static_cast<double>(total_steps)));
    }
    /// The learning-rate schedule for a run of `total_steps` updates.
    LrSchedule schedule(std::int64_t total_steps) const {
        return LrSchedule{lr_scheduler, learning_rate, warmup_for(total_steps), total_steps, 0.5};
    }

    /// Checks every value. \throws ArgumentError naming the field, the value and what is allowed.
    void validate() const {
        auto bad = [](const std::string& field, const std::string& msg) { throw ArgumentError("config: " + field + ": " + msg); };
        if (base_model.empty()) bad("base_model", "missing (the base model folder)");
        if (adapter != "lora") bad("adapter", "\"" + adapter + "\" is not supported (only lora)");
        if (lora_r <= 0) bad("lora_r", "must be > 0, got " + std::to_string(lora_r));
        if (!(lora_alpha > 0)) bad("lora_alpha", "must be > 0, got " + std::to_string(lora_alpha));
        if (!(lora_dropout >= 0 && lora_dropout < 1)) bad("lora_dropout", "must be in [0, 1), got " + std::to_string(lora_dropout));
        if (!lora_target_linear) {
            if (lora_target_modules.empty()) bad("lora_target_modules", "empty (list some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
            for (const auto& t : lora_target_modules)
                if (std::find(mistral_lora_targets().begin(), mistral_lora_targets().end(), t) == mistral_lora_targets().end())
                    bad("lora_target_modules", "\"" + t + "\" is not a Mistral projection (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
        }
        if (datasets.empty()) bad("datasets", "missing (a list of {path, type})");
        for (const auto& d : datasets)
            if (d.path.empty()) bad("datasets", "an entry has no path");
        if (sequence_len < 16) bad("sequence_len", "must be >= 16, got " + std::to_string(sequence_len));
        if (!(val_set_size >= 0) || (val_set_size >= 1 && val_set_size != std::floor(val_set_size)))
            bad("val_set_size", "must be a fraction in [0, 1) or a whole number of examples, got " + std::to_string(val_set_size));
        try {
            bins().validate();
        } catch (const ArgumentError& e) {
            bad("length_bins", e.what());
        }
        static const char* kOpt[] = {"adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_bnb_8bit", "paged_adamw_8bit",
                                     "paged_adamw_32bit", "adamw"};
        if (std::find(std::begin(kOpt), std::end(kOpt), optimizer) == std::end(kOpt))
            bad("optimizer", "\"" + optimizer + "\" is not supported (AdamW only: adamw_torch, adamw_hf, adamw_bnb_8bit, ...)");
        if (!(learning_rate > 0)) bad("learning_rate", "must be > 0, got " + std::to_string(learning_rate));
        if (warmup_steps < 0) bad("warmup_steps", "must be >= 0");
        if (!(warmup_ratio >= 0 && warmup_ratio < 1)) bad("warmup_ratio", "must be in [0, 1)");
        if (num_epochs < 1 && max_steps <= 0) bad("num_epochs", "must be >= 1 (or set max_steps)");
        if (max_steps < 0) bad("max_steps", "must be >= 0");
        if (micro_batch_size < 1) bad("micro_batch_size", "must be >= 1");
        if (gradient_accumulation_steps < 1) bad("gradient_accumulation_steps", "must be >= 1");
        if (!(weight_decay >= 0)) bad("weight_decay", "must be >= 0");
        if (!(adam_beta1 >= 0 && adam_beta1 < 1)) bad("adam_beta1", "must be in [0, 1)");
        if (!(adam_beta2 >= 0 && adam_beta2 < 1)) bad("adam_beta2", "must be in [0, 1)");
        if (!(adam_epsilon > 0)) bad("adam_epsilon", "must be > 0");
        if (!(max_grad_norm >= 0)) bad("max_grad_norm", "must be >= 0 (0 turns clipping off)");
        if (output_dir.empty()) bad("output_dir", "empty");
        if (logging_steps < 1) bad("logging_steps", "must be >= 1");
        if (eval_steps < 0) bad("eval_steps", "must be >= 0");
        if (save_steps < 0) bad("save_steps", "must be >= 0");
        if (save_total_limit < 0) bad("save_total_limit", "must be >= 0");
    }
};

/// One key of the config, for help texts.
struct ConfigKey {
    std::string name;           ///< the YAML key (and `--name` / `name=value` override)
    std::string type;           ///< "integer", "number", "bool", "string", "list of strings", ...
    std::string default_value;  ///< the default, as YAML flow text
    std::string help;           ///< one line
};

/// \cond
namespace detail {

struct CfgField {
    const char* name;
    const char* type;
    const char* help;
    std::function<void(TrainConfig&, const YAML::Node&, const std::string&)> set;
    std::function<YAML::Node(const TrainConfig&)> get;
};

[[noreturn]] inline void cfg_fail(const std::string& where, const char* key, const std::string& msg) {
    throw FormatError(where + ": field '" + key + "': " + msg);
}

inline std::string cfg_scalar(const YAML::Node& n, const std::string& where, const char* key, const char* expected) {
    if (!n.IsScalar()) cfg_fail(where, key, std::string("expected ") + expected + ", found a " + yaml_type(n));
    return n.Scalar();
}

inline bool cfg_bool(const YAML::Node& n, const std::string& where, const char* key) {
    std::string s = cfg_scalar(n, where, key, "true or false");
    for (auto& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    if (s == "true" || s == "yes" || s == "on" || s == "1") return true;
    if (s == "false" || s == "no" || s == "off" || s == "0") return false;
    cfg_fail(where, key, "expected true or false, got \"" + n.Scalar() + "\"");
}

template <class I>
I cfg_int(const YAML::Node& n, const std::string& where, const char* key) {
    const std::string s = cfg_scalar(n, where, key, "an integer");
    I v{};
    const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size())
        cfg_fail(where, key, "expected an integer, got \"" + s + "\"");
    return v;
}

inline double cfg_double(const YAML::Node& n, const std::string& where, const char* key) {
    const std::string s = cfg_scalar(n, where, key, "a number");
    double v = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size() || !std::isfinite(v))
        cfg_fail(where, key, "expected a number, got \"" + s + "\"");
    return v;
}

inline std::string cfg_string(const YAML::Node& n, const std::string& where, const char* key) {
    if (n.IsNull()) return {};
    return cfg_scalar(n, where, key, "a string");
}

inline std::vector<std::string> cfg_strings(const YAML::Node& n, const std::string& where, const char* key) {
    std::vector<std::string> out;
    if (n.IsNull()) return out;
    if (n.IsScalar()) {  // "a,b,c" (command-line form)
        const std::string s = n.Scalar();
        std::size_t pos = 0;
        while (pos <= s.size()) {
            const std::size_t c = std::min(s.find(',', pos), s.size());
            std::string item = s.substr(pos, c - pos);
            while (!item.empty() && item.front() == ' ') item.erase(item.begin());
            while (!item.empty() && item.back() == ' ') item.pop_back();
            if (!item.empty()) out.push_back(item);
            pos = c + 1;
        }
        return out;
    }
    if (!n.IsSequence()) cfg_fail(where, key, std::string("expected a list of strings, found a ") + yaml_type(n));
    for (std::size_t i = 0; i < n.size(); ++i) out.push_back(cfg_scalar(n[i], where, key, "a list of strings"));
    return out;
}

template <class E, class Parse>
E cfg_enum(const YAML::Node& n, const std::string& where, const char* key, Parse parse) {
    const std::string s = cfg_scalar(n, where, key, "a name");
    try {
        return parse(s);
    } catch (const ArgumentError& e) {
        cfg_fail(where, key, e.what());
    }
}

inline std::vector<DatasetSource> cfg_datasets(const YAML::Node& n, const std::string& file, const std::string& where) {
    std::vector<DatasetSource> out;
    if (n.IsNull()) return out;
    if (!n.IsSequence()) cfg_fail(where, "datasets", std::string("expected a list of {path, type}, found a ") + yaml_type(n));
    for (std::size_t i = 0; i < n.size(); ++i) {
        const YAML::Node e = n[i];
        const std::string w = file.empty() ? where : yaml_where(file, e, n);
        const std::string field = "datasets[" + std::to_string(i) + "]";
        DatasetSource d;
        if (e.IsScalar()) {  // a bare path
            d.path = e.Scalar();
        } else if (e.IsMap()) {
            for (auto it = e.begin(); it != e.end(); ++it) {
                const std::string k = it->first.Scalar();
                if (k == "path") d.path = cfg_scalar(it->second, w, "datasets[].path", "a path");
                else if (k == "type") d.type = cfg_string(it->second, w, "datasets[].type");
                else if (k == "ds_type" || k == "split" || k == "name" || k == "data_files")
                    throw UnsupportedError(w + ": field '" + field + "." + k + "' is not supported (give path and type only)");
                else
                    throw FormatError(w + ": field '" + field + "': unknown key '" + k + "' (expected path and type)");
            }
        } else {
            cfg_fail(w, "datasets", std::string("an entry must be a {path, type} map, found a ") + yaml_type(e));
        }
        if (d.path.empty()) cfg_fail(w, "datasets", field + " has no path");
        out.push_back(std::move(d));
    }
    return out;
}

inline const std::vector<CfgField>& cfg_fields() {
    using C = TrainConfig;
    static const std::vector<CfgField> f = [] {
        std::vector<CfgField> v;
        auto str = [&](const char* name, std::string C::*m, const char* help) {
            v.push_back({name, "string", help,
                         [m, name](C& c, const YAML::Node& n, const std::string& w) { c.*m = cfg_string(n, w, name); },
                         [m](const C& c) { return YAML::Node(c.*m); }});
        };
        auto boolean = [&](const char* name, bool C::*m, const char* help) {
            v.push_back({name, "bool", help,
                         [m, name](C& c, const YAML::Node& n, const std::string& w) { c.*m = cfg_bool(n, w, name); },
                         [m](const C& c) { return YAML::Node(c.*m); }});
        };
        auto i64 = [&](const char* name, std::int64_t C::*m, const char* help) {
            v.push_back({name, "integer", help,
                         [m, name](C& c, const YAML::Node& n, const std::string& w) { c.*m = cfg_int<std::int64_t>(n, w, name); },
                         [m](const C& c) { return YAML::Node(c.*m); }});
        };
        auto num = [&](const char* name, double C::*m, const char* help) {
            v.push_back({name, "number", help,
                         [m, name](C& c, const YAML::Node& n, const std::string& w) { c.*m = cfg_double(n, w, name); },
                         [m](const C& c) {
                             char buf[64];
                             const auto r = std::to_chars(buf, buf + sizeof buf, c.*m, std::chars_format::general);
                             return YAML::Node(std::string(buf, r.ptr));
                         }});
        };
        str("base_model", &C::base_model, "base model folder (config.json, *.safetensors, tokenizer)");
        boolean("load_in_8bit", &C::load_in_8bit, "int8 frozen base weights (as the seed); false keeps the stored dtype");
        str("adapter", &C::adapter, "adapter type (only lora)");
        str("lora_model_dir", &C::lora_model_dir, "start from this PEFT adapter instead of a fresh initialisation");
        i64("lora_r", &C::lora_r, "LoRA rank");
        num("lora_alpha", &C::lora_alpha, "LoRA alpha (scale alpha / r)");
        num("lora_dropout", &C::lora_dropout, "dropout on the LoRA input while training");
        v.push_back({"lora_target_modules", "list of strings", "adapted projections (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)",
                     [](C& c, const YAML::Node& n, const std::string& w) { c.lora_target_modules = cfg_strings(n, w, "lora_target_modules"); },
                     [](const C& c) {
                         YAML::Node n(YAML::NodeType::Sequence);
                         for (const auto& s : c.lora_target_modules) n.push_back(s);
                         n.SetStyle(YAML::EmitterStyle::Flow);
                         return n;
                     }});
        boolean("lora_target_linear", &C::lora_target_linear, "adapt all seven projections (Axolotl)");
        boolean("peft_use_rslora", &C::peft_use_rslora, "rsLoRA: scale alpha / sqrt(r)");
        v.push_back({"datasets", "list of {path, type}", "training data: LimaRP YAML files/folders (type limarp) or JSONL (type jsonl)",
                     [](C& c, const YAML::Node& n, const std::string& w) { c.datasets = cfg_datasets(n, std::string(), w); },
                     [](const C& c) {
                         YAML::Node n(YAML::NodeType::Sequence);
                         for (const auto& d : c.datasets) {
                             YAML::Node e;
                             e["path"] = d.path;
                             if (!d.type.empty()) e["type"] = d.type;
                             n.push_back(e);
                         }
                         return n;
                     }});
        i64("sequence_len", &C::sequence_len, "max tokens per example (trailing turns that do not fit are dropped)");
        boolean("train_on_inputs", &C::train_on_inputs, "loss on every token (true, the seed) or on responses only");
        num("val_set_size", &C::val_set_size, "eval split: fraction (< 1) or number of examples (>= 1)");
        boolean("length_tags", &C::length_tags, "put (length = TAG) on every response header");
        v.push_back({"length_unit", "words|characters|tokens", "what the length bins count",
                     [](C& c, const YAML::Node& n, const std::string& w) {
                         c.length_unit = cfg_enum<LengthUnit>(n, w, "length_unit", parse_length_unit);
                     },
                     [](const C& c) { return YAML::Node(std::string(to_string(c.length_unit))); }});
        v.push_back({"length_bins", "list of 9 integers", "exclusive upper bounds of micro..humongous (default: per length_unit)",
                     [](C& c, const YAML::Node& n, const std::string& w) {
                         if (n.IsNull()) {
                             c.length_bins.reset();
                             return;
                         }
                         const auto s = cfg_strings(n, w, "length_bins");
                         if (s.size() != 9)
                             cfg_fail(w, "length_bins", "expected 9 integers (micro .. humongous), got " + std::to_string(s.size()));
                         std::array<std::int64_t, 9> b{};
                         for (std::size_t i = 0; i < 9; ++i) b[i] = cfg_int<std::int64_t>(YAML::Node(s[i]), w, "length_bins");
                         c.length_bins = b;
                     },
                     [](const C& c) {
                         YAML::Node n(YAML::NodeType::Sequence);
                         for (const auto x : c.bins().upper) n.push_back(x);
                         n.SetStyle(YAML::EmitterStyle::Flow);
                         return n;
                     }});
        v.push_back({"oversize_turn", "truncate|skip", "a first turn longer than sequence_len: cut it or skip the example",
                     [](C& c, const YAML::Node& n, const std::string& w) {
                         c.oversize_turn = cfg_enum<OversizeTurn>(n, w, "oversize_turn", parse_oversize_turn);
                     },
                     [](const C& c) { return YAML::Node(std::string(to_string(c.oversize_turn))); }});
        boolean("add_eos", &C::add_eos, "append EOS to every example");
        boolean("shuffle", &C::shuffle, "shuffle the split and every epoch (false: source order)");
        str("optimizer", &C::optimizer, "adamw_torch (any AdamW name runs as f32 AdamW)");
        num("learning_rate", &C::learning_rate, "peak learning rate");
        v.push_back({"lr_scheduler", "constant|constant_with_warmup|linear|cosine", "learning-rate schedule (transformers')",
                     [](C& c, const YAML::Node& n, const std::string& w) {
                         c.lr_scheduler = cfg_enum<ScheduleKind>(n, w, "lr_scheduler", parse_schedule_kind);
                     },
                     [](const C& c) { return YAML::Node(std::string(to_string(c.lr_scheduler))); }});
        i64("warmup_steps", &C::warmup_steps, "linear warmup updates");
        num("warmup_ratio", &C::warmup_ratio, "warmup as a fraction of all updates (when warmup_steps is 0)");
        i64("num_epochs", &C::num_epochs, "passes over the train set");
        i64("max_steps", &C::max_steps, "stop after this many updates (0: from num_epochs)");
        i64("micro_batch_size", &C::micro_batch_size, "examples per forward/backward");
        i64("gradient_accumulation_steps", &C::gradient_accumulation_steps, "micro-batches per optimizer update");
        num("weight_decay", &C::weight_decay, "AdamW decoupled weight decay");
        num("adam_beta1", &C::adam_beta1, "AdamW beta1");
        num("adam_beta2", &C::adam_beta2, "AdamW beta2");
        num("adam_epsilon", &C::adam_epsilon, "AdamW epsilon");
        num("max_grad_norm", &C::max_grad_norm, "clip the global gradient norm to this (0: off)");
        boolean("gradient_checkpointing", &C::gradient_checkpointing, "recompute each block in backward (less memory)");
        str("output_dir", &C::output_dir, "checkpoints, final adapter, metrics and loss plot");
        i64("logging_steps", &C::logging_steps, "a metrics row every N updates");
        i64("eval_steps", &C::eval_steps, "evaluate every N updates (0: at each epoch end)");
        i64("save_steps", &C::save_steps, "checkpoint every N updates (0: at each epoch end)");
        i64("save_total_limit", &C::save_total_limit, "keep the newest N checkpoints (0: all)");
        str("resume_from_checkpoint", &C::resume_from_checkpoint, "checkpoint folder to resume, or auto (newest in output_dir)");
        v.push_back({"seed", "integer", "seed of data order, split, LoRA init and dropout",
                     [](C& c, const YAML::Node& n, const std::string& w) { c.seed = cfg_int<std::uint64_t>(n, w, "seed"); },
                     [](const C& c) { return YAML::Node(c.seed); }});
        return v;
    }();
    return f;
}

/// Axolotl keys accepted without effect (reported as warnings).
inline bool cfg_ignored_axolotl_key(std::string_view k) {
    static constexpr std::string_view kIgnored[] = {
        "strict", "bf16", "fp16", "tf32", "flash_attention", "xformers_attention", "sdp_attention",
        "flash_attn_cross_entropy", "flash_attn_rms_norm", "flash_attn_fuse_qkv", "flash_attn_fuse_mlp",
        "sample_packing", "eval_sample_packing", "pad_to_sequence_len", "group_by_length", "dataset_prepared_path",
        "model_type", "tokenizer_type", "base_model_config", "is_mistral_derived_model", "is_llama_derived_model",
        "trust_remote_code", "special_tokens", "tokens", "deepspeed", "fsdp", "fsdp_config", "local_rank", "debug",
        "early_stopping_patience", "evals_per_epoch", "saves_per_epoch", "eval_table_size", "eval_max_new_tokens",
        "torch_compile", "resize_token_embeddings_to_32x", "chat_template", "default_system_message",
        "auto_resume_from_checkpoints", "logging_dir", "hf_use_auth_token", "xformers", "s2_attention",
        "load_best_model_at_end", "max_packed_sequence_len", "dataset_processes", "shuffle_merged_datasets",
        "gptq", "lora_on_cpu", "save_safetensors", "lora_fan_in_fan_out", "lora_modules_to_save", "load_in_4bit",
        "noisy_embedding_alpha", "neftune_noise_alpha", "lr_quadratic_warmup", "cosine_min_lr_ratio"};
    if (k.rfind("wandb_", 0) == 0 || k.rfind("hub_", 0) == 0 || k.rfind("mlflow_", 0) == 0) return true;
    return std::find(std::begin(kIgnored), std::end(kIgnored), k) != std::end(kIgnored);
}

/// Axolotl settings that would change the result in a way limarp does not implement.
inline void cfg_refuse_unsupported(std::string_view k, const YAML::Node& n, const std::string& where) {
    auto truthy = [&] {
        if (n.IsNull()) return false;
        if (n.IsSequence() || n.IsMap()) return n.size() > 0;
        std::string s = n.Scalar();
        for (auto& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
        return !(s.empty() || s == "false" || s == "no" || s == "off" || s == "0" || s == "null" || s == "~");
    };
    const std::string key(k);
    if ((k == "load_in_4bit" || k == "lora_fan_in_fan_out" || k == "lora_modules_to_save" || k == "lr_quadratic_warmup" ||
         k == "cosine_min_lr_ratio" || k == "noisy_embedding_alpha" || k == "neftune_noise_alpha" || k == "gptq") &&
        truthy())
        throw UnsupportedError(where + ": field '" + key + "' is not supported by limarp-train (remove it or set it off)");
}

inline std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

inline std::string cfg_unknown_key(std::string_view k) {
    std::string best;
    std::size_t best_d = 4;
    for (const auto& f : cfg_fields()) {
        const std::size_t d = edit_distance(k, f.name);
        if (d < best_d) {
            best_d = d;
            best = f.name;
        }
    }
    std::string m = "unknown key '" + std::string(k) + "'";
    if (!best.empty()) m += " (did you mean '" + best + "'?)";
    return m + "; train_config_keys() / limarp-train --help list the keys";
}

inline const CfgField* cfg_find(std::string_view k) {
    for (const auto& f : cfg_fields())
        if (k == f.name) return &f;
    return nullptr;
}

/// Sets one key (from a file or an override). `where` names the place for errors.
inline void cfg_set(TrainConfig& c, std::string_view key, const YAML::Node& value, const std::string& where) {
    if (const CfgField* f = cfg_find(key)) {
        f->set(c, value, where);
        return;
    }
    if (cfg_ignored_axolotl_key(key)) {
        cfg_refuse_unsupported(key, value, where);
        c.warnings.push_back(where + ": key '" + std::string(key) + "' is an Axolotl setting without effect in limarp-train (ignored)");
        return;
    }
    throw FormatError(where + ": " + cfg_unknown_key(key));
}

}  // namespace detail
/// \endcond

/// Parses config YAML text over the defaults; `source` (a file name) names it in errors.
/// Does not validate() (overrides may follow). \throws FormatError naming the file, the line
/// and the key (unknown key, wrong type, invalid YAML); UnsupportedError for Axolotl settings
/// limarp cannot honour.
inline TrainConfig parse_train_config(std::string_view yaml_text, const std::string& source) {
    YAML::Node loaded;
    try {
        loaded = YAML::Load(std::string(yaml_text));
    } catch (const YAML::Exception& e) {
        std::string where = source;
        if (e.mark.line >= 0) where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
        throw FormatError(where + ": invalid YAML: " + e.msg);
    }
    const YAML::Node& root = loaded;
    TrainConfig c;
    if (root.IsNull() || !root.IsDefined()) return c;
    if (!root.IsMap())
        throw FormatError(detail::yaml_where(source, root, root) + ": expected a map of settings, found a " +
                          detail::yaml_type(root));
    for (auto it = root.begin(); it != root.end(); ++it) {
        const std::string key = it->first.IsScalar() ? it->first.Scalar() : std::string("?");
        const std::string where = detail::yaml_where(source, it->first, root);
        if (key == "datasets") {
            c.datasets = detail::cfg_datasets(it->second, source, where);
            continue;
        }
        detail::cfg_set(c, key, it->second, where);
    }
    return c;
}

/// Reads and parses a config file (see parse_train_config()). \throws IoError, FormatError, UnsupportedError.
inline TrainConfig load_train_config(const std::filesystem::path& path) {
    return parse_train_config(detail::read_text_file(path), path.string());
}

/// Applies one `key=value` override (the command-line form: `lora_r=8`, `--lora-r=8`,
/// `lora_target_modules=q_proj,v_proj`, `datasets=[{path: d, type: jsonl}]`; dashes in the key
/// become underscores). String fields take the value verbatim; other fields parse it as YAML.
/// \throws ArgumentError without `=`; FormatError / UnsupportedError as parse_train_config().
inline void apply_override(TrainConfig& c, std::string_view key_value) {
    const auto eq = key_value.find('=');
    if (eq == std::string_view::npos)
        throw ArgumentError("override \"" + std::string(key_value) + "\": expected key=value");
    std::string key(key_value.substr(0, eq));
    while (!key.empty() && key.front() == '-') key.erase(key.begin());
    std::replace(key.begin(), key.end(), '-', '_');
    const std::string value(key_value.substr(eq + 1));
    const std::string where = "override " + key + "=" + value;
    const detail::CfgField* f = detail::cfg_find(key);
    YAML::Node node;
    if (f && std::string_view(f->type) == "string") {
        node = YAML::Node(value);
    } else {
        try {
            node = YAML::Load(value);
        } catch (const YAML::Exception& e) {
            throw FormatError(where + ": invalid value: " + e.msg);
        }
    }
    detail::cfg_set(c, key, node, where);
}

/// Applies overrides in order (later ones win). \throws as apply_override().
inline void apply_overrides(TrainConfig& c, std::span<const std::string> key_values) {
    for (const auto& kv : key_values) apply_override(c, kv);
}

/// The config as YAML (every key, in train_config_keys() order); parse_train_config() of it
/// gives the same config back. Written into output_dir so a run can be reproduced.
inline std::string to_yaml(const TrainConfig& c) {
    YAML::Emitter e;
    e << YAML::BeginMap;
    for (const auto& f : detail::cfg_fields()) e << YAML::Key << f.name << YAML::Value << f.get(c);
    e << YAML::EndMap;
    return std::string(e.c_str()) + "\n";
}

/// Every key with its type, default and a one-line help (for `limarp-train --help`).
inline std::vector<ConfigKey> train_config_keys() {
    const TrainConfig d;
    std::vector<ConfigKey> out;
    for (const auto& f : detail::cfg_fields()) {
        YAML::Emitter e;
        e << YAML::Flow << f.get(d);
        out.push_back({f.name, f.type, e.c_str(), f.help});
    }
    return out;
}

}  // namespace limarp::train
