// limarp-train: LoRA fine-tuning of a Mistral model on the CPU, configured like Axolotl.
//
// Reads a YAML config (train/train_config.hpp: Axolotl's field names), applies `key=value` /
// `--key=value` overrides, loads the base model and the tokenizer, builds the dataset (LimaRP
// YAML / JSONL; a malformed file stops the program before training), initialises LoRA as PEFT
// (A kaiming-uniform(a = sqrt 5) from `seed`, B zero; or from `lora_model_dir`), and runs
// AdamW with gradient accumulation, global-norm clipping and an LR schedule with warmup.
// Writes into output_dir: config.yaml, metrics.csv / metrics.jsonl, checkpoint-N/ (PEFT adapter
// + training_state.safetensors, atomic), adapter/ (the final PEFT adapter) and loss.png.
// `--resume` continues bit-for-bit from the newest checkpoint (SIGINT / SIGTERM write one and
// stop after the current update).
//
// Batching: the examples of a micro-batch are run one at a time (no padding); each one's
// gradient is scaled by its loss targets / the batch's targets / gradient_accumulation_steps,
// so an update uses the token-weighted mean loss of each micro-batch, averaged over the
// micro-batches, as the Hugging Face Trainer. An update never spans two epochs (the last one of
// an epoch may have fewer micro-batches). Dropout masks are seeded from (seed, example slot),
// so a resumed run sees the same masks. Eval loss: token-weighted mean over the eval split.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/program.hpp"
#include "common/tokenizer_loading.hpp"
#include "limarp/io/hf_config.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/model/adapters.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/train/adamw.hpp"
#include "limarp/train/checkpoint.hpp"
#include "limarp/train/dataset.hpp"
#include "limarp/train/grad.hpp"
#include "limarp/train/lr_schedule.hpp"
#include "limarp/train/metrics.hpp"
#include "limarp/train/progress.hpp"
#include "limarp/train/train_config.hpp"

using namespace limarp;
namespace fs = std::filesystem;

