// XLA FFI handlers for the fused Izhikevich loops: one custom call runs all time steps of the
// forward (spark_torch_izhikevich_fwd) or of the reverse pass (spark_torch_izhikevich_bwd).
// spark_torch/kernel/native/__init__.py prepares the operands and documents each one.
//
// Layout: every time buffer is [T_buf, M] (row-major; M = neurons = prod of the state shape). A
// time-constant operand (state, parameter, time-constant cotangent) of P elements is periodic:
// neuron i reads element i % P (P = 1: a scalar; P = M: one value per neuron; P a divisor of M:
// per-unit values broadcast over the batch).
//
// Work split: neurons are cut into blocks of kBlockBytes (izhikevich_loops.h); a block's state,
// parameters and gradient carries stay in a small scratch area (L1/L2) for all time steps, and the
// time loop runs inside the block. Runs of consecutive blocks are claimed one at a time by the calling
// thread and by tasks on XLA's intra-op thread pool, so a busy pool only costs parallelism. Small
// problems (below kParallelWork neuron-steps) run on the calling thread alone.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "izhikevich_loops.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace izh {
namespace {

constexpr int64_t kParallelWork = int64_t{1} << 18;  // neuron-steps below which one thread is faster

// Runs block(j0, n, scratch) for every block of neurons. Workers (the calling thread and up to one
// pool task per further core) claim runs of `grain` blocks from a shared counter, so a task that
// starts late or is preempted just takes fewer runs; the caller waits only for runs already claimed.
template <typename T, typename Block>
void ForEachBlock(ffi::ThreadPool& pool, int64_t m, int64_t n_steps, size_t scratch_size, Block block) {
  const int64_t n_blocks = (m + kBlock<T> - 1) / kBlock<T>;
  static const int64_t cores = std::max<unsigned>(1, std::thread::hardware_concurrency());  // a syscall: once
  const int64_t n_workers = n_steps * m < kParallelWork
                                ? 1
                                : std::min({n_blocks, cores, std::max<int64_t>(1, pool.num_threads())});
  const int64_t grain = std::max<int64_t>(1, n_blocks / (8 * n_workers));  // ~8 runs per worker
  const int64_t n_runs = (n_blocks + grain - 1) / grain;
  auto run = [&](int64_t i, T* scratch) {
    for (int64_t b = i * grain; b < std::min((i + 1) * grain, n_blocks); ++b) {
      const int64_t j0 = b * kBlock<T>;
      block(j0, std::min(kBlock<T>, m - j0), scratch);
    }
  };
  if (n_workers == 1) return ForEachBlockOnThisThread<T>(m, scratch_size, block);
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mutex;
    std::condition_variable all_done;
  };
  auto shared = std::make_shared<Shared>();  // outlives this call for tasks that start after it
  auto work = [shared, n_runs, scratch_size, run_ptr = &run]() {
    std::unique_ptr<Scratch<T>> scratch;  // allocated once this task has claimed a run
    for (int64_t i; (i = shared->next.fetch_add(1, std::memory_order_relaxed)) < n_runs;) {
      if (!scratch) scratch = std::make_unique<Scratch<T>>(scratch_size);
      (*run_ptr)(i, scratch->data());
      if (shared->done.fetch_add(1, std::memory_order_acq_rel) + 1 == n_runs) {
        std::lock_guard<std::mutex> lock(shared->mutex);
        shared->all_done.notify_all();
      }
    }
  };
  for (int64_t i = 1; i < n_workers; ++i) pool.Schedule(decltype(work)(work));
  work();
  // Runs claimed by other tasks are still going: spin briefly, then sleep, which frees this core for
  // them when the machine is oversubscribed (a spinning caller would hold it).
  auto finished = [&] { return shared->done.load(std::memory_order_acquire) == n_runs; };
  for (int spin = 0; spin < 1000 && !finished(); ++spin) std::this_thread::yield();
  if (!finished()) {
    std::unique_lock<std::mutex> lock(shared->mutex);
    shared->all_done.wait(lock, finished);
  }
}

template <typename T>
void Zero(T* data, int64_t count) {
  if (count > 0) std::memset(data, 0, count * sizeof(T));
}

