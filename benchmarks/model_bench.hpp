#pragma once
// The model benchmark shared by bench_model_cpu (model_cpu.cpp) and bench_model_cuda
// (model_cuda.cpp): a random Mistral-7B-shaped model (bf16 weights generated here, no download),
// prefill of one or more prompt lengths and decode, on backend B.
//
//   bench_model_<cpu|cuda> [--layers N] [--prompt T[,T2,...]] [--decode N] [--threads N]
//                          [--quant none|int8|q8_0] [--lora-r R] [--lora-targets q,k,v,o,gate,up,down]
//                          [--activations int8|f32]
//                          [--kv-cache auto|f32|bf16 (auto: bf16 for int8/q8_0 on the CPU unless --activations
//                           f32, as the programs)]
//                          [--outlier-threshold X (int8 activations; default 6, 0 = off)]
//                          [--chunk C (default: the model's, 256 on the CPU, 4096 on CUDA)]
//                          [--d-model D] [--d-ff F] [--vocab V]
//                          [--sampler host|greedy|topk|chat (CUDA: where decode picks its tokens)]
//                          [--device-pick step|after (CUDA device sampler: inside the step, or after it)]
//
// --quant quantizes each generated bf16 projection at load and frees it (the lm_head and
// embeddings stay bf16); --lora-r attaches one random rank-R adapter (bf16 A and B, alpha 16)
// to all seven projections of every layer (or to those --lora-targets names), unmerged. Each prompt length is prefilled into a fresh
// cache (twice: a warm-up, then the timed run; on the CPU only the first length is warmed up,
// to save minutes at 7B); decode continues after the last
// prompt: greedy on the host by default (the logits cross to the host every token, as in
// limarp-generate --host-sampling); on CUDA, --sampler greedy, topk or chat picks on the GPU
// through MistralModel::forward_pick and cuda_api::TokenSampler (only the id crosses; topk:
// temperature 0.7, top-k 40, top-p 0.9, repetition penalty 1.1 over 64 tokens; chat: limarp-chat's
// defaults, temperature 0.7, min-p 0.05, repetition penalty 1.1 over 64), as limarp-generate does:
// the pick inside the model's step, recorded into the decode step's CUDA graph (--device-pick
// after: a picker called after the step, outside the graph, as before session 8).
// Prints one JSON line. Peak RSS is the process high-water mark (getrusage), i.e. it includes the
// generated weights (2 bytes per parameter).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "random_weights.hpp"

#if defined(LIMARP_WITH_CUDA_BACKEND)
#include "limarp/backend/cuda/api.hpp"
#endif

#include "limarp/core/thread_pool.hpp"
#include "limarp/generate/sampler.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/model/adapters.hpp"
#include "limarp/model/mistral_model.hpp"

namespace limarp::bench {

/// The short names of Mistral's seven projections, as --lora-targets takes them.
inline const std::vector<std::string> kProjectionShortNames{"q", "k", "v", "o", "gate", "up", "down"};

struct ModelBenchArgs {
    MistralConfig cfg;
    std::vector<std::int64_t> prompts{128};
    std::int64_t decode = 16, lora_r = 0, chunk = 0;  // chunk 0: the model's default
    std::string quant = "none", activations = "int8", outlier_threshold = "6", sampler = "host", device_pick = "step";
    std::string kv_cache = "auto";
    std::vector<std::string> lora_targets = kProjectionShortNames;  ///< projections with an adapter
};

/// The short name of a projection module ("model.layers.3.mlp.gate_proj" -> "gate").
inline std::string projection_short_name(const std::string& module) {
    std::string last = module.substr(module.rfind('.') + 1);
    if (last.size() > 5 && last.compare(last.size() - 5, 5, "_proj") == 0) last.resize(last.size() - 5);
    return last;
}

template <class B, class Proj>
int run_model_bench(const char* name, const ModelBenchArgs& a) {
    const MistralConfig& cfg = a.cfg;
    const auto t0 = std::chrono::steady_clock::now();
    LoadContext ctx([](const std::string& n, const Shape& s) { return random_weight(n, s); },
                    [](const std::string&) { return true; });
    ctx.extra.emplace_back(kQuantActivationsOption, a.activations);
    ctx.extra.emplace_back(kQuantOutlierOption, a.outlier_threshold);
    MistralModel<B, MistralBlock<B, Lora<Proj>>> model(cfg, ctx);
    if (a.chunk > 0) model.set_chunk_size(a.chunk);
    const DType kv = a.kv_cache == "auto"
                         ? auto_kv_cache_dtype(B::host_memory, a.quant != "none", a.activations == "f32")
                         : kv_cache_dtype(a.kv_cache);
    model.set_cache_dtype(kv);
    if (a.lora_r > 0) {
        for_each_projection(model, [&](auto& p) {
            if (std::find(a.lora_targets.begin(), a.lora_targets.end(), projection_short_name(p.module())) ==
                a.lora_targets.end())
                return;
            LoraFactors f;
            f.adapter = "bench";
            f.A = random_weight(p.module() + ".lora_A", {a.lora_r, p.in_features()});
            f.B = random_weight(p.module() + ".lora_B", {p.out_features(), a.lora_r});
            f.file_scale = 16.0f / static_cast<float>(a.lora_r);
            p.attach(std::move(f));
        });
    }
    const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "%s: built %lld layers from random bf16 weights in %.1f s\n", name,
                 static_cast<long long>(cfg.n_layers), gen_s);

