// Tests for limarp/io/hf_config.hpp: both config.json layouts, defaults, rejections, round trip.
#include <boost/test/unit_test.hpp>

#include <string>

#include "io_test_util.hpp"
#include "limarp/io/hf_config.hpp"

using namespace limarp;
using namespace limarp_io_test;
using nlohmann::json;

namespace {

// Mistral-7B-OpenOrca's config.json (older layout: rope_theta at top level).
const char* kOpenOrca = R"({
  "_name_or_path": "mistralai/Mistral-7B-v0.1",
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 32000,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": false,
  "vocab_size": 32002
})";

// transformers 5 layout: rope_parameters, dtype, null head_dim / sliding_window, eos list.
const char* kNewLayout = R"({
  "architectures": ["MistralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "dtype": "bfloat16",
  "eos_token_id": [2, 32000],
  "head_dim": null,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
  "rope_scaling": null,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "transformers_version": "5.0.0",
  "use_cache": true,
  "vocab_size": 32768
})";

json with(const char* base, const std::string& key, json value) {
    json j = json::parse(base);
    j[key] = std::move(value);
    return j;
}

json without(const char* base, const std::string& key) {
    json j = json::parse(base);
    j.erase(key);
    return j;
}

template <class E>
void rejects(const json& j, std::vector<std::string> parts) {
    parts.push_back("cfg.json");
    require_throw_with<E>([&] { (void)io::parse_mistral_config(j, "cfg.json"); }, parts);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(hf_config)

BOOST_AUTO_TEST_CASE(older_layout_openorca) {
    const MistralConfig c = io::parse_mistral_config(json::parse(kOpenOrca), "openorca/config.json");
    BOOST_CHECK_EQUAL(c.vocab, 32002);
    BOOST_CHECK_EQUAL(c.d_model, 4096);
    BOOST_CHECK_EQUAL(c.d_ff, 14336);
    BOOST_CHECK_EQUAL(c.n_layers, 32);
    BOOST_CHECK_EQUAL(c.n_heads, 32);
    BOOST_CHECK_EQUAL(c.n_kv_heads, 8);
    BOOST_CHECK_EQUAL(c.head_dim, 128);
    BOOST_CHECK_EQUAL(c.rms_norm_eps, 1e-5);
    BOOST_CHECK_EQUAL(c.rope_theta, 10000.0);
    BOOST_REQUIRE(c.window.has_value());
    BOOST_CHECK_EQUAL(*c.window, 4096);
    BOOST_CHECK_EQUAL(c.max_position_embeddings, 32768);
    BOOST_CHECK(!c.tie_word_embeddings);
    BOOST_CHECK_EQUAL(c.bos_token_id, 1);
    BOOST_CHECK_EQUAL(c.eos_token_id, 32000);
    BOOST_CHECK_EQUAL(c.torch_dtype, "bfloat16");
    BOOST_CHECK(c.window_convention == WindowConvention::HuggingFace);
    BOOST_CHECK_EQUAL(c.window_keys(), 4096);
}

BOOST_AUTO_TEST_CASE(newer_layout) {
    const MistralConfig c = io::parse_mistral_config(json::parse(kNewLayout), "v5/config.json");
    BOOST_CHECK_EQUAL(c.vocab, 32768);
    BOOST_CHECK_EQUAL(c.head_dim, 128);
    BOOST_CHECK_EQUAL(c.rope_theta, 1e6);
    BOOST_CHECK(!c.window.has_value());
    BOOST_CHECK_EQUAL(c.window_keys(), 0);
    BOOST_CHECK_EQUAL(c.eos_token_id, 2);
    BOOST_CHECK_EQUAL(c.torch_dtype, "bfloat16");
    // explicit head_dim different from hidden/heads
    BOOST_CHECK_EQUAL(io::parse_mistral_config(with(kNewLayout, "head_dim", 96), "x").head_dim, 96);
    // rope_scaling given as a default-type object is fine; rope_parameters wins over rope_theta
    json j = json::parse(kNewLayout);
    j["rope_scaling"] = {{"rope_type", "default"}, {"rope_theta", 5.0}};
    j["rope_theta"] = 7.0;
    BOOST_CHECK_EQUAL(io::parse_mistral_config(j, "x").rope_theta, 1e6);
    // torch_dtype used when dtype is absent; dtype preferred when both
    j = with(kNewLayout, "torch_dtype", "float16");
    BOOST_CHECK_EQUAL(io::parse_mistral_config(j, "x").torch_dtype, "bfloat16");
    j.erase("dtype");
    BOOST_CHECK_EQUAL(io::parse_mistral_config(j, "x").torch_dtype, "float16");
}

BOOST_AUTO_TEST_CASE(optional_fields_take_hf_defaults) {
    json j = json::parse(kOpenOrca);
    for (const char* k : {"rope_theta", "sliding_window", "rms_norm_eps", "max_position_embeddings",
                          "tie_word_embeddings", "bos_token_id", "eos_token_id", "torch_dtype", "model_type",
                          "hidden_act"})
        j.erase(k);
    const MistralConfig c = io::parse_mistral_config(j, "min.json");
    BOOST_CHECK_EQUAL(c.rope_theta, 10000.0);
    BOOST_CHECK(!c.window);
    BOOST_CHECK_EQUAL(c.rms_norm_eps, 1e-6);
    BOOST_CHECK_EQUAL(c.max_position_embeddings, 131072);
    BOOST_CHECK(!c.tie_word_embeddings);
    BOOST_CHECK_EQUAL(c.bos_token_id, 1);
    BOOST_CHECK_EQUAL(c.eos_token_id, 2);
    BOOST_CHECK_EQUAL(c.torch_dtype, "float32");
    BOOST_CHECK(io::parse_mistral_config(with(kOpenOrca, "tie_word_embeddings", true), "x").tie_word_embeddings);
}

BOOST_AUTO_TEST_CASE(unsupported_settings) {
    json j = json::parse(kNewLayout);
    j["rope_parameters"]["rope_type"] = "yarn";
    rejects<UnsupportedError>(j, {"rope_parameters.rope_type", "yarn"});
    rejects<UnsupportedError>(with(kOpenOrca, "rope_scaling", {{"type", "linear"}, {"factor", 2.0}}),
                              {"rope_scaling.type", "linear"});
    rejects<UnsupportedError>(with(kOpenOrca, "rope_scaling", {{"rope_type", "dynamic"}, {"factor", 2.0}}),
                              {"rope_scaling.rope_type", "dynamic"});
    rejects<UnsupportedError>(with(kOpenOrca, "rope_scaling", {{"factor", 2.0}}), {"rope_scaling"});
    rejects<UnsupportedError>(with(kOpenOrca, "hidden_act", "gelu"), {"hidden_act", "gelu"});
    rejects<UnsupportedError>(with(kOpenOrca, "model_type", "llama"), {"model_type", "llama"});
    rejects<UnsupportedError>(with(kOpenOrca, "num_key_value_heads", 7), {"num_attention_heads", "num_key_value_heads"});
}

BOOST_AUTO_TEST_CASE(missing_and_mistyped_fields) {
    for (const char* k : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads"})
        rejects<FormatError>(without(kOpenOrca, k), {k, "missing"});
    rejects<FormatError>(with(kOpenOrca, "hidden_size", "4096"), {"hidden_size", "string", "integer"});
    rejects<FormatError>(with(kOpenOrca, "hidden_size", 4096.5), {"hidden_size"});
    rejects<FormatError>(with(kOpenOrca, "hidden_size", 0), {"hidden_size", "positive"});
    rejects<FormatError>(with(kOpenOrca, "num_hidden_layers", -3), {"num_hidden_layers"});
    rejects<FormatError>(with(kOpenOrca, "hidden_size", 4100), {"hidden_size", "head_dim"});
    rejects<FormatError>(with(kOpenOrca, "head_dim", -1), {"head_dim"});
    rejects<FormatError>(with(kOpenOrca, "rms_norm_eps", "1e-5"), {"rms_norm_eps", "number"});
    rejects<FormatError>(with(kOpenOrca, "rope_theta", true), {"rope_theta"});
    rejects<FormatError>(with(kOpenOrca, "sliding_window", 0), {"sliding_window"});
    rejects<FormatError>(with(kOpenOrca, "sliding_window", "4096"), {"sliding_window"});
    rejects<FormatError>(with(kOpenOrca, "tie_word_embeddings", "yes"), {"tie_word_embeddings"});
    rejects<FormatError>(with(kOpenOrca, "eos_token_id", json::array()), {"eos_token_id"});
    rejects<FormatError>(with(kOpenOrca, "eos_token_id", {2, "x"}), {"eos_token_id[1]"});
    rejects<FormatError>(with(kOpenOrca, "torch_dtype", 16), {"torch_dtype"});
    rejects<FormatError>(with(kOpenOrca, "rope_parameters", 5), {"rope_parameters"});
    rejects<FormatError>(with(kOpenOrca, "model_type", 3), {"model_type"});
    rejects<FormatError>(json::array(), {"expected an object"});
}

BOOST_AUTO_TEST_CASE(reads_files_and_folders) {
    TempDir tmp;
    write_text(tmp / "config.json", kOpenOrca);
    BOOST_CHECK_EQUAL(io::read_mistral_config(tmp.path()).vocab, 32002);
    BOOST_CHECK_EQUAL(read_mistral_config(tmp / "config.json").eos_token_id, 32000);  // re-exported name
    write_text(tmp / "bad.json", "{\"vocab_size\": 3,");
    require_throw_with<FormatError>([&] { io::read_mistral_config(tmp / "bad.json"); }, {"bad.json", "JSON"});
    write_text(tmp / "dup.json", R"({"vocab_size": 3, "vocab_size": 4})");
    require_throw_with<FormatError>([&] { io::read_mistral_config(tmp / "dup.json"); }, {"dup.json", "vocab_size"});
    write_text(tmp / "miss.json", R"({"vocab_size": 3})");
    require_throw_with<FormatError>([&] { io::read_mistral_config(tmp / "miss.json"); }, {"miss.json", "hidden_size"});
    require_throw_with<IoError>([&] { io::read_mistral_config(tmp / "none.json"); }, {"none.json"});
    const auto sub = tmp / "empty";
    std::filesystem::create_directory(sub);
    require_throw_with<IoError>([&] { io::read_mistral_config(sub); }, {"config.json"});
}

BOOST_AUTO_TEST_CASE(to_hf_json_round_trip) {
    MistralConfig c = io::parse_mistral_config(json::parse(kOpenOrca), "x");
    const json j = io::to_hf_json(c);
    BOOST_CHECK_EQUAL(j.at("model_type"), "mistral");
    BOOST_CHECK_EQUAL(j.at("architectures"), json::array({"MistralForCausalLM"}));
    BOOST_CHECK_EQUAL(j.at("hidden_act"), "silu");
    BOOST_CHECK_EQUAL(j.at("rope_theta"), 10000.0);
    BOOST_CHECK(!j.contains("rope_parameters"));
    BOOST_CHECK_EQUAL(j.at("sliding_window"), 4096);
    BOOST_CHECK_EQUAL(j.at("vocab_size"), 32002);
    BOOST_CHECK_EQUAL(j.at("torch_dtype"), "bfloat16");

    auto same = [](const MistralConfig& a, const MistralConfig& b) {
        return a.vocab == b.vocab && a.d_model == b.d_model && a.d_ff == b.d_ff && a.n_layers == b.n_layers &&
               a.n_heads == b.n_heads && a.n_kv_heads == b.n_kv_heads && a.head_dim == b.head_dim &&
               a.rms_norm_eps == b.rms_norm_eps && a.rope_theta == b.rope_theta && a.window == b.window &&
               a.max_position_embeddings == b.max_position_embeddings &&
               a.tie_word_embeddings == b.tie_word_embeddings && a.bos_token_id == b.bos_token_id &&
               a.eos_token_id == b.eos_token_id && a.torch_dtype == b.torch_dtype;
    };
    BOOST_CHECK(same(io::parse_mistral_config(j, "rt"), c));
    // full attention and odd values survive too
    c.window.reset();
    c.head_dim = 96;
    c.rope_theta = 1e6;
    c.tie_word_embeddings = true;
    c.rms_norm_eps = 1e-6;
    BOOST_CHECK(io::to_hf_json(c).at("sliding_window").is_null());
    BOOST_CHECK(same(io::parse_mistral_config(io::to_hf_json(c), "rt"), c));
    TempDir tmp;
    io::write_hf_config(tmp / "config.json", c);
    BOOST_CHECK(same(io::read_mistral_config(tmp.path()), c));
}

BOOST_AUTO_TEST_SUITE_END()
