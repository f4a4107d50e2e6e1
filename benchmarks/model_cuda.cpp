// bench_model_cuda: the same benchmark on the CUDA backend (the model templates instantiated with
// Cuda<>; built only with limarp::cuda). Flags and output: model_bench.hpp. The peer in the same
// device call: benchmarks/cuda_model_peer.py (transformers bf16).
#include "model_bench.hpp"

int main(int argc, char** argv) { return limarp::bench::model_bench_main<limarp::Cuda<>>("model_cuda", argc, argv); }
