#pragma once
/// \file character_card.hpp
/// \brief `CharacterCard`: the character of a roleplay (name, persona, scenario, first
/// message), read from a JSON or YAML file in one of these layouts:
///  - plain: fields `name`, `persona` or `description`, `personality`, `scenario`, `first_mes`
///    or `first_message` or `greeting`, `user_name`, `user_persona`;
///  - TavernAI V1: `name`, `description`, `personality`, `scenario`, `first_mes`, `mes_example`;
///  - SillyTavern / TavernAI V2 and V3: `spec` = `chara_card_v2` or `chara_card_v3`, and `data`
///    holding `name`, `description`, `personality`, `scenario`, `first_mes`, `mes_example`,
///    `alternate_greetings`, ...;
///  - LimaRP data: `personas` and `names` (maps with keys `<FIRST>` and `<SECOND>`), `scenario`,
///    `conversation` (a list of `name`, `text` with name `<FIRST>` or `<SECOND>`); `<FIRST>` is
///    the character.
///
/// YAML needs yaml-cpp: define `LIMARP_WITH_YAML_CPP` and link `yaml-cpp` (a YAML document is
/// converted to JSON, every scalar as a string). Without it, YAML files give UnsupportedError.

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"
#include "limarp/io/detail/json.hpp"
#include "limarp/text/alpaca_prompt.hpp"

#if defined(LIMARP_WITH_YAML_CPP)
#include <yaml-cpp/yaml.h>
#endif

namespace limarp::text {

/// \cond
namespace detail {
#if defined(LIMARP_WITH_YAML_CPP)
/// A YAML node as JSON (scalars become strings, null stays null).
inline nlohmann::json yaml_to_json(const YAML::Node& n) {
    switch (n.Type()) {
        case YAML::NodeType::Null:
        case YAML::NodeType::Undefined: return nullptr;
        case YAML::NodeType::Scalar: return n.Scalar();
        case YAML::NodeType::Sequence: {
            nlohmann::json a = nlohmann::json::array();
            for (const auto& e : n) a.push_back(yaml_to_json(e));
            return a;
        }
        case YAML::NodeType::Map: {
            nlohmann::json o = nlohmann::json::object();
            for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second);
            return o;
        }
    }
    return nullptr;
}
#endif
}  // namespace detail
/// \endcond

/// A roleplay character and, when the file says so, the user's side.
struct CharacterCard {
    std::string name;                              ///< the character's name (required)
    std::string description;                       ///< persona / description
    std::string personality;                       ///< short personality summary (cards), may be empty
    std::string scenario;                          ///< the scenario, may be empty
    std::string first_message;                     ///< the character's opening message, may be empty
    std::string example_messages;                  ///< `mes_example` (kept, not used by the LimaRP prompt)
    std::vector<std::string> alternate_greetings;  ///< other opening messages (V2 cards)
    std::optional<std::string> user_name;          ///< the user's name when the file gives one (LimaRP data)
    std::optional<std::string> user_persona;       ///< the user's persona when the file gives one
    std::vector<Turn> conversation;                ///< turns after the first message (LimaRP data)

    /// The persona used in the prompt: the description, then the personality on its own line
    /// when both are given.
    std::string persona() const {
        const std::string_view d = detail::trim_ws(description), p = detail::trim_ws(personality);
        if (d.empty()) return std::string(p);
        if (p.empty()) return std::string(d);
        return std::string(d) + "\n" + std::string(p);
    }

    /// The roleplay setup for this character and a user; `user_name`/`user_persona` empty take
    /// the card's own values when it has them (else `User` / no persona).
    RoleplaySetup setup(std::string user, std::string user_persona_text = {}) const {
        RoleplaySetup s;
        s.char_name = name;
        s.user_name = !user.empty() ? std::move(user) : user_name.value_or("User");
        s.char_persona = persona();
        s.user_persona = !user_persona_text.empty() ? std::move(user_persona_text) : user_persona.value_or("");
        s.scenario = scenario;
        return s;
    }

    /// The opening turns: the first message (as a character turn) and `conversation`.
    std::vector<Turn> opening_turns() const {
        std::vector<Turn> t;
        if (!detail::trim_ws(first_message).empty()) t.push_back({Speaker::Character, first_message});
        t.insert(t.end(), conversation.begin(), conversation.end());
        return t;
    }

