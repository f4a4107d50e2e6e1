// Tests for limarp/train/length_bins.hpp: bin boundaries, units, validation.
#include <boost/test/unit_test.hpp>

#include <string>

#include "limarp/train/length_bins.hpp"

using namespace limarp;
using namespace limarp::train;
using text::LengthTag;

BOOST_AUTO_TEST_SUITE(length_bins)

BOOST_AUTO_TEST_CASE(default_word_bins) {
    const LengthBins b;  // words: 10, 25, 50, 100, 150, 200, 300, 400, 500
    BOOST_TEST((b == LengthBins::defaults(LengthUnit::Words)));
    BOOST_TEST((b.tag_for(0) == LengthTag::micro));
    BOOST_TEST((b.tag_for(9) == LengthTag::micro));
    BOOST_TEST((b.tag_for(10) == LengthTag::tiny));
    BOOST_TEST((b.tag_for(24) == LengthTag::tiny));
    BOOST_TEST((b.tag_for(25) == LengthTag::short_));
    BOOST_TEST((b.tag_for(50) == LengthTag::medium));
    BOOST_TEST((b.tag_for(99) == LengthTag::medium));
    BOOST_TEST((b.tag_for(100) == LengthTag::long_));
    BOOST_TEST((b.tag_for(150) == LengthTag::massive));
    BOOST_TEST((b.tag_for(200) == LengthTag::huge));
    BOOST_TEST((b.tag_for(300) == LengthTag::enormous));
    BOOST_TEST((b.tag_for(400) == LengthTag::humongous));
    BOOST_TEST((b.tag_for(499) == LengthTag::humongous));
    BOOST_TEST((b.tag_for(500) == LengthTag::unlimited));
    BOOST_TEST((b.tag_for(100000) == LengthTag::unlimited));
    BOOST_TEST(b.range(LengthTag::medium).first == 50);
    BOOST_TEST(*b.range(LengthTag::medium).second == 100);
    BOOST_TEST(!b.range(LengthTag::unlimited).second.has_value());
    BOOST_TEST(b.describe().rfind("micro < 10 <= tiny < 25 <= short < 50", 0) == 0);
}

BOOST_AUTO_TEST_CASE(counting) {
    BOOST_TEST(count_words("") == 0);
    BOOST_TEST(count_words("  one  two\tthree\nfour\r\n") == 4);
    BOOST_TEST(count_words("*Aria looks up.* Oh!") == 4);
    BOOST_TEST(count_code_points("caf\xc3\xa9 \xe2\x98\x94") == 6);  // "café ☔"
    BOOST_TEST(measure_length("caf\xc3\xa9 \xe2\x98\x94", LengthUnit::Characters) == 6);
    BOOST_TEST(measure_length("a b c", LengthUnit::Words) == 3);
    BOOST_CHECK_THROW(measure_length("a", LengthUnit::Tokens), ArgumentError);
}

BOOST_AUTO_TEST_CASE(units_and_validation) {
    for (auto u : {LengthUnit::Words, LengthUnit::Characters, LengthUnit::Tokens}) {
        BOOST_TEST((parse_length_unit(to_string(u)) == u));
        BOOST_CHECK_NO_THROW(LengthBins::defaults(u).validate());
    }
    BOOST_CHECK_THROW(parse_length_unit("bytes"), ArgumentError);
    LengthBins b;
    b.upper[3] = b.upper[2];
    BOOST_CHECK_THROW(b.validate(), ArgumentError);
    b = LengthBins{};
    b.upper[0] = 0;
    BOOST_CHECK_THROW(b.validate(), ArgumentError);
    const auto c = LengthBins::defaults(LengthUnit::Characters);
    BOOST_TEST((c.tag_for(249) == LengthTag::short_));
    BOOST_TEST((c.tag_for(250) == LengthTag::medium));
}

BOOST_AUTO_TEST_SUITE_END()
