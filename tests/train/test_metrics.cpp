// Tests for limarp/train/metrics.hpp: CSV/JSONL contents, resume truncation and torn lines,
// the gnuplot PNG, and the error when gnuplot is missing.
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "limarp/train/metrics.hpp"

using namespace limarp;
using namespace limarp::train;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path p;
    TempDir() {
        p = fs::temp_directory_path() / ("limarp-train-metrics-" + std::to_string(::getpid()) + "-" +
                                         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
        fs::create_directories(p);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(p, ec);
    }
};

std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

MetricsRow row(std::int64_t step, double loss) {
    MetricsRow r;
    r.step = step;
    r.epoch = step / 10.0;
    r.loss = loss;
    r.lr = 2e-4;
    r.grad_norm = 0.5;
    r.tokens_per_s = 812.5;
    return r;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(metrics)

BOOST_AUTO_TEST_CASE(csv_and_jsonl_lines) {
    TempDir t;
    {
        auto log = MetricsLog::create(t.p / "run");
        log.append(row(1, 2.5));
        MetricsRow e;
        e.step = 2;
        e.eval_loss = 2.25;
        log.append(e);
        MetricsRow bad;
        bad.step = 3;
        bad.loss = NAN;
        log.append(bad);
        BOOST_TEST(log.rows().size() == 3u);
    }
    BOOST_TEST(slurp(t.p / "run/metrics.csv") ==
               "step,epoch,loss,eval_loss,lr,grad_norm,tokens_per_s\n"
               "1,0.1,2.5,,0.0002,0.5,812.5\n"
               "2,,,2.25,,,\n"
               "3,,nan,,,,\n");
    BOOST_TEST(slurp(t.p / "run/metrics.jsonl") ==
               "{\"step\":1,\"epoch\":0.1,\"loss\":2.5,\"lr\":0.0002,\"grad_norm\":0.5,\"tokens_per_s\":812.5}\n"
               "{\"step\":2,\"eval_loss\":2.25}\n"
               "{\"step\":3,\"loss\":null}\n");
    const auto rows = read_metrics_jsonl(t.p / "run/metrics.jsonl");
    BOOST_REQUIRE(rows.size() == 3u);
    BOOST_TEST((rows[0] == row(1, 2.5)));
    BOOST_TEST(!rows[1].loss.has_value());
    BOOST_TEST(*rows[1].eval_loss == 2.25);
    BOOST_TEST(std::isnan(*rows[2].loss));
    // A fresh create() replaces an old log.
    auto again = MetricsLog::create(t.p / "run");
    BOOST_TEST(slurp(t.p / "run/metrics.csv") == "step,epoch,loss,eval_loss,lr,grad_norm,tokens_per_s\n");
}

BOOST_AUTO_TEST_CASE(resume_drops_later_rows_and_a_torn_line) {
    TempDir t;
    {
        auto log = MetricsLog::create(t.p);
        for (int s = 1; s <= 5; ++s) log.append(row(s, 3.0 - 0.1 * s));
    }
    {
        std::ofstream f(t.p / "metrics.jsonl", std::ios::app);
        f << "{\"step\":6,\"lo";  // killed mid-line
    }
    BOOST_TEST(read_metrics_jsonl(t.p / "metrics.jsonl").size() == 5u);
    {
        auto log = MetricsLog::resume(t.p, 3);  // the checkpoint was at step 3
        BOOST_TEST(log.rows().size() == 3u);
        log.append(row(4, 1.0));
    }
    const auto rows = read_metrics_jsonl(t.p / "metrics.jsonl");
    BOOST_REQUIRE(rows.size() == 4u);
    BOOST_TEST(rows[3].step == 4);
    BOOST_TEST(*rows[3].loss == 1.0);
    const std::string csv = slurp(t.p / "metrics.csv");
    BOOST_TEST(csv.find("\n4,0.4,1,,0.0002,0.5,812.5\n") != std::string::npos);
    BOOST_TEST(csv.find("\n5,") == std::string::npos);
    auto fresh = MetricsLog::resume(t.p / "none", 10);  // no log yet: starts empty
    BOOST_TEST(fresh.rows().empty());
}

BOOST_AUTO_TEST_CASE(loss_plot_png) {
    TempDir t;
    std::vector<MetricsRow> rows;
    for (int s = 1; s <= 40; ++s) {
        MetricsRow r = row(s, 2.0 + 1.0 / s);
        if (s % 10 == 0) r.eval_loss = 2.1 + 1.0 / s;
        rows.push_back(r);
    }
    const fs::path png = t.p / "plots" / "loss.png";
    plot_loss_curves(png, rows);  // gnuplot-nox is installed by scripts/setup.sh
    BOOST_REQUIRE(fs::exists(png));
    const std::string bytes = slurp(png);
    BOOST_TEST(bytes.size() > 2000u);
    BOOST_TEST(bytes.substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
    // Width and height from the IHDR chunk.
    auto be32 = [&](std::size_t o) {
        return (static_cast<unsigned char>(bytes[o]) << 24) | (static_cast<unsigned char>(bytes[o + 1]) << 16) |
               (static_cast<unsigned char>(bytes[o + 2]) << 8) | static_cast<unsigned char>(bytes[o + 3]);
    };
    BOOST_TEST(be32(16) == 1280);
    BOOST_TEST(be32(20) == 480);
    for (const auto& e : fs::directory_iterator(t.p / "plots")) BOOST_TEST(e.path().filename() == "loss.png");
    // Train loss only: one panel.
    std::vector<MetricsRow> train_only(rows.begin(), rows.begin() + 5);
    for (auto& r : train_only) r.eval_loss.reset();
    PlotOptions small;
    small.width = 640;
    small.height = 400;
    plot_loss_curves(t.p / "train.png", train_only, small);
    BOOST_TEST(fs::file_size(t.p / "train.png") > 1000u);
    BOOST_CHECK_THROW(plot_loss_curves(t.p / "none.png", std::vector<MetricsRow>{}), ArgumentError);
}

BOOST_AUTO_TEST_CASE(missing_gnuplot_is_a_clear_error) {
    TempDir t;
    PlotOptions o;
    o.gnuplot = "/nonexistent/gnuplot";
    std::string msg;
    try {
        plot_loss_curves(t.p / "x.png", std::vector<MetricsRow>{row(1, 1.0)}, o);
    } catch (const IoError& e) {
        msg = e.what();
    }
    BOOST_TEST_INFO(msg);
    BOOST_TEST(msg.find("gnuplot-nox") != std::string::npos);
    BOOST_TEST(!fs::exists(t.p / "x.png"));
}

BOOST_AUTO_TEST_SUITE_END()
