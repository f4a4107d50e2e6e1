// Tests for limarp/train/dataset.hpp on the sample files of tests/train/data: parsing and
// validation (errors name file, line and field), the exact training text with a length tag
// on every response header, tokens equal to the whole-text encoding, loss masks, truncation at
// turn boundaries, the eval split and deterministic shuffling.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "limarp/text/tokenizer.hpp"
#include "limarp/train/dataset.hpp"

using namespace limarp;
using namespace limarp::train;
namespace fs = std::filesystem;

namespace {

fs::path data(const std::string& rel) { return fs::path(LIMARP_TRAIN_DATA) / rel; }

const text::Tokenizer& tokenizer() {
    static const text::Tokenizer tok = [] {
        const fs::path p = fs::path(LIMARP_CACHE_DIR) / "mistral-tokenizer.model";
        BOOST_REQUIRE_MESSAGE(fs::exists(p), p.string() + " is missing: run scripts/setup.sh");
        return text::Tokenizer::from_sentencepiece(p);
    }();
    return tok;
}

// aria.yaml written out by hand. Response lengths (words): 15 -> tiny, 62 -> medium, 4 -> micro.
const std::string kAriaText =
    "\n"
    "### Instruction:\n"
    "Aria's Persona: Aria is a cheerful elf ranger who guards the Whispering Woods. She speaks in a warm, playful tone.\n"
    "\n"
    "Bob's Persona: Bob is a lost traveler from the city.\n"
    "\n"
    "Scenario: Bob stumbles into Aria's forest camp at dusk.\n"
    "\n"
    "Play the role of Aria. You must engage in a roleplaying chat with Bob below this line. Do not write dialogues and "
    "narration for Bob.\n"
    "\n"
    "### Response: (length = tiny)\n"
    "Aria: *Aria looks up from the fire.* Oh! A visitor? Come, sit by the fire, Bob.\n"
    "\n"
    "### Input:\n"
    "Bob: Thanks. I think I'm lost... where am I?\n"
    "\n"
    "### Response: (length = medium)\n"
    "Aria: *She laughs softly, tossing another branch onto the flames so that sparks drift up between the old pines.* "
    "You are in the Whispering Woods, traveler, three days' walk from the nearest road. Most city folk who wander this "
    "far have either lost a map or lost a bet.\n"
    "\n"
    "*She tilts her head, amber eyes curious.* Which one was it for you, Bob?\n"
    "\n"
    "### Input:\n"
    "Bob: A map. Definitely a map.\n"
    "\n"
    "### Response: (length = micro)\n"
    "Aria: Then you are lucky.";

// mira.yaml: no user persona (null), user speaks first, non-ASCII text; response 17 words -> tiny.
const std::string kMiraText =
    "\n"
    "### Instruction:\n"
    "Mira's Persona: Mira runs the tea house on Lantern Street and remembers every customer's order.\n"
    "\n"
    "Scenario: It is raining; Jun ducks into Mira's tea house \xe2\x80\x94 the caf\xc3\xa9 is nearly empty.\n"
    "\n"
    "Play the role of Mira. You must engage in a roleplaying chat with Jun below this line. Do not write dialogues and "
    "narration for Jun.\n"
    "\n"
    "### Input:\n"
    "Jun: Is it too late for a cup of jasmine tea? \xe2\x98\x94\n"
    "\n"
    "### Response: (length = tiny)\n"
    "Mira: *Mira smiles and reaches for the tin.* Never too late for you, Jun. The usual, with honey?";

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const FormatError& e) {
        return e.what();
    }
    return "(no FormatError)";
}

// The decoded text of each maximal run of target tokens.
std::vector<std::string> target_runs(const Example& e) {
    std::vector<std::string> runs;
    std::vector<int> cur;
    for (std::size_t t = 0; t <= e.tokens.size(); ++t) {
        if (t < e.tokens.size() && e.targets[t]) {
            cur.push_back(e.tokens[t]);
        } else if (!cur.empty()) {
            runs.push_back(tokenizer().decode(cur));
            cur.clear();
        }
    }
    return runs;
}

