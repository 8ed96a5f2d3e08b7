// The time loops of the Izhikevich kernel over one block of neurons: forward, and reverse (with the
// recovery variable recomputed from checkpoints when asked). No XLA types here; izhikevich_ffi.cc
// decodes the operands into Forward / Reverse and runs the blocks on threads.
//
// Layout: every time buffer is [T_buf, M] (row-major; M = neurons = prod of the state shape); a block
// is the neurons [j0, j0 + n), n <= kBlock<T>. Its parameters, gradient carries and time-constant
// operands are gathered once into `scratch` (a few KiB: L1/L2) and stay there for all time steps; so
// does the forward's state, unless it is traced (then each step reads the row the previous one wrote).
#ifndef SPARK_TORCH_IZHIKEVICH_LOOPS_H_
#define SPARK_TORCH_IZHIKEVICH_LOOPS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "izhikevich.h"

namespace izh {

constexpr int64_t kBlockBytes = 1024;  // a multiple of the 64-byte cache line: scratch rows stay aligned

template <typename T>
constexpr int64_t kBlock = kBlockBytes / sizeof(T);

// A time-constant operand broadcast to M neurons (element i % period); period 0: absent (zeros).
template <typename T>
struct Periodic {
  const T* data = nullptr;
  int64_t period = 0;

  void Gather(int64_t j0, int64_t n, T* out) const {
    if (period == 0) {
      std::fill_n(out, n, T(0));
    } else if (period == 1) {
      std::fill_n(out, n, data[0]);
    } else {  // contiguous runs of the period (one run when the block lies inside one period)
      for (int64_t j = 0, i = j0 % period; j < n; i = 0) {
        const int64_t run = std::min(n - j, period - i);
        std::copy_n(data + i, run, out + j);
        j += run;
      }
    }
  }
};

// A cotangent: absent, time-constant (periodic) or per step ([T_buf, M]).
template <typename T>
struct Cotangent {
  Periodic<T> constant;
  const T* per_step = nullptr;
};

// The rows of a block's Neurons in scratch: the seven parameters, then dt_a, den and scale.
constexpr int kNeuronRows = kNumParams + 3;

// Gathers the parameters of neurons [j0, j0 + n) into `local` (kNeuronRows rows of kBlock<T>) and
// derives the rest of Neurons from them.
template <typename T>
Neurons<T> GatherNeurons(const Periodic<T>* params, int64_t j0, int64_t n, T dt, T* local) {
  constexpr int64_t B = kBlock<T>;
  Neurons<T> q;
  for (int i = 0; i < kNumParams; ++i) {
    params[i].Gather(j0, n, local + i * B);
    q.p[i] = local + i * B;
  }
  T *dt_a = local + kNumParams * B, *den = dt_a + B, *scale = den + B;
  for (int64_t j = 0; j < n; ++j) {
    dt_a[j] = dt * q.p[kA][j];
    den[j] = q.p[kVpk][j] - q.p[kVr][j];
    scale[j] = T(1) / den[j];
  }
  q.dt_a = dt_a, q.den = den, q.scale = scale;
  return q;
}

// The step constants for `dt` (ms) and the fused surrogate's parameter (see Derivative).
template <typename T>
Constants<T> MakeConstants(double dt, int64_t surrogate, double param) {
  constexpr double kPi = 3.141592653589793;
  Constants<T> k{T(dt), T(0.5 * dt), T(0), T(0)};
  if (surrogate == kAtan) k.s1 = T(param / 2), k.s2 = T(kPi / 2 * param);
  if (surrogate == kFastSigmoid) k.s1 = T(param);
  if (surrogate == kSigmoid) k.s1 = T(param), k.s2 = T(-param);
  return k;
}

// A block worker's scratch area, aligned to a cache line (as are its rows: kBlockBytes is a multiple of 64).
template <typename T>
class Scratch {
 public:
  explicit Scratch(size_t size) : storage_(size + kAlign / sizeof(T)) {}
  T* data() {
    const uintptr_t address = reinterpret_cast<uintptr_t>(storage_.data());
    return reinterpret_cast<T*>((address + kAlign - 1) & ~uintptr_t{kAlign - 1});
  }

