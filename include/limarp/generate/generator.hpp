#pragma once
/// \file generator.hpp
/// \brief `Generator<Model>`: autoregressive generation with a Sampler, EOS ids, a token
/// limit, stop strings matched across token boundaries, a streaming text callback,
/// cancellation between tokens, and KV-cache reuse across calls (only the tokens after the
/// longest prefix shared with the previous call's tokens are prefilled).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "limarp/core/error.hpp"
#include "limarp/generate/sampler.hpp"
#include "limarp/generate/step_picker.hpp"
#include "limarp/generate/stop_strings.hpp"
#include "limarp/model/kv_cache.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/text/tokenizer.hpp"

namespace limarp::generate {

/// A causal language model the Generator can drive: `forward(logits, ids, cache, rows)` runs
/// ids after the cached tokens (as MistralModel::forward), `config().vocab` is the logit row
/// length, `make_cache(rewind_slack)` gives an empty cache of type `M::cache_type` (`KvCache` on
/// the CPU) with KvCache's interface (n_past, tokens, clear, rewind, reusable_prefix, ...).
template <class M>
concept CausalLanguageModel = requires(M& m, const M& cm, float* logits, std::span<const std::int32_t> ids,
                                       typename M::cache_type& cache) {
    m.forward(logits, ids, cache, LogitsRows::Last);
    { cm.config().vocab } -> std::convertible_to<std::int64_t>;
    { cm.make_cache(std::int64_t{0}) } -> std::same_as<typename M::cache_type>;
};

/// Why generation ended.
enum class StopReason : std::uint8_t {
    Eos,         ///< an end-of-sequence id was sampled (not included in the output)
    MaxTokens,   ///< the token limit was reached
    StopString,  ///< a stop string completed (not included in the text)
    Cancelled,   ///< the cancel flag was set
};

/// `eos`, `max_tokens`, `stop_string` or `cancelled`.
constexpr std::string_view to_string(StopReason r) noexcept {
    switch (r) {
        case StopReason::Eos: return "eos";
        case StopReason::MaxTokens: return "max_tokens";
        case StopReason::StopString: return "stop_string";
        case StopReason::Cancelled: return "cancelled";
    }
    return "?";
}

/// What to generate and when to stop.
struct GenerationOptions {
    int max_new_tokens = 256;               ///< at most this many new tokens (>= 0)
    std::vector<std::int32_t> eos_ids;      ///< sampling one of these ends generation
    std::vector<std::string> stop_strings;  ///< text that ends generation (needs a tokenizer)
    bool reuse_cache = true;                ///< keep the cached prefix shared with the previous call
    bool skip_special = true;               ///< special tokens decode to nothing
    bool keep_leading_space = false;        ///< keep the space that SentencePiece decoding drops from the first piece
    const std::atomic<bool>* cancel = nullptr;  ///< when it becomes true, generation ends before the next token
};

/// The outcome of Generator::generate().
struct GenerationResult {
    std::string text;                  ///< the generated text (all text-callback pieces), without the stop string
    std::vector<std::int32_t> tokens;  ///< the sampled ids (EOS excluded; a stop string's ids included)
    StopReason reason = StopReason::MaxTokens;  ///< why it ended
    std::string stop_string;                    ///< the stop string that matched, if any
    std::int64_t prompt_tokens = 0;             ///< prompt length
    std::int64_t reused_tokens = 0;             ///< prompt tokens whose keys/values were kept from the cache
    std::int64_t prefilled_tokens = 0;          ///< prompt tokens run through the model (prompt_tokens - reused_tokens)
    double prefill_seconds = 0;                 ///< time of the prompt forward pass and the first pick
    double decode_seconds = 0;                  ///< time of the one-token forward passes and their picks
};

/// Receives generated text as soon as it is final (never part of a UTF-8 character, never text
/// that could still turn into a stop string).
using TextCallback = std::function<void(std::string_view)>;
/// Receives every sampled id (EOS excluded) as soon as it is drawn.
using TokenCallback = std::function<void(std::int32_t)>;
/// Picks the next id from one row of logits [vocab] in the model's backend memory (scratch the
/// picker may overwrite), given the ids so far (prompt and generated).
using LogitsPicker = std::function<std::int32_t(float* logits, std::int64_t vocab, std::span<const std::int32_t> history)>;

/// Ids that end a turn for `tok`: its EOS, plus `</s>` and `<|im_end|>` when it has them
/// (Mistral-7B-OpenOrca's EOS is `<|im_end|>`, the base model's is `</s>`).
inline std::vector<std::int32_t> default_eos_ids(const text::Tokenizer& tok) {
    std::vector<std::int32_t> ids;
    auto add = [&](int id) {
        if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    };
    add(tok.eos_id());
    if (auto id = tok.token_id("</s>")) add(*id);
    if (auto id = tok.token_id("<|im_end|>")) add(*id);
    return ids;
}

/// Generates continuations with a model it does not own, keeping one KvCache across calls.
template <CausalLanguageModel M> class Generator {
public:
    /// A generator for `model` (which must outlive it). `tok` (may be null; must outlive it)
    /// decodes the text for the callback and the stop strings. `rewind_slack` extra cache rows
    /// let a later prompt drop up to that many recent tokens (a regenerated reply) and still
    /// reuse the rest after a sliding-window ring has wrapped.
    /// \throws ArgumentError when the model's vocabulary is larger than the tokenizer's.
    explicit Generator(M& model, const text::Tokenizer* tok = nullptr, std::int64_t rewind_slack = 256)
        : model_(&model), tok_(tok), cache_(model.make_cache(rewind_slack)) {
        const auto V = static_cast<std::int64_t>(model.config().vocab);
        if (tok && tok->vocab_size() < V)
            throw ArgumentError("generator: the model has " + std::to_string(V) + " token ids but the tokenizer only " +
                                std::to_string(tok->vocab_size()) + " (wrong tokenizer, or missing added tokens)");
        logits_.resize(static_cast<std::size_t>(V));
    }

    /// Generates after `prompt` (ids, BOS included when wanted). With `opt.reuse_cache`, the
    /// cached tokens that `prompt` starts with are kept (KvCache::reusable_prefix) and only the
    /// rest is prefilled; otherwise the cache is cleared first. After the call the cache holds
    /// the prompt and every sampled id but the last. The logits come back to host memory and
    /// `sampler` picks each token there.
    /// \throws ArgumentError for an empty prompt, a negative limit, stop strings without a
    /// tokenizer, or an id outside the model's vocabulary.
    GenerationResult generate(std::span<const std::int32_t> prompt, Sampler& sampler, const GenerationOptions& opt = {},
                              const TextCallback& on_text = {}, const TokenCallback& on_token = {}) {
        return run(prompt, opt, on_text, on_token,
                   [&](std::span<const std::int32_t> ids, std::span<const std::int32_t> history, bool pick) {
                       model_->forward(logits_.data(), ids, cache_, pick ? LogitsRows::Last : LogitsRows::None);
                       return pick ? sampler.sample(logits_, history) : std::int32_t{-1};
                   });
    }

    /// The same, but each token is picked where the logits are: `pick(logits, vocab, history)`
    /// gets the last row's logits in the model's backend memory (`MistralModel::forward_pick`;
    /// a device sampler such as `cuda_api::TokenSampler` copies back only the id) and the ids so
    /// far (prompt and generated), for the penalties.
    GenerationResult generate(std::span<const std::int32_t> prompt, const LogitsPicker& pick,
                              const GenerationOptions& opt = {}, const TextCallback& on_text = {},
                              const TokenCallback& on_token = {})
        requires requires(M& m, typename M::cache_type& c, std::span<const std::int32_t> ids) {
            m.forward_pick(ids, c, [](float*, std::int64_t) { return std::int32_t{0}; });
        }
    {
        if (!pick) throw ArgumentError("generate: the logits picker is empty");
        return run(prompt, opt, on_text, on_token,
                   [&](std::span<const std::int32_t> ids, std::span<const std::int32_t> history, bool want) {
                       if (!want) {
                           model_->forward(nullptr, ids, cache_, LogitsRows::None);
                           return std::int32_t{-1};
                       }
                       return static_cast<std::int32_t>(model_->forward_pick(
                           ids, cache_, [&](float* logits, std::int64_t vocab) { return pick(logits, vocab, history); }));
                   });
    }

    /// The same with a `StepPicker` (such as `cuda_api::TokenSampler`): its device work runs
    /// inside each step (`MistralModel::forward_pick(ids, cache, pick, history)`; on CUDA a decode
    /// step with its pick is one recorded graph and only the id comes back).
    GenerationResult generate(std::span<const std::int32_t> prompt, StepPicker& pick, const GenerationOptions& opt = {},
                              const TextCallback& on_text = {}, const TokenCallback& on_token = {})
        requires requires(M& m, typename M::cache_type& c, std::span<const std::int32_t> ids, StepPicker& p) {
            { m.forward_pick(ids, c, p, ids) } -> std::convertible_to<std::int32_t>;
        }
    {
        return run(prompt, opt, on_text, on_token,
                   [&](std::span<const std::int32_t> ids, std::span<const std::int32_t> history, bool want) {
                       if (!want) {
                           model_->forward(nullptr, ids, cache_, LogitsRows::None);
                           return std::int32_t{-1};
                       }
                       return model_->forward_pick(ids, cache_, pick, history);
                   });
    }

    /// The cache (prompt and generated tokens of the last call).
    typename M::cache_type& cache() noexcept { return cache_; }
    /// Empties the cache: the next call prefills its whole prompt.
    void reset() { cache_.clear(); }
    /// The model.
    M& model() noexcept { return *model_; }
    /// The tokenizer, or null.
    const text::Tokenizer* tokenizer() const noexcept { return tok_; }

private:
    // The loop of generate(): `next(ids, history, pick)` runs ids after the cache and, when
    // `pick`, returns the next id.
    template <class Next>
    GenerationResult run(std::span<const std::int32_t> prompt, const GenerationOptions& opt, const TextCallback& on_text,
                         const TokenCallback& on_token, Next&& next) {
        using clock = std::chrono::steady_clock;
        if (prompt.empty()) throw ArgumentError("generate: the prompt is empty");
        if (opt.max_new_tokens < 0) throw ArgumentError("generate: max_new_tokens is negative");
        if (!tok_ && !opt.stop_strings.empty()) throw ArgumentError("generate: stop strings need a tokenizer");
        StopStringMatcher stop(opt.stop_strings);

        GenerationResult r;
        r.prompt_tokens = static_cast<std::int64_t>(prompt.size());
        const std::int64_t keep = opt.reuse_cache ? cache_.reusable_prefix(prompt) : 0;
        if (keep == 0)
            cache_.clear();
        else
            cache_.rewind(keep);
        r.reused_tokens = keep;
        r.prefilled_tokens = r.prompt_tokens - keep;

        std::vector<std::int32_t> history(prompt.begin(), prompt.end());
        auto t0 = clock::now();
        const auto cancelled = [&] { return opt.cancel && opt.cancel->load(std::memory_order_relaxed); };
        // no pick when nothing will be generated (no random number drawn, as before a cancelled token)
        std::int32_t id =
            next(prompt.subspan(static_cast<std::size_t>(keep)), history, opt.max_new_tokens > 0 && !cancelled());
        r.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();

        std::optional<text::StreamDecoder> dec;
        if (tok_) dec.emplace(*tok_, opt.skip_special);
        bool first_text = true;
        auto emit = [&](std::string s) {
            if (s.empty()) return;
            r.text += s;
            if (on_text) on_text(s);
        };
        for (int i = 0;; ++i) {
            if (i >= opt.max_new_tokens) {
                r.reason = StopReason::MaxTokens;
                break;
            }
            if (cancelled()) {
                r.reason = StopReason::Cancelled;
                break;
            }
            if (std::find(opt.eos_ids.begin(), opt.eos_ids.end(), id) != opt.eos_ids.end()) {
                r.reason = StopReason::Eos;
                break;
            }
            r.tokens.push_back(id);
            history.push_back(id);
            if (on_token) on_token(id);
            if (dec) {
                std::string piece = dec->push(id);
                if (first_text && !piece.empty()) {
                    first_text = false;
                    if (opt.keep_leading_space && tok_->dummy_prefix() != text::DummyPrefix::None &&
                        tok_->piece(id).starts_with("\xE2\x96\x81") && !piece.starts_with(' '))
                        piece.insert(piece.begin(), ' ');
                }
                emit(stop.push(piece));
                if (stop.stopped()) {
                    r.reason = StopReason::StopString;
                    r.stop_string = stop.matched();
                    break;
                }
            }
            if (i + 1 >= opt.max_new_tokens) {
                r.reason = StopReason::MaxTokens;
                break;  // the last token is not run: nothing would use its logits
            }
            t0 = clock::now();
            const std::int32_t last = id;
            const bool stop_now = cancelled();  // the cancelled token is run but not picked
            id = next(std::span<const std::int32_t>(&last, 1), history, !stop_now);
            r.decode_seconds += std::chrono::duration<double>(clock::now() - t0).count();
        }
        if (dec && r.reason != StopReason::StopString) {
            emit(stop.push(dec->flush()));
            if (stop.stopped()) {
                r.reason = StopReason::StopString;
                r.stop_string = stop.matched();
            } else {
                emit(stop.flush());
            }
        }
        return r;
    }

    M* model_;
    const text::Tokenizer* tok_;
    typename M::cache_type cache_;
    std::vector<float> logits_;
};

}  // namespace limarp::generate
