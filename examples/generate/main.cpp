// limarp-generate: continue a token sequence with a Mistral model (greedy at temperature 0).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/program.hpp"
#include "limarp/model/mistral_model.hpp"

using namespace limarp;

int main(int argc, char** argv) {
    return programs::run_main("limarp-generate", [&] {
        CLI::App app{"limarp-generate: continue a token sequence with a Mistral model (Hugging Face folder).\n"
                     "At temperature 0 the continuation is greedy. With --print-ids the new token ids are\n"
                     "printed on one line, separated by spaces."};
        std::string model_dir, ids_str, convention = "hf";
        int max_new = 32, threads = 0, eos = -1;
        double temperature = 0;
        unsigned seed = 0;
        bool print_ids = false, stats = false;
        app.add_option("--model", model_dir, "model folder (config.json + *.safetensors)")->required();
        app.add_option("--ids", ids_str, "prompt token ids, e.g. \"1,2,3\"")->required();
        app.add_option("--max-new", max_new, "number of new tokens")->check(CLI::NonNegativeNumber);
        app.add_option("--temperature", temperature, "0 = greedy; > 0 samples from softmax(logits / T)")->check(CLI::NonNegativeNumber);
        app.add_option("--seed", seed, "random seed for sampling");
        app.add_option("--eos", eos, "stop after this id (default: none; -1 = none)");
        app.add_flag("--print-ids", print_ids, "print the new ids on one line (the default output)");
        app.add_flag("--stats", stats, "print prefill/decode tokens per second to stderr");
        app.add_option("--window-convention", convention, "sliding window: hf (W keys, default) or mistral (W+1 keys)");
        app.add_option("--threads", threads, "worker threads (default: all cores; or LIMARP_THREADS)");
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        if (threads > 0) setenv("LIMARP_THREADS", std::to_string(threads).c_str(), 1);
        const auto ids = programs::parse_ids(ids_str);
        if (ids.empty()) throw ArgumentError("--ids: the prompt is empty");
        const auto conv = programs::parse_window_convention(convention);
        auto model = MistralModel<Cpu<>>::from_dir(model_dir, [&](MistralConfig& c, LoadContext&) { c.window_convention = conv; });
        const std::int64_t V = model.config().vocab;
        KvCache cache = model.make_cache();
        std::vector<float> logits(static_cast<std::size_t>(V));
        std::mt19937_64 rng(seed);
        std::vector<std::int32_t> out, next = ids;
        double t_prefill = 0, t_decode = 0;
        for (int i = 0; i < max_new; ++i) {
            const auto t0 = std::chrono::steady_clock::now();
            model.forward(logits.data(), next, cache, LogitsRows::Last);
            (i == 0 ? t_prefill : t_decode) += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::int32_t tok;
            if (temperature <= 0) {
                tok = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
            } else {
                const float mx = *std::max_element(logits.begin(), logits.end());
                std::vector<double> w(logits.size());
                for (std::size_t v = 0; v < w.size(); ++v) w[v] = std::exp((logits[v] - mx) / temperature);
                tok = static_cast<std::int32_t>(std::discrete_distribution<std::size_t>(w.begin(), w.end())(rng));
            }
            out.push_back(tok);
            if (tok == eos) break;
            next = {tok};
        }
        std::string line;
        for (std::size_t i = 0; i < out.size(); ++i) line += (i ? " " : "") + std::to_string(out[i]);
        std::printf("%s\n", line.c_str());
        if (stats && !out.empty())
            std::fprintf(stderr, "prefill %.1f tok/s, decode %.2f tok/s\n", static_cast<double>(ids.size()) / t_prefill,
                         out.size() > 1 ? static_cast<double>(out.size() - 1) / t_decode : 0.0);
        return 0;
    });
}
