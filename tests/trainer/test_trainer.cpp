// End-to-end tests of limarp-train (examples/train/main.cpp): the swa_long fixture widened to
// the 32,002-id OpenOrca vocabulary (tests/generate/wide_vocab.hpp), the real Mistral tokenizer
// (LIMARP_CACHE_DIR/mistral-tokenizer.model, from scripts/setup.sh) and tests/train/data.
// Checks: the loss decreases; a checkpoint is a PEFT adapter that io::PeftAdapter opens and
// that limarp-score --adapter scores to the logged eval loss; --resume after step k gives the
// same metrics and the same final adapter, bit for bit, as an uninterrupted run; SIGINT stops a
// run with a checkpoint of the current step and exit code 130; a malformed
// dataset or config stops the program with exit code 1 before anything is written.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <csignal>
#include <chrono>
#include <thread>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "generate/wide_vocab.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/text/tokenizer.hpp"
#include "limarp/train/checkpoint.hpp"
#include "limarp/train/dataset.hpp"
#include "limarp/train/metrics.hpp"
#include "limarp/train/train_config.hpp"

namespace fs = std::filesystem;
using namespace limarp;

namespace {

fs::path bin(const char* name) { return fs::path(LIMARP_BIN_DIR) / name; }
fs::path tokenizer_path() { return fs::path(LIMARP_CACHE_DIR) / "mistral-tokenizer.model"; }
fs::path train_data() { return fs::path(LIMARP_SOURCE_DIR) / "tests" / "train" / "data"; }

/// A scratch folder with the widened model and a config; removed at the end.
struct Work {
    fs::path dir;
    fs::path model;
    fs::path config;
    bool ok = false;
    Work() {
        dir = fs::temp_directory_path() / ("limarp_trainer_" + std::to_string(::getpid()));
        fs::remove_all(dir);
        fs::create_directories(dir);
        if (!fs::exists(bin("limarp-train")) || !fs::exists(tokenizer_path())) return;
        model = dir / "model";
        test::write_wide_vocab_model(fs::path(LIMARP_FIXTURES) / "swa_long", model);
        config = dir / "config.yaml";
        std::ofstream(config) << "base_model: " << model.string() << "\n"
                              << "datasets:\n"
                              << "  - path: " << (train_data() / "limarp").string() << "\n"
                              << "    type: limarp\n"
                              << "  - path: " << (train_data() / "convs.jsonl").string() << "\n"
                              << "load_in_8bit: false\n"
                              << "lora_r: 4\nlora_alpha: 8\nlora_dropout: 0.05\n"
                              << "sequence_len: 512\nval_set_size: 1\n"
                              << "learning_rate: 0.01\nlr_scheduler: cosine\nwarmup_steps: 1\n"
                              << "num_epochs: 4\nmicro_batch_size: 1\ngradient_accumulation_steps: 1\n"
                              << "max_grad_norm: 1.0\nweight_decay: 0.01\n"
                              << "save_steps: 1\nseed: 3\n";
        ok = true;
    }
    ~Work() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
};

Work& work() {
    static Work w;
    return w;
}

/// Runs a shell command; returns its exit status, stdout in `out` (stderr to `err_file`).
int sh(const std::string& cmd, std::string* out = nullptr) {
    const fs::path o = work().dir / "cmd.out", e = work().dir / "cmd.err";
    const int rc = std::system((cmd + " > " + o.string() + " 2> " + e.string()).c_str());
    std::ifstream fo(o), fe(e);
    std::stringstream so, se;
    so << fo.rdbuf();
    se << fe.rdbuf();
    if (out) *out = so.str();
    BOOST_TEST_MESSAGE("$ " << cmd << "\n" << so.str() << se.str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string train_cmd(const fs::path& out_dir, const std::string& extra = "") {
    return bin("limarp-train").string() + " " + work().config.string() + " --tokenizer " + tokenizer_path().string() +
           " --threads 2 --quiet output_dir=" + out_dir.string() + " " + extra;
}

#define REQUIRE_SETUP()                                                                               \
    do {                                                                                              \
        if (!work().ok) {                                                                             \
            BOOST_TEST_MESSAGE("skipped: limarp-train not built or " << tokenizer_path() << " missing"); \
            return;                                                                                   \
        }                                                                                             \
    } while (0)

/// The uninterrupted reference run (made once).
const std::vector<train::MetricsRow>& reference_run() {
    static std::vector<train::MetricsRow> rows = [] {
        const fs::path out = work().dir / "full";
        BOOST_REQUIRE_EQUAL(sh(train_cmd(out)), 0);
        return train::read_metrics_jsonl(out / "metrics.jsonl");
    }();
    return rows;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(trainer)

BOOST_AUTO_TEST_CASE(loss_decreases_and_outputs_exist) {
    REQUIRE_SETUP();
    const auto& rows = reference_run();
    BOOST_REQUIRE_EQUAL(rows.size(), 12u);  // 3 train examples x 4 epochs, one update each
    const fs::path out = work().dir / "full";
    for (const char* f : {"config.yaml", "metrics.csv", "metrics.jsonl", "adapter/adapter_config.json",
                          "adapter/adapter_model.safetensors", "checkpoint-12/training_state.safetensors"})
        BOOST_CHECK_MESSAGE(fs::exists(out / f), "missing " << f);
    // Train loss: mean of the last epoch below that of the first; eval loss falls.
    double first = 0, last = 0;
    for (int i = 0; i < 3; ++i) first += *rows[static_cast<std::size_t>(i)].loss, last += *rows[9 + static_cast<std::size_t>(i)].loss;
    BOOST_TEST_MESSAGE("train loss: first epoch " << first / 3 << ", last epoch " << last / 3);
    BOOST_CHECK_LT(last, first);
    std::vector<double> evals;
    for (const auto& r : rows)
        if (r.eval_loss) evals.push_back(*r.eval_loss);
    BOOST_REQUIRE_EQUAL(evals.size(), 4u);  // at each epoch end
    BOOST_CHECK_LT(evals.back(), evals.front());
    // Learning rate: warmup from 0, then cosine decay.
    BOOST_CHECK_EQUAL(*rows[0].lr, 0.0);
    BOOST_CHECK_CLOSE(*rows[1].lr, 0.01, 1e-9);
    BOOST_CHECK_LT(*rows[11].lr, *rows[5].lr);
    for (const auto& r : rows) BOOST_CHECK(r.grad_norm && std::isfinite(*r.grad_norm));
    if (sh("command -v gnuplot") == 0) BOOST_CHECK(fs::exists(out / "loss.png"));
}

BOOST_AUTO_TEST_CASE(checkpoint_is_a_peft_adapter_scored_like_the_eval_loss) {
    REQUIRE_SETUP();
    const auto& rows = reference_run();
    const fs::path ck = work().dir / "full" / "checkpoint-12";
    const auto a = io::PeftAdapter::open(ck);
    BOOST_CHECK_EQUAL(a.modules_in_file().size(), 14u);  // 2 layers x 7 projections
    // The eval example's ids, rebuilt as the trainer does.
    train::TrainConfig cfg = train::load_train_config(work().config);
    const text::Tokenizer tok = text::Tokenizer::from_sentencepiece(tokenizer_path());
    const auto data = train::Dataset::load(cfg.datasets, tok, cfg.dataset_options());
    BOOST_REQUIRE_EQUAL(data.eval().size(), 1u);
    std::string ids;
    for (int id : data.eval()[0].tokens) ids += (ids.empty() ? "" : ",") + std::to_string(id);
    if (!fs::exists(bin("limarp-score"))) {
        BOOST_TEST_MESSAGE("skipped the score check: limarp-score not built");
        return;
    }
    std::string out;
    BOOST_REQUIRE_EQUAL(sh(bin("limarp-score").string() + " --quant none --threads 2 --model " + work().model.string() +
                               " --adapter " + ck.string() + " --ids " + ids,
                           &out),
                        0);
    const double scored = nlohmann::json::parse(out).at("loss").get<double>();
    BOOST_TEST_MESSAGE("limarp-score --adapter checkpoint-12: " << scored << ", logged eval loss " << *rows.back().eval_loss);
    BOOST_CHECK_LE(std::fabs(scored - *rows.back().eval_loss), 1e-4);
    // The final adapter equals the last checkpoint's factors.
    const auto fin = train::read_lora_parameters(work().dir / "full" / "adapter");
    const auto cks = train::read_lora_parameters(ck);
    BOOST_REQUIRE_EQUAL(fin.size(), cks.size());
    for (std::size_t i = 0; i < fin.size(); ++i)
        BOOST_CHECK(std::equal(fin[i].B.data(), fin[i].B.data() + fin[i].B.size(), cks[i].B.data()));
}

BOOST_AUTO_TEST_CASE(trains_on_an_int8_base) {
    // The seed's recipe: LoRA over a frozen int8 base (load_in_8bit). The eval loss falls and the
    // final adapter, scored by limarp-score on the same int8 base, gives the logged eval loss.
    REQUIRE_SETUP();
    const fs::path out = work().dir / "int8";
    BOOST_REQUIRE_EQUAL(sh(train_cmd(out, "--quant int8 num_epochs=2 save_steps=0")), 0);
    const auto rows = train::read_metrics_jsonl(out / "metrics.jsonl");
    std::vector<double> evals;
    for (const auto& r : rows)
        if (r.eval_loss) evals.push_back(*r.eval_loss);
    BOOST_REQUIRE_EQUAL(evals.size(), 2u);
    BOOST_TEST_MESSAGE("int8 base: eval loss " << evals.front() << " -> " << evals.back());
    BOOST_CHECK_LT(evals.back(), evals.front());
    train::TrainConfig cfg = train::load_train_config(work().config);
    const text::Tokenizer tok = text::Tokenizer::from_sentencepiece(tokenizer_path());
    const auto data = train::Dataset::load(cfg.datasets, tok, cfg.dataset_options());
    std::string ids;
    for (int id : data.eval()[0].tokens) ids += (ids.empty() ? "" : ",") + std::to_string(id);
    if (!fs::exists(bin("limarp-score"))) return;
    std::string score_out;
    // --kv-cache f32: the trainer's eval forward keeps every key in f32 (auto would read keys of
    // earlier chunks back as bf16 once an example is longer than --chunk)
    BOOST_REQUIRE_EQUAL(sh(bin("limarp-score").string() + " --quant int8 --kv-cache f32 --threads 2 --model " +
                               work().model.string() +
                               " --adapter " + (out / "adapter").string() + " --ids " + ids,
                           &score_out),
                        0);
    const double scored = nlohmann::json::parse(score_out).at("loss").get<double>();
    BOOST_CHECK_LE(std::fabs(scored - evals.back()), 1e-4);
}

BOOST_AUTO_TEST_CASE(resume_reproduces_the_uninterrupted_run) {
    REQUIRE_SETUP();
    const auto& rows = reference_run();
    // Interrupted after step 5: the run's folder as it was then (checkpoints 1..5 and the log).
    const fs::path full = work().dir / "full", cut = work().dir / "resumed";
    fs::copy(full, cut, fs::copy_options::recursive);
    for (int s = 6; s <= 12; ++s) fs::remove_all(train::checkpoint_dir(cut, s));
    fs::remove_all(cut / "adapter");
    BOOST_REQUIRE_EQUAL(sh(train_cmd(cut, "--resume")), 0);
    const auto got = train::read_metrics_jsonl(cut / "metrics.jsonl");
    BOOST_REQUIRE_EQUAL(got.size(), rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
        BOOST_CHECK_EQUAL(got[i].step, rows[i].step);
        BOOST_CHECK_EQUAL(*got[i].loss, *rows[i].loss);  // bit for bit
        BOOST_CHECK_EQUAL(*got[i].lr, *rows[i].lr);
        BOOST_CHECK_EQUAL(*got[i].grad_norm, *rows[i].grad_norm);
        BOOST_CHECK_EQUAL(got[i].eval_loss.has_value(), rows[i].eval_loss.has_value());
        if (got[i].eval_loss && rows[i].eval_loss) BOOST_CHECK_EQUAL(*got[i].eval_loss, *rows[i].eval_loss);
    }
    const auto a = train::read_lora_parameters(full / "adapter"), b = train::read_lora_parameters(cut / "adapter");
    BOOST_REQUIRE_EQUAL(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        BOOST_CHECK(std::equal(a[i].A.data(), a[i].A.data() + a[i].A.size(), b[i].A.data()));
        BOOST_CHECK(std::equal(a[i].B.data(), a[i].B.data() + a[i].B.size(), b[i].B.data()));
    }
}

BOOST_AUTO_TEST_CASE(sigint_saves_a_checkpoint_and_exits_130) {
    REQUIRE_SETUP();
    const fs::path out = work().dir / "interrupted";
    const std::string cmd = "exec " + train_cmd(out, "num_epochs=200 --no-plot") + " > " + (work().dir / "int.out").string() +
                            " 2> " + (work().dir / "int.err").string();
    pid_t pid = 0;
    const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
    BOOST_REQUIRE_EQUAL(::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
    // Wait for the second checkpoint, then interrupt.
    const auto t0 = std::chrono::steady_clock::now();
    while (!fs::exists(train::checkpoint_dir(out, 2)) && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ::kill(pid, SIGINT);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {}
    BOOST_REQUIRE(WIFEXITED(status));
    BOOST_CHECK_EQUAL(WEXITSTATUS(status), 130);
    std::ifstream f(work().dir / "int.out");
    std::string line;
    std::getline(f, line);
    BOOST_TEST_MESSAGE("interrupted run: " << line);
    const auto j = nlohmann::json::parse(line);
    BOOST_CHECK(j.at("interrupted").get<bool>());
    const std::int64_t step = j.at("steps").get<std::int64_t>();
    BOOST_CHECK_GE(step, 2);
    BOOST_CHECK_LT(step, 600);
    // The newest checkpoint is the one of the interrupted step; the log ends there.
    const auto latest = train::latest_checkpoint(out);
    BOOST_REQUIRE(latest.has_value());
    BOOST_CHECK_EQUAL(latest->filename().string(), train::checkpoint_dir(out, step).filename().string());
    const auto rows = train::read_metrics_jsonl(out / "metrics.jsonl");
    BOOST_REQUIRE(!rows.empty());
    BOOST_CHECK_EQUAL(rows.back().step, step);
}

BOOST_AUTO_TEST_CASE(bad_input_exits_1_before_training) {
    REQUIRE_SETUP();
    const fs::path out = work().dir / "bad";
    // A malformed dataset: nothing is written.
    BOOST_CHECK_EQUAL(sh(train_cmd(out, "'datasets=[{path: " + (train_data() / "bad").string() + "}]'")), 1);
    BOOST_CHECK(!fs::exists(out));
    // An unknown key, a stray argument, an invalid value.
    BOOST_CHECK_EQUAL(sh(train_cmd(out, "lora_rr=3")), 1);
    BOOST_CHECK_EQUAL(sh(train_cmd(out, "bogus")), 1);
    BOOST_CHECK_EQUAL(sh(train_cmd(out, "lora_r=0")), 1);
    BOOST_CHECK_EQUAL(sh(train_cmd(out, "--quant bogus")), 1);
    BOOST_CHECK(!fs::exists(out));
    std::string help;
    BOOST_CHECK_EQUAL(sh(bin("limarp-train").string() + " --help", &help), 0);
    BOOST_CHECK(help.find("gradient_accumulation_steps") != std::string::npos);
    BOOST_CHECK(help.find("--resume") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
