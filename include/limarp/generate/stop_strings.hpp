#pragma once
/// \file stop_strings.hpp
/// \brief `StopStringMatcher`: finds stop strings in streamed text that arrives in arbitrary
/// pieces (token by token), holding back any tail that could still become a stop string.

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "limarp/core/error.hpp"

namespace limarp::generate {

/// Streams text through a set of stop strings. push() returns the text that is certainly not
/// part of a stop string; a tail that is a prefix of some stop string is held back until later
/// text decides. When a stop string completes, the text before it is returned, the stop string
/// itself and anything after it are dropped, and stopped() becomes true.
///
/// Invariant: the concatenation of every push() result and the final flush() equals the input
/// up to (excluding) the stop string that completes first (the leftmost one when several
/// complete in the same push), or the whole input if none occurs.
class StopStringMatcher {
public:
    /// A matcher with no stop strings (passes text through).
    StopStringMatcher() = default;
    /// A matcher for `stops`. \throws ArgumentError for an empty stop string.
    explicit StopStringMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
        for (const auto& s : stops_)
            if (s.empty()) throw ArgumentError("stop strings: an empty stop string would stop at once");
    }

    /// The stop strings.
    const std::vector<std::string>& stop_strings() const noexcept { return stops_; }

    /// Feeds `text`; returns the text that can be emitted now (possibly empty). After a stop
    /// string matched, returns nothing.
    std::string push(std::string_view text) {
        if (stopped_) return {};
        held_ += text;
        // earliest complete match
        std::size_t best = std::string::npos, which = 0;
        for (std::size_t i = 0; i < stops_.size(); ++i) {
            const std::size_t p = held_.find(stops_[i]);
            if (p < best) {
                best = p;
                which = i;
            }
        }
        if (best != std::string::npos) {
            std::string out = held_.substr(0, best);
            matched_ = stops_[which];
            stopped_ = true;
            held_.clear();
            return out;
        }
        // longest suffix of held_ that is a proper prefix of some stop string
        std::size_t keep = 0;
        for (const auto& s : stops_) {
            const std::size_t lim = std::min(s.size() - 1, held_.size());
            for (std::size_t k = lim; k > keep; --k)
                if (std::string_view(held_).substr(held_.size() - k) == std::string_view(s).substr(0, k)) {
                    keep = k;
                    break;
                }
        }
        std::string out = held_.substr(0, held_.size() - keep);
        held_.erase(0, held_.size() - keep);
        return out;
    }

    /// Ends the stream: returns the held-back text (it did not become a stop string).
    std::string flush() {
        std::string out;
        out.swap(held_);
        return out;
    }

    /// Text currently held back.
    const std::string& held() const noexcept { return held_; }
    /// Whether a stop string matched.
    bool stopped() const noexcept { return stopped_; }
    /// The stop string that matched (empty before).
    const std::string& matched() const noexcept { return matched_; }

    /// Forgets held text and the match, for a new stream.
    void reset() {
        held_.clear();
        matched_.clear();
        stopped_ = false;
    }

private:
    std::vector<std::string> stops_;
    std::string held_;
    std::string matched_;
    bool stopped_ = false;
};

}  // namespace limarp::generate
