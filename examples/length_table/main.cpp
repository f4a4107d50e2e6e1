// limarp-length-table: does the `(length = TAG)` modifier control the reply length? Builds one
// LimaRP roleplay prompt, generates K replies per length tag (seeds S, S+1, ..., S+K-1, the same
// seeds for every tag) and prints, per tag, the mean / median / min / max reply length in tokens: the
// "lengths" table of the LimaRP-MistralOrca-7B model card. Optionally writes the numbers as JSON
// and a transcript (the prompt and the first reply of every tag).
//
// A reply's length is the number of generated tokens before the stop: an EOS id is not counted,
// nor are the tokens of a stop string (`### Input`, `\nUser:`, ...); the token in which a stop
// string starts counts when it also carries reply text. A reply cut at --max-tokens has length
// --max-tokens (a lower bound); the table says how many were cut.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/model_dispatch.hpp"
#include "common/program.hpp"
#include "common/sampler_flags.hpp"
#include "common/tokenizer_loading.hpp"
#include "limarp/generate/generator.hpp"
#include "limarp/generate/sampler.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/tokenizer.hpp"

using namespace limarp;

namespace {

// The built-in scene, so that `--model DIR --adapter DIR` alone gives a table.
constexpr const char* kChar = "Ahab";
constexpr const char* kUser = "Ishmael";
constexpr const char* kPersona =
    "Captain Ahab is the grim, one-legged captain of the whaling ship Pequod. He stands on an ivory leg made from "
    "a whale's jaw and is consumed by his hunt for Moby Dick, the white whale that took his leg. He speaks in a "
    "lofty, biblical manner and commands his crew with iron will.";
constexpr const char* kUserPersona =
    "Ishmael is a young sailor, new to whaling, curious and thoughtful, who signed on to the Pequod in Nantucket.";
constexpr const char* kScenario =
    "Weeks out of Nantucket, the Pequod sails the open Atlantic. At dusk, Ishmael finds Captain Ahab alone on the "
    "quarter-deck, staring at the horizon through his spyglass.";
constexpr const char* kMessage = "What do you see out there?";

/// One row of the table: a length modifier (nullopt = none, the model chooses) and its replies.
struct TagRun {
    std::optional<text::LengthTag> tag;
    std::vector<std::int64_t> lengths;  // tokens, one per sample
    std::vector<std::string> reasons;   // eos | stop_string | max_tokens, one per sample
    std::string first_text;             // the reply of the first seed (transcript)
    std::string first_reason;

    std::string name() const { return tag ? std::string(text::to_string(*tag)) : std::string("none"); }
    std::int64_t count(std::string_view reason) const {
        return std::count(reasons.begin(), reasons.end(), reason);
    }
    double mean() const {
        double s = 0;
        for (auto n : lengths) s += static_cast<double>(n);
        return lengths.empty() ? 0.0 : s / static_cast<double>(lengths.size());
    }
    /// The middle length (the mean of the two middle ones for an even count): the typical reply,
    /// which a few long ones do not move as they move the mean.
    double median() const {
        if (lengths.empty()) return 0.0;
        std::vector<std::int64_t> v = lengths;
        std::sort(v.begin(), v.end());
        const std::size_t n = v.size();
        return n % 2 ? static_cast<double>(v[n / 2]) : 0.5 * static_cast<double>(v[n / 2 - 1] + v[n / 2]);
    }
    std::int64_t min() const { return lengths.empty() ? 0 : *std::min_element(lengths.begin(), lengths.end()); }
    std::int64_t max() const { return lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end()); }
};

/// "tiny,short,none" -> the modifiers, in the order given. \throws ArgumentError.
std::vector<std::optional<text::LengthTag>> parse_lengths(const std::string& s) {
    std::vector<std::optional<text::LengthTag>> out;
    std::size_t i = 0;
    while (i <= s.size()) {
        std::size_t j = s.find(',', i);
        if (j == std::string::npos) j = s.size();
        std::string item = s.substr(i, j - i);
        while (!item.empty() && item.front() == ' ') item.erase(item.begin());
        while (!item.empty() && item.back() == ' ') item.pop_back();
        if (item.empty()) throw ArgumentError("--lengths: empty item in \"" + s + "\"");
        try {
            out.push_back(item == "none" ? std::nullopt : std::optional(text::parse_length_tag(item)));
        } catch (const ArgumentError& e) {
            throw ArgumentError(std::string("--lengths: ") + e.what());
        }
        i = j + 1;
    }
    return out;
}

