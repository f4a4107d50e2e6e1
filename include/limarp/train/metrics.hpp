#pragma once
/// \file metrics.hpp
/// \brief Training metrics: a CSV and a JSONL log (step, epoch, loss, eval_loss, lr, grad_norm,
/// tokens_per_s) appended one whole line per write, and a PNG of the train and eval loss
/// curves drawn by gnuplot (Debian package gnuplot-nox).
///
/// Files in the log folder: `metrics.csv` (header
/// `step,epoch,loss,eval_loss,lr,grad_norm,tokens_per_s`; an absent value is an empty field)
/// and `metrics.jsonl` (one object per line with the present fields only, e.g.
/// `{"step":10,"epoch":0.5,"loss":1.93,"lr":0.0002,"grad_norm":0.71,"tokens_per_s":812.4}`;
/// a non-finite value is written as null in JSON and as `nan`/`inf` in CSV). Each row is
/// appended with a single write(2) on an O_APPEND descriptor, so a killed process leaves at
/// most one torn last line, which readers ignore and MetricsLog::resume() drops.

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/error.hpp"
#include "limarp/io/detail/posix_file.hpp"

/// \cond
extern char** environ;  // POSIX: the environment passed to posix_spawnp
/// \endcond

namespace limarp::train {

/// One row of the log. Absent values are empty optionals.
struct MetricsRow {
    std::int64_t step = 0;                   ///< optimizer step (1-based: the row after update `step`)
    std::optional<double> epoch;             ///< fractional epoch
    std::optional<double> loss;              ///< mean train loss since the previous row
    std::optional<double> eval_loss;         ///< eval loss (rows where an evaluation ran)
    std::optional<double> lr;                ///< learning rate used
    std::optional<double> grad_norm;         ///< global gradient norm before clipping
    std::optional<double> tokens_per_s;      ///< training throughput

    /// Equality.
    friend bool operator==(const MetricsRow&, const MetricsRow&) = default;
};

/// \cond
namespace detail {
inline std::string fmt_num(double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);  // shortest round-trip, %g style
    return std::string(buf, r.ptr);
}
inline std::string csv_line(const MetricsRow& r) {
    auto opt = [](const std::optional<double>& v) { return v ? fmt_num(*v) : std::string(); };
    return std::to_string(r.step) + "," + opt(r.epoch) + "," + opt(r.loss) + "," + opt(r.eval_loss) + "," + opt(r.lr) +
           "," + opt(r.grad_norm) + "," + opt(r.tokens_per_s) + "\n";
}
inline std::string json_line(const MetricsRow& r) {
    std::string s = "{\"step\":" + std::to_string(r.step);
    auto add = [&](const char* k, const std::optional<double>& v) {
        if (!v) return;
        s += ",\"";
        s += k;
        s += "\":";
        s += std::isfinite(*v) ? fmt_num(*v) : "null";
    };
    add("epoch", r.epoch);
    add("loss", r.loss);
    add("eval_loss", r.eval_loss);
    add("lr", r.lr);
    add("grad_norm", r.grad_norm);
    add("tokens_per_s", r.tokens_per_s);
    return s + "}\n";
}
inline void write_all(int fd, const std::string& s, const std::filesystem::path& p) {
    const char* d = s.data();
    std::size_t n = s.size();
    while (n > 0) {
        const ::ssize_t w = ::write(fd, d, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            throw IoError(io::detail::os_error("cannot append to", p, errno));
        }
        d += w;
        n -= static_cast<std::size_t>(w);
    }
}
inline std::optional<MetricsRow> parse_json_row(std::string_view line) {
    try {
        const auto j = nlohmann::json::parse(line);
        if (!j.is_object() || !j.contains("step")) return std::nullopt;
        MetricsRow r;
        r.step = j.at("step").get<std::int64_t>();
        auto get = [&](const char* k, std::optional<double>& out) {
            const auto it = j.find(k);
            if (it == j.end()) return;
            out = it->is_null() ? std::numeric_limits<double>::quiet_NaN() : it->get<double>();
        };
        get("epoch", r.epoch);
        get("loss", r.loss);
        get("eval_loss", r.eval_loss);
        get("lr", r.lr);
        get("grad_norm", r.grad_norm);
        get("tokens_per_s", r.tokens_per_s);
        return r;
    } catch (const nlohmann::json::exception&) {
        return std::nullopt;
    }
}
}  // namespace detail
/// \endcond

/// Reads a metrics.jsonl file: complete lines only (a torn last line without its newline, or
/// a line that is not a row, is skipped). Non-finite values read back as NaN.
/// \throws IoError when the file cannot be read.
inline std::vector<MetricsRow> read_metrics_jsonl(const std::filesystem::path& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw IoError("cannot open " + path.string());
    std::ostringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    std::vector<MetricsRow> rows;
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t end = text.find('\n', pos);
        if (end == std::string::npos) break;  // torn last line
        if (auto r = detail::parse_json_row(std::string_view(text).substr(pos, end - pos))) rows.push_back(*r);
        pos = end + 1;
    }
    return rows;
}