    nlohmann::json out{{"bench", name},        {"layers", cfg.n_layers},   {"d_model", cfg.d_model},
                       {"quant", a.quant},      {"lora_r", a.lora_r},       {"chunk", model.chunk_size()},
                       {"lora_targets", a.lora_r > 0 ? a.lora_targets : std::vector<std::string>{}},
                       {"activations", a.quant == "none" ? "f32" : a.activations},
                       {"outlier_threshold", a.outlier_threshold}, {"kv_cache", kv == DType::BF16 ? "bf16" : "f32"},
                       {"threads", ThreadPool::global().size()}, {"decode", a.decode}};
    std::vector<float> logits(static_cast<std::size_t>(cfg.vocab));
    auto cache = model.make_cache();
    for (std::size_t pi = 0; pi < a.prompts.size(); ++pi) {
        const std::int64_t prompt = a.prompts[pi];
        std::vector<std::int32_t> ids(static_cast<std::size_t>(prompt));
        for (std::size_t i = 0; i < ids.size(); ++i)
            ids[i] = static_cast<std::int32_t>((i * 7919 + 1) % static_cast<std::size_t>(cfg.vocab));
        // warm-up (workspaces, cuBLAS heuristics, page faults): before the first length, and on a
        // GPU before every length (its workspaces grow per shape; a CPU run would double its time)
        if (pi == 0 || !B::host_memory) {
            auto warm = model.make_cache();
            model.forward(logits.data(), ids, warm, LogitsRows::Last);
        }
        cache = model.make_cache();
        const auto t1 = std::chrono::steady_clock::now();
        model.forward(logits.data(), ids, cache, LogitsRows::Last);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
        out["prefill"].push_back({{"prompt", prompt}, {"tok_s", static_cast<double>(prompt) / s}, {"s", s}});
        std::fprintf(stderr, "%s: prompt %lld: %.1f tok/s\n", name, static_cast<long long>(prompt),
                     static_cast<double>(prompt) / s);
    }
    std::int32_t next = 5;
    std::vector<std::int32_t> history{next};
    std::function<std::int32_t(float*, std::int64_t)> device_pick;
#if defined(LIMARP_WITH_CUDA_BACKEND)
    std::optional<cuda_api::TokenSampler> device_sampler;
    if constexpr (!B::host_memory)
        if (a.sampler != "host") {
            generate::SamplerParams sp;
            sp.temperature = 0.0f;
            if (a.sampler == "topk") {
                sp.temperature = 0.7f;
                sp.top_k = 40;
                sp.top_p = 0.9f;
                sp.repetition_penalty = 1.1f;
                sp.penalty_range = 64;
            } else if (a.sampler == "chat") {  // limarp-chat's defaults (the model card's advice)
                sp.temperature = 0.7f;
                sp.min_p = 0.05f;
                sp.repetition_penalty = 1.1f;
                sp.penalty_range = 64;
            }
            device_sampler.emplace(sp);
            device_pick = [&](float* l, std::int64_t vocab) { return device_sampler->sample(l, vocab, history); };
        }
#endif
    if (a.sampler != "host" && !device_pick) {
        std::fprintf(stderr, "%s: --sampler %s needs the CUDA backend\n", name, a.sampler.c_str());
        return 1;
    }
    out["sampler"] = a.sampler;
    if (a.sampler != "host") out["device_pick"] = a.device_pick;
    auto step = [&] {
#if defined(LIMARP_WITH_CUDA_BACKEND)
        if constexpr (!B::host_memory)
            if (device_sampler && a.device_pick == "step") {
                next = model.forward_pick(std::span(&next, 1), cache, *device_sampler, history);
                history.push_back(next);
                return;
            }
#endif
        if (device_pick) {
            next = model.forward_pick(std::span(&next, 1), cache, device_pick);
            history.push_back(next);
            return;
        }
        model.forward(logits.data(), std::span(&next, 1), cache, LogitsRows::Last);
        next = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    };
    for (int i = 0; i < 2 && a.decode > 0; ++i) step();  // warm-up
    const auto t2 = std::chrono::steady_clock::now();
    for (std::int64_t i = 0; i < a.decode; ++i) step();
    const double decode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
    out["decode_tok_s"] = static_cast<double>(a.decode) / decode_s;
    out["decode_ms_per_token"] = 1e3 * decode_s / static_cast<double>(std::max<std::int64_t>(1, a.decode));
    out["peak_rss_gb"] = peak_rss_gb();
    out["kv_cache_mb"] = static_cast<double>(cache.bytes()) / 1e6;
    // backwards-compatible keys of the first prompt
    out["prompt"] = a.prompts.front();
    out["prefill_tok_s"] = out["prefill"][0]["tok_s"];
    std::printf("%s\n", out.dump().c_str());
    return 0;
}

