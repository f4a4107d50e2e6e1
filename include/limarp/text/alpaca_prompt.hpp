#pragma once
// clang-format off
/// \file alpaca_prompt.hpp
/// \brief The LimaRP extended-Alpaca roleplay prompt: instruction block (personas, scenario,
/// role-play sentence), `### Input:` / `### Response:` turns, the `(length = TAG)` modifier on
/// the final response header, placeholder substitution, context fitting and stop strings.
///
/// The exact bytes, for character "Aria", user "Bob", one user turn and length medium:
/// \verbatim
///
/// ### Instruction:
/// Aria's Persona: {persona}
///
/// Bob's Persona: {user persona}
///
/// Scenario: {scenario}
///
/// Play the role of Aria. You must engage in a roleplaying chat with Bob below this line. Do not write dialogues and narration for Bob.
///
/// ### Input:
/// Bob: {text}
///
/// ### Response: (length = medium)
/// Aria:
/// \endverbatim
/// The text starts with an empty line (a single `\n`), blocks are separated by one empty line,
/// and the prompt ends right after `Aria:` (no trailing space: the model writes `▁word`).
// clang-format on

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "limarp/core/error.hpp"
#include "limarp/text/tokenizer.hpp"

namespace limarp::text {

/// The response-length modifiers LimaRP was trained with (`### Response: (length = medium)`).
/// `short_` and `long_` print as `short` and `long`.
enum class LengthTag : std::uint8_t {
    micro,      ///< `micro`
    tiny,       ///< `tiny`
    short_,     ///< `short`
    medium,     ///< `medium` (the recommended starting length)
    long_,      ///< `long`
    massive,    ///< `massive`
    huge,       ///< `huge`
    enormous,   ///< `enormous`
    humongous,  ///< `humongous`
    unlimited,  ///< `unlimited`
};

/// All ten length tags, shortest first.
inline constexpr std::array<LengthTag, 10> kLengthTags = {
    LengthTag::micro,   LengthTag::tiny, LengthTag::short_,   LengthTag::medium,    LengthTag::long_,
    LengthTag::massive, LengthTag::huge, LengthTag::enormous, LengthTag::humongous, LengthTag::unlimited};

/// The tag as written in the prompt (`short`, `medium`, ...).
constexpr std::string_view to_string(LengthTag t) noexcept {
    constexpr std::array<std::string_view, 10> names = {"micro",   "tiny", "short",    "medium",    "long",
                                                        "massive", "huge", "enormous", "humongous", "unlimited"};
    return names[static_cast<std::size_t>(t)];
}

/// "micro, tiny, short, medium, long, massive, huge, enormous, humongous, unlimited".
inline std::string length_tag_list() {
    std::string s;
    for (LengthTag t : kLengthTags) {
        if (!s.empty()) s += ", ";
        s += to_string(t);
    }
    return s;
}

/// Parses a length tag (exact, lower case). \throws ArgumentError listing the valid tags.
inline LengthTag parse_length_tag(std::string_view s) {
    for (LengthTag t : kLengthTags)
        if (to_string(t) == s) return t;
    throw ArgumentError("unknown length tag \"" + std::string(s) + "\"; valid tags: " + length_tag_list() +
                        " (or none to let the model choose)");
}

/// As parse_length_tag(), but `""`, `none` and `auto` mean no modifier (the model chooses).
/// \throws ArgumentError listing the valid tags.
inline std::optional<LengthTag> parse_optional_length_tag(std::string_view s) {
    if (s.empty() || s == "none" || s == "auto") return std::nullopt;
    return parse_length_tag(s);
}

/// Replaces the character/user placeholders of LimaRP data (`<FIRST>` = character,
/// `<SECOND>` = user) and of SillyTavern cards (`{{char}}`, `{{user}}`, any letter case, and the
/// older `<BOT>`, `<USER>`) by the names.
inline std::string substitute_placeholders(std::string_view text, std::string_view char_name,
                                           std::string_view user_name) {
    struct Ph {
        std::string_view key;
        bool to_char;
        bool icase;
    };
    static constexpr Ph kPh[] = {{"<FIRST>", true, false},  {"<SECOND>", false, false}, {"{{char}}", true, true},
                                 {"{{user}}", false, true}, {"<BOT>", true, false},     {"<USER>", false, false}};
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    std::string out;
    out.reserve(text.size());
    std::size_t i = 0;
    while (i < text.size()) {
        bool hit = false;
        if (text[i] == '<' || text[i] == '{') {
            for (const Ph& p : kPh) {
                if (text.size() - i < p.key.size()) continue;
                bool eq = true;
                for (std::size_t k = 0; k < p.key.size() && eq; ++k)
                    eq = p.icase ? lower(text[i + k]) == p.key[k] : text[i + k] == p.key[k];
                if (!eq) continue;
                out += p.to_char ? char_name : user_name;
                i += p.key.size();
                hit = true;
                break;
            }
        }
        if (!hit) out += text[i++];
    }
    return out;
}

/// Who speaks a turn.
enum class Speaker : std::uint8_t {
    User,       ///< the human (`### Input:`)
    Character,  ///< the model's character (`### Response:`)
};

/// One message of a conversation.
struct Turn {
    Speaker speaker = Speaker::User;  ///< who wrote it
    std::string text;                 ///< what was written (placeholders allowed)

