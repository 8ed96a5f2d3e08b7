// The kernel's binary interface, written once for both ways in: the XLA FFI handlers
// (izhikevich_ffi.cc) and the plain C entry points (izhikevich_direct.h). Each shell only collects its
// operands into Views (address and element count) and its attributes into an Attributes struct, then
// calls MakeForward / MakeReverse, which check every operand and fill the loop structs, and
// RunForward / RunReverse, which run the blocks with the shell's executor.
//
// The order of operands, results and attributes, and the codes below, are mirrored by
// spark_torch/kernel/native/interface.py. SparkTorchIzhikevichInterface() returns them as one string;
// the Python side refuses a library whose string differs from the one it derives from its own tables.
#ifndef SPARK_TORCH_IZHIKEVICH_INTERFACE_H_
#define SPARK_TORCH_IZHIKEVICH_INTERFACE_H_

#include <cstdint>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "izhikevich_threads.h"

namespace izh {

enum DType : int { kFloat32 = 0, kFloat64 = 1 };

// Operands of the forward call: the input, the initial state and the seven parameters (periodic), and
// the number of steps to run (an int32 scalar; the rest of a longer buffer is left zero).
enum ForwardOperand : int { kFwdCurrent = 0, kFwdV0, kFwdU0, kFwdParams, kFwdSteps = kFwdParams + kNumParams,
                            kNumForwardOperands };
// Results: the spikes, x and mem ([t_buf, m]; x, mem may be empty: not asked for), v and u (traces or the
// final state), and the residuals of the attributes' `residuals` mode (Residuals; the others empty);
// u_clipped (raw_trace, optional: one element) is set to 1 when the clip bounded any u' (or one is NaN), else 0;
// nonfinite_current (optional: one element) is set to 1 when the input of a step run holds a NaN or ±Inf, else 0.
enum ForwardResult : int { kSpikes = 0, kX, kV, kU, kMem, kRawMembrane, kVCheckpoints, kUCheckpoints, kUClipped,
                           kNonfiniteCurrent, kNumForwardResults };
// Operands of the reverse call: the forward's operands, what it kept (Residuals: spikes and state traces,
// the raw membrane trace, checkpoints), the cotangents of x, v, u, the spikes and mem, and those of the
// final v and u (where the forward returned the final state only).
enum ReverseOperand : int { kRevCurrent = 0, kRevV0, kRevU0, kRevParams, kRevSpikes = kRevParams + kNumParams,
                            kRevV, kRevU, kRevRaw, kRevVCheckpoints, kRevUCheckpoints, kRevUClipped, kRevGX, kRevGV, kRevGU,
                            kRevGSpikes, kRevGMem, kRevGVFinal, kRevGUFinal, kRevSteps, kNumReverseOperands };
enum ReverseResult : int { kGCurrent = 0, kGV0, kGU0, kGParams, kNumReverseResults = kGParams + kNumParams };

#define IZH_PARAM_NAMES "potential_rest", "potential_reset", "resistance", "threshold", "recovery_timescale", \
                        "recovery_sensitivity", "recovery_update"
constexpr const char* kForwardOperandNames[] = {"current", "v0", "u0", IZH_PARAM_NAMES, "n_steps"};
constexpr const char* kForwardResultNames[] = {"spikes", "x", "v", "u", "mem", "raw", "v_checkpoints",
                                               "u_checkpoints", "u_clipped", "nonfinite_current"};
constexpr const char* kReverseOperandNames[] = {"current", "v0", "u0", IZH_PARAM_NAMES, "spikes", "v", "u", "raw",
                                                "v_checkpoints", "u_checkpoints", "u_clipped", "g_x", "g_v", "g_u", "g_spikes",
                                                "g_mem", "g_v_final", "g_u_final", "n_steps"};
constexpr const char* kReverseResultNames[] = {"g_current", "g_v0", "g_u0", "g_potential_rest", "g_potential_reset",
                                               "g_resistance", "g_threshold", "g_recovery_timescale",
                                               "g_recovery_sensitivity", "g_recovery_update"};
#undef IZH_PARAM_NAMES
constexpr const char* kSchemeNames[] = {"euler", "izhikevich2003"};
constexpr const char* kSurrogateNames[] = {"none", "atan", "fast_sigmoid", "sigmoid"};
constexpr const char* kDTypeNames[] = {"float32", "float64"};
constexpr const char* kResidualNames[] = {"final_state", "state_traces", "raw_trace", "checkpoints"};
static_assert(sizeof(kForwardOperandNames) / sizeof(char*) == kNumForwardOperands);
static_assert(sizeof(kForwardResultNames) / sizeof(char*) == kNumForwardResults);
static_assert(sizeof(kReverseOperandNames) / sizeof(char*) == kNumReverseOperands);
static_assert(sizeof(kReverseResultNames) / sizeof(char*) == kNumReverseResults);

// A buffer: its address and element count (0: absent or empty).
struct View {
  void* data;
  int64_t count;
};

// The scalars of a call. The FFI shell derives dtype, t_buf, m and spikes_bool from its buffers and
// takes the rest as attributes of the same names; the direct shell receives the whole struct.
struct Attributes {
  int64_t dtype;            // DType of every floating operand and result
  int64_t t_buf;            // rows of every time buffer
  int64_t m;                // neurons per row
  double dt;                // ms
  int64_t scheme;           // Scheme
  int64_t surrogate;        // Surrogate fused into the reverse loop (kNoSurrogate: none)
  double surrogate_param;   // its parameter
  int64_t residuals;        // Residuals: what the forward keeps for the reverse, which reads the same
  int64_t every;            // checkpoint interval in steps (kStateTraces: 0 = u traced; kRawTrace, kCheckpoints: >= 1)
  int64_t per_step;         // reverse: bit i set when cotangent i (x, v, u, spikes, mem) has a row per step
  int64_t spikes_bool;      // spikes are uint8 0/1 (else of dtype)
  int64_t threads;          // direct calls: most threads to run blocks on (0: every core); the FFI uses XLA's pool
};
#define IZH_ATTRIBUTE_FIELDS "dtype:i64,t_buf:i64,m:i64,dt:f64,scheme:i64,surrogate:i64,surrogate_param:f64," \
                             "residuals:i64,every:i64,per_step:i64,spikes_bool:i64,threads:i64"

inline void AppendNames(std::string& out, const char* label, const char* const* names, int count) {
  out += label;
  for (int i = 0; i < count; ++i) out += (i ? "," : ":") + std::string(names[i]);
  out += ";";
}

// Every fact above as one string (see the header comment).
inline std::string InterfaceDescription() {
  std::string out;
  AppendNames(out, "forward_operands", kForwardOperandNames, kNumForwardOperands);
  AppendNames(out, "forward_results", kForwardResultNames, kNumForwardResults);
  AppendNames(out, "reverse_operands", kReverseOperandNames, kNumReverseOperands);
  AppendNames(out, "reverse_results", kReverseResultNames, kNumReverseResults);
  AppendNames(out, "schemes", kSchemeNames, 2);
  AppendNames(out, "surrogates", kSurrogateNames, 4);
  AppendNames(out, "dtypes", kDTypeNames, 2);
  AppendNames(out, "residuals", kResidualNames, 4);
  out += "attributes:" IZH_ATTRIBUTE_FIELDS ";parallel_work:" + std::to_string(kParallelWork);
  return out;
}

// ---- checking operands --------------------------------------------------------------------------

// The outcome of a check: empty for success, else a message naming the operand and the rule.
using Status = std::string;

inline Status CheckCall(const Attributes& a) {
  if (a.dtype != kFloat32 && a.dtype != kFloat64) return Status("`dtype` must be float32 (0) or float64 (1)");
  if (a.t_buf < 0 || a.m < 0) return Status("the time buffer's shape must not be negative");
  if (a.scheme != kEuler && a.scheme != kIzhikevich2003) {
    return Status("`scheme` code " + std::to_string(a.scheme) + " is none of 0 (euler), 1 (izhikevich2003)");
  }
  if (a.surrogate < kNoSurrogate || a.surrogate > kSigmoid) {
    return Status("`surrogate` code " + std::to_string(a.surrogate) + " is not in 0..3");
  }
  if (a.residuals < kFinalState || a.residuals > kCheckpoints) {
    return Status("`residuals` code " + std::to_string(a.residuals) + " is not in 0..3");
  }
  if (a.every < 0 || a.per_step < 0 || a.per_step > 31) return Status("`every` or `per_step` out of range");
  if ((a.residuals == kRawTrace || a.residuals == kCheckpoints) && a.every < 1) {
    return Status(std::string("`every` must be at least 1 with residuals ") + kResidualNames[a.residuals]);
  }
  return Status{};
}

// A periodic operand: 1 to m elements, a divisor of m (absent allowed only where `optional`).
template <typename T>
Status ToPeriodic(const View& view, int64_t m, const char* name, bool optional, Periodic<T>& out) {
  if (view.count == 0 || m == 0) {
    out = Periodic<T>{};
    return (optional || m == 0) ? Status{} : Status(std::string("`") + name + "` is empty");
  }
  if (view.data == nullptr || view.count < 0 || view.count > m || m % view.count != 0) {
    return Status(std::string("`") + name + "` has " + std::to_string(view.count) +
                         " elements, which must divide the " + std::to_string(m) + " neurons");
  }
  out = Periodic<T>{static_cast<const T*>(view.data), view.count};
  return Status{};
}

// A buffer that must hold exactly `count` elements (or may be empty, where `optional`).
inline Status CheckCount(const View& view, int64_t count, const char* name, bool optional = false) {
  if (optional && view.count == 0) return Status{};
  if (view.count != count || (count > 0 && view.data == nullptr)) {
    return Status(std::string("`") + name + "` has " + std::to_string(view.count) + " elements, not the " +
                         std::to_string(count) + " it must hold" + (optional ? " (or 0)" : ""));
  }
  return Status{};
}

inline int64_t StepCount(const View& n_steps, int64_t t_buf) {
  const int64_t n = *static_cast<const int32_t*>(n_steps.data);
  return n < 0 ? 0 : (n > t_buf ? t_buf : n);
}

#define IZH_CHECK(expr)          \
  do {                           \
    Status status_ = (expr);          \
    if (!status_.empty()) return status_; \
  } while (0)

template <typename T>
Status DecodeModel(const View* operands, int64_t m, Periodic<T>& v0, Periodic<T>& u0, Periodic<T>* params,
                   const char* const* names) {
  IZH_CHECK(ToPeriodic<T>(operands[1], m, names[1], false, v0));
  IZH_CHECK(ToPeriodic<T>(operands[2], m, names[2], false, u0));
  for (int i = 0; i < kNumParams; ++i) IZH_CHECK(ToPeriodic<T>(operands[3 + i], m, names[3 + i], false, params[i]));
  return Status{};
}

// What a forward and a reverse call share (`call`: a Forward<T> or Reverse<T>): the attributes, the input
// [t_buf, m] (operand 0 of both), the number of steps to run (operand `steps`), the initial state and fields.
static_assert(int{kFwdCurrent} == int{kRevCurrent} && int{kFwdV0} == int{kRevV0} && int{kFwdU0} == int{kRevU0} &&
                  int{kFwdParams} == int{kRevParams},
              "forward and reverse calls share the layout of their first operands");

template <typename T, typename Call>
Status DecodeCall(const Attributes& a, const View* in, int steps, const char* const* names, Call& call) {
  IZH_CHECK(CheckCall(a));
  IZH_CHECK(CheckCount(in[kFwdCurrent], a.t_buf * a.m, "current"));
  IZH_CHECK(CheckCount(in[steps], 1, "n_steps"));
  call.m = a.m, call.n_steps = StepCount(in[steps], a.t_buf), call.residuals = a.residuals;
  call.current = static_cast<const T*>(in[kFwdCurrent].data);
  return DecodeModel<T>(in, a.m, call.v0, call.u0, call.params, names);
}

template <typename T>
Status MakeForward(const Attributes& a, const View* in, const View* out, Forward<T>& f) {
  f = Forward<T>{};
  IZH_CHECK(DecodeCall<T>(a, in, kFwdSteps, kForwardOperandNames, f));
  const int64_t rows = a.t_buf * a.m;
  f.every = a.residuals == kFinalState ? 0 : a.every;
  f.k = MakeConstants<T>(a.dt, kNoSurrogate, 0.0);
  const bool traced = a.residuals == kStateTraces;
  const int64_t checkpoint_rows = f.every ? (a.t_buf + f.every - 1) / f.every * a.m : 0;
  IZH_CHECK(CheckCount(out[kSpikes], rows, "spikes"));
  IZH_CHECK(CheckCount(out[kX], rows, "x", true));
  IZH_CHECK(CheckCount(out[kV], traced ? rows : a.m, "v"));
  IZH_CHECK(CheckCount(out[kU], traced && !f.every ? rows : a.m, "u"));
  IZH_CHECK(CheckCount(out[kMem], rows, "mem", true));
  IZH_CHECK(CheckCount(out[kRawMembrane], a.residuals == kRawTrace ? rows : 0, "raw"));
  IZH_CHECK(CheckCount(out[kVCheckpoints], a.residuals == kCheckpoints ? checkpoint_rows : 0, "v_checkpoints"));
  IZH_CHECK(CheckCount(out[kUCheckpoints], checkpoint_rows, "u_checkpoints"));
  IZH_CHECK(CheckCount(out[kUClipped], a.residuals == kRawTrace ? 1 : 0, "u_clipped", a.residuals == kRawTrace));
  IZH_CHECK(CheckCount(out[kNonfiniteCurrent], 1, "nonfinite_current", true));
  f.spikes = a.spikes_bool ? nullptr : static_cast<T*>(out[kSpikes].data);
  f.spikes_bool = a.spikes_bool ? static_cast<uint8_t*>(out[kSpikes].data) : nullptr;
  auto data = [&](int i) { return out[i].count ? static_cast<T*>(out[i].data) : nullptr; };
  f.x = data(kX), f.v = data(kV), f.u = data(kU), f.mem = data(kMem), f.raw = data(kRawMembrane);
  f.v_checkpoints = data(kVCheckpoints), f.u_checkpoints = data(kUCheckpoints), f.u_clipped = data(kUClipped);
  f.nonfinite_current = data(kNonfiniteCurrent);
  return Status{};
}

// The forward's residuals a reverse call reads: exactly those of its mode, every other one empty.
template <typename T>
Status DecodeResiduals(const Attributes& a, const View* in, Reverse<T>& r) {
  const int64_t rows = a.t_buf * a.m, mode = a.residuals;
  const int64_t checkpoint_rows = a.every ? (a.t_buf + a.every - 1) / a.every * a.m : 0;
  if (mode == kFinalState) return Status("`residuals` final_state keeps nothing to run a reverse pass from");
  IZH_CHECK(CheckCount(in[kRevSpikes], mode == kStateTraces ? rows : 0, "spikes"));
  IZH_CHECK(CheckCount(in[kRevV], mode == kStateTraces ? rows : 0, "v"));
  IZH_CHECK(CheckCount(in[kRevU], mode == kStateTraces && !a.every ? rows : 0, "u"));
  IZH_CHECK(CheckCount(in[kRevRaw], mode == kRawTrace ? rows : 0, "raw"));
  IZH_CHECK(CheckCount(in[kRevVCheckpoints], mode == kCheckpoints ? checkpoint_rows : 0, "v_checkpoints"));
  IZH_CHECK(CheckCount(in[kRevUCheckpoints], checkpoint_rows, "u_checkpoints"));
  IZH_CHECK(CheckCount(in[kRevUClipped], mode == kRawTrace ? 1 : 0, "u_clipped", mode == kRawTrace));
  r.spikes = a.spikes_bool ? nullptr : static_cast<const T*>(in[kRevSpikes].data);
  r.spikes_bool = a.spikes_bool ? static_cast<const uint8_t*>(in[kRevSpikes].data) : nullptr;
  r.v_trace = static_cast<const T*>(in[kRevV].data);
  r.u_trace = static_cast<const T*>(in[kRevU].data);
  r.raw = static_cast<const T*>(in[kRevRaw].data);
  r.v_checkpoints = static_cast<const T*>(in[kRevVCheckpoints].data);
  r.u_checkpoints = static_cast<const T*>(in[kRevUCheckpoints].data);
  r.u_clipped = in[kRevUClipped].count ? static_cast<const T*>(in[kRevUClipped].data) : nullptr;
  return Status{};
}

// The cotangents: of x, v, u, the spikes and mem (absent, periodic or per step: `per_step`), and of the final
// v and u. A state the forward returned as its final value only has a final cotangent, not a per-step one.
template <typename T>
Status DecodeCotangents(const Attributes& a, const View* in, Reverse<T>& r) {
  const bool v_traced = a.residuals == kStateTraces, u_traced = v_traced && !a.every;
  Cotangent<T>* cotangents[] = {&r.g_x, &r.g_v, &r.g_u, &r.g_spikes, &r.g_mem};
  for (int i = 0; i < 5; ++i) {
    const View& view = in[kRevGX + i];
    const char* name = kReverseOperandNames[kRevGX + i];
    if ((i == 1 && !v_traced) || (i == 2 && !u_traced)) {
      IZH_CHECK(CheckCount(view, 0, name));  // that state is not traced: its cotangent is g_*_final
    } else if (a.per_step >> i & 1) {
      IZH_CHECK(CheckCount(view, a.t_buf * a.m, name));
      cotangents[i]->per_step = static_cast<const T*>(view.data);
    } else {
      IZH_CHECK(ToPeriodic<T>(view, a.m, name, true, cotangents[i]->constant));
    }
  }
  if (v_traced) IZH_CHECK(CheckCount(in[kRevGVFinal], 0, "g_v_final"));
  if (u_traced) IZH_CHECK(CheckCount(in[kRevGUFinal], 0, "g_u_final"));
  IZH_CHECK(ToPeriodic<T>(in[kRevGVFinal], a.m, "g_v_final", true, r.g_v_last));
  IZH_CHECK(ToPeriodic<T>(in[kRevGUFinal], a.m, "g_u_final", true, r.g_u_last));
  return Status{};
}

template <typename T>
Status MakeReverse(const Attributes& a, const View* in, const View* out, Reverse<T>& r) {
  r = Reverse<T>{};
  IZH_CHECK(DecodeCall<T>(a, in, kRevSteps, kReverseOperandNames, r));
  const int64_t rows = a.t_buf * a.m;
  r.every = a.every;
  r.k = MakeConstants<T>(a.dt, a.surrogate, a.surrogate_param);
  IZH_CHECK(DecodeResiduals<T>(a, in, r));
  IZH_CHECK(DecodeCotangents<T>(a, in, r));
  IZH_CHECK(CheckCount(out[kGCurrent], rows, "g_current"));
  r.g_current = static_cast<T*>(out[kGCurrent].data);
  T** state_grads[] = {&r.g_v0, &r.g_u0};
  for (int i = 0; i < 2; ++i) {
    IZH_CHECK(CheckCount(out[kGV0 + i], a.m, kReverseResultNames[kGV0 + i], true));
    *state_grads[i] = out[kGV0 + i].count ? static_cast<T*>(out[kGV0 + i].data) : nullptr;
  }
  for (int i = 0; i < kNumParams; ++i) {
    IZH_CHECK(CheckCount(out[kGParams + i], a.m, kReverseResultNames[kGParams + i], true));
    r.g_params[i] = out[kGParams + i].count ? static_cast<T*>(out[kGParams + i].data) : nullptr;
  }
  return Status{};
}

#undef IZH_CHECK

// ---- running ------------------------------------------------------------------------------------

template <typename T>
void Zero(T* data, int64_t count) {
  if (data != nullptr && count > 0) std::memset(data, 0, count * sizeof(T));
}

// Results are usually fresh memory that the loops touch first: one page fault per 4 KiB page.
// Transparent huge pages for the whole 2 MiB pages inside a result (never memory outside it) take one
// fault per 2 MiB; madvise is only a hint, a no-op where THP is off or unsupported.
inline void PreferHugePages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (data == nullptr || bytes < static_cast<int64_t>(kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

template <typename T>
void PreferHugePages(const View* results, int count, int bool_result = -1) {
  for (int i = 0; i < count; ++i) {
    PreferHugePages(results[i].data, results[i].count * (i == bool_result ? 1 : int64_t{sizeof(T)}));
  }
}

// Runs the forward over every block with `for_each_block(m, n_steps, scratch_size, block)`; rows past
// n_steps (and unused checkpoints) are zeroed.
template <typename T, typename ForEachBlockFn>
void RunForward(const Attributes& a, Forward<T>& f, ForEachBlockFn for_each_block) {
  if (f.m == 0) return;
  const int64_t tail = (a.t_buf - f.n_steps) * f.m, done = f.n_steps * f.m;
  if (f.spikes_bool) std::memset(f.spikes_bool + done, 0, tail);
  const bool traced = f.residuals == kStateTraces;
  for (T* out : {f.spikes, f.x, f.mem, f.raw, traced ? f.v : nullptr, traced && !f.every ? f.u : nullptr}) {
    Zero(out ? out + done : nullptr, tail);
  }
  if (f.u_clipped) *f.u_clipped = T(0);  // blocks that bound a u' set it to 1
  if (f.nonfinite_current) *f.nonfinite_current = T(0);  // blocks that read a NaN or ±Inf set it to 1
  if (f.every) {
    const int64_t written = (f.n_steps + f.every - 1) / f.every, total = (a.t_buf + f.every - 1) / f.every;
    Zero(f.u_checkpoints + written * f.m, (total - written) * f.m);
    Zero(f.v_checkpoints ? f.v_checkpoints + written * f.m : nullptr, (total - written) * f.m);
  }
  const bool x = f.x != nullptr, mem = f.mem != nullptr, raw = f.raw != nullptr;
  const ForwardBlockFn<T> block = a.scheme == kEuler ? SelectForward<T, kEuler>(x, mem, raw)
                                                     : SelectForward<T, kIzhikevich2003>(x, mem, raw);
  for_each_block(f.m, f.n_steps, ForwardScratch<T>(), [&](int64_t j0, int64_t n, T* s) { block(f, j0, n, s); });
}

template <typename T, typename ForEachBlockFn>
void RunReverse(const Attributes& a, Reverse<T>& r, ForEachBlockFn for_each_block) {
  if (r.m == 0) return;
  Zero(r.g_current + r.n_steps * r.m, (a.t_buf - r.n_steps) * r.m);
  bool extra = r.g_mem.per_step || r.g_mem.constant.period;
  for (int i = 0; i < kNumParams; ++i) extra |= r.g_params[i] != nullptr;
  const int64_t surrogate = (r.g_spikes.per_step || r.g_spikes.constant.period) ? a.surrogate : int64_t{kNoSurrogate};
  const bool raw = r.residuals == kRawTrace || r.residuals == kCheckpoints;
  const ReverseBlockFn<T> block = a.scheme == kEuler ? SelectReverse<T, kEuler>(surrogate, extra, raw)
                                                     : SelectReverse<T, kIzhikevich2003>(surrogate, extra, raw);
  for_each_block(r.m, r.n_steps, ReverseScratch<T>(r.every), [&](int64_t j0, int64_t n, T* s) { block(r, j0, n, s); });
}

template <typename T, typename ForEachBlockFn>
Status CallForwardTyped(const Attributes& a, const View* in, const View* out, ForEachBlockFn for_each_block) {
  izh::Forward<T> f;
  Status status = MakeForward<T>(a, in, out, f);
  if (!status.empty()) return status;
  PreferHugePages<T>(out, kNumForwardResults, a.spikes_bool ? kSpikes : -1);
  RunForward<T>(a, f, for_each_block);
  return status;
}

template <typename T, typename ForEachBlockFn>
Status CallReverseTyped(const Attributes& a, const View* in, const View* out, ForEachBlockFn for_each_block) {
  izh::Reverse<T> r;
  Status status = MakeReverse<T>(a, in, out, r);
  if (!status.empty()) return status;
  PreferHugePages<T>(out, kNumReverseResults);
  RunReverse<T>(a, r, for_each_block);
  return status;
}

// Checks the operands of a forward (reverse) call and runs it in the attributes' dtype; `executor`
// provides For<T>(), the function that runs every block (on this thread, or on a thread pool).
template <typename Executor>
Status CallForward(const Attributes& a, const View* in, const View* out, const Executor& executor) {
  return a.dtype == kFloat64 ? CallForwardTyped<double>(a, in, out, executor.template For<double>())
                             : CallForwardTyped<float>(a, in, out, executor.template For<float>());
}

template <typename Executor>
Status CallReverse(const Attributes& a, const View* in, const View* out, const Executor& executor) {
  return a.dtype == kFloat64 ? CallReverseTyped<double>(a, in, out, executor.template For<double>())
                             : CallReverseTyped<float>(a, in, out, executor.template For<float>());
}

}  // namespace izh

#endif  // SPARK_TORCH_IZHIKEVICH_INTERFACE_H_
