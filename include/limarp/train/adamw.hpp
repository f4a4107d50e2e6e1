#pragma once
/// \file adamw.hpp
/// \brief `AdamW` exactly as `torch.optim.AdamW` (single-tensor path, the one PyTorch uses for
/// CPU tensors), with f32 parameters and state, state save/load for bit-for-bit resume; global
/// gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`; gradient-accumulation helpers.
///
/// One step, per parameter tensor p with gradient g (t = the tensor's step count after the
/// increment; scalars are Python floats (double) in torch and are rounded to f32 where torch
/// passes them to a float32 tensor op; fma = fused multiply-add, one rounding):
/// \verbatim
/// t += 1
/// p  = p * f32(1 - lr * weight_decay)                 # decoupled weight decay, before Adam
/// m  = fma(w, g - m, m)             with w = f32(1 - beta1), when w < 0.5
///      fma(w - 1, g - m, g)         otherwise         # exp_avg.lerp_(g, 1 - beta1)
/// v  = fma(f32(1 - beta2) * g, g, v * f32(beta2))     # exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
/// bc1 = 1 - beta1 ** t ; bc2 = 1 - beta2 ** t         # double
/// step_size = lr / bc1 ; bc2_sqrt = bc2 ** 0.5        # double
/// denom = sqrt(v) / f32(bc2_sqrt) + f32(eps)          # f32
/// p  = p + f32(-step_size) * m / denom                # param.addcdiv_(m, denom, value=-step_size)
/// \endverbatim
/// Every other f32 operation is rounded separately, left to right. This is what PyTorch's CPU
/// kernels compute (their vectorised lerp and addcmul are fused multiply-adds): the test
/// tests/train/test_adamw.cpp compares parameters and both moments bit for bit with
/// torch 2.11 (tests/train/data/adamw_torch.json, made by tests/train/tools/make_adamw_ref.py).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/safetensors.hpp"

namespace limarp::train {

/// \cond
namespace detail {
/// Returns `v` unchanged but opaque to the optimiser: the value is rounded to f32 here and no
/// FMA contraction can merge it with the next operation (GCC contracts by default in C++).
inline float opaque(float v) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __asm__("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__("" : "+w"(v));
#else
    volatile float t = v;
    v = t;
#endif
    return v;
}
}  // namespace detail
/// \endcond

/// Hyper-parameters of AdamW (torch.optim.AdamW's defaults).
struct AdamWOptions {
    double lr = 1e-3;            ///< learning rate (step() may override it per step, from a schedule)
    double beta1 = 0.9;          ///< first-moment decay
    double beta2 = 0.999;        ///< second-moment decay
    double eps = 1e-8;           ///< added to the bias-corrected sqrt(v)
    double weight_decay = 0.01;  ///< decoupled weight decay

    /// \throws ArgumentError naming the bad field.
    void validate() const {
        if (!(lr >= 0)) throw ArgumentError("AdamW: learning rate must be >= 0, got " + std::to_string(lr));
        if (!(beta1 >= 0 && beta1 < 1)) throw ArgumentError("AdamW: beta1 must be in [0, 1), got " + std::to_string(beta1));
        if (!(beta2 >= 0 && beta2 < 1)) throw ArgumentError("AdamW: beta2 must be in [0, 1), got " + std::to_string(beta2));
        if (!(eps >= 0)) throw ArgumentError("AdamW: eps must be >= 0, got " + std::to_string(eps));
        if (!(weight_decay >= 0))
            throw ArgumentError("AdamW: weight_decay must be >= 0, got " + std::to_string(weight_decay));
    }
};

/// One trainable f32 tensor as the optimizer sees it: its name, values and gradient.
struct ParamSlot {
    std::string name;          ///< unique name, e.g. "model.layers.0.self_attn.q_proj.lora_A"
    float* param = nullptr;    ///< [size] values, updated in place
    float* grad = nullptr;     ///< [size] gradient (accumulated with +=; clip/scale/zero modify it)
    std::int64_t size = 0;     ///< element count
};

/// The state of one parameter tensor.
struct AdamWState {
    std::string name;         ///< the parameter's name
    Tensor<float> exp_avg;    ///< [size] first moment m
    Tensor<float> exp_avg_sq; ///< [size] second moment v
    std::int64_t step = 0;    ///< updates applied to this tensor
};

/// AdamW over a fixed list of f32 tensors (see the file comment for the exact formula).
/// The state is created by the first step() (or load()); later steps must pass the same
/// tensors (names and sizes) in the same order.
class AdamW {
public:
    /// An optimizer with `opt`. \throws ArgumentError for invalid options.
    explicit AdamW(AdamWOptions opt = {}) : opt_(opt) { opt_.validate(); }

