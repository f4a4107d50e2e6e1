#pragma once
/// \file mmap_file.hpp
/// \brief `MmapFile`: a read-only memory mapping of a whole file.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include "limarp/core/error.hpp"
#include "limarp/io/detail/posix_file.hpp"

namespace limarp::io {

/// A read-only, private memory mapping of a whole regular file. Movable, not copyable; the
/// mapping is released by the destructor. The mapped address is stable: moving an `MmapFile`
/// does not move the bytes, so pointers into `data()` stay valid as long as some `MmapFile`
/// owns the mapping. An empty file gives `size() == 0` and `data() == nullptr`.
class MmapFile {
public:
    /// An empty object (no file, size 0).
    MmapFile() = default;

    /// Maps `path` read-only.
    /// \throws IoError naming the file and the OS error when it cannot be opened, is not a
    ///         regular file, or cannot be mapped.
    explicit MmapFile(const std::filesystem::path& path) : path_(path) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0) throw IoError(detail::os_error("cannot open", path, errno));
        struct ::stat st {};
        if (::fstat(fd, &st) != 0) {
            const int err = errno;
            ::close(fd);
            throw IoError(detail::os_error("cannot stat", path, err));
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            throw IoError("cannot map " + path.string() + ": not a regular file");
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ > 0) {
            void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const int err = errno;
                ::close(fd);
                throw IoError(detail::os_error("cannot mmap", path, err));
            }
            data_ = static_cast<const std::byte*>(p);
        }
        ::close(fd);  // the mapping keeps the file alive
    }

    MmapFile(const MmapFile&) = delete;
    MmapFile& operator=(const MmapFile&) = delete;
    /// Takes over `o`'s mapping; `o` becomes empty.
    MmapFile(MmapFile&& o) noexcept
        : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    /// Releases the current mapping and takes over `o`'s.
    MmapFile& operator=(MmapFile&& o) noexcept {
        if (this != &o) {
            unmap();
            path_ = std::move(o.path_);
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    /// Unmaps the file.
    ~MmapFile() { unmap(); }

    /// First byte of the mapping; nullptr for an empty file.
    const std::byte* data() const noexcept { return data_; }
    /// Size of the file in bytes.
    std::size_t size() const noexcept { return size_; }
    /// The whole file as a byte span.
    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
    /// The path the file was opened with.
    const std::filesystem::path& path() const noexcept { return path_; }

    /// Hints the kernel that the whole file will be read soon (best effort, never throws).
    void advise_willneed() const noexcept {
        if (data_) (void)::madvise(const_cast<std::byte*>(data_), size_, MADV_WILLNEED);
    }

private:
    void unmap() noexcept {
        if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
        data_ = nullptr;
        size_ = 0;
    }
    std::filesystem::path path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace limarp::io

namespace limarp {
using io::MmapFile;  ///< re-export of io::MmapFile
}  // namespace limarp
