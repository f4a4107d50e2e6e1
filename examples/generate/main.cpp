// limarp-generate: continue a prompt with a Mistral model: token ids (--ids), a text file
// (--prompt-file), or a LimaRP roleplay prompt built from --char/--persona/--message...
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "common/model_dispatch.hpp"
#include "common/program.hpp"
#include "common/sampler_flags.hpp"
#include "common/token_picker.hpp"
#include "common/tokenizer_loading.hpp"
#include "limarp/generate/generator.hpp"
#include "limarp/generate/sampler.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/chatml.hpp"
#include "limarp/text/tokenizer.hpp"

using namespace limarp;

namespace {

std::string read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw IoError(path + ": cannot open");
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
    return programs::run_main("limarp-generate", [&] {
        CLI::App app{
            "limarp-generate: continue a prompt with a Mistral model (Hugging Face folder).\n"
            "The prompt is one of: --ids (token ids; prints the new ids, or the text with --tokenizer),\n"
            "--prompt-file (text, special-token strings parsed), or the LimaRP roleplay prompt built\n"
            "from --char, --user, --persona, --user-persona, --scenario, --first-message, --message and\n"
            "--length (or ChatML with --format chatml). Text output is streamed; at temperature 0 the\n"
            "continuation is greedy."};
        std::string model_dir, ids_str, convention = "hf", tokenizer_path, prompt_file, format = "alpaca";
        std::string char_name = "Character", user_name = "User", persona, user_persona, scenario, first_message,
                    message, length;
        std::vector<std::string> stops;
        int max_new = 32, threads = 0, eos = -1;
        std::int64_t context = 0;
        std::uint64_t seed = 0;
        bool print_ids = false, stats = false, no_bos = false, show_prompt = false, no_stop = false, host_sampling = false;
        programs::SamplerFlags sf;
        sf.p.temperature = 0.0f;  // greedy unless asked
        programs::ModelOptions mo;
        app.add_option("--model", model_dir, "model folder (config.json + *.safetensors)")->required();
        auto* ids_opt = app.add_option("--ids", ids_str, "prompt token ids, e.g. \"1,2,3\"");
        auto* file_opt =
            app.add_option("--prompt-file", prompt_file, "prompt text file (BOS prepended; <|im_start|> etc. parsed)");
        app.add_option("--tokenizer", tokenizer_path,
                       "tokenizer.model, tokenizer.json or a folder (default: the model folder)");
        app.add_option("--max-new", max_new, "number of new tokens")->check(CLI::NonNegativeNumber);
        sf.add(app);
        app.add_option("--seed", seed, "random seed for sampling");
        app.add_option("--eos", eos,
                       "stop after this id (default: none for --ids, the tokenizer's EOS ids otherwise; -1 = none)");
        app.add_flag("--print-ids", print_ids,
                     "print the new ids on one line (the default output without a tokenizer)");
        app.add_flag("--stats", stats, "print prefill/decode tokens per second (and where tokens are sampled) to stderr");
        app.add_flag("--host-sampling", host_sampling, programs::kHostSamplingHelp);
        app.add_option("--window-convention", convention, "sliding window: hf (W keys, default) or mistral (W+1 keys)");
        app.add_option("--threads", threads, "worker threads (default: all cores; or LIMARP_THREADS)");
        app.add_option("--quant", mo.quant, "none | int8 | q8_0 | auto (default: what the files hold)");
        app.add_option("--kv-cache", mo.kv_cache, programs::kKvCacheHelp);
        app.add_option("--device", mo.device,
                       std::string("cpu (default) or cuda (needs a build with the CUDA backend") +
                           (programs::kHaveCuda ? "; this one has it)" : "; this one does not)"));
        app.add_option("--activations", mo.activations, "quantized paths: int8 (default) or f32 (weight-only; with --device cuda also the f32 prefill attention)");
        app.add_option("--outlier-threshold", mo.outlier_threshold,
                       "int8: |x| above which columns use f32 (default 6, 0 = off)");
        app.add_option("--adapter", mo.adapters, "PEFT LoRA adapter folder, optionally :SCALE (repeatable)");
        auto* char_opt =
            app.add_option("--char", char_name, "LimaRP prompt: the character's name")->capture_default_str();
        auto* user_opt = app.add_option("--user", user_name, "LimaRP prompt: the user's name")->capture_default_str();
        auto* persona_opt = app.add_option("--persona", persona, "LimaRP prompt: the character's persona");
        auto* uper_opt = app.add_option("--user-persona", user_persona, "LimaRP prompt: the user's persona");
        auto* scen_opt = app.add_option("--scenario", scenario, "LimaRP prompt: the scenario");
        auto* first_opt =
            app.add_option("--first-message", first_message, "LimaRP prompt: the character's opening message");
        auto* msg_opt = app.add_option("--message", message, "LimaRP prompt: the user's message to answer");
        auto* len_opt =
            app.add_option("--length", length,
                           "LimaRP prompt: response length tag (micro, tiny, short, medium, long, massive, huge, "
                           "enormous, humongous, unlimited; none = the model chooses)");
        app.add_option("--format", format,
                       "roleplay prompt format: alpaca (LimaRP, default) or chatml (OpenOrca base)");
        app.add_option("--context", context,
                       "token budget of prompt + reply; older turns are dropped to fit (0 = no limit)");
        app.add_option("--stop", stops, "extra stop string (repeatable)");
        app.add_flag("--no-stop-strings", no_stop, "do not use the prompt format's default stop strings");
        app.add_flag("--no-bos", no_bos, "do not prepend BOS to a text prompt");
        app.add_flag("--show-prompt", show_prompt, "print the prompt text to stderr");
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        if (threads > 0) setenv("LIMARP_THREADS", std::to_string(threads).c_str(), 1);
        const bool roleplay =
            *char_opt || *user_opt || *persona_opt || *uper_opt || *scen_opt || *first_opt || *msg_opt || *len_opt;
        if (static_cast<int>(bool(*ids_opt)) + static_cast<int>(bool(*file_opt)) + static_cast<int>(roleplay) != 1)
            throw ArgumentError(
                "give exactly one prompt: --ids, --prompt-file, or the LimaRP fields (--message, --persona, ...)");
        if (format != "alpaca" && format != "chatml")
            throw ArgumentError("--format: \"" + format + "\" is not one of alpaca, chatml");
        const auto sampler_params = sf.params(seed);
        generate::Sampler sampler(sampler_params);  // validates the flags before the model loads
        const auto length_tag = text::parse_optional_length_tag(length);
        mo.convention = programs::parse_window_convention(convention);
        mo.dir = model_dir;
        return programs::with_model(mo, [&](auto& model) {
            const std::int64_t V = model.config().vocab;

            std::optional<text::Tokenizer> tok;
            if (!tokenizer_path.empty()) {
                tok = programs::load_tokenizer(tokenizer_path);
            } else if (!*ids_opt) {
                if (!std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.model") &&
                    !std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json"))
                    throw ArgumentError(
                        "a text prompt needs --tokenizer (the model folder has no tokenizer.model or tokenizer.json)");
                tok = text::Tokenizer::from_dir(model_dir);
            }
            if (tok && tok->vocab_size() == 32000 && V == 32002) {  // Mistral-7B-OpenOrca's added tokens
                tok->add_special_token("<|im_end|>", 32000);
                tok->add_special_token("<|im_start|>", 32001);
            }

            std::vector<std::int32_t> ids;
            generate::GenerationOptions opt;
            opt.max_new_tokens = max_new;
            if (eos >= 0) opt.eos_ids = {eos};
            if (*ids_opt) {
                ids = programs::parse_ids(ids_str);
                if (ids.empty()) throw ArgumentError("--ids: the prompt is empty");
            } else {
                std::string prompt;
                const std::int64_t budget = context > 0 ? context - max_new : 0;
                if (context > 0 && budget <= 0) throw ArgumentError("--context must be larger than --max-new");
                if (*file_opt) {
                    prompt = read_text_file(prompt_file);
                    for (int id : tok->encode(prompt, {.add_bos = !no_bos, .add_eos = false, .parse_special = true}))
                        ids.push_back(id);
                    if (budget > 0 && static_cast<std::int64_t>(ids.size()) > budget)
                        throw ArgumentError("--prompt-file: the prompt has " + std::to_string(ids.size()) +
                                            " tokens, more than --context - --max-new = " + std::to_string(budget));
                } else {
                    text::RoleplaySetup setup{char_name, user_name, persona, user_persona, scenario};
                    std::vector<text::Turn> turns;
                    if (!first_message.empty()) turns.push_back({text::Speaker::Character, first_message});
                    if (*msg_opt) turns.push_back({text::Speaker::User, message});
                    const text::TokenCounter count = [&](std::string_view s) {
                        return static_cast<std::int64_t>(
                            tok->encode(s, {.add_bos = !no_bos, .add_eos = false, .parse_special = format == "chatml"})
                                .size());
                    };
                    if (format == "alpaca") {
                        const text::AlpacaPrompt fmt(setup);
                        prompt =
                            budget > 0 ? fmt.fit(turns, length_tag, budget, count).text : fmt.format(turns, length_tag);
                        if (!no_stop) opt.stop_strings = fmt.stop_strings();
                        for (int id : tok->encode(prompt, {.add_bos = !no_bos})) ids.push_back(id);
                    } else {
                        const text::ChatMlPrompt fmt(setup);
                        text::ChatMlPrompt::require_chatml_tokens(*tok);
                        prompt = budget > 0 ? fmt.fit(turns, budget, count).text : fmt.format(turns);
                        if (!no_stop) opt.stop_strings = text::ChatMlPrompt::stop_strings();
                        for (int id :
                             tok->encode(prompt, {.add_bos = !no_bos, .add_eos = false, .parse_special = true}))
                            ids.push_back(id);
                    }
                }
                if (show_prompt) std::fprintf(stderr, "%s\n----\n", prompt.c_str());
                if (eos < 0) opt.eos_ids = generate::default_eos_ids(*tok);
            }
            opt.stop_strings.insert(opt.stop_strings.end(), stops.begin(), stops.end());
            if (!opt.stop_strings.empty() && !tok) throw ArgumentError("--stop needs --tokenizer");
            opt.keep_leading_space = !roleplay;  // a continuation keeps its first space; a roleplay reply does not

            const bool want_text = tok && !print_ids;
            using Model = std::remove_reference_t<decltype(model)>;
            generate::Generator<Model> gen(model, tok ? &*tok : nullptr, 0);
            programs::TokenPicker<Model> picker(sampler, host_sampling);
            const auto r = picker.generate(gen, ids, opt,
                                        want_text ? generate::TextCallback([](std::string_view s) {
                                            std::fwrite(s.data(), 1, s.size(), stdout);
                                            std::fflush(stdout);
                                        })
                                                  : generate::TextCallback{});
            if (want_text) {
                std::printf("\n");
            } else {
                std::string line;
                for (std::size_t i = 0; i < r.tokens.size(); ++i) line += (i ? " " : "") + std::to_string(r.tokens[i]);
                if (eos >= 0 && r.reason == generate::StopReason::Eos)
                    line += (line.empty() ? "" : " ") + std::to_string(eos);
                std::printf("%s\n", line.c_str());
            }
            if (stats)
                std::fprintf(stderr,
                             "prompt %lld tokens, prefill %.1f tok/s, decode %.2f tok/s, %zu new tokens, stop: %s, "
                             "sampled on the %s\n",
                             static_cast<long long>(r.prompt_tokens),
                             r.prefill_seconds > 0 ? static_cast<double>(r.prefilled_tokens) / r.prefill_seconds : 0.0,
                             r.tokens.size() > 1 && r.decode_seconds > 0
                                 ? static_cast<double>(r.tokens.size() - 1) / r.decode_seconds
                                 : 0.0,
                             r.tokens.size(), std::string(generate::to_string(r.reason)).c_str(),
                             picker.on_device() ? "GPU" : "CPU");
            return 0;
        });
    });
}
