// limarp-score: run a Mistral model over a token sequence, print loss/perplexity as one JSON line,
// optionally dump float32 logits [T, vocab] to .npy and show the most likely next tokens; with
// --grads-out, write the gradients of the loss with respect to the adapter's LoRA factors.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>
#include <set>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "common/model_dispatch.hpp"
#include "common/program.hpp"
#include "common/tokenizer_loading.hpp"
#include "limarp/backend/cpu/loss.hpp"
#include "limarp/io/npy.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/text/tokenizer.hpp"
#include "limarp/train/grad.hpp"

using namespace limarp;

int main(int argc, char** argv) {
    return programs::run_main("limarp-score", [&] {
        CLI::App app{"limarp-score: score a token sequence with a Mistral model (Hugging Face folder).\n"
                     "Prints one JSON line: {\"tokens\", \"loss\" (mean cross-entropy of the T-1 next-token "
                     "predictions), \"ppl\"} plus \"next\" (top next tokens) with --top."};
        std::string model_dir, ids_str, text, tokenizer_path, logits_out, grads_out, convention = "hf";
        int top = 0, threads = 0;
        std::int64_t chunk = 0;  // 0: the backend's default (MistralModel::kDefaultChunk)
        bool no_bos = false;
        programs::ModelOptions mo;
        app.add_option("--model", model_dir, "model folder (config.json + *.safetensors)")->required();
        auto* ids_opt = app.add_option("--ids", ids_str, "token ids, e.g. \"1,2,3\"");
        auto* text_opt = app.add_option("--text", text, "text to tokenize (needs --tokenizer)");
        app.add_option("--tokenizer", tokenizer_path, "tokenizer.model, tokenizer.json or a folder with one");
        app.add_flag("--no-bos", no_bos, "with --text: do not prepend BOS");
        app.add_option("--logits-out", logits_out, "write float32 logits [T, vocab] to this .npy file");
        app.add_option("--grads-out", grads_out,
                       "with one --adapter: write d loss / d lora_A, lora_B (dropout off) to this .safetensors file, "
                       "under PEFT's tensor names without the adapter name");
        app.add_option("--top", top, "also print the K most likely next tokens after the sequence")->check(CLI::Range(0, 1000));
        app.add_option("--window-convention", convention, "sliding window: hf (W keys, default) or mistral (W+1 keys)");
        app.add_option("--quant", mo.quant, "none | int8 | q8_0 | auto (default: what the files hold)");
        app.add_option("--kv-cache", mo.kv_cache, programs::kKvCacheHelp);
        app.add_option("--device", mo.device,
                       std::string("cpu (default) or cuda (needs a build with the CUDA backend") +
                           (programs::kHaveCuda ? "; this one has it)" : "; this one does not)"));
        app.add_option("--activations", mo.activations, "quantized paths: int8 (default) or f32 (weight-only; with --device cuda also the f32 prefill attention)");
        app.add_option("--outlier-threshold", mo.outlier_threshold, "int8: |x| above which columns use f32 (default 6, 0 = off)");
        app.add_option("--adapter", mo.adapters, "PEFT LoRA adapter folder, optionally :SCALE (repeatable)");
        app.add_option("--chunk", chunk,
                       "prefill chunk length in tokens (default: 256 on the CPU, 4096 with --device cuda)")
            ->check(CLI::PositiveNumber);
        app.add_option("--threads", threads, "worker threads (default: all cores; or LIMARP_THREADS)");
        ids_opt->excludes(text_opt);
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        if (threads > 0) setenv("LIMARP_THREADS", std::to_string(threads).c_str(), 1);
        std::optional<text::Tokenizer> tok;
        if (!tokenizer_path.empty()) tok = programs::load_tokenizer(tokenizer_path);
        std::vector<std::int32_t> ids;
        if (!ids_str.empty()) {
            ids = programs::parse_ids(ids_str);
        } else if (*text_opt) {
            if (!tok) throw ArgumentError("--text needs --tokenizer");
            for (int id : tok->encode(text, {.add_bos = !no_bos})) ids.push_back(id);
        } else {
            throw ArgumentError("give --ids or --text");
        }
        if (ids.empty()) throw ArgumentError("the sequence is empty");
        if (!grads_out.empty() && mo.adapters.size() != 1)
            throw ArgumentError("--grads-out needs exactly one --adapter (PEFT's names do not carry the adapter name)");
        if (!grads_out.empty() && ids.size() < 2) throw ArgumentError("--grads-out needs at least 2 tokens");
        mo.convention = programs::parse_window_convention(convention);
        mo.dir = model_dir;

        const auto t0 = std::chrono::steady_clock::now();
        return programs::with_model(mo, [&](auto& model) {
        if (chunk > 0) model.set_chunk_size(chunk);
        const std::int64_t T = static_cast<std::int64_t>(ids.size()), V = model.config().vocab;
        Tensor<float> logits({T, V});
        auto cache = model.make_cache();
        const auto t1 = std::chrono::steady_clock::now();
        model.forward(logits.data(), ids, cache, LogitsRows::All);
        const auto t2 = std::chrono::steady_clock::now();

        nlohmann::json out;
        out["tokens"] = T;
        if (T >= 2) {
            const double nll = ops::cross_entropy_rows(Cpu<>{}, logits.data(), ids.data() + 1, T - 1, V);
            out["loss"] = nll / static_cast<double>(T - 1);
            out["ppl"] = std::exp(nll / static_cast<double>(T - 1));
        } else {
            out["loss"] = nullptr;
            out["ppl"] = nullptr;
        }
        if (top > 0) {
            const float* last = logits.row(T - 1);
            std::vector<std::int32_t> idx(static_cast<std::size_t>(V));
            std::iota(idx.begin(), idx.end(), 0);
            const auto k = std::min<std::size_t>(static_cast<std::size_t>(top), idx.size());
            std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](auto a, auto b) { return last[a] > last[b]; });
            const float mx = last[idx[0]];
            double z = 0;
            for (std::int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(last[v] - mx));
            for (std::size_t i = 0; i < k; ++i) {
                nlohmann::json e{{"id", idx[i]}, {"prob", std::exp(static_cast<double>(last[idx[i]] - mx)) / z}};
                if (tok && idx[i] < tok->vocab_size()) e["piece"] = std::string(tok->piece(idx[i]));
                out["next"].push_back(e);
            }
        }
        if (!grads_out.empty()) {
            using Model = std::remove_reference_t<decltype(model)>;
            if constexpr (train::supports_lora_grads_v<Model>) {
                std::set<std::string> names;
                for_each_projection(model, [&](auto& p) {
                    for (const auto& f : p.adapters()) names.insert(f.adapter);
                });
                if (names.size() != 1) throw ArgumentError("--grads-out: the adapter targets no projection of this model");
                const auto tg0 = std::chrono::steady_clock::now();
                const train::LossResult r = train::loss_and_lora_grads(model, ids);
                out["grads_loss"] = r.loss;
                out["grad_tensors"] = train::save_lora_grads(model, *names.begin(), grads_out);
                out["grads_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - tg0).count();
            } else {
                throw UnsupportedError("--grads-out needs projections with a backward pass on the CPU: use --quant "
                                       "none --device cpu");
            }
        }
        out["load_s"] = std::chrono::duration<double>(t1 - t0).count();
        out["tokens_per_s"] = static_cast<double>(T) / std::chrono::duration<double>(t2 - t1).count();
        if (!logits_out.empty()) io::write_npy(logits_out, logits.data(), logits.shape());
        std::printf("%s\n", out.dump().c_str());
        return 0;
        });
    });
}
