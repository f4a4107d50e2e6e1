// Full-parameter training (layers/trainable.hpp, model/parameters.hpp, train/grad.hpp): the
// gradient of every trained tensor of a small random model (embedding, norms, projections,
// lm_head) against central finite differences of the loss in double, a save_model round trip
// through the stock dense model, and a few AdamW steps that lower the loss.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "limarp/model/mistral_model.hpp"
#include "limarp/model/parameters.hpp"
#include "limarp/train/adamw.hpp"
#include "limarp/train/grad.hpp"

using namespace limarp;
using FullBlock = MistralBlock<Cpu<>, FullLinear<Cpu<>>, SwiGluMlp<Cpu<>, FullLinear<Cpu<>>>, FullRmsNorm<Cpu<>>>;
using FullModel = MistralModel<Cpu<>, FullBlock, FullLinear<Cpu<>>, FullEmbedding<Cpu<>>>;

static_assert(train::supports_training_v<FullModel>);
static_assert(!train::supports_lora_grads_v<FullModel>);

namespace {

MistralConfig tiny_config() {
    MistralConfig c;
    c.vocab = 40;
    c.d_model = 16;
    c.d_ff = 24;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;
    c.window = 5;  // < T: the sliding window matters
    c.max_position_embeddings = 64;
    return c;
}

std::vector<std::int32_t> random_ids(std::int64_t T, std::int64_t vocab, unsigned seed) {
    std::mt19937 g(seed);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T));
    for (auto& i : ids) i = static_cast<std::int32_t>(g() % static_cast<unsigned>(vocab));
    return ids;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(full_grads)

BOOST_AUTO_TEST_CASE(every_parameter_gradient_matches_finite_differences) {
    // std 0.3: large enough that every path (attention scores, gates) carries signal.
    FullModel m(tiny_config(), random_init_context(7, 0.3f));
    for_each_parameter(m, [](Param& p) {  // norm weights away from 1 too
        if (p.value.shape().size() == 1)
            for (std::int64_t i = 0; i < p.value.size(); ++i) p.value[i] = 0.7f + 0.05f * static_cast<float>(i % 9);
    });
    const auto ids = random_ids(13, 40, 3);
    zero_grads(m);
    train::loss_and_grads(m, ids, {}, *std::make_unique<train::LossWorkspace<FullModel>>());
    std::int64_t n_tensors = 0;
    double worst = 0;
    std::mt19937 pick(11);
    for_each_parameter(m, [&](Param& p) {
        ++n_tensors;
        double num2 = 0, err2 = 0;
        for (int k = 0; k < 6; ++k) {
            const std::int64_t i = static_cast<std::int64_t>(pick() % static_cast<unsigned>(p.value.size()));
            const float saved = p.value[i];
            const float h = 1e-2f * std::max(1.0f, std::fabs(saved));
            p.value[i] = saved + h;
            const double lp = train::lm_loss(m, ids).loss;
            p.value[i] = saved - h;
            const double lm = train::lm_loss(m, ids).loss;
            p.value[i] = saved;
            const double fd = (lp - lm) / (2.0 * static_cast<double>(h));
            num2 += fd * fd;
            err2 += (fd - p.grad[i]) * (fd - p.grad[i]);
        }
        // The embedding rows of tokens absent from ids have zero gradient; compare on norms.
        const double rel = std::sqrt(err2) / (std::sqrt(num2) + 1e-6);
        worst = std::max(worst, rel);
        BOOST_CHECK_MESSAGE(rel <= 2e-2, p.name << ": gradient rel err " << rel << " (|fd| " << std::sqrt(num2) << ")");
    });
    BOOST_CHECK_EQUAL(n_tensors, 1 + 2 * 9 + 2);  // embedding, 2 x (2 norms + 7 projections), final norm, lm_head
    BOOST_TEST_MESSAGE("full-parameter gradients vs finite differences: worst rel err " << worst);
}

BOOST_AUTO_TEST_CASE(saved_model_loads_in_the_stock_model_and_adamw_lowers_the_loss) {
    FullModel m(tiny_config(), random_init_context(5));
    const auto ids = random_ids(20, 40, 9);
    train::AdamWOptions o;
    o.lr = 1e-2;
    train::AdamW opt(o);
    train::LossWorkspace<FullModel> ws;
    std::vector<train::ParamSlot> slots;
    for_each_parameter(m, [&](Param& p) { slots.push_back({p.name, p.value.data(), p.grad.data(), p.value.size()}); });
    double first = 0, last = 0;
    for (int step = 0; step < 20; ++step) {
        zero_grads(m);
        const double l = train::loss_and_grads(m, ids, {}, ws).loss;
        if (step == 0) first = l;
        last = l;
        opt.step(slots);
    }
    BOOST_TEST_MESSAGE("AdamW on a random 20-token sequence: loss " << first << " -> " << last);
    BOOST_CHECK_LT(last, 0.5 * first);
    const auto dir = std::filesystem::temp_directory_path() / ("limarp_full_" + std::to_string(::getpid()));
    for (DType dt : {DType::F32, DType::BF16}) {
        save_model(m, dir, dt);
        auto dense = MistralModel<Cpu<>>::from_dir(dir);
        const Tensor<float> a = m.logits(ids), b = dense.logits(ids);
        double err = 0, mag = 0;
        for (std::int64_t i = 0; i < a.size(); ++i) err = std::max(err, std::fabs(double(a[i]) - b[i])), mag = std::max(mag, std::fabs(double(a[i])));
        BOOST_TEST_MESSAGE("saved " << (dt == DType::F32 ? "f32" : "bf16") << ": logits max rel err " << err / mag);
        BOOST_CHECK_LE(err / mag, dt == DType::F32 ? 1e-6 : 2e-2);
    }
    std::filesystem::remove_all(dir);
}

BOOST_AUTO_TEST_SUITE_END()