// Results are usually fresh memory that the loops touch first: one page fault per 4 KiB page, which
// costs as much as the arithmetic on large problems. Transparent huge pages for the whole 2 MiB pages
// inside a result (never memory outside it) take one fault per 2 MiB; madvise is only a hint, a
// no-op where THP is off or unsupported.
void PreferHugePages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (data == nullptr || bytes < static_cast<int64_t>(kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

void PreferHugePages(ffi::RemainingRets& rets) {
  for (size_t i = 0; i < rets.size(); ++i) {
    auto ret = rets.get<ffi::AnyBuffer>(i);
    if (!ret.has_error()) PreferHugePages((*ret.value()).untyped_data(), (*ret.value()).size_bytes());
  }
}

// ---- operand decoding -------------------------------------------------------------------------

struct Shape {
  int64_t t_buf, m;
};

ffi::ErrorOr<Shape> TimeShape(const ffi::AnyBuffer& current) {
  const auto dims = current.dimensions();
  if (dims.size() < 1) return ffi::Unexpected(ffi::Error::InvalidArgument("`current` must have a time axis"));
  int64_t m = 1;
  for (size_t i = 1; i < dims.size(); ++i) m *= dims[i];
  return Shape{dims[0], m};
}

template <typename T>
ffi::ErrorOr<Periodic<T>> AsPeriodic(const ffi::AnyBuffer& buffer, int64_t m, const char* name) {
  const int64_t count = static_cast<int64_t>(buffer.element_count());
  if (count == 0 || m == 0) return Periodic<T>{};
  if (count > m || m % count != 0) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        std::string("`") + name + "` has " + std::to_string(count) + " elements, which must divide the " +
        std::to_string(m) + " neurons"));
  }
  return Periodic<T>{static_cast<const T*>(buffer.untyped_data()), count};
}

#define IZH_TRY(lhs, expr)                                 \
  auto lhs##_or = (expr);                                  \
  if (lhs##_or.has_error()) return lhs##_or.error();       \
  auto lhs = lhs##_or.value()

// Operands 1..9 of both handlers: v0, u0 and the seven parameters, each periodic.
template <typename T>
ffi::Error DecodeModel(ffi::RemainingArgs& args, int64_t m, Periodic<T>& v0, Periodic<T>& u0, Periodic<T>* params) {
  static const char* const kNames[] = {"v0", "u0", "potential_rest", "potential_reset", "resistance", "threshold",
                                       "recovery_timescale", "recovery_sensitivity", "recovery_update"};
  Periodic<T>* operands[] = {&v0, &u0, params, params + 1, params + 2, params + 3, params + 4, params + 5, params + 6};
  for (int i = 0; i < 9; ++i) {
    IZH_TRY(buffer, args.get<ffi::AnyBuffer>(1 + i));
    IZH_TRY(operand, AsPeriodic<T>(buffer, m, kNames[i]));
    *operands[i] = operand;
  }
  return ffi::Error::Success();
}

// A time buffer must hold at least `rows` rows of M values (it is read that far).
ffi::Error CheckRows(const ffi::AnyBuffer& buffer, int64_t rows, int64_t m, const char* name) {
  if (static_cast<int64_t>(buffer.element_count()) >= rows * m) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string("`") + name + "` has " + std::to_string(buffer.element_count()) +
                                     " elements, fewer than the " + std::to_string(rows * m) + " it must hold");
}

int64_t StepCount(const ffi::AnyBuffer& n_steps, int64_t t_buf) {
  const int64_t n = *static_cast<const int32_t*>(n_steps.untyped_data());
  return std::clamp<int64_t>(n, 0, t_buf);
}

// Result i, or null when it is empty (not asked for); its element count goes to *count.
template <typename T>
T* Out(ffi::RemainingRets& rets, size_t i, int64_t* count = nullptr) {
  auto ret = rets.get<ffi::AnyBuffer>(i);
  const int64_t n = ret.has_error() ? 0 : static_cast<int64_t>((*ret.value()).element_count());
  if (count) *count = n;
  return n ? static_cast<T*>((*ret.value()).untyped_data()) : nullptr;
}

// ---- forward handler --------------------------------------------------------------------------
// args: current [T_buf, M], v0, u0, 7 parameters (periodic), n_steps (int32 scalar)
// rets: spikes [T_buf, M] (T or bool), x [T_buf, M] or empty, v and u ([T_buf, M] traces or the
//       final state [1, M]), mem [T_buf, M] or empty, checkpoints [C, M] or empty