/// The reply length in tokens: the sampled ids up to the one that completes the reply text
/// (a stop string's own tokens are not counted; EOS is never in r.tokens).
std::int64_t reply_tokens(const text::Tokenizer& tok, const generate::GenerationResult& r) {
    if (r.reason != generate::StopReason::StopString) return static_cast<std::int64_t>(r.tokens.size());
    if (r.text.empty()) return 0;
    text::StreamDecoder dec(tok, /*skip_special=*/true);  // as the Generator decodes
    std::string s;
    for (std::size_t i = 0; i < r.tokens.size(); ++i) {
        dec.push_into(s, r.tokens[i]);
        if (s.size() >= r.text.size()) return static_cast<std::int64_t>(i + 1);
    }
    return static_cast<std::int64_t>(r.tokens.size());
}

std::string trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
        s.remove_suffix(1);
    return std::string(s);
}

void write_file(const std::string& path, const std::string& data) {
    std::ofstream f(path, std::ios::binary);
    if (!f) throw IoError(path + ": cannot open for writing: " + std::strerror(errno));
    if (!(f << data) || !f.flush()) throw IoError(path + ": cannot write: " + std::strerror(errno));
}

}  // namespace

int main(int argc, char** argv) {
    return programs::run_main("limarp-length-table", [&] {
        CLI::App app{
            "limarp-length-table: how well the LimaRP length modifier `(length = TAG)` controls the reply length.\n"
            "Builds one roleplay prompt (a built-in scene with Ahab and Ishmael on the Pequod, or --char,\n"
            "--persona, --scenario, --message...), generates --samples replies for every length tag (seeds\n"
            "--seed, --seed+1, ...; the same seeds for every tag) and prints a markdown table of the reply\n"
            "lengths in tokens (mean, median, min, max), then the generation speed. A reply ends at EOS, at a stop\n"
            "string of the prompt format (not counted) or at --max-tokens (cut; its length is a lower bound).\n"
            "Progress goes to stderr, one line per reply."};
        std::string model_dir, tokenizer_path, lengths_arg, transcript_path, json_path, convention = "hf";
        std::string char_name = kChar, user_name = kUser, persona = kPersona, user_persona = kUserPersona,
                    scenario = kScenario, message = kMessage;
        std::vector<std::string> stops;
        int samples = 5, max_tokens = 300, threads = 0;
        std::uint64_t seed = 1;
        programs::SamplerFlags sf;
        sf.p.temperature = 0.8f;
        programs::ModelOptions mo;
        app.add_option("--model", model_dir, "model folder (config.json + *.safetensors)")->required();
        app.add_option("--adapter", mo.adapters, "PEFT LoRA adapter folder, optionally :SCALE (repeatable)");
        app.add_option("--quant", mo.quant, "none | int8 | q8_0 | auto (default: what the files hold)")
            ->capture_default_str();
        app.add_option("--kv-cache", mo.kv_cache, programs::kKvCacheHelp);
        app.add_option("--activations", mo.activations, "quantized paths: int8 (default) or f32 (weight-only)");
        app.add_option("--tokenizer", tokenizer_path,
                       "tokenizer.model, tokenizer.json or a folder (default: the model folder)");
        app.add_option("--samples", samples, "replies per length tag")
            ->check(CLI::PositiveNumber)
            ->capture_default_str();
        app.add_option("--max-tokens", max_tokens, "at most this many tokens per reply")
            ->check(CLI::PositiveNumber)
            ->capture_default_str();
        app.add_option("--seed", seed, "seed of the first sample (sample k uses SEED + k)")->capture_default_str();
        app.add_option("--lengths", lengths_arg,
                       "comma-separated tags to test, in this order; none = no modifier (default: all of " +
                           text::length_tag_list() + ")");
        app.add_option("--char", char_name, "the character's name")->capture_default_str();
        app.add_option("--user", user_name, "the user's name")->capture_default_str();
        app.add_option("--persona", persona, "the character's persona (default: Captain Ahab)");
        app.add_option("--user-persona", user_persona, "the user's persona (default: Ishmael)");
        app.add_option("--scenario", scenario, "the scenario (default: dusk on the Pequod's quarter-deck)");
        app.add_option("--message", message, "the user's message the character answers")->capture_default_str();
        app.add_option("--stop", stops, "extra stop string (repeatable), besides the prompt format's");
        app.add_option("--transcript", transcript_path,
                       "write the prompt and the first reply of every tag to this text file");
        app.add_option("--json", json_path, "write the numbers (per tag: lengths, mean, median, min, max, stops) as JSON");
        sf.add(app);
        app.add_option("--window-convention", convention, "sliding window: hf (W keys, default) or mistral (W+1 keys)");
        app.add_option("--threads", threads, "worker threads (default: all cores; or LIMARP_THREADS)");
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        if (threads > 0) setenv("LIMARP_THREADS", std::to_string(threads).c_str(), 1);

        std::vector<TagRun> runs;
        if (lengths_arg.empty()) {
            for (text::LengthTag t : text::kLengthTags) runs.push_back({t, {}, {}, {}, {}});
        } else {
            for (const auto& t : parse_lengths(lengths_arg)) runs.push_back({t, {}, {}, {}, {}});
        }
        [[maybe_unused]] const generate::Sampler check(sf.params(seed));  // validates the sampler flags before the model loads
        mo.convention = programs::parse_window_convention(convention);
        mo.dir = model_dir;
        if (tokenizer_path.empty()) {
            const std::filesystem::path d(model_dir);
            if (!std::filesystem::exists(d / "tokenizer.model") && !std::filesystem::exists(d / "tokenizer.json"))
                throw ArgumentError("the model folder has no tokenizer.model or tokenizer.json: give --tokenizer");
            tokenizer_path = model_dir;
        }

        return programs::with_model(mo, [&](auto& model) -> int {
            text::Tokenizer tok = programs::load_tokenizer(tokenizer_path);
            if (tok.vocab_size() == 32000 && model.config().vocab == 32002) {  // Mistral-7B-OpenOrca's added tokens
                tok.add_special_token("<|im_end|>", 32000);
                tok.add_special_token("<|im_start|>", 32001);
            }
            const text::AlpacaPrompt fmt(text::RoleplaySetup{char_name, user_name, persona, user_persona, scenario});
            const std::vector<text::Turn> turns = {{text::Speaker::User, message}};
            generate::GenerationOptions opt;
            opt.max_new_tokens = max_tokens;
            opt.eos_ids = generate::default_eos_ids(tok);
            opt.stop_strings = fmt.stop_strings();
            opt.stop_strings.insert(opt.stop_strings.end(), stops.begin(), stops.end());
            // The prompts differ only after their last `### Response:`: the cache keeps the rest.
            generate::Generator<std::remove_reference_t<decltype(model)>> gen(model, &tok, max_tokens + 64);

            std::int64_t gen_tokens = 0, decode_steps = 0, prefilled = 0, prompt_tokens = 0;
            double decode_s = 0, prefill_s = 0;
            const std::size_t total = runs.size() * static_cast<std::size_t>(samples);
            std::size_t done = 0;
            for (TagRun& run : runs) {
                std::vector<std::int32_t> ids;
                for (int id : tok.encode(fmt.format(turns, run.tag))) ids.push_back(id);
                prompt_tokens = std::max<std::int64_t>(prompt_tokens, static_cast<std::int64_t>(ids.size()));
                for (int k = 0; k < samples; ++k) {
                    generate::Sampler sampler(sf.params(seed + static_cast<std::uint64_t>(k)));
                    const auto r = gen.generate(ids, sampler, opt);
                    const std::int64_t n = reply_tokens(tok, r);
                    const std::string reason(generate::to_string(r.reason));
                    run.lengths.push_back(n);
                    run.reasons.push_back(reason);
                    if (k == 0) {
                        run.first_text = trim(r.text);
                        run.first_reason = reason;
                    }
                    const auto sampled = static_cast<std::int64_t>(r.tokens.size());
                    gen_tokens += sampled;
                    decode_steps += sampled > 0 ? sampled - 1 : 0;  // the first token comes from the prefill
                    decode_s += r.decode_seconds;
                    prefilled += r.prefilled_tokens;
                    prefill_s += r.prefill_seconds;
                    ++done;
                    const double secs = r.prefill_seconds + r.decode_seconds;
                    std::fprintf(stderr, "[%zu/%zu] %-9s seed %llu: %lld tokens (%s), %.1f tok/s\n", done, total,
                                 run.name().c_str(), static_cast<unsigned long long>(seed + static_cast<std::uint64_t>(k)),
                                 static_cast<long long>(n), reason.c_str(),
                                 secs > 0 ? static_cast<double>(sampled) / secs : 0.0);
                }
            }

            // The table.
            std::printf("| length tag | mean | median | min | max | samples |\n");
            std::printf("|---|---:|---:|---:|---:|---:|\n");
            std::int64_t cut = 0;
            std::string cut_list;
            for (const TagRun& run : runs) {
                std::printf("| %s | %.1f | %.1f | %lld | %lld | %zu |\n", run.name().c_str(), run.mean(), run.median(),
                            static_cast<long long>(run.min()), static_cast<long long>(run.max()), run.lengths.size());
                const auto c = run.count("max_tokens");
                if (c > 0) cut_list += (cut_list.empty() ? "" : ", ") + run.name() + " " + std::to_string(c);
                cut += c;
            }
            std::printf("\n");
            if (cut > 0)
                std::printf("cut at --max-tokens %d (length is a lower bound): %lld of %zu replies (%s)\n", max_tokens,
                            static_cast<long long>(cut), total, cut_list.c_str());
            const double decode_tps = decode_s > 0 ? static_cast<double>(decode_steps) / decode_s : 0.0;
            const double prefill_tps = prefill_s > 0 ? static_cast<double>(prefilled) / prefill_s : 0.0;
            const double overall_tps =
                decode_s + prefill_s > 0 ? static_cast<double>(gen_tokens) / (decode_s + prefill_s) : 0.0;
            std::printf(
                "speed: %lld tokens in %.2f s, %.1f tok/s overall (decode %.1f tok/s; prefill %lld tokens, %.1f "
                "tok/s)\n",
                static_cast<long long>(gen_tokens), decode_s + prefill_s, overall_tps, decode_tps,
                static_cast<long long>(prefilled), prefill_tps);

            if (!json_path.empty()) {
                nlohmann::json j;
                j["model"] = model_dir;
                j["adapters"] = mo.adapters;
                j["quant"] = mo.quant;
                j["samples"] = samples;
                j["max_tokens"] = max_tokens;
                j["seed"] = seed;
                const auto sp = sf.params(seed);
                j["sampler"] = {{"temperature", sp.temperature},
                                {"top_k", sp.top_k},
                                {"top_p", sp.top_p},
                                {"min_p", sp.min_p},
                                {"typical_p", sp.typical_p},
                                {"top_a", sp.top_a},
                                {"tfs", sp.tfs},
                                {"repetition_penalty", sp.repetition_penalty},
                                {"penalty_range", sp.penalty_range},
                                {"frequency_penalty", sp.frequency_penalty},
                                {"presence_penalty", sp.presence_penalty}};
                j["prompt_tokens"] = prompt_tokens;
                j["tags"] = nlohmann::json::array();
                for (const TagRun& run : runs) {
                    j["tags"].push_back({{"tag", run.name()},
                                         {"lengths", run.lengths},
                                         {"stop_reasons", run.reasons},
                                         {"mean", run.mean()},
                                         {"median", run.median()},
                                         {"min", run.min()},
                                         {"max", run.max()},
                                         {"eos", run.count("eos")},
                                         {"stop_string", run.count("stop_string")},
                                         {"stopped", run.count("eos") + run.count("stop_string")},
                                         {"max_tokens_cut", run.count("max_tokens")}});
                }
                j["speed"] = {{"generated_tokens", gen_tokens},
                              {"seconds", decode_s + prefill_s},
                              {"tokens_per_second", overall_tps},
                              {"decode_tokens_per_second", decode_tps},
                              {"prefill_tokens", prefilled},
                              {"prefill_tokens_per_second", prefill_tps}};
                write_file(json_path, j.dump(2) + "\n");
            }
            if (!transcript_path.empty()) {
                // The prompt as the model saw it (up to the last `### Response:`), then the first
                // reply (seed --seed) of every tag under its own response header.
                std::string t = fmt.instruction();
                for (const auto& turn : turns) t += "\n\n" + fmt.turn(turn);
                for (const TagRun& run : runs) {
                    t += "\n\n" + fmt.response_header(run.tag);
                    if (!run.first_text.empty()) t += " " + run.first_text;
                    t += "\n[" + std::to_string(run.lengths.front()) + " tokens, " + run.first_reason + ", seed " +
                         std::to_string(seed) + "]";
                }
                t += "\n";
                write_file(transcript_path, t);
            }
            return 0;
        });
    });
}