/// The metrics log of a run: `metrics.csv` and `metrics.jsonl` in a folder.
class MetricsLog {
public:
    /// CSV header line (without newline).
    static constexpr const char* kCsvHeader = "step,epoch,loss,eval_loss,lr,grad_norm,tokens_per_s";

    /// Starts a fresh log in `dir` (created if needed), replacing earlier logs there.
    /// \throws IoError when the files cannot be written.
    static MetricsLog create(const std::filesystem::path& dir) { return MetricsLog(dir, {}); }

    /// Continues the log of a run resumed after optimizer step `step`: rows of later steps
    /// (written after the checkpoint) and a torn last line are dropped, the rest is kept.
    /// A missing log starts fresh. \throws IoError.
    static MetricsLog resume(const std::filesystem::path& dir, std::int64_t step) {
        std::vector<MetricsRow> keep;
        if (std::filesystem::exists(dir / "metrics.jsonl"))
            for (const auto& r : read_metrics_jsonl(dir / "metrics.jsonl"))
                if (r.step <= step) keep.push_back(r);
        return MetricsLog(dir, keep);
    }

    MetricsLog(const MetricsLog&) = delete;
    MetricsLog& operator=(const MetricsLog&) = delete;
    /// Move.
    MetricsLog(MetricsLog&& o) noexcept
        : dir_(std::move(o.dir_)), csv_fd_(std::exchange(o.csv_fd_, -1)), json_fd_(std::exchange(o.json_fd_, -1)),
          rows_(std::move(o.rows_)) {}
    /// Move assignment.
    MetricsLog& operator=(MetricsLog&& o) noexcept {
        if (this != &o) {
            close();
            dir_ = std::move(o.dir_);
            csv_fd_ = std::exchange(o.csv_fd_, -1);
            json_fd_ = std::exchange(o.json_fd_, -1);
            rows_ = std::move(o.rows_);
        }
        return *this;
    }
    /// Closes the files.
    ~MetricsLog() { close(); }

    /// Appends `row` to both files (one write per file) and to rows().
    /// \throws IoError when a write fails.
    void append(const MetricsRow& row) {
        detail::write_all(csv_fd_, detail::csv_line(row), csv_path());
        detail::write_all(json_fd_, detail::json_line(row), jsonl_path());
        rows_.push_back(row);
    }

