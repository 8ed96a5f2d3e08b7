// The Izhikevich (2003) neuron, one time step over a block of neurons: forward, reverse (VJP), and
// the recomputation of the recovery variable from a checkpoint. No XLA types here; see
// izhikevich_ffi.cc for the loops over time, the blocking and the threads.
//
// Per neuron, membrane v (mV), recovery u (mV/ms), input I (pA), step dt (ms); every operation is
// evaluated in the element type T, left to right, exactly as spark_torch/kernel/model.py writes it:
//
//   f(v, u, I) = 0.04*v*v + 5.0*v + 140.0 - u + R*I
//   euler:          v* = clip(v + dt*f(v, u, I));                      u* = u + dt*a*(b*v - u)
//   izhikevich2003: v½ = clip(v + h*f(v, u, I)); v* = clip(v½ + h*f(v½, u, I)); u* = u + dt*a*(b*v* - u)
//                   (h = 0.5*dt; clip confines to [-1e5, 1e5], derivative 1 on it, 0 beyond)
//   spike s = v* >= v_pk;  x = (v* - v_pk) / (v_pk - v_r)
//   v' = s ? c : v*;  u' = clip(s ? u* + d : u*) (mV/ms);  mem = (v' - v_r) * (1 / (v_pk - v_r))
//
// Build without -ffast-math and with -ffp-contract=off: every + and * is then rounded on its own
// (no fused multiply-add), so vectorized and scalar iterations give bit-identical results.
#ifndef SPARK_TORCH_IZHIKEVICH_H_
#define SPARK_TORCH_IZHIKEVICH_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// No two pointers of a loop below alias a buffer that the loop writes (the callers keep them apart), so
// the compiler need not reload a value after a store.
#define IZH_RESTRICT __restrict__

#if defined(__clang__)
#define IZH_VECTORIZE _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define IZH_VECTORIZE _Pragma("GCC ivdep")
#else
#define IZH_VECTORIZE
#endif

namespace izh {

enum Scheme : int { kEuler = 0, kIzhikevich2003 = 1 };
enum Surrogate : int { kNoSurrogate = 0, kAtan = 1, kFastSigmoid = 2, kSigmoid = 3 };
// Parameter order of spark_torch.kernel.IzhikevichParams.
enum Param : int { kVr = 0, kC, kR, kVpk, kA, kB, kD, kNumParams };

constexpr double kVLimit = 1e5;  // mV, spark_torch.kernel.V_LIMIT

// Step constants in T: dt, h = 0.5*dt, and the fused surrogate's two constants (see Derivative).
template <typename T>
struct Constants {
  T dt, half, s1, s2;
};

// Written as two selections (the lower bound, then the upper) rather than one nested one: the same value for
// every v (NaN included: both comparisons are false), in fewer vector instructions.
template <typename T>
inline T Clip(T v) {
  const T above_lower = v < T(-kVLimit) ? T(-kVLimit) : v;
  return v > T(kVLimit) ? T(kVLimit) : above_lower;
}

// The bits of |x| as an unsigned integer: ordered as |x| for the numbers and infinities, and above all of
// them for a NaN. (A maximum of these vectorizes, where one of floats, with its NaN rules, does not.)
template <typename T>
inline auto MagnitudeBits(T x) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(Bits) == sizeof(T), "IEEE single or double");
  Bits bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits & (~Bits(0) >> 1);
}

// dClip/dv: 1 on the closed interval (and for NaN, which Clip passes through), 0 beyond it.
template <typename T>
inline T ClipGrad(T raw, T g) {
  const T below_upper = raw > T(kVLimit) ? T(0) : g;  // two selections, as Clip
  return raw < T(-kVLimit) ? T(0) : below_upper;
}

template <typename T>
inline T Drive(T v, T u, T ri) {
  return T(0.04) * v * v + T(5.0) * v + T(140.0) - u + ri;
}

