// bench_train_cpu: LoRA training step speed and memory of a random Mistral-7B-shaped model on the
// CPU backend (frozen bf16 / int8 / q8_0 base generated here, no download).
//
//   bench_train_cpu [--layers N] [--seq T[,T2,...]] [--quant none|int8|q8_0] [--lora-r R]
//                   [--lora-alpha A] [--dropout P] [--steps S] [--threads N] [--d-model D]
//                   [--d-ff F] [--vocab V] [--heads H] [--kv-heads K] [--window W] [--seed N]
//
// Defaults: Mistral-7B shapes (d_model 4096, d_ff 14336, 32 heads, 8 KV heads, vocab 32000,
// window 4096; --window 0 = full attention), 2 layers, seq 1024, int8 base, r 256, alpha 16,
// LoRA dropout 0.05 (the LimaRP run's), 1 step.
//
// The model is built once: random bf16 weights, each projection quantized at load for int8/q8_0
// (the embeddings and lm_head stay bf16). Then, per sequence length: a fresh PEFT-initialised
// adapter (A kaiming-uniform(a = sqrt 5) from --seed, B zero, scale alpha / r) on all seven
// projections of every layer, a fresh AdamW and LossWorkspace, and S steps of
// `train::loss_and_lora_grads` on random token ids + one AdamW update of the LoRA factors.
// B = 0 at the first step does not change the work: every LoRA product is still computed.
//
// One JSON line per sequence length on stdout; progress on stderr. Clean memory figures come from
// one sequence length per process:
//   for t in 512 1024 2048; do bench_train_cpu --layers 2 --seq $t --quant int8 --steps 2; done
// Memory (the *_gb fields are GiB, as in bench_model_cpu):
//   peak_rss_gb      getrusage high-water mark of the process (cumulative over --seq values)
//   seq_peak_rss_gb  VmHWM after resetting it (/proc/self/clear_refs) just before this sequence
//                    length; rss_delta_gb = seq_peak_rss_gb - model_rss_gb (the RSS once the
//                    model is built, before any adapter). With several --seq values the LoRA
//                    tensors and gradients (allocated at the first one) and the per-thread scratch
//                    of earlier, longer sequences are kept, so only ascending lists (or one value
//                    per process) give clean deltas.
//   *_bytes          sizes computed from the tensors: weights (projections + embeddings + lm_head,
//                    norms excluded), LoRA factors / gradients / AdamW moments (f32), the
//                    LossWorkspace checkpoints [layers, T, d] and residual buffers, the block
//                    working set (MistralBlock::Saved as allocated after the step) and estimates of
//                    the LoRA scratch (z, dz [T, r] + the dropped input [T, d_ff]) and the lm_head
//                    logits chunk [min(256, T), vocab].
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "random_weights.hpp"

#include "limarp/core/thread_pool.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/model/adapters.hpp"
#include "limarp/model/mistral_model.hpp"
#include "limarp/train/adamw.hpp"
#include "limarp/train/grad.hpp"

using namespace limarp;
using limarp::bench::peak_rss_gb;
using limarp::bench::random_weight;

namespace {
// A "VmRSS:" / "VmHWM:" field of /proc/self/status in GB (GiB), or -1.
double proc_status_gb(const char* field) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const std::size_t n = std::strlen(field);
    while (std::getline(f, line))
        if (line.compare(0, n, field) == 0) return std::atof(line.c_str() + n) / (1024.0 * 1024.0);
    return -1.0;
}
// Resets the peak-RSS mark (Linux >= 4.0); returns whether it could.
bool reset_peak_rss() {
    std::ofstream f("/proc/self/clear_refs");
    if (!f) return false;
    f << "5";
    f.flush();
    return static_cast<bool>(f);
}
double secs(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}
std::int64_t weight_bytes(const Weight& w) { return numel(w.shape) * static_cast<std::int64_t>(dtype_size(w.dtype)); }
template <class T>
std::int64_t tbytes(const Tensor<T>& t) {
    return t.size() * static_cast<std::int64_t>(sizeof(T));
}

struct Options {
    MistralConfig cfg;
    std::vector<std::int64_t> seqs{1024};
    std::string quant = "int8";
    std::int64_t lora_r = 256, steps = 1;
    double lora_alpha = 16, dropout = 0.05;
    std::uint64_t seed = 42;
};

/// One adapted projection's trainable factors (the trainer's master tensors; the layer holds views).
struct Factors {
    std::string module;
    Tensor<float> A, B;
};

template <class Proj>
int run(const Options& o);
}  // namespace