/// Parses the flags (see the file comment) and runs backend B. Returns the exit code.
template <class B>
int model_bench_main(const char* name, int argc, char** argv) {
    ModelBenchArgs a;
    a.cfg.vocab = 32002;  // Mistral-7B-v0.1 shapes otherwise (MistralConfig's defaults)
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i];
        const std::int64_t v = std::atoll(argv[i + 1]);
        if (k == "--layers") a.cfg.n_layers = v;
        else if (k == "--prompt") {
            a.prompts.clear();
            std::stringstream ss(argv[i + 1]);
            for (std::string p; std::getline(ss, p, ',');) a.prompts.push_back(std::atoll(p.c_str()));
        }
        else if (k == "--decode") a.decode = v;
        else if (k == "--threads") setenv("LIMARP_THREADS", argv[i + 1], 1);
        else if (k == "--d-model") a.cfg.d_model = v, a.cfg.head_dim = v / a.cfg.n_heads;
        else if (k == "--d-ff") a.cfg.d_ff = v;
        else if (k == "--vocab") a.cfg.vocab = v;
        else if (k == "--quant") a.quant = argv[i + 1];
        else if (k == "--activations") a.activations = argv[i + 1];
        else if (k == "--outlier-threshold") a.outlier_threshold = argv[i + 1];
        else if (k == "--lora-r") a.lora_r = v;
        else if (k == "--lora-targets") {
            a.lora_targets.clear();
            std::stringstream ss(argv[i + 1]);
            for (std::string t; std::getline(ss, t, ',');) a.lora_targets.push_back(t);
            const auto& known = kProjectionShortNames;
            const auto unknown = std::find_if(a.lora_targets.begin(), a.lora_targets.end(), [&](const std::string& t) {
                return std::find(known.begin(), known.end(), t) == known.end();
            });
            if (a.lora_targets.empty() || unknown != a.lora_targets.end()) {
                std::string names;
                for (const auto& n : known) names += (names.empty() ? "" : ", ") + n;
                std::fprintf(stderr, "%s: --lora-targets %s: give names from %s\n", name, argv[i + 1], names.c_str());
                return 1;
            }
        }
        else if (k == "--chunk") a.chunk = v;
        else if (k == "--sampler") a.sampler = argv[i + 1];
        else if (k == "--device-pick") a.device_pick = argv[i + 1];
        else if (k == "--kv-cache") a.kv_cache = argv[i + 1];
        else {
            std::fprintf(stderr, "%s: unknown option %s\n", name, k.c_str());
            return 1;
        }
    }
    if (a.sampler != "host" && a.sampler != "greedy" && a.sampler != "topk" && a.sampler != "chat") {
        std::fprintf(stderr, "%s: --sampler %s is not one of host, greedy, topk, chat\n", name, a.sampler.c_str());
        return 1;
    }
    if (a.kv_cache != "auto" && a.kv_cache != "f32" && a.kv_cache != "bf16") {
        std::fprintf(stderr, "%s: --kv-cache %s is not one of auto, f32, bf16\n", name, a.kv_cache.c_str());
        return 1;
    }
    if (a.kv_cache == "bf16" && !B::host_memory) {
        std::fprintf(stderr, "%s: --kv-cache bf16: this backend keeps an f32 cache (use f32 or auto)\n", name);
        return 1;
    }
    if (a.device_pick != "step" && a.device_pick != "after") {
        std::fprintf(stderr, "%s: --device-pick %s is not one of step, after\n", name, a.device_pick.c_str());
        return 1;
    }
    if (a.prompts.empty() || *std::min_element(a.prompts.begin(), a.prompts.end()) < 1) {
        std::fprintf(stderr, "%s: --prompt needs lengths >= 1\n", name);
        return 1;
    }
    if (a.quant == "int8") return run_model_bench<B, QuantizedLinear<Int8Rowwise, B>>(name, a);
    if constexpr (B::host_memory)
        if (a.quant == "q8_0") return run_model_bench<B, QuantizedLinear<Q8_0, B>>(name, a);
    if (a.quant != "none") {
        std::fprintf(stderr, "%s: --quant %s is not one of none, int8%s\n", name, a.quant.c_str(),
                     B::host_memory ? ", q8_0" : " (q8_0 is CPU-only)");
        return 1;
    }
    return run_model_bench<B, DenseLinear<B>>(name, a);
}

}  // namespace limarp::bench
