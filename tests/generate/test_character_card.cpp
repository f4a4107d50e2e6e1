// Tests for limarp/text/character_card.hpp (here because test_generate links yaml-cpp and
// defines LIMARP_WITH_YAML_CPP): plain, TavernAI V1, SillyTavern V2 and LimaRP-data layouts
// in JSON and YAML, placeholders, errors naming the field.
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/character_card.hpp"

using namespace limarp;
using namespace limarp::text;

BOOST_AUTO_TEST_SUITE(character_card)

BOOST_AUTO_TEST_CASE(sillytavern_v2_json) {
    const std::string j = R"({
      "spec": "chara_card_v2", "spec_version": "2.0",
      "data": {"name": "Aria", "description": "{{char}} is an elf ranger.", "personality": "cheerful, curious",
               "scenario": "{{user}} is lost in {{char}}'s forest.", "first_mes": "*waves* Hi, {{user}}!",
               "mes_example": "<START>\n{{char}}: Hello.", "alternate_greetings": ["Oh, hello."],
               "creator_notes": "", "tags": ["fantasy"], "extensions": {}}
    })";
    const CharacterCard c = CharacterCard::parse(j, "aria.json");
    BOOST_CHECK_EQUAL(c.name, "Aria");
    BOOST_CHECK_EQUAL(c.persona(), "{{char}} is an elf ranger.\ncheerful, curious");
    BOOST_CHECK_EQUAL(c.first_message, "*waves* Hi, {{user}}!");
    BOOST_CHECK_EQUAL(c.alternate_greetings.size(), 1u);
    BOOST_CHECK_EQUAL(c.example_messages, "<START>\n{{char}}: Hello.");
    const auto setup = c.setup("Bob", "A traveler.");
    const auto turns = c.opening_turns();
    BOOST_REQUIRE_EQUAL(turns.size(), 1u);
    const std::string prompt = AlpacaPrompt(setup).format(turns);
    BOOST_CHECK_EQUAL(
        prompt,
        "\n### Instruction:\nAria's Persona: Aria is an elf ranger.\ncheerful, curious\n\nBob's Persona: A "
        "traveler.\n\nScenario: Bob is lost in Aria's forest.\n\nPlay the role of Aria. You must engage in a "
        "roleplaying chat with Bob below this line. Do not write dialogues and narration for Bob.\n\n"
        "### Response:\nAria: *waves* Hi, Bob!\n\n### Response:\nAria:");
}

BOOST_AUTO_TEST_CASE(plain_and_v1_layouts) {
    const CharacterCard a = CharacterCard::parse(R"({"name": "Mira", "persona": "An engineer.", "scenario": "A ship.",
                                                     "first_message": "Hm?", "user_name": "Dan"})",
                                                 "m.json");
    BOOST_CHECK_EQUAL(a.description, "An engineer.");
    BOOST_CHECK_EQUAL(a.first_message, "Hm?");
    BOOST_CHECK_EQUAL(a.setup("").user_name, "Dan");  // the card's user name when none is given
    BOOST_CHECK_EQUAL(a.setup("Eve").user_name, "Eve");
    const CharacterCard v1 = CharacterCard::parse(R"({"name": "Rex", "description": "A dog.", "personality": "",
                                                      "scenario": "", "first_mes": "Woof.", "mes_example": ""})",
                                                  "r.json");
    BOOST_CHECK_EQUAL(v1.persona(), "A dog.");
    BOOST_CHECK_EQUAL(v1.setup("").user_name, "User");
}

#if defined(LIMARP_WITH_YAML_CPP)
BOOST_AUTO_TEST_CASE(yaml_card) {
    const std::string y =
        "name: Aria\n"
        "description: |\n"
        "  {{char}} is an elf ranger.\n"
        "  She is cheerful.\n"
        "scenario: \"{{user}} is lost.\"\n"
        "first_mes: >\n"
        "  *waves*\n"
        "  Hi!\n";
    const CharacterCard c = CharacterCard::parse(y, "aria.yaml");
    BOOST_CHECK_EQUAL(c.name, "Aria");
    BOOST_CHECK_EQUAL(c.description, "{{char}} is an elf ranger.\nShe is cheerful.\n");
    BOOST_CHECK_EQUAL(c.scenario, "{{user}} is lost.");
    BOOST_CHECK_EQUAL(c.first_message, "*waves* Hi!\n");
    BOOST_CHECK_EQUAL(c.persona(), "{{char}} is an elf ranger.\nShe is cheerful.");
    // load() from a file
    const auto path = std::filesystem::temp_directory_path() / "limarp_test_card.yaml";
    std::ofstream(path) << y;
    BOOST_CHECK_EQUAL(CharacterCard::load(path).name, "Aria");
    std::filesystem::remove(path);
    BOOST_CHECK_THROW(CharacterCard::load(path), IoError);
}