// One integration step before spike detection; keeps the unclipped values for the reverse step.
template <typename T>
struct Integrated {
  T raw_half, v_half, raw, v_star, u_star;
};

// dt_a = dt*a, the first product of u + dt*a*(b*w - u), rounded once per block (Neurons).
template <typename T, int kScheme>
inline Integrated<T> Integrate(T v, T u, T ri, T dt_a, T b, const Constants<T>& k) {
  Integrated<T> r;
  if constexpr (kScheme == kEuler) {
    r.raw_half = r.v_half = T(0);
    r.raw = v + k.dt * Drive(v, u, ri);
    r.v_star = Clip(r.raw);
    r.u_star = u + dt_a * (b * v - u);
  } else {
    r.raw_half = v + k.half * Drive(v, u, ri);
    r.v_half = Clip(r.raw_half);
    r.raw = r.v_half + k.half * Drive(r.v_half, u, ri);
    r.v_star = Clip(r.raw);
    r.u_star = u + dt_a * (b * r.v_star - u);
  }
  return r;
}

// d spike / d x of snnTorch's surrogates, as spark_torch.kernel.surrogate_derivative:
// atan (alpha):        s1 / (1 + (s2*x)^2),       s1 = alpha/2, s2 = pi/2*alpha
// fast_sigmoid (k):    1 / (s1*|x| + 1)^2,        s1 = k
// sigmoid (k):         s1*e / (e + 1)^2, e = exp(s2*x), s1 = k, s2 = -k
template <typename T, int kSurrogate>
inline T Derivative(T x, const Constants<T>& k) {
  if constexpr (kSurrogate == kAtan) {
    const T y = k.s2 * x;
    return k.s1 / (T(1) + y * y);
  } else if constexpr (kSurrogate == kFastSigmoid) {
    const T y = k.s1 * std::fabs(x) + T(1);
    return T(1) / (y * y);
  } else {
    const T e = std::exp(k.s2 * x);
    const T y = e + T(1);
    return k.s1 * e / (y * y);
  }
}

// The time-invariant values of a block of neurons, gathered or derived once per block: p[k] holds
// parameter k, and dt_a = dt*a, den = v_pk - v_r, scale = 1 / den (each rounded as the formulas do).
template <typename T>
struct Neurons {
  const T* p[kNumParams];
  const T *dt_a, *den, *scale;
};

// A field of a block's neurons read in a loop: its row, or (kUniform: every neuron has the same value) that
// value, read once before the loop and kept in a register.
template <typename T, bool kUniform>
struct Field {
  const T* row;
  T value;
  explicit Field(const T* r) : row(r), value(r[0]) {}
  T operator[](int64_t j) const { return kUniform ? value : row[j]; }
};

