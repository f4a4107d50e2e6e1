// limarp-pretrain: trains a small Mistral-architecture model from scratch on plain text
// (full-parameter training on the CPU), and writes it as a Hugging Face model folder that the
// other programs (and transformers) load: config.json, model.safetensors, tokenizer.model.
//
//   limarp-pretrain --text corpus.txt [--text more.txt ...] [--eval-text held_out.txt]
//                   --tokenizer tokenizer.model --out DIR
//                   [--d-model 256] [--layers 4] [--heads 8] [--kv-heads 2] [--d-ff 768]
//                   [--window 128] [--seq 256] [--batch 4] [--steps 300] [--lr 2e-3]
//                   [--warmup 20] [--weight-decay 0.01] [--max-grad-norm 1] [--seed 1]
//                   [--eval-every 50] [--eval-windows 8] [--dtype f32|bf16] [--threads N]
//                   [--doc-sep SEP]
//
// Data: the files are tokenized whole (no BOS); every training sequence is BOS followed by
// seq - 1 consecutive tokens from a random offset (seeded), so windows cross paragraph and
// chapter boundaries as in usual LM pretraining. With --doc-sep SEP (e.g. a blank line, "\n\n"),
// every file (training and eval) is split at each SEP into documents instead; the separators
// are dropped, and every non-blank document is tokenized on its own (no BOS) and followed by
// the tokenizer's EOS, the usual document separator of packed pretraining. So EOS is an ordinary
// trained token: a fine-tune that appends EOS to its examples (and LoRA, which leaves the
// lm_head frozen) can then learn where to end instead of needing an untrained output row.
// Model: MistralForCausalLM shapes from the flags (head_dim = d_model / heads, untied lm_head,
// rope_theta 10000, sliding window --window), initialised as transformers does (N(0, 0.02)
// weights, norms 1, `--seed`). Optimizer: AdamW (betas 0.9/0.95), linear warmup then cosine
// decay to 0 (transformers' schedule), global-norm clipping,
// --batch sequences per update (gradient accumulation, no padding). Gradient checkpointing
// per block as limarp-train. Writes into --out: metrics.csv/jsonl (train loss, eval loss every
// --eval-every updates on the first --eval-windows windows of --eval-text), loss.png (gnuplot),
// the model files. A progress bar with tokens/s and ETA goes to stderr.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/program.hpp"
#include "common/tokenizer_loading.hpp"
#include "limarp/core/error.hpp"
#include "limarp/layers/trainable.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/model/parameters.hpp"
#include "limarp/train/adamw.hpp"
#include "limarp/train/grad.hpp"
#include "limarp/train/lr_schedule.hpp"
#include "limarp/train/metrics.hpp"
#include "limarp/train/progress.hpp"

using namespace limarp;
namespace fs = std::filesystem;

namespace {

using FullBlock = MistralBlock<Cpu<>, FullLinear<Cpu<>>, SwiGluMlp<Cpu<>, FullLinear<Cpu<>>>, FullRmsNorm<Cpu<>>>;
using FullModel = MistralModel<Cpu<>, FullBlock, FullLinear<Cpu<>>, FullEmbedding<Cpu<>>>;

struct Options {
    std::vector<std::string> text, eval_text;
    std::string tokenizer, out;
    std::string doc_sep;  // empty: files tokenized whole
    std::int64_t d_model = 256, layers = 4, heads = 8, kv_heads = 2, d_ff = 768, window = 128;
    std::int64_t seq = 256, batch = 4, steps = 300, warmup = 20, eval_every = 50, eval_windows = 8;
    double lr = 2e-3, weight_decay = 0.01, max_grad_norm = 1.0;
    std::uint64_t seed = 1;
    std::string dtype = "f32";
    bool quiet = false, no_plot = false;
};

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw IoError(path + ": cannot open file for reading");
    std::ostringstream ss;
    ss << f.rdbuf();
    std::string s = std::move(ss).str();
    if (s.find_first_not_of(" \t\r\n") == std::string::npos) throw ArgumentError(path + ": the file has no text");
    return s;
}