int main(int argc, char** argv) {
    Options o;
    o.cfg.vocab = 32000;  // Mistral-7B-v0.1 shapes otherwise (MistralConfig's defaults)
    for (int i = 1; i < argc; i += 2) {
        const std::string k = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "bench_train_cpu: option %s needs a value\n", k.c_str());
            return 1;
        }
        const char* val = argv[i + 1];
        const std::int64_t v = std::atoll(val);
        if (k == "--layers") o.cfg.n_layers = v;
        else if (k == "--seq") {
            o.seqs.clear();
            std::stringstream ss(val);
            for (std::string t; std::getline(ss, t, ',');)
                if (!t.empty()) o.seqs.push_back(std::atoll(t.c_str()));
        } else if (k == "--quant") o.quant = val;
        else if (k == "--lora-r") o.lora_r = v;
        else if (k == "--lora-alpha") o.lora_alpha = std::atof(val);
        else if (k == "--dropout") o.dropout = std::atof(val);
        else if (k == "--steps") o.steps = v;
        else if (k == "--threads") setenv("LIMARP_THREADS", val, 1);
        else if (k == "--d-model") o.cfg.d_model = v;
        else if (k == "--d-ff") o.cfg.d_ff = v;
        else if (k == "--vocab") o.cfg.vocab = v;
        else if (k == "--heads") o.cfg.n_heads = v;
        else if (k == "--kv-heads") o.cfg.n_kv_heads = v;
        else if (k == "--window") o.cfg.window = v > 0 ? std::optional<std::int64_t>(v) : std::nullopt;
        else if (k == "--seed") o.seed = static_cast<std::uint64_t>(v);
        else {
            std::fprintf(stderr, "bench_train_cpu: unknown option %s\n", k.c_str());
            return 1;
        }
    }
    o.cfg.head_dim = o.cfg.d_model / o.cfg.n_heads;
    if (o.seqs.empty() || o.steps < 1 || o.lora_r < 1 || o.cfg.n_layers < 1 || o.cfg.head_dim * o.cfg.n_heads != o.cfg.d_model ||
        o.cfg.n_heads % o.cfg.n_kv_heads != 0) {
        std::fprintf(stderr, "bench_train_cpu: bad shape or options (need --seq, --steps >= 1, --lora-r >= 1, "
                             "--heads dividing --d-model, --kv-heads dividing --heads)\n");
        return 1;
    }
    for (auto t : o.seqs)
        if (t < 2) {
            std::fprintf(stderr, "bench_train_cpu: --seq values must be >= 2 (a loss needs a target)\n");
            return 1;
        }
    try {
        if (o.quant == "int8") return run<QuantizedLinear<Int8Rowwise, Cpu<>>>(o);
        if (o.quant == "q8_0") return run<QuantizedLinear<Q8_0, Cpu<>>>(o);
        if (o.quant == "none") return run<DenseLinear<Cpu<>>>(o);
        std::fprintf(stderr, "bench_train_cpu: --quant %s is not one of none, int8, q8_0\n", o.quant.c_str());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_train_cpu: %s\n", e.what());
        return 1;
    }
}