    /// Equality (for tests and history handling).
    friend bool operator==(const Turn&, const Turn&) = default;
};

/// The fixed parts of a roleplay: names, personas, scenario.
struct RoleplaySetup {
    std::string char_name = "Character";  ///< the character the model plays
    std::string user_name = "User";       ///< the human's character
    std::string char_persona;             ///< description of the character (empty: line omitted)
    std::string user_persona;             ///< description of the user's character (empty: line omitted)
    std::string scenario;                 ///< what happens in the story (empty: line omitted)
};

/// Counts the tokens of a prompt text (e.g. `tok.encode(text).size()`).
using TokenCounter = std::function<std::int64_t(std::string_view)>;

/// A prompt cut to a token budget.
struct FittedPrompt {
    std::string text;            ///< the prompt
    std::size_t first_turn = 0;  ///< index of the oldest turn kept (= number of turns dropped)
    std::int64_t tokens = 0;     ///< its token count, as measured by the counter
};

/// \cond
namespace detail {
/// Removes spaces, tabs, CR and LF at both ends.
inline std::string_view trim_ws(std::string_view s) {
    const auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    while (!s.empty() && ws(s.front())) s.remove_prefix(1);
    while (!s.empty() && ws(s.back())) s.remove_suffix(1);
    return s;
}

/// Smallest k in [0, n-1] with fits(k), given that fits(n-1) holds and fits is monotone
/// (dropping more turns never makes the prompt longer). Returns 0 when n <= 1.
template <class Fits> std::size_t first_fitting(std::size_t n, Fits&& fits) {
    if (n <= 1 || fits(0)) return 0;
    std::size_t lo = 0, hi = n - 1;  // fits(lo) false, fits(hi) true
    while (hi - lo > 1) {
        const std::size_t mid = lo + (hi - lo) / 2;
        if (fits(mid))
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

/// Common fitting logic of the prompt formatters: `make(k)` builds the prompt keeping turns
/// [k, n) (`make(n)` has no turns at all); `what` prefixes error messages.
template <class Make>
FittedPrompt fit_turns(std::size_t n, std::int64_t budget, const TokenCounter& count, Make&& make, const char* what) {
    if (!count) throw ArgumentError(std::string(what) + ": no token counter given");
    const std::size_t last = n == 0 ? 0 : n - 1;
    const std::int64_t need = count(make(last));
    if (need > budget) {
        const std::int64_t bare = count(make(n));
        if (bare > budget)
            throw ArgumentError(std::string(what) + ": the instruction block alone is " + std::to_string(bare) +
                                " tokens, more than the budget of " + std::to_string(budget) +
                                " tokens (shorten the personas or the scenario, or raise the context size)");
        throw ArgumentError(std::string(what) + ": the instruction block and the message being answered need " +
                            std::to_string(need) + " tokens, more than the budget of " + std::to_string(budget) +
                            " tokens (shorten the message or raise the context size)");
    }
    const std::size_t k = first_fitting(n, [&](std::size_t i) { return count(make(i)) <= budget; });
    FittedPrompt out;
    out.text = make(k);
    out.first_turn = k;
    out.tokens = count(out.text);
    return out;
}
}  // namespace detail
/// \endcond

/// Formats the LimaRP extended-Alpaca prompt (see the file comment for the exact bytes).
/// Turn texts are trimmed of surrounding whitespace; placeholders in every field and turn are
/// replaced by the names (substitute_placeholders()).
class AlpacaPrompt {
public:
    /// A formatter with the default names (`Character`, `User`) and no personas.
    AlpacaPrompt() = default;
    /// A formatter for `setup`.
    explicit AlpacaPrompt(RoleplaySetup setup) : s_(std::move(setup)) {}

    /// The setup.
    const RoleplaySetup& setup() const noexcept { return s_; }

    /// The instruction block: `\n### Instruction:\n` + persona lines + scenario + the role-play
    /// sentence with the names substituted; no trailing newline.
    std::string instruction() const {
        std::string out = "\n### Instruction:\n";
        auto block = [&](std::string_view label_owner, std::string_view label, const std::string& body) {
            const std::string b = sub(body);
            const std::string_view t = detail::trim_ws(b);
            if (t.empty()) return;
            out += label_owner;
            out += label;
            out += t;
            out += "\n\n";
        };
        block(s_.char_name, "'s Persona: ", s_.char_persona);
        block(s_.user_name, "'s Persona: ", s_.user_persona);
        block("", "Scenario: ", s_.scenario);
        out += "Play the role of " + s_.char_name + ". You must engage in a roleplaying chat with " + s_.user_name +
               " below this line. Do not write dialogues and narration for " + s_.user_name + ".";
        return out;
    }

    /// One turn: `### Input:\nBob: text` or `### Response:\nAria: text` (no trailing newline).
    std::string turn(const Turn& t) const {
        const bool user = t.speaker == Speaker::User;
        std::string out = user ? "### Input:\n" : "### Response:\n";
        out += user ? s_.user_name : s_.char_name;
        out += ':';
        const std::string body = sub(t.text);
        const std::string_view b = detail::trim_ws(body);
        if (!b.empty()) {
            out += ' ';
            out += b;
        }
        return out;
    }

    /// The final response header the model continues: `### Response: (length = TAG)\nAria:`
    /// (without ` (length = TAG)` when `length` is empty).
    std::string response_header(std::optional<LengthTag> length = std::nullopt) const {
        std::string out = "### Response:";
        if (length) {
            out += " (length = ";
            out += to_string(*length);
            out += ')';
        }
        out += '\n';
        out += s_.char_name;
        out += ':';
        return out;
    }

    /// The whole prompt: instruction, `turns`, and the final response header with `length`.
    std::string format(std::span<const Turn> turns, std::optional<LengthTag> length = std::nullopt) const {
        std::string out = instruction();
        for (const Turn& t : turns) {
            out += "\n\n";
            out += turn(t);
        }
        out += "\n\n";
        out += response_header(length);
        return out;
    }

    /// The prompt with the oldest turns dropped until `count(prompt) <= budget`. The
    /// instruction block and the last turn (the one being answered) are never dropped.
    /// Assumes dropping a turn never lengthens the prompt (binary search over the number dropped).
    /// \throws ArgumentError when even the instruction and the last turn exceed the budget
    /// (the message says whether the instruction block alone is too long).
    FittedPrompt fit(std::span<const Turn> turns, std::optional<LengthTag> length, std::int64_t budget,
                     const TokenCounter& count) const {
        const std::size_t n = turns.size();
        return detail::fit_turns(
            n, budget, count, [&](std::size_t k) { return format(turns.subspan(k), length); }, "prompt fitting");
    }

    /// As fit() counting tokens with `tok` (BOS included, special-token text as plain text).
    FittedPrompt fit(std::span<const Turn> turns, std::optional<LengthTag> length, std::int64_t budget,
                     const Tokenizer& tok) const {
        return fit(turns, length, budget,
                   [&tok](std::string_view s) { return static_cast<std::int64_t>(tok.encode(s).size()); });
    }

    /// The default stop strings: `### Input`, `\n<user name>:`, `<|im_end|>`, `<|im_start|>`.
    std::vector<std::string> stop_strings() const {
        return {"### Input", "\n" + s_.user_name + ":", "<|im_end|>", "<|im_start|>"};
    }

private:
    std::string sub(std::string_view t) const { return substitute_placeholders(t, s_.char_name, s_.user_name); }

    RoleplaySetup s_;
};

}  // namespace limarp::text
