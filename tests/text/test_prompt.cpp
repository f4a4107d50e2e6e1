// Tests for limarp/text/alpaca_prompt.hpp and chatml.hpp: the LimaRP extended-Alpaca prompt
// byte for byte (expected strings written out by hand), length tags, placeholders, context
// fitting, stop strings, ChatML, and the token ids of one prompt as libsentencepiece gives them.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/chatml.hpp"
#include "limarp/text/tokenizer.hpp"

#if LIMARP_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

using namespace limarp;
using namespace limarp::text;

namespace {

RoleplaySetup aria_setup() {
    RoleplaySetup s;
    s.char_name = "Aria";
    s.user_name = "Bob";
    s.char_persona =
        "Aria is a cheerful elf ranger who guards the Whispering Woods. She speaks in a warm, playful tone.";
    s.user_persona = "{{user}} is a lost traveler from the city.";
    s.scenario = "{{user}} stumbles into <FIRST>'s forest camp at dusk.";
    return s;
}

std::vector<Turn> aria_turns() {
    return {{Speaker::Character, "*Aria looks up from the fire.* Oh! A visitor? Come, sit by the fire, {{user}}."},
            {Speaker::User, "Thanks. I think I'm lost... where am I?"}};
}

// Conversation A, written out by hand from the model card's template.
const std::string kAriaPrompt =
    "\n"
    "### Instruction:\n"
    "Aria's Persona: Aria is a cheerful elf ranger who guards the Whispering Woods. She speaks in a warm, playful "
    "tone.\n"
    "\n"
    "Bob's Persona: Bob is a lost traveler from the city.\n"
    "\n"
    "Scenario: Bob stumbles into Aria's forest camp at dusk.\n"
    "\n"
    "Play the role of Aria. You must engage in a roleplaying chat with Bob below this line. Do not write dialogues and "
    "narration for Bob.\n"
    "\n"
    "### Response:\n"
    "Aria: *Aria looks up from the fire.* Oh! A visitor? Come, sit by the fire, Bob.\n"
    "\n"
    "### Input:\n"
    "Bob: Thanks. I think I'm lost... where am I?\n"
    "\n"
    "### Response: (length = medium)\n"
    "Aria:";

// Token ids of kAriaPrompt from Debian's libsentencepiece 0.1.97 (SentencePieceProcessor::Encode
// on .cache/mistral-tokenizer.model, BOS prepended).
const std::vector<int> kAriaIds = {
    1,     28705, 13,    27332, 3133,  3112,  28747, 13,    28741, 3931,  28742, 28713, 6441,  28708, 28747, 330,
    3931,  349,   264,   17096, 1007,  22270, 408,   3689,  693,   16113, 272,   943,   278,   487,   288,   28628,
    28723, 985,   19203, 297,   264,   6100,  28725, 1156,  1007,  10294, 28723, 13,    13,    28760, 598,   28742,
    28713, 6441,  28708, 28747, 7409,  349,   264,   3654,  4530,  263,   477,   272,   2990,  28723, 13,    13,
    3224,  22786, 28747, 7409,  341,   2915,  867,   778,   330,   3931,  28742, 28713, 8613,  2791,  438,   281,
    14948, 28723, 13,    13,    10045, 272,   3905,  302,   330,   3931,  28723, 995,   1580,  14200, 297,   264,
    3905,  1674,  288,   10706, 395,   7409,  3624,  456,   1407,  28723, 2378,  459,   3324,  10436, 1139,  304,
    9819,  352,   354,   7409,  28723, 13,    13,    27332, 12107, 28747, 13,    28741, 3931,  28747, 398,   28741,
    3931,  4674,  582,   477,   272,   3339,  3752,  5434,  28808, 330,   19446, 28804, 12578, 28725, 1943,  486,
    272,   3339,  28725, 7409,  28723, 13,    13,    27332, 11232, 28747, 13,    28760, 598,   28747, 8868,  28723,
    315,   1073,  315,   28742, 28719, 3654,  1101,  970,   837,   315,   28804, 13,    13,    27332, 12107, 28747,
    325,   2143,  327,   10312, 28731, 13,    28741, 3931,  28747};

// The real Mistral tokenizer (scripts/setup.sh downloads it); a missing file fails the test.
std::filesystem::path tokenizer_path() {
    const auto p = std::filesystem::path(LIMARP_CACHE_DIR) / "mistral-tokenizer.model";
    BOOST_REQUIRE_MESSAGE(std::filesystem::exists(p), p.string() << " is missing: run scripts/setup.sh");
    return p;
}

// Words separated by spaces/newlines: a crude but monotone token counter for fitting tests.
std::int64_t count_words(std::string_view s) {
    std::int64_t n = 0;
    bool in = false;
    for (char c : s) {
        const bool ws = c == ' ' || c == '\n';
        if (!ws && !in) ++n;
        in = !ws;
    }
    return n;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(alpaca_prompt)

BOOST_AUTO_TEST_CASE(length_tags_parse_and_print) {
    const char* names[] = {"micro",   "tiny", "short",    "medium",    "long",
                           "massive", "huge", "enormous", "humongous", "unlimited"};
    BOOST_REQUIRE_EQUAL(kLengthTags.size(), 10u);
    for (std::size_t i = 0; i < kLengthTags.size(); ++i) {
        BOOST_CHECK_EQUAL(to_string(kLengthTags[i]), names[i]);
        BOOST_CHECK(parse_length_tag(names[i]) == kLengthTags[i]);
    }
    BOOST_CHECK(parse_length_tag("short") == LengthTag::short_);
    BOOST_CHECK(parse_length_tag("long") == LengthTag::long_);
    BOOST_CHECK(!parse_optional_length_tag("").has_value());
    BOOST_CHECK(!parse_optional_length_tag("none").has_value());
    BOOST_CHECK(parse_optional_length_tag("tiny") == LengthTag::tiny);
    try {
        parse_length_tag("medium-ish");
        BOOST_ERROR("an unknown tag must throw");
    } catch (const ArgumentError& e) {
        const std::string msg = e.what();
        BOOST_CHECK(msg.find("medium-ish") != std::string::npos);
        BOOST_CHECK(msg.find(length_tag_list()) != std::string::npos);
    }
    BOOST_CHECK_THROW(parse_length_tag("Medium"), ArgumentError);
    BOOST_CHECK_THROW(parse_optional_length_tag("short_"), ArgumentError);
}

BOOST_AUTO_TEST_CASE(placeholders) {
    BOOST_CHECK_EQUAL(substitute_placeholders(
                          "<FIRST> meets <SECOND>; {{char}}/{{user}}, {{Char}}/{{USER}}, <BOT>/<USER>", "Aria", "Bob"),
                      "Aria meets Bob; Aria/Bob, Aria/Bob, Aria/Bob");
    BOOST_CHECK_EQUAL(substitute_placeholders("no {placeholders} <here> {{chars}}", "A", "B"),
                      "no {placeholders} <here> {{chars}}");
    BOOST_CHECK_EQUAL(substitute_placeholders("", "A", "B"), "");
}

BOOST_AUTO_TEST_CASE(golden_full_conversation) {
    const AlpacaPrompt p(aria_setup());
    const auto turns = aria_turns();
    BOOST_CHECK_EQUAL(p.format(turns, LengthTag::medium), kAriaPrompt);
}

BOOST_AUTO_TEST_CASE(golden_defaults_no_personas_no_length) {
    // Default names, empty persona/scenario lines are omitted, no length modifier.
    const AlpacaPrompt p;
    const std::vector<Turn> turns = {{Speaker::User, "Hi."}};
    const std::string want =
        "\n### Instruction:\n"
        "Play the role of Character. You must engage in a roleplaying chat with User below this line. Do not write "
        "dialogues and narration for User.\n"
        "\n"
        "### Input:\n"
        "User: Hi.\n"
        "\n"
        "### Response:\n"
        "Character:";
    BOOST_CHECK_EQUAL(p.format(turns), want);
    // no turns at all: instruction then the response header
    BOOST_CHECK_EQUAL(
        p.format({}, LengthTag::tiny),
        "\n### Instruction:\nPlay the role of Character. You must engage in a roleplaying chat with User below "
        "this line. Do not write dialogues and narration for User.\n\n### Response: (length = tiny)\nCharacter:");
}

BOOST_AUTO_TEST_CASE(golden_limarp_data_placeholders_multi_turn) {
    // LimaRP data style: <FIRST>/<SECOND> everywhere, surrounding whitespace trimmed, the length
    // modifier only on the final header, multi-line texts kept.
    RoleplaySetup s;
    s.char_name = "Mira";
    s.user_name = "Dan";
    s.char_persona = "<FIRST> is a ship's engineer. She distrusts <SECOND>.\n";
    s.user_persona = "  <SECOND> is the new captain.";
    s.scenario = "The engine of the Kestrel fails while <SECOND> watches.";
    const std::vector<Turn> turns = {
        {Speaker::User, "\"Report, <FIRST>.\"\n"},
        {Speaker::Character, "  *She wipes her hands.*\n\n\"It's the coupling, Captain.\""},
        {Speaker::User, "\"Can you fix it?\""}};
    const std::string want =
        "\n### Instruction:\n"
        "Mira's Persona: Mira is a ship's engineer. She distrusts Dan.\n"
        "\n"
        "Dan's Persona: Dan is the new captain.\n"
        "\n"
        "Scenario: The engine of the Kestrel fails while Dan watches.\n"
        "\n"
        "Play the role of Mira. You must engage in a roleplaying chat with Dan below this line. Do not write dialogues "
        "and "
        "narration for Dan.\n"
        "\n"
        "### Input:\n"
        "Dan: \"Report, Mira.\"\n"
        "\n"
        "### Response:\n"
        "Mira: *She wipes her hands.*\n"
        "\n"
        "\"It's the coupling, Captain.\"\n"
        "\n"
        "### Input:\n"
        "Dan: \"Can you fix it?\"\n"
        "\n"
        "### Response: (length = long)\n"
        "Mira:";
    const AlpacaPrompt p(s);
    BOOST_CHECK_EQUAL(p.format(turns, LengthTag::long_), want);
    // the same without a tag: only the last header changes
    std::string no_tag = want;
    no_tag.replace(no_tag.rfind("### Response: (length = long)"), 29, "### Response:");
    BOOST_CHECK_EQUAL(p.format(turns), no_tag);
}

BOOST_AUTO_TEST_CASE(golden_scenario_only_and_character_last) {
    // Only a scenario; the history ends with the character (a continuation turn is requested).
    RoleplaySetup s;
    s.char_name = "Narrator";
    s.user_name = "Player";
    s.scenario = "A haunted lighthouse.";
    const std::vector<Turn> turns = {{Speaker::Character, "The door creaks."}, {Speaker::User, ""}};
    const std::string want =
        "\n### Instruction:\n"
        "Scenario: A haunted lighthouse.\n"
        "\n"
        "Play the role of Narrator. You must engage in a roleplaying chat with Player below this line. Do not write "
        "dialogues and narration for Player.\n"
        "\n"
        "### Response:\n"
        "Narrator: The door creaks.\n"
        "\n"
        "### Input:\n"
        "Player:\n"
        "\n"
        "### Response: (length = unlimited)\n"
        "Narrator:";
    BOOST_CHECK_EQUAL(AlpacaPrompt(s).format(turns, LengthTag::unlimited), want);
}

BOOST_AUTO_TEST_CASE(token_ids_match_libsentencepiece) {
    const auto path = tokenizer_path();
    const Tokenizer tok = Tokenizer::from_sentencepiece(path);
    const std::string prompt = AlpacaPrompt(aria_setup()).format(aria_turns(), LengthTag::medium);
    const std::vector<int> got = tok.encode(prompt);
    BOOST_CHECK_EQUAL_COLLECTIONS(got.begin(), got.end(), kAriaIds.begin(), kAriaIds.end());
    BOOST_CHECK_EQUAL(tok.decode(got), prompt);
#if LIMARP_HAVE_SENTENCEPIECE
    // The same against the library itself, for this and other conversations.
    sentencepiece::SentencePieceProcessor sp;
    BOOST_REQUIRE(sp.Load(path.string()).ok());
    RoleplaySetup other;
    other.char_name = "Mira";
    other.user_name = "Dan";
    other.char_persona = "<FIRST> is a ship's engineer. Ünïcode — “quotes” 🚀\n\n  spaced   out";
    other.scenario = "Code: `for (int i = 0; i < n; ++i) {}`\tand a tab.";
    const std::vector<Turn> other_turns = {
        {Speaker::User, "Hi!"}, {Speaker::Character, "*nods*\n\"Yes.\""}, {Speaker::User, "日本語で？"}};
    const std::string prompts[] = {prompt, AlpacaPrompt(other).format(other_turns, LengthTag::humongous),
                                   AlpacaPrompt().format({}, std::nullopt)};
    for (const auto& text : prompts) {
        std::vector<int> want;
        BOOST_REQUIRE(sp.Encode(text, &want).ok());
        want.insert(want.begin(), 1);
        const auto mine = tok.encode(text);
        BOOST_CHECK_EQUAL_COLLECTIONS(mine.begin(), mine.end(), want.begin(), want.end());
        if (text == prompt) BOOST_CHECK_EQUAL_COLLECTIONS(want.begin(), want.end(), kAriaIds.begin(), kAriaIds.end());
    }
#endif
}

BOOST_AUTO_TEST_CASE(fitting_drops_oldest_turns_only) {
    const AlpacaPrompt p(aria_setup());
    std::vector<Turn> turns;
    for (int i = 0; i < 9; ++i)
        turns.push_back(
            {i % 2 ? Speaker::Character : Speaker::User, "message number " + std::to_string(i) + " with some words"});
    const std::int64_t full = count_words(p.format(turns, LengthTag::tiny));
    // a budget that fits everything keeps everything
    auto f = p.fit(turns, LengthTag::tiny, full, count_words);
    BOOST_CHECK_EQUAL(f.first_turn, 0u);
    BOOST_CHECK_EQUAL(f.text, p.format(turns, LengthTag::tiny));
    BOOST_CHECK_EQUAL(f.tokens, full);
    // every turn has the same number of words: one word short drops one turn, one turn and a word short drops two
    const std::int64_t per_turn = count_words(p.turn(turns[0]));
    BOOST_CHECK_EQUAL(per_turn, 9);
    f = p.fit(turns, LengthTag::tiny, full - 1, count_words);
    BOOST_CHECK_EQUAL(f.first_turn, 1u);
    BOOST_CHECK_EQUAL(f.text, p.format(std::span(turns).subspan(1), LengthTag::tiny));
    BOOST_CHECK_LE(f.tokens, full - 1);
    f = p.fit(turns, LengthTag::tiny, full - per_turn - 1, count_words);
    BOOST_CHECK_EQUAL(f.first_turn, 2u);
    BOOST_CHECK(f.text.starts_with(p.instruction()));
    // the last turn survives even when it is the only one that fits
    const std::int64_t minimal = count_words(p.format(std::span(turns).subspan(8), LengthTag::tiny));
    f = p.fit(turns, LengthTag::tiny, minimal, count_words);
    BOOST_CHECK_EQUAL(f.first_turn, 8u);
    BOOST_CHECK(f.text.find("message number 8") != std::string::npos);
    // the instruction and the last turn do not fit: clear errors
    try {
        p.fit(turns, LengthTag::tiny, minimal - 1, count_words);
        BOOST_ERROR("must throw");
    } catch (const ArgumentError& e) {
        BOOST_CHECK(std::string(e.what()).find("message being answered") != std::string::npos);
    }
    try {
        p.fit(turns, LengthTag::tiny, 10, count_words);
        BOOST_ERROR("must throw");
    } catch (const ArgumentError& e) {
        BOOST_CHECK(std::string(e.what()).find("instruction block alone") != std::string::npos);
    }
    // no turns
    f = p.fit({}, std::nullopt, 1000, count_words);
    BOOST_CHECK_EQUAL(f.text, p.format({}));
}

BOOST_AUTO_TEST_CASE(fitting_with_the_tokenizer) {
    const auto path = tokenizer_path();
    const Tokenizer tok = Tokenizer::from_sentencepiece(path);
    const AlpacaPrompt p(aria_setup());
    const auto turns = aria_turns();
    auto f = p.fit(turns, LengthTag::medium, static_cast<std::int64_t>(kAriaIds.size()), tok);
    BOOST_CHECK_EQUAL(f.first_turn, 0u);
    BOOST_CHECK_EQUAL(f.tokens, static_cast<std::int64_t>(kAriaIds.size()));
    f = p.fit(turns, LengthTag::medium, static_cast<std::int64_t>(kAriaIds.size()) - 1, tok);
    BOOST_CHECK_EQUAL(f.first_turn, 1u);
    BOOST_CHECK_EQUAL(f.tokens, static_cast<std::int64_t>(tok.encode(f.text).size()));
}

BOOST_AUTO_TEST_CASE(default_stop_strings) {
    const auto stops = AlpacaPrompt(aria_setup()).stop_strings();
    const std::vector<std::string> want = {"### Input", "\nBob:", "<|im_end|>", "<|im_start|>"};
    BOOST_CHECK_EQUAL_COLLECTIONS(stops.begin(), stops.end(), want.begin(), want.end());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(chatml)

BOOST_AUTO_TEST_CASE(golden_chatml) {
    const std::vector<ChatMessage> msgs = {
        {"system", "You are a helpful assistant."}, {"user", "Hi!"}, {"assistant", "Hello."}, {"user", "Bye."}};
    BOOST_CHECK_EQUAL(ChatMlPrompt::format_messages(msgs),
                      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\nHi!<|im_end|>\n"
                      "<|im_start|>assistant\nHello.<|im_end|>\n"
                      "<|im_start|>user\nBye.<|im_end|>\n"
                      "<|im_start|>assistant\n");
    BOOST_CHECK_EQUAL(ChatMlPrompt::format_messages(std::span(msgs).first(2), false),
                      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n");
}

BOOST_AUTO_TEST_CASE(roleplay_as_chatml) {
    const ChatMlPrompt p(aria_setup());
    const std::string want =
        "<|im_start|>system\n"
        "Aria's Persona: Aria is a cheerful elf ranger who guards the Whispering Woods. She speaks in a warm, playful "
        "tone.\n"
        "\n"
        "Bob's Persona: Bob is a lost traveler from the city.\n"
        "\n"
        "Scenario: Bob stumbles into Aria's forest camp at dusk.\n"
        "\n"
        "Play the role of Aria. You must engage in a roleplaying chat with Bob below this line. Do not write dialogues "
        "and "
        "narration for Bob.<|im_end|>\n"
        "<|im_start|>assistant\n*Aria looks up from the fire.* Oh! A visitor? Come, sit by the fire, Bob.<|im_end|>\n"
        "<|im_start|>user\nThanks. I think I'm lost... where am I?<|im_end|>\n"
        "<|im_start|>assistant\n";
    BOOST_CHECK_EQUAL(p.format(aria_turns()), want);
    const auto stops = ChatMlPrompt::stop_strings();
    BOOST_CHECK(stops == (std::vector<std::string>{"<|im_end|>", "<|im_start|>"}));
    // fitting keeps the system message and the last turn
    const auto f = p.fit(aria_turns(), count_words(want) - 1, count_words);
    BOOST_CHECK_EQUAL(f.first_turn, 1u);
    BOOST_CHECK(f.text.starts_with("<|im_start|>system\n"));
}

BOOST_AUTO_TEST_CASE(chatml_token_ids) {
    const auto path = tokenizer_path();
    Tokenizer tok = Tokenizer::from_sentencepiece(path);
    const ChatMlPrompt p(aria_setup());
    BOOST_CHECK_THROW(p.encode(tok, aria_turns()), ArgumentError);  // base Mistral tokenizer: no ChatML tokens
    tok.add_special_token("<|im_end|>", 32000);
    tok.add_special_token("<|im_start|>", 32001);
    const auto ids = p.encode(tok, aria_turns());
    BOOST_REQUIRE_GE(ids.size(), 3u);
    BOOST_CHECK_EQUAL(ids[0], 1);
    BOOST_CHECK_EQUAL(ids[1], 32001);
    BOOST_CHECK_EQUAL(std::count(ids.begin(), ids.end(), 32001), 4);
    BOOST_CHECK_EQUAL(std::count(ids.begin(), ids.end(), 32000), 3);
    // the text between special tokens is encoded as SentencePiece segments (dummy prefix each)
    const auto sys = tok.encode("system\n", {.add_bos = false});
    BOOST_CHECK(std::equal(sys.begin(), sys.end(), ids.begin() + 2));
}

BOOST_AUTO_TEST_SUITE_END()
