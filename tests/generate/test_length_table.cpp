// End-to-end test of limarp-length-table (examples/length_table/main.cpp) on the swa_long
// fixture widened to the 32,002-id OpenOrca vocabulary (wide_vocab.hpp) with its all7 adapter
// and the real Mistral tokenizer (LIMARP_CACHE_DIR/mistral-tokenizer.model, scripts/setup.sh):
// the table and the JSON list every length tag in order with lengths <= --max-tokens, the
// transcript has one reply per tag, and bad flags give a one-line error with exit code 1.
// Skipped when the program or the tokenizer is missing.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "generate/wide_vocab.hpp"
#include "limarp/text/alpaca_prompt.hpp"

namespace fs = std::filesystem;
using namespace limarp;

namespace {

fs::path length_table_bin() { return fs::path(LIMARP_BIN_DIR) / "limarp-length-table"; }
fs::path lt_tokenizer() { return fs::path(LIMARP_CACHE_DIR) / "mistral-tokenizer.model"; }

/// A scratch folder with the widened model; removed at the end.
struct LengthTableWork {
    fs::path dir, model;
    bool ok = false;
    LengthTableWork() {
        dir = fs::temp_directory_path() / ("limarp_length_table_" + std::to_string(::getpid()));
        fs::remove_all(dir);
        if (!fs::exists(length_table_bin()) || !fs::exists(lt_tokenizer())) return;
        fs::create_directories(dir);
        model = dir / "model";
        test::write_wide_vocab_model(fs::path(LIMARP_FIXTURES) / "swa_long", model);
        ok = true;
    }
    ~LengthTableWork() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
};

LengthTableWork& lt_work() {
    static LengthTableWork w;
    return w;
}

std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

/// Runs limarp-length-table with `args`; returns the exit code, stdout and stderr.
int run_length_table(const std::string& args, std::string& out, std::string& err) {
    const fs::path o = lt_work().dir / "out.txt", e = lt_work().dir / "err.txt";
    const std::string cmd = length_table_bin().string() + " --model " + lt_work().model.string() + " --tokenizer " +
                            lt_tokenizer().string() + " --threads 2 " + args;
    const int rc = std::system((cmd + " > " + o.string() + " 2> " + e.string()).c_str());
    out = slurp(o);
    err = slurp(e);
    BOOST_TEST_MESSAGE("$ " << cmd << "\n" << out << err);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

#define LENGTH_TABLE_REQUIRE_SETUP()                                                                          \
    do {                                                                                                      \
        if (!lt_work().ok) {                                                                                  \
            BOOST_TEST_MESSAGE("skipped: limarp-length-table not built or " << lt_tokenizer() << " missing"); \
            return;                                                                                           \
        }                                                                                                     \
    } while (0)

}  // namespace

BOOST_AUTO_TEST_SUITE(length_table)

BOOST_AUTO_TEST_CASE(every_tag_in_table_json_and_transcript) {
    LENGTH_TABLE_REQUIRE_SETUP();
    const fs::path json = lt_work().dir / "t.json", transcript = lt_work().dir / "t.txt";
    const std::string adapter = (fs::path(LIMARP_FIXTURES) / "swa_long" / "adapters" / "all7").string();
    std::string out, err;
    BOOST_REQUIRE_EQUAL(run_length_table("--adapter " + adapter + " --samples 2 --max-tokens 8 --json " +
                                             json.string() + " --transcript " + transcript.string(),
                                         out, err),
                        0);
    // stdout: the markdown table, one row per tag in the enum's order, then the speed line.
    BOOST_CHECK(out.find("| length tag | mean | median | min | max | samples |") != std::string::npos);
    BOOST_CHECK(out.find("tok/s") != std::string::npos);
    std::size_t at = 0;
    for (text::LengthTag t : text::kLengthTags) {
        const std::string row = "| " + std::string(text::to_string(t)) + " | ";
        const std::size_t p = out.find(row, at);
        BOOST_CHECK_MESSAGE(p != std::string::npos, "no row (in order) for " << text::to_string(t));
        if (p != std::string::npos) at = p;
    }
    // stderr: one progress line per reply.
    std::size_t lines = 0;
    for (char c : err) lines += c == '\n';
    BOOST_CHECK_EQUAL(lines, text::kLengthTags.size() * 2);

    const auto j = nlohmann::json::parse(slurp(json));
    BOOST_CHECK_EQUAL(j.at("samples").get<int>(), 2);
    BOOST_CHECK_EQUAL(j.at("max_tokens").get<int>(), 8);
    const auto& tags = j.at("tags");
    BOOST_REQUIRE_EQUAL(tags.size(), text::kLengthTags.size());
    const std::string tr = slurp(transcript);
    BOOST_CHECK(tr.find("### Input:\nIshmael: What do you see out there?") != std::string::npos);
    for (std::size_t i = 0; i < tags.size(); ++i) {
        const auto& t = tags[i];
        const std::string name(text::to_string(text::kLengthTags[i]));
        BOOST_CHECK_EQUAL(t.at("tag").get<std::string>(), name);
        const auto lengths = t.at("lengths").get<std::vector<std::int64_t>>();
        BOOST_REQUIRE_EQUAL(lengths.size(), 2u);
        for (auto n : lengths) {
            BOOST_CHECK_GE(n, 0);
            BOOST_CHECK_LE(n, 8);
        }
        BOOST_CHECK_LE(t.at("min").get<std::int64_t>(), t.at("mean").get<double>());
        BOOST_CHECK_LE(t.at("mean").get<double>(), t.at("max").get<std::int64_t>());
        // two samples: the median is their mean
        BOOST_CHECK_LE(std::fabs(t.at("median").get<double>() - 0.5 * static_cast<double>(lengths[0] + lengths[1])), 1e-9);
        BOOST_CHECK_EQUAL(t.at("eos").get<int>() + t.at("stop_string").get<int>() + t.at("max_tokens_cut").get<int>(),
                          2);
        BOOST_CHECK_EQUAL(t.at("stopped").get<int>(), t.at("eos").get<int>() + t.at("stop_string").get<int>());
        BOOST_CHECK_MESSAGE(tr.find("### Response: (length = " + name + ")\nAhab:") != std::string::npos,
                            "no reply for " << name << " in the transcript");
    }
}

BOOST_AUTO_TEST_CASE(stop_strings_and_lengths_restriction) {
    // --stop e ends most replies of the random model early (the stop-string path of the length
    // count); --lengths picks the rows, none = no tag.
    LENGTH_TABLE_REQUIRE_SETUP();
    const fs::path json = lt_work().dir / "s.json";
    std::string out, err;
    BOOST_REQUIRE_EQUAL(
        run_length_table("--samples 3 --max-tokens 8 --stop e --lengths short,none --json " + json.string(), out, err),
        0);
    BOOST_CHECK(out.find("| short | ") != std::string::npos);
    BOOST_CHECK(out.find("| none | ") != std::string::npos);
    BOOST_CHECK(out.find("| medium | ") == std::string::npos);
    const auto j = nlohmann::json::parse(slurp(json));
    BOOST_REQUIRE_EQUAL(j.at("tags").size(), 2u);
    int stopped = 0;
    for (const auto& t : j.at("tags")) {
        const auto lengths = t.at("lengths").get<std::vector<std::int64_t>>();
        const auto reasons = t.at("stop_reasons").get<std::vector<std::string>>();
        BOOST_REQUIRE_EQUAL(lengths.size(), 3u);
        auto sorted = lengths;  // three samples: the median is the middle one
        std::sort(sorted.begin(), sorted.end());
        BOOST_CHECK_EQUAL(t.at("median").get<double>(), static_cast<double>(sorted[1]));
        for (std::size_t i = 0; i < lengths.size(); ++i) {
            BOOST_CHECK_LE(lengths[i], 8);
            if (reasons[i] == "stop_string") ++stopped;
        }
    }
    BOOST_CHECK_GT(stopped, 0);
}

BOOST_AUTO_TEST_CASE(bad_flags_give_one_line_errors) {
    LENGTH_TABLE_REQUIRE_SETUP();
    std::string out, err;
    BOOST_CHECK_EQUAL(run_length_table("--lengths tiny,gigantic", out, err), 1);
    BOOST_CHECK(err.find("gigantic") != std::string::npos);
    BOOST_CHECK_EQUAL(std::count(err.begin(), err.end(), '\n'), 1);
    BOOST_CHECK_EQUAL(run_length_table("--top-p 0", out, err), 1);
    BOOST_CHECK(err.find("top_p") != std::string::npos);
    BOOST_CHECK_EQUAL(run_length_table("--kv-cache f16", out, err), 1);
    BOOST_CHECK(err.find("--kv-cache must be auto, f32 or bf16") != std::string::npos);
    BOOST_CHECK_EQUAL(std::count(err.begin(), err.end(), '\n'), 1);
}

BOOST_AUTO_TEST_CASE(bf16_cache_runs) {
    // --kv-cache bf16 on a --quant none model (auto would pick f32 there); the prompt alone
    // wraps the fixture's 16-key window, so the reply reads keys back from the bf16 ring
    LENGTH_TABLE_REQUIRE_SETUP();
    std::string out, err;
    BOOST_CHECK_EQUAL(run_length_table("--kv-cache bf16 --samples 1 --max-tokens 80 --lengths short", out, err), 0);
    BOOST_CHECK(out.find("| short |") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
