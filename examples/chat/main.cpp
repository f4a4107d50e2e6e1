// limarp-chat: interactive terminal roleplay with a LimaRP (extended Alpaca) prompt.
// The character comes from a card (JSON or YAML: plain, TavernAI V1, SillyTavern V2/V3, LimaRP
// data) or from flags; replies stream as they are generated; Ctrl-C stops a reply.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/model_dispatch.hpp"
#include "common/program.hpp"
#include "common/sampler_flags.hpp"
#include "common/token_picker.hpp"
#include "common/tokenizer_loading.hpp"
#include "limarp/generate/generator.hpp"
#include "limarp/generate/sampler.hpp"
#include "limarp/io/detail/json.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/character_card.hpp"
#include "limarp/text/chatml.hpp"
#include "limarp/text/tokenizer.hpp"

using namespace limarp;

namespace {

std::atomic<bool> g_interrupted{false};
std::atomic<bool> g_generating{false};
char g_prompt[128] = "> ";  // the input prompt, re-printed by the SIGINT handler
std::size_t g_prompt_len = 2;

extern "C" void on_sigint(int) {
    g_interrupted.store(true);
    if (!g_generating.load()) {  // only async-signal-safe calls here
        static const char msg[] = "\n(Ctrl-C stops a reply; type /quit or press Ctrl-D to leave)\n";
        [[maybe_unused]] auto n = ::write(STDOUT_FILENO, msg, sizeof msg - 1);
        n = ::write(STDOUT_FILENO, g_prompt, g_prompt_len);
    }
}

// The conversation state that /save and /load keep.
struct Session {
    text::RoleplaySetup setup;
    std::vector<text::Turn> turns;
    std::optional<text::LengthTag> length;

    nlohmann::json to_json() const {
        nlohmann::json j;
        j["format"] = "limarp-chat";
        j["version"] = 1;
        j["char_name"] = setup.char_name;
        j["user_name"] = setup.user_name;
        j["persona"] = setup.char_persona;
        j["user_persona"] = setup.user_persona;
        j["scenario"] = setup.scenario;
        j["length"] = length ? std::string(text::to_string(*length)) : std::string("none");
        j["turns"] = nlohmann::json::array();
        for (const auto& t : turns)
            j["turns"].push_back({{"speaker", t.speaker == text::Speaker::User ? "user" : "char"}, {"text", t.text}});
        return j;
    }
    static Session from_json(const nlohmann::json& j, const std::string& src) {
        auto str = [&](const nlohmann::json& o, const char* k) -> std::string {
            auto it = o.find(k);
            if (it == o.end() || !it->is_string()) throw FormatError(src + ": field '" + k + "' must be a string");
            return it->get<std::string>();
        };
        if (!j.is_object() || j.value("format", "") != "limarp-chat")
            throw FormatError(src + ": not a limarp-chat session (field 'format' must be \"limarp-chat\")");
        Session s;
        s.setup.char_name = str(j, "char_name");
        s.setup.user_name = str(j, "user_name");
        s.setup.char_persona = str(j, "persona");
        s.setup.user_persona = str(j, "user_persona");
        s.setup.scenario = str(j, "scenario");
        s.length = text::parse_optional_length_tag(str(j, "length"));
        auto it = j.find("turns");
        if (it == j.end() || !it->is_array()) throw FormatError(src + ": field 'turns' must be an array");
        for (const auto& t : *it) {
            if (!t.is_object()) throw FormatError(src + ": every turn must be an object {speaker, text}");
            const std::string sp = str(t, "speaker");
            if (sp != "user" && sp != "char")
                throw FormatError(src + ": a turn's speaker must be \"user\" or \"char\", got \"" + sp + "\"");
            s.turns.push_back({sp == "user" ? text::Speaker::User : text::Speaker::Character, str(t, "text")});
        }
        return s;
    }
};

void out(std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
}

std::string trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
        s.remove_suffix(1);
    return std::string(s);
}

