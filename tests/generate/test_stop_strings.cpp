// Tests for limarp/generate/stop_strings.hpp: matches across piece boundaries, held-back text is
// never emitted, the emitted text equals the input up to the stop string for every split.
#include <boost/test/unit_test.hpp>

#include <random>
#include <string>
#include <vector>

#include "limarp/generate/stop_strings.hpp"

using namespace limarp;
using namespace limarp::generate;

namespace {
const std::vector<std::string> kStops = {"### Input", "\nBob:", "<|im_end|>", "<|im_start|>"};

// Feeds `pieces`, checks that nothing emitted is later retracted; returns emitted text.
std::string run(StopStringMatcher& m, const std::vector<std::string>& pieces) {
    std::string out;
    for (const auto& p : pieces) {
        out += m.push(p);
        if (m.stopped()) return out;
    }
    return out + m.flush();
}
}  // namespace

BOOST_AUTO_TEST_SUITE(stop_strings)

BOOST_AUTO_TEST_CASE(match_across_token_boundaries) {
    StopStringMatcher m(kStops);
    BOOST_CHECK_EQUAL(m.push(" Hello"), " Hello");
    BOOST_CHECK_EQUAL(m.push(" there."), " there.");
    BOOST_CHECK_EQUAL(m.push("\n"), "");  // could start "\nBob:"
    BOOST_CHECK_EQUAL(m.held(), "\n");
    BOOST_CHECK_EQUAL(m.push("\n"), "\n");  // "\n\n": the first one cannot start a stop string any more
    BOOST_CHECK_EQUAL(m.push("##"), "\n");  // "##" could start "### Input": held
    BOOST_CHECK_EQUAL(m.held(), "##");
    BOOST_CHECK_EQUAL(m.push("# In"), "");  // "### In" held
    BOOST_CHECK(!m.stopped());
    BOOST_CHECK_EQUAL(m.push("put:\nBob: hi"), "");
    BOOST_CHECK(m.stopped());
    BOOST_CHECK_EQUAL(m.matched(), "### Input");
    BOOST_CHECK_EQUAL(m.push("more"), "");  // after a stop nothing comes out
    BOOST_CHECK_EQUAL(m.flush(), "");
}

BOOST_AUTO_TEST_CASE(held_text_released_when_it_diverges_or_at_the_end) {
    StopStringMatcher m(kStops);
    BOOST_CHECK_EQUAL(m.push("a <|im_"), "a ");
    BOOST_CHECK_EQUAL(m.push("happy|>"), "<|im_happy|>");
    BOOST_CHECK_EQUAL(m.push("x\nBo"), "x");
    BOOST_CHECK_EQUAL(m.flush(), "\nBo");  // end of generation: it never became a stop string
    BOOST_CHECK(!m.stopped());
}

BOOST_AUTO_TEST_CASE(stop_inside_one_piece_and_user_name) {
    StopStringMatcher m(kStops);
    BOOST_CHECK_EQUAL(m.push("She smiles.\nBob: I"), "She smiles.");
    BOOST_CHECK_EQUAL(m.matched(), "\nBob:");
    StopStringMatcher e(kStops);
    BOOST_CHECK_EQUAL(e.push("<|im_end|>"), "");
    BOOST_CHECK(e.stopped());
    // reset for a new stream
    e.reset();
    BOOST_CHECK(!e.stopped());
    BOOST_CHECK_EQUAL(e.push("ok"), "ok");
}

BOOST_AUTO_TEST_CASE(every_split_gives_the_prefix_before_the_stop) {
    const std::string text =
        "He waits.\n\"Fine,\" he says. \xF0\x9F\x99\x82 <|im_sta\nBob... ### Inp ###\n### Input:\nBob: no";
    const std::string want = text.substr(0, text.find("### Input"));
    std::mt19937 rng(5);
    for (int trial = 0; trial < 300; ++trial) {
        std::vector<std::string> pieces;
        std::size_t i = 0;
        while (i < text.size()) {
            const std::size_t n = 1 + rng() % 6;
            pieces.push_back(text.substr(i, n));
            i += n;
        }
        StopStringMatcher m(kStops);
        std::string out;
        for (const auto& p : pieces) {
            out += m.push(p);
            // never emitted: any part of the stop string
            BOOST_REQUIRE(want.starts_with(out));
            if (m.stopped()) break;
        }
        BOOST_CHECK(m.stopped());
        BOOST_CHECK_EQUAL(out, want);
    }
    // without stop strings text passes through unchanged
    StopStringMatcher none;
    BOOST_CHECK_EQUAL(run(none, {"a", "### Input", "b"}), "a### Inputb");
}

BOOST_AUTO_TEST_CASE(empty_stop_string_rejected) { BOOST_CHECK_THROW(StopStringMatcher({"ok", ""}), ArgumentError); }

BOOST_AUTO_TEST_SUITE_END()
