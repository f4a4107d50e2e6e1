// Tests for limarp/train/checkpoint.hpp: the PEFT adapter folder read back by io::PeftAdapter
// (same tensors, config fields PEFT needs), optimizer/run state round trip and a resumed run
// that continues bit for bit, crash safety (leftovers of a killed write, a throwing write, a
// process killed at random moments while writing), latest/prune of checkpoint-N folders.
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/io/peft_adapter.hpp"
#include "limarp/train/checkpoint.hpp"

using namespace limarp;
using namespace limarp::train;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path p;
    TempDir() {
        p = fs::temp_directory_path() / ("limarp-train-ckpt-" + std::to_string(::getpid()) + "-" +
                                         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
        fs::create_directories(p);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(p, ec);
    }
};

// Two layers of a small Mistral-shaped model (d_model 64, d_ff 160, kv 32), all 7 targets.
std::vector<LoraParameters> make_params(std::int64_t r, std::uint64_t seed) {
    struct M {
        const char* name;
        std::int64_t in, out;
    };
    const M mods[] = {{"self_attn.q_proj", 64, 64}, {"self_attn.k_proj", 64, 32}, {"self_attn.v_proj", 64, 32},
                      {"self_attn.o_proj", 64, 64}, {"mlp.gate_proj", 64, 160}, {"mlp.up_proj", 64, 160},
                      {"mlp.down_proj", 160, 64}};
    std::mt19937_64 rng(seed);
    std::vector<LoraParameters> v;
    for (int layer = 0; layer < 2; ++layer)
        for (const auto& m : mods) {
            LoraParameters p("model.layers." + std::to_string(layer) + "." + m.name, m.in, m.out, r);
            p.init_peft(rng);
            for (std::int64_t i = 0; i < p.B.size(); ++i) p.B[i] = 0.01f * static_cast<float>(i % 7) - 0.03f;
            v.push_back(std::move(p));
        }
    return v;
}

AdapterInfo info(std::int64_t r) {
    AdapterInfo a;
    a.lora.r = r;
    a.lora.lora_alpha = 16;
    a.lora.lora_dropout = 0.05;
    a.lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    a.base_model_name_or_path = "Open-Orca/Mistral-7B-OpenOrca";
    return a;
}

bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * 4) == 0;
}