// Forward step for n neurons: reads the pre-step state (v_in, u_in), writes the post-step state to
// (v_out, u_out) (other arrays: the next scratch rows or trace rows), the 0/1 spike, and
// x, mem and the unclipped membrane `raw` (v* = Clip(raw), see Integrate) when asked for (kX, kMem, kRaw).
// With kRaw, returns whether the clip bounded any u' or any u' is NaN (the reverse then needs u: its general
// step, which gives a NaN the same bits), else false. kUniform: every neuron of the block has the same fields
// (see Field).
template <typename T, int kScheme, bool kX, bool kMem, bool kRaw, bool kUniform = false>
inline bool ForwardStep(int64_t n, const T* IZH_RESTRICT current, const Neurons<T>& q, const T* IZH_RESTRICT v_in,
                        const T* IZH_RESTRICT u_in, T* IZH_RESTRICT v_out, T* IZH_RESTRICT u_out,
                        T* IZH_RESTRICT spike, T* IZH_RESTRICT x, T* IZH_RESTRICT mem, T* IZH_RESTRICT raw,
                        const Constants<T>& k) {
  const Field<T, kUniform> vr(q.p[kVr]), c(q.p[kC]), res(q.p[kR]), vpk(q.p[kVpk]), b(q.p[kB]), d(q.p[kD]);
  const Field<T, kUniform> dt_a(q.dt_a), den(q.den), scale(q.scale);
  decltype(MagnitudeBits(T(0))) largest = 0;  // of |u'| (kRaw)
  IZH_VECTORIZE
  for (int64_t j = 0; j < n; ++j) {
    const Integrated<T> s = Integrate<T, kScheme>(v_in[j], u_in[j], res[j] * current[j], dt_a[j], b[j], k);
    const bool fired = s.v_star >= vpk[j];
    spike[j] = fired ? T(1) : T(0);
    if constexpr (kX) x[j] = (s.v_star - vpk[j]) / den[j];
    if constexpr (kRaw) raw[j] = s.raw;
    const T v_next = fired ? c[j] : s.v_star;
    v_out[j] = v_next;
    const T u_next = fired ? s.u_star + d[j] : s.u_star;
    if constexpr (kRaw) largest = std::max(largest, MagnitudeBits(u_next));
    u_out[j] = Clip(u_next);
    if constexpr (kMem) mem[j] = (v_next - vr[j]) * scale[j];
  }
  return largest > MagnitudeBits(T(kVLimit));
}

// The forward's u update of one step with its recorded spike: u_next from the pre-step (v, u).
template <typename T, int kScheme>
inline void RecomputeRecovery(int64_t n, const T* current, const Neurons<T>& q, const T* v, const T* u,
                              const T* spike, T* u_next, const Constants<T>& k) {
  const T *res = q.p[kR], *b = q.p[kB], *d = q.p[kD], *dt_a = q.dt_a;
  IZH_VECTORIZE
  for (int64_t j = 0; j < n; ++j) {
    const Integrated<T> s = Integrate<T, kScheme>(v[j], u[j], res[j] * current[j], dt_a[j], b[j], k);
    u_next[j] = Clip(spike[j] != T(0) ? s.u_star + d[j] : s.u_star);
  }
}

// The post-step membrane from a step's unclipped membrane alone: v' = s ? c : v*, v* = Clip(raw).
template <typename T>
inline void MembraneAfter(int64_t n, const Neurons<T>& q, const T* raw, T* v_next) {
  const T *c = q.p[kC], *vpk = q.p[kVpk];
  IZH_VECTORIZE
  for (int64_t j = 0; j < n; ++j) {
    const T v_star = Clip(raw[j]);
    v_next[j] = v_star >= vpk[j] ? c[j] : v_star;
  }
}

// The post-step state from the pre-step state and the step's kept unclipped membrane, without the input:
// u* = u + dt*a*(b*w - u) reads w = v (euler) or w = v* (izhikevich2003), and v* = Clip(raw) decides the
// spike. The forward's arithmetic (bit-identical).
template <typename T, int kScheme>
inline void StateAfter(int64_t n, const Neurons<T>& q, const T* v, const T* u, const T* raw, T* v_next, T* u_next) {
  const T *c = q.p[kC], *vpk = q.p[kVpk], *b = q.p[kB], *d = q.p[kD], *dt_a = q.dt_a;
  IZH_VECTORIZE
  for (int64_t j = 0; j < n; ++j) {
    const T v_star = Clip(raw[j]);
    const bool fired = v_star >= vpk[j];
    const T w = kScheme == kEuler ? v[j] : v_star;
    const T u_star = u[j] + dt_a[j] * (b[j] * w - u[j]);
    v_next[j] = fired ? c[j] : v_star;
    u_next[j] = Clip(fired ? u_star + d[j] : u_star);
  }
}

// What the reverse step of one time step reads and writes, for one block of neurons.
template <typename T>
struct ReverseRow {
  const T *v, *u, *current, *spike;               // pre-step state, input, recorded 0/1 spike (kRaw: unused)
  const T* raw;                                   // the step's unclipped membrane (kRaw only)
  const T *g_x, *g_v, *g_u, *g_spikes, *g_mem;    // cotangents of the step's x, v', u', spike, mem
  T* g_current;                                   // out: dL/dI of the step
};

