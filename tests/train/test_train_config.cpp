// Tests for limarp/train/train_config.hpp: defaults (the seed's recipe), an Axolotl-style file,
// errors naming key and line, Axolotl keys without effect, key=value overrides, YAML round trip.
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "limarp/train/train_config.hpp"

using namespace limarp;
using namespace limarp::train;
namespace fs = std::filesystem;

namespace {

template <class E>
std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    return "(no exception of the expected type)";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(train_config)

BOOST_AUTO_TEST_CASE(defaults_are_the_seed_recipe) {
    const TrainConfig c;
    BOOST_TEST(c.lora_r == 256);
    BOOST_TEST(c.lora_alpha == 16.0);
    BOOST_TEST(c.lora_dropout == 0.05);
    BOOST_TEST(c.lora_target_modules ==
               (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
    BOOST_TEST(c.sequence_len == 9500);
    BOOST_TEST(c.train_on_inputs);
    BOOST_TEST(c.load_in_8bit);
    BOOST_TEST(c.micro_batch_size * c.gradient_accumulation_steps == 4);  // the seed's effective batch
    const auto lc = c.lora_config();
    BOOST_TEST(lc.r == 256);
    BOOST_TEST(lc.target_modules.size() == 7u);
    const auto d = c.dataset_options();
    BOOST_TEST(d.sequence_len == 9500);
    BOOST_TEST(d.train_on_inputs);
    BOOST_TEST((d.length_bins == LengthBins{}));
    // An empty file is the defaults; validate() wants base_model and datasets.
    const auto e = parse_train_config("", "empty.yaml");
    BOOST_TEST(e.lora_r == 256);
    BOOST_TEST(error_of<ArgumentError>([&] { e.validate(); }).find("base_model") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(axolotl_style_file) {
    const auto c = load_train_config(fs::path(LIMARP_TRAIN_DATA) / "train.yaml");
    BOOST_TEST(c.base_model == "./models/Mistral-7B-OpenOrca");
    BOOST_REQUIRE(c.datasets.size() == 2u);
    BOOST_TEST(c.datasets[0].path == "tests/train/data/limarp");
    BOOST_TEST(c.datasets[0].type == "limarp");
    BOOST_TEST(c.datasets[1].type.empty());
    BOOST_TEST(c.lora_r == 64);
    BOOST_TEST(c.lora_alpha == 32.0);
    BOOST_TEST(c.lora_target_modules == (std::vector<std::string>{"q_proj", "v_proj"}));
    BOOST_TEST(c.sequence_len == 4096);
    BOOST_TEST(!c.train_on_inputs);
    BOOST_TEST(c.val_set_size == 0.1);
    BOOST_TEST((c.length_unit == LengthUnit::Tokens));
    BOOST_TEST((c.bins() == LengthBins::defaults(LengthUnit::Tokens)));
    BOOST_TEST((c.lr_scheduler == ScheduleKind::Linear));
    BOOST_TEST(c.learning_rate == 0.00015);
    BOOST_TEST(c.num_epochs == 3);
    BOOST_TEST(c.seed == 7u);
    BOOST_TEST(c.max_grad_norm == 0.5);
    BOOST_REQUIRE(c.warnings.size() == 4u);  // strict, bf16, flash_attention, wandb_project
    BOOST_TEST(c.warnings[1].find("train.yaml:6: key 'bf16' is an Axolotl setting without effect") != std::string::npos);
    BOOST_CHECK_NO_THROW(c.validate());
    const auto s = c.schedule(100);
    BOOST_TEST((s.kind == ScheduleKind::Linear));
    BOOST_TEST(s.warmup_steps == 5);
    BOOST_TEST(s.total_steps == 100);
    const auto o = c.adamw_options();
    BOOST_TEST(o.weight_decay == 0.01);
    BOOST_TEST(o.lr == 0.00015);
}

BOOST_AUTO_TEST_CASE(errors_name_key_and_line) {
    const std::string unknown = error_of<FormatError>([] { parse_train_config("lora_r: 8\nlora_rank: 16\n", "c.yaml"); });
    BOOST_TEST_INFO(unknown);
    BOOST_TEST(unknown.find("c.yaml:2: unknown key 'lora_rank' (did you mean 'lora_r'?)") == 0u);
    const std::string type = error_of<FormatError>([] { parse_train_config("\n\nlora_r: eight\n", "c.yaml"); });
    BOOST_TEST(type == "c.yaml:3: field 'lora_r': expected an integer, got \"eight\"");
    const std::string list = error_of<FormatError>([] { parse_train_config("lora_target_modules: {a: 1}\n", "c.yaml"); });
    BOOST_TEST(list.find("c.yaml:1: field 'lora_target_modules': expected a list of strings") == 0u);
    const std::string sched = error_of<FormatError>([] { parse_train_config("lr_scheduler: polynomial\n", "c.yaml"); });
    BOOST_TEST(sched.find("c.yaml:1: field 'lr_scheduler': unknown lr_scheduler \"polynomial\"") == 0u);
    const std::string yaml = error_of<FormatError>([] { parse_train_config("a: [1, 2\n", "c.yaml"); });
    BOOST_TEST(yaml.find("invalid YAML") != std::string::npos);
    const std::string ds = error_of<FormatError>([] { parse_train_config("datasets:\n  - path: x\n    typ: limarp\n", "c.yaml"); });
    BOOST_TEST(ds.find("c.yaml:2: field 'datasets[0]': unknown key 'typ'") == 0u);
    const std::string bins = error_of<FormatError>([] { parse_train_config("length_bins: [1, 2, 3]\n", "c.yaml"); });
    BOOST_TEST(bins.find("expected 9 integers") != std::string::npos);
    // Axolotl settings that would change the result are refused.
    BOOST_CHECK_THROW(parse_train_config("load_in_4bit: true\n", "c.yaml"), UnsupportedError);
    BOOST_CHECK_THROW(parse_train_config("lora_modules_to_save: [embed_tokens]\n", "c.yaml"), UnsupportedError);
    BOOST_CHECK_NO_THROW(parse_train_config("load_in_4bit: false\nlora_fan_in_fan_out: false\n", "c.yaml"));
}

BOOST_AUTO_TEST_CASE(validation_names_the_field) {
    TrainConfig c;
    c.base_model = "m";
    c.datasets = {{"d", ""}};
    BOOST_CHECK_NO_THROW(c.validate());
    auto bad = [&](auto mutate, const char* field) {
        TrainConfig x = c;
        mutate(x);
        const std::string m = error_of<ArgumentError>([&] { x.validate(); });
        BOOST_TEST_INFO(m);
        BOOST_TEST(m.find(std::string("config: ") + field + ":") == 0u);
    };
    bad([](TrainConfig& x) { x.lora_r = 0; }, "lora_r");
    bad([](TrainConfig& x) { x.lora_dropout = 1; }, "lora_dropout");
    bad([](TrainConfig& x) { x.lora_target_modules = {"qkv"}; }, "lora_target_modules");
    bad([](TrainConfig& x) { x.val_set_size = 2.5; }, "val_set_size");
    bad([](TrainConfig& x) { x.length_bins = std::array<std::int64_t, 9>{5, 4, 3, 2, 1, 6, 7, 8, 9}; }, "length_bins");
    bad([](TrainConfig& x) { x.optimizer = "sgd"; }, "optimizer");
    bad([](TrainConfig& x) { x.gradient_accumulation_steps = 0; }, "gradient_accumulation_steps");
    bad([](TrainConfig& x) { x.datasets.clear(); }, "datasets");
    TrainConfig lin = c;
    lin.lora_target_linear = true;
    lin.lora_target_modules.clear();
    BOOST_CHECK_NO_THROW(lin.validate());
    BOOST_TEST(lin.lora_config().target_modules.size() == 7u);
    TrainConfig ratio = c;
    ratio.warmup_steps = 0;
    ratio.warmup_ratio = 0.03;
    BOOST_TEST(ratio.warmup_for(1000) == 30);
}

BOOST_AUTO_TEST_CASE(overrides) {
    TrainConfig c;
    apply_overrides(c, std::vector<std::string>{"lora_r=8", "--lora-alpha=4", "lora_target_modules=q_proj,v_proj",
                                                "train_on_inputs=false", "output_dir=./runs/a b:1",
                                                "datasets=[{path: d1, type: jsonl}, d2]", "lr_scheduler=constant",
                                                "length_bins=[1,2,3,4,5,6,7,8,9]", "seed=18446744073709551615"});
    BOOST_TEST(c.lora_r == 8);
    BOOST_TEST(c.lora_alpha == 4.0);
    BOOST_TEST(c.lora_target_modules == (std::vector<std::string>{"q_proj", "v_proj"}));
    BOOST_TEST(!c.train_on_inputs);
    BOOST_TEST(c.output_dir == "./runs/a b:1");  // strings verbatim
    BOOST_REQUIRE(c.datasets.size() == 2u);
    BOOST_TEST(c.datasets[0].type == "jsonl");
    BOOST_TEST(c.datasets[1].path == "d2");
    BOOST_TEST((c.lr_scheduler == ScheduleKind::Constant));
    BOOST_TEST(c.bins().upper[8] == 9);
    BOOST_TEST(c.seed == 18446744073709551615ull);
    BOOST_CHECK_THROW(apply_override(c, "lora_r"), ArgumentError);
    const std::string m = error_of<FormatError>([&] { apply_override(c, "lora_r=x"); });
    BOOST_TEST(m == "override lora_r=x: field 'lora_r': expected an integer, got \"x\"");
    BOOST_CHECK_THROW(apply_override(c, "lora_rr=1"), FormatError);
}

BOOST_AUTO_TEST_CASE(yaml_round_trip_and_keys) {
    auto c = load_train_config(fs::path(LIMARP_TRAIN_DATA) / "train.yaml");
    c.length_bins = std::array<std::int64_t, 9>{3, 6, 9, 12, 15, 18, 21, 24, 27};
    c.resume_from_checkpoint = "auto";
    const std::string y = to_yaml(c);
    auto back = parse_train_config(y, "saved.yaml");
    BOOST_TEST_INFO(y);
    BOOST_TEST(back.warnings.empty());
    back.warnings = c.warnings;
    BOOST_TEST(to_yaml(back) == y);
    BOOST_TEST(back.learning_rate == c.learning_rate);
    BOOST_TEST((back.datasets == c.datasets));
    BOOST_TEST(*back.length_bins == *c.length_bins);
    BOOST_TEST(y.find("lora_target_modules: [q_proj, v_proj]") != std::string::npos);
    const auto keys = train_config_keys();
    BOOST_TEST(keys.size() > 40u);
    bool found = false;
    for (const auto& k : keys)
        if (k.name == "lora_r") {
            found = true;
            BOOST_TEST(k.default_value == "256");
            BOOST_TEST(k.type == "integer");
        }
    BOOST_TEST(found);
    const TrainConfig d;
    const auto dd = parse_train_config(to_yaml(d), "defaults.yaml");
    BOOST_TEST(to_yaml(dd) == to_yaml(d));
}

BOOST_AUTO_TEST_SUITE_END()