// A fake training step: deterministic gradients from the parameters and the RNG.
void fake_step(std::vector<LoraParameters>& params, AdamW& opt, std::mt19937_64& rng, std::int64_t step) {
    std::normal_distribution<float> nd;  // fine here: same library on both sides of the comparison
    for (auto& p : params) {
        for (std::int64_t i = 0; i < p.A.size(); ++i) p.dA[i] += 0.1f * p.A[i] + 0.01f * nd(rng);
        for (std::int64_t i = 0; i < p.B.size(); ++i) p.dB[i] += 0.1f * p.B[i] + 0.01f * nd(rng);
    }
    auto slots = param_slots(params);
    clip_grad_norm(slots, 1.0);
    opt.step(slots, 1e-3 / static_cast<double>(step + 1));
    zero_grads(slots);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(checkpoint)

BOOST_AUTO_TEST_CASE(peft_adapter_folder_round_trip) {
    TempDir t;
    const auto params = make_params(8, 1);
    const fs::path dir = t.p / "adapter";
    write_peft_adapter(dir, params, info(8));
    BOOST_TEST(fs::exists(dir / "adapter_config.json"));
    BOOST_TEST(fs::exists(dir / "adapter_model.safetensors"));
    BOOST_TEST(!fs::exists(dir / kTrainingStateFile));

    const auto a = io::PeftAdapter::open(dir);
    BOOST_TEST(a.config().r == 8);
    BOOST_TEST(a.config().lora_alpha == 16.0);
    BOOST_TEST(a.config().lora_dropout == 0.05);
    BOOST_TEST(!a.config().use_rslora);
    BOOST_TEST(a.modules_in_file().size() == 14u);
    for (const auto& p : params) {
        const auto m = a.module(p.module, p.in_features(), p.out_features());
        BOOST_REQUIRE(m.has_value());
        BOOST_TEST(m->scale == 2.0);  // 16 / 8
        BOOST_TEST((m->A.dtype == DType::F32));
        BOOST_TEST(std::memcmp(m->A.data, p.A.data(), m->A.nbytes) == 0);
        BOOST_TEST(std::memcmp(m->B.data, p.B.data(), m->B.nbytes) == 0);
    }
    BOOST_TEST(a.file().metadata().at("format") == "pt");
    BOOST_TEST(a.file().contains("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));

    std::ifstream f(dir / "adapter_config.json");
    const auto j = nlohmann::json::parse(f);
    BOOST_TEST(j.at("peft_type") == "LORA");
    BOOST_TEST(j.at("task_type") == "CAUSAL_LM");
    BOOST_TEST(j.at("bias") == "none");
    BOOST_TEST(j.at("fan_in_fan_out") == false);
    BOOST_TEST(j.at("inference_mode") == true);
    BOOST_TEST(j.at("use_rslora") == false);
    BOOST_TEST(j.at("lora_alpha").is_number_integer());
    BOOST_TEST(j.at("base_model_name_or_path") == "Open-Orca/Mistral-7B-OpenOrca");
    BOOST_TEST(j.at("target_modules").size() == 7u);

    AdapterInfo back;
    const auto loaded = read_lora_parameters(dir, &back);
    BOOST_REQUIRE(loaded.size() == params.size());
    BOOST_TEST(back.base_model_name_or_path == "Open-Orca/Mistral-7B-OpenOrca");
    for (const auto& q : loaded) {
        const auto it = std::find_if(params.begin(), params.end(), [&](const LoraParameters& p) { return p.module == q.module; });
        BOOST_REQUIRE(it != params.end());
        BOOST_TEST(same_bits(it->A, q.A));
        BOOST_TEST(same_bits(it->B, q.B));
    }
}

BOOST_AUTO_TEST_CASE(peft_init_and_rslora) {
    std::mt19937_64 rng(5);
    LoraParameters p("model.layers.0.mlp.down_proj", 160, 64, 16);
    p.init_peft(rng);
    const float bound = 1.0f / std::sqrt(160.0f);
    float lo = 1, hi = -1;
    for (std::int64_t i = 0; i < p.A.size(); ++i) {
        lo = std::min(lo, p.A[i]);
        hi = std::max(hi, p.A[i]);
    }
    BOOST_TEST(lo >= -bound);
    BOOST_TEST(hi < bound);
    BOOST_TEST(hi - lo > 1.9f * bound);  // spans the range
    for (std::int64_t i = 0; i < p.B.size(); ++i) BOOST_REQUIRE(p.B[i] == 0.0f);
    std::mt19937_64 rng2(5);
    LoraParameters q("m", 160, 64, 16);
    q.init_peft(rng2);
    BOOST_TEST(same_bits(p.A, q.A));  // seeded: reproducible

    TempDir t;
    auto params = make_params(4, 2);
    auto i = info(4);
    i.lora.use_rslora = true;
    write_peft_adapter(t.p / "rs", params, i);
    const auto a = io::PeftAdapter::open(t.p / "rs");
    BOOST_TEST(a.module(params[0].module, 64, 64)->scale == 8.0);  // 16 / sqrt(4)
}

BOOST_AUTO_TEST_CASE(bad_input_is_refused) {
    TempDir t;
    auto params = make_params(8, 1);
    BOOST_CHECK_THROW(write_peft_adapter(t.p / "x", params, info(4)), ArgumentError);  // rank mismatch
    auto dup = params;
    dup.push_back(params[0]);
    BOOST_CHECK_THROW(write_peft_adapter(t.p / "x", dup, info(8)), ArgumentError);
    BOOST_CHECK_THROW(write_peft_adapter(t.p / "x", std::vector<LoraParameters>{}, info(8)), ArgumentError);
    params[0].dA = Tensor<float>({3, 3});
    BOOST_CHECK_THROW(write_peft_adapter(t.p / "x", params, info(8)), ShapeError);
    BOOST_TEST(!fs::exists(t.p / "x"));
    BOOST_CHECK_THROW(LoraParameters("m", 0, 4, 2), ArgumentError);
}

BOOST_AUTO_TEST_CASE(resume_continues_bit_for_bit) {
    TempDir t;
    auto params = make_params(8, 3);
    AdamW opt({1e-3, 0.9, 0.999, 1e-8, 0.01});
    std::mt19937_64 rng(11);
    for (std::int64_t s = 0; s < 3; ++s) fake_step(params, opt, rng, s);

    TrainingState st;
    st.step = 3;
    st.schedule_step = 3;
    st.epoch = 1;
    st.position = 17;
    st.rng_state = rng_state_string(rng);
    st.extra = {{"best_eval_loss", 1.25}, {"note", "x"}};
    const fs::path dir = checkpoint_dir(t.p, 3);
    write_checkpoint(dir, params, info(8), opt, st);
    BOOST_TEST(dir.filename() == "checkpoint-3");
    BOOST_TEST(fs::exists(dir / kTrainingStateFile));
    // A PEFT loader still sees a plain adapter.
    BOOST_TEST(io::PeftAdapter::open(dir).modules_in_file().size() == 14u);

    // Reference: carry on in memory.
    auto ref_params = params;
    AdamW ref_opt = opt;
    std::mt19937_64 ref_rng = rng;
    for (std::int64_t s = 3; s < 6; ++s) fake_step(ref_params, ref_opt, ref_rng, s);

    // Resumed: fresh objects filled from the checkpoint.
    auto res_params = make_params(8, 999);  // different values, same modules and shapes
    AdamW res_opt;
    const TrainingState got = read_checkpoint(dir, res_params, res_opt);
    BOOST_TEST((got == st));
    std::mt19937_64 res_rng;
    set_rng_state(res_rng, got.rng_state);
    BOOST_TEST(res_opt.steps() == 3);
    for (std::size_t k = 0; k < params.size(); ++k) {
        BOOST_TEST(same_bits(res_params[k].A, params[k].A));
        BOOST_TEST(same_bits(res_params[k].B, params[k].B));
    }
    for (std::size_t k = 0; k < opt.state().size(); ++k) {
        BOOST_TEST(res_opt.state()[k].name == opt.state()[k].name);
        BOOST_TEST(same_bits(res_opt.state()[k].exp_avg, opt.state()[k].exp_avg));
        BOOST_TEST(same_bits(res_opt.state()[k].exp_avg_sq, opt.state()[k].exp_avg_sq));
    }
    for (std::int64_t s = 3; s < 6; ++s) fake_step(res_params, res_opt, res_rng, s);
    for (std::size_t k = 0; k < params.size(); ++k) {
        BOOST_TEST(same_bits(res_params[k].A, ref_params[k].A));
        BOOST_TEST(same_bits(res_params[k].B, ref_params[k].B));
    }
    BOOST_TEST(res_rng() == ref_rng());

    // A checkpoint that does not fit the model is refused, naming the module.
    auto other = make_params(4, 1);
    AdamW o2;
    BOOST_CHECK_THROW(read_checkpoint(dir, other, o2), ShapeError);
    BOOST_CHECK_THROW(set_rng_state(res_rng, "not a state"), FormatError);
    write_peft_adapter(t.p / "plain", params, info(8));
    BOOST_CHECK_THROW(read_checkpoint(t.p / "plain", res_params, res_opt), IoError);
}

BOOST_AUTO_TEST_CASE(leftovers_of_a_crash_do_not_break_the_next_write) {
    TempDir t;
    auto v1 = make_params(4, 1);
    auto v2 = make_params(4, 2);
    const fs::path dir = t.p / "ckpt";
    write_peft_adapter(dir, v1, info(4));
    // A write killed half-way: a partial temp folder with garbage, and a stray set-aside folder.
    fs::create_directories(t.p / ".ckpt.tmp.12345.0");
    std::ofstream(t.p / ".ckpt.tmp.12345.0" / "adapter_model.safetensors") << "garbage";
    fs::create_directories(t.p / ".ckpt.old.12345.1");
    // The existing checkpoint is untouched by them.
    const auto before = read_lora_parameters(dir);
    const auto it1 = std::find_if(before.begin(), before.end(), [&](const LoraParameters& p) { return p.module == v1[0].module; });
    BOOST_REQUIRE(it1 != before.end());
    BOOST_TEST(same_bits(it1->A, v1[0].A));
    write_peft_adapter(dir, v2, info(4));
    BOOST_TEST(!fs::exists(t.p / ".ckpt.tmp.12345.0"));
    BOOST_TEST(!fs::exists(t.p / ".ckpt.old.12345.1"));
    const auto back = read_lora_parameters(dir);
    const auto it = std::find_if(back.begin(), back.end(), [&](const LoraParameters& p) { return p.module == v2[0].module; });
    BOOST_TEST(same_bits(it->A, v2[0].A));
    for (const auto& e : fs::directory_iterator(t.p)) BOOST_TEST(e.path().filename() == "ckpt");

    // Killed between the two renames of the fallback path: only the set-aside old copy exists.
    fs::rename(dir, t.p / ".ckpt.old.777.3");
    fs::create_directories(t.p / ".ckpt.tmp.777.2");
    const auto restored = read_lora_parameters(dir);  // puts the complete old copy back
    BOOST_TEST(fs::exists(dir / "adapter_config.json"));
    BOOST_TEST(restored.size() == v2.size());

    // A write that fails half-way leaves the old checkpoint and no temp folder.
    BOOST_CHECK_THROW(train::detail::replace_dir(dir,
                                          [](const fs::path& tmp) {
                                              std::ofstream(tmp / "adapter_config.json") << "{";
                                              throw IoError("disk full (simulated)");
                                          }),
                      IoError);
    BOOST_TEST(io::PeftAdapter::open(dir).modules_in_file().size() == 14u);
    std::size_t entries = 0;
    for (const auto& e : fs::directory_iterator(t.p)) {
        (void)e;
        ++entries;
    }
    BOOST_TEST(entries == 1u);  // the writer also removed the stray .ckpt.tmp.777.2 the reader had left
}

// A child process rewrites the same checkpoint in a loop (version k has every factor value
// and the state's step equal to k); it is killed with SIGKILL at random moments. Every time,
// the folder must open and hold one complete version. Run with the atomic exchange and with
// the fallback (rename aside, rename in) used on file systems without RENAME_EXCHANGE.
BOOST_DATA_TEST_CASE(killed_writer_never_leaves_a_corrupt_checkpoint, boost::unit_test::data::make({false, true}), fallback) {
    train::detail::rename_exchange_disabled() = fallback;
    struct Restore {
        ~Restore() { train::detail::rename_exchange_disabled() = false; }
    } restore;
    TempDir t;
    const fs::path dir = t.p / "checkpoint-1";
    auto params = make_params(16, 4);
    auto fill = [&](float k) {
        for (auto& p : params) {
            std::fill(p.A.data(), p.A.data() + p.A.size(), k);
            std::fill(p.B.data(), p.B.data() + p.B.size(), k);
        }
    };
    AdamW opt;
    {
        auto slots = param_slots(params);
        opt.step(slots);
    }
    fill(0);
    write_checkpoint(dir, params, info(16), opt, TrainingState{});
    std::mt19937_64 rng(2024);
    int versions_seen = 0, interrupted = 0;
    for (int round = 0; round < 12; ++round) {
        int ready[2];
        BOOST_REQUIRE(::pipe(ready) == 0);
        const pid_t pid = ::fork();
        BOOST_REQUIRE(pid >= 0);
        if (pid == 0) {
            ::close(ready[0]);
            for (int k = 1;; ++k) {
                fill(static_cast<float>(k));
                TrainingState s;
                s.step = k;
                try {
                    write_checkpoint(dir, params, info(16), opt, s);
                } catch (...) {
                    ::_exit(3);
                }
                if (k == 1) {  // tell the parent one version is complete
                    const char c = 1;
                    if (::write(ready[1], &c, 1) != 1) ::_exit(4);
                    ::close(ready[1]);
                }
            }
        }
        ::close(ready[1]);
        char c = 0;
        BOOST_REQUIRE(::read(ready[0], &c, 1) == 1);
        ::close(ready[0]);
        std::this_thread::sleep_for(std::chrono::microseconds(train::detail::uniform_below(rng, 30000)));
        ::kill(pid, SIGKILL);
        int status = 0;
        ::waitpid(pid, &status, 0);
        BOOST_TEST((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
        for (const auto& e : fs::directory_iterator(t.p))
            if (e.path().filename() != "checkpoint-1") ++interrupted;  // killed inside a write
        // Read as the trainer's resume would.
        auto back = make_params(16, 5);
        AdamW o;
        const TrainingState st = read_checkpoint(dir, back, o);
        const float k = static_cast<float>(st.step);
        bool consistent = true;
        for (const auto& p : back)
            for (std::int64_t i = 0; i < p.A.size(); ++i) consistent = consistent && p.A[i] == k;
        BOOST_TEST(consistent);
        if (st.step > 0) ++versions_seen;
    }
    BOOST_TEST(versions_seen == 12);  // the child had completed at least one write each time
    BOOST_TEST_MESSAGE("killed writer (" << (fallback ? "rename fallback" : "atomic exchange") << "): " << interrupted
                                         << " of 12 kills left a write in progress");
    // The next write cleans up whatever the kills left.
    write_checkpoint(dir, params, info(16), opt, TrainingState{});
    for (const auto& e : fs::directory_iterator(t.p)) BOOST_TEST(e.path().filename() == "checkpoint-1");
}

BOOST_AUTO_TEST_CASE(latest_and_prune) {
    TempDir t;
    auto params = make_params(4, 1);
    AdamW opt;
    BOOST_TEST(!latest_checkpoint(t.p).has_value());
    BOOST_TEST(!latest_checkpoint(t.p / "missing").has_value());
    for (std::int64_t s : {5, 10, 20}) {
        TrainingState st;
        st.step = s;
        write_checkpoint(checkpoint_dir(t.p, s), params, info(4), opt, st);
    }
    write_peft_adapter(t.p / "checkpoint-30", params, info(4));  // no training state: not resumable
    fs::create_directories(t.p / "checkpoint-x");
    BOOST_TEST(latest_checkpoint(t.p)->filename() == "checkpoint-20");
    prune_checkpoints(t.p, 2);
    BOOST_TEST(!fs::exists(t.p / "checkpoint-5"));
    BOOST_TEST(!fs::exists(t.p / "checkpoint-10"));
    BOOST_TEST(fs::exists(t.p / "checkpoint-20"));
    BOOST_TEST(fs::exists(t.p / "checkpoint-30"));
    BOOST_TEST(fs::exists(t.p / "checkpoint-x"));
    prune_checkpoints(t.p, 0);  // keep all
    BOOST_TEST(fs::exists(t.p / "checkpoint-20"));
}

BOOST_AUTO_TEST_SUITE_END()