    /// Every row of the log (kept ones after resume(), then appended ones).
    const std::vector<MetricsRow>& rows() const noexcept { return rows_; }
    /// `DIR/metrics.csv`.
    std::filesystem::path csv_path() const { return dir_ / "metrics.csv"; }
    /// `DIR/metrics.jsonl`.
    std::filesystem::path jsonl_path() const { return dir_ / "metrics.jsonl"; }

private:
    MetricsLog(std::filesystem::path dir, std::vector<MetricsRow> keep) : dir_(std::move(dir)), rows_(std::move(keep)) {
        std::error_code ec;
        std::filesystem::create_directories(dir_, ec);
        if (ec) throw IoError("cannot create folder " + dir_.string() + ": " + ec.message());
        std::string csv = std::string(kCsvHeader) + "\n", json;
        for (const auto& r : rows_) {
            csv += detail::csv_line(r);
            json += detail::json_line(r);
        }
        io::detail::write_file_atomic(csv_path(), csv.data(), csv.size());
        io::detail::write_file_atomic(jsonl_path(), json.data(), json.size());
        csv_fd_ = ::open(csv_path().c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
        if (csv_fd_ < 0) throw IoError(io::detail::os_error("cannot open", csv_path(), errno));
        json_fd_ = ::open(jsonl_path().c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
        if (json_fd_ < 0) {
            const int err = errno;
            close();
            throw IoError(io::detail::os_error("cannot open", jsonl_path(), err));
        }
    }
    void close() noexcept {
        if (csv_fd_ >= 0) ::close(csv_fd_);
        if (json_fd_ >= 0) ::close(json_fd_);
        csv_fd_ = json_fd_ = -1;
    }

    std::filesystem::path dir_;
    int csv_fd_ = -1;
    int json_fd_ = -1;
    std::vector<MetricsRow> rows_;
};

/// Options of plot_loss_curves().
struct PlotOptions {
    std::string title = "LoRA training";  ///< overall title
    int width = 1280;                     ///< PNG width in pixels
    int height = 480;                     ///< PNG height in pixels
    std::string gnuplot = "gnuplot";      ///< the gnuplot program (looked up in PATH)
};

/// \cond
namespace detail {
inline std::string gp_quote(const std::string& s) {
    std::string r = "'";
    for (const char c : s) r += c == '\'' ? std::string("''") : std::string(1, c);
    return r + "'";
}
inline std::string gp_text(const std::string& s) {  // a title as a gnuplot string (no enhanced-text markup)
    return gp_quote(s);
}
}  // namespace detail
/// \endcond

/// Draws the loss curves of `rows` into the PNG `png` with gnuplot: one panel "Train loss"
/// (loss against step) and, when some row has an eval_loss, a second panel "Eval loss", as
/// the seed model card's "Loss curves". Uses the pngcairo terminal when gnuplot has it, else
/// png. The PNG is written to a temporary name and renamed into place.
/// \throws ArgumentError when no row has a finite loss; IoError naming the Debian package
///         (gnuplot-nox) when gnuplot cannot be run, or with gnuplot's messages when it fails.
inline void plot_loss_curves(const std::filesystem::path& png, std::span<const MetricsRow> rows,
                             const PlotOptions& opt = {}) {
    namespace fs = std::filesystem;
    std::string train, eval;
    for (const auto& r : rows) {
        if (r.loss && std::isfinite(*r.loss)) train += std::to_string(r.step) + " " + detail::fmt_num(*r.loss) + "\n";
        if (r.eval_loss && std::isfinite(*r.eval_loss))
            eval += std::to_string(r.step) + " " + detail::fmt_num(*r.eval_loss) + "\n";
    }
    if (train.empty()) throw ArgumentError("plot_loss_curves: no row has a finite train loss");
    fs::path dir = png.parent_path();
    if (dir.empty()) dir = ".";
    std::error_code ec;
    fs::create_directories(dir, ec);
    const fs::path work = dir / ("." + png.filename().string() + ".plot." + std::to_string(::getpid()));
    fs::remove_all(work, ec);
    if (!fs::create_directory(work, ec) || ec) throw IoError("cannot create folder " + work.string() + ": " + ec.message());
    struct Cleanup {
        fs::path p;
        ~Cleanup() {
            std::error_code e;
            fs::remove_all(p, e);
        }
    } cleanup{work};
    auto write = [&](const fs::path& p, const std::string& s) {
        std::ofstream f(p, std::ios::binary);
        f << s;
        if (!f) throw IoError("cannot write " + p.string());
    };
    write(work / "train.dat", train);
    if (!eval.empty()) write(work / "eval.dat", eval);
    const fs::path tmp_png = work / "out.png";
    const std::string size = std::to_string(opt.width) + "," + std::to_string(opt.height);
    std::string gp;
    gp += "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo noenhanced size " + size +
          " font 'Sans,10' } else { set terminal png noenhanced size " + size + " }\n";
    gp += "set output " + detail::gp_quote(tmp_png.string()) + "\n";
    gp += "set grid\nset key top right\nset xlabel 'step'\nset ylabel 'loss'\n";
    if (!eval.empty()) gp += "set multiplot layout 1,2 title " + detail::gp_text(opt.title) + "\n";
    else gp += "set title " + detail::gp_text(opt.title + ": train loss") + "\n";
    if (!eval.empty()) gp += "set title 'Train loss'\n";
    gp += "plot " + detail::gp_quote((work / "train.dat").string()) +
          " using 1:2 with lines lw 2 lc rgb '#1f77b4' title 'train loss'\n";
    if (!eval.empty()) {
        gp += "set title 'Eval loss'\n";
        gp += "plot " + detail::gp_quote((work / "eval.dat").string()) +
              " using 1:2 with linespoints lw 2 pt 7 ps 0.8 lc rgb '#d62728' title 'eval loss'\n";
        gp += "unset multiplot\n";
    }
    gp += "set output\n";
    write(work / "plot.gp", gp);

    const fs::path log = work / "gnuplot.log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    const std::string script = (work / "plot.gp").string();
    std::vector<char*> argv = {const_cast<char*>(opt.gnuplot.c_str()), const_cast<char*>(script.c_str()), nullptr};
    pid_t pid = 0;
    const int rc = ::posix_spawnp(&pid, opt.gnuplot.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    const std::string missing = "cannot run " + opt.gnuplot +
                                " to plot the loss curves: install gnuplot (Debian/Ubuntu package gnuplot-nox; "
                                "scripts/setup.sh installs it)";
    if (rc != 0) throw IoError(missing + " (" + std::strerror(rc) + ")");
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) throw IoError(io::detail::os_error("waitpid for", opt.gnuplot, errno));
    std::string messages;
    {
        std::ifstream lf(log);
        std::ostringstream ss;
        ss << lf.rdbuf();
        messages = ss.str();
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127) throw IoError(missing);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !fs::exists(tmp_png) || fs::file_size(tmp_png) == 0)
        throw IoError("gnuplot failed to draw " + png.string() + ":\n" + messages);
    fs::rename(tmp_png, png, ec);
    if (ec) throw IoError("cannot rename the plot to " + png.string() + ": " + ec.message());
}

}  // namespace limarp::train
