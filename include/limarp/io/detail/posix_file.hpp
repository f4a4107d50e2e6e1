#pragma once
/// \file posix_file.hpp
/// \brief POSIX helpers shared by the io writers: an atomic file writer (temp file in the same
/// folder, fsync, rename) and an error-message helper.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include "limarp/core/error.hpp"

namespace limarp::io::detail {

/// "what path: strerror(err)" for an IoError message.
inline std::string os_error(std::string_view what, const std::filesystem::path& p, int err) {
    return std::string(what) + " " + p.string() + ": " + std::strerror(err);
}

/// Writes a file atomically: bytes go to a uniquely named temporary file in the destination's
/// folder; `commit()` flushes it to disk (fsync), renames it over the destination and syncs the
/// folder. If `commit()` is never reached (an exception, an early return) the destructor removes
/// the temporary file, so the destination is either the old file or the complete new one.
class AtomicFileWriter {
public:
    /// Creates the temporary file next to `dest`. \throws IoError when it cannot be created.
    explicit AtomicFileWriter(std::filesystem::path dest) : dest_(std::move(dest)) {
        static std::atomic<std::uint64_t> counter{0};
        const auto stamp = static_cast<std::uint64_t>(
            std::chrono::steady_clock::now().time_since_epoch().count());
        std::filesystem::path dir = dest_.parent_path();
        if (dir.empty()) dir = ".";
        for (int attempt = 0; attempt < 100; ++attempt) {
            std::string name(1, '.');  // built with += (operator+ on a literal trips GCC 12's -Wrestrict)
            name += dest_.filename().string();
            name += ".tmp.";
            name += std::to_string(::getpid());
            name += '.';
            name += std::to_string(stamp);
            name += '.';
            name += std::to_string(counter.fetch_add(1));
            tmp_ = dir / name;
            fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (fd_ >= 0) return;
            if (errno != EEXIST) break;
        }
        throw IoError(os_error("cannot create temporary file for", dest_, errno));
    }
    AtomicFileWriter(const AtomicFileWriter&) = delete;
    AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
    /// Removes the temporary file unless `commit()` succeeded.
    ~AtomicFileWriter() {
        if (fd_ >= 0) ::close(fd_);
        if (!committed_) ::unlink(tmp_.c_str());
    }

    /// Appends `n` bytes. \throws IoError on a write error (disk full, ...).
    void write(const void* data, std::size_t n) {
        const char* p = static_cast<const char*>(data);
        while (n > 0) {
            const std::size_t chunk = n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30);
            const ::ssize_t w = ::write(fd_, p, chunk);
            if (w < 0) {
                if (errno == EINTR) continue;
                throw IoError(os_error("cannot write", dest_, errno));
            }
            if (w == 0) throw IoError("cannot write " + dest_.string() + ": write returned 0");
            p += w;
            n -= static_cast<std::size_t>(w);
        }
    }

    /// Flushes to disk and renames the temporary file over the destination.
    /// \throws IoError when fsync, close or rename fails (the temporary file is then removed).
    void commit() {
        if (::fsync(fd_) != 0) throw IoError(os_error("cannot fsync", dest_, errno));
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0) throw IoError(os_error("cannot close", dest_, errno));
        if (::rename(tmp_.c_str(), dest_.c_str()) != 0) throw IoError(os_error("cannot rename into", dest_, errno));
        committed_ = true;
        std::filesystem::path dir = dest_.parent_path();
        if (dir.empty()) dir = ".";
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {  // best effort: make the rename itself durable
            (void)::fsync(dfd);
            ::close(dfd);
        }
    }

    /// The destination path.
    const std::filesystem::path& path() const noexcept { return dest_; }

private:
    std::filesystem::path dest_;
    std::filesystem::path tmp_;
    int fd_ = -1;
    bool committed_ = false;
};

/// Writes `n` bytes to `dest` atomically. \throws IoError.
inline void write_file_atomic(const std::filesystem::path& dest, const void* data, std::size_t n) {
    AtomicFileWriter w(dest);
    w.write(data, n);
    w.commit();
}

}  // namespace limarp::io::detail
