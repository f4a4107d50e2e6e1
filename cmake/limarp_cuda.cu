// The one CUDA translation unit of the `limarp::cuda` target: the definitions of cuda_api::
// (include/limarp/backend/cuda/api.hpp) with the kernels behind them.
#include "limarp/backend/cuda/api_impl.cuh"
