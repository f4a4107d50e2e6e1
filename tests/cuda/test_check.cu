// Tests of limarp/backend/cuda/check.cuh: a trivial kernel against the CPU, and the errors that
// LIMARP_CUDA_CHECK, LIMARP_CUDA_CHECK_LAUNCH and cuda_malloc_checked turn into limarp::CudaError.
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "limarp/backend/cuda/check.cuh"
#include "limarp/core/error.hpp"

namespace {

__global__ void add_kernel(float* out, const float* a, const float* b, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

__global__ void noop_kernel() {}

// Frees a device pointer at scope exit.
struct DeviceBuffer {
    void* p = nullptr;
    explicit DeviceBuffer(std::size_t bytes, const char* what) : p(limarp::cuda_malloc_checked(bytes, what)) {}
    ~DeviceBuffer() { cudaFree(p); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    float* f() const { return static_cast<float*>(p); }
};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Fails every test at once with a clear message on a machine without a usable GPU.
struct RequireDevice {
    RequireDevice() {
        int n = 0;
        const cudaError_t err = cudaGetDeviceCount(&n);
        if (err != cudaSuccess || n == 0) {
            BOOST_TEST_MESSAGE("test_cuda needs a CUDA GPU: cudaGetDeviceCount returned " << cudaGetErrorName(err)
                                                                                          << ", " << n << " devices");
            throw limarp::CudaError(std::string("no usable CUDA device: ") + cudaGetErrorString(err));
        }
        cudaDeviceProp prop{};
        LIMARP_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        BOOST_TEST_MESSAGE("device 0: " << prop.name << ", sm_" << prop.major << prop.minor << ", "
                                        << prop.totalGlobalMem / (1 << 20) << " MiB");
    }
};

}  // namespace

BOOST_TEST_GLOBAL_FIXTURE(RequireDevice);

BOOST_AUTO_TEST_SUITE(cuda_check)

BOOST_AUTO_TEST_CASE(elementwise_add_matches_cpu) {
    const int n = (1 << 20) + 37;  // not a multiple of the block size
    std::mt19937 rng(1234);
    std::uniform_real_distribution<float> dist(-4.f, 4.f);
    std::vector<float> a(n), b(n), ref(n), out(n, -1.f);
    for (int i = 0; i < n; ++i) {
        a[i] = dist(rng);
        b[i] = dist(rng);
        ref[i] = a[i] + b[i];
    }
    const std::size_t bytes = sizeof(float) * n;
    DeviceBuffer da(bytes, "a"), db(bytes, "b"), dout(bytes, "out");
    LIMARP_CUDA_CHECK(cudaMemcpy(da.p, a.data(), bytes, cudaMemcpyHostToDevice));
    LIMARP_CUDA_CHECK(cudaMemcpy(db.p, b.data(), bytes, cudaMemcpyHostToDevice));
    const int block = 256;
    add_kernel<<<(n + block - 1) / block, block>>>(dout.f(), da.f(), db.f(), n);
    LIMARP_CUDA_CHECK_LAUNCH();
    LIMARP_CUDA_CHECK(cudaDeviceSynchronize());
    LIMARP_CUDA_CHECK(cudaMemcpy(out.data(), dout.p, bytes, cudaMemcpyDeviceToHost));
    int mismatches = 0;
    for (int i = 0; i < n; ++i) mismatches += out[i] != ref[i];  // one IEEE add: bit-exact
    BOOST_TEST(mismatches == 0);
}

BOOST_AUTO_TEST_CASE(invalid_launch_config_throws_cuda_error) {
    noop_kernel<<<1, 4096>>>();  // more threads per block than any GPU allows
    try {
        LIMARP_CUDA_CHECK_LAUNCH();
        BOOST_FAIL("an invalid launch configuration did not throw");
    } catch (const limarp::CudaError& e) {
        const std::string msg = e.what();
        BOOST_TEST_MESSAGE("message: " << msg);
        // documented as cudaErrorInvalidConfiguration; CUDA 13.0 (driver 580) returns cudaErrorInvalidValue
        BOOST_TEST((contains(msg, "cudaErrorInvalidConfiguration") || contains(msg, "cudaErrorInvalidValue")));
        BOOST_TEST(contains(msg, "test_check.cu:"));
        BOOST_TEST(contains(msg, "kernel launch"));
    }
    // the launch error is not sticky: the next launch works
    noop_kernel<<<1, 32>>>();
    BOOST_CHECK_NO_THROW(LIMARP_CUDA_CHECK_LAUNCH());
    BOOST_CHECK_NO_THROW(LIMARP_CUDA_CHECK(cudaDeviceSynchronize()));
}

BOOST_AUTO_TEST_CASE(failed_call_names_the_call) {
    int n = 0;
    LIMARP_CUDA_CHECK(cudaGetDeviceCount(&n));
    try {
        LIMARP_CUDA_CHECK(cudaSetDevice(n + 100));
        BOOST_FAIL("cudaSetDevice of a missing device did not throw");
    } catch (const limarp::CudaError& e) {
        const std::string msg = e.what();
        BOOST_TEST_MESSAGE("message: " << msg);
        BOOST_TEST(contains(msg, "cudaSetDevice(n + 100)"));
        BOOST_TEST(contains(msg, "cudaErrorInvalidDevice"));
        BOOST_TEST(contains(msg, "test_check.cu:"));
    }
    BOOST_CHECK_THROW(LIMARP_CUDA_CHECK(cudaMemcpy(nullptr, &n, sizeof n, cudaMemcpyHostToDevice)), limarp::CudaError);
    BOOST_CHECK_NO_THROW(LIMARP_CUDA_CHECK(cudaSetDevice(0)));
    BOOST_CHECK_THROW(throw limarp::CudaError("x"), limarp::Error);  // CudaError is a limarp::Error
}

BOOST_AUTO_TEST_CASE(out_of_memory_reports_sizes) {
    const std::size_t huge = std::size_t{1} << 50;  // 1 PiB
    try {
        void* p = limarp::cuda_malloc_checked(huge, "test buffer");
        cudaFree(p);
        BOOST_FAIL("allocating 1 PiB did not throw");
    } catch (const limarp::CudaError& e) {
        const std::string msg = e.what();
        BOOST_TEST_MESSAGE("message: " << msg);
        BOOST_TEST(contains(msg, std::to_string(huge) + " bytes"));
        BOOST_TEST(contains(msg, "\"test buffer\""));
        BOOST_TEST(contains(msg, "out of memory"));
        BOOST_TEST(contains(msg, "free of"));
    }
    BOOST_TEST(cudaGetLastError() == cudaSuccess);  // the error was cleared
    DeviceBuffer ok(1 << 20, "after oom");          // and the device still allocates
    BOOST_TEST(ok.p != nullptr);
    BOOST_TEST(limarp::cuda_malloc_checked(0, "empty") == nullptr);
}

BOOST_AUTO_TEST_SUITE_END()