 private:
  static constexpr size_t kAlign = 64;
  std::vector<T> storage_;
};

// Runs block(j0, n, scratch) for every block of the m neurons, in order, on the calling thread.
template <typename T, typename Block>
void ForEachBlockOnThisThread(int64_t m, size_t scratch_size, Block block) {
  Scratch<T> scratch(scratch_size);
  for (int64_t j0 = 0; j0 < m; j0 += kBlock<T>) block(j0, std::min(kBlock<T>, m - j0), scratch.data());
}

// ---- forward ----------------------------------------------------------------------------------

template <typename T>
struct Forward {
  int64_t m, n_steps, every;  // every > 0: keep u before steps 0, every, 2*every, ... in checkpoints
  bool trace_state;
  Constants<T> k;
  const T* current;
  Periodic<T> v0, u0, params[kNumParams];
  T *spikes, *x, *v, *u, *mem, *checkpoints;  // spikes null when they are bool (spikes_bool)
  uint8_t* spikes_bool;
};

// Scratch values per block: v, u, a 0/1 spike row, and the Neurons.
template <typename T>
constexpr size_t ForwardScratch() {
  return (3 + kNeuronRows) * kBlock<T>;
}

// The state lives in scratch when it is not traced; when it is, each step reads the previous trace
// row and writes the next one (u: unless only checkpoints of it are kept).
template <typename T, int kScheme, bool kX, bool kMem>
void ForwardBlock(const Forward<T>& f, int64_t j0, int64_t n, T* scratch) {
  constexpr int64_t B = kBlock<T>;
  T *v = scratch, *u = v + B, *spike_tmp = u + B;
  const Neurons<T> q = GatherNeurons(f.params, j0, n, f.k.dt, spike_tmp + B);
  f.v0.Gather(j0, n, v);
  f.u0.Gather(j0, n, u);
  const T *v_in = v, *u_in = u;
  for (int64_t t = 0; t < f.n_steps; ++t) {
    const int64_t row = t * f.m + j0;
    if (f.every && t % f.every == 0) std::copy_n(u_in, n, f.checkpoints + t / f.every * f.m + j0);
    T* spike = f.spikes ? f.spikes + row : spike_tmp;
    T* v_out = f.trace_state ? f.v + row : v;
    T* u_out = f.trace_state && !f.every ? f.u + row : u;
    ForwardStep<T, kScheme, kX, kMem>(n, f.current + row, q, v_in, u_in, v_out, u_out, spike,
                                      kX ? f.x + row : nullptr, kMem ? f.mem + row : nullptr, f.k);
    if (!f.spikes) for (int64_t j = 0; j < n; ++j) f.spikes_bool[row + j] = spike_tmp[j] != T(0);
    v_in = v_out, u_in = u_out;
  }
  if (!f.trace_state) std::copy_n(v_in, n, f.v + j0);
  if (!f.trace_state || f.every) std::copy_n(u_in, n, f.u + j0);
}

template <typename T>
using ForwardBlockFn = void (*)(const Forward<T>&, int64_t, int64_t, T*);

template <typename T, int kScheme>
ForwardBlockFn<T> SelectForward(bool x, bool mem) {
  if (x) return mem ? ForwardBlock<T, kScheme, true, true> : ForwardBlock<T, kScheme, true, false>;
  return mem ? ForwardBlock<T, kScheme, false, true> : ForwardBlock<T, kScheme, false, false>;
}

// ---- reverse ----------------------------------------------------------------------------------

template <typename T>
struct Reverse {
  int64_t m, n_steps, every;  // every > 0: u is recomputed from checkpoints, K = every steps at a time
  Constants<T> k;
  const T* current;
  Periodic<T> v0, u0, params[kNumParams], g_u_last;
  const T *spikes, *v_trace, *u_trace, *checkpoints;  // spikes null when they are bool (spikes_bool)
  const uint8_t* spikes_bool;
  Cotangent<T> g_x, g_v, g_u, g_spikes, g_mem;
  T *g_current, *g_v0, *g_u0, *g_params[kNumParams];  // g_v0, g_u0, g_params[i] null: not wanted
};

// Scratch values per block: the Neurons, the parameters' gradient sums, the carries, the initial
// state, a zero row, a 0/1 spike row, five time-constant cotangents, and `every` rows of recomputed u.
template <typename T>
size_t ReverseScratch(int64_t every) {
  return (kNeuronRows + kNumParams + 11 + std::max<int64_t>(every, 1)) * kBlock<T>;
}

template <typename T, int kScheme, int kSurrogate, bool kExtra>
void ReverseBlock(const Reverse<T>& r, int64_t j0, int64_t n, T* scratch) {
  constexpr int64_t B = kBlock<T>;
  const Neurons<T> q = GatherNeurons(r.params, j0, n, r.k.dt, scratch);
  T* acc[kNumParams];
  for (int i = 0; i < kNumParams; ++i) {
    acc[i] = scratch + (kNeuronRows + i) * B;
    std::fill_n(acc[i], n, T(0));
  }
  T *carry_v = scratch + (kNeuronRows + kNumParams) * B, *carry_u = carry_v + B, *v0 = carry_u + B, *u0 = v0 + B;
  T *zeros = u0 + B, *spike_tmp = zeros + B, *constants = spike_tmp + B, *u_block = constants + 5 * B;
  std::fill_n(carry_v, n, T(0));
  std::fill_n(zeros, n, T(0));
  r.g_u_last.Gather(j0, n, carry_u);
  r.v0.Gather(j0, n, v0);
  r.u0.Gather(j0, n, u0);
  const Cotangent<T>* cotangents[5] = {&r.g_x, &r.g_v, &r.g_u, &r.g_spikes, &r.g_mem};
  for (int i = 0; i < 5; ++i) cotangents[i]->constant.Gather(j0, n, constants + i * B);
  auto row_of = [&](int i, int64_t t) -> const T* {
    const Cotangent<T>& g = *cotangents[i];
    if (g.per_step) return g.per_step + t * r.m + j0;
    return g.constant.period ? constants + i * B : zeros;
  };
  auto spike_at = [&](int64_t t) -> const T* {
    if (r.spikes) return r.spikes + t * r.m + j0;
    for (int64_t j = 0; j < n; ++j) spike_tmp[j] = r.spikes_bool[t * r.m + j0 + j] ? T(1) : T(0);
    return spike_tmp;
  };
  auto v_before = [&](int64_t t) { return t ? r.v_trace + (t - 1) * r.m + j0 : v0; };
  auto reverse_at = [&](int64_t t, const T* u) {
    const int64_t row = t * r.m + j0;
    const ReverseRow<T> rows{v_before(t), u, r.current + row, spike_at(t), row_of(0, t), row_of(1, t),
                             row_of(2, t), row_of(3, t), row_of(4, t), r.g_current + row};
    ReverseStep<T, kScheme, kSurrogate, kExtra>(n, rows, q, carry_v, carry_u, acc, r.k);
  };
  if (!r.every) {
    for (int64_t t = r.n_steps - 1; t >= 0; --t) reverse_at(t, t ? r.u_trace + (t - 1) * r.m + j0 : u0);
  } else {
    for (int64_t first = (r.n_steps - 1) / r.every * r.every; first >= 0; first -= r.every) {
      const int64_t stop = std::min(first + r.every, r.n_steps);
      std::copy_n(r.checkpoints + first / r.every * r.m + j0, n, u_block);
      for (int64_t t = first; t + 1 < stop; ++t) {
        RecomputeRecovery<T, kScheme>(n, r.current + t * r.m + j0, q, v_before(t), u_block + (t - first) * B,
                                      spike_at(t), u_block + (t - first + 1) * B, r.k);
      }
      for (int64_t t = stop - 1; t >= first; --t) reverse_at(t, u_block + (t - first) * B);
    }
  }
  if (r.g_v0) std::copy_n(carry_v, n, r.g_v0 + j0);
  if (r.g_u0) std::copy_n(carry_u, n, r.g_u0 + j0);
  for (int i = 0; i < kNumParams; ++i) {
    if (r.g_params[i]) std::copy_n(acc[i], n, r.g_params[i] + j0);
  }
}

template <typename T>
using ReverseBlockFn = void (*)(const Reverse<T>&, int64_t, int64_t, T*);

template <typename T, int kScheme, int kSurrogate>
ReverseBlockFn<T> SelectReverse(bool extra) {
  return extra ? ReverseBlock<T, kScheme, kSurrogate, true> : ReverseBlock<T, kScheme, kSurrogate, false>;
}

template <typename T, int kScheme>
ReverseBlockFn<T> SelectReverse(int surrogate, bool extra) {
  switch (surrogate) {
    case kAtan: return SelectReverse<T, kScheme, kAtan>(extra);
    case kFastSigmoid: return SelectReverse<T, kScheme, kFastSigmoid>(extra);
    case kSigmoid: return SelectReverse<T, kScheme, kSigmoid>(extra);
    default: return SelectReverse<T, kScheme, kNoSurrogate>(extra);
  }
}

}  // namespace izh

#endif  // SPARK_TORCH_IZHIKEVICH_LOOPS_H_