    /// Reads a card from parsed JSON (any layout of the file comment); `source` names it in errors.
    /// \throws FormatError naming the source and field when the name is missing or a field has the wrong type.
    static CharacterCard from_json(const nlohmann::json& j, const std::string& source) {
        if (!j.is_object())
            throw FormatError(source + ": a character card must be an object, got " + io::detail::json_type(j));
        if (j.contains("personas") || j.contains("conversation")) return from_limarp(j, source);
        const nlohmann::json* d = &j;
        std::string where = "";
        if (auto it = j.find("spec"); it != j.end()) {
            const std::string spec = str(j, "spec", source, "");
            if (spec != "chara_card_v2" && spec != "chara_card_v3")
                throw FormatError(source + ": field 'spec' is \"" + spec +
                                  "\", expected chara_card_v2 or chara_card_v3");
            auto dt = j.find("data");
            if (dt == j.end() || !dt->is_object())
                throw FormatError(source + ": a " + spec + " card needs an object 'data'");
            d = &*dt;
            where = "data.";
        }
        CharacterCard c;
        c.name = str(*d, "name", source, where);
        if (detail::trim_ws(c.name).empty()) throw FormatError(source + ": missing required field '" + where + "name'");
        c.description = first_of(*d, {"description", "persona", "char_persona"}, source, where);
        c.personality = str(*d, "personality", source, where);
        c.scenario = first_of(*d, {"scenario", "world_scenario"}, source, where);
        c.first_message = first_of(*d, {"first_mes", "first_message", "greeting", "char_greeting"}, source, where);
        c.example_messages = first_of(*d, {"mes_example", "example_dialogue"}, source, where);
        if (auto it = d->find("alternate_greetings"); it != d->end() && !it->is_null()) {
            if (!it->is_array())
                throw FormatError(source + ": field '" + where + "alternate_greetings' must be an array of strings");
            for (const auto& g : *it) {
                if (!g.is_string())
                    throw FormatError(source + ": field '" + where +
                                      "alternate_greetings' must be an array of strings");
                c.alternate_greetings.push_back(g.get<std::string>());
            }
        }
        if (d->contains("user_name")) c.user_name = str(*d, "user_name", source, where);
        if (d->contains("user_persona")) c.user_persona = str(*d, "user_persona", source, where);
        return c;
    }

    /// Parses card text: JSON when it starts with `{` (after whitespace), YAML otherwise.
    /// \throws FormatError; UnsupportedError for YAML without `LIMARP_WITH_YAML_CPP`.
    static CharacterCard parse(std::string_view text, const std::string& source) {
        std::size_t i = 0;
        while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
        if (i < text.size() && text[i] == '{')
            return from_json(io::detail::parse_json_strict(std::string(text), source), source);
#if defined(LIMARP_WITH_YAML_CPP)
        nlohmann::json j;
        try {
            j = detail::yaml_to_json(YAML::Load(std::string(text)));
        } catch (const YAML::Exception& e) {
            throw FormatError(source + ": invalid YAML: " + e.what());
        }
        return from_json(j, source);
#else
        throw UnsupportedError(
            source + ": not JSON; reading YAML cards needs yaml-cpp (define LIMARP_WITH_YAML_CPP and link yaml-cpp)");
#endif
    }

    /// Reads a card file (JSON or YAML, see parse()). \throws IoError when it cannot be read; as parse().
    static CharacterCard load(const std::filesystem::path& path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw IoError(path.string() + ": cannot open the character card");
        std::ostringstream ss;
        ss << f.rdbuf();
        if (f.bad()) throw IoError(path.string() + ": cannot read the character card");
        return parse(ss.str(), path.string());
    }

private:
    static std::string str(const nlohmann::json& o, const char* key, const std::string& source,
                           const std::string& where) {
        auto it = o.find(key);
        if (it == o.end() || it->is_null()) return {};
        if (!it->is_string())
            throw FormatError(source + ": field '" + where + key + "' is " + io::detail::json_type(*it) +
                              ", expected a string");
        return it->get<std::string>();
    }
    static std::string first_of(const nlohmann::json& o, std::initializer_list<const char*> keys,
                                const std::string& source, const std::string& where) {
        for (const char* k : keys)
            if (o.contains(k) && !o.at(k).is_null()) return str(o, k, source, where);
        return {};
    }
    static CharacterCard from_limarp(const nlohmann::json& j, const std::string& source) {
        auto obj = [&](const char* key) -> const nlohmann::json& {
            auto it = j.find(key);
            if (it == j.end() || !it->is_object())
                throw FormatError(source + ": LimaRP data needs an object '" + key + "' with <FIRST> and <SECOND>");
            return *it;
        };
        const nlohmann::json& names = obj("names");
        CharacterCard c;
        c.name = str(names, "<FIRST>", source, "names.");
        if (detail::trim_ws(c.name).empty()) throw FormatError(source + ": missing required field 'names.<FIRST>'");
        const std::string user = str(names, "<SECOND>", source, "names.");
        if (!user.empty()) c.user_name = user;
        if (j.contains("personas")) {
            const nlohmann::json& personas = obj("personas");
            c.description = str(personas, "<FIRST>", source, "personas.");
            const std::string up = str(personas, "<SECOND>", source, "personas.");
            if (!up.empty()) c.user_persona = up;
        }
        c.scenario = str(j, "scenario", source, "");
        if (auto it = j.find("conversation"); it != j.end() && !it->is_null()) {
            if (!it->is_array()) throw FormatError(source + ": field 'conversation' must be an array of {name, text}");
            std::size_t i = 0;
            for (const auto& m : *it) {
                const std::string at = "conversation[" + std::to_string(i++) + "].";
                if (!m.is_object())
                    throw FormatError(source + ": field '" + at.substr(0, at.size() - 1) +
                                      "' must be an object {name, text}");
                const std::string who = str(m, "name", source, at);
                Speaker s;
                if (who == "<FIRST>" || who == c.name)
                    s = Speaker::Character;
                else if (who == "<SECOND>" || (c.user_name && who == *c.user_name))
                    s = Speaker::User;
                else
                    throw FormatError(source + ": field '" + at + "name' is \"" + who +
                                      "\", expected <FIRST> or <SECOND>");
                c.conversation.push_back({s, str(m, "text", source, at)});
            }
        }
        if (!c.conversation.empty() && c.conversation.front().speaker == Speaker::Character) {
            c.first_message = c.conversation.front().text;
            c.conversation.erase(c.conversation.begin());
        }
        return c;
    }
};

}  // namespace limarp::text