constexpr const char* kHelp =
    "Commands:\n"
    "  /length TAG   response length: micro tiny short medium long massive huge enormous humongous unlimited, or none\n"
    "  /regen        generate the last reply again\n"
    "  /undo         remove your last message and the reply to it\n"
    "  /save FILE    save the conversation (JSON)\n"
    "  /load FILE    load a saved conversation\n"
    "  /quit         leave (also Ctrl-D)\n"
    "  /help         this text\n"
    "Ctrl-C stops the reply being written.\n";

}  // namespace

int main(int argc, char** argv) {
    return programs::run_main("limarp-chat", [&] {
        CLI::App app{
            "limarp-chat: roleplay in the terminal with a Mistral model and the LimaRP prompt format.\n"
            "The character comes from --card (JSON or YAML: name, description/persona, scenario,\n"
            "first_mes; SillyTavern/TavernAI V2 cards; LimaRP data files) or from --char/--persona/\n"
            "--scenario/--first-message. Type a message and press Enter; commands start with '/'\n"
            "(/help lists them). Ctrl-C stops the reply being written, not the program."};
        std::string model_dir, tokenizer_path, card_path, convention = "hf", format = "alpaca", length = "medium";
        std::string char_name, persona, scenario, first_message, user_name, user_persona;
        int max_new = 300, threads = 0, delay_ms = 0;
        std::int64_t context = 4096;
        std::uint64_t seed = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
        bool show_prompt = false, host_sampling = false;
        programs::SamplerFlags sf;
        // LimaRP's model card: low temperature, high repetition penalty, short penalty range.
        sf.p.temperature = 0.7f;
        sf.p.min_p = 0.05f;
        sf.p.repetition_penalty = 1.1f;
        sf.p.penalty_range = 64;
        programs::ModelOptions mo;
        app.add_option("--model", model_dir, "model folder (config.json + *.safetensors)")->required();
        app.add_option("--tokenizer", tokenizer_path,
                       "tokenizer.model, tokenizer.json or a folder (default: the model folder)");
        app.add_option("--card", card_path, "character card: JSON or YAML file");
        app.add_option("--char", char_name, "the character's name (overrides the card's)");
        app.add_option("--persona", persona, "the character's persona (overrides the card's)");
        app.add_option("--scenario", scenario, "the scenario (overrides the card's)");
        app.add_option("--first-message", first_message, "the character's opening message (overrides the card's)");
        app.add_option("--user", user_name, "your character's name (default: the card's, or User)");
        app.add_option("--user-persona", user_persona, "your character's persona");
        app.add_option("--length", length, "response length tag, or none to let the model choose")
            ->capture_default_str();
        app.add_option("--max-new", max_new, "at most this many tokens per reply")
            ->check(CLI::PositiveNumber)
            ->capture_default_str();
        app.add_option("--context", context, "token budget of prompt + reply; the oldest messages are dropped to fit")
            ->capture_default_str();
        app.add_option("--format", format, "prompt format: alpaca (LimaRP, default) or chatml (OpenOrca base)");
        sf.add(app);
        app.add_option("--seed", seed, "random seed (default: from the clock)");
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
        app.add_option("--adapter", mo.adapters,
                       "PEFT LoRA adapter folder (e.g. LimaRP-MistralOrca-7B), optionally :SCALE (repeatable)");
        app.add_flag("--show-prompt", show_prompt, "print each prompt to stderr before the reply");
        app.add_flag("--host-sampling", host_sampling, programs::kHostSamplingHelp);
        app.add_option("--delay-ms", delay_ms, "pause after each token (demos and tests of streaming and Ctrl-C)")
            ->check(CLI::NonNegativeNumber);
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        if (threads > 0) setenv("LIMARP_THREADS", std::to_string(threads).c_str(), 1);
        if (format != "alpaca" && format != "chatml")
            throw ArgumentError("--format: \"" + format + "\" is not one of alpaca, chatml");
        if (context <= max_new) throw ArgumentError("--context must be larger than --max-new");

        Session session;
        session.length = text::parse_optional_length_tag(length);
        text::CharacterCard card;
        if (!card_path.empty()) card = text::CharacterCard::load(card_path);
        if (!char_name.empty()) card.name = char_name;
        if (card.name.empty()) card.name = "Character";
        if (!persona.empty()) {
            card.description = persona;
            card.personality.clear();
        }
        if (!scenario.empty()) card.scenario = scenario;
        if (!first_message.empty()) card.first_message = first_message;
        session.setup = card.setup(user_name, user_persona);
        session.turns = card.opening_turns();
        generate::Sampler sampler(sf.params(seed));

        mo.convention = programs::parse_window_convention(convention);
        mo.dir = model_dir;
        return programs::with_model(mo, [&](auto& model) -> int {
            text::Tokenizer tok = !tokenizer_path.empty() ? programs::load_tokenizer(tokenizer_path)
                                                          : text::Tokenizer::from_dir(model_dir);
            if (tok.vocab_size() == 32000 && model.config().vocab == 32002) {  // Mistral-7B-OpenOrca's added tokens
                tok.add_special_token("<|im_end|>", 32000);
                tok.add_special_token("<|im_start|>", 32001);
            }
            if (format == "chatml") text::ChatMlPrompt::require_chatml_tokens(tok);
            using Model = std::remove_reference_t<decltype(model)>;
            generate::Generator<Model> gen(model, &tok, max_new + 64);
            programs::TokenPicker<Model> picker(sampler, host_sampling);

            struct sigaction sa {};
            sa.sa_handler = on_sigint;
            sigemptyset(&sa.sa_mask);
            sa.sa_flags = SA_RESTART;  // a Ctrl-C at the prompt must not end the line reader
            sigaction(SIGINT, &sa, nullptr);

            auto print_turn = [&](const text::Turn& t) {
                const auto& s = session.setup;
                const std::string body = text::substitute_placeholders(t.text, s.char_name, s.user_name);
                out((t.speaker == text::Speaker::User ? s.user_name : s.char_name) + ": " + trim(body) + "\n");
            };

            // Generates the character's reply to the current turns and appends it.
            auto reply = [&] {
                const auto& s = session.setup;
                const std::int64_t budget = context - max_new;
                std::string prompt;
                std::vector<std::int32_t> ids;
                generate::GenerationOptions opt;
                opt.max_new_tokens = max_new;
                opt.eos_ids = generate::default_eos_ids(tok);
                opt.cancel = &g_interrupted;
                std::size_t dropped = 0;
                if (format == "alpaca") {
                    const text::AlpacaPrompt fmt(s);
                    const auto fitted = fmt.fit(session.turns, session.length, budget, tok);
                    prompt = fitted.text;
                    dropped = fitted.first_turn;
                    opt.stop_strings = fmt.stop_strings();
                    for (int id : tok.encode(prompt)) ids.push_back(id);
                } else {
                    const text::ChatMlPrompt fmt(s);
                    const auto fitted = fmt.fit(session.turns, budget, [&](std::string_view t) {
                        return static_cast<std::int64_t>(
                            tok.encode(t, {.add_bos = true, .add_eos = false, .parse_special = true}).size());
                    });
                    prompt = fitted.text;
                    dropped = fitted.first_turn;
                    opt.stop_strings = text::ChatMlPrompt::stop_strings();
                    for (int id : tok.encode(prompt, {.add_bos = true, .add_eos = false, .parse_special = true}))
                        ids.push_back(id);
                }
                if (show_prompt)
                    std::fprintf(stderr,
                                 "----- prompt (%zu tokens, %zu oldest messages left out) -----\n%s\n----- end of "
                                 "prompt -----\n",
                                 ids.size(), dropped, prompt.c_str());
                out(s.char_name + ": ");
                g_interrupted = false;
                g_generating = true;
                generate::GenerationResult r;
                try {
                    r = picker.generate(
                        gen, ids, opt, [](std::string_view piece) { out(piece); },
                        [&](std::int32_t) {
                            if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
                        });
                } catch (...) {
                    g_generating = false;
                    throw;
                }
                g_generating = false;
                out(r.reason == generate::StopReason::Cancelled ? " [stopped]\n" : "\n");
                session.turns.push_back({text::Speaker::Character, trim(r.text)});
            };

            out("limarp-chat: you are " + session.setup.user_name + ", talking with " + session.setup.char_name +
                ". /help lists the commands.\n");
            for (const auto& t : session.turns) print_turn(t);

            std::string line;
            for (;;) {
                const std::string prompt_text = session.setup.user_name + "> ";
                g_prompt_len = std::min(prompt_text.size(), sizeof g_prompt - 1);
                std::memcpy(g_prompt, prompt_text.data(), g_prompt_len);
                out(prompt_text);
                if (!std::getline(std::cin, line)) {
                    out("\n");
                    return 0;
                }
                g_interrupted = false;
                line = trim(line);
                if (line.empty()) continue;
                if (line.front() != '/') {
                    session.turns.push_back({text::Speaker::User, line});
                    reply();
                    continue;
                }
                const auto sp = line.find(' ');
                const std::string cmd = line.substr(0, sp);
                const std::string arg = sp == std::string::npos ? "" : trim(std::string_view(line).substr(sp + 1));
                try {
                    if (cmd == "/quit" || cmd == "/exit") {
                        return 0;
                    } else if (cmd == "/help") {
                        out(kHelp);
                    } else if (cmd == "/length") {
                        if (arg.empty()) {
                            out("(length: " + std::string(session.length ? text::to_string(*session.length) : "none") +
                                ")\n");
                        } else {
                            session.length = text::parse_optional_length_tag(arg);
                            out("(length set to " +
                                std::string(session.length ? text::to_string(*session.length) : "none") + ")\n");
                        }
                    } else if (cmd == "/undo") {
                        std::size_t i = session.turns.size();
                        while (i > 0 && session.turns[i - 1].speaker != text::Speaker::User) --i;
                        if (i == 0) {
                            out("(nothing to undo)\n");
                        } else {
                            session.turns.resize(i - 1);
                            out("(removed your last message and its reply)\n");
                        }
                    } else if (cmd == "/regen") {
                        const bool has_user =
                            std::any_of(session.turns.begin(), session.turns.end(),
                                        [](const text::Turn& t) { return t.speaker == text::Speaker::User; });
                        if (!has_user) {
                            out("(nothing to regenerate: send a message first)\n");
                        } else {
                            if (session.turns.back().speaker == text::Speaker::Character) session.turns.pop_back();
                            reply();
                        }
                    } else if (cmd == "/save") {
                        if (arg.empty()) throw ArgumentError("/save needs a file name");
                        const std::string data = session.to_json().dump(2) + "\n";
                        std::ofstream f(arg, std::ios::binary);
                        if (!(f << data) || !f.flush()) throw IoError(arg + ": cannot write: " + std::strerror(errno));
                        out("(saved " + std::to_string(session.turns.size()) + " messages to " + arg + ")\n");
                    } else if (cmd == "/load") {
                        if (arg.empty()) throw ArgumentError("/load needs a file name");
                        std::ifstream f(arg, std::ios::binary);
                        if (!f) throw IoError(arg + ": cannot open");
                        std::ostringstream ss;
                        ss << f.rdbuf();
                        session = Session::from_json(io::detail::parse_json_strict(ss.str(), arg), arg);
                        out("(loaded " + std::to_string(session.turns.size()) + " messages from " + arg + "; you are " +
                            session.setup.user_name + ", talking with " + session.setup.char_name + ")\n");
                        if (!session.turns.empty()) print_turn(session.turns.back());
                    } else {
                        out("(unknown command " + cmd + "; /help lists the commands)\n");
                    }
                } catch (const Error& e) {
                    out(std::string("(error: ") + e.what() + ")\n");
                }
            }
        });
    });
}
