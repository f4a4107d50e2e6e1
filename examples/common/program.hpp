#pragma once
// Shared helpers of the example programs: id lists, error reporting, model loading options.
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "limarp/core/error.hpp"
#include "limarp/model/mistral_config.hpp"

namespace limarp::programs {

/// Parses "1,2,3" or "1 2 3" into ids. \throws ArgumentError naming the bad item.
inline std::vector<std::int32_t> parse_ids(std::string_view s) {
    std::vector<std::int32_t> ids;
    std::size_t i = 0;
    while (i < s.size()) {
        while (i < s.size() && (s[i] == ',' || s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '[' || s[i] == ']')) ++i;
        if (i >= s.size()) break;
        std::size_t j = i;
        while (j < s.size() && s[j] != ',' && s[j] != ' ' && s[j] != '\t' && s[j] != '\n' && s[j] != ']') ++j;
        std::int64_t v = 0;
        auto [p, ec] = std::from_chars(s.data() + i, s.data() + j, v);
        if (ec != std::errc() || p != s.data() + j || v < 0 || v > INT32_MAX)
            throw ArgumentError("--ids: \"" + std::string(s.substr(i, j - i)) + "\" is not a token id (a non-negative integer)");
        ids.push_back(static_cast<std::int32_t>(v));
        i = j;
    }
    return ids;
}

/// Maps --window-convention to the enum. \throws ArgumentError.
inline WindowConvention parse_window_convention(const std::string& s) {
    if (s == "hf" || s == "huggingface") return WindowConvention::HuggingFace;
    if (s == "mistral" || s == "mistral-inference") return WindowConvention::MistralInference;
    throw ArgumentError("--window-convention: \"" + s + "\" is not one of hf, mistral");
}

/// Runs `body`, turning exceptions into a one-line error on stderr and exit code 1.
template <class F>
int run_main(const char* prog, F&& body) {
    try {
        return body();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: error: %s\n", prog, e.what());
        return 1;
    }
}

}  // namespace limarp::programs
