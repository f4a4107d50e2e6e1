#pragma once
/// \file limarp.hpp
/// \brief Umbrella header: the whole CPU library (core, I/O, quantization, layers, model, text,
/// generation, training utilities).
///
/// Not included here, because they need yaml-cpp linked (`yaml-cpp` in CMake):
/// `limarp/train/dataset.hpp` and `limarp/train/train_config.hpp`. CUDA headers
/// (`limarp/backend/cuda/*.cuh`) are included by CUDA translation units only.

#include "limarp/core/dtype.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/core/thread_pool.hpp"

#include "limarp/io/hf_config.hpp"
#include "limarp/io/mmap_file.hpp"
#include "limarp/io/npy.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/io/safetensors.hpp"

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/backend/cpu/qgemm.hpp"

#include "limarp/quant/int8_rowwise.hpp"
#include "limarp/quant/q8_0.hpp"
#include "limarp/quant/scheme.hpp"

#include "limarp/layers/attention.hpp"
#include "limarp/layers/concepts.hpp"
#include "limarp/layers/embedding.hpp"
#include "limarp/layers/linear.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/layers/rms_norm.hpp"
#include "limarp/layers/rotary.hpp"
#include "limarp/layers/swiglu.hpp"
#include "limarp/layers/weight.hpp"

#include "limarp/model/adapters.hpp"
#include "limarp/model/kv_cache.hpp"
#include "limarp/model/mistral_block.hpp"
#include "limarp/model/mistral_config.hpp"
#include "limarp/model/mistral_model.hpp"

#include "limarp/text/alpaca_prompt.hpp"
#include "limarp/text/character_card.hpp"
#include "limarp/text/chatml.hpp"
#include "limarp/text/tokenizer.hpp"

#include "limarp/generate/generator.hpp"
#include "limarp/generate/sampler.hpp"
#include "limarp/generate/stop_strings.hpp"

#include "limarp/train/adamw.hpp"
#include "limarp/train/checkpoint.hpp"
#include "limarp/train/grad.hpp"
#include "limarp/train/length_bins.hpp"
#include "limarp/train/lr_schedule.hpp"
#include "limarp/train/metrics.hpp"
#include "limarp/train/progress.hpp"