template <typename T>
ffi::Error ForwardTyped(ffi::ThreadPool& pool, ffi::RemainingArgs& args, ffi::RemainingRets& rets, double dt,
                        int64_t scheme, bool trace_state, int64_t every) {
  IZH_TRY(current, args.get<ffi::AnyBuffer>(0));
  IZH_TRY(shape, TimeShape(current));
  Forward<T> f{};
  f.m = shape.m;
  f.every = trace_state ? every : 0;
  f.trace_state = trace_state;
  f.k = MakeConstants<T>(dt, kNoSurrogate, 0.0);
  f.current = static_cast<const T*>(current.untyped_data());
  if (ffi::Error error = DecodeModel<T>(args, f.m, f.v0, f.u0, f.params); error.failure()) return error;
  IZH_TRY(n_steps, args.get<ffi::AnyBuffer>(10));
  f.n_steps = StepCount(n_steps, shape.t_buf);
  IZH_TRY(spikes, rets.get<ffi::AnyBuffer>(0));
  const bool spikes_bool = (*spikes).element_type() == ffi::PRED;
  if (!spikes_bool && (*spikes).element_type() != current.element_type()) {
    return ffi::Error::InvalidArgument("`spikes` must be bool or of the dtype of `current`");
  }
  f.spikes = spikes_bool ? nullptr : static_cast<T*>((*spikes).untyped_data());
  f.spikes_bool = spikes_bool ? static_cast<uint8_t*>((*spikes).untyped_data()) : nullptr;
  f.x = Out<T>(rets, 1), f.v = Out<T>(rets, 2), f.u = Out<T>(rets, 3), f.mem = Out<T>(rets, 4);
  int64_t n_checkpoint_values = 0;
  f.checkpoints = Out<T>(rets, 5, &n_checkpoint_values);
  if (f.m == 0) return ffi::Error::Success();
  PreferHugePages(rets);
  // rows (and checkpoints) past n_steps stay zero
  const int64_t tail = (shape.t_buf - f.n_steps) * f.m, done = f.n_steps * f.m;
  if (spikes_bool) std::memset(f.spikes_bool + done, 0, tail);
  for (T* out : {f.spikes, f.x, f.mem, trace_state ? f.v : nullptr, trace_state && !f.every ? f.u : nullptr}) {
    if (out) Zero(out + done, tail);
  }
  if (f.every) {
    const int64_t written = (f.n_steps + f.every - 1) / f.every;
    if (n_checkpoint_values < written * f.m) return ffi::Error::InvalidArgument("too few checkpoint rows");
    Zero(f.checkpoints + written * f.m, n_checkpoint_values - written * f.m);
  }
  const ForwardBlockFn<T> block = scheme == kEuler ? SelectForward<T, kEuler>(f.x, f.mem)
                                                   : SelectForward<T, kIzhikevich2003>(f.x, f.mem);
  ForEachBlock<T>(pool, f.m, f.n_steps, ForwardScratch<T>(),
                  [&](int64_t j0, int64_t n, T* scratch) { block(f, j0, n, scratch); });
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets, double dt,
                       int64_t scheme, int64_t trace_state, int64_t every) {
  if (args.size() != 11 || rets.size() != 6) return ffi::Error::InvalidArgument("expected 11 operands, 6 results");
  IZH_TRY(current, args.get<ffi::AnyBuffer>(0));
  switch (current.element_type()) {
    case ffi::F32: return ForwardTyped<float>(pool, args, rets, dt, scheme, trace_state != 0, every);
    case ffi::F64: return ForwardTyped<double>(pool, args, rets, dt, scheme, trace_state != 0, every);
    default: return ffi::Error::InvalidArgument("`current` must be float32 or float64");
  }
}

// ---- reverse handler --------------------------------------------------------------------------
// args: current [T_buf, M], v0, u0, 7 parameters (periodic), spikes [T_buf, M] (T or bool),
//       v trace [T_buf, M], u trace [T_buf, M] or checkpoints [C, M], cotangents of x, v, u, spikes,
//       mem (each empty, periodic or per step: bit i of `per_step`), dL/du of the final u (periodic
//       or empty), n_steps (int32 scalar)
// rets: g_current [T_buf, M], g_v0 [M], g_u0 [M], 7 parameter gradients [M] (empty: not wanted)

