#pragma once
/// \file length_bins.hpp
/// \brief `LengthBins`: how a response's length maps to its LimaRP length tag
/// (`### Response: (length = medium)`), by words, characters or tokens.
///
/// At training time every response header carries the tag of that response's own length (the
/// LimaRP convention); at inference the user picks a tag to steer the reply length. The ten tags
/// are contiguous bins: nine exclusive upper bounds `upper[0] < upper[1] < ... < upper[8]`, so
/// `micro` is `[0, upper[0])`, `tiny` is `[upper[0], upper[1])`, ..., `humongous` is
/// `[upper[7], upper[8])` and `unlimited` is `[upper[8], inf)`.
///
/// Defaults (our choice: LimaRP's own thresholds are not published with the model; these follow
/// its tag order with bins that roughly double, then grow by 50-100 words). Words are runs of
/// non-whitespace characters, as Python's `len(text.split())` over ASCII whitespace:
///
/// | tag       | words      | characters   | tokens       |
/// |-----------|------------|--------------|--------------|
/// | micro     | 0 - 9      | 0 - 49       | 0 - 14       |
/// | tiny      | 10 - 24    | 50 - 124     | 15 - 34      |
/// | short     | 25 - 49    | 125 - 249    | 35 - 69      |
/// | medium    | 50 - 99    | 250 - 499    | 70 - 134     |
/// | long      | 100 - 149  | 500 - 749    | 135 - 199    |
/// | massive   | 150 - 199  | 750 - 999    | 200 - 269    |
/// | huge      | 200 - 299  | 1000 - 1499  | 270 - 399    |
/// | enormous  | 300 - 399  | 1500 - 1999  | 400 - 539    |
/// | humongous | 400 - 499  | 2000 - 2499  | 540 - 674    |
/// | unlimited | 500 +      | 2500 +       | 675 +        |
///
/// The character bins are the word bins times 5 (English prose averages about 5 characters per
/// word, spaces included); the token bins are the word bins times about 1.35 (Mistral's
/// tokenizer on English prose). Characters are Unicode code points (UTF-8 lead bytes); tokens
/// are the tokenizer's ids for the response text without BOS.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "limarp/core/error.hpp"
#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/tokenizer.hpp"

namespace limarp::train {

/// What a response's length is measured in.
enum class LengthUnit : std::uint8_t {
    Words,       ///< runs of non-whitespace characters (space, tab, CR, LF, FF, VT separate)
    Characters,  ///< Unicode code points
    Tokens,      ///< tokenizer ids of the response text (no BOS)
};

/// The unit's name as written in configs: `words`, `characters`, `tokens`.
constexpr std::string_view to_string(LengthUnit u) noexcept {
    switch (u) {
        case LengthUnit::Words: return "words";
        case LengthUnit::Characters: return "characters";
        case LengthUnit::Tokens: return "tokens";
    }
    return "?";
}

/// Parses `words`, `characters` (or `chars`) or `tokens`. \throws ArgumentError naming the valid units.
inline LengthUnit parse_length_unit(std::string_view s) {
    if (s == "words") return LengthUnit::Words;
    if (s == "characters" || s == "chars") return LengthUnit::Characters;
    if (s == "tokens") return LengthUnit::Tokens;
    throw ArgumentError("unknown length unit \"" + std::string(s) + "\" (expected words, characters or tokens)");
}

/// Number of words of `text`: maximal runs of bytes other than space, tab, CR, LF, FF and VT.
inline std::int64_t count_words(std::string_view text) noexcept {
    std::int64_t n = 0;
    bool in_word = false;
    for (const char c : text) {
        const bool ws = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
        if (!ws && !in_word) ++n;
        in_word = !ws;
    }
    return n;
}

/// Number of Unicode code points of UTF-8 `text` (bytes that are not continuation bytes).
inline std::int64_t count_code_points(std::string_view text) noexcept {
    std::int64_t n = 0;
    for (const char c : text)
        if ((static_cast<unsigned char>(c) & 0xC0u) != 0x80u) ++n;
    return n;
}

/// Length of `text` in `unit`.
/// \pre `tok` is non-null when `unit` is LengthUnit::Tokens.
/// \throws ArgumentError when the unit is Tokens and no tokenizer is given.
inline std::int64_t measure_length(std::string_view text, LengthUnit unit, const text::Tokenizer* tok = nullptr) {
    switch (unit) {
        case LengthUnit::Words: return count_words(text);
        case LengthUnit::Characters: return count_code_points(text);
        case LengthUnit::Tokens: {
            if (!tok) throw ArgumentError("measure_length: length unit tokens needs a tokenizer");
            text::EncodeOptions o;
            o.add_bos = false;
            return static_cast<std::int64_t>(tok->encode(text, o).size());
        }
    }
    return 0;
}

/// The ten length bins (see the file comment for the defaults and the bin rule).
struct LengthBins {
    LengthUnit unit = LengthUnit::Words;  ///< what lengths are measured in
    /// Exclusive upper bounds of micro .. humongous (strictly increasing, first > 0);
    /// everything from `upper[8]` on is `unlimited`.
    std::array<std::int64_t, 9> upper = {10, 25, 50, 100, 150, 200, 300, 400, 500};