    /// The hyper-parameters.
    const AdamWOptions& options() const noexcept { return opt_; }
    /// Replaces the hyper-parameters (state kept). \throws ArgumentError for invalid options.
    void set_options(const AdamWOptions& opt) {
        opt.validate();
        opt_ = opt;
    }

    /// One update of every tensor of `params` with learning rate `lr` (e.g. from LrSchedule).
    /// \throws ArgumentError when `params` differ (count, names, sizes) from the tensors the
    ///         state was made for, or a pointer is null.
    void step(std::span<const ParamSlot> params, double lr) {
        check_or_init(params);
        const double b1 = opt_.beta1, b2 = opt_.beta2;
        const float decay = static_cast<float>(1.0 - lr * opt_.weight_decay);
        const float w1 = static_cast<float>(1.0 - b1);
        const bool small = std::fabs(w1) < 0.5f;  // torch's is_lerp_weight_small
        const float w1m1 = w1 - 1.0f;
        const float fb2 = static_cast<float>(b2);
        const float w2 = static_cast<float>(1.0 - b2);
        const float feps = static_cast<float>(opt_.eps);
        for (std::size_t k = 0; k < params.size(); ++k) {
            const ParamSlot& ps = params[k];
            AdamWState& st = state_[k];
            st.step += 1;
            const double t = static_cast<double>(st.step);
            const double bc1 = 1.0 - std::pow(b1, t);
            const double bc2 = 1.0 - std::pow(b2, t);
            const double step_size = lr / bc1;
            const float neg_step = static_cast<float>(-step_size);
            const float bc2_sqrt = static_cast<float>(std::pow(bc2, 0.5));
            float* p = ps.param;
            const float* g = ps.grad;
            float* m = st.exp_avg.data();
            float* v = st.exp_avg_sq.data();
            const bool wd = opt_.weight_decay != 0;
            for (std::int64_t i = 0; i < ps.size; ++i) {
                using detail::opaque;
                float pi = p[i];
                if (wd) pi = opaque(pi * decay);
                const float gi = g[i];
                const float diff = opaque(gi - m[i]);
                const float mi = small ? std::fma(w1, diff, m[i]) : std::fma(w1m1, diff, gi);
                const float vi = std::fma(opaque(w2 * gi), gi, opaque(v[i] * fb2));
                const float denom = opaque(opaque(std::sqrt(vi) / bc2_sqrt) + feps);
                pi = opaque(pi + opaque(opaque(neg_step * mi) / denom));
                m[i] = mi;
                v[i] = vi;
                p[i] = pi;
            }
        }
    }

    /// One update with the learning rate of options().
    void step(std::span<const ParamSlot> params) { step(params, opt_.lr); }

    /// The per-tensor state (empty before the first step or load).
    const std::vector<AdamWState>& state() const noexcept { return state_; }
    /// Steps taken (the step count of the first tensor; 0 before any).
    std::int64_t steps() const noexcept { return state_.empty() ? 0 : state_.front().step; }
    /// Forgets the state (the next step() starts from zero moments).
    void reset() noexcept { state_.clear(); }

