#pragma once
/// \file tensor.hpp
/// \brief Owning `Tensor<T>` with 64-byte aligned storage and non-owning `TensorView<T>` with shape and strides.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#if defined(__unix__)
#include <sys/mman.h>
#endif

#include "limarp/core/error.hpp"

namespace limarp {

/// A tensor shape: extents, outermost first.
using Shape = std::vector<std::int64_t>;

/// Human-readable form of a shape, e.g. "[4, 4096]".
inline std::string shape_str(const Shape& s) {
    std::string r = "[";
    for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

/// Number of elements of a shape (1 for a scalar).
inline std::int64_t numel(const Shape& s) {
    return std::accumulate(s.begin(), s.end(), std::int64_t{1}, std::multiplies<>());
}

/// Row-major (C order) strides, in elements, of a shape.
inline Shape contiguous_strides(const Shape& s) {
    Shape st(s.size());
    std::int64_t acc = 1;
    for (std::size_t i = s.size(); i-- > 0;) {
        st[i] = acc;
        acc *= s[i];
    }
    return st;
}

/// Alignment, in bytes, of every `Tensor` allocation.
inline constexpr std::size_t kTensorAlign = 64;

/// Allocations of at least this many bytes map their own pages (POSIX `mmap`) instead of going
/// through `operator new`: they come back zeroed and unmapped when freed, pages never written stay
/// out of the resident set (a cache ring's unfilled rows), and they leave no holes in the malloc
/// heap. glibc raises its mmap threshold to the size of each mapped block freed (up to 32 MiB), so
/// without this the temporaries of loading a 7B model (bf16 weights before quantization) left
/// ~0.18 GB of heap slack resident for good (benchmarks/NOTES.md, session 13).
inline constexpr std::size_t kTensorMapBytes = std::size_t{1} << 20;

/// \cond
namespace detail {
// Frees a Tensor's memory: munmap for mapped blocks (bytes >= kTensorMapBytes), else operator delete.
struct AlignedFree {
    std::size_t bytes = 0;
    void operator()(void* p) const noexcept {
#if defined(__unix__)
        if (bytes >= kTensorMapBytes) {
            ::munmap(p, bytes);
            return;
        }
#endif
        ::operator delete(p, std::align_val_t{kTensorAlign});
    }
};
// `bytes` zeroed bytes aligned to kTensorAlign (page-aligned when mapped). \throws std::bad_alloc.
inline void* tensor_alloc(std::size_t bytes) {
#if defined(__unix__)
    if (bytes >= kTensorMapBytes) {
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        return p;
    }
#endif
    void* p = ::operator new(bytes, std::align_val_t{kTensorAlign});
    std::memset(p, 0, bytes);
    return p;
}
}  // namespace detail
/// \endcond

/// A non-owning view of elements of type `T`, with a shape and strides in elements.
template <class T>
class TensorView {
public:
    TensorView() = default;
    /// A contiguous row-major view of `shape` starting at `data`.
    TensorView(T* data, Shape shape) : data_(data), shape_(std::move(shape)), strides_(contiguous_strides(shape_)) {}
    /// A strided view.
    TensorView(T* data, Shape shape, Shape strides)
        : data_(data), shape_(std::move(shape)), strides_(std::move(strides)) {
        if (strides_.size() != shape_.size()) throw ShapeError("TensorView: strides rank differs from shape rank");
    }
    /// Pointer to the first element.
    T* data() const noexcept { return data_; }
    /// Extents.
    const Shape& shape() const noexcept { return shape_; }
    /// Strides in elements.
    const Shape& strides() const noexcept { return strides_; }
    /// Extent of dimension `i`.
    std::int64_t dim(std::size_t i) const { return shape_.at(i); }
    /// Number of dimensions.
    std::size_t rank() const noexcept { return shape_.size(); }
    /// Number of elements.
    std::int64_t size() const { return numel(shape_); }
    /// True when the strides are row-major contiguous.
    bool is_contiguous() const { return strides_ == contiguous_strides(shape_); }
    /// Element at a multi-index (no bounds check).
    template <class... I>
    T& operator()(I... idx) const noexcept {
        const std::int64_t ix[] = {static_cast<std::int64_t>(idx)...};
        std::int64_t off = 0;
        for (std::size_t k = 0; k < sizeof...(I); ++k) off += ix[k] * strides_[k];
        return data_[off];
    }
    /// Pointer to row `r` of a 2-D view.
    T* row(std::int64_t r) const noexcept { return data_ + r * strides_[0]; }
    /// The view as const.
    operator TensorView<const T>() const { return TensorView<const T>(data_, shape_, strides_); }
    /// Throws ShapeError naming `what` unless the shape equals `expected`.
    const TensorView& expect_shape(const Shape& expected, const std::string& what) const {
        if (shape_ != expected)
            throw ShapeError(what + ": shape " + shape_str(shape_) + ", expected " + shape_str(expected));
        return *this;
    }

private:
    T* data_ = nullptr;
    Shape shape_;
    Shape strides_;
};

/// An owning, contiguous, row-major tensor with 64-byte aligned storage.
template <class T>
class Tensor {
public:
    Tensor() = default;
    /// Allocates `shape`, zero-initialised.
    explicit Tensor(Shape shape) : shape_(std::move(shape)) { allocate(); }
    /// Allocates `shape` and fills it with `value`.
    Tensor(Shape shape, T value) : shape_(std::move(shape)) {
        allocate();
        std::fill(data(), data() + size(), value);
    }
    /// Deep copy.
    Tensor(const Tensor& o) : shape_(o.shape_) {
        if (!o.mem_) return;  // a copy of a tensor without storage has none either
        allocate();
        std::copy(o.data(), o.data() + size(), data());
    }
    /// Deep copy assignment.
    Tensor& operator=(const Tensor& o) {
        if (this != &o) {
            Tensor t(o);
            *this = std::move(t);
        }
        return *this;
    }
    /// Move (the source becomes empty).
    Tensor(Tensor&&) noexcept = default;
    /// Move assignment.
    Tensor& operator=(Tensor&&) noexcept = default;

    /// Pointer to the first element.
    T* data() noexcept { return static_cast<T*>(mem_.get()); }
    /// Pointer to the first element.
    const T* data() const noexcept { return static_cast<const T*>(mem_.get()); }
    /// Extents.
    const Shape& shape() const noexcept { return shape_; }
    /// Extent of dimension `i`.
    std::int64_t dim(std::size_t i) const { return shape_.at(i); }
    /// Number of elements (0 without storage: default-constructed or moved from).
    std::int64_t size() const { return mem_ ? numel(shape_) : 0; }
    /// True when the tensor holds no elements.
    bool empty() const { return !mem_ || size() == 0; }
    /// Element `i` of the flat storage.
    T& operator[](std::int64_t i) noexcept { return data()[i]; }
    /// Element `i` of the flat storage.
    const T& operator[](std::int64_t i) const noexcept { return data()[i]; }
    /// Pointer to row `r` (first dimension) of the tensor.
    T* row(std::int64_t r) noexcept { return data() + r * (shape_.empty() ? 1 : size() / shape_[0]); }
    /// Pointer to row `r` (first dimension) of the tensor.
    const T* row(std::int64_t r) const noexcept { return data() + r * (shape_.empty() ? 1 : size() / shape_[0]); }
    /// A mutable view.
    TensorView<T> view() { return TensorView<T>(data(), shape_); }
    /// A const view.
    TensorView<const T> view() const { return TensorView<const T>(data(), shape_); }
    /// Reinterprets the same elements with another shape of equal element count.
    void reshape(Shape s) {
        if (numel(s) != size()) throw ShapeError("reshape " + shape_str(shape_) + " -> " + shape_str(s));
        shape_ = std::move(s);
    }

private:
    void allocate() {
        const std::int64_t n = numel(shape_);
        if (n < 0) throw ShapeError("negative extent in shape " + shape_str(shape_));
        const std::size_t bytes = std::max<std::size_t>(static_cast<std::size_t>(n) * sizeof(T), kTensorAlign);
        mem_ = std::unique_ptr<void, detail::AlignedFree>(detail::tensor_alloc(bytes), detail::AlignedFree{bytes});
    }
    Shape shape_;
    std::unique_ptr<void, detail::AlignedFree> mem_;
};

}  // namespace limarp