    /// The documented default bins for `unit`.
    static LengthBins defaults(LengthUnit unit = LengthUnit::Words) {
        LengthBins b;
        b.unit = unit;
        switch (unit) {
            case LengthUnit::Words: b.upper = {10, 25, 50, 100, 150, 200, 300, 400, 500}; break;
            case LengthUnit::Characters: b.upper = {50, 125, 250, 500, 750, 1000, 1500, 2000, 2500}; break;
            case LengthUnit::Tokens: b.upper = {15, 35, 70, 135, 200, 270, 400, 540, 675}; break;
        }
        return b;
    }

    /// \throws ArgumentError unless the bounds are positive and strictly increasing.
    void validate() const {
        for (std::size_t i = 0; i < upper.size(); ++i) {
            if (upper[i] <= 0 || (i > 0 && upper[i] <= upper[i - 1]))
                throw ArgumentError("length bins: the upper bounds must be positive and strictly increasing, got " +
                                    bounds_string() + " (" + std::string(to_string(unit)) + ")");
        }
    }

    /// The tag of a response of `length` units.
    text::LengthTag tag_for(std::int64_t length) const noexcept {
        for (std::size_t i = 0; i < upper.size(); ++i)
            if (length < upper[i]) return text::kLengthTags[i];
        return text::LengthTag::unlimited;
    }

    /// The tag of response text `text` (measured with measure_length()).
    /// \pre `tok` is non-null when `unit` is LengthUnit::Tokens.
    text::LengthTag tag_for_text(std::string_view text, const text::Tokenizer* tok = nullptr) const {
        return tag_for(measure_length(text, unit, tok));
    }

    /// The half-open range `[lo, hi)` of `tag`; `hi` is empty for `unlimited`.
    std::pair<std::int64_t, std::optional<std::int64_t>> range(text::LengthTag tag) const noexcept {
        const auto i = static_cast<std::size_t>(tag);
        const std::int64_t lo = i == 0 ? 0 : upper[i - 1];
        if (i >= upper.size()) return {lo, std::nullopt};
        return {lo, upper[i]};
    }

    /// "10, 25, 50, ..." (the nine bounds).
    std::string bounds_string() const {
        std::string s;
        for (const auto v : upper) {
            if (!s.empty()) s += ", ";
            s += std::to_string(v);
        }
        return s;
    }

    /// A one-line description, e.g. "micro < 10 <= tiny < 25 <= ... <= unlimited (words)".
    std::string describe() const {
        std::string s;
        for (std::size_t i = 0; i < upper.size(); ++i) {
            s += text::to_string(text::kLengthTags[i]);
            s += " < " + std::to_string(upper[i]) + " <= ";
        }
        s += "unlimited (";
        s += to_string(unit);
        s += ')';
        return s;
    }

    /// Equality.
    friend bool operator==(const LengthBins&, const LengthBins&) = default;
};

}  // namespace limarp::train