// Reverse step: carries (g_v, g_u) = dL/d(v', u') in, dL/d(v, u) out; writes dL/dI. With kExtra,
// adds every parameter's gradient to acc[k] and applies the mem cotangent (else g_mem is unused).
// The spike is held constant (as the forward's detached reset); the fused surrogate turns the
// spike's cotangent into dL/dx. With kRaw the step's unclipped membrane is given: the spike is
// Clip(raw) >= v_pk, as the forward decided it, and euler needs neither the input nor a re-integration
// (unless kExtra: the resistance's gradient reads the input); izhikevich2003 re-integrates its half step.
template <typename T, int kScheme, int kSurrogate, bool kExtra, bool kRaw>
inline void ReverseStep(int64_t n, const ReverseRow<T>& row, const Neurons<T>& q, T* IZH_RESTRICT carry_v,
                        T* IZH_RESTRICT carry_u, T* const* acc, const Constants<T>& k) {
  const T *vr = q.p[kVr], *c = q.p[kC], *res = q.p[kR], *vpk = q.p[kVpk], *b = q.p[kB], *d = q.p[kD];
  const T *dt_a = q.dt_a, *dens = q.den, *scale = q.scale;
  const ReverseRow<T> r = row;  // a local copy: the loop's stores cannot alias its pointers
  IZH_VECTORIZE
  for (int64_t j = 0; j < n; ++j) {
    const T v = r.v[j], u = r.u[j], den = dens[j];
    Integrated<T> s;
    if constexpr (kRaw && kScheme == kEuler) {  // Integrate's euler values, raw as the forward computed it
      s.raw_half = s.v_half = T(0);
      s.raw = r.raw[j];
      s.v_star = Clip(s.raw);
      s.u_star = u + dt_a[j] * (b[j] * v - u);
    } else {
      s = Integrate<T, kScheme>(v, u, res[j] * r.current[j], dt_a[j], b[j], k);
    }
    const bool fired = kRaw ? s.v_star >= vpk[j] : r.spike[j] != T(0);
    const T num_x = s.v_star - vpk[j];
    T g_x = r.g_x[j];
    if constexpr (kSurrogate != kNoSurrogate) g_x = g_x + r.g_spikes[j] * Derivative<T, kSurrogate>(num_x / den, k);
    T g_v_next = carry_v[j] + r.g_v[j];
    const T g_u_star = ClipGrad(fired ? s.u_star + d[j] : s.u_star, carry_u[j] + r.g_u[j]);
    const T g_num_x = g_x / den;
    if constexpr (kExtra) {  // x and mem = (v' - v_r) * (1 / (v_pk - v_r)) reach v_r and v_pk; the reset c, d
      const T num_mem = (fired ? c[j] : s.v_star) - vr[j], inverse = scale[j];
      const T g_num_mem = r.g_mem[j] * inverse;
      const T g_den = -g_x * num_x / (den * den) + -(r.g_mem[j] * num_mem) * (inverse * inverse);
      g_v_next = g_v_next + g_num_mem;
      acc[kVr][j] += -g_num_mem - g_den;
      acc[kVpk][j] += g_den - g_num_x;
      acc[kC][j] += fired ? g_v_next : T(0);
      acc[kD][j] += fired ? g_u_star : T(0);
    }
    T g_v_star = g_num_x + (fired ? T(0) : g_v_next);
    const T w = kScheme == kEuler ? v : s.v_star;  // the membrane value that u* = u + dt*a*(b*w - u) reads
    const T h = g_u_star * dt_a[j];
    T g_u = g_u_star - h;
    if constexpr (kExtra) {
      acc[kA][j] += g_u_star * (b[j] * w - u) * k.dt;
      acc[kB][j] += h * w;
    }
    T g_v, g_drive_sum;
    if constexpr (kScheme == kEuler) {
      const T g_raw = ClipGrad(s.raw, g_v_star);
      const T g_f = g_raw * k.dt;
      g_v = g_raw + g_f * (T(0.08) * v + T(5.0)) + h * b[j];
      g_drive_sum = g_f;
    } else {
      g_v_star = g_v_star + h * b[j];
      const T g_raw = ClipGrad(s.raw, g_v_star);
      const T g_f2 = g_raw * k.half;
      const T g_raw_half = ClipGrad(s.raw_half, g_raw + g_f2 * (T(0.08) * s.v_half + T(5.0)));
      const T g_f1 = g_raw_half * k.half;
      g_v = g_raw_half + g_f1 * (T(0.08) * v + T(5.0));
      g_drive_sum = g_f2 + g_f1;
    }
    if constexpr (kExtra) acc[kR][j] += g_drive_sum * r.current[j];
    carry_v[j] = g_v;
    carry_u[j] = g_u - g_drive_sum;
    r.g_current[j] = g_drive_sum * res[j];
  }
}

