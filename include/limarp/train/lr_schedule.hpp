#pragma once
/// \file lr_schedule.hpp
/// \brief `LrSchedule`: learning-rate schedules with warmup, the same numbers as Hugging Face
/// transformers' `get_constant_schedule`, `get_constant_schedule_with_warmup`,
/// `get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup` (the `lr_scheduler`
/// names `constant`, `constant_with_warmup`, `linear`, `cosine` of the Trainer and Axolotl).
///
/// The Trainer calls `scheduler.step()` after each optimizer step, so optimizer update number
/// `s` (0-based) uses `lr(s) = base_lr * factor(s)` with, for W warmup and N total steps:
/// \verbatim
/// constant:              1
/// constant_with_warmup:  s < W ? s / max(1, W) : 1
/// linear:                s < W ? s / max(1, W) : max(0, (N - s) / max(1, N - W))
/// cosine:                s < W ? s / max(1, W) : max(0, 0.5 * (1 + cos(pi * cycles * 2 * (s - W) / max(1, N - W))))
/// \endverbatim
/// computed in double as Python does (cycles = 0.5 by default: one half cosine down to 0).
/// Note that `constant` ignores warmup_steps, as transformers does.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <string_view>

#include "limarp/core/error.hpp"

namespace limarp::train {

/// The schedule shapes.
enum class ScheduleKind : std::uint8_t {
    Constant,            ///< `constant`: base_lr throughout (no warmup)
    ConstantWithWarmup,  ///< `constant_with_warmup`: linear warmup, then base_lr
    Linear,              ///< `linear`: linear warmup, then linear decay to 0 at total_steps
    Cosine,              ///< `cosine`: linear warmup, then cosine decay to 0 at total_steps
};

/// The transformers name of `k`.
constexpr std::string_view to_string(ScheduleKind k) noexcept {
    switch (k) {
        case ScheduleKind::Constant: return "constant";
        case ScheduleKind::ConstantWithWarmup: return "constant_with_warmup";
        case ScheduleKind::Linear: return "linear";
        case ScheduleKind::Cosine: return "cosine";
    }
    return "?";
}

/// Parses `constant`, `constant_with_warmup`, `linear` or `cosine`. \throws ArgumentError listing them.
inline ScheduleKind parse_schedule_kind(std::string_view s) {
    for (ScheduleKind k : {ScheduleKind::Constant, ScheduleKind::ConstantWithWarmup, ScheduleKind::Linear,
                           ScheduleKind::Cosine})
        if (to_string(k) == s) return k;
    throw ArgumentError("unknown lr_scheduler \"" + std::string(s) +
                        "\" (expected constant, constant_with_warmup, linear or cosine)");
}

/// A learning-rate schedule (see the file comment for the formulas).
struct LrSchedule {
    ScheduleKind kind = ScheduleKind::Cosine;  ///< shape
    double base_lr = 2e-4;                     ///< peak learning rate
    std::int64_t warmup_steps = 0;             ///< W
    std::int64_t total_steps = 0;              ///< N, the number of optimizer updates of the run
    double num_cycles = 0.5;                   ///< cosine only: number of cosine periods over N - W

    /// The multiplier of base_lr at update `step` (0-based), the `lr_lambda` of transformers.
    double factor(std::int64_t step) const noexcept {
        const auto s = static_cast<double>(step);
        if (kind == ScheduleKind::Constant) return 1.0;
        if (step < warmup_steps) return s / static_cast<double>(std::max<std::int64_t>(1, warmup_steps));
        switch (kind) {
            case ScheduleKind::ConstantWithWarmup: return 1.0;
            case ScheduleKind::Linear:
                return std::max(0.0, static_cast<double>(total_steps - step) /
                                         static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup_steps)));
            case ScheduleKind::Cosine: {
                const double progress = static_cast<double>(step - warmup_steps) /
                                        static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup_steps));
                return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
            }
            case ScheduleKind::Constant: return 1.0;
        }
        return 1.0;
    }

    /// The learning rate of update `step` (0-based): base_lr * factor(step).
    double lr(std::int64_t step) const noexcept { return base_lr * factor(step); }

    /// \throws ArgumentError for a negative lr, warmup or total, or non-positive total for
    ///         the decaying kinds.
    void validate() const {
        if (!(base_lr >= 0)) throw ArgumentError("learning_rate must be >= 0, got " + std::to_string(base_lr));
        if (warmup_steps < 0) throw ArgumentError("warmup_steps must be >= 0, got " + std::to_string(warmup_steps));
        if (total_steps < 0) throw ArgumentError("total steps must be >= 0, got " + std::to_string(total_steps));
        if ((kind == ScheduleKind::Linear || kind == ScheduleKind::Cosine) && total_steps <= 0)
            throw ArgumentError(std::string("lr_scheduler ") + std::string(to_string(kind)) +
                                " needs the total number of steps (> 0)");
    }
};

/// Optimizer updates of a run as the Hugging Face Trainer counts them: with
/// `batches = ceil(examples / micro_batch_size)` per epoch, `updates_per_epoch =
/// max(1, batches / gradient_accumulation_steps)` (integer division) and
/// `ceil(num_epochs * updates_per_epoch)` in all; `max_steps > 0` overrides it.
/// \throws ArgumentError for non-positive sizes.
inline std::int64_t total_training_steps(std::int64_t examples, std::int64_t micro_batch_size,
                                         std::int64_t gradient_accumulation_steps, double num_epochs,
                                         std::int64_t max_steps = 0) {
    if (max_steps > 0) return max_steps;
    if (examples <= 0 || micro_batch_size <= 0 || gradient_accumulation_steps <= 0 || !(num_epochs > 0))
        throw ArgumentError("total_training_steps: examples, micro_batch_size, gradient_accumulation_steps and "
                            "num_epochs must be positive");
    const std::int64_t batches = (examples + micro_batch_size - 1) / micro_batch_size;
    const std::int64_t per_epoch = std::max<std::int64_t>(1, batches / gradient_accumulation_steps);
    return static_cast<std::int64_t>(std::ceil(num_epochs * static_cast<double>(per_epoch)));
}

}  // namespace limarp::train