/// The token ids of `files`: each file whole, or (doc_sep non-empty) each document between
/// separators followed by EOS; documents of blanks only are skipped.
std::vector<std::int32_t> tokenize_files(const std::vector<std::string>& files, const text::Tokenizer& tok,
                                         const std::string& doc_sep) {
    std::vector<std::int32_t> ids;
    for (const auto& f : files) {
        const std::string s = read_text(f);
        if (doc_sep.empty()) {
            const auto v = tok.encode(s, {.add_bos = false});
            ids.insert(ids.end(), v.begin(), v.end());
            continue;
        }
        std::size_t pos = 0;
        while (pos <= s.size()) {
            std::size_t end = s.find(doc_sep, pos);
            if (end == std::string::npos) end = s.size();
            const std::string doc = s.substr(pos, end - pos);
            const std::size_t a = doc.find_first_not_of(" \t\r\n");
            if (a != std::string::npos) {
                const std::size_t b = doc.find_last_not_of(" \t\r\n");
                const auto v = tok.encode(doc.substr(a, b - a + 1), {.add_bos = false});
                ids.insert(ids.end(), v.begin(), v.end());
                ids.push_back(tok.eos_id());
            }
            pos = end + doc_sep.size();
        }
    }
    return ids;
}

void validate(const Options& o) {
    auto pos = [](const char* n, std::int64_t v) {
        if (v < 1) throw ArgumentError(std::string("--") + n + " must be >= 1, got " + std::to_string(v));
    };
    pos("d-model", o.d_model), pos("layers", o.layers), pos("heads", o.heads), pos("kv-heads", o.kv_heads);
    pos("d-ff", o.d_ff), pos("window", o.window), pos("seq", o.seq), pos("batch", o.batch), pos("steps", o.steps);
    pos("eval-every", o.eval_every), pos("eval-windows", o.eval_windows);
    if (o.seq < 2) throw ArgumentError("--seq must be >= 2");
    if (o.d_model % o.heads != 0)
        throw ArgumentError("--d-model " + std::to_string(o.d_model) + " is not a multiple of --heads " + std::to_string(o.heads));
    if (o.heads % o.kv_heads != 0)
        throw ArgumentError("--heads " + std::to_string(o.heads) + " is not a multiple of --kv-heads " + std::to_string(o.kv_heads));
    if ((o.d_model / o.heads) % 2 != 0) throw ArgumentError("head_dim = d_model / heads must be even (rotary)");
    if (!(o.lr > 0)) throw ArgumentError("--lr must be > 0");
    if (o.warmup < 0 || o.warmup >= o.steps) throw ArgumentError("--warmup must be in [0, --steps)");
    if (o.dtype != "f32" && o.dtype != "bf16") throw ArgumentError("--dtype: \"" + o.dtype + "\" is not one of f32, bf16");
}

/// Mean loss over the first `n` windows of `ids` (each BOS + seq - 1 tokens).
double eval_loss(FullModel& m, const std::vector<std::int32_t>& ids, std::int64_t seq, std::int64_t n, int bos) {
    double sum = 0;
    std::int64_t count = 0;
    std::vector<std::int32_t> w(static_cast<std::size_t>(seq));
    for (std::int64_t k = 0; k < n; ++k) {
        const std::size_t off = static_cast<std::size_t>(k * (seq - 1));
        if (off + static_cast<std::size_t>(seq - 1) > ids.size()) break;
        w[0] = bos;
        std::copy_n(ids.begin() + static_cast<std::ptrdiff_t>(off), seq - 1, w.begin() + 1);
        const auto r = train::lm_loss(m, w);
        sum += r.loss_sum;
        count += r.n_targets;
    }
    return count ? sum / static_cast<double>(count) : std::nan("");
}