BOOST_AUTO_TEST_CASE(limarp_data_yaml) {
    const std::string y =
        "personas:\n"
        "  <FIRST>: <FIRST> is a ship's engineer who distrusts <SECOND>.\n"
        "  <SECOND>: <SECOND> is the new captain.\n"
        "names:\n"
        "  <FIRST>: Mira\n"
        "  <SECOND>: Dan\n"
        "scenario: The engine fails.\n"
        "conversation:\n"
        "  - name: <FIRST>\n"
        "    text: '*She looks up.* \"Captain.\"'\n"
        "  - name: <SECOND>\n"
        "    text: \"Report, <FIRST>.\"\n"
        "  - name: <FIRST>\n"
        "    text: It's the coupling.\n";
    const CharacterCard c = CharacterCard::parse(y, "limarp.yaml");
    BOOST_CHECK_EQUAL(c.name, "Mira");
    BOOST_CHECK_EQUAL(c.user_name.value_or(""), "Dan");
    BOOST_CHECK_EQUAL(c.user_persona.value_or(""), "<SECOND> is the new captain.");
    BOOST_CHECK_EQUAL(c.first_message, "*She looks up.* \"Captain.\"");
    BOOST_REQUIRE_EQUAL(c.conversation.size(), 2u);
    BOOST_CHECK(c.conversation[0].speaker == Speaker::User);
    BOOST_CHECK(c.conversation[1].speaker == Speaker::Character);
    const std::string prompt = AlpacaPrompt(c.setup("")).format(c.opening_turns(), LengthTag::medium);
    BOOST_CHECK_EQUAL(
        prompt,
        "\n### Instruction:\nMira's Persona: Mira is a ship's engineer who distrusts Dan.\n\nDan's Persona: Dan "
        "is the new captain.\n\nScenario: The engine fails.\n\nPlay the role of Mira. You must engage in a "
        "roleplaying chat with Dan below this line. Do not write dialogues and narration for Dan.\n\n"
        "### Response:\nMira: *She looks up.* \"Captain.\"\n\n### Input:\nDan: Report, Mira.\n\n"
        "### Response:\nMira: It's the coupling.\n\n### Response: (length = medium)\nMira:");
}
#endif

BOOST_AUTO_TEST_CASE(errors_name_the_field) {
    auto msg = [](const std::string& text) -> std::string {
        try {
            CharacterCard::parse(text, "card.json");
        } catch (const FormatError& e) {
            return e.what();
        }
        return "";
    };
    BOOST_CHECK(msg(R"({"description": "x"})").find("'name'") != std::string::npos);
    BOOST_CHECK(msg(R"({"name": "A", "scenario": 3})").find("'scenario'") != std::string::npos);
    BOOST_CHECK(msg(R"({"spec": "chara_card_v2", "data": {"description": "x"}})").find("'data.name'") !=
                std::string::npos);
    BOOST_CHECK(msg(R"({"spec": "chara_card_v9", "data": {}})").find("spec") != std::string::npos);
    BOOST_CHECK(msg(R"({"name": "A", "alternate_greetings": [1]})").find("alternate_greetings") != std::string::npos);
    BOOST_CHECK(msg(R"({"names": {"<FIRST>": "A"}, "conversation": [{"name": "<THIRD>", "text": "x"}]})")
                    .find("conversation[0].name") != std::string::npos);
    BOOST_CHECK(msg("{not json").find("card.json") != std::string::npos);
#if defined(LIMARP_WITH_YAML_CPP)
    BOOST_CHECK(msg("name: [unclosed").find("YAML") != std::string::npos);
    BOOST_CHECK(msg("- a\n- b\n").find("object") != std::string::npos);
#endif
}

BOOST_AUTO_TEST_SUITE_END()
