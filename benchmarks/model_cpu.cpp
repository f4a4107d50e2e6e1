// bench_model_cpu: prefill and decode speed and peak memory of a random Mistral-7B-shaped model
// on the CPU backend (bf16 weights generated here, no download).
//
//   bench_model_cpu [--layers N] [--prompt T] [--decode N] [--threads N] [--quant none|int8|q8_0]
//                   [--lora-r R] [--activations int8|f32] [--d-model D] [--d-ff F] [--vocab V]
//
// --quant quantizes each generated bf16 projection at load and frees it (the lm_head and
// embeddings stay bf16); --lora-r attaches one random rank-R adapter (bf16 A and B, alpha 16)
// to all seven projections of every layer, unmerged.
// Prints one JSON line per run. Peak RSS is the process high-water mark (getrusage), i.e. it
// includes the generated weights (2 bytes per parameter).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "random_weights.hpp"

#include "limarp/core/thread_pool.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/model/adapters.hpp"
#include "limarp/model/mistral_model.hpp"

using namespace limarp;
using limarp::bench::peak_rss_gb;
using limarp::bench::random_weight;

template <class Proj>
int run(const MistralConfig& cfg, std::int64_t prompt, std::int64_t decode, std::int64_t lora_r, const std::string& quant,
        const std::string& activations);

int main(int argc, char** argv) {
    MistralConfig cfg;  // Mistral-7B-v0.1 shapes
    cfg.vocab = 32002;
    std::int64_t prompt = 128, decode = 16, lora_r = 0;
    std::string quant = "none", activations = "int8";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i];
        const std::int64_t v = std::atoll(argv[i + 1]);
        if (k == "--layers") cfg.n_layers = v;
        else if (k == "--prompt") prompt = v;
        else if (k == "--decode") decode = v;
        else if (k == "--threads") setenv("LIMARP_THREADS", argv[i + 1], 1);
        else if (k == "--d-model") cfg.d_model = v, cfg.head_dim = v / cfg.n_heads;
        else if (k == "--d-ff") cfg.d_ff = v;
        else if (k == "--vocab") cfg.vocab = v;
        else if (k == "--quant") quant = argv[i + 1];
        else if (k == "--activations") activations = argv[i + 1];
        else if (k == "--lora-r") lora_r = v;
        else {
            std::fprintf(stderr, "bench_model_cpu: unknown option %s\n", k.c_str());
            return 1;
        }
    }
    if (quant == "int8") return run<QuantizedLinear<Int8Rowwise, Cpu<>>>(cfg, prompt, decode, lora_r, quant, activations);
    if (quant == "q8_0") return run<QuantizedLinear<Q8_0, Cpu<>>>(cfg, prompt, decode, lora_r, quant, activations);
    if (quant != "none") {
        std::fprintf(stderr, "bench_model_cpu: --quant %s is not one of none, int8, q8_0\n", quant.c_str());
        return 1;
    }
    return run<DenseLinear<Cpu<>>>(cfg, prompt, decode, lora_r, quant, activations);
}

template <class Proj>
int run(const MistralConfig& cfg, std::int64_t prompt, std::int64_t decode, std::int64_t lora_r, const std::string& quant,
        const std::string& activations) {
    const auto t0 = std::chrono::steady_clock::now();
    LoadContext ctx([](const std::string& name, const Shape& s) { return random_weight(name, s); },
                    [](const std::string&) { return true; });
    ctx.extra.emplace_back(kQuantActivationsOption, activations);
    MistralModel<Cpu<>, MistralBlock<Cpu<>, Lora<Proj>>> model(cfg, ctx);
    if (lora_r > 0) {
        for_each_projection(model, [&](auto& p) {
            LoraFactors f;
            f.adapter = "bench";
            f.A = random_weight(p.module() + ".lora_A", {lora_r, p.in_features()});
            f.B = random_weight(p.module() + ".lora_B", {p.out_features(), lora_r});
            f.file_scale = 16.0f / static_cast<float>(lora_r);
            p.attach(std::move(f));
        });
    }
    const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "generated %lld layers of random bf16 weights in %.1f s\n", static_cast<long long>(cfg.n_layers), gen_s);

    std::vector<std::int32_t> ids(static_cast<std::size_t>(prompt));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7919 + 1) % static_cast<std::size_t>(cfg.vocab));
    KvCache cache = model.make_cache();
    std::vector<float> logits(static_cast<std::size_t>(cfg.vocab));
    auto t1 = std::chrono::steady_clock::now();
    model.forward(logits.data(), ids, cache, LogitsRows::Last);
    auto t2 = std::chrono::steady_clock::now();
    const double prefill_s = std::chrono::duration<double>(t2 - t1).count();
    std::int32_t next = 5;
    for (std::int64_t i = 0; i < decode; ++i) {
        model.forward(logits.data(), std::span(&next, 1), cache, LogitsRows::Last);
        next = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    const double decode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
    nlohmann::json out{{"bench", "model_cpu"}, {"layers", cfg.n_layers}, {"d_model", cfg.d_model}, {"quant", quant},
                       {"activations", quant == "none" ? "f32" : activations}, {"lora_r", lora_r},
                       {"threads", ThreadPool::global().size()}, {"prompt", prompt}, {"decode", decode},
                       {"prefill_tok_s", static_cast<double>(prompt) / prefill_s},
                       {"decode_tok_s", static_cast<double>(decode) / decode_s},
                       {"peak_rss_gb", peak_rss_gb()}, {"kv_cache_mb", static_cast<double>(cache.bytes()) / 1e6}};
    std::printf("%s\n", out.dump().c_str());
    return 0;
}
