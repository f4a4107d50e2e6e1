#pragma once
/// \file json.hpp
/// \brief Strict JSON parsing for untrusted files: nlohmann::json plus duplicate-key and
/// nesting-depth checks, with errors turned into `limarp::FormatError`.

#include <cstddef>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"

namespace limarp::io::detail {

/// Deepest object/array nesting accepted by `parse_json_strict`.
inline constexpr int kMaxJsonDepth = 64;

/// Parses the JSON text [first, last). Unlike plain `nlohmann::json::parse`, a key that appears
/// twice in one object is an error (nlohmann would silently keep the last one), and so is
/// nesting deeper than `kMaxJsonDepth`. \throws FormatError naming `source` and the problem.
inline nlohmann::json parse_json_strict(const char* first, const char* last, const std::string& source) {
    std::vector<std::set<std::string>> keys;  // one set per open object
    std::vector<bool> is_object;              // per open container
    auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) -> bool {
        using E = nlohmann::json::parse_event_t;
        if (depth > kMaxJsonDepth)
            throw FormatError(source + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
        switch (ev) {
            case E::object_start:
                keys.emplace_back();
                is_object.push_back(true);
                break;
            case E::array_start: is_object.push_back(false); break;
            case E::object_end:
                if (!keys.empty()) keys.pop_back();
                if (!is_object.empty()) is_object.pop_back();
                break;
            case E::array_end:
                if (!is_object.empty()) is_object.pop_back();
                break;
            case E::key:
                if (!keys.empty() && parsed.is_string()) {
                    const auto& k = parsed.get_ref<const std::string&>();
                    if (!keys.back().insert(k).second)
                        throw FormatError(source + ": duplicate key \"" + k + "\" in a JSON object");
                }
                break;
            case E::value: break;
        }
        return true;
    };
    try {
        return nlohmann::json::parse(first, last, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
    } catch (const nlohmann::json::exception& e) {
        throw FormatError(source + ": invalid JSON (" + e.what() + ")");
    }
}

/// Parses `text` with `parse_json_strict`.
inline nlohmann::json parse_json_strict(const std::string& text, const std::string& source) {
    return parse_json_strict(text.data(), text.data() + text.size(), source);
}

/// The JSON type name of `j` ("string", "number", ...), for error messages.
inline std::string json_type(const nlohmann::json& j) {
    if (j.is_number_integer()) return "integer";
    if (j.is_number_float()) return "number";
    return j.type_name();
}

/// A short rendering of `j` for an error message (truncated to about 60 characters).
inline std::string json_excerpt(const nlohmann::json& j) {
    std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (s.size() > 60) s = s.substr(0, 57) + "...";
    return s;
}

}  // namespace limarp::io::detail
