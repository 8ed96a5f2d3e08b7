// Plain C entry points to the fused Izhikevich loops, for callers that hold the memory themselves
// (the torch layer's eager CPU calls, through ctypes): the same loops as the XLA FFI handlers of
// izhikevich_ffi.cc, without XLA's runtime around them. spark_torch/kernel/native/direct.py documents
// them; spark_torch/native_calls.py prepares every operand before calling.
//
// Layout as in izhikevich_ffi.cc: time buffers are [n_steps, M] row-major (M = neurons); the initial
// state, the seven parameters and time-constant cotangents are periodic operands (`data`, `period`):
// neuron i reads data[i % period]. Traces are kept for every step (no recovery checkpoints). All
// blocks run on the calling thread, in order: the caller uses this path only for problems the FFI
// handlers would run on one thread too, so results are bit-identical to theirs.
//
// Return value: 0, or kInvalid when an operand breaks the rules above (nothing is written then).
//
// Included once, by izhikevich_ffi.cc: one translation unit, so the loops' template instances are
// compiled once for both kinds of entry point (a second unit doubled the first-use build time).
#ifndef SPARK_TORCH_IZHIKEVICH_DIRECT_H_
#define SPARK_TORCH_IZHIKEVICH_DIRECT_H_

#include <cstdint>

#include "izhikevich_loops.h"

#ifndef IZH_EXPORT
#define IZH_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace izh {
namespace direct {

constexpr int kInvalid = 1;

template <typename T>
bool SetPeriodic(Periodic<T>& operand, const void* data, int64_t period, int64_t m) {
  if (period < 0 || period > m || (period > 0 && (data == nullptr || m % period != 0))) return false;
  operand = Periodic<T>{static_cast<const T*>(data), period};
  return true;
}

// v0, u0, then the parameters in the order of spark_torch.kernel.IzhikevichParams.
template <typename T>
bool SetModel(Periodic<T>& v0, Periodic<T>& u0, Periodic<T>* params, const void* const* data,
              const int64_t* periods, int64_t m) {
  bool ok = SetPeriodic(v0, data[0], periods[0], m) && SetPeriodic(u0, data[1], periods[1], m);
  for (int i = 0; i < kNumParams; ++i) ok = ok && periods[2 + i] > 0 && SetPeriodic(params[i], data[2 + i], periods[2 + i], m);
  return ok;
}

template <typename T>
int ForwardDirect(int64_t n_steps, int64_t m, double dt, int64_t scheme, const void* current,
                  const void* const* model, const int64_t* periods, void* spikes, int64_t spikes_bool, void* x,
                  void* v, void* u, void* mem) {
  Forward<T> f{};
  f.m = m, f.n_steps = n_steps, f.every = 0, f.trace_state = true;
  f.k = MakeConstants<T>(dt, kNoSurrogate, 0.0);
  f.current = static_cast<const T*>(current);
  if (!SetModel<T>(f.v0, f.u0, f.params, model, periods, m)) return kInvalid;
  f.spikes = spikes_bool ? nullptr : static_cast<T*>(spikes);
  f.spikes_bool = spikes_bool ? static_cast<uint8_t*>(spikes) : nullptr;
  f.x = static_cast<T*>(x), f.v = static_cast<T*>(v), f.u = static_cast<T*>(u), f.mem = static_cast<T*>(mem);
  f.checkpoints = nullptr;
  const ForwardBlockFn<T> block = scheme == kEuler ? SelectForward<T, kEuler>(f.x, f.mem)
                                                   : SelectForward<T, kIzhikevich2003>(f.x, f.mem);
  ForEachBlockOnThisThread<T>(m, ForwardScratch<T>(), [&](int64_t j0, int64_t n, T* s) { block(f, j0, n, s); });
  return 0;
}

// cotangent_periods[i] (i: x, v, u, spikes, mem): 0 absent, > 0 periodic, -1 per step ([n_steps, M]).
template <typename T>
int ReverseDirect(int64_t n_steps, int64_t m, double dt, int64_t scheme, int64_t surrogate, double surrogate_param,
                  const void* current, const void* const* model, const int64_t* periods, const void* spikes,
                  int64_t spikes_bool, const void* v_trace, const void* u_trace, const void* const* cotangents,
                  const int64_t* cotangent_periods, void* g_current, void* g_v0, void* g_u0, void* const* g_params) {
  Reverse<T> r{};
  r.m = m, r.n_steps = n_steps, r.every = 0;
  r.k = MakeConstants<T>(dt, surrogate, surrogate_param);
  r.current = static_cast<const T*>(current);
  if (!SetModel<T>(r.v0, r.u0, r.params, model, periods, m)) return kInvalid;
  r.spikes = spikes_bool ? nullptr : static_cast<const T*>(spikes);
  r.spikes_bool = spikes_bool ? static_cast<const uint8_t*>(spikes) : nullptr;
  r.v_trace = static_cast<const T*>(v_trace), r.u_trace = static_cast<const T*>(u_trace);
  r.checkpoints = nullptr;
  Cotangent<T>* targets[] = {&r.g_x, &r.g_v, &r.g_u, &r.g_spikes, &r.g_mem};
  for (int i = 0; i < 5; ++i) {
    if (cotangent_periods[i] == -1) {
      if (cotangents[i] == nullptr) return kInvalid;
      targets[i]->per_step = static_cast<const T*>(cotangents[i]);
    } else if (!SetPeriodic(targets[i]->constant, cotangents[i], cotangent_periods[i], m)) {
      return kInvalid;
    }
  }
  r.g_current = static_cast<T*>(g_current), r.g_v0 = static_cast<T*>(g_v0), r.g_u0 = static_cast<T*>(g_u0);
  bool extra = r.g_mem.per_step || r.g_mem.constant.period;
  for (int i = 0; i < kNumParams; ++i) extra |= (r.g_params[i] = static_cast<T*>(g_params[i])) != nullptr;
  if (!r.g_spikes.per_step && !r.g_spikes.constant.period) surrogate = kNoSurrogate;
  const ReverseBlockFn<T> block = scheme == kEuler ? SelectReverse<T, kEuler>(surrogate, extra)
                                                   : SelectReverse<T, kIzhikevich2003>(surrogate, extra);
  ForEachBlockOnThisThread<T>(m, ReverseScratch<T>(0), [&](int64_t j0, int64_t n, T* s) { block(r, j0, n, s); });
  return 0;
}

bool ValidCall(int64_t dtype, int64_t n_steps, int64_t m, int64_t scheme) {
  return (dtype == 0 || dtype == 1) && n_steps >= 0 && m >= 0 && (scheme == kEuler || scheme == kIzhikevich2003);
}

}  // namespace direct
}  // namespace izh

