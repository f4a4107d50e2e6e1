#pragma once
/// \file sampler.hpp
/// \brief `Sampler`: a composable chain of logit processors with a configurable order
/// (SillyTavern's `sampler_order`), then a draw from a seedable RNG.
///
/// Stages (each one a free function here, tested against its definition):
///  - repetition penalty over the last N tokens (transformers / llama.cpp: a positive logit is
///    divided by the penalty, a negative one multiplied), frequency and presence penalties
///    (OpenAI: logit -= count * frequency + (count > 0) * presence, over the same N tokens);
///  - temperature (logits / T);
///  - truncation: top-k, top-a, tail-free (tfs), typical-p, top-p, min-p. These keep at least
///    one token and compute probabilities from the current logits (so from the temperature
///    when it ran before them).
///
/// Temperature 0 means greedy: the penalty stages run (in their order), then the token with the
/// largest logit is taken; no random number is drawn.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "limarp/core/error.hpp"

namespace limarp::generate {

/// One stage of the sampler chain.
enum class SamplerStage : std::uint8_t {
    RepetitionPenalty,  ///< `rep_pen` (Kobold id 6)
    FrequencyPenalty,   ///< `freq_pen`
    PresencePenalty,    ///< `presence_pen`
    TopK,               ///< `top_k` (Kobold id 0)
    TopA,               ///< `top_a` (Kobold id 1)
    TailFree,           ///< `tfs` (Kobold id 3)
    Typical,            ///< `typical_p` (Kobold id 4)
    TopP,               ///< `top_p` (Kobold id 2)
    MinP,               ///< `min_p`
    Temperature,        ///< `temperature` (Kobold id 5)
};

/// The canonical name of a stage (`rep_pen`, `top_k`, ...), as accepted by parse_sampler_stage().
constexpr std::string_view to_string(SamplerStage s) noexcept {
    switch (s) {
        case SamplerStage::RepetitionPenalty: return "rep_pen";
        case SamplerStage::FrequencyPenalty: return "freq_pen";
        case SamplerStage::PresencePenalty: return "presence_pen";
        case SamplerStage::TopK: return "top_k";
        case SamplerStage::TopA: return "top_a";
        case SamplerStage::TailFree: return "tfs";
        case SamplerStage::Typical: return "typical_p";
        case SamplerStage::TopP: return "top_p";
        case SamplerStage::MinP: return "min_p";
        case SamplerStage::Temperature: return "temperature";
    }
    return "?";
}

/// The default order: penalties, then top_k, top_a, tfs, typical_p, top_p, min_p, temperature
/// (KoboldAI / SillyTavern's default `[6, 0, 1, 3, 4, 2, 5]` with the other stages added).
inline std::vector<SamplerStage> default_sampler_order() {
    return {SamplerStage::RepetitionPenalty,
            SamplerStage::FrequencyPenalty,
            SamplerStage::PresencePenalty,
            SamplerStage::TopK,
            SamplerStage::TopA,
            SamplerStage::TailFree,
            SamplerStage::Typical,
            SamplerStage::TopP,
            SamplerStage::MinP,
            SamplerStage::Temperature};
}

/// Parses a stage: a canonical name, an alias (`repetition_penalty`, `frequency_penalty`,
/// `presence_penalty`, `typical`, `tail_free`, `temp`, `top-k` with dashes...) or a KoboldAI
/// `sampler_order` number (0 top_k, 1 top_a, 2 top_p, 3 tfs, 4 typical_p, 5 temperature,
/// 6 rep_pen). \throws ArgumentError listing the valid names.
inline SamplerStage parse_sampler_stage(std::string_view s) {
    std::string k(s);
    for (char& c : k) {
        if (c == '-') c = '_';
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    struct Alias {
        std::string_view name;
        SamplerStage stage;
    };
    static constexpr Alias kAliases[] = {
        {"rep_pen", SamplerStage::RepetitionPenalty},
        {"repetition_penalty", SamplerStage::RepetitionPenalty},
        {"6", SamplerStage::RepetitionPenalty},
        {"freq_pen", SamplerStage::FrequencyPenalty},
        {"frequency_penalty", SamplerStage::FrequencyPenalty},
        {"presence_pen", SamplerStage::PresencePenalty},
        {"presence_penalty", SamplerStage::PresencePenalty},
        {"top_k", SamplerStage::TopK},
        {"0", SamplerStage::TopK},
        {"top_a", SamplerStage::TopA},
        {"1", SamplerStage::TopA},
        {"tfs", SamplerStage::TailFree},
        {"tfs_z", SamplerStage::TailFree},
        {"tail_free", SamplerStage::TailFree},
        {"3", SamplerStage::TailFree},
        {"typical_p", SamplerStage::Typical},
        {"typical", SamplerStage::Typical},
        {"4", SamplerStage::Typical},
        {"top_p", SamplerStage::TopP},
        {"2", SamplerStage::TopP},
        {"min_p", SamplerStage::MinP},
        {"temperature", SamplerStage::Temperature},
        {"temp", SamplerStage::Temperature},
        {"5", SamplerStage::Temperature},
    };
    for (const Alias& a : kAliases)
        if (a.name == k) return a.stage;
    std::string valid;
    for (SamplerStage st : default_sampler_order())
        valid += std::string(valid.empty() ? "" : ", ") + std::string(to_string(st));
    throw ArgumentError(
        "unknown sampler \"" + std::string(s) + "\"; valid: " + valid +
        " or KoboldAI numbers 0-6 (0 top_k, 1 top_a, 2 top_p, 3 tfs, 4 typical_p, 5 temperature, 6 rep_pen)");
}

/// Parses an order such as `"rep_pen,top_k,top_p,temperature"` or `"6,0,1,3,4,2,5"` (separators:
/// comma, space, brackets). \throws ArgumentError for an unknown or repeated stage, or an empty list.
inline std::vector<SamplerStage> parse_sampler_order(std::string_view s) {
    std::vector<SamplerStage> out;
    std::size_t i = 0;
    auto sep = [](char c) { return c == ',' || c == ' ' || c == '\t' || c == '[' || c == ']'; };
    while (i < s.size()) {
        while (i < s.size() && sep(s[i])) ++i;
        std::size_t j = i;
        while (j < s.size() && !sep(s[j])) ++j;
        if (j > i) {
            const SamplerStage st = parse_sampler_stage(s.substr(i, j - i));
            if (std::find(out.begin(), out.end(), st) != out.end())
                throw ArgumentError("sampler order: " + std::string(to_string(st)) + " appears twice");
            out.push_back(st);
        }
        i = j;
    }
    if (out.empty()) throw ArgumentError("sampler order: empty");
    return out;
}

/// The settings of a Sampler. Defaults disable every stage except temperature 1.
struct SamplerParams {
    float temperature = 1.0f;         ///< >= 0; 0 = greedy
    int top_k = 0;                    ///< keep the k most likely tokens; <= 0 disables
    float top_p = 1.0f;               ///< nucleus mass in (0, 1]; 1 disables
    float min_p = 0.0f;               ///< keep p >= min_p * p_max, in [0, 1]; 0 disables
    float typical_p = 1.0f;           ///< locally typical mass in (0, 1]; 1 disables
    float top_a = 0.0f;               ///< keep p >= top_a * p_max^2, >= 0; 0 disables
    float tfs = 1.0f;                 ///< tail-free z in (0, 1]; 1 disables
    float repetition_penalty = 1.0f;  ///< > 0; 1 disables
    int penalty_range = 64;           ///< the last N tokens the penalties look at; 0 disables them, < 0 = all
    float frequency_penalty = 0.0f;   ///< subtracted once per occurrence; 0 disables
    float presence_penalty = 0.0f;    ///< subtracted once per distinct token; 0 disables
    std::vector<SamplerStage> order = default_sampler_order();  ///< stages run in this order (only these)
    std::uint64_t seed = 0;  ///< RNG seed: the same seed, logits and history give the same tokens

    /// Whether a stage changes anything with these settings.
    bool active(SamplerStage s) const noexcept {
        const bool pen = penalty_range != 0;
        switch (s) {
            case SamplerStage::RepetitionPenalty: return pen && repetition_penalty != 1.0f;
            case SamplerStage::FrequencyPenalty: return pen && frequency_penalty != 0.0f;
            case SamplerStage::PresencePenalty: return pen && presence_penalty != 0.0f;
            case SamplerStage::TopK: return top_k > 0;
            case SamplerStage::TopA: return top_a > 0.0f;
            case SamplerStage::TailFree: return tfs < 1.0f;
            case SamplerStage::Typical: return typical_p < 1.0f;
            case SamplerStage::TopP: return top_p < 1.0f;
            case SamplerStage::MinP: return min_p > 0.0f;
            case SamplerStage::Temperature: return temperature != 1.0f;
        }
        return false;
    }

    /// Checks ranges, and that every active stage is in `order` and none twice.
    /// \throws ArgumentError naming the parameter and its valid range.
    void validate() const {
        auto bad = [](const char* name, double v, const char* range) {
            throw ArgumentError(std::string("sampler: ") + name + " = " + std::to_string(v) + " is outside " + range);
        };
        if (!(temperature >= 0.0f) || !std::isfinite(temperature)) bad("temperature", temperature, "[0, inf)");
        if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p", top_p, "(0, 1]");
        if (!(min_p >= 0.0f && min_p <= 1.0f)) bad("min_p", min_p, "[0, 1]");
        if (!(typical_p > 0.0f && typical_p <= 1.0f)) bad("typical_p", typical_p, "(0, 1]");
        if (!(top_a >= 0.0f) || !std::isfinite(top_a)) bad("top_a", top_a, "[0, inf)");
        if (!(tfs > 0.0f && tfs <= 1.0f)) bad("tfs", tfs, "(0, 1]");
        if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
            bad("rep_pen", repetition_penalty, "(0, inf)");
        if (!std::isfinite(frequency_penalty)) bad("freq_pen", frequency_penalty, "the finite numbers");
        if (!std::isfinite(presence_penalty)) bad("presence_pen", presence_penalty, "the finite numbers");
        for (std::size_t i = 0; i < order.size(); ++i)
            for (std::size_t j = 0; j < i; ++j)
                if (order[i] == order[j])
                    throw ArgumentError("sampler order: " + std::string(to_string(order[i])) + " appears twice");
        for (SamplerStage s : default_sampler_order())
            if (s != SamplerStage::Temperature && active(s) && std::find(order.begin(), order.end(), s) == order.end())
                throw ArgumentError(
                    "sampler: " + std::string(to_string(s)) +
                    " is enabled but missing from the sampler order; add it to the order or disable it");
        if (temperature > 0.0f && temperature != 1.0f &&
            std::find(order.begin(), order.end(), SamplerStage::Temperature) == order.end())
            throw ArgumentError("sampler: temperature is set but missing from the sampler order");
    }
};

/// A token and its current logit and probability.
struct Candidate {
    std::int32_t id;  ///< token id
    float logit;      ///< current (processed) logit
    float p;          ///< probability, valid after Candidates::softmax()
};

/// The tokens still in play while the chain runs.
struct Candidates {
    std::vector<Candidate> items;  ///< the candidates
    bool sorted = false;           ///< items are sorted by decreasing logit

    /// Resets to every token of `logits` [vocab], in id order.
    void assign(std::span<const float> logits) {
        items.resize(logits.size());
        for (std::size_t i = 0; i < logits.size(); ++i) items[i] = {static_cast<std::int32_t>(i), logits[i], 0.0f};
        sorted = false;
    }
    /// Sorts by decreasing logit (ties: smaller id first), if not sorted yet.
    void sort() {
        if (sorted) return;
        std::sort(items.begin(), items.end(), [](const Candidate& a, const Candidate& b) {
            return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
        });
        sorted = true;
    }
    /// Sorts, then sets p = softmax(logits) over the remaining items.
    void softmax() {
        sort();
        if (items.empty()) return;
        const float mx = items.front().logit;
        double z = 0;
        for (Candidate& c : items) {
            c.p = std::exp(c.logit - mx);
            z += c.p;
        }
        for (Candidate& c : items) c.p = static_cast<float>(c.p / z);
    }
    /// Keeps the first `n` items (at least 1). \pre sorted.
    void truncate(std::size_t n) { items.resize(std::max<std::size_t>(1, std::min(n, items.size()))); }
};

/// \cond
namespace detail {
/// Occurrences of each token among the last `range` ids of `history` (all when range < 0).
inline std::unordered_map<std::int32_t, int> recent_counts(std::span<const std::int32_t> history, int range) {
    std::unordered_map<std::int32_t, int> counts;
    if (range == 0) return counts;
    const std::size_t n = range < 0 ? history.size() : std::min(history.size(), static_cast<std::size_t>(range));
    for (std::size_t i = history.size() - n; i < history.size(); ++i) ++counts[history[i]];
    return counts;
}
}  // namespace detail
/// \endcond

/// Repetition penalty: every token among the last `range` ids of `history` (all when < 0, none
/// when 0) gets logit / penalty when positive, logit * penalty otherwise.
inline void apply_repetition_penalty(Candidates& c, std::span<const std::int32_t> history, float penalty, int range) {
    if (penalty == 1.0f || range == 0) return;
    const auto counts = detail::recent_counts(history, range);
    if (counts.empty()) return;
    for (Candidate& x : c.items)
        if (counts.count(x.id)) x.logit = x.logit > 0 ? x.logit / penalty : x.logit * penalty;
    c.sorted = false;
}

/// Frequency penalty: logit -= count * `penalty`, count = occurrences among the last `range` ids.
inline void apply_frequency_penalty(Candidates& c, std::span<const std::int32_t> history, float penalty, int range) {
    if (penalty == 0.0f || range == 0) return;
    const auto counts = detail::recent_counts(history, range);
    if (counts.empty()) return;
    for (Candidate& x : c.items)
        if (auto it = counts.find(x.id); it != counts.end()) x.logit -= static_cast<float>(it->second) * penalty;
    c.sorted = false;
}

/// Presence penalty: logit -= `penalty` for every token among the last `range` ids.
inline void apply_presence_penalty(Candidates& c, std::span<const std::int32_t> history, float penalty, int range) {
    if (penalty == 0.0f || range == 0) return;
    const auto counts = detail::recent_counts(history, range);
    if (counts.empty()) return;
    for (Candidate& x : c.items)
        if (counts.count(x.id)) x.logit -= penalty;
    c.sorted = false;
}

/// Temperature: logit /= t. \pre t > 0.
inline void apply_temperature(Candidates& c, float t) {
    if (t == 1.0f) return;
    for (Candidate& x : c.items) x.logit /= t;
}

/// Top-k: keeps the `k` largest logits (ties: smaller id); k <= 0 disables.
inline void apply_top_k(Candidates& c, int k) {
    if (k <= 0 || static_cast<std::size_t>(k) >= c.items.size()) return;
    if (!c.sorted) {
        const auto mid = c.items.begin() + k;
        std::partial_sort(c.items.begin(), mid, c.items.end(), [](const Candidate& a, const Candidate& b) {
            return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
        });
        c.sorted = true;
    }
    c.truncate(static_cast<std::size_t>(k));
}

/// Top-p (nucleus): keeps the most likely tokens until their probability mass reaches `p`
/// (the token that crosses `p` is kept); p >= 1 disables.
inline void apply_top_p(Candidates& c, float p) {
    if (p >= 1.0f) return;
    c.softmax();
    double cum = 0;
    std::size_t n = 0;
    while (n < c.items.size()) {
        cum += c.items[n++].p;
        if (cum >= p) break;
    }
    c.truncate(n);
}

/// Min-p: keeps tokens with p >= `min_p` * p_max; 0 disables.
inline void apply_min_p(Candidates& c, float min_p) {
    if (min_p <= 0.0f) return;
    c.softmax();
    const float thr = min_p * c.items.front().p;
    std::size_t n = 0;
    while (n < c.items.size() && c.items[n].p >= thr) ++n;
    c.truncate(n);
}

/// Top-a: keeps tokens with p >= `a` * p_max^2; 0 disables.
inline void apply_top_a(Candidates& c, float a) {
    if (a <= 0.0f) return;
    c.softmax();
    const float thr = a * c.items.front().p * c.items.front().p;
    std::size_t n = 0;
    while (n < c.items.size() && c.items[n].p >= thr) ++n;
    c.truncate(n);
}

/// Tail-free sampling (as llama.cpp): with sorted probabilities p, the absolute second
/// differences d_i = |(p_i - p_{i+1}) - (p_{i+1} - p_{i+2})|, normalised to sum 1, are summed
/// from the top; the tokens before the first index where the sum exceeds `z` are kept; 1 disables.
inline void apply_tail_free(Candidates& c, float z) {
    if (z >= 1.0f || c.items.size() <= 2) return;
    c.softmax();
    const std::size_t n = c.items.size();
    std::vector<double> d2(n - 2);
    double sum = 0;
    for (std::size_t i = 0; i + 2 < n; ++i) {
        const double d1a = static_cast<double>(c.items[i].p) - c.items[i + 1].p;
        const double d1b = static_cast<double>(c.items[i + 1].p) - c.items[i + 2].p;
        d2[i] = std::fabs(d1a - d1b);
        sum += d2[i];
    }
    if (sum <= 0) return;
    double cum = 0;
    std::size_t keep = n;
    for (std::size_t i = 0; i < d2.size(); ++i) {
        cum += d2[i] / sum;
        if (cum > z) {
            keep = i + 1;
            break;
        }
    }
    c.truncate(keep);
}

/// Locally typical sampling (Meister et al.; transformers' TypicalLogitsWarper): with the
/// entropy H = -sum p log p, tokens are ordered by |(-log p) - H| and kept, in that order,
/// until their mass reaches `mass` (the crossing token kept); 1 disables. Leaves the
/// candidates sorted by logit again.
inline void apply_typical(Candidates& c, float mass) {
    if (mass >= 1.0f) return;
    c.softmax();
    double h = 0;
    for (const Candidate& x : c.items)
        if (x.p > 0) h -= static_cast<double>(x.p) * std::log(static_cast<double>(x.p));
    std::vector<std::pair<double, std::size_t>> order(c.items.size());
    for (std::size_t i = 0; i < c.items.size(); ++i) {
        const double p = c.items[i].p;
        order[i] = {p > 0 ? std::fabs(-std::log(p) - h) : std::numeric_limits<double>::infinity(), i};
    }
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    double cum = 0;
    std::size_t n = 0;
    while (n < order.size()) {
        cum += c.items[order[n++].second].p;
        if (cum >= mass) break;
    }
    std::vector<Candidate> kept;
    kept.reserve(n);
    for (std::size_t i = 0; i < n; ++i) kept.push_back(c.items[order[i].second]);
    c.items = std::move(kept);
    c.sorted = false;
    c.sort();
}

/// The sampler chain: applies the stages of SamplerParams::order to a row of logits, then draws
/// a token with a `std::mt19937_64` (53-bit uniform, walked over the sorted probabilities, so
/// results do not depend on the standard library's distributions).
class Sampler {
public:
    /// A sampler with `params`. \throws ArgumentError when SamplerParams::validate() fails.
    explicit Sampler(SamplerParams params = {}) : p_(std::move(params)), rng_(p_.seed) { p_.validate(); }

    /// The settings.
    const SamplerParams& params() const noexcept { return p_; }
    /// Restarts the random sequence from `seed`.
    void reseed(std::uint64_t seed) {
        p_.seed = seed;
        rng_.seed(seed);
    }

    /// Picks the next token from `logits` [vocab]; `history` holds the ids so far (prompt and
    /// generated), for the penalties. \pre logits is not empty.
    std::int32_t sample(std::span<const float> logits, std::span<const std::int32_t> history) {
        c_.assign(logits);
        const bool greedy = p_.temperature <= 0.0f;
        for (SamplerStage s : p_.order) {
            if (greedy && s != SamplerStage::RepetitionPenalty && s != SamplerStage::FrequencyPenalty &&
                s != SamplerStage::PresencePenalty)
                continue;
            apply(s, c_, history);
        }
        if (greedy) {
            const auto it =
                std::max_element(c_.items.begin(), c_.items.end(), [](const Candidate& a, const Candidate& b) {
                    return a.logit < b.logit || (a.logit == b.logit && a.id > b.id);
                });
            return it->id;
        }
        c_.softmax();
        const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
        double cum = 0;
        for (const Candidate& x : c_.items) {
            cum += x.p;
            if (u < cum) return x.id;
        }
        return c_.items.back().id;
    }

    /// Runs one stage with this sampler's settings.
    void apply(SamplerStage s, Candidates& c, std::span<const std::int32_t> history) const {
        switch (s) {
            case SamplerStage::RepetitionPenalty:
                apply_repetition_penalty(c, history, p_.repetition_penalty, p_.penalty_range);
                break;
            case SamplerStage::FrequencyPenalty:
                apply_frequency_penalty(c, history, p_.frequency_penalty, p_.penalty_range);
                break;
            case SamplerStage::PresencePenalty:
                apply_presence_penalty(c, history, p_.presence_penalty, p_.penalty_range);
                break;
            case SamplerStage::TopK: apply_top_k(c, p_.top_k); break;
            case SamplerStage::TopA: apply_top_a(c, p_.top_a); break;
            case SamplerStage::TailFree: apply_tail_free(c, p_.tfs); break;
            case SamplerStage::Typical: apply_typical(c, p_.typical_p); break;
            case SamplerStage::TopP: apply_top_p(c, p_.top_p); break;
            case SamplerStage::MinP: apply_min_p(c, p_.min_p); break;
            case SamplerStage::Temperature:
                if (p_.temperature > 0.0f) apply_temperature(c, p_.temperature);
                break;
        }
    }

    /// The candidates left by the last sample() call (before the draw), for inspection.
    const Candidates& last_candidates() const noexcept { return c_; }

private:
    SamplerParams p_;
    std::mt19937_64 rng_;
    Candidates c_;
};

}  // namespace limarp::generate
