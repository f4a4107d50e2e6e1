#pragma once
/// \file backend.hpp
/// \brief Backend tag types (`Cpu<Arch>`, `Cuda<Sm>`) and the `Backend` concept.
///
/// Backends are empty tag types. Kernels are `ops::` overloads picked by the tag,
/// e.g. `ops::rms_norm(Cpu<>{}, ...)`; layers call `ops::` only.

#include <concepts>
#include <string_view>
#include <type_traits>

#include <xsimd/xsimd.hpp>

namespace limarp {

/// The CPU backend: SIMD kernels written with xsimd for instruction set `Arch`,
/// multithreaded on `ThreadPool::global()`.
template <class Arch = xsimd::default_arch>
struct Cpu {
    using arch = Arch;  ///< xsimd architecture tag
    /// Backend name for messages.
    static constexpr std::string_view name = "cpu";
    /// True: tensors live in host memory.
    static constexpr bool host_memory = true;
};

/// The CUDA backend for compute capability `Sm` (e.g. 90 for H100/H200).
/// Kernels exist only in builds with LIMARP_CUDA; in other builds the tag exists so that
/// code naming it fails with a clear static_assert instead of a missing-symbol error.
template <int Sm = 90>
struct Cuda {
    /// Compute capability times ten.
    static constexpr int sm = Sm;
    /// Backend name for messages.
    static constexpr std::string_view name = "cuda";
    /// False: tensors live in device memory.
    static constexpr bool host_memory = false;
};

/// \cond
namespace detail {
template <class T> struct is_cpu : std::false_type {};
template <class A> struct is_cpu<Cpu<A>> : std::true_type {};
template <class T> struct is_cuda : std::false_type {};
template <int S> struct is_cuda<Cuda<S>> : std::true_type {};
}  // namespace detail
/// \endcond

/// True for `Cpu<A>` tags.
template <class B>
inline constexpr bool is_cpu_backend_v = detail::is_cpu<B>::value;
/// True for `Cuda<Sm>` tags.
template <class B>
inline constexpr bool is_cuda_backend_v = detail::is_cuda<B>::value;

/// A backend tag: an empty type with a name and a memory placement.
template <class B>
concept Backend = std::is_empty_v<B> && std::is_default_constructible_v<B> && requires {
    { B::name } -> std::convertible_to<std::string_view>;
    { B::host_memory } -> std::convertible_to<bool>;
};

}  // namespace limarp
