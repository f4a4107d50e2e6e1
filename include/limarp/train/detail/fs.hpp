#pragma once
/// \file fs.hpp
/// \brief Crash-safe folder replacement for checkpoints: a folder is filled under a temporary
/// name in the same parent, synced, then swapped in with one rename.

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28 with _GNU_SOURCE)
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>
#include <vector>

#include "limarp/core/error.hpp"
#include "limarp/io/detail/posix_file.hpp"

namespace limarp::train::detail {

namespace fs = std::filesystem;

/// fsync of a file or folder (best effort for folders on file systems that refuse it).
/// \throws IoError when a regular file cannot be synced.
inline void fsync_path(const fs::path& p, bool is_dir) {
    const int fd = ::open(p.c_str(), (is_dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        if (is_dir) return;
        throw IoError(io::detail::os_error("cannot open for fsync", p, errno));
    }
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0 && !is_dir) throw IoError(io::detail::os_error("cannot fsync", p, err));
}

/// Syncs every regular file directly inside `dir`, then `dir` itself.
inline void fsync_tree(const fs::path& dir) {
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file()) fsync_path(e.path(), false);
    fsync_path(dir, true);
}

/// Tests set this to exercise the fallback path of replace_dir() (no RENAME_EXCHANGE).
inline bool& rename_exchange_disabled() {
    static bool disabled = false;
    return disabled;
}

/// Atomically exchanges two paths (Linux renameat2 RENAME_EXCHANGE). Returns false when the
/// kernel or file system does not support it (the caller falls back).
inline bool rename_exchange(const fs::path& a, const fs::path& b) {
    if (rename_exchange_disabled()) return false;
#if defined(__linux__) && defined(SYS_renameat2)
    constexpr unsigned kExchange = 2;  // RENAME_EXCHANGE
    if (::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), kExchange) == 0) return true;
    if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) return false;
    throw IoError(io::detail::os_error("cannot exchange " + a.string() + " with", b, errno));
#else
    (void)a;
    (void)b;
    return false;
#endif
}

/// A unique hidden sibling name of `dir`: `.NAME.KIND.PID.N`.
inline fs::path sibling_name(const fs::path& dir, const char* kind) {
    static std::atomic<std::uint64_t> counter{0};
    std::string n(1, '.');
    n += dir.filename().string();
    n += '.';
    n += kind;
    n += '.';
    n += std::to_string(::getpid());
    n += '.';
    n += std::to_string(counter.fetch_add(1));
    return dir.parent_path() / n;
}

/// The hidden siblings `.NAME.KIND.*` of `dir`.
inline std::vector<fs::path> siblings(const fs::path& dir, const char* kind) {
    std::vector<fs::path> r;
    std::error_code ec;
    fs::path parent = dir.parent_path();
    if (parent.empty()) parent = ".";
    const std::string prefix = "." + dir.filename().string() + "." + kind + ".";
    for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec))
        if (it->path().filename().string().rfind(prefix, 0) == 0) r.push_back(it->path());
    return r;
}

/// Repairs what a crash may leave around `dir`: when `dir` is missing but a complete previous
/// version was moved aside (`.NAME.old.*`, fallback path of replace_dir), it is moved back;
/// with `clean`, leftover temporary folders (`.NAME.tmp.*`) and set-aside old versions are
/// removed (only the writer may clean: a reader would delete a write in progress).
/// \pre no other process is writing `dir` at the same time.
inline void recover_dir(const fs::path& dir, bool clean = true) {
    std::error_code ec;
    auto olds = siblings(dir, "old");
    std::sort(olds.begin(), olds.end(), [](const fs::path& a, const fs::path& b) {
        std::error_code e1, e2;
        return fs::last_write_time(a, e1) < fs::last_write_time(b, e2);
    });
    if (!fs::exists(dir, ec) && !olds.empty()) {
        fs::rename(olds.back(), dir, ec);
        if (ec) throw IoError("cannot restore " + olds.back().string() + " to " + dir.string() + ": " + ec.message());
        olds.pop_back();
    }
    if (!clean) return;
    for (const auto& p : olds) fs::remove_all(p, ec);
    for (const auto& p : siblings(dir, "tmp")) fs::remove_all(p, ec);
}

/// Writes folder `dir` crash-safely: recover_dir(dir); `fill(tmp)` writes the files into a
/// fresh hidden sibling folder; every file and the folder are fsynced; then the folder takes
/// the place of `dir` with one atomic rename (an atomic exchange when `dir` exists; on file
/// systems without renameat2 RENAME_EXCHANGE, the old folder is first renamed aside to
/// `.NAME.old.*`, which recover_dir() restores if the process dies between the two renames).
/// At every instant `dir` is absent (first write), the complete old folder, or the complete
/// new one. If `fill` throws, the temporary folder is removed and `dir` is untouched.
/// \throws IoError on file-system errors, and whatever `fill` throws.
inline void replace_dir(const fs::path& dir, const std::function<void(const fs::path&)>& fill) {
    std::error_code ec;
    fs::path parent = dir.parent_path();
    if (!parent.empty()) {
        fs::create_directories(parent, ec);
        if (ec) throw IoError("cannot create folder " + parent.string() + ": " + ec.message());
    } else {
        parent = ".";
    }
    recover_dir(dir);
    const fs::path tmp = sibling_name(dir, "tmp");
    fs::create_directory(tmp, ec);
    if (ec) throw IoError("cannot create folder " + tmp.string() + ": " + ec.message());
    try {
        fill(tmp);
        fsync_tree(tmp);
        if (fs::exists(dir)) {
            if (rename_exchange(tmp, dir)) {
                fsync_path(parent, true);
                fs::remove_all(tmp, ec);  // now the old version
                return;
            }
            const fs::path old = sibling_name(dir, "old");
            fs::rename(dir, old);
            fs::rename(tmp, dir, ec);
            if (ec) {
                std::error_code ec2;
                fs::rename(old, dir, ec2);  // put the old version back
                throw IoError("cannot rename " + tmp.string() + " to " + dir.string() + ": " + ec.message());
            }
            fsync_path(parent, true);
            fs::remove_all(old, ec);
            return;
        }
        fs::rename(tmp, dir);
        fsync_path(parent, true);
    } catch (const fs::filesystem_error& e) {
        fs::remove_all(tmp, ec);
        throw IoError(std::string("cannot write folder ") + dir.string() + ": " + e.what());
    } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
    }
}

/// Removes folder `dir` so that it never looks partially deleted: renamed to a hidden
/// `.NAME.tmp.*` sibling first (which recover_dir() cleans up if interrupted), then deleted.
inline void remove_dir(const fs::path& dir) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) return;
    const fs::path tmp = sibling_name(dir, "tmp");
    fs::rename(dir, tmp, ec);
    if (ec) throw IoError("cannot remove " + dir.string() + ": " + ec.message());
    fs::remove_all(tmp, ec);
}

}  // namespace limarp::train::detail
