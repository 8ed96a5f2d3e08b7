// XLA FFI handlers for the fused Izhikevich loops: one custom call runs all time steps of the
// forward (spark_torch_izhikevich_fwd) or of the reverse pass (spark_torch_izhikevich_bwd).
// The operands, results and attributes are those of izhikevich_interface.h; this shell only collects
// them from XLA's buffers (checking their element types) and runs the blocks on XLA's thread pool.
//
// Work split: neurons are cut into blocks of kBlockBytes (izhikevich_loops.h); a block's state,
// parameters and gradient carries stay in a small scratch area (L1/L2) for all time steps, and the
// time loop runs inside the block. Runs of consecutive blocks are claimed one at a time by the calling
// thread and by tasks on XLA's intra-op thread pool, so a busy pool only costs parallelism. Small
// problems (below kParallelWork neuron-steps) run on the calling thread alone.
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "izhikevich_interface.h"
#include "izhikevich_threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace izh {
namespace {

// ForEachBlock on XLA's intra-op thread pool.
struct OnPool {
  ffi::ThreadPool* pool;
  template <typename T>
  auto For() const {
    return [pool = pool](int64_t m, int64_t n_steps, size_t scratch_size, auto block) {
      ForEachBlock<T>(*pool, std::max<int64_t>(1, pool->num_threads()), m, n_steps, scratch_size, block);
    };
  }
};

// An operand is a buffer; a result is a Result<AnyBuffer> around one.
template <typename Value>
ffi::AnyBuffer AsBuffer(Value& value) {
  if constexpr (std::is_same_v<std::decay_t<Value>, ffi::AnyBuffer>) {
    return value;
  } else {
    return *value;
  }
}

// The operands (or results) as Views, each of the call's floating dtype; `except` may also be bool
// (the spikes) and `steps` must be int32 (the step count). Fills dtype, t_buf and m from operand 0.
template <typename Buffers>
ffi::Error Collect(Buffers& buffers, size_t expected, View* views, const char* const* names, int except,
                   int steps, ffi::DataType dtype, bool* except_is_bool) {
  if (buffers.size() != expected) {
    return ffi::Error::InvalidArgument("expected " + std::to_string(expected) + " buffers, got " +
                                       std::to_string(buffers.size()));
  }
  for (size_t i = 0; i < expected; ++i) {
    auto buffer = buffers.template get<ffi::AnyBuffer>(i);
    if (buffer.has_error()) return buffer.error();
    const ffi::AnyBuffer b = AsBuffer(buffer.value());
    const ffi::DataType type = b.element_type();
    const bool is_bool = static_cast<int>(i) == except && type == ffi::PRED;
    if (static_cast<int>(i) == except && except_is_bool) *except_is_bool = is_bool;
    const ffi::DataType wanted = static_cast<int>(i) == steps ? ffi::S32 : dtype;
    if (!is_bool && type != wanted) {
      return ffi::Error::InvalidArgument(std::string("`") + names[i] + "` has the wrong element type");
    }
    views[i] = View{const_cast<void*>(static_cast<const void*>(b.untyped_data())),
                    static_cast<int64_t>(b.element_count())};
  }
  return ffi::Error::Success();
}

ffi::Error TimeShape(const ffi::AnyBuffer& current, Attributes& a) {
  const auto dims = current.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("`current` must have a time axis");
  if (current.element_type() != ffi::F32 && current.element_type() != ffi::F64) {
    return ffi::Error::InvalidArgument("`current` must be float32 or float64");
  }
  a.dtype = current.element_type() == ffi::F64 ? kFloat64 : kFloat32;
  a.t_buf = dims[0], a.m = 1;
  for (size_t i = 1; i < dims.size(); ++i) a.m *= dims[i];
  return ffi::Error::Success();
}

ffi::Error ToError(const Status& status) {
  return status.empty() ? ffi::Error::Success() : ffi::Error::InvalidArgument(status);
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets, double dt,
                       int64_t scheme, int64_t residuals, int64_t every) {
  auto current = args.get<ffi::AnyBuffer>(kFwdCurrent);
  if (current.has_error()) return current.error();
  Attributes a{};
  if (ffi::Error error = TimeShape(current.value(), a); error.failure()) return error;
  a.dt = dt, a.scheme = scheme, a.residuals = residuals, a.every = every;
  const ffi::DataType dtype = current.value().element_type();
  View in[kNumForwardOperands], out[kNumForwardResults];
  bool spikes_bool = false;
  if (ffi::Error e = Collect(args, kNumForwardOperands, in, kForwardOperandNames, -1, kFwdSteps, dtype, nullptr);
      e.failure()) {
    return e;
  }
  if (ffi::Error e = Collect(rets, kNumForwardResults, out, kForwardResultNames, kSpikes, -1, dtype, &spikes_bool);
      e.failure()) {
    return e;
  }
  a.spikes_bool = spikes_bool;
  return ToError(CallForward(a, in, out, OnPool{&pool}));
}

ffi::Error ReverseImpl(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets, double dt,
                       int64_t scheme, int64_t surrogate, double surrogate_param, int64_t residuals, int64_t every,
                       int64_t per_step) {
  auto current = args.get<ffi::AnyBuffer>(kRevCurrent);
  if (current.has_error()) return current.error();
  Attributes a{};
  if (ffi::Error error = TimeShape(current.value(), a); error.failure()) return error;
  a.dt = dt, a.scheme = scheme, a.surrogate = surrogate, a.surrogate_param = surrogate_param;
  a.residuals = residuals, a.every = every;
  a.per_step = per_step;
  const ffi::DataType dtype = current.value().element_type();
  View in[kNumReverseOperands], out[kNumReverseResults];
  bool spikes_bool = false;
  if (ffi::Error e = Collect(args, kNumReverseOperands, in, kReverseOperandNames, kRevSpikes, kRevSteps, dtype,
                             &spikes_bool);
      e.failure()) {
    return e;
  }
  if (ffi::Error e = Collect(rets, kNumReverseResults, out, kReverseResultNames, -1, -1, dtype, nullptr);
      e.failure()) {
    return e;
  }
  a.spikes_bool = spikes_bool;
  return ToError(CallReverse(a, in, out, OnPool{&pool}));
}

}  // namespace
}  // namespace izh

// The two handlers and the two C entry points of izhikevich_direct.h are the library's only exported
// symbols (it is built with -fvisibility=hidden).
#define IZH_EXPORT extern "C" __attribute__((visibility("default")))
#include "izhikevich_direct.h"
#include "izhikevich_memory.h"

IZH_EXPORT XLA_FFI_Error* SparkTorchIzhikevichForward(XLA_FFI_CallFrame* call_frame);
IZH_EXPORT XLA_FFI_Error* SparkTorchIzhikevichReverse(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparkTorchIzhikevichForward, izh::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<double>("dt")
                                  .Attr<int64_t>("scheme")
                                  .Attr<int64_t>("residuals")
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
                                  .Attr<int64_t>("residuals")
                                  .Attr<int64_t>("every")
                                  .Attr<int64_t>("per_step"));