std::vector<Conversation> many(std::size_t n) {
    std::vector<Conversation> v;
    const auto a = load_limarp_yaml(data("limarp/aria.yaml"));
    for (std::size_t i = 0; i < n; ++i) {
        auto c = a;
        c.source = "copy" + std::to_string(i);
        c.turns.back().text = "Then you are lucky, number " + std::to_string(i) + ".";
        v.push_back(c);
    }
    return v;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(dataset)

BOOST_AUTO_TEST_CASE(parse_limarp_yaml_file) {
    const auto c = load_limarp_yaml(data("limarp/aria.yaml"));
    BOOST_TEST(c.setup.char_name == "Aria");
    BOOST_TEST(c.setup.user_name == "Bob");
    BOOST_TEST(c.setup.scenario == "<SECOND> stumbles into <FIRST>'s forest camp at dusk.");
    BOOST_REQUIRE(c.turns.size() == 5u);
    BOOST_TEST((c.turns[0].speaker == text::Speaker::Character));
    BOOST_TEST((c.turns[1].speaker == text::Speaker::User));
    BOOST_TEST(c.turns[1].text == "Thanks. I think I'm lost... where am I?");
    BOOST_TEST(c.source == data("limarp/aria.yaml").string());
}

BOOST_AUTO_TEST_CASE(parse_jsonl_file) {
    const auto v = load_conversations_jsonl(data("convs.jsonl"));
    BOOST_REQUIRE(v.size() == 2u);  // the blank line is skipped
    BOOST_TEST(v[0].source == data("convs.jsonl").string() + ":1");
    BOOST_TEST(v[1].source == data("convs.jsonl").string() + ":3");
    BOOST_TEST(v[0].setup.char_name == "Tomas");
    BOOST_TEST((v[0].turns[0].speaker == text::Speaker::User));
    // literal names instead of placeholders, null persona and scenario
    BOOST_TEST((v[1].turns[0].speaker == text::Speaker::Character));
    BOOST_TEST((v[1].turns[1].speaker == text::Speaker::User));
    BOOST_TEST(v[1].setup.user_persona.empty());
    BOOST_TEST(v[1].setup.scenario.empty());
}

BOOST_AUTO_TEST_CASE(training_text_has_a_tag_on_every_response) {
    const ExampleBuilder b(tokenizer(), DatasetOptions{});
    BOOST_TEST(b.text(load_limarp_yaml(data("limarp/aria.yaml"))) == kAriaText);
    BOOST_TEST(b.text(load_limarp_yaml(data("limarp/mira.yaml"))) == kMiraText);
    DatasetOptions no_tags;
    no_tags.length_tags = false;
    const ExampleBuilder nb(tokenizer(), no_tags);
    const std::string t = nb.text(load_limarp_yaml(data("limarp/aria.yaml")));
    BOOST_TEST(t.find("(length =") == std::string::npos);
    BOOST_TEST(t.find("### Response:\nAria: Then you are lucky.") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(configurable_bins) {
    DatasetOptions o;
    o.length_bins = LengthBins::defaults(LengthUnit::Characters);  // 50, 125, 250, 500, ...
    o.length_bins.upper[0] = 20;  // responses of 73, 336 and 19 characters: tiny, medium, micro
    const ExampleBuilder b(tokenizer(), o);
    const auto segs = b.segments(load_limarp_yaml(data("limarp/aria.yaml")));
    std::vector<std::string> tags;
    for (const auto& s : segs)
        if (s.kind == SegmentKind::ResponseHeader) tags.emplace_back(text::to_string(*s.tag));
    BOOST_TEST(tags == (std::vector<std::string>{"tiny", "medium", "micro"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(tokens_equal_whole_text_encoding) {
    DatasetOptions o;
    o.check_tokenization = true;  // throws if block-wise ids differ from whole-text ids
    const ExampleBuilder b(tokenizer(), o);
    std::vector<Conversation> convs = {load_limarp_yaml(data("limarp/aria.yaml")), load_limarp_yaml(data("limarp/mira.yaml"))};
    for (auto& c : load_conversations_jsonl(data("convs.jsonl"))) convs.push_back(c);
    for (const auto& c : convs) {
        const auto e = b.build(c);
        BOOST_REQUIRE(e.has_value());
        BOOST_TEST(e->tokens == tokenizer().encode(b.text(c)));
        BOOST_TEST(e->tokens.front() == tokenizer().bos_id());
        BOOST_TEST(e->turns_kept == c.turns.size());
    }
}

BOOST_AUTO_TEST_CASE(loss_mask) {
    const auto c = load_limarp_yaml(data("limarp/aria.yaml"));
    DatasetOptions all;  // train_on_inputs true: every token but BOS
    const auto e = ExampleBuilder(tokenizer(), all).build(c);
    BOOST_REQUIRE(e.has_value());
    BOOST_TEST(e->targets[0] == 0);
    BOOST_TEST(e->n_targets() == e->size() - 1);
    const auto labels = e->labels();
    BOOST_TEST(labels[0] == -100);
    BOOST_TEST(labels[1] == e->tokens[1]);

    DatasetOptions resp;
    resp.train_on_inputs = false;
    const auto r = ExampleBuilder(tokenizer(), resp).build(c);
    BOOST_REQUIRE(r.has_value());
    BOOST_TEST(r->tokens == e->tokens);  // same ids, other mask
    const std::vector<std::string> expected = {
        "*Aria looks up from the fire.* Oh! A visitor? Come, sit by the fire, Bob.",
        "*She laughs softly, tossing another branch onto the flames so that sparks drift up between the old pines.* "
        "You are in the Whispering Woods, traveler, three days' walk from the nearest road. Most city folk who wander this "
        "far have either lost a map or lost a bet.\n\n*She tilts her head, amber eyes curious.* Which one was it for you, Bob?",
        "Then you are lucky."};
    BOOST_TEST(target_runs(*r) == expected, boost::test_tools::per_element());

    DatasetOptions eos = resp;
    eos.add_eos = true;
    const auto x = ExampleBuilder(tokenizer(), eos).build(c);
    BOOST_REQUIRE(x.has_value());
    BOOST_TEST(x->tokens.back() == tokenizer().eos_id());
    BOOST_TEST(x->targets.back() == 1);  // ends on a response
    BOOST_TEST(x->size() == r->size() + 1);
}

BOOST_AUTO_TEST_CASE(truncation_at_turn_boundaries) {
    const auto c = load_limarp_yaml(data("limarp/aria.yaml"));
    const ExampleBuilder full_b(tokenizer(), DatasetOptions{});
    const auto full = *full_b.build(c);
    // token count of the instruction block and of each turn
    const auto segs = full_b.segments(c);
    std::int64_t instr = static_cast<std::int64_t>(tokenizer().encode(segs[0].text).size());
    auto prefix_len = [&](std::size_t turns) {
        std::string t;
        for (const auto& s : segs)
            if (s.kind == SegmentKind::Instruction || s.turn < turns) t += s.text;
        return static_cast<std::int64_t>(tokenizer().encode(t).size());
    };
    for (std::size_t keep = 1; keep <= 5; ++keep) {
        for (std::int64_t slack : {0, 1}) {
            DatasetOptions o;
            o.sequence_len = prefix_len(keep) + (keep < 5 ? slack : 0);
            if (keep < 5 && slack == 1 && prefix_len(keep + 1) <= o.sequence_len) continue;
            const auto e = ExampleBuilder(tokenizer(), o).build(c);
            BOOST_REQUIRE(e.has_value());
            BOOST_TEST(e->turns_kept == keep);
            BOOST_TEST(e->turns_total == 5u);
            BOOST_TEST(!e->turn_cut);
            BOOST_TEST(e->size() == prefix_len(keep));
            BOOST_TEST(std::equal(e->tokens.begin(), e->tokens.end(), full.tokens.begin()));
        }
    }
    // Not even the first turn fits: cut it (default) or skip the example.
    DatasetOptions cut;
    cut.sequence_len = instr + 5;
    const auto e = ExampleBuilder(tokenizer(), cut).build(c);
    BOOST_REQUIRE(e.has_value());
    BOOST_TEST(e->turn_cut);
    BOOST_TEST(e->turns_kept == 1u);
    BOOST_TEST(e->size() == instr + 5);
    BOOST_TEST(std::equal(e->tokens.begin(), e->tokens.end(), full.tokens.begin()));
    DatasetOptions skip = cut;
    skip.oversize_turn = OversizeTurn::Skip;
    std::string why;
    BOOST_TEST(!ExampleBuilder(tokenizer(), skip).build(c, &why).has_value());
    BOOST_TEST(why.find("oversize_turn: skip") != std::string::npos);
    // The instruction block alone is too long: skipped.
    DatasetOptions tiny;
    tiny.sequence_len = 20;
    BOOST_TEST(!ExampleBuilder(tokenizer(), tiny).build(c, &why).has_value());
    BOOST_TEST(why.find("instruction block alone") != std::string::npos);
    // Responses only, and only the first (user) turn fits: no loss target, skipped.
    const auto m = load_limarp_yaml(data("limarp/mira.yaml"));
    DatasetOptions ro;
    ro.train_on_inputs = false;
    ro.sequence_len = static_cast<std::int64_t>(tokenizer().encode(ExampleBuilder(tokenizer(), ro).segments(m)[0].text + ExampleBuilder(tokenizer(), ro).segments(m)[1].text).size()) + 2;
    BOOST_TEST(!ExampleBuilder(tokenizer(), ro).build(m, &why).has_value());
    BOOST_TEST(why.find("no loss target") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(load_sources) {
    const std::vector<DatasetSource> src = {{data("limarp").string(), "limarp"}, {data("convs.jsonl").string(), ""}};
    const auto convs = load_conversations(src);
    BOOST_REQUIRE(convs.size() == 4u);
    BOOST_TEST(convs[0].setup.char_name == "Aria");  // folder contents sorted by path
    BOOST_TEST(convs[1].setup.char_name == "Mira");
    BOOST_TEST(convs[2].setup.char_name == "Tomas");
    const std::vector<DatasetSource> bad_type = {{data("limarp").string(), "sharegpt"}};
    BOOST_CHECK_THROW(load_conversations(bad_type), ArgumentError);
    const std::vector<DatasetSource> missing = {{data("nope").string(), ""}};
    BOOST_CHECK_THROW(load_conversations(missing), IoError);
}

BOOST_AUTO_TEST_CASE(errors_name_file_line_and_field) {
    const std::string e1 = error_of([] { load_limarp_yaml(data("bad/missing_name.yaml")); });
    BOOST_TEST_INFO(e1);
    BOOST_TEST(e1.find("missing_name.yaml:11: missing field 'conversation[1].name'") != std::string::npos);
    const std::string e2 = error_of([] { load_limarp_yaml(data("bad/bad_syntax.yaml")); });
    BOOST_TEST_INFO(e2);
    BOOST_TEST(e2.find("bad_syntax.yaml:6:") != std::string::npos);
    BOOST_TEST(e2.find("invalid YAML") != std::string::npos);
    const std::string e3 = error_of([] { load_limarp_yaml(data("bad/empty_text.yaml")); });
    BOOST_TEST_INFO(e3);
    BOOST_TEST(e3.find("empty_text.yaml:11: field 'conversation[1].text': the message is empty") != std::string::npos);
    const std::string e4 = error_of([] { load_conversations_jsonl(data("bad/bad.jsonl")); });
    BOOST_TEST_INFO(e4);
    BOOST_TEST(e4.find("bad.jsonl:2: field 'conversation[0].name': \"<THIRD>\" is neither") != std::string::npos);
    // More shapes of bad input, from text.
    const std::string e5 = error_of([] { parse_limarp_yaml("names: [Aria, Bob]\n", "x.yaml"); });
    BOOST_TEST(e5 == "x.yaml:1: field 'names': expected a map (the names of <FIRST> and <SECOND>), found a sequence");
    const std::string e6 = error_of([] {
        parse_limarp_yaml("names: {<FIRST>: A, <SECOND>: B}\npersonas: {}\nscenario: s\nconversation:\n  - name: <SECOND>\n    text: hi\n",
                          "y.yaml");
    });
    BOOST_TEST(e6 == "y.yaml:5: field 'conversation': no message of <FIRST> (the character), so nothing to learn from");
    const std::string e7 = error_of([] { parse_conversations_jsonl("{\"names\": 1}\n", "z.jsonl"); });
    BOOST_TEST(e7.find("z.jsonl:1: field 'names': expected an object") != std::string::npos);
    const std::string e8 = error_of([] { parse_conversations_jsonl("\n{oops\n", "w.jsonl"); });
    BOOST_TEST(e8.find("w.jsonl:2: invalid JSON") != std::string::npos);
    const std::string e9 = error_of([] { parse_limarp_yaml("names: {<FIRST>: A, <SECOND>: B}\npersonas: {}\nconversation: []\n", "v.yaml"); });
    BOOST_TEST(e9.find("missing field 'scenario'") != std::string::npos);
    // The loader checks every file and reports them all at once.
    const std::vector<DatasetSource> src = {{data("bad").string(), ""}};
    const std::string all = error_of([&] { load_conversations(src); });
    BOOST_TEST_INFO(all);
    BOOST_TEST(all.find("4 malformed files") != std::string::npos);
    for (const char* f : {"bad.jsonl:2", "bad_syntax.yaml:6", "empty_text.yaml:11", "missing_name.yaml:11"})
        BOOST_TEST(all.find(f) != std::string::npos);
    BOOST_CHECK_THROW(Dataset::load(src, tokenizer(), DatasetOptions{}), FormatError);
}

BOOST_AUTO_TEST_CASE(split_and_deterministic_shuffle) {
    const auto convs = many(20);
    DatasetOptions o;
    o.val_set_size = 0.25;
    o.seed = 1234;
    const auto a = Dataset::build(convs, tokenizer(), o);
    const auto b = Dataset::build(convs, tokenizer(), o);
    BOOST_TEST(a.train().size() == 15u);
    BOOST_TEST(a.eval().size() == 5u);  // ceil(0.25 * 20)
    std::vector<std::string> sa, sb, all;
    for (const auto& e : a.train()) sa.push_back(e.source);
    for (const auto& e : b.train()) sb.push_back(e.source);
    BOOST_TEST(sa == sb);
    for (const auto& e : a.eval()) sa.push_back(e.source);
    std::set<std::string> uniq(sa.begin(), sa.end());
    BOOST_TEST(uniq.size() == 20u);  // a partition
    o.seed = 99;
    const auto c = Dataset::build(convs, tokenizer(), o);
    std::vector<std::string> sc;
    for (const auto& e : c.train()) sc.push_back(e.source);
    BOOST_TEST(sc != sb);
    // Fixed expectation: the permutation comes from our own Fisher-Yates over mt19937_64, so it
    // is the same with every standard library.
    BOOST_TEST(detail::permutation(5, 42) == detail::permutation(5, 42));
    o.val_set_size = 3;
    BOOST_TEST(Dataset::build(convs, tokenizer(), o).eval().size() == 3u);
    o.val_set_size = 20;
    BOOST_CHECK_THROW(Dataset::build(convs, tokenizer(), o), ArgumentError);
    o.val_set_size = 2.5;
    BOOST_CHECK_THROW(Dataset::build(convs, tokenizer(), o), ArgumentError);
    o.val_set_size = 0;
    o.shuffle = false;
    const auto d = Dataset::build(convs, tokenizer(), o);
    BOOST_TEST(d.train().front().source == "copy0");
    BOOST_TEST(d.stats().train == 20u);
    BOOST_TEST(d.stats().tag_counts[static_cast<std::size_t>(text::LengthTag::medium)] == 20);
    BOOST_TEST(d.stats().summary().find("20 conversations -> 20 train + 0 eval") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(skipped_examples_are_reported) {
    auto convs = many(3);
    convs[1].turns = {{text::Speaker::Character, std::string(4000, 'x') + " end"}};
    convs[1].setup.scenario = std::string(30000, 'y');  // the instruction block alone exceeds the budget
    DatasetOptions o;
    o.sequence_len = 2000;
    const auto d = Dataset::build(convs, tokenizer(), o);
    BOOST_TEST(d.train().size() == 2u);
    BOOST_REQUIRE(d.stats().skipped.size() == 1u);
    BOOST_TEST(d.stats().skipped[0].source == "copy1");
    o.sequence_len = 10;
    BOOST_CHECK_THROW(Dataset::build(convs, tokenizer(), o), ArgumentError);  // nothing left
}

BOOST_AUTO_TEST_CASE(sampler_epochs_and_resume) {
    Sampler s(7, 42);
    std::vector<std::size_t> e0, e1;
    for (int i = 0; i < 7; ++i) e0.push_back(s.next());
    BOOST_TEST(s.epoch_done());
    for (int i = 0; i < 7; ++i) e1.push_back(s.next());
    BOOST_TEST(s.epoch() == 1u);
    BOOST_TEST(e0 == s.order(0));
    BOOST_TEST(e1 == s.order(1));
    BOOST_TEST(e0 != e1);
    auto sorted = e0;
    std::sort(sorted.begin(), sorted.end());
    BOOST_TEST(sorted == (std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6}));
    // resume at (1, 3): the same next examples
    Sampler r(7, 42);
    r.seek(1, 3);
    for (int i = 3; i < 7; ++i) BOOST_TEST(r.next() == e1[static_cast<std::size_t>(i)]);
    Sampler plain(4, 42, false);
    BOOST_TEST(plain.order(5) == (std::vector<std::size_t>{0, 1, 2, 3}));
    BOOST_CHECK_THROW(r.seek(0, 8), ArgumentError);
    BOOST_CHECK_THROW(Sampler(0, 1), ArgumentError);
}

BOOST_AUTO_TEST_SUITE_END()