template <typename T>
ffi::Error ReverseTyped(ffi::ThreadPool& pool, ffi::RemainingArgs& args, ffi::RemainingRets& rets, double dt,
                        int64_t scheme, int64_t surrogate, double surrogate_param, int64_t every, int64_t per_step) {
  static const char* const kCotangents[] = {"g_x", "g_v", "g_u", "g_spikes", "g_mem"};
  IZH_TRY(current, args.get<ffi::AnyBuffer>(0));
  IZH_TRY(shape, TimeShape(current));
  Reverse<T> r{};
  r.m = shape.m;
  r.every = every;
  r.k = MakeConstants<T>(dt, surrogate, surrogate_param);
  r.current = static_cast<const T*>(current.untyped_data());
  if (ffi::Error error = DecodeModel<T>(args, r.m, r.v0, r.u0, r.params); error.failure()) return error;
  IZH_TRY(n_steps, args.get<ffi::AnyBuffer>(19));
  r.n_steps = StepCount(n_steps, shape.t_buf);
  IZH_TRY(spikes, args.get<ffi::AnyBuffer>(10));
  const bool spikes_bool = spikes.element_type() == ffi::PRED;
  r.spikes = spikes_bool ? nullptr : static_cast<const T*>(spikes.untyped_data());
  r.spikes_bool = spikes_bool ? static_cast<const uint8_t*>(spikes.untyped_data()) : nullptr;
  IZH_TRY(v_trace, args.get<ffi::AnyBuffer>(11));
  IZH_TRY(u_trace, args.get<ffi::AnyBuffer>(12));
  for (ffi::Error error : {CheckRows(spikes, r.n_steps, r.m, "spikes"), CheckRows(v_trace, r.n_steps, r.m, "v"),
                           CheckRows(u_trace, every ? (r.n_steps + every - 1) / every : r.n_steps, r.m, "u")}) {
    if (error.failure()) return error;
  }
  r.v_trace = static_cast<const T*>(v_trace.untyped_data());
  (every ? r.checkpoints : r.u_trace) = static_cast<const T*>(u_trace.untyped_data());
  Cotangent<T>* cotangents[] = {&r.g_x, &r.g_v, &r.g_u, &r.g_spikes, &r.g_mem};
  for (int i = 0; i < 5; ++i) {
    IZH_TRY(buffer, args.get<ffi::AnyBuffer>(13 + i));
    if (per_step >> i & 1) {
      if (ffi::Error error = CheckRows(buffer, r.n_steps, r.m, kCotangents[i]); error.failure()) return error;
      cotangents[i]->per_step = static_cast<const T*>(buffer.untyped_data());
    } else {
      IZH_TRY(operand, AsPeriodic<T>(buffer, r.m, kCotangents[i]));
      cotangents[i]->constant = operand;
    }
  }
  IZH_TRY(g_u_last, args.get<ffi::AnyBuffer>(18));
  IZH_TRY(g_u_last_operand, AsPeriodic<T>(g_u_last, r.m, "g_u_final"));
  r.g_u_last = g_u_last_operand;
  r.g_current = Out<T>(rets, 0), r.g_v0 = Out<T>(rets, 1), r.g_u0 = Out<T>(rets, 2);
  bool extra = r.g_mem.per_step || r.g_mem.constant.period;
  for (int i = 0; i < kNumParams; ++i) extra |= (r.g_params[i] = Out<T>(rets, 3 + i)) != nullptr;
  if (r.m == 0) return ffi::Error::Success();
  PreferHugePages(rets);
  Zero(r.g_current + r.n_steps * r.m, (shape.t_buf - r.n_steps) * r.m);
  if (!r.g_spikes.per_step && !r.g_spikes.constant.period) surrogate = kNoSurrogate;
  const ReverseBlockFn<T> block = scheme == kEuler ? SelectReverse<T, kEuler>(surrogate, extra)
                                                   : SelectReverse<T, kIzhikevich2003>(surrogate, extra);
  ForEachBlock<T>(pool, r.m, r.n_steps, ReverseScratch<T>(every),
                  [&](int64_t j0, int64_t n, T* scratch) { block(r, j0, n, scratch); });
  return ffi::Error::Success();
}

ffi::Error ReverseImpl(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets, double dt,
                       int64_t scheme, int64_t surrogate, double surrogate_param, int64_t every, int64_t per_step) {
  if (args.size() != 20 || rets.size() != 10) return ffi::Error::InvalidArgument("expected 20 operands, 10 results");
  IZH_TRY(current, args.get<ffi::AnyBuffer>(0));
  switch (current.element_type()) {
    case ffi::F32:
      return ReverseTyped<float>(pool, args, rets, dt, scheme, surrogate, surrogate_param, every, per_step);
    case ffi::F64:
      return ReverseTyped<double>(pool, args, rets, dt, scheme, surrogate, surrogate_param, every, per_step);
    default: return ffi::Error::InvalidArgument("`current` must be float32 or float64");
  }
}

}  // namespace
}  // namespace izh

// The two handlers and the two C entry points of izhikevich_direct.h are the library's only exported
// symbols (it is built with -fvisibility=hidden).
#define IZH_EXPORT extern "C" __attribute__((visibility("default")))
#include "izhikevich_direct.h"

IZH_EXPORT XLA_FFI_Error* SparkTorchIzhikevichForward(XLA_FFI_CallFrame* call_frame);
IZH_EXPORT XLA_FFI_Error* SparkTorchIzhikevichReverse(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparkTorchIzhikevichForward, izh::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<double>("dt")
                                  .Attr<int64_t>("scheme")
                                  .Attr<int64_t>("trace_state")
                                  .Attr<int64_t>("every"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparkTorchIzhikevichReverse, izh::ReverseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<double>("dt")
                                  .Attr<int64_t>("scheme")
                                  .Attr<int64_t>("surrogate")
                                  .Attr<double>("surrogate_param")
                                  .Attr<int64_t>("every")
                                  .Attr<int64_t>("per_step"));
