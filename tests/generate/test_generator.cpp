// Tests for limarp/generate/generator.hpp: EOS, token limit, stop strings across token
// boundaries, streaming and cancellation (with a scripted model), then KV-cache reuse on the
// golden fixture models: identical output with and without reuse, prefilled-token counts, and a
// full LimaRP chat turn with the real tokenizer on a widened fixture; the logits-picker path
// (forward_pick) gives the sampler path's tokens, with a LogitsPicker and with a StepPicker.
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

#include "common/fixtures.hpp"
#include "generate/wide_vocab.hpp"
#include "limarp/generate/generator.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/detail/utf8.hpp"
#include "limarp/text/tokenizer.hpp"

using namespace limarp;
using namespace limarp::generate;

namespace {

std::filesystem::path tokenizer_path() { return std::filesystem::path(LIMARP_CACHE_DIR) / "mistral-tokenizer.model"; }

const text::Tokenizer& mistral_tokenizer() {
    static const text::Tokenizer tok = [] {
        auto t = text::Tokenizer::from_sentencepiece(tokenizer_path());
        t.add_special_token("<|im_end|>", 32000);
        t.add_special_token("<|im_start|>", 32001);
        return t;
    }();
    return tok;
}

// A model whose i-th generated token is script[i] (then EOS 2), whatever the input: the logit
// of that token is 10, all others 0. It stores nothing but the cached ids.
struct ScriptedModel {
    MistralConfig cfg;
    std::vector<std::int32_t> script;
    std::int64_t prompt_len = 0;
    int forward_calls = 0;
    std::int64_t tokens_run = 0;