    /// Adds the state to `w`: per tensor `PREFIX<name>.exp_avg`, `PREFIX<name>.exp_avg_sq` (F32,
    /// [size]) and `PREFIX<name>.step` (I64, []), and the options and tensor order as metadata
    /// `PREFIXoptions` / `PREFIXorder` (JSON). Bit-exact: load() restores the same bits.
    /// The moments are borrowed, not copied (a 7B adapter's m and v are gigabytes).
    /// \pre the optimizer is neither stepped nor destroyed before `w` has written its file.
    void save(io::SafeTensorsWriter& w, std::string_view prefix = "adamw.") const {
        const std::string p(prefix);
        nlohmann::json order = nlohmann::json::array();
        for (const auto& s : state_) {
            const auto bytes = static_cast<std::size_t>(s.exp_avg.size()) * sizeof(float);
            w.add_borrowed(p + s.name + ".exp_avg", DType::F32, s.exp_avg.shape(), s.exp_avg.data(), bytes);
            w.add_borrowed(p + s.name + ".exp_avg_sq", DType::F32, s.exp_avg_sq.shape(), s.exp_avg_sq.data(), bytes);
            const std::int64_t step = s.step;
            w.add(p + s.name + ".step", DType::I64, Shape{}, &step, sizeof(step));
            order.push_back(s.name);
        }
        nlohmann::json o = {{"lr", opt_.lr},
                            {"beta1", opt_.beta1},
                            {"beta2", opt_.beta2},
                            {"eps", opt_.eps},
                            {"weight_decay", opt_.weight_decay}};
        w.set_metadata(p + "options", o.dump());
        w.set_metadata(p + "order", order.dump());
    }

    /// Restores the state (and options) written by save() from `f`.
    /// \throws FormatError naming the file and tensor when something is missing or malformed.
    void load(const io::SafeTensorsFile& f, std::string_view prefix = "adamw.") {
        const std::string p(prefix);
        const auto& md = f.metadata();
        const auto oit = md.find(p + "order");
        const auto pit = md.find(p + "options");
        if (oit == md.end() || pit == md.end())
            throw FormatError(f.file() + ": no AdamW state (metadata " + p + "order / " + p + "options missing)");
        std::vector<AdamWState> st;
        AdamWOptions opt;
        try {
            const auto order = nlohmann::json::parse(oit->second);
            const auto o = nlohmann::json::parse(pit->second);
            opt.lr = o.at("lr").get<double>();
            opt.beta1 = o.at("beta1").get<double>();
            opt.beta2 = o.at("beta2").get<double>();
            opt.eps = o.at("eps").get<double>();
            opt.weight_decay = o.at("weight_decay").get<double>();
            for (const auto& n : order) {
                AdamWState s;
                s.name = n.get<std::string>();
                st.push_back(std::move(s));
            }
        } catch (const nlohmann::json::exception& e) {
            throw FormatError(f.file() + ": AdamW metadata is malformed: " + e.what());
        }
        for (auto& s : st) {
            const auto& m = f.get(p + s.name + ".exp_avg");
            const auto& v = f.get(p + s.name + ".exp_avg_sq");
            const auto& t = f.get(p + s.name + ".step");
            if (m.dtype != DType::F32 || v.dtype != DType::F32 || m.shape.size() != 1 || v.shape != m.shape)
                throw FormatError(f.file() + ": AdamW state of " + s.name + " must be two F32 vectors of equal size");
            if (t.dtype != DType::I64 || !t.shape.empty())
                throw FormatError(f.file() + ": tensor " + t.name + " must be an I64 scalar");
            s.exp_avg = Tensor<float>(m.shape);
            s.exp_avg_sq = Tensor<float>(v.shape);
            std::memcpy(s.exp_avg.data(), m.data, m.nbytes);
            std::memcpy(s.exp_avg_sq.data(), v.data, v.nbytes);
            std::memcpy(&s.step, t.data, sizeof(s.step));
        }
        opt.validate();
        opt_ = opt;
        state_ = std::move(st);
    }

private:
    void check_or_init(std::span<const ParamSlot> params) {
        for (const auto& p : params)
            if ((!p.param || !p.grad) && p.size > 0) throw ArgumentError("AdamW: parameter " + p.name + " has a null pointer");
        if (state_.empty()) {
            for (const auto& p : params) {
                AdamWState s;
                s.name = p.name;
                s.exp_avg = Tensor<float>({p.size});
                s.exp_avg_sq = Tensor<float>({p.size});
                state_.push_back(std::move(s));
            }
            return;
        }
        if (params.size() != state_.size())
            throw ArgumentError("AdamW: step() got " + std::to_string(params.size()) + " tensors, the state has " +
                                std::to_string(state_.size()));
        for (std::size_t k = 0; k < params.size(); ++k)
            if (params[k].name != state_[k].name || params[k].size != state_[k].exp_avg.size())
                throw ArgumentError("AdamW: tensor " + std::to_string(k) + " is " + params[k].name + " [" +
                                    std::to_string(params[k].size) + "], the state holds " + state_[k].name + " [" +
                                    std::to_string(state_[k].exp_avg.size()) + "]");
    }

