// Model-level loss and LoRA gradients (limarp/train/grad.hpp) against PEFT fixtures: loss and
// every lora_A / lora_B gradient of tests/golden/swa_long with adapters all7 and rslora_regex,
// 5 AdamW steps (train::AdamW, torch.optim.AdamW semantics), and limarp-score --grads-out.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "common/fixtures.hpp"
#include "limarp/io/hf_config.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/model/adapters.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/train/adamw.hpp"
#include "limarp/train/grad.hpp"

using namespace limarp;
using LoraProj = Lora<DenseLinear<Cpu<>>>;
using LoraModel = MistralModel<Cpu<>, MistralBlock<Cpu<>, LoraProj>>;

namespace {

std::filesystem::path base_dir() { return test::fixture_dir("swa_long"); }
std::filesystem::path adapter_dir(const std::string& n) { return base_dir() / "adapters" / n; }
std::vector<std::int32_t> fixture_ids() { return test::ids_of(test::golden_json("swa_long"), "ids"); }
nlohmann::json ref_json(const std::string& n) {
    std::ifstream f(adapter_dir(n) / "ref.json");
    return nlohmann::json::parse(f);
}

LoraModel load_with(const std::string& adapter) {
    return LoraModel::from_dir(base_dir(), [&](MistralConfig&, LoadContext& ctx) {
        ctx.adapters.push_back({std::make_shared<io::PeftAdapter>(io::PeftAdapter::open(adapter_dir(adapter))), 1.0f});
    });
}

/// max |a - b| / max |b| of a gradient tensor against the reference file's tensor.
double grad_rel_err(const Tensor<float>& got, const io::TensorInfo& ref) {
    BOOST_REQUIRE(got.shape() == ref.shape);
    std::vector<float> r(static_cast<std::size_t>(got.size()));
    for (std::int64_t i = 0; i < got.size(); ++i) r[static_cast<std::size_t>(i)] = load_as_f32(ref.data, ref.dtype, static_cast<std::size_t>(i));
    return test::max_rel_err(got.data(), r.data(), got.size());
}

/// Checks every reference gradient of `adapter` against the model's; returns the largest error.
double check_all_grads(LoraModel& m, const std::string& adapter) {
    const auto ref = io::SafeTensorsFile::open(adapter_dir(adapter) / "ref_grads.safetensors");
    const auto got = train::lora_grad_tensors(m, adapter);
    BOOST_CHECK_EQUAL(got.size(), ref.size());
    double worst = 0;
    for (const auto& [name, t] : got) {
        BOOST_REQUIRE_MESSAGE(ref.contains(name), "no reference gradient " << name);
        const double e = grad_rel_err(*t, ref.get(name));
        BOOST_CHECK_MESSAGE(e <= 1e-3, name << ": rel err " << e);
        worst = std::max(worst, e);
    }
    return worst;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(lora_grads)

BOOST_AUTO_TEST_CASE(loss_and_grads_match_peft) {
    const auto ids = fixture_ids();
    for (const char* name : {"all7", "rslora_regex"}) {
        LoraModel m = load_with(name);
        const train::LossResult r = train::loss_and_lora_grads(m, ids);
        const double ref_loss = ref_json(name).at("loss").get<double>();
        BOOST_TEST_MESSAGE(name << ": loss " << r.loss << " (PEFT " << ref_loss << "), rel diff "
                                << std::fabs(r.loss - ref_loss) / ref_loss);
        BOOST_CHECK_EQUAL(r.n_targets, static_cast<std::int64_t>(ids.size()) - 1);
        BOOST_CHECK_LE(std::fabs(r.loss - ref_loss), 1e-5 * ref_loss);
        const double worst = check_all_grads(m, name);
        BOOST_TEST_MESSAGE(name << ": " << ref_json(name).at("n_lora_tensors") << " LoRA gradients, max rel err vs PEFT "
                                << worst);
        // The forward-only loss agrees; gradients accumulate (+=) and zero.
        const train::LossResult f = train::lm_loss(m, ids);
        BOOST_CHECK_LE(std::fabs(f.loss - r.loss), 1e-12 + 1e-9 * r.loss);
        const auto g1 = *train::lora_grad_tensors(m, name)[0].second;
        train::loss_and_lora_grads(m, ids);
        const auto& g2 = *train::lora_grad_tensors(m, name)[0].second;
        for (std::int64_t i = 0; i < g1.size(); ++i) BOOST_CHECK_CLOSE(g2[i], 2 * g1[i], 1e-3);
        train::zero_lora_grads(m);
        BOOST_CHECK_EQUAL(train::lora_grad_tensors(m, name)[0].second->data()[0], 0.0f);
    }
}

BOOST_AUTO_TEST_CASE(loss_mask_and_dropout) {
    const auto ids = fixture_ids();
    const std::int64_t T = static_cast<std::int64_t>(ids.size());
    LoraModel m = load_with("all7");
    // Masking targets: the loss is the mean over the kept ones, and a loss over only the second
    // half equals the full loss recombined from the two halves.
    std::vector<std::uint8_t> first(static_cast<std::size_t>(T), 0), second(static_cast<std::size_t>(T), 0);
    for (std::int64_t t = 1; t < T; ++t) (t <= T / 2 ? first : second)[static_cast<std::size_t>(t)] = 1;
    const auto all = train::lm_loss(m, ids);
    const auto a = train::lm_loss(m, ids, {.loss_mask = first});
    const auto b = train::lm_loss(m, ids, {.loss_mask = second});
    BOOST_CHECK_EQUAL(a.n_targets + b.n_targets, all.n_targets);
    BOOST_CHECK_CLOSE(a.loss_sum + b.loss_sum, all.loss_sum, 1e-9);
    // Gradients are linear in the loss: grads(first) * n_a + grads(second) * n_b == grads(all) * n.
    train::LossOptions oa{.loss_mask = first, .grad_scale = static_cast<float>(a.n_targets)};
    train::LossOptions ob{.loss_mask = second, .grad_scale = static_cast<float>(b.n_targets)};
    train::loss_and_lora_grads(m, ids, oa);
    train::loss_and_lora_grads(m, ids, ob);
    std::vector<Tensor<float>> parts;
    for (const auto& [n, t] : train::lora_grad_tensors(m, "all7")) parts.push_back(*t);
    train::zero_lora_grads(m);
    train::loss_and_lora_grads(m, ids, {.grad_scale = static_cast<float>(all.n_targets)});
    const auto whole = train::lora_grad_tensors(m, "all7");
    double worst = 0;
    for (std::size_t i = 0; i < parts.size(); ++i)
        worst = std::max(worst, test::max_rel_err(parts[i].data(), whole[i].second->data(), parts[i].size()));
    BOOST_TEST_MESSAGE("masked halves recombined: max rel err " << worst);
    BOOST_CHECK_LE(worst, 1e-4);
    BOOST_CHECK_THROW(train::lm_loss(m, ids, {.loss_mask = std::span(first).first(3)}), ArgumentError);
    // Dropout: reproducible for a seed, different for another, off again afterwards.
    train::zero_lora_grads(m);
    const auto d1 = train::loss_and_lora_grads(m, ids, {.lora_dropout = 0.05f, .dropout_seed = 11});
    const auto d2 = train::lm_loss(m, ids, {.lora_dropout = 0.05f, .dropout_seed = 11});
    const auto d3 = train::lm_loss(m, ids, {.lora_dropout = 0.05f, .dropout_seed = 12});
    BOOST_CHECK_EQUAL(d1.loss, d2.loss);
    BOOST_CHECK_NE(d1.loss, d3.loss);
    BOOST_CHECK_NE(d1.loss, all.loss);
    BOOST_CHECK_EQUAL(train::lm_loss(m, ids).loss, all.loss);
}

BOOST_AUTO_TEST_CASE(five_adamw_steps_match_torch) {
    const auto ids = fixture_ids();
    const auto ref = ref_json("all7").at("adamw");
    train::AdamWOptions o;
    o.lr = ref.at("lr").get<double>();
    o.weight_decay = ref.at("weight_decay").get<double>();
    o.beta1 = ref.at("betas")[0].get<double>();
    o.beta2 = ref.at("betas")[1].get<double>();
    o.eps = ref.at("eps").get<double>();
    const auto ref_losses = ref.at("losses").get<std::vector<double>>();
    // The base model with the adapter's factors as owned f32 tensors (the trainable parameters).
    LoraModel m = LoraModel::from_dir(base_dir());
    const auto adapter = io::PeftAdapter::open(adapter_dir("all7"));
    std::vector<train::ParamSlot> slots;  // grad pointers filled after the first backward
    for_each_projection(m, [&](LoraProj& p) {
        const auto mod = adapter.module(p.module(), p.in_features(), p.out_features());
        if (!mod) return;
        auto owned = [&](const io::TensorInfo& t) {
            Tensor<float> f(t.shape);
            for (std::int64_t i = 0; i < f.size(); ++i) f[i] = load_as_f32(t.data, t.dtype, static_cast<std::size_t>(i));
            Weight w = Weight::owned(std::move(f), t.name);
            slots.push_back({t.name, const_cast<float*>(w.as<float>()), nullptr, w.size()});
            return w;
        };
        LoraFactors f;
        f.adapter = "all7";
        f.A = owned(mod->A);
        f.B = owned(mod->B);
        f.file_scale = static_cast<float>(mod->scale);
        p.attach(std::move(f));
    });
    BOOST_REQUIRE_EQUAL(slots.size(), 28u);
    train::AdamW opt(o);
    train::LossWorkspace<LoraModel> ws;
    for (int step = 1; step <= 5; ++step) {
        train::zero_lora_grads(m);
        const auto r = train::loss_and_lora_grads(m, ids, {}, ws);
        const double want = ref_losses[static_cast<std::size_t>(step - 1)];
        BOOST_TEST_MESSAGE("AdamW step " << step << ": loss " << r.loss << " torch " << want << " |diff| "
                                         << std::fabs(r.loss - want));
        BOOST_CHECK_LE(std::fabs(r.loss - want), 1e-4);
        const auto grads = train::lora_grad_tensors(m, "all7");  // same order as slots: A, B per projection
        BOOST_REQUIRE_EQUAL(grads.size(), slots.size());
        for (std::size_t i = 0; i < slots.size(); ++i) {
            BOOST_REQUIRE_EQUAL(grads[i].first, slots[i].name);
            slots[i].grad = const_cast<float*>(grads[i].second->data());
        }
        opt.step(slots, o.lr);
    }
}

// Training on an 8-bit base (the seed's recipe): the LoRA gradients through QuantizedLinear's
// backward (dx from the int8 / q8_0 weights) stay close to PEFT's f32-base gradients; the gap is
// the quantization of the base (the kernel itself is exact against the dequantized weights:
// tests/quant/test_qgemm_backward.cpp).
template <class Scheme>
void check_quantized_base_grads(const std::string& activations) {
    using QModel = MistralModel<Cpu<>, MistralBlock<Cpu<>, Lora<QuantizedLinear<Scheme, Cpu<>>>>>;
    static_assert(train::supports_lora_grads_v<QModel>);
    const auto ids = fixture_ids();
    QModel m = QModel::from_dir(base_dir(), [&](MistralConfig&, LoadContext& ctx) {
        ctx.extra.push_back({kQuantActivationsOption, activations});
        ctx.adapters.push_back({std::make_shared<io::PeftAdapter>(io::PeftAdapter::open(adapter_dir("all7"))), 1.0f});
    });
    const train::LossResult r = train::loss_and_lora_grads(m, ids);
    const double ref_loss = ref_json("all7").at("loss").get<double>();
    const auto ref = io::SafeTensorsFile::open(adapter_dir("all7") / "ref_grads.safetensors");
    const auto got = train::lora_grad_tensors(m, "all7");
    BOOST_REQUIRE_EQUAL(got.size(), ref.size());
    double worst = 0;
    for (const auto& [name, t] : got) worst = std::max(worst, grad_rel_err(*t, ref.get(name)));
    BOOST_TEST_MESSAGE(Scheme::name << " base, " << activations << " activations: loss " << r.loss << " (PEFT f32 base "
                                    << ref_loss << "), LoRA grads max rel err vs PEFT " << worst);
    BOOST_CHECK_LE(std::fabs(r.loss - ref_loss), 2e-2 * ref_loss);
    BOOST_CHECK_LE(worst, 1e-1);
}

BOOST_AUTO_TEST_CASE(quantized_base_grads_close_to_peft) {
    check_quantized_base_grads<Int8Rowwise>("f32");
    check_quantized_base_grads<Int8Rowwise>("int8");
    check_quantized_base_grads<Q8_0>("f32");
}

BOOST_AUTO_TEST_CASE(score_grads_out_matches_peft) {
    const std::filesystem::path bin = std::filesystem::path(LIMARP_BIN_DIR) / "limarp-score";
    if (!std::filesystem::exists(bin)) {
        BOOST_TEST_MESSAGE("skipped: " << bin << " not built");
        return;
    }
    const auto ids = fixture_ids();
    std::string ids_arg;
    for (std::size_t i = 0; i < ids.size(); ++i) ids_arg += (i ? "," : "") + std::to_string(ids[i]);
    for (const char* name : {"all7", "rslora_regex"}) {
        const auto out = std::filesystem::temp_directory_path() /
                         ("limarp_grads_" + std::to_string(::getpid()) + "_" + name + ".safetensors");
        const auto log = out.string() + ".json";
        const std::string cmd = bin.string() + " --model " + base_dir().string() + " --adapter " +
                                adapter_dir(name).string() + " --ids " + ids_arg + " --grads-out " + out.string() +
                                " --threads 2 > " + log;
        BOOST_REQUIRE_EQUAL(std::system(cmd.c_str()), 0);
        const auto got = io::SafeTensorsFile::open(out);
        const auto ref = io::SafeTensorsFile::open(adapter_dir(name) / "ref_grads.safetensors");
        BOOST_CHECK_EQUAL(got.size(), ref.size());
        double worst = 0;
        for (const auto& n : ref.names()) {
            BOOST_REQUIRE_MESSAGE(got.contains(n), "limarp-score did not write " << n);
            const io::TensorInfo& t = got.get(n);
            BOOST_CHECK(t.dtype == DType::F32);
            Tensor<float> g(t.shape);
            std::copy_n(t.view<float>().data(), g.size(), g.data());
            worst = std::max(worst, grad_rel_err(g, ref.get(n)));
        }
        BOOST_TEST_MESSAGE("limarp-score --grads-out " << name << ": max rel err vs PEFT " << worst);
        BOOST_CHECK_LE(worst, 1e-3);
        std::ifstream lf(log);
        const auto j = nlohmann::json::parse(lf);
        BOOST_CHECK_LE(std::fabs(j.at("loss").get<double>() - ref_json(name).at("loss").get<double>()),
                       1e-5 * ref_json(name).at("loss").get<double>());
        std::filesystem::remove(out);
        std::filesystem::remove(log);
    }
}

BOOST_AUTO_TEST_SUITE_END()
