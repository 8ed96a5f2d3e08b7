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
#include <cstring>
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

// Asks the caches for a block's row of a time buffer before a step needs it: consecutive rows of a block
// lie a whole row of neurons apart, where the hardware's stream prefetchers do not follow (no-op for null).
template <typename T>
inline void Prefetch(const T* row, int64_t n, bool for_writing) {
  if (row == nullptr) return;
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t j = 0; j < n; j += kLine) {
    if (for_writing) __builtin_prefetch(row + j, 1, 3);
    else __builtin_prefetch(row + j, 0, 3);
  }
}

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

// Whether every neuron of a block has the same fields, bit for bit (a scalar config, or per-unit fields that
// have not been made to differ): then the loops read each field once (Field<T, true>), with the same values.
template <typename T>
bool UniformBlock(const Neurons<T>& q, int64_t n) {
  for (int i = 0; i < kNumParams; ++i) {
    for (int64_t j = 1; j < n; ++j) {
      if (std::memcmp(q.p[i] + j, q.p[i], sizeof(T)) != 0) return false;
    }
  }
  return true;
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

// Whether none of n values is a NaN or ±Inf (x - x is 0 exactly for the finite ones).
template <typename T>
bool AllFinite(int64_t n, const T* IZH_RESTRICT values) {
  int nonfinite = 0;
  IZH_VECTORIZE
  for (int64_t j = 0; j < n; ++j) nonfinite |= (values[j] - values[j]) != T(0);
  return nonfinite == 0;
}

// Sets a one-element flag result to 1 (blocks on several threads may all set it).
template <typename T>
void SetFlag(T* flag) {
  const T one = T(1);
  __atomic_store(flag, &one, __ATOMIC_RELAXED);
}

// ---- forward ----------------------------------------------------------------------------------

// What a forward keeps for its reverse pass (besides the final state, which every mode writes):
//   kFinalState   nothing (inference);
//   kStateTraces  the post-step v and u of every step (u: only every `every` steps, with every > 0);
//   kRawTrace     the unclipped membrane `raw` of every step (v* = Clip(raw)) and u every `every` steps:
//                 the reverse derives each pre-step v and spike from it and recomputes u without the input;
//   kCheckpoints  v and u every `every` steps: the reverse recomputes each run of steps from the input.
enum Residuals : int { kFinalState = 0, kStateTraces = 1, kRawTrace = 2, kCheckpoints = 3 };

template <typename T>
struct Forward {
  int64_t m, n_steps, every;  // every > 0: keep the state before steps 0, every, 2*every, ... (see Residuals)
  int64_t residuals;
  Constants<T> k;
  const T* current;
  Periodic<T> v0, u0, params[kNumParams];
  T *spikes, *x, *v, *u, *mem, *raw, *v_checkpoints, *u_checkpoints;  // spikes null when they are bool
  T* u_clipped;  // kRawTrace (or null): 1 when the clip bounded any u' or one is NaN (the reverse then needs u)
  T* nonfinite_current;  // or null: set to 1 when an input row of the steps run holds a NaN or ±Inf
  uint8_t* spikes_bool;
};

// The forward's state rows in a block's scratch: v, u, a 0/1 spike row, and the other v and u rows.
constexpr int kForwardStateRows = 5;

// Scratch values per block: the state rows, then the Neurons.
template <typename T>
constexpr size_t ForwardScratch() {
  return (kForwardStateRows + kNeuronRows) * kBlock<T>;
}

// The state lives in scratch unless it is traced (kStateTraces: each step reads the previous trace row
// and writes the next one; u only when no checkpoints of it are kept).
template <typename T, int kScheme, bool kX, bool kMem, bool kRaw, bool kUniform>
void ForwardSteps(const Forward<T>& f, int64_t j0, int64_t n, T* scratch, const Neurons<T>& q) {
  constexpr int64_t B = kBlock<T>;
  T *v = scratch, *u = v + B, *spike_tmp = u + B, *v_other = spike_tmp + B, *u_other = v_other + B;
  f.v0.Gather(j0, n, v);
  f.u0.Gather(j0, n, u);
  const bool traced = f.residuals == kStateTraces;
  const T *v_in = v, *u_in = u;
  bool u_clipped = false, nonfinite = false;
  for (int64_t t = 0; t < f.n_steps; ++t) {
    const int64_t row = t * f.m + j0;
    if (f.every && t % f.every == 0) {
      std::copy_n(u_in, n, f.u_checkpoints + t / f.every * f.m + j0);
      if (f.v_checkpoints) std::copy_n(v_in, n, f.v_checkpoints + t / f.every * f.m + j0);
    }
    if (t + 1 < f.n_steps) {  // the next step's rows
      const int64_t next = row + f.m;
      Prefetch(f.current + next, n, false);
      for (T* out : {f.spikes, kX ? f.x : nullptr, kMem ? f.mem : nullptr, kRaw ? f.raw : nullptr,
                     traced ? f.v : nullptr, traced && !f.every ? f.u : nullptr}) {
        Prefetch(out ? out + next : nullptr, n, true);
      }
    }
    T* spike = f.spikes ? f.spikes + row : spike_tmp;
    T* v_out = traced ? f.v + row : (v_in == v ? v_other : v);  // untraced: two rows in turn
    T* u_out = traced && !f.every ? f.u + row : (u_in == u ? u_other : u);
    u_clipped |= ForwardStep<T, kScheme, kX, kMem, kRaw, kUniform>(
        n, f.current + row, q, v_in, u_in, v_out, u_out, spike, kX ? f.x + row : nullptr, kMem ? f.mem + row : nullptr,
        kRaw ? f.raw + row : nullptr, f.k);
    if (!f.spikes) for (int64_t j = 0; j < n; ++j) f.spikes_bool[row + j] = spike_tmp[j] != T(0);
    if (f.nonfinite_current && !nonfinite) nonfinite = !AllFinite(n, f.current + row);  // the row is in L1 now
    v_in = v_out, u_in = u_out;
  }
  if (!traced) std::copy_n(v_in, n, f.v + j0);
  if (!traced || f.every) std::copy_n(u_in, n, f.u + j0);
  // blocks may run on several threads: every writer of a flag stores the same 1
  if (u_clipped && f.u_clipped) SetFlag(f.u_clipped);
  if (nonfinite) SetFlag(f.nonfinite_current);
}

// The forward of one block: its fields gathered after the state rows of `scratch`, then every
// step, reading each field once when the block's are uniform (worth the check for more than one step).
template <typename T, int kScheme, bool kX, bool kMem, bool kRaw>
void ForwardBlock(const Forward<T>& f, int64_t j0, int64_t n, T* scratch) {
  const Neurons<T> q = GatherNeurons(f.params, j0, n, f.k.dt, scratch + kForwardStateRows * kBlock<T>);
  if (f.n_steps > 1 && UniformBlock(q, n)) return ForwardSteps<T, kScheme, kX, kMem, kRaw, true>(f, j0, n, scratch, q);
  ForwardSteps<T, kScheme, kX, kMem, kRaw, false>(f, j0, n, scratch, q);
}

template <typename T>
using ForwardBlockFn = void (*)(const Forward<T>&, int64_t, int64_t, T*);

template <typename T, int kScheme, bool kX>
ForwardBlockFn<T> SelectForward(bool mem, bool raw) {
  if (mem) return raw ? ForwardBlock<T, kScheme, kX, true, true> : ForwardBlock<T, kScheme, kX, true, false>;
  return raw ? ForwardBlock<T, kScheme, kX, false, true> : ForwardBlock<T, kScheme, kX, false, false>;
}

template <typename T, int kScheme>
ForwardBlockFn<T> SelectForward(bool x, bool mem, bool raw) {
  return x ? SelectForward<T, kScheme, true>(mem, raw) : SelectForward<T, kScheme, false>(mem, raw);
}

// ---- reverse ----------------------------------------------------------------------------------

template <typename T>
struct Reverse {
  int64_t m, n_steps, every;  // every > 0: the state is recomputed from checkpoints, `every` steps at a time
  int64_t residuals;          // what the forward kept (Residuals; not kFinalState)
  Constants<T> k;
  const T* current;
  Periodic<T> v0, u0, params[kNumParams], g_v_last, g_u_last;  // g_*_last: cotangents of the final state
  const T *spikes, *v_trace, *u_trace, *raw, *v_checkpoints, *u_checkpoints;  // spikes null when bool
  const T* u_clipped;  // kRawTrace (or null): the forward's flag; 0 lets euler skip u (ReverseStepEulerUnclipped)
  const uint8_t* spikes_bool;
  Cotangent<T> g_x, g_v, g_u, g_spikes, g_mem;
  T *g_current, *g_v0, *g_u0, *g_params[kNumParams];  // g_v0, g_u0, g_params[i] null: not wanted
};

// Scratch values per block: the Neurons, the parameters' gradient sums, the carries, the initial
// state, a zero row, a 0/1 spike row, five time-constant cotangents, and rows of v, u and raw for one
// run of `every` steps (plus one: the state after the run's last step).
template <typename T>
size_t ReverseScratch(int64_t every) {
  return (kNeuronRows + kNumParams + 11 + 3 * (std::max<int64_t>(every, 1) + 1)) * kBlock<T>;
}

// Whether the cotangents let an euler reverse without field gradients skip u (ReverseStepEulerUnclipped):
// none of the per-step v and u (nor, with a surrogate, of x) is given.
template <typename T>
bool CotangentsSkipRecovery(const Reverse<T>& r, int surrogate) {
  auto absent = [](const Cotangent<T>& g) { return g.per_step == nullptr && g.constant.period == 0; };
  return absent(r.g_v) && absent(r.g_u) && (surrogate == kNoSurrogate || absent(r.g_x));
}

// Whether it may skip u over all steps: so the cotangents let it, and the forward kept its raw trace and
// reports that its clip never bounded u'. (From checkpoints, each recomputed run tells; see ReverseBlock.)
template <typename T>
bool SkipsRecovery(const Reverse<T>& r, int surrogate) {
  return r.residuals == kRawTrace && r.u_clipped != nullptr && *r.u_clipped == T(0) &&
         CotangentsSkipRecovery(r, surrogate);
}

// ReverseStepEulerUnclipped for a block's fields (uniform or not) and its first step (from_raw false: `previous`
// is the initial v) or a later one (`previous` is the previous step's raw row).
template <typename T, int kSurrogate, typename... Args>
void ReverseStepSkippingRecovery(bool uniform, bool from_raw, int64_t n, Args... args) {
  if (uniform) {
    if (from_raw) return ReverseStepEulerUnclipped<T, kSurrogate, true, true>(n, args...);
    return ReverseStepEulerUnclipped<T, kSurrogate, true, false>(n, args...);
  }
  if (from_raw) return ReverseStepEulerUnclipped<T, kSurrogate, false, true>(n, args...);
  return ReverseStepEulerUnclipped<T, kSurrogate, false, false>(n, args...);
}

template <typename T, int kScheme, int kSurrogate, bool kExtra, bool kRaw>
void ReverseBlock(const Reverse<T>& r, int64_t j0, int64_t n, T* scratch) {
  constexpr int64_t B = kBlock<T>;
  const Neurons<T> q = GatherNeurons(r.params, j0, n, r.k.dt, scratch);
  T* acc[kNumParams];
  for (int i = 0; i < kNumParams; ++i) {
    acc[i] = scratch + (kNeuronRows + i) * B;
    std::fill_n(acc[i], n, T(0));
  }
  T *carry_v = scratch + (kNeuronRows + kNumParams) * B, *carry_u = carry_v + B, *v0 = carry_u + B, *u0 = v0 + B;
  T *zeros = u0 + B, *spike_tmp = zeros + B, *constants = spike_tmp + B;
  const int64_t run_rows = std::max<int64_t>(r.every, 1) + 1;
  T *run_v = constants + 5 * B, *run_u = run_v + run_rows * B, *run_raw = run_u + run_rows * B;
  std::fill_n(zeros, n, T(0));
  r.g_v_last.Gather(j0, n, carry_v);
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
    if (kRaw) return nullptr;  // decided again from raw
    if (r.spikes) return r.spikes + t * r.m + j0;
    for (int64_t j = 0; j < n; ++j) spike_tmp[j] = r.spikes_bool[t * r.m + j0 + j] ? T(1) : T(0);
    return spike_tmp;
  };
  const bool reads_current = !kRaw || kScheme != kEuler || kExtra;
  auto reverse_at = [&](int64_t t, const T* v, const T* u, const T* raw) {
    const int64_t row = t * r.m + j0;
    if (t > 0) {  // the previous step's rows, next in this loop
      const int64_t previous = row - r.m;
      Prefetch(r.g_current + previous, n, true);
      Prefetch(reads_current ? r.current + previous : nullptr, n, false);
      for (const Cotangent<T>* g : cotangents) Prefetch(g->per_step ? g->per_step + previous : nullptr, n, false);
    }
    const ReverseRow<T> rows{v, u, r.current + row, spike_at(t), raw, row_of(0, t), row_of(1, t),
                             row_of(2, t), row_of(3, t), row_of(4, t), r.g_current + row};
    ReverseStep<T, kScheme, kSurrogate, kExtra, kRaw>(n, rows, q, carry_v, carry_u, acc, r.k);
  };
  auto finish = [&] {  // the carries are dL/d(v0, u0); the sums are the parameters' gradients
    if (r.g_v0) std::copy_n(carry_v, n, r.g_v0 + j0);
    if (r.g_u0) std::copy_n(carry_u, n, r.g_u0 + j0);
    for (int i = 0; i < kNumParams; ++i) {
      if (r.g_params[i]) std::copy_n(acc[i], n, r.g_params[i] + j0);
    }
  };
  auto v_trace_before = [&](int64_t t) { return t ? r.v_trace + (t - 1) * r.m + j0 : v0; };
  auto run_row = [&](T* rows, int64_t i) { return rows + i * B; };
  auto raw_at = [&](int64_t t) { return r.raw + t * r.m + j0; };
  const bool uniform = kRaw && UniformBlock(q, n);  // (only the loops from a raw membrane read fields once)
  const int signal = kSurrogate != kNoSurrogate ? 3 : 0;  // the spikes' cotangent, or x's (the lean steps' signal)
  const bool lean_from_checkpoints = kRaw && kScheme == kEuler && !kExtra && CotangentsSkipRecovery(r, kSurrogate);
  // one step of the forward again, from the run's row i of (v, u): its raw membrane and the next (v, u) rows;
  // returns whether the clip bounded any u' (or one is NaN)
  auto recompute_step = [&](int64_t t, int64_t i) {
    auto step = uniform ? ForwardStep<T, kScheme, false, false, true, true>
                        : ForwardStep<T, kScheme, false, false, true, false>;
    return step(n, r.current + t * r.m + j0, q, run_row(run_v, i), run_row(run_u, i), run_row(run_v, i + 1),
                run_row(run_u, i + 1), spike_tmp, nullptr, nullptr, run_row(run_raw, i), r.k);
  };
  if constexpr (kRaw && kScheme == kEuler && !kExtra) {
    if (SkipsRecovery(r, kSurrogate)) {
      for (int64_t t = r.n_steps - 1; t >= 0; --t) {
        const int64_t row = t * r.m + j0;
        if (t > 1) Prefetch(raw_at(t - 2), n, false);
        if (t > 0) Prefetch(r.g_current + row - r.m, n, true);
        if (t > 0) Prefetch(cotangents[signal]->per_step ? cotangents[signal]->per_step + row - r.m : nullptr, n, false);
        ReverseStepSkippingRecovery<T, kSurrogate>(uniform, t > 0, n, t ? raw_at(t - 1) : v0, raw_at(t),
                                                   row_of(signal, t), q, carry_v, carry_u, r.g_current + row, r.k);
      }
      return finish();
    }
  }
  if (r.residuals == kStateTraces && !r.every) {
    for (int64_t t = r.n_steps - 1; t >= 0; --t) {
      reverse_at(t, v_trace_before(t), t ? r.u_trace + (t - 1) * r.m + j0 : u0, nullptr);
    }
  } else if (r.n_steps > 0) {  // runs of `every` steps, last run first, each recomputed from its checkpoint
    for (int64_t first = (r.n_steps - 1) / r.every * r.every; first >= 0; first -= r.every) {
      const int64_t stop = std::min(first + r.every, r.n_steps), checkpoint = first / r.every * r.m + j0;
      std::copy_n(r.u_checkpoints + checkpoint, n, run_u);
      if (r.residuals == kCheckpoints) {
        std::copy_n(r.v_checkpoints + checkpoint, n, run_v);
        bool u_clipped = false;  // by the clip in any step of the run (or NaN)
        for (int64_t t = first; t < stop; ++t) {
          const int64_t i = t - first;
          if (t + 1 < stop) Prefetch(r.current + (t + 1) * r.m + j0, n, false);
          u_clipped |= recompute_step(t, i);
        }
        if (lean_from_checkpoints && !u_clipped) {  // u enters no value the reverse computes: as the raw trace's
          for (int64_t t = stop - 1; t >= first; --t) {
            const int64_t i = t - first, row = t * r.m + j0;
            if (t > first) Prefetch(r.g_current + row - r.m, n, true);
            ReverseStepSkippingRecovery<T, kSurrogate>(uniform, false, n, run_row(run_v, i), run_row(run_raw, i),
                                                       row_of(signal, t), q, carry_v, carry_u, r.g_current + row, r.k);
          }
          continue;
        }
        for (int64_t t = stop - 1; t >= first; --t) {
          const int64_t i = t - first;
          reverse_at(t, run_row(run_v, i), run_row(run_u, i), run_row(run_raw, i));
        }
      } else if (r.residuals == kRawTrace) {
        if (first) MembraneAfter<T>(n, q, raw_at(first - 1), run_v);
        else std::copy_n(v0, n, run_v);
        for (int64_t t = first; t + 1 < stop; ++t) {
          const int64_t i = t - first;
          Prefetch(raw_at(t + 1), n, false);
          StateAfter<T, kScheme>(n, q, run_row(run_v, i), run_row(run_u, i), raw_at(t), run_row(run_v, i + 1),
                                 run_row(run_u, i + 1));
        }
        for (int64_t t = stop - 1; t >= first; --t) {
          const int64_t i = t - first;
          reverse_at(t, run_row(run_v, i), run_row(run_u, i), raw_at(t));
        }
      } else {  // kStateTraces with u checkpoints: v from its trace, u recomputed
        for (int64_t t = first; t + 1 < stop; ++t) {
          const int64_t i = t - first;
          RecomputeRecovery<T, kScheme>(n, r.current + t * r.m + j0, q, v_trace_before(t), run_row(run_u, i),
                                        spike_at(t), run_row(run_u, i + 1), r.k);
        }
        for (int64_t t = stop - 1; t >= first; --t) reverse_at(t, v_trace_before(t), run_row(run_u, t - first), nullptr);
      }
    }
  }
  finish();
}

template <typename T>
using ReverseBlockFn = void (*)(const Reverse<T>&, int64_t, int64_t, T*);

template <typename T, int kScheme, int kSurrogate>
ReverseBlockFn<T> SelectReverse(bool extra, bool raw) {
  if (extra) return raw ? ReverseBlock<T, kScheme, kSurrogate, true, true> : ReverseBlock<T, kScheme, kSurrogate, true, false>;
  return raw ? ReverseBlock<T, kScheme, kSurrogate, false, true> : ReverseBlock<T, kScheme, kSurrogate, false, false>;
}

template <typename T, int kScheme>
ReverseBlockFn<T> SelectReverse(int surrogate, bool extra, bool raw) {
  switch (surrogate) {
    case kAtan: return SelectReverse<T, kScheme, kAtan>(extra, raw);
    case kFastSigmoid: return SelectReverse<T, kScheme, kFastSigmoid>(extra, raw);
    case kSigmoid: return SelectReverse<T, kScheme, kSigmoid>(extra, raw);
    default: return SelectReverse<T, kScheme, kNoSurrogate>(extra, raw);
  }
}

}  // namespace izh

#endif  // SPARK_TORCH_IZHIKEVICH_LOOPS_H_
