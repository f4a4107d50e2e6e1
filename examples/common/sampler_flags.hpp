#pragma once
// The sampler flags shared by the programs that generate text (limarp-generate, limarp-chat,
// limarp-length-table), bound to a generate::SamplerParams. A program sets its own defaults in
// `p` before add() (they show in --help).
#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

#include "limarp/generate/sampler.hpp"

namespace limarp::programs {

/// --temperature, --top-k, --top-p, --min-p, --typical-p, --top-a, --tfs, --rep-pen
/// (alias --repetition-penalty), --rep-pen-range, --freq-pen, --presence-pen, --sampler-order.
struct SamplerFlags {
    generate::SamplerParams p;  ///< the values (set the program's defaults before add())
    std::string order;          ///< --sampler-order as given ("" = the default order)

    /// Registers the flags on `app`, with the current values of `p` as defaults.
    void add(CLI::App& app) {
        app.add_option("--temperature", p.temperature, "0 = greedy; > 0 samples from softmax(logits / T)")
            ->check(CLI::NonNegativeNumber)
            ->capture_default_str();
        app.add_option("--top-k", p.top_k, "keep the K most likely tokens (0 = off)")->capture_default_str();
        app.add_option("--top-p", p.top_p, "nucleus sampling mass (1 = off)")->capture_default_str();
        app.add_option("--min-p", p.min_p, "keep tokens with p >= MIN_P * p_max (0 = off)")->capture_default_str();
        app.add_option("--typical-p", p.typical_p, "locally typical sampling mass (1 = off)")->capture_default_str();
        app.add_option("--top-a", p.top_a, "keep tokens with p >= TOP_A * p_max^2 (0 = off)")->capture_default_str();
        app.add_option("--tfs", p.tfs, "tail-free sampling z (1 = off)")->capture_default_str();
        app.add_option("--rep-pen,--repetition-penalty", p.repetition_penalty,
                       "repetition penalty (1 = off): positive logits / P, negative * P")
            ->capture_default_str();
        app.add_option("--rep-pen-range", p.penalty_range, "penalties look at the last N tokens (0 = off, -1 = all)")
            ->capture_default_str();
        app.add_option("--freq-pen", p.frequency_penalty, "frequency penalty per occurrence (0 = off)")
            ->capture_default_str();
        app.add_option("--presence-pen", p.presence_penalty, "presence penalty (0 = off)")->capture_default_str();
        app.add_option("--sampler-order", order,
                       "stages in order, names or KoboldAI ids, e.g. \"rep_pen,top_k,top_p,min_p,temperature\" or "
                       "\"6,0,1,3,4,2,5\" "
                       "(default: rep_pen,freq_pen,presence_pen,top_k,top_a,tfs,typical_p,top_p,min_p,temperature)");
    }

    /// The parameters with `seed`. \throws ArgumentError for a bad --sampler-order.
    generate::SamplerParams params(std::uint64_t seed) const {
        generate::SamplerParams q = p;
        if (!order.empty()) q.order = generate::parse_sampler_order(order);
        q.seed = seed;
        return q;
    }
};

}  // namespace limarp::programs