namespace {
template <class Proj>
int run(const Options& o) {
    using Model = MistralModel<Cpu<>, MistralBlock<Cpu<>, Lora<Proj>>>;
    if constexpr (!train::supports_lora_grads_v<Model>) {
        std::fprintf(stderr,
                     "bench_train_cpu: --quant %s cannot train in this build: the base projection has no backward "
                     "(forward_train/backward, the TrainableLinear concept); use --quant none\n",
                     o.quant.c_str());
        return 2;
    } else {
        const MistralConfig& cfg = o.cfg;
        const auto t0 = std::chrono::steady_clock::now();
        LoadContext ctx([](const std::string& name, const Shape& s) { return random_weight(name, s); },
                        [](const std::string&) { return true; });
        Model model(cfg, ctx);
        std::int64_t weights = weight_bytes(model.embedding().weight()) + weight_bytes(model.lm_head().weight());
        for_each_projection(model, [&](auto& p) {
            if constexpr (requires { p.base().weight().nbytes(); })
                weights += static_cast<std::int64_t>(p.base().weight().nbytes());
            else
                weights += weight_bytes(p.base().weight());
        });
        const double model_rss = proc_status_gb("VmRSS:");
        std::fprintf(stderr, "bench_train_cpu: built %lld layers (%s base, %.2f GB of weights) in %.1f s, RSS %.2f GB\n",
                     static_cast<long long>(cfg.n_layers), o.quant.c_str(), static_cast<double>(weights) / 1e9,
                     secs(t0, std::chrono::steady_clock::now()), model_rss);

        // LoRA master tensors (allocated once, re-initialised per sequence length), attached as views.
        std::vector<Factors> factors;
        for_each_projection(model, [&](auto& p) {
            factors.push_back({p.module(), Tensor<float>({o.lora_r, p.in_features()}),
                               Tensor<float>({p.out_features(), o.lora_r})});
        });
        const std::string adapter = "default";
        const float scale = static_cast<float>(o.lora_alpha / static_cast<double>(o.lora_r));
        {
            std::size_t i = 0;
            for_each_projection(model, [&](auto& p) {
                Factors& f = factors[i++];
                LoraFactors lf;
                lf.adapter = adapter;
                lf.A.data = f.A.data(), lf.A.dtype = DType::F32, lf.A.shape = f.A.shape(), lf.A.name = f.module + ".lora_A";
                lf.B.data = f.B.data(), lf.B.dtype = DType::F32, lf.B.shape = f.B.shape(), lf.B.name = f.module + ".lora_B";
                lf.file_scale = scale;
                p.attach(std::move(lf));
            });
        }
        std::int64_t lora_params = 0;
        for (const auto& f : factors) lora_params += f.A.size() + f.B.size();
        const bool can_reset = reset_peak_rss();
        if (!can_reset)
            std::fprintf(stderr, "bench_train_cpu: cannot reset the peak RSS (/proc/self/clear_refs): seq_peak_rss_gb is "
                                 "cumulative\n");

        for (const std::int64_t T : o.seqs) {
            // Fresh PEFT init (same recipe as train::LoraParameters::init_peft: 24-bit uniforms, row-major).
            std::mt19937_64 rng(o.seed);
            for (auto& f : factors) {
                const float bound = 1.0f / std::sqrt(static_cast<float>(f.A.dim(1)));
                for (std::int64_t i = 0; i < f.A.size(); ++i)
                    f.A[i] = bound * (2.0f * static_cast<float>(rng() >> 40) * (1.0f / 16777216.0f) - 1.0f);
                std::fill(f.B.data(), f.B.data() + f.B.size(), 0.0f);
            }
            train::zero_lora_grads(model);
            train::AdamW opt(train::AdamWOptions{.lr = 2e-5, .weight_decay = 0.0});
            train::LossWorkspace<Model> ws;
            std::vector<std::int32_t> ids(static_cast<std::size_t>(T));
            std::mt19937 idrng(static_cast<std::uint32_t>(o.seed ^ static_cast<std::uint64_t>(T)));
            std::uniform_int_distribution<std::int32_t> dist(0, static_cast<std::int32_t>(cfg.vocab - 1));
            for (auto& id : ids) id = dist(idrng);

            const double base_rss = proc_status_gb("VmRSS:");
            if (can_reset) reset_peak_rss();
            std::vector<double> step_s, grad_s, opt_s;
            double loss_first = 0, loss_last = 0;
            for (std::int64_t s = 0; s < o.steps; ++s) {
                const auto a = std::chrono::steady_clock::now();
                train::LossOptions lo;
                lo.lora_dropout = static_cast<float>(o.dropout);
                lo.dropout_seed = o.seed * 1000003u + static_cast<std::uint64_t>(s);
                const auto r = train::loss_and_lora_grads(model, ids, lo, ws);
                const auto b = std::chrono::steady_clock::now();
                std::vector<train::ParamSlot> slots;
                const auto grads = train::lora_grad_tensors(model, adapter);
                if (grads.size() != 2 * factors.size()) throw std::runtime_error("missing LoRA gradients");
                for (std::size_t i = 0; i < factors.size(); ++i) {
                    auto& f = factors[i];
                    slots.push_back({f.module + ".lora_A", f.A.data(), const_cast<float*>(grads[2 * i].second->data()), f.A.size()});
                    slots.push_back({f.module + ".lora_B", f.B.data(), const_cast<float*>(grads[2 * i + 1].second->data()), f.B.size()});
                }
                train::clip_grad_norm(slots, 1.0);
                opt.step(slots);
                train::zero_lora_grads(model);
                const auto c = std::chrono::steady_clock::now();
                grad_s.push_back(secs(a, b));
                opt_s.push_back(secs(b, c));
                step_s.push_back(secs(a, c));
                if (s == 0) loss_first = r.loss;
                loss_last = r.loss;
                std::fprintf(stderr, "bench_train_cpu: seq %lld step %lld/%lld: loss %.4f, forward+backward %.2f s, "
                                     "clip+AdamW %.2f s (%.1f tok/s)\n",
                             static_cast<long long>(T), static_cast<long long>(s + 1), static_cast<long long>(o.steps),
                             r.loss, grad_s.back(), opt_s.back(), static_cast<double>(T) / step_s.back());
            }
            const double seq_peak = proc_status_gb("VmHWM:");

            auto mean_rest = [](const std::vector<double>& v) -> nlohmann::ordered_json {
                if (v.size() < 2) return nullptr;
                double sum = 0;
                for (std::size_t i = 1; i < v.size(); ++i) sum += v[i];
                return sum / static_cast<double>(v.size() - 1);
            };
            const nlohmann::ordered_json rest = mean_rest(step_s);
            const double typical = rest.is_null() ? step_s[0] : rest.template get<double>();

            // Sizes from the tensors themselves.
            const std::int64_t lora_bytes = lora_params * 4;
            std::int64_t grads_bytes = 0, adam_bytes = 0;
            for_each_projection(model, [&](auto& p) {
                for (const auto& g : std::as_const(p).grads()) grads_bytes += tbytes(g.A) + tbytes(g.B);
            });
            for (const auto& st : opt.state()) adam_bytes += tbytes(st.exp_avg) + tbytes(st.exp_avg_sq);
            const std::int64_t ckpt_bytes = tbytes(ws.checkpoints);
            const std::int64_t stream_bytes = tbytes(ws.x) + tbytes(ws.h) + tbytes(ws.dx) + tbytes(ws.dh);
            const auto& sv = ws.saved;
            const std::int64_t attn_bytes = tbytes(sv.attn.q) + tbytes(sv.attn.k) + tbytes(sv.attn.v) + tbytes(sv.attn.o) +
                                            tbytes(sv.attn.lse) + tbytes(sv.attn.d_o) + tbytes(sv.attn.dq) +
                                            tbytes(sv.attn.dk) + tbytes(sv.attn.dv) + tbytes(sv.attn.dx);
            const std::int64_t mlp_bytes = tbytes(sv.mlp.gate) + tbytes(sv.mlp.up) + tbytes(sv.mlp.act) +
                                           tbytes(sv.mlp.d_act) + tbytes(sv.mlp.dx);
            const std::int64_t block_bytes =
                tbytes(sv.h1) + tbytes(sv.x_mid) + tbytes(sv.h2) + tbytes(sv.a) + tbytes(sv.dh) + attn_bytes + mlp_bytes;
            const std::int64_t lora_scratch_est =
                4 * (2 * T * o.lora_r + (o.dropout > 0 ? T * std::max(cfg.d_model, cfg.d_ff) : 0));
            const std::int64_t logits_est = 4 * std::min<std::int64_t>(256, T) * cfg.vocab;
            const std::int64_t train_total =
                lora_bytes + grads_bytes + adam_bytes + ckpt_bytes + stream_bytes + block_bytes + lora_scratch_est + logits_est;

            nlohmann::ordered_json out{{"bench", "train_cpu"},
                               {"layers", cfg.n_layers},
                               {"d_model", cfg.d_model},
                               {"d_ff", cfg.d_ff},
                               {"vocab", cfg.vocab},
                               {"heads", cfg.n_heads},
                               {"kv_heads", cfg.n_kv_heads},
                               {"window", cfg.window ? nlohmann::ordered_json(*cfg.window) : nlohmann::ordered_json(nullptr)},
                               {"seq", T},
                               {"quant", o.quant},
                               {"lora_r", o.lora_r},
                               {"lora_alpha", o.lora_alpha},
                               {"dropout", o.dropout},
                               {"threads", ThreadPool::global().size()},
                               {"steps", o.steps},
                               {"first_step_s", step_s[0]},
                               {"mean_step_s", rest},
                               {"first_grad_s", grad_s[0]},
                               {"mean_grad_s", mean_rest(grad_s)},
                               {"first_adamw_s", opt_s[0]},
                               {"tokens_per_s", static_cast<double>(T) / typical},
                               {"loss_first", loss_first},
                               {"loss_last", loss_last},
                               {"lora_params", lora_params},
                               {"peak_rss_gb", peak_rss_gb()},
                               {"model_rss_gb", model_rss},
                               {"seq_base_rss_gb", base_rss},
                               {"seq_peak_rss_gb", seq_peak},
                               {"rss_delta_gb", seq_peak - model_rss},
                               {"peak_reset", can_reset},
                               {"weights_bytes", weights},
                               {"lora_params_bytes", lora_bytes},
                               {"lora_grads_bytes", grads_bytes},
                               {"adamw_state_bytes", adam_bytes},
                               {"checkpoints_bytes", ckpt_bytes},
                               {"stream_bytes", stream_bytes},
                               {"block_saved_bytes", block_bytes},
                               {"lora_scratch_bytes_est", lora_scratch_est},
                               {"logits_chunk_bytes_est", logits_est},
                               {"train_state_gb_est", static_cast<double>(train_total) / (1024.0 * 1024.0 * 1024.0)}};
            std::printf("%s\n", out.dump().c_str());
            std::fflush(stdout);
        }
        return 0;
    }
}
}  // namespace
