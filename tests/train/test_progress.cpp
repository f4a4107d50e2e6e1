// Tests for limarp/train/progress.hpp with a fake clock: plain lines when not a terminal,
// in-place redraws with throttling on a terminal, rate and ETA.
#include <boost/test/unit_test.hpp>

#include <sstream>
#include <string>

#include "limarp/train/progress.hpp"

using namespace limarp::train;

BOOST_AUTO_TEST_SUITE(progress)

BOOST_AUTO_TEST_CASE(formatting) {
    BOOST_TEST(format_duration(0) == "00:00");
    BOOST_TEST(format_duration(61.4) == "01:01");
    BOOST_TEST(format_duration(3723) == "1:02:03");
    BOOST_TEST(format_duration(-1) == "--:--");
    BOOST_TEST(format_duration(NAN) == "--:--");
    BOOST_TEST(format_rate(812.4) == "812");
    BOOST_TEST(format_rate(12345) == "12.3k");
    BOOST_TEST(format_rate(1.05e6) == "1.05M");
}

BOOST_AUTO_TEST_CASE(plain_lines_when_not_a_terminal) {
    double now = 100.0;
    ProgressOptions o;
    o.tty = false;
    o.bar_width = 10;
    o.clock = [&] { return now; };
    std::ostringstream os;
    ProgressBar bar(100, o, os);
    now = 110.0;
    bar.update(25, 5000, "loss 1.234");
    now = 120.0;
    bar.update(50, 10000);
    bar.finish();
    BOOST_TEST(os.str() ==
               "train  25% [##--------] 25/100 | loss 1.234 | 500 tok/s | 00:10 < 00:30\n"
               "train  50% [#####-----] 50/100 | 500 tok/s | 00:20 < 00:20\n");
    BOOST_TEST(!bar.is_tty());
}

BOOST_AUTO_TEST_CASE(redraws_in_place_on_a_terminal) {
    double now = 0.0;
    ProgressOptions o;
    o.tty = true;
    o.bar_width = 4;
    o.label = "eval";
    o.min_interval_s = 1.0;
    o.clock = [&] { return now; };
    std::ostringstream os;
    ProgressBar bar(4, o, os, /*start=*/2);  // resumed at step 2
    now = 0.5;
    bar.update(3, 100);  // first draw
    now = 0.7;
    bar.update(3, 150);  // throttled
    now = 2.0;
    bar.update(4, 400);  // last step: always drawn
    bar.finish();
    bar.finish();  // idempotent
    const std::string s = os.str();
    BOOST_TEST(s ==
               "\reval  75% [###-] 3/4 | 200 tok/s | 00:01 < 00:01\x1b[K"
               "\reval 100% [####] 4/4 | 200 tok/s | 00:02 < 00:00\x1b[K\n");
}

BOOST_AUTO_TEST_SUITE_END()