// ReverseStep for euler from the kept unclipped membrane, without u: for a run in which the forward's clip
// never bounded u' (then dClip/du' = 1), no parameter gradient is wanted (kExtra false) and the cotangents of
// the per-step v and u are absent (their zeros are added as constants), u enters no value ReverseStep
// computes. The same operations in the same order, so the same bits. The pre-step membrane is v' of the
// previous step, derived here from that step's unclipped membrane as MembraneAfter does (kFromRaw:
// `previous` is that raw row), or given (`previous` is the pre-step v row: the first step). `g_signal` is the
// spikes' cotangent (with a surrogate) or x's. kUniform: every neuron of the block has the same fields.
template <typename T, int kSurrogate, bool kUniform, bool kFromRaw>
inline void ReverseStepEulerUnclipped(int64_t n, const T* IZH_RESTRICT previous, const T* IZH_RESTRICT raw_row,
                                      const T* IZH_RESTRICT g_signal, const Neurons<T>& q, T* IZH_RESTRICT carry_v,
                                      T* IZH_RESTRICT carry_u, T* IZH_RESTRICT g_current, const Constants<T>& k) {
  const Field<T, kUniform> c(q.p[kC]), res(q.p[kR]), vpk(q.p[kVpk]), b(q.p[kB]), dt_a(q.dt_a), dens(q.den);
  IZH_VECTORIZE
  for (int64_t j = 0; j < n; ++j) {
    T v = previous[j];
    if constexpr (kFromRaw) {
      const T v_star_before = Clip(v);
      v = v_star_before >= vpk[j] ? c[j] : v_star_before;
    }
    const T den = dens[j], raw = raw_row[j];
    const T v_star = Clip(raw);
    const bool fired = v_star >= vpk[j];
    const T num_x = v_star - vpk[j];
    T g_x;
    if constexpr (kSurrogate != kNoSurrogate) g_x = T(0) + g_signal[j] * Derivative<T, kSurrogate>(num_x / den, k);
    else g_x = g_signal[j];
    const T g_v_next = carry_v[j] + T(0);
    const T g_u_star = carry_u[j] + T(0);
    const T g_num_x = g_x / den;
    const T g_v_star = g_num_x + (fired ? T(0) : g_v_next);
    const T h = g_u_star * dt_a[j];
    const T g_u = g_u_star - h;
    const T g_raw = ClipGrad(raw, g_v_star);
    const T g_f = g_raw * k.dt;
    carry_v[j] = g_raw + g_f * (T(0.08) * v + T(5.0)) + h * b[j];
    carry_u[j] = g_u - g_f;
    g_current[j] = g_f * res[j];
  }
}

}  // namespace izh

#endif  // SPARK_TORCH_IZHIKEVICH_H_
