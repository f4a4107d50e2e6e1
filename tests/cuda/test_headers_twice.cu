// Every CUDA kernel header of the library in one more translation unit of the same program: the
// other test files include attention.cuh, sampler.cuh, qgemv.cuh, norm.cuh, rope.cuh, ... too, so
// a kernel or host function that a header defines without being a template or inline (a second
// definition of the same symbol) makes this executable fail to link. A header-only user who
// includes these headers in several .cu files of one program relies on that. The test below then
// checks, at run time, that the header kernels instantiated here are in this program's image.
// (Their host-side launch stubs are per translation unit: nvcc gives each file its own, so the
// addresses differ between files; what one file launches is its own instantiation.)
#include <boost/test/unit_test.hpp>

#include "limarp/backend/cuda/activation.cuh"
#include "limarp/backend/cuda/attention.cuh"
#include "limarp/backend/cuda/attention_flash.cuh"
#include "limarp/backend/cuda/attention_prefill.cuh"
#include "limarp/backend/cuda/check.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/backend/cuda/device_int8_weight.cuh"
#include "limarp/backend/cuda/embedding.cuh"
#include "limarp/backend/cuda/norm.cuh"
#include "limarp/backend/cuda/qgemm_int8.cuh"
#include "limarp/backend/cuda/qgemv.cuh"
#include "limarp/backend/cuda/rope.cuh"
#include "limarp/backend/cuda/sampler.cuh"

namespace cd = limarp::cuda_detail;

BOOST_AUTO_TEST_SUITE(cuda_headers)

BOOST_AUTO_TEST_CASE(kernel_headers_link_into_several_translation_units) {
    const void* kernels[] = {reinterpret_cast<const void*>(&cd::topk_candidates_kernel<>),
                             reinterpret_cast<const void*>(&cd::column_absmax_kernel<>),
                             reinterpret_cast<const void*>(&cd::outlier_columns_kernel<>),
                             reinterpret_cast<const void*>(&cd::gather_outlier_weights_kernel<>),
                             reinterpret_cast<const void*>(&cd::gather_outlier_operands_kernel<>),
                             reinterpret_cast<const void*>(&cd::sample_top_k_top_p_kernel<>),
                             reinterpret_cast<const void*>(&cd::sample_greedy_kernel<>),
                             reinterpret_cast<const void*>(&cd::apply_penalties_kernel<>),
                             reinterpret_cast<const void*>(&cd::attention_decode_combine_kernel<>),
                             reinterpret_cast<const void*>(&cd::kv_window_to_bf16_kernel<>),
                             reinterpret_cast<const void*>(&cd::kv_cache_store_rows_kernel<>)};
    for (const void* k : kernels) {
        cudaFuncAttributes attr{};
        BOOST_TEST(cudaFuncGetAttributes(&attr, k) == cudaSuccess);  // a kernel of this program's image
    }
}

BOOST_AUTO_TEST_SUITE_END()
