#pragma once
/// \file utf8.hpp
/// \brief UTF-8 helpers of the tokenizer: strict decoding with SentencePiece's rules.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace limarp::text::detail {

/// U+FFFD REPLACEMENT CHARACTER in UTF-8.
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's whitespace symbol, in UTF-8.
inline constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";

/// Length of the UTF-8 sequence announced by the lead byte `b` (1 for ASCII, continuation
/// bytes and invalid lead bytes; 2, 3 or 4 otherwise). Never validates the sequence.
inline constexpr int utf8_lead_length(unsigned char b) noexcept { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[b >> 4]; }

/// Length in bytes of the valid UTF-8 character at the start of `s`, or 0 when `s` does not
/// start with one. Valid means: ASCII, or a complete 2/3/4-byte sequence of continuation bytes
/// that is not overlong, not a surrogate (U+D800..U+DFFF) and at most U+10FFFF.
/// \pre !s.empty()
inline int utf8_valid_char_length(std::string_view s) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    const unsigned char b0 = p[0];
    auto trail = [](unsigned char c) { return (c & 0xC0) == 0x80; };
    if (b0 < 0x80) return 1;
    if ((b0 & 0xE0) == 0xC0) {
        if (n < 2 || !trail(p[1])) return 0;
        const std::uint32_t cp = ((b0 & 0x1Fu) << 6) | (p[1] & 0x3Fu);
        return cp >= 0x80 ? 2 : 0;
    }
    if ((b0 & 0xF0) == 0xE0) {
        if (n < 3 || !trail(p[1]) || !trail(p[2])) return 0;
        const std::uint32_t cp = ((b0 & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
        return (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) ? 3 : 0;
    }
    if ((b0 & 0xF8) == 0xF0) {
        if (n < 4 || !trail(p[1]) || !trail(p[2]) || !trail(p[3])) return 0;
        const std::uint32_t cp = ((b0 & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
        return (cp >= 0x10000 && cp <= 0x10FFFF) ? 4 : 0;
    }
    return 0;
}

/// Number of bytes the strict decoder needs before it can judge a sequence starting with lead
/// byte `b`: 1 for ASCII and for bytes that can never start a valid sequence, else 2, 3 or 4.
inline constexpr int utf8_needed_length(unsigned char b) noexcept {
    if (b < 0x80) return 1;
    if ((b & 0xE0) == 0xC0) return 2;
    if ((b & 0xF0) == 0xE0) return 3;
    if ((b & 0xF8) == 0xF0) return 4;
    return 1;
}

/// Packs the bytes of one UTF-8 character (1..4 bytes) into an integer key, unique per byte string.
inline std::uint32_t utf8_char_key(std::string_view ch) noexcept {
    std::uint32_t k = 0;
    for (std::size_t i = 0; i < ch.size(); ++i)
        k |= static_cast<std::uint32_t>(static_cast<unsigned char>(ch[i])) << (8 * i);
    return k;
}

/// Appends `bytes` to `out`, replacing every byte that does not start a valid UTF-8 character
/// (see utf8_valid_char_length) with U+FFFD; each invalid byte gives one U+FFFD.
inline void append_utf8_replacing_invalid(std::string& out, std::string_view bytes) {
    std::size_t i = 0;
    while (i < bytes.size()) {
        const int len = utf8_valid_char_length(bytes.substr(i));
        if (len == 0) {
            out += kReplacementChar;
            ++i;
        } else {
            out.append(bytes.data() + i, static_cast<std::size_t>(len));
            i += static_cast<std::size_t>(len);
        }
    }
}

/// Whether `s` is entirely valid UTF-8 (see utf8_valid_char_length).
inline bool utf8_is_valid(std::string_view s) noexcept {
    std::size_t i = 0;
    while (i < s.size()) {
        const int len = utf8_valid_char_length(s.substr(i));
        if (len == 0) return false;
        i += static_cast<std::size_t>(len);
    }
    return true;
}

}  // namespace limarp::text::detail