// Forward: spikes (dtype of current, or uint8 0/1 when spikes_bool), x (null: not wanted), v and u
// traces, mem (null: not wanted), each [n_steps, M]. dtype: 0 float32, 1 float64.
IZH_EXPORT int SparkTorchIzhikevichForwardDirect(int64_t dtype, int64_t n_steps, int64_t m, double dt,
                                                 int64_t scheme, const void* current, const void* const* model,
                                                 const int64_t* periods, void* spikes, int64_t spikes_bool,
                                                 void* x, void* v, void* u, void* mem) {
  if (!izh::direct::ValidCall(dtype, n_steps, m, scheme) || current == nullptr || spikes == nullptr || v == nullptr ||
      u == nullptr) {
    return izh::direct::kInvalid;
  }
  auto run = dtype == 0 ? izh::direct::ForwardDirect<float> : izh::direct::ForwardDirect<double>;
  return run(n_steps, m, dt, scheme, current, model, periods, spikes, spikes_bool, x, v, u, mem);
}

// Reverse: g_current [n_steps, M], g_v0 and g_u0 [M] (null: not wanted), seven parameter gradients per
// neuron [M] (null: not wanted), from the forward's operands, its spikes and v/u traces, and five cotangents.
IZH_EXPORT int SparkTorchIzhikevichReverseDirect(int64_t dtype, int64_t n_steps, int64_t m, double dt,
                                                 int64_t scheme, int64_t surrogate, double surrogate_param,
                                                 const void* current, const void* const* model,
                                                 const int64_t* periods, const void* spikes, int64_t spikes_bool,
                                                 const void* v_trace, const void* u_trace,
                                                 const void* const* cotangents, const int64_t* cotangent_periods,
                                                 void* g_current, void* g_v0, void* g_u0, void* const* g_params) {
  if (!izh::direct::ValidCall(dtype, n_steps, m, scheme) || surrogate < izh::kNoSurrogate || surrogate > izh::kSigmoid ||
      current == nullptr || spikes == nullptr || v_trace == nullptr || u_trace == nullptr || g_current == nullptr) {
    return izh::direct::kInvalid;
  }
  auto run = dtype == 0 ? izh::direct::ReverseDirect<float> : izh::direct::ReverseDirect<double>;
  return run(n_steps, m, dt, scheme, surrogate, surrogate_param, current, model, periods, spikes, spikes_bool,
             v_trace, u_trace, cotangents, cotangent_periods, g_current, g_v0, g_u0, g_params);
}

#endif  // SPARK_TORCH_IZHIKEVICH_DIRECT_H_