    ScriptedModel(std::int64_t vocab, std::vector<std::int32_t> s, std::int64_t plen)
        : script(std::move(s)), prompt_len(plen) {
        cfg.vocab = vocab;
        cfg.n_layers = 1;
        cfg.n_heads = 1;
        cfg.n_kv_heads = 1;
        cfg.head_dim = 1;
        cfg.d_model = 1;
        cfg.window.reset();
    }
    using cache_type = KvCache;
    const MistralConfig& config() const { return cfg; }
    KvCache make_cache(std::int64_t slack) const { return KvCache(cfg, slack); }
    void forward(float* logits, std::span<const std::int32_t> ids, KvCache& cache, LogitsRows rows) {
        cache.reserve(static_cast<std::int64_t>(ids.size()));
        cache.advance(ids);
        ++forward_calls;
        tokens_run += static_cast<std::int64_t>(ids.size());
        if (rows == LogitsRows::None) return;
        const std::int64_t i = cache.n_past() - prompt_len;
        std::fill(logits, logits + cfg.vocab, 0.0f);
        logits[i >= 0 && i < static_cast<std::int64_t>(script.size()) ? script[static_cast<std::size_t>(i)] : 2] =
            10.0f;
    }
};
static_assert(CausalLanguageModel<ScriptedModel>);
static_assert(CausalLanguageModel<MistralModel<Cpu<>>>);

std::vector<std::int32_t> to32(const std::vector<int>& v) { return {v.begin(), v.end()}; }

std::vector<std::int32_t> encode(std::string_view s, bool bos) {
    return to32(mistral_tokenizer().encode(s, {.add_bos = bos}));
}

// The real Mistral tokenizer is a test asset (scripts/setup.sh): a missing file fails the test.
bool have_tokenizer() {
    BOOST_REQUIRE_MESSAGE(std::filesystem::exists(tokenizer_path()), tokenizer_path().string()
                                                                         << " is missing: run scripts/setup.sh");
    return true;
}

SamplerParams greedy_params() {
    SamplerParams p;
    p.temperature = 0.0f;
    return p;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(generator)

BOOST_AUTO_TEST_CASE(eos_and_max_tokens) {
    const std::vector<std::int32_t> prompt = {1, 5, 6};
    {
        ScriptedModel m(50, {7, 8, 9}, 3);  // then EOS 2
        Generator g(m);
        Sampler s(greedy_params());
        GenerationOptions o;
        o.eos_ids = {2};
        std::vector<std::int32_t> streamed;
        const auto r = g.generate(prompt, s, o, {}, [&](std::int32_t id) { streamed.push_back(id); });
        BOOST_CHECK(r.reason == StopReason::Eos);
        BOOST_CHECK(r.tokens == (std::vector<std::int32_t>{7, 8, 9}));
        BOOST_CHECK(streamed == r.tokens);
        BOOST_CHECK_EQUAL(r.prompt_tokens, 3);
        BOOST_CHECK_EQUAL(r.prefilled_tokens, 3);
        BOOST_CHECK_EQUAL(m.tokens_run, 3 + 3);  // prompt, then 7, 8, 9 (whose logits give EOS)
    }
    {
        ScriptedModel m(50, {7, 8, 9, 10, 11}, 3);
        Generator g(m);
        Sampler s(greedy_params());
        GenerationOptions o;
        o.max_new_tokens = 2;
        const auto r = g.generate(prompt, s, o);
        BOOST_CHECK(r.reason == StopReason::MaxTokens);
        BOOST_CHECK(r.tokens == (std::vector<std::int32_t>{7, 8}));
        BOOST_CHECK_EQUAL(m.tokens_run, 3 + 1);  // the last token is not run
        BOOST_CHECK_EQUAL(g.cache().n_past(), 4);
        o.max_new_tokens = 0;
        const auto r0 = g.generate(prompt, s, o);
        BOOST_CHECK(r0.tokens.empty());
        BOOST_CHECK(r0.reason == StopReason::MaxTokens);
    }
    ScriptedModel m(50, {}, 1);
    Generator g(m);
    Sampler s;
    BOOST_CHECK_THROW(g.generate(std::vector<std::int32_t>{}, s), ArgumentError);
    GenerationOptions o;
    o.stop_strings = {"x"};
    BOOST_CHECK_THROW(g.generate(prompt, s, o), ArgumentError);  // stop strings need a tokenizer
}

BOOST_AUTO_TEST_CASE(stop_string_across_tokens_is_never_streamed) {
    if (!have_tokenizer()) return;
    const auto& tok = mistral_tokenizer();
    // The reply, token by token, runs into "\n### Input:" which spans several tokens.
    const auto reply = encode("Sure thing. *She nods.*\n\n### Input:\nBob: what", false);
    const std::vector<std::int32_t> prompt = encode("\n### Response:\nAria:", true);
    ScriptedModel m(32000, reply, static_cast<std::int64_t>(prompt.size()));
    Generator g(m, &tok);
    Sampler s(greedy_params());
    GenerationOptions o;
    o.eos_ids = default_eos_ids(tok);
    o.stop_strings = text::AlpacaPrompt(text::RoleplaySetup{"Aria", "Bob", "", "", ""}).stop_strings();
    std::string streamed;
    std::vector<std::size_t> tokens_at_callback;
    std::size_t n_tokens = 0;
    const auto r = g.generate(
        prompt, s, o,
        [&](std::string_view piece) {
            streamed += piece;
            tokens_at_callback.push_back(n_tokens);
            BOOST_CHECK(text::detail::utf8_is_valid(piece));
        },
        [&](std::int32_t) { ++n_tokens; });
    BOOST_CHECK(r.reason == StopReason::StopString);
    BOOST_CHECK_EQUAL(r.stop_string, "### Input");
    BOOST_CHECK_EQUAL(r.text, "Sure thing. *She nods.*\n\n");
    BOOST_CHECK_EQUAL(streamed, r.text);
    BOOST_CHECK(streamed.find('#') == std::string::npos);
    // streamed as it went: the first piece arrived after the first token, not at the end
    BOOST_REQUIRE(!tokens_at_callback.empty());
    BOOST_CHECK_EQUAL(tokens_at_callback.front(), 1u);
    BOOST_CHECK_LT(tokens_at_callback.size(), r.tokens.size());
    BOOST_CHECK_GT(tokens_at_callback.size(), 3u);
    // The user-name stop string, and text that looked like a stop string but was not.
    const auto reply2 = encode("I see.\n### Inside, it is dark.\nBob: hey", false);
    ScriptedModel m2(32000, reply2, static_cast<std::int64_t>(prompt.size()));
    Generator g2(m2, &tok);
    const auto r2 = g2.generate(prompt, s, o);
    BOOST_CHECK_EQUAL(r2.text, "I see.\n### Inside, it is dark.");
    BOOST_CHECK_EQUAL(r2.stop_string, "\nBob:");
}

BOOST_AUTO_TEST_CASE(multibyte_text_and_leading_space) {
    if (!have_tokenizer()) return;
    const auto& tok = mistral_tokenizer();
    const std::string text = "Voilà \xF0\x9F\x90\x89 \xE4\xBD\xA0\xE5\xA5\xBD!";  // emoji by byte fallback
    const auto reply = encode(text, false);
    const std::vector<std::int32_t> prompt = {1, 22557};
    GenerationOptions o;
    o.eos_ids = {2};
    for (bool keep : {false, true}) {
        ScriptedModel m(32000, reply, 2);
        Generator g(m, &tok);
        Sampler s(greedy_params());
        o.keep_leading_space = keep;
        std::vector<std::string> pieces;
        const auto r = g.generate(prompt, s, o, [&](std::string_view p) { pieces.emplace_back(p); });
        for (const auto& p : pieces) BOOST_CHECK(text::detail::utf8_is_valid(p));
        // SentencePiece decoding drops the dummy-prefix space of the first piece; keep it on request
        BOOST_CHECK_EQUAL(r.text, keep ? " " + text : text);
        BOOST_CHECK_EQUAL(tok.decode(r.tokens), text);
    }
}

BOOST_AUTO_TEST_CASE(cancel_between_tokens) {
    if (!have_tokenizer()) return;
    const auto& tok = mistral_tokenizer();
    const auto reply = encode("one two three four five six seven eight nine ten", false);
    ScriptedModel m(32000, reply, 1);
    Generator g(m, &tok);
    Sampler s(greedy_params());
    std::atomic<bool> cancel{false};
    GenerationOptions o;
    o.cancel = &cancel;
    const auto r = g.generate(std::vector<std::int32_t>{1}, s, o, [&](std::string_view p) {
        if (p.find("three") != std::string_view::npos) cancel = true;
    });
    BOOST_CHECK(r.reason == StopReason::Cancelled);
    BOOST_CHECK_EQUAL(r.text, "one two three");
    BOOST_CHECK_EQUAL(r.tokens.size(), 3u);
}

BOOST_AUTO_TEST_CASE(cache_reuse_counts_with_scripted_model) {
    ScriptedModel m(50, {7, 8, 9}, 4);
    Generator g(m, nullptr, 8);
    Sampler s(greedy_params());
    GenerationOptions o;
    o.eos_ids = {2};
    const std::vector<std::int32_t> p1 = {1, 3, 4, 5};
    auto r = g.generate(p1, s, o);
    BOOST_CHECK(r.tokens == (std::vector<std::int32_t>{7, 8, 9}));
    BOOST_CHECK(g.cache().tokens() == (std::vector<std::int32_t>{1, 3, 4, 5, 7, 8, 9}));
    // the next prompt extends prompt + reply: only the 2 new tokens are prefilled
    std::vector<std::int32_t> p2 = {1, 3, 4, 5, 7, 8, 9, 11, 12};
    m.prompt_len = 9;
    const std::int64_t before = m.tokens_run;
    r = g.generate(p2, s, o);
    BOOST_CHECK_EQUAL(r.reused_tokens, 7);
    BOOST_CHECK_EQUAL(r.prefilled_tokens, 2);
    BOOST_CHECK_EQUAL(m.tokens_run - before, 2 + 3);
    // the same prompt again (regenerate): all but the last token reused
    r = g.generate(p2, s, o);
    BOOST_CHECK_EQUAL(r.reused_tokens, 8);
    BOOST_CHECK_EQUAL(r.prefilled_tokens, 1);
    // an edited history: reuse up to the first difference
    std::vector<std::int32_t> p3 = {1, 3, 4, 6, 7};
    m.prompt_len = 5;
    r = g.generate(p3, s, o);
    BOOST_CHECK_EQUAL(r.reused_tokens, 3);
    // no reuse
    o.reuse_cache = false;
    r = g.generate(p3, s, o);
    BOOST_CHECK_EQUAL(r.reused_tokens, 0);
    BOOST_CHECK_EQUAL(r.prefilled_tokens, 5);
}

BOOST_AUTO_TEST_CASE(greedy_matches_transformers) {
    for (const char* name : {"swa_long", "gqa4_old"}) {
        auto model = MistralModel<Cpu<>>::from_dir(test::fixture_dir(name));
        const auto j = test::golden_json(name);
        const auto want = test::ids_of(j, "greedy_new");
        Generator g(model);
        Sampler s(greedy_params());
        GenerationOptions o;
        o.max_new_tokens = static_cast<int>(want.size());
        const auto r = g.generate(test::ids_of(j, "greedy_prompt"), s, o);
        BOOST_CHECK_MESSAGE(r.tokens == want, name << ": greedy continuation differs from transformers");
    }
}

// The picker-path tests: the fixture model with a 7-token prefill chunk, a 20-token prompt (longer
// than one chunk), and sampler settings with top-k and a repetition penalty.
static MistralModel<Cpu<>> picker_test_model() {
    auto model = MistralModel<Cpu<>>::from_dir(test::fixture_dir("swa_long"));
    model.set_chunk_size(7);
    return model;
}
static std::vector<std::int32_t> picker_test_prompt() {
    const auto ids = test::ids_of(test::golden_json("swa_long"), "ids");
    return {ids.begin(), ids.begin() + 20};
}
static SamplerParams picker_test_params(float temperature) {
    SamplerParams sp;
    sp.temperature = temperature;
    sp.top_k = 40;
    sp.repetition_penalty = 1.2f;
    sp.seed = 7;
    return sp;
}

BOOST_AUTO_TEST_CASE(logits_picker_path_matches_the_sampler_path) {
    // generate(prompt, LogitsPicker) runs MistralModel::forward_pick: the logits stay in the
    // backend's memory and the picker gets the row and the history. With a CPU sampler inside the
    // picker, the tokens equal generate(prompt, Sampler) (greedy and sampled, with penalties, over
    // a prompt longer than one prefill chunk), and the history the picker sees is prompt + tokens.
    auto model = picker_test_model();
    const std::vector<std::int32_t> prompt = picker_test_prompt();
    for (const float temperature : {0.0f, 0.9f}) {
        const SamplerParams sp = picker_test_params(temperature);
        Sampler a(sp), b(sp);
        Generator ga(model), gb(model);
        GenerationOptions o;
        o.max_new_tokens = 10;
        const auto ra = ga.generate(prompt, a, o);
        std::vector<std::int32_t> seen;
        const LogitsPicker pick = [&](float* logits, std::int64_t vocab, std::span<const std::int32_t> history) {
            BOOST_REQUIRE_EQUAL(vocab, model.config().vocab);
            seen.assign(history.begin(), history.end());
            return b.sample(std::span<const float>(logits, static_cast<std::size_t>(vocab)), history);
        };
        const auto rb = gb.generate(prompt, pick, o);
        BOOST_CHECK_MESSAGE(ra.tokens == rb.tokens, "temperature " << temperature << ": the picker path differs");
        std::vector<std::int32_t> want(prompt);
        want.insert(want.end(), rb.tokens.begin(), rb.tokens.end() - 1);
        BOOST_CHECK(seen == want);
    }
    Generator g(model);
    BOOST_CHECK_THROW(g.generate(prompt, LogitsPicker{}, {}), ArgumentError);
}

BOOST_AUTO_TEST_CASE(step_picker_path_matches_the_sampler_path) {
    // generate(prompt, StepPicker&) runs MistralModel::forward_pick(ids, cache, picker, history):
    // prepare (with the history) before the step, enqueue on the last row inside it, finish after.
    // A CPU sampler behind the three calls gives generate(prompt, Sampler)'s tokens; each call
    // comes once per pick, in order; a prepare that throws leaves the cache as it was.
    struct HostStepPicker final : generate::StepPicker {
        Sampler s;
        std::vector<std::int32_t> history;
        std::int32_t id = -1;
        std::string calls;
        explicit HostStepPicker(const SamplerParams& p) : s(p) {}
        void prepare(std::int64_t vocab, std::span<const std::int32_t> h) override {
            for (const std::int32_t v : h)
                if (v < 0 || v >= vocab) throw ArgumentError("history id out of range");
            history.assign(h.begin(), h.end());
            calls += 'p';
        }
        void enqueue(float* logits, std::int64_t vocab) override {
            id = s.sample(std::span<const float>(logits, static_cast<std::size_t>(vocab)), history);
            calls += 'e';
        }
        std::int32_t finish() override {
            calls += 'f';
            return id;
        }
        std::uint64_t version() const override { return 1; }
    };
    auto model = picker_test_model();
    const std::vector<std::int32_t> prompt = picker_test_prompt();
    for (const float temperature : {0.0f, 0.9f}) {
        const SamplerParams sp = picker_test_params(temperature);
        Sampler a(sp);
        HostStepPicker b(sp);
        Generator ga(model), gb(model);
        GenerationOptions o;
        o.max_new_tokens = 10;
        const auto ra = ga.generate(prompt, a, o);
        const auto rb = gb.generate(prompt, b, o);
        BOOST_CHECK_MESSAGE(ra.tokens == rb.tokens, "temperature " << temperature << ": the step-picker path differs");
        std::string want;
        for (std::size_t i = 0; i < rb.tokens.size(); ++i) want += "pef";
        BOOST_CHECK_EQUAL(b.calls, want);
    }
    HostStepPicker p(SamplerParams{});
    auto cache = model.make_cache();
    const std::vector<std::int32_t> bad{1, static_cast<std::int32_t>(model.config().vocab)};
    BOOST_CHECK_THROW(model.forward_pick(std::span(prompt), cache, p, std::span(bad)), ArgumentError);
    BOOST_CHECK_EQUAL(cache.n_past(), 0);
    BOOST_CHECK_THROW(model.forward_pick(std::span<const std::int32_t>(), cache, p, std::span(prompt)), ArgumentError);
}

BOOST_AUTO_TEST_CASE(reuse_gives_identical_output_on_fixture) {
    // Three turns on the sliding-window fixture (window 16: the ring wraps, rewinds use the slack):
    // each prompt = previous prompt + reply + new ids. With reuse only the new tokens are
    // prefilled; the output equals a generator that prefills everything, greedy and sampled.
    auto model = MistralModel<Cpu<>>::from_dir(test::fixture_dir("swa_long"));
    const auto ids = test::ids_of(test::golden_json("swa_long"), "ids");
    for (const float temperature : {0.0f, 0.9f}) {
        SamplerParams sp;
        sp.temperature = temperature;
        sp.top_k = 40;
        sp.repetition_penalty = 1.1f;
        sp.seed = 99;
        Sampler s_reuse(sp), s_fresh(sp);
        Generator reuse(model, nullptr, 32), fresh(model);
        GenerationOptions o;
        o.max_new_tokens = 12;
        GenerationOptions o_fresh = o;
        o_fresh.reuse_cache = false;
        std::vector<std::int32_t> prompt(ids.begin(), ids.begin() + 20);
        std::int64_t total_prefilled = 0;
        for (int turn = 0; turn < 3; ++turn) {
            const auto a = reuse.generate(prompt, s_reuse, o);
            const auto b = fresh.generate(prompt, s_fresh, o_fresh);
            BOOST_CHECK_MESSAGE(a.tokens == b.tokens, "turn " << turn << " temperature " << temperature
                                                              << ": output differs with cache reuse");
            BOOST_CHECK_EQUAL(b.prefilled_tokens, static_cast<std::int64_t>(prompt.size()));
            if (turn == 0) {
                BOOST_CHECK_EQUAL(a.prefilled_tokens, static_cast<std::int64_t>(prompt.size()));
            } else {
                // the previous prompt and all but the last generated token were cached: 1 + 5 new tokens
                BOOST_CHECK_EQUAL(a.prefilled_tokens, 6);
                BOOST_CHECK_EQUAL(a.reused_tokens, static_cast<std::int64_t>(prompt.size()) - 6);
            }
            total_prefilled += a.prefilled_tokens;
            prompt.insert(prompt.end(), a.tokens.begin(), a.tokens.end());
            prompt.insert(prompt.end(), ids.begin() + 20 + 5 * turn, ids.begin() + 25 + 5 * turn);
        }
        BOOST_TEST_MESSAGE("temperature " << temperature << ": prefilled " << total_prefilled << " tokens with reuse");
        // regenerate: the same prompt again, with the sampler restarted, gives the same reply
        // after prefilling one token (the cache is rewound past the reply: needs the slack)
        const std::vector<std::int32_t> last_prompt(prompt.begin(), prompt.end() - 5 - 12);
        s_reuse.reseed(5);
        const auto x = reuse.generate(last_prompt, s_reuse, o);
        s_reuse.reseed(5);
        const auto y = reuse.generate(last_prompt, s_reuse, o);
        BOOST_CHECK(x.tokens == y.tokens);
        BOOST_CHECK_EQUAL(y.prefilled_tokens, 1);
    }
}

BOOST_AUTO_TEST_CASE(limarp_chat_turns_with_real_tokenizer) {
    if (!have_tokenizer()) return;
    const auto& tok = mistral_tokenizer();
    const auto dir = std::filesystem::temp_directory_path() / "limarp_test_wide_vocab";
    test::write_wide_vocab_model(test::fixture_dir("swa_long"), dir);
    auto model = MistralModel<Cpu<>>::from_dir(dir);
    BOOST_REQUIRE_EQUAL(model.config().vocab, 32002);

    text::RoleplaySetup setup{"Aria", "Bob", "An elf ranger.", "A traveler.", "{{user}} meets {{char}}."};
    const text::AlpacaPrompt fmt(setup);
    SamplerParams sp;
    sp.temperature = 0.8f;
    sp.min_p = 0.02f;
    sp.repetition_penalty = 1.15f;
    sp.seed = 3;
    Sampler s_reuse(sp), s_fresh(sp);
    Generator reuse(model, &tok, 64), fresh(model, &tok);
    GenerationOptions o;
    o.max_new_tokens = 16;
    o.eos_ids = default_eos_ids(tok);
    o.stop_strings = fmt.stop_strings();
    GenerationOptions o_fresh = o;
    o_fresh.reuse_cache = false;

    std::vector<text::Turn> turns = {{text::Speaker::Character, "Welcome to the woods, {{user}}."}};
    for (const char* msg : {"Hello! Who are you?", "Can you show me the way out?", "Thanks."}) {
        turns.push_back({text::Speaker::User, msg});
        const auto prompt = encode(fmt.format(turns, text::LengthTag::short_), true);
        std::string streamed;
        const auto a = reuse.generate(prompt, s_reuse, o, [&](std::string_view p) { streamed += p; });
        const auto b = fresh.generate(prompt, s_fresh, o_fresh);
        BOOST_CHECK(a.tokens == b.tokens);
        BOOST_CHECK_EQUAL(a.text, b.text);
        BOOST_CHECK_EQUAL(streamed, a.text);
        if (turns.size() > 2) BOOST_CHECK_LT(a.prefilled_tokens, static_cast<std::int64_t>(prompt.size()) / 2);
        BOOST_TEST_MESSAGE("prompt " << prompt.size() << " tokens, prefilled " << a.prefilled_tokens << ", reply "
                                     << a.tokens.size() << " tokens (" << to_string(a.reason) << ")");
        turns.push_back({text::Speaker::Character, a.text});
    }
    std::filesystem::remove_all(dir);
}

BOOST_AUTO_TEST_CASE(tokenizer_smaller_than_model_is_an_error) {
    if (!have_tokenizer()) return;
    const auto tok = text::Tokenizer::from_sentencepiece(tokenizer_path());  // 32000 ids
    ScriptedModel m(32002, {}, 1);
    BOOST_CHECK_THROW(Generator(m, &tok), ArgumentError);
}

BOOST_AUTO_TEST_SUITE_END()