int run(const Options& o) {
    validate(o);
    if (o.text.empty()) throw ArgumentError("give at least one --text FILE");
    const text::Tokenizer tok = programs::load_tokenizer(o.tokenizer);
    const auto t0 = std::chrono::steady_clock::now();
    if (!o.doc_sep.empty() && tok.eos_id() < 0) throw ArgumentError("--doc-sep: the tokenizer has no EOS token");
    const std::vector<std::int32_t> ids = tokenize_files(o.text, tok, o.doc_sep);
    const std::vector<std::int32_t> eval_ids = tokenize_files(o.eval_text, tok, o.doc_sep);
    if (static_cast<std::int64_t>(ids.size()) < o.seq)
        throw ArgumentError("the training text has " + std::to_string(ids.size()) + " tokens, fewer than --seq " +
                            std::to_string(o.seq));
    const double tok_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    MistralConfig cfg;
    cfg.vocab = tok.vocab_size();
    cfg.d_model = o.d_model;
    cfg.d_ff = o.d_ff;
    cfg.n_layers = o.layers;
    cfg.n_heads = o.heads;
    cfg.n_kv_heads = o.kv_heads;
    cfg.head_dim = o.d_model / o.heads;
    cfg.window = o.window;
    cfg.max_position_embeddings = std::max<std::int64_t>(4096, o.seq);
    cfg.bos_token_id = tok.bos_id();
    cfg.eos_token_id = tok.eos_id();
    FullModel model(cfg, random_init_context(o.seed));
    const std::int64_t n_params = parameter_count(model);
    std::fprintf(stderr,
                 "limarp-pretrain: %zu training tokens, %zu eval tokens (tokenized in %.2f s); model %lld parameters "
                 "(d_model %lld, %lld layers, %lld heads / %lld kv, d_ff %lld, window %lld, vocab %lld); %lld updates "
                 "of %lld x %lld tokens\n",
                 ids.size(), eval_ids.size(), tok_s, static_cast<long long>(n_params), static_cast<long long>(o.d_model),
                 static_cast<long long>(o.layers), static_cast<long long>(o.heads), static_cast<long long>(o.kv_heads),
                 static_cast<long long>(o.d_ff), static_cast<long long>(o.window), static_cast<long long>(cfg.vocab),
                 static_cast<long long>(o.steps), static_cast<long long>(o.batch), static_cast<long long>(o.seq));

    std::vector<train::ParamSlot> slots;
    for_each_parameter(model, [&](Param& p) { slots.push_back({p.name, p.value.data(), p.grad.data(), p.value.size()}); });
    train::AdamWOptions aopt;
    aopt.lr = o.lr;
    aopt.beta2 = 0.95;
    aopt.weight_decay = o.weight_decay;
    train::AdamW opt(aopt);
    train::LrSchedule sched;
    sched.kind = train::ScheduleKind::Cosine;
    sched.base_lr = o.lr;
    sched.warmup_steps = o.warmup;
    sched.total_steps = o.steps;

    const fs::path out(o.out);
    fs::create_directories(out);
    train::MetricsLog log = train::MetricsLog::create(out);
    train::LossWorkspace<FullModel> ws;
    std::ostringstream sink;
    train::ProgressOptions popt;
    popt.label = "pretrain";
    train::ProgressBar bar(static_cast<std::uint64_t>(o.steps), popt, o.quiet ? static_cast<std::ostream&>(sink) : std::cerr);
    std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + 1);
    const std::uint64_t max_off = ids.size() - static_cast<std::size_t>(o.seq - 1);
    std::vector<std::int32_t> w(static_cast<std::size_t>(o.seq));
    std::uint64_t tokens = 0;
    const auto t_start = std::chrono::steady_clock::now();
    double last_eval = std::nan("");
    for (std::int64_t step = 0; step < o.steps; ++step) {
        const auto ts = std::chrono::steady_clock::now();
        zero_grads(model);
        double loss = 0;
        for (std::int64_t b = 0; b < o.batch; ++b) {
            const std::uint64_t off = rng() % (max_off + 1);
            w[0] = tok.bos_id();
            std::copy_n(ids.begin() + static_cast<std::ptrdiff_t>(off), o.seq - 1, w.begin() + 1);
            train::LossOptions lo;
            lo.grad_scale = 1.0f / static_cast<float>(o.batch);
            loss += train::loss_and_grads(model, w, lo, ws).loss / static_cast<double>(o.batch);
            tokens += static_cast<std::uint64_t>(o.seq);
        }
        const double gnorm = train::clip_grad_norm(slots, o.max_grad_norm);
        const double lr = sched.lr(step);
        opt.step(slots, lr);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
        train::MetricsRow row;
        row.step = step + 1;
        row.loss = loss;
        row.lr = lr;
        row.grad_norm = gnorm;
        row.tokens_per_s = static_cast<double>(o.batch * o.seq) / dt;
        if (!eval_ids.empty() && ((step + 1) % o.eval_every == 0 || step + 1 == o.steps)) {
            last_eval = eval_loss(model, eval_ids, o.seq, o.eval_windows, tok.bos_id());
            row.eval_loss = last_eval;
        }
        log.append(row);
        char extra[96];
        std::snprintf(extra, sizeof extra, "loss %.3f%s", loss,
                      std::isnan(last_eval) ? "" : (" eval " + std::to_string(last_eval).substr(0, 5)).c_str());
        bar.update(static_cast<std::uint64_t>(step + 1), tokens, extra);
    }
    bar.finish();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    save_model(model, out, o.dtype == "bf16" ? DType::BF16 : DType::F32);
    if (fs::path(o.tokenizer).extension() == ".model")
        fs::copy_file(o.tokenizer, out / "tokenizer.model", fs::copy_options::overwrite_existing);
    if (!o.no_plot) {
        try {
            train::PlotOptions po;
            po.title = "Pretraining (limarp-pretrain)";
            train::plot_loss_curves(out / "loss.png", log.rows(), po);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "limarp-pretrain: warning: no loss plot: %s\n", e.what());
        }
    }
    nlohmann::json summary;
    summary["out"] = out.string();
    summary["parameters"] = n_params;
    summary["steps"] = o.steps;
    summary["tokens"] = tokens;
    summary["seconds"] = secs;
    summary["tokens_per_s"] = static_cast<double>(tokens) / secs;
    summary["final_loss"] = *log.rows().back().loss;
    if (!std::isnan(last_eval)) summary["eval_loss"] = last_eval;
    std::printf("%s\n", summary.dump().c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return programs::run_main("limarp-pretrain", [&] {
        CLI::App app{"Trains a small Mistral-architecture model from scratch on plain text (full-parameter, CPU) and "
                     "writes a Hugging Face model folder (config.json, model.safetensors, tokenizer.model)."};
        Options o;
        int threads = 0;
        app.add_option("--text", o.text, "training text file (UTF-8; repeatable)")->required()->check(CLI::ExistingFile);
        app.add_option("--eval-text", o.eval_text, "held-out text file for the eval loss (repeatable)")->check(CLI::ExistingFile);
        app.add_option("--tokenizer", o.tokenizer, "tokenizer.model, tokenizer.json or a folder")->required();
        app.add_option("--out", o.out, "output model folder")->required();
        app.add_option("--d-model", o.d_model, "hidden size")->capture_default_str();
        app.add_option("--layers", o.layers, "decoder layers")->capture_default_str();
        app.add_option("--heads", o.heads, "attention heads")->capture_default_str();
        app.add_option("--kv-heads", o.kv_heads, "key/value heads (grouped-query attention)")->capture_default_str();
        app.add_option("--d-ff", o.d_ff, "feed-forward size")->capture_default_str();
        app.add_option("--window", o.window, "sliding attention window (tokens)")->capture_default_str();
        app.add_option("--seq", o.seq, "tokens per training sequence (BOS included)")->capture_default_str();
        app.add_option("--batch", o.batch, "sequences per update")->capture_default_str();
        app.add_option("--steps", o.steps, "optimizer updates")->capture_default_str();
        app.add_option("--lr", o.lr, "peak learning rate (cosine decay after warmup)")->capture_default_str();
        app.add_option("--warmup", o.warmup, "warmup updates")->capture_default_str();
        app.add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
        app.add_option("--max-grad-norm", o.max_grad_norm, "global gradient-norm clipping")->capture_default_str();
        app.add_option("--seed", o.seed, "seed of the initialisation and the data order")->capture_default_str();
        app.add_option("--eval-every", o.eval_every, "updates between eval losses")->capture_default_str();
        app.add_option("--eval-windows", o.eval_windows, "windows of --eval-text scored per eval")->capture_default_str();
        app.add_option("--doc-sep", o.doc_sep,
                       "split the texts into documents at this string (e.g. $'\\n\\n' for paragraphs), each "
                       "followed by EOS (default: files tokenized whole, no EOS)");
        app.add_option("--dtype", o.dtype, "stored weights: f32 | bf16")->capture_default_str();
        app.add_option("--threads", threads, "worker threads (default: all cores; or LIMARP_THREADS)");
        app.add_flag("--quiet", o.quiet, "no progress bar");
        app.add_flag("--no-plot", o.no_plot, "do not draw loss.png with gnuplot");
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        if (threads > 0) setenv("LIMARP_THREADS", std::to_string(threads).c_str(), 1);
        return run(o);
    });
}
