#pragma once
/// \file conversation_parse.hpp
/// \brief Validating readers of LimaRP conversations: YAML files (yaml-cpp) and JSONL lines
/// (nlohmann::json). Used by train/dataset.hpp; every error names the file, the line and the field.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "limarp/core/error.hpp"
#include "limarp/io/detail/json.hpp"
#include "limarp/text/alpaca_prompt.hpp"

namespace limarp::train::detail {

/// Placeholder of the character in LimaRP data.
inline constexpr std::string_view kFirst = "<FIRST>";
/// Placeholder of the user in LimaRP data.
inline constexpr std::string_view kSecond = "<SECOND>";

/// True when `s` holds only spaces, tabs, CR and LF.
inline bool is_blank(std::string_view s) noexcept {
    for (const char c : s)
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return false;
    return true;
}

/// The raw fields of one conversation before checks that do not depend on the syntax.
struct RawConversation {
    std::string first_name, second_name;        ///< names
    std::string first_persona, second_persona;  ///< personas (may be empty)
    std::string scenario;                       ///< scenario (may be empty)
    struct Item {
        std::string name;   ///< `<FIRST>`, `<SECOND>` or a literal name
        std::string text;   ///< message
        std::string where;  ///< "file:line" of the item
    };
    std::vector<Item> items;  ///< the conversation
    std::string where;        ///< "file:line" of the conversation list
};

/// Resolves the speakers and builds the public fields (shared by YAML and JSONL).
/// \throws FormatError naming `where_conv` / the item's line and the field.
inline std::pair<text::RoleplaySetup, std::vector<text::Turn>> finish_conversation(const RawConversation& rc) {
    text::RoleplaySetup s;
    s.char_name = rc.first_name;
    s.user_name = rc.second_name;
    s.char_persona = rc.first_persona;
    s.user_persona = rc.second_persona;
    s.scenario = rc.scenario;
    std::vector<text::Turn> turns;
    turns.reserve(rc.items.size());
    bool any_char = false;
    for (std::size_t i = 0; i < rc.items.size(); ++i) {
        const auto& it = rc.items[i];
        const std::string field = "conversation[" + std::to_string(i) + "]";
        text::Turn t;
        const bool same_names = rc.first_name == rc.second_name;
        if (it.name == kFirst || (!same_names && it.name == rc.first_name)) {
            t.speaker = text::Speaker::Character;
            any_char = true;
        } else if (it.name == kSecond || (!same_names && it.name == rc.second_name)) {
            t.speaker = text::Speaker::User;
        } else {
            throw FormatError(it.where + ": field '" + field + ".name': \"" + it.name +
                              "\" is neither <FIRST> (the character), <SECOND> (the user) nor one of the names (" +
                              rc.first_name + ", " + rc.second_name + ")");
        }
        if (is_blank(it.text)) throw FormatError(it.where + ": field '" + field + ".text': the message is empty");
        t.text = it.text;
        turns.push_back(std::move(t));
    }
    if (!any_char)
        throw FormatError(rc.where + ": field 'conversation': no message of <FIRST> (the character), so nothing "
                                       "to learn from");
    return {std::move(s), std::move(turns)};
}

// ---- YAML ------------------------------------------------------------------------------------

/// yaml-cpp's name for a node type.
inline const char* yaml_type(const YAML::Node& n) {
    if (!n.IsDefined()) return "missing";
    switch (n.Type()) {
        case YAML::NodeType::Null: return "null";
        case YAML::NodeType::Scalar: return "scalar";
        case YAML::NodeType::Sequence: return "sequence";
        case YAML::NodeType::Map: return "map";
        case YAML::NodeType::Undefined: return "missing";
    }
    return "?";
}

/// "file:LINE" of `n` (1-based line), or of `fallback` when `n` has no position.
inline std::string yaml_where(const std::string& file, const YAML::Node& n, const YAML::Node& fallback) {
    for (const YAML::Node* p : {&n, &fallback}) {
        if (!p->IsDefined()) continue;
        const YAML::Mark m = p->Mark();
        if (m.line >= 0) return file + ":" + std::to_string(m.line + 1);
    }
    return file;
}

/// A string field of map `parent`: missing or null gives "" when `!required`.
/// \throws FormatError naming the file, line and field.
inline std::string yaml_string(const std::string& file, const YAML::Node& parent, std::string_view key,
                               const std::string& field, bool required, bool non_empty, const char* what) {
    const YAML::Node n = parent[std::string(key)];
    if (!n.IsDefined() || n.IsNull()) {
        if (required)
            throw FormatError(yaml_where(file, n, parent) + ": missing field '" + field + "' (" + what + ")");
        return {};
    }
    if (!n.IsScalar())
        throw FormatError(yaml_where(file, n, parent) + ": field '" + field + "': expected a string (" + what +
                          "), found a " + yaml_type(n));
    std::string s = n.Scalar();
    if (non_empty && is_blank(s))
        throw FormatError(yaml_where(file, n, parent) + ": field '" + field + "': empty (" + what + ")");
    return s;
}

/// A map field of `parent`. \throws FormatError naming the file, line and field.
inline YAML::Node yaml_map(const std::string& file, const YAML::Node& parent, std::string_view key, const char* what) {
    const YAML::Node n = parent[std::string(key)];
    if (!n.IsDefined() || n.IsNull())
        throw FormatError(yaml_where(file, n, parent) + ": missing field '" + std::string(key) + "' (" + what + ")");
    if (!n.IsMap())
        throw FormatError(yaml_where(file, n, parent) + ": field '" + std::string(key) + "': expected a map (" + what +
                          "), found a " + yaml_type(n));
    return n;
}

/// Parses one LimaRP YAML document. \throws FormatError naming `file`, the line and the field.
inline RawConversation parse_limarp_yaml_raw(std::string_view yaml_text, const std::string& file) {
    YAML::Node loaded;
    try {
        loaded = YAML::Load(std::string(yaml_text));
    } catch (const YAML::Exception& e) {
        std::string where = file;
        if (e.mark.line >= 0) where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
        throw FormatError(where + ": invalid YAML: " + e.msg);
    }
    const YAML::Node& root = loaded;  // const: operator[] must never insert keys
    if (!root.IsMap())
        throw FormatError(yaml_where(file, root, root) + ": expected a map with personas, names, scenario and "
                                                         "conversation, found a " + yaml_type(root));
    RawConversation rc;
    const YAML::Node names = yaml_map(file, root, "names", "the names of <FIRST> and <SECOND>");
    rc.first_name = yaml_string(file, names, kFirst, "names.<FIRST>", true, true, "the character's name");
    rc.second_name = yaml_string(file, names, kSecond, "names.<SECOND>", true, true, "the user's name");
    const YAML::Node personas = yaml_map(file, root, "personas", "the personas of <FIRST> and <SECOND>");
    rc.first_persona = yaml_string(file, personas, kFirst, "personas.<FIRST>", false, false, "the character's persona");
    rc.second_persona = yaml_string(file, personas, kSecond, "personas.<SECOND>", false, false, "the user's persona");
    if (!root["scenario"].IsDefined())
        throw FormatError(yaml_where(file, root["scenario"], root) + ": missing field 'scenario' (may be empty)");
    rc.scenario = yaml_string(file, root, "scenario", "scenario", false, false, "what happens in the story");
    const YAML::Node conv = root["conversation"];
    if (!conv.IsDefined() || conv.IsNull())
        throw FormatError(yaml_where(file, conv, root) + ": missing field 'conversation' (a list of {name, text})");
    if (!conv.IsSequence())
        throw FormatError(yaml_where(file, conv, root) + ": field 'conversation': expected a sequence of {name, text}, "
                                                         "found a " + yaml_type(conv));
    if (conv.size() == 0) throw FormatError(yaml_where(file, conv, root) + ": field 'conversation': empty");
    rc.where = yaml_where(file, conv, root);
    for (std::size_t i = 0; i < conv.size(); ++i) {
        const YAML::Node item = conv[i];
        const std::string field = "conversation[" + std::to_string(i) + "]";
        if (!item.IsMap())
            throw FormatError(yaml_where(file, item, conv) + ": field '" + field + "': expected a map {name, text}, found a " +
                              yaml_type(item));
        RawConversation::Item ri;
        ri.where = yaml_where(file, item, conv);
        ri.name = yaml_string(file, item, "name", field + ".name", true, true, "<FIRST> or <SECOND>");
        ri.text = yaml_string(file, item, "text", field + ".text", true, false, "the message");
        rc.items.push_back(std::move(ri));
    }
    return rc;
}

// ---- JSON ------------------------------------------------------------------------------------

/// A string field of JSON object `o` ("" for missing/null when `!required`).
/// \throws FormatError naming `where` and the field.
inline std::string json_string(const std::string& where, const nlohmann::json& o, std::string_view key,
                               const std::string& field, bool required, bool non_empty, const char* what) {
    const auto it = o.find(std::string(key));
    if (it == o.end() || it->is_null()) {
        if (required) throw FormatError(where + ": missing field '" + field + "' (" + what + ")");
        return {};
    }
    if (!it->is_string())
        throw FormatError(where + ": field '" + field + "': expected a string (" + what + "), found a JSON " +
                          io::detail::json_type(*it));
    std::string s = it->get<std::string>();
    if (non_empty && is_blank(s)) throw FormatError(where + ": field '" + field + "': empty (" + what + ")");
    return s;
}

/// A JSON object field of `o`. \throws FormatError naming `where` and the field.
inline const nlohmann::json& json_object(const std::string& where, const nlohmann::json& o, std::string_view key,
                                         const char* what) {
    const auto it = o.find(std::string(key));
    if (it == o.end() || it->is_null()) throw FormatError(where + ": missing field '" + std::string(key) + "' (" + what + ")");
    if (!it->is_object())
        throw FormatError(where + ": field '" + std::string(key) + "': expected an object (" + what + "), found a JSON " +
                          io::detail::json_type(*it));
    return *it;
}

/// Parses one JSONL line (`where` = "file:line"). \throws FormatError naming `where` and the field.
inline RawConversation parse_conversation_json_raw(std::string_view line, const std::string& where) {
    const nlohmann::json j = io::detail::parse_json_strict(line.data(), line.data() + line.size(), where);
    if (!j.is_object())
        throw FormatError(where + ": expected a JSON object with personas, names, scenario and conversation, found a JSON " +
                          io::detail::json_type(j));
    RawConversation rc;
    const auto& names = json_object(where, j, "names", "the names of <FIRST> and <SECOND>");
    rc.first_name = json_string(where, names, kFirst, "names.<FIRST>", true, true, "the character's name");
    rc.second_name = json_string(where, names, kSecond, "names.<SECOND>", true, true, "the user's name");
    const auto& personas = json_object(where, j, "personas", "the personas of <FIRST> and <SECOND>");
    rc.first_persona = json_string(where, personas, kFirst, "personas.<FIRST>", false, false, "the character's persona");
    rc.second_persona = json_string(where, personas, kSecond, "personas.<SECOND>", false, false, "the user's persona");
    if (j.find("scenario") == j.end()) throw FormatError(where + ": missing field 'scenario' (may be empty)");
    rc.scenario = json_string(where, j, "scenario", "scenario", false, false, "what happens in the story");
    const auto c = j.find("conversation");
    if (c == j.end() || c->is_null()) throw FormatError(where + ": missing field 'conversation' (a list of {name, text})");
    if (!c->is_array())
        throw FormatError(where + ": field 'conversation': expected an array of {name, text}, found a JSON " +
                          io::detail::json_type(*c));
    if (c->empty()) throw FormatError(where + ": field 'conversation': empty");
    rc.where = where;
    for (std::size_t i = 0; i < c->size(); ++i) {
        const auto& item = (*c)[i];
        const std::string field = "conversation[" + std::to_string(i) + "]";
        if (!item.is_object())
            throw FormatError(where + ": field '" + field + "': expected an object {name, text}, found a JSON " +
                              io::detail::json_type(item));
        RawConversation::Item ri;
        ri.where = where;
        ri.name = json_string(where, item, "name", field + ".name", true, true, "<FIRST> or <SECOND>");
        ri.text = json_string(where, item, "text", field + ".text", true, false, "the message");
        rc.items.push_back(std::move(ri));
    }
    return rc;
}

}  // namespace limarp::train::detail
