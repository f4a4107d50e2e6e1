#pragma once
/// \file progress.hpp
/// \brief `ProgressBar`: training progress on stderr with tokens/s and ETA.
///
/// On a terminal the bar is redrawn in place (carriage return, clear to end of line), at most
/// every ProgressOptions::min_interval_s seconds, and finish() ends the line:
/// \verbatim
/// train  42% [##########--------------] 420/1000 | loss 1.234 | 812 tok/s | 10:21 < 14:02
/// \endverbatim
/// When the stream is not a terminal (a log file, CI) every update() prints one plain line
/// (no control characters), so call it as often as lines are wanted (e.g. every logging step).

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace limarp::train {

/// "S.Ss", "MM:SS" or "H:MM:SS" for a duration in seconds ("--:--" when unknown or negative).
inline std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "--:--";
    const auto s = static_cast<std::int64_t>(std::llround(seconds));
    const std::int64_t h = s / 3600, m = (s / 60) % 60, sec = s % 60;
    char buf[48];
    if (h > 0) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(h), static_cast<long long>(m),
                             static_cast<long long>(sec));
    else std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(m), static_cast<long long>(sec));
    return buf;
}

/// A rate with 3 significant digits and k/M suffixes: "812", "12.3k", "1.05M".
inline std::string format_rate(double v) {
    if (!std::isfinite(v) || v < 0) return "-";
    char buf[32];
    if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.3gM", v / 1e6);
    else if (v >= 1e4) std::snprintf(buf, sizeof buf, "%.3gk", v / 1e3);
    else std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
}

/// Options of ProgressBar.
struct ProgressOptions {
    std::string label = "train";   ///< first word of the line
    int bar_width = 24;            ///< characters of the bar (terminal and plain lines)
    double min_interval_s = 0.1;   ///< terminal only: at most one redraw per interval (the last update always draws at finish())
    std::optional<bool> tty;       ///< force terminal / plain mode (default: isatty(2) when the stream is `std::cerr` or `std::clog`, else plain)
    std::function<double()> clock; ///< seconds, monotonic (default: std::chrono::steady_clock); for tests
};

/// A progress line for `total` steps: percent, bar, steps, caller text (e.g. the loss),
/// tokens/s and elapsed < remaining time, both measured since construction.
class ProgressBar {
public:
    /// A bar for `total` steps written to `os` (default std::cerr), starting at step `start`
    /// (a resumed run: the rates count only what happens from now on).
    explicit ProgressBar(std::uint64_t total, ProgressOptions opt = {}, std::ostream& os = std::cerr,
                         std::uint64_t start = 0)
        : total_(total), opt_(std::move(opt)), os_(&os), start_(start), done_(start) {
        if (!opt_.clock)
            opt_.clock = [] {
                return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
            };
        tty_ = opt_.tty ? *opt_.tty : ((&os == &std::cerr || &os == &std::clog) && ::isatty(2) == 1);
        t0_ = opt_.clock();
    }

    /// Records progress: `done` steps of total, `tokens` processed since construction, and
    /// free text `extra` (e.g. "loss 1.234"). Draws (terminal: throttled) or prints a line.
    void update(std::uint64_t done, std::uint64_t tokens, std::string_view extra = {}) {
        done_ = done;
        tokens_ = tokens;
        extra_ = extra;
        const double now = opt_.clock();
        if (tty_) {
            pending_ = true;
            if (drawn_ && now - last_draw_ < opt_.min_interval_s && done < total_) return;
            draw(now);
        } else {
            *os_ << line(now) << '\n';
            os_->flush();
        }
    }

    /// Terminal: draws the last state and ends the line. Plain: nothing. Idempotent.
    void finish() {
        if (!tty_ || finished_) return;
        if (pending_ || !drawn_) draw(opt_.clock());
        *os_ << '\n';
        os_->flush();
        finished_ = true;
    }

    /// The text of the line for the current state at time `now` (no control characters).
    std::string line(double now) const {
        const double elapsed = std::max(0.0, now - t0_);
        const std::uint64_t steps = done_ > start_ ? done_ - start_ : 0;
        const double frac = total_ ? std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_)) : 0.0;
        std::string s = opt_.label;
        char pct[16];
        std::snprintf(pct, sizeof pct, " %3d%% ", static_cast<int>(frac * 100.0));
        s += pct;
        if (opt_.bar_width > 0) {
            const int filled = static_cast<int>(frac * opt_.bar_width);
            s += '[';
            s.append(static_cast<std::size_t>(filled), '#');
            s.append(static_cast<std::size_t>(opt_.bar_width - filled), '-');
            s += "] ";
        }
        s += std::to_string(done_) + "/" + std::to_string(total_);
        if (!extra_.empty()) s += " | " + extra_;
        s += " | " + format_rate(elapsed > 0 ? static_cast<double>(tokens_) / elapsed : NAN) + " tok/s";
        const double remaining = steps > 0 && total_ >= done_
                                     ? elapsed / static_cast<double>(steps) * static_cast<double>(total_ - done_)
                                     : NAN;
        s += " | " + format_duration(elapsed) + " < " + format_duration(remaining);
        return s;
    }

    /// True when drawing in place on a terminal.
    bool is_tty() const noexcept { return tty_; }

private:
    void draw(double now) {
        *os_ << '\r' << line(now) << "\x1b[K";
        os_->flush();
        last_draw_ = now;
        drawn_ = true;
        pending_ = false;
    }

    std::uint64_t total_;
    ProgressOptions opt_;
    std::ostream* os_;
    std::uint64_t start_;
    std::uint64_t done_;
    std::uint64_t tokens_ = 0;
    std::string extra_;
    bool tty_ = false;
    double t0_ = 0;
    double last_draw_ = 0;
    bool drawn_ = false;
    bool pending_ = false;
    bool finished_ = false;
};

}  // namespace limarp::train