namespace {

/// Name of the adapter the trainer attaches (PEFT's default adapter name).
constexpr const char* kAdapterName = "default";

/// Run-time options that are not part of the YAML config.
struct RunOptions {
    std::string tokenizer;   ///< tokenizer file or folder (default: base_model)
    std::string quant;       ///< none | int8 | q8_0 | "" (from load_in_8bit)
    bool quiet = false;      ///< no progress bar
    bool no_plot = false;    ///< skip the gnuplot PNG
};

/// A model of projection type `Proj` with LoRA wrappers.
template <class Proj>
using TrainModel = MistralModel<Cpu<>, MistralBlock<Cpu<>, Lora<Proj>>>;

/// Set by SIGINT / SIGTERM: the run stops after the current update with a checkpoint.
volatile std::sig_atomic_t g_stop = 0;

/// First SIGINT / SIGTERM: ask for a checkpoint and a clean stop; a second one kills at once
/// (safe too: checkpoints are written atomically).
extern "C" void on_stop_signal(int sig) {
    g_stop = 1;
    std::signal(sig, SIG_DFL);
}

/// SplitMix64: the dropout seed of micro-batch example `k` of the run (independent of resumes).
std::uint64_t mix64(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/// True when module path `m` ends with one of the targets (".q_proj", ...).
bool is_target(const std::string& m, const std::vector<std::string>& targets) {
    for (const auto& t : targets)
        if (m.size() > t.size() && m.compare(m.size() - t.size(), t.size(), t) == 0 && m[m.size() - t.size() - 1] == '.')
            return true;
    return false;
}

/// Token-weighted mean loss over `examples` (dropout off).
template <class Model>
double eval_loss(Model& model, const std::vector<train::Example>& examples) {
    double sum = 0;
    std::int64_t n = 0;
    for (const auto& ex : examples) {
        const std::span<const std::int32_t> ids(reinterpret_cast<const std::int32_t*>(ex.tokens.data()), ex.tokens.size());
        const auto r = train::lm_loss(model, ids, {.loss_mask = ex.targets});
        sum += r.loss_sum;
        n += r.n_targets;
    }
    return n ? sum / static_cast<double>(n) : std::nan("");
}

/// The whole run for a model with projections `Proj`.
template <class Proj>
int train_run(const train::TrainConfig& cfg, const RunOptions& ro) {
    static_assert(train::supports_lora_grads_v<TrainModel<Proj>>);
    using Model = TrainModel<Proj>;
    const fs::path out_dir = cfg.output_dir;

    // ---- tokenizer and dataset first: a broken dataset stops us before the model loads.
    const text::Tokenizer tok = programs::load_tokenizer(ro.tokenizer.empty() ? cfg.base_model : ro.tokenizer);
    const train::Dataset data = train::Dataset::load(cfg.datasets, tok, cfg.dataset_options());
    std::fprintf(stderr, "limarp-train: dataset: %s\n", data.stats().summary().c_str());

    // ---- model
    MistralConfig mcfg = io::read_mistral_config(cfg.base_model);
    for (const auto& ex : data.train())
        for (int id : ex.tokens)
            if (id < 0 || id >= mcfg.vocab)
                throw ArgumentError(ex.source + ": token id " + std::to_string(id) + " is outside the model's vocabulary (" +
                                    std::to_string(mcfg.vocab) + "): tokenizer and base_model do not match");
    auto ckpt = std::make_shared<io::SafeTensorsCheckpoint>(io::SafeTensorsCheckpoint::open(cfg.base_model));
    LoadContext ctx(ckpt);
    Model model(mcfg, ctx);

    // ---- LoRA parameters (PEFT init or lora_model_dir), in model order
    const io::LoraConfig lcfg = cfg.lora_config();
    std::vector<train::LoraParameters> params;
    std::mt19937_64 init_rng(cfg.seed);
    for_each_projection(model, [&](auto& p) {
        if (!is_target(p.module(), lcfg.target_modules)) return;
        // no dA/dB here: the Lora layers accumulate the gradients in their own buffers
        params.emplace_back(p.module(), p.in_features(), p.out_features(), cfg.lora_r, /*with_grads=*/false);
        params.back().init_peft(init_rng);
    });
    if (params.empty()) throw ArgumentError("lora_target_modules: no projection of the model matches");
    if (!cfg.lora_model_dir.empty()) {
        auto loaded = train::read_lora_parameters(cfg.lora_model_dir);
        for (auto& p : params) {
            auto it = std::find_if(loaded.begin(), loaded.end(), [&](const auto& q) { return q.module == p.module; });
            if (it == loaded.end()) throw FormatError(cfg.lora_model_dir + ": no LoRA factors for " + p.module);
            if (it->A.shape() != p.A.shape() || it->B.shape() != p.B.shape())
                throw ShapeError(cfg.lora_model_dir + ": " + p.module + ": factor shapes do not match lora_r " +
                                 std::to_string(cfg.lora_r));
            p.A = std::move(it->A);
            p.B = std::move(it->B);
        }
    }
    const train::AdapterInfo info{lcfg, cfg.base_model};
    train::AdamW opt(cfg.adamw_options());

    // ---- run state (fresh or resumed)
    const std::int64_t n_train = static_cast<std::int64_t>(data.train().size());
    const std::int64_t total = train::total_training_steps(n_train, cfg.micro_batch_size, cfg.gradient_accumulation_steps,
                                                           static_cast<double>(cfg.num_epochs), cfg.max_steps);
    const train::LrSchedule sched = cfg.schedule(total);
    train::Sampler sampler(data.train().size(), cfg.seed, cfg.shuffle);
    train::TrainingState st;
    double log_loss_sum = 0;       // sum of update losses since the last metrics row
    std::int64_t log_updates = 0;  // updates since the last metrics row
    fs::path resume_dir;
    if (!cfg.resume_from_checkpoint.empty()) {
        if (cfg.resume_from_checkpoint == "auto" || cfg.resume_from_checkpoint == "latest") {
            if (auto l = train::latest_checkpoint(out_dir)) resume_dir = *l;
            else std::fprintf(stderr, "limarp-train: no checkpoint in %s, starting fresh\n", out_dir.c_str());
        } else {
            resume_dir = cfg.resume_from_checkpoint;
        }
    }
    if (!resume_dir.empty()) {
        st = train::read_checkpoint(resume_dir, params, opt);
        opt.set_options(cfg.adamw_options());
        sampler.seek(st.epoch, st.position);
        log_loss_sum = st.extra.value("log_loss_sum", 0.0);
        log_updates = st.extra.value("log_updates", std::int64_t{0});
        if (st.extra.contains("total_steps") && st.extra["total_steps"].get<std::int64_t>() != total)
            std::fprintf(stderr, "limarp-train: warning: the checkpoint's run had %lld updates, this one has %lld\n",
                         static_cast<long long>(st.extra["total_steps"].get<std::int64_t>()), static_cast<long long>(total));
        std::fprintf(stderr, "limarp-train: resuming from %s (step %lld)\n", resume_dir.c_str(),
                     static_cast<long long>(st.step));
    }
    // Attach after loading: the factors are views of the (possibly replaced) master tensors.
    {
        const float scale = static_cast<float>(cfg.peft_use_rslora ? cfg.lora_alpha / std::sqrt(double(cfg.lora_r))
                                                                   : cfg.lora_alpha / double(cfg.lora_r));
        std::size_t i = 0;
        for_each_projection(model, [&](auto& p) {
            if (i >= params.size() || params[i].module != p.module()) return;
            LoraFactors f;
            f.adapter = kAdapterName;
            f.A = Weight::view(params[i].A, train::peft_factor_name(p.module(), "A"));
            f.B = Weight::view(params[i].B, train::peft_factor_name(p.module(), "B"));
            f.file_scale = scale;
            p.attach(std::move(f));
            ++i;
        });
    }

    fs::create_directories(out_dir);
    {
        const std::string y = train::to_yaml(cfg);
        std::ofstream(out_dir / "config.yaml", std::ios::binary) << y;
    }
    train::MetricsLog log = resume_dir.empty() ? train::MetricsLog::create(out_dir) : train::MetricsLog::resume(out_dir, st.step);

    std::int64_t n_params = 0;
    for (const auto& p : params) n_params += p.A.size() + p.B.size();
    std::fprintf(stderr,
                 "limarp-train: %zu adapted projections, %lld LoRA parameters; %lld train / %zu eval examples; "
                 "%lld updates (micro_batch_size %lld x gradient_accumulation_steps %lld)\n",
                 params.size(), static_cast<long long>(n_params), static_cast<long long>(n_train), data.eval().size(),
                 static_cast<long long>(total), static_cast<long long>(cfg.micro_batch_size),
                 static_cast<long long>(cfg.gradient_accumulation_steps));

    auto save = [&](std::int64_t step) {
        st.step = step;
        st.schedule_step = step;
        st.epoch = sampler.epoch();
        st.position = sampler.position();
        st.extra["log_loss_sum"] = log_loss_sum;
        st.extra["log_updates"] = log_updates;
        st.extra["total_steps"] = total;
        train::write_checkpoint(train::checkpoint_dir(out_dir, step), params, info, opt, st);
        train::prune_checkpoints(out_dir, cfg.save_total_limit);
    };

    train::LossWorkspace<Model> ws;
    train::ProgressOptions popt;
    std::ostringstream sink;
    train::ProgressBar bar(static_cast<std::uint64_t>(total), popt, ro.quiet ? static_cast<std::ostream&>(sink) : std::cerr,
                           static_cast<std::uint64_t>(st.step));
    std::uint64_t tokens_done = 0, tokens_since_log = 0;
    auto t_log = std::chrono::steady_clock::now();
    std::int64_t step = st.step;
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    double last_loss = std::nan("");
    while (step < total) {
        // ---- one optimizer update: gradient_accumulation_steps micro-batches
        double update_loss = 0;
        std::int64_t micro = 0;
        bool epoch_end = false;
        for (std::int64_t m = 0; m < cfg.gradient_accumulation_steps; ++m) {
            if (sampler.epoch_done()) sampler.seek(sampler.epoch() + 1, 0);  // start the next epoch
            std::vector<std::size_t> batch;
            for (std::int64_t b = 0; b < cfg.micro_batch_size && !sampler.epoch_done(); ++b) batch.push_back(sampler.next());
            std::int64_t n_batch = 0;
            for (auto i : batch) n_batch += data.train()[i].n_targets();
            double batch_sum = 0;
            for (std::size_t b = 0; b < batch.size(); ++b) {
                const auto& ex = data.train()[batch[b]];
                const std::span<const std::int32_t> ids(reinterpret_cast<const std::int32_t*>(ex.tokens.data()), ex.tokens.size());
                train::LossOptions lo;
                lo.loss_mask = ex.targets;
                lo.lora_dropout = static_cast<float>(cfg.lora_dropout);
                lo.dropout_seed = mix64(cfg.seed ^ mix64(static_cast<std::uint64_t>(
                                                       (step * cfg.gradient_accumulation_steps + m) * cfg.micro_batch_size) +
                                                   b));
                // grads of (sum of the batch's token losses / batch targets) / accumulation steps
                lo.grad_scale = n_batch ? static_cast<float>(static_cast<double>(ex.n_targets()) /
                                                             static_cast<double>(n_batch) /
                                                             static_cast<double>(cfg.gradient_accumulation_steps))
                                        : 0.0f;
                const auto r = train::loss_and_lora_grads(model, ids, lo, ws);
                batch_sum += r.loss_sum;
                tokens_done += static_cast<std::uint64_t>(ex.tokens.size());
                tokens_since_log += static_cast<std::uint64_t>(ex.tokens.size());
            }
            if (n_batch) update_loss += batch_sum / static_cast<double>(n_batch);
            ++micro;
            if (sampler.epoch_done()) {
                epoch_end = true;
                break;  // an update never spans two epochs (the Trainer steps at an epoch's end)
            }
        }
        update_loss /= static_cast<double>(micro);
        // ---- the update
        std::vector<train::ParamSlot> slots;
        const auto grads = train::lora_grad_tensors(model, kAdapterName);
        std::size_t gi = 0;
        for (auto& p : params) {
            const Tensor<float>* gA = gi < grads.size() ? grads[gi].second : nullptr;
            const Tensor<float>* gB = gi + 1 < grads.size() ? grads[gi + 1].second : nullptr;
            if (!gA || !gB || grads[gi].first != train::peft_factor_name(p.module, "A"))
                throw ArgumentError("step " + std::to_string(step + 1) + ": no gradient for " + p.module +
                                    " (every example of the update had no loss target)");
            slots.push_back({p.module + ".lora_A", p.A.data(), const_cast<float*>(gA->data()), p.A.size()});
            slots.push_back({p.module + ".lora_B", p.B.data(), const_cast<float*>(gB->data()), p.B.size()});
            gi += 2;
        }
        const double gnorm = train::clip_grad_norm(slots, cfg.max_grad_norm);
        if (!std::isfinite(gnorm) || !std::isfinite(update_loss))
            throw ArgumentError("step " + std::to_string(step + 1) + ": non-finite loss or gradient norm (lower learning_rate?)");
        const double lr = sched.lr(step);
        opt.step(slots, lr);
        train::zero_lora_grads(model);
        ++step;
        last_loss = update_loss;
        log_loss_sum += update_loss;
        ++log_updates;

        // ---- eval, metrics, checkpoint
        const bool last = step == total;
        const bool do_eval = !data.eval().empty() &&
                             (last || (cfg.eval_steps > 0 ? step % cfg.eval_steps == 0 : epoch_end));
        const bool do_log = last || step % cfg.logging_steps == 0 || do_eval;
        if (do_log) {
            train::MetricsRow row;
            row.step = step;
            row.epoch = static_cast<double>(sampler.epoch()) +
                        static_cast<double>(sampler.position()) / static_cast<double>(sampler.size());
            row.loss = log_loss_sum / static_cast<double>(log_updates);
            row.lr = lr;
            row.grad_norm = gnorm;
            const auto now = std::chrono::steady_clock::now();
            row.tokens_per_s = static_cast<double>(tokens_since_log) / std::chrono::duration<double>(now - t_log).count();
            if (do_eval) row.eval_loss = eval_loss(model, data.eval());
            log.append(row);
            log_loss_sum = 0;
            log_updates = 0;
            tokens_since_log = 0;
            t_log = std::chrono::steady_clock::now();
        }
        const bool do_save = last || (cfg.save_steps > 0 ? step % cfg.save_steps == 0 : epoch_end);
        if (do_save || g_stop) save(step);
        char extra[64];
        std::snprintf(extra, sizeof extra, "loss %.4f lr %.2e", last_loss, lr);
        bar.update(static_cast<std::uint64_t>(step), tokens_done, extra);
        if (g_stop && !last) {
            bar.finish();
            std::fprintf(stderr, "limarp-train: interrupted: saved %s; continue with --resume\n",
                         train::checkpoint_dir(out_dir, step).c_str());
            std::printf("%s\n", nlohmann::json{{"steps", step}, {"interrupted", true},
                                               {"checkpoint", train::checkpoint_dir(out_dir, step).string()}}
                                     .dump()
                                     .c_str());
            return 130;
        }
    }
    bar.finish();
    train::write_peft_adapter(out_dir / "adapter", params, info);
    if (!ro.no_plot && !log.rows().empty()) {
        try {
            train::plot_loss_curves(out_dir / "loss.png", log.rows());
        } catch (const std::exception& e) {
            std::fprintf(stderr, "limarp-train: warning: no loss plot: %s\n", e.what());
        }
    }
    nlohmann::json summary{{"steps", step}, {"output_dir", out_dir.string()}, {"adapter", (out_dir / "adapter").string()}};
    if (std::isfinite(last_loss)) summary["loss"] = last_loss;
    for (auto it = log.rows().rbegin(); it != log.rows().rend(); ++it)
        if (it->eval_loss) {
            summary["eval_loss"] = *it->eval_loss;
            break;
        }
    std::printf("%s\n", summary.dump().c_str());
    return 0;
}

/// Picks the projection type (the one dispatch table of this program):
///   none   Lora<DenseLinear<Cpu<>>>                    f32/bf16/f16 base as stored
///   int8   Lora<QuantizedLinear<Int8Rowwise, Cpu<>>>   quantized at load (or pre-quantized)
///   q8_0   Lora<QuantizedLinear<Q8_0, Cpu<>>>          quantized at load (or pre-quantized)
/// With no --quant, load_in_8bit: true (the seed's recipe) picks int8, else none.
int dispatch(const train::TrainConfig& cfg, const RunOptions& ro) {
    const std::string q = ro.quant.empty() ? (cfg.load_in_8bit ? "int8" : "none") : ro.quant;
    if (q == "none") return train_run<DenseLinear<Cpu<>>>(cfg, ro);
    if (q == "int8") return train_run<QuantizedLinear<Int8Rowwise, Cpu<>>>(cfg, ro);
    if (q == "q8_0") return train_run<QuantizedLinear<Q8_0, Cpu<>>>(cfg, ro);
    throw ArgumentError("--quant: \"" + q + "\" is not one of none, int8, q8_0");
}

std::string keys_help() {
    std::string s = "Config keys (YAML, or KEY=VALUE / --KEY=VALUE on the command line; later ones win):\n";
    for (const auto& k : train::train_config_keys()) {
        std::string line = "  " + k.name + " (" + k.type + ", default " + k.default_value + ")";
        if (line.size() < 52) line.resize(52, ' ');
        else line += "\n" + std::string(52, ' ');
        s += line + k.help + "\n";
    }
    return s;
}

}  // namespace

int main(int argc, char** argv) {
    return programs::run_main("limarp-train", [&] {
        CLI::App app{"limarp-train: LoRA fine-tuning of a Mistral model on the CPU (Axolotl-style YAML config).\n"
                     "Form: limarp-train [CONFIG.yaml] [KEY=VALUE | --KEY=VALUE ...] [options]\n"
                     "Writes into output_dir: config.yaml, metrics.csv, metrics.jsonl, checkpoint-N/ (PEFT adapter + "
                     "optimizer state), adapter/ (final PEFT adapter), loss.png; prints one JSON summary line.\n"
                     "Ctrl-C (SIGINT/SIGTERM) stops after the current update with a checkpoint (exit 130)."};
        std::string config_path;
        std::vector<std::string> overrides;
        RunOptions ro;
        bool resume = false, print_config = false;
        int threads = 0;
        app.add_option("config", config_path, "YAML config file (Axolotl field names)");
        app.add_option("--tokenizer", ro.tokenizer, "tokenizer.model, tokenizer.json or a folder (default: base_model)");
        app.add_option("--quant", ro.quant,
                       "frozen base: none | int8 | q8_0 (default: int8 when load_in_8bit, the default, else none)");
        app.add_flag("--resume", resume, "continue from the newest checkpoint-N in output_dir (resume_from_checkpoint=auto)");
        app.add_flag("--print-config", print_config, "print the effective config as YAML and exit");
        app.add_flag("--quiet", ro.quiet, "no progress bar");
        app.add_flag("--no-plot", ro.no_plot, "do not draw loss.png with gnuplot");
        app.add_option("--threads", threads, "worker threads (default: all cores; or LIMARP_THREADS)");
        app.allow_extras();
        app.footer(keys_help());
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        for (const auto& e : app.remaining()) {
            if (e.find('=') == std::string::npos)
                throw ArgumentError("\"" + e + "\": expected KEY=VALUE or --KEY=VALUE (see --help for the keys)");
            overrides.push_back(e);
        }
        // A positional KEY=VALUE is an override, not the config file.
        if (config_path.find('=') != std::string::npos) {
            overrides.insert(overrides.begin(), config_path);
            config_path.clear();
        }
        if (threads > 0) setenv("LIMARP_THREADS", std::to_string(threads).c_str(), 1);
        train::TrainConfig cfg = config_path.empty() ? train::TrainConfig{} : train::load_train_config(config_path);
        train::apply_overrides(cfg, overrides);
        if (resume && cfg.resume_from_checkpoint.empty()) cfg.resume_from_checkpoint = "auto";
        for (const auto& w : cfg.warnings) std::fprintf(stderr, "limarp-train: warning: %s\n", w.c_str());
        if (print_config) {
            std::printf("%s", train::to_yaml(cfg).c_str());
            return 0;
        }
        cfg.validate();
        return dispatch(cfg, ro);
    });
}