    AdamWOptions opt_;
    std::vector<AdamWState> state_;
};

/// The global L2 norm of all gradients (accumulated in double).
inline double grad_norm(std::span<const ParamSlot> params) {
    double sum = 0;
    for (const auto& p : params)
        for (std::int64_t i = 0; i < p.size; ++i) sum += static_cast<double>(p.grad[i]) * p.grad[i];
    return std::sqrt(sum);
}

/// Clips the gradients as `torch.nn.utils.clip_grad_norm_(params, max_norm)`: with
/// `total` = the global L2 norm, every gradient is multiplied by
/// `min(1, f32(max_norm) / (f32(total) + 1e-6))`. Returns `total` (the norm before clipping).
/// Differences from torch: the norm is accumulated in double (torch: f32, its own order), a
/// factor of 1 leaves the gradients untouched, and a non-finite norm leaves them untouched
/// (torch would multiply them by NaN); check the returned value to skip such a step.
/// `max_norm <= 0` only measures.
inline double clip_grad_norm(std::span<const ParamSlot> params, double max_norm) {
    const double total = grad_norm(params);
    if (max_norm <= 0 || !std::isfinite(total)) return total;
    const float coef = static_cast<float>(max_norm) / (static_cast<float>(total) + 1e-6f);
    if (coef < 1.0f)
        for (const auto& p : params)
            for (std::int64_t i = 0; i < p.size; ++i) p.grad[i] *= coef;
    return total;
}

/// Sets every gradient to zero (before accumulating the next optimizer step).
inline void zero_grads(std::span<const ParamSlot> params) {
    for (const auto& p : params)
        if (p.size > 0) std::memset(p.grad, 0, static_cast<std::size_t>(p.size) * sizeof(float));
}

/// Multiplies every gradient by `factor` (e.g. 1 / micro-batches accumulated).
inline void scale_grads(std::span<const ParamSlot> params, float factor) {
    for (const auto& p : params)
        for (std::int64_t i = 0; i < p.size; ++i) p.grad[i] *= factor;
}

/// Counts micro-batches of gradient accumulation: gradients of `steps` micro-batches are summed
/// (parameter grads `+=`), then one optimizer step uses their mean. Either scale each
/// micro-batch's loss by loss_scale() or call scale_grads(params, loss_scale()) before the
/// step; call zero_grads() after it.
class GradientAccumulation {
public:
    /// Accumulation over `steps` micro-batches. \throws ArgumentError when steps < 1.
    explicit GradientAccumulation(std::int64_t steps) : steps_(steps) {
        if (steps < 1) throw ArgumentError("gradient_accumulation_steps must be >= 1, got " + std::to_string(steps));
    }
    /// Micro-batches per optimizer step.
    std::int64_t steps() const noexcept { return steps_; }
    /// 1 / steps().
    float loss_scale() const noexcept { return 1.0f / static_cast<float>(steps_); }
    /// Records one micro-batch; returns true when an optimizer step is due (then the count restarts).
    bool micro_step() noexcept {
        if (++pending_ < steps_) return false;
        pending_ = 0;
        return true;
    }
    /// Micro-batches recorded since the last due step.
    std::int64_t pending() const noexcept { return pending_; }
    /// Restarts the count (e.g. at an epoch end after stepping on a partial accumulation).
    void reset() noexcept { pending_ = 0; }

private:
    std::int64_t steps_;
    std::int64_t pending_ = 0;
};

}  // namespace limarp::train
