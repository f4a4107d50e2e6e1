#pragma once
/// \file step_picker.hpp
/// \brief `generate::StepPicker`: a token picker whose device work runs inside the model's step,
/// so that on CUDA the pick is recorded into the step's CUDA graph with the model's kernels and a
/// decode step is one graph launch plus a 4-byte copy of the id.

#include <cstdint>
#include <span>

namespace limarp::generate {

/// A picker in three parts (`MistralModel::forward_pick(ids, cache, picker, history)` calls them
/// in this order):
/// 1. `prepare(vocab, history)` before the step: host work and uploads (e.g. the penalties'
///    counts of `history`); may allocate;
/// 2. `enqueue(logits, vocab)` inside the step, after the lm_head: only launches on the backend's
///    stream (no allocation, no host synchronisation, no argument that changes from step to step
///    unless `version()` changes), because a CUDA step is recorded once and replayed;
/// 3. `finish()` after the step: the picked id (waits for it).
/// `logits` [vocab] is the last row's logits in the backend's memory (scratch: the pick may
/// overwrite it, e.g. with penalties).
class StepPicker {
public:
    virtual ~StepPicker() = default;
    /// Host work before the step. \throws ArgumentError for a history id outside [0, vocab)
    virtual void prepare(std::int64_t vocab, std::span<const std::int32_t> history) = 0;
    /// The pick's launches (recordable).
    virtual void enqueue(float* logits, std::int64_t vocab) = 0;
    /// The id picked by the last `enqueue`.
    virtual std::int32_t finish() = 0;
    /// A value that changes whenever `enqueue` would launch differently (another picker, other
    /// settings, a new seed): part of the key under which a step is recorded. Never 0.
    virtual std::uint64_t version() const = 0;
};

}  // namespace limarp::generate
