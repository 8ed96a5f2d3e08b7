// Plain C entry points to the fused Izhikevich loops, for callers that hold the memory themselves
// (the torch layer's direct executor, through ctypes): the same checks and loops as the XLA FFI
// handlers of izhikevich_ffi.cc (izhikevich_interface.h), without XLA's runtime around them.
//
// Small calls (below kParallelWork neuron-steps) run on the calling thread; larger ones share their
// blocks between it and the host's OpenMP threads (SparkTorchUseHostThreads) or else the WorkerPool's (at
// most `attributes.threads` in all; 0: every core).
// Blocks are independent, so results are bit-identical to the FFI handlers' whatever the thread count.
//
// Return value: 0, or 1 when an operand breaks the interface's rules; then nothing is written and
// `error` (when not null) holds a message of at most error_size - 1 characters.
//
// Included once, by izhikevich_ffi.cc: one translation unit, so the loops' template instances are
// compiled once for both kinds of entry point.
#ifndef SPARK_TORCH_IZHIKEVICH_DIRECT_H_
#define SPARK_TORCH_IZHIKEVICH_DIRECT_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "izhikevich_interface.h"

#ifndef IZH_EXPORT
#define IZH_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace izh {
namespace direct {

// ForEachBlock with at most `max_threads` threads (0: every core): the calling thread and a team of the host's
// OpenMP threads where the caller named that runtime (HostParallelRegion), else the WorkerPool's.
struct OnWorkers {
  int64_t max_threads;
  template <typename T>
  auto For() const {
    return [max_threads = max_threads](int64_t m, int64_t n_steps, size_t scratch_size, auto block) {
      if (max_threads == 1 || n_steps * m < kParallelWork) return ForEachBlockOnThisThread<T>(m, scratch_size, block);
      const int64_t threads = max_threads > 0 ? max_threads : Cores();
      if (ParallelRegionFn region = HostParallelRegion().load(std::memory_order_acquire)) {
        return ForEachBlockOnTeam<T>(region, threads, m, n_steps, scratch_size, block);
      }
      ForEachBlock<T>(WorkerPool::Get(), threads, m, n_steps, scratch_size, block);
    };
  }
};

inline int Report(const Status& status, char* error, int64_t error_size) {
  if (status.empty()) return 0;
  if (error != nullptr && error_size > 0) {
    const size_t n = std::min<size_t>(status.size(), static_cast<size_t>(error_size - 1));
    std::memcpy(error, status.data(), n);
    error[n] = '\0';
  }
  return 1;
}

inline Status CheckCounts(const Attributes* a, int64_t n_in, int64_t want_in, int64_t n_out, int64_t want_out) {
  if (a == nullptr) return "`attributes` is null";
  if (n_in != want_in || n_out != want_out) {
    return "expected " + std::to_string(want_in) + " operands and " + std::to_string(want_out) + " results, got " +
           std::to_string(n_in) + " and " + std::to_string(n_out);
  }
  return Status{};
}

// Checks the operand and result counts, then runs `call` (CallForward or CallReverse) on OnWorkers.
template <typename CallFn>
int Run(const Attributes* a, const View* in, int64_t n_in, int64_t want_in, const View* out, int64_t n_out,
        int64_t want_out, char* error, int64_t error_size, CallFn call) {
  Status status = CheckCounts(a, n_in, want_in, n_out, want_out);
  if (status.empty()) status = call(*a, in, out, OnWorkers{a->threads});
  return Report(status, error, error_size);
}

}  // namespace direct
}  // namespace izh

IZH_EXPORT const char* SparkTorchIzhikevichInterface() {
  static const std::string description = izh::InterfaceDescription();
  return description.c_str();
}

// Runs the direct calls' threads on the host's OpenMP runtime: `parallel_region` is its GOMP_parallel (see
// ParallelRegionFn), e.g. that of the runtime torch's operations use; null returns to the library's WorkerPool.
IZH_EXPORT void SparkTorchUseHostThreads(void* parallel_region) {
  izh::HostParallelRegion().store(reinterpret_cast<izh::ParallelRegionFn>(parallel_region), std::memory_order_release);
}

IZH_EXPORT int SparkTorchIzhikevichForwardDirect(const izh::Attributes* attributes, const izh::View* operands,
                                                 int64_t n_operands, const izh::View* results, int64_t n_results,
                                                 char* error, int64_t error_size) {
  return izh::direct::Run(attributes, operands, n_operands, izh::kNumForwardOperands, results, n_results,
                          izh::kNumForwardResults, error, error_size,
                          [](const auto&... args) { return izh::CallForward(args...); });
}

IZH_EXPORT int SparkTorchIzhikevichReverseDirect(const izh::Attributes* attributes, const izh::View* operands,
                                                 int64_t n_operands, const izh::View* results, int64_t n_results,
                                                 char* error, int64_t error_size) {
  return izh::direct::Run(attributes, operands, n_operands, izh::kNumReverseOperands, results, n_results,
                          izh::kNumReverseResults, error, error_size,
                          [](const auto&... args) { return izh::CallReverse(args...); });
}

#endif  // SPARK_TORCH_IZHIKEVICH_DIRECT_H_
