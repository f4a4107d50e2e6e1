#pragma once
/// \file error.hpp
/// \brief Typed exceptions thrown by limarp. The library never exits or aborts on bad input.

#include <stdexcept>
#include <string>

namespace limarp {

/// Base class of every limarp exception.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// A file could not be opened, mapped, read or written (message names the file and the OS error).
class IoError : public Error {
public:
    using Error::Error;
};

/// A file's contents do not follow its format (message names file, field/tensor, found vs expected).
class FormatError : public Error {
public:
    using Error::Error;
};

/// A tensor or argument has the wrong shape (message names the tensor, found vs expected).
class ShapeError : public Error {
public:
    using Error::Error;
};

/// A configuration asks for something limarp does not support (message names the field and the supported values).
class UnsupportedError : public Error {
public:
    using Error::Error;
};

/// A bad argument value (command-line flag, option) that is not a file-format problem.
class ArgumentError : public Error {
public:
    using Error::Error;
};

/// A CUDA runtime call or kernel launch failed (message names the call).
class CudaError : public Error {
public:
    using Error::Error;
};

}  // namespace limarp
