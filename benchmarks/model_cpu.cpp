// bench_model_cpu: prefill and decode speed and peak memory of a random Mistral-7B-shaped model
// on the CPU backend. Flags and output: model_bench.hpp.
#include "model_bench.hpp"

int main(int argc, char** argv) { return limarp::bench::model_bench_main<limarp::Cpu<>>("model_cpu", argc, argv); }
