// Tests for limarp/train/lr_schedule.hpp: the schedules against values computed by hand from
// transformers' lr_lambda formulas, and the Trainer's count of optimizer updates.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "limarp/train/lr_schedule.hpp"

using namespace limarp;
using namespace limarp::train;

BOOST_AUTO_TEST_SUITE(lr_schedule)

BOOST_AUTO_TEST_CASE(names_round_trip) {
    for (auto k : {ScheduleKind::Constant, ScheduleKind::ConstantWithWarmup, ScheduleKind::Linear, ScheduleKind::Cosine})
        BOOST_TEST((parse_schedule_kind(to_string(k)) == k));
    BOOST_CHECK_THROW(parse_schedule_kind("cosine_with_restarts"), ArgumentError);
}

BOOST_AUTO_TEST_CASE(constant_ignores_warmup_like_transformers) {
    const LrSchedule s{ScheduleKind::Constant, 1e-3, 10, 100};
    BOOST_TEST(s.lr(0) == 1e-3);
    BOOST_TEST(s.lr(5) == 1e-3);
    BOOST_TEST(s.lr(1000) == 1e-3);
}

BOOST_AUTO_TEST_CASE(constant_with_warmup) {
    const LrSchedule s{ScheduleKind::ConstantWithWarmup, 2e-4, 4, 100};
    BOOST_TEST(s.factor(0) == 0.0);
    BOOST_TEST(s.factor(1) == 0.25);
    BOOST_TEST(s.factor(3) == 0.75);
    BOOST_TEST(s.factor(4) == 1.0);
    BOOST_TEST(s.factor(99) == 1.0);
    BOOST_TEST(s.lr(2) == 2e-4 * 0.5);
}

BOOST_AUTO_TEST_CASE(linear_with_warmup) {
    // W = 10, N = 100: warmup s/10, then (100 - s) / 90.
    const LrSchedule s{ScheduleKind::Linear, 3e-4, 10, 100};
    BOOST_TEST(s.factor(0) == 0.0);
    BOOST_TEST(s.factor(5) == 0.5);
    BOOST_TEST(s.factor(10) == 1.0);
    BOOST_TEST(s.factor(55) == 0.5);
    BOOST_TEST(s.factor(91) == 0.1, boost::test_tools::tolerance(1e-15));
    BOOST_TEST(s.factor(100) == 0.0);
    BOOST_TEST(s.factor(120) == 0.0);  // clamped at 0
    BOOST_TEST(s.lr(55) == 3e-4 * 0.5);
}

BOOST_AUTO_TEST_CASE(cosine_with_warmup) {
    // W = 10, N = 110: progress = (s - 10) / 100; factor = 0.5 (1 + cos(pi * progress)).
    const LrSchedule s{ScheduleKind::Cosine, 2e-4, 10, 110};
    BOOST_TEST(s.factor(0) == 0.0);
    BOOST_TEST(s.factor(3) == 0.3, boost::test_tools::tolerance(1e-15));
    BOOST_TEST(s.factor(10) == 1.0);
    BOOST_TEST(s.factor(60) == 0.5, boost::test_tools::tolerance(1e-15));   // cos(pi/2) = 0
    BOOST_TEST(s.factor(35) == 0.5 * (1 + std::sqrt(0.5)), boost::test_tools::tolerance(1e-15));  // cos(pi/4)
    BOOST_TEST(s.factor(85) == 0.5 * (1 - std::sqrt(0.5)), boost::test_tools::tolerance(1e-14));  // cos(3pi/4)
    BOOST_TEST(s.factor(110) == 0.0);
    BOOST_TEST(s.factor(200) >= 0.0);  // max(0, ...) past the end (cos goes back up for s > N)
    // Bitwise the Python expression: max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))).
    const double progress = (37.0 - 10.0) / 100.0;
    BOOST_TEST(s.factor(37) == std::max(0.0, 0.5 * (1.0 + std::cos(3.141592653589793 * 0.5 * 2.0 * progress))));
}

BOOST_AUTO_TEST_CASE(no_warmup_starts_at_peak) {
    const LrSchedule s{ScheduleKind::Cosine, 1.0, 0, 4};
    BOOST_TEST(s.factor(0) == 1.0);
    BOOST_TEST(s.factor(2) == 0.5, boost::test_tools::tolerance(1e-15));
    BOOST_TEST(s.factor(4) == 0.0, boost::test_tools::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE(validation) {
    BOOST_CHECK_THROW((LrSchedule{ScheduleKind::Cosine, 1e-3, 0, 0}.validate()), ArgumentError);
    BOOST_CHECK_THROW((LrSchedule{ScheduleKind::Linear, 1e-3, -1, 10}.validate()), ArgumentError);
    BOOST_CHECK_NO_THROW((LrSchedule{ScheduleKind::Constant, 1e-3, 0, 0}.validate()));
}

BOOST_AUTO_TEST_CASE(trainer_step_count) {
    // 1860 conversations, micro batch 1, accumulation 4, 2 epochs: 465 updates per epoch.
    BOOST_TEST(total_training_steps(1860, 1, 4, 2) == 930);
    // ceil(10 / 3) = 4 batches, 4 / 2 = 2 updates per epoch, 3 epochs.
    BOOST_TEST(total_training_steps(10, 3, 2, 3) == 6);
    // fewer batches than the accumulation: still one update per epoch.
    BOOST_TEST(total_training_steps(3, 1, 8, 2) == 2);
    BOOST_TEST(total_training_steps(3, 1, 8, 2, 17) == 17);  // max_steps wins
    BOOST_CHECK_THROW(total_training_steps(0, 1, 1, 1), ArgumentError);
}

BOOST_AUTO_TEST_SUITE_END()
