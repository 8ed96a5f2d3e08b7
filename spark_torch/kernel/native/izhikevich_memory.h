// A caching pool for the kernel's large CPU buffers, handed to torch through DLPack.
//
// Why. A layer call returns fresh [T, B, N] tensors every call. glibc serves a request above its mmap
// threshold (at most 32 MiB on 64-bit Linux) with its own mmap and unmaps it again on free, so every
// call starts from untouched memory and pays one page fault per 4 KiB page on first write. This pool
// keeps such blocks mapped between calls and hands the same (already faulted) memory to the next
// request of the same size, inside the library: no process-wide setting (mallopt, environment
// variables) is changed.
//
// Blocks. Anonymous private mmap regions, 2 MiB aligned, their size rounded up to a multiple of 2 MiB
// (kBlockGranule), with madvise(MADV_HUGEPAGE) where the kernel offers it (transparent huge pages in
// "madvise" mode: a first touch then faults 2 MiB at once; without it the advice fails and the block
// keeps 4 KiB pages). A freed block goes to a free list keyed by its size; a request takes the
// smallest cached block that fits it and exceeds it by at most 1/kMaxWasteDivisor (an exact fit when
// shapes repeat).
//
// Policy: the pool never holds more bytes (in use + cached) than the high-water mark of bytes in use
// at once (in blocks), so a loop's peak memory is that of its live tensors, as without the pool. When
// a new block is needed and that bound would be exceeded, cached blocks are unmapped first (the
// smallest one that covers the excess, else the largest, repeatedly). Trim() unmaps every cached
// block and resets the high-water mark to the bytes in use now (the bound then grows again with the
// next peak). If mmap fails, the cache is trimmed and the mapping tried once more.
//
// DLPack hand-off. SparkTorchPoolTensor returns a DLManagedTensor (the unversioned DLPack ABI that
// torch.from_dlpack accepts in a PyCapsule named "dltensor"): contiguous, CPU, explicit row-major
// strides. Its deleter, which torch calls when the tensor's storage is freed (from any thread), returns
// the block to the pool and frees the struct: the same life cycle as PyTorch's CUDA caching allocator.
//
// Fork. pthread_atfork handlers take the pool's lock before fork() and release it in the parent and
// in the child, so the child inherits a consistent pool state (its inherited blocks are copy-on-write
// copies at the same addresses): tensors inherited from the parent return their blocks to the child's
// pool, and nothing is ever unmapped while a tensor still uses it.
//
// Included once, at the end of izhikevich_ffi.cc (one translation unit). Thread-safe.
#ifndef SPARK_TORCH_IZHIKEVICH_MEMORY_H_
#define SPARK_TORCH_IZHIKEVICH_MEMORY_H_

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#ifndef IZH_EXPORT
#define IZH_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace izh {
namespace memory {

// ---- The DLPack ABI (v0.x, unversioned; identical in DLPack 1.x as DLManagedTensor) ----

enum DLDeviceType : int32_t { kDLCPU = 1 };
enum DLDataTypeCode : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBool = 6 };

struct DLDevice {
  DLDeviceType device_type;
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;  // DLDataTypeCode
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;    // ndim elements
  int64_t* strides;  // ndim elements, in elements (not bytes); null means row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

static_assert(sizeof(DLDevice) == 8 && sizeof(DLDataType) == 4, "DLPack ABI: DLDevice / DLDataType size");
static_assert(sizeof(void*) != 8 || (sizeof(DLTensor) == 48 && sizeof(DLManagedTensor) == 64 &&
                                     offsetof(DLTensor, shape) == 24 && offsetof(DLManagedTensor, deleter) == 56),
              "DLPack ABI: DLTensor / DLManagedTensor layout");

// ---- The pool ----

constexpr size_t kBlockGranule = size_t{2} << 20;  // 2 MiB: block size and alignment (one huge page)
constexpr size_t kMaxWasteDivisor = 8;             // a cached block may exceed the request by 1/8 of it
constexpr int64_t kMaxDims = 8;

struct Stats {
  uint64_t in_use_bytes;         // bytes of the blocks held by live tensors
  uint64_t cached_bytes;         // bytes of the blocks on the free lists (mapped, not in use)
  uint64_t mapped_blocks_total;  // mmap calls that succeeded, since the process started
  uint64_t reuses_total;         // requests served from the free lists, since the process started
};

class Pool {
 public:
  // The process's pool: constructed on first use, never destroyed (tensors may be freed during exit,
  // after static destructors have run).
  static Pool& Instance() {
    static Pool* const pool = new Pool();
    return *pool;
  }

  // A block of at least `bytes` (> 0) bytes, 2 MiB aligned; its size (a multiple of kBlockGranule) in
  // *block_bytes. Null on failure, with errno's message in *error.
  void* Acquire(size_t bytes, size_t* block_bytes, std::string* error) {
    const size_t rounded = RoundUp(bytes);
    void* address = TryAcquire(rounded, block_bytes, error);
    if (address == nullptr && rounded != 0) {
      Trim();  // the cached blocks may be what the system lacks: give them back and try once more
      address = TryAcquire(rounded, block_bytes, error);
    }
    return address;
  }

  // Returns a block from Acquire (`bytes`: its *block_bytes) to the free lists.
  void Release(void* address, size_t bytes) noexcept {
    std::unique_lock<std::mutex> lock(mutex_);
    in_use_ -= bytes;
    try {
      free_.emplace(bytes, address);
      cached_ += bytes;
    } catch (...) {  // no memory for the list node: unmap the block instead of caching it
      lock.unlock();
      Unmap(address, bytes);
    }
  }

  // Unmaps every cached block; the high-water mark becomes the bytes in use now.
  void Trim() noexcept {
    std::multimap<size_t, void*> victims;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      victims.swap(free_);
      cached_ = 0;
      high_water_ = in_use_;
    }
    for (const auto& [bytes, address] : victims) Unmap(address, bytes);
  }

  Stats GetStats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return Stats{in_use_, cached_, mapped_total_, reuses_total_};
  }

 private:
  Pool() { pthread_atfork(&LockForFork, &UnlockAfterFork, &UnlockAfterFork); }

  static size_t RoundUp(size_t bytes) {
    if (bytes > SIZE_MAX - (kBlockGranule - 1)) return 0;  // overflow: TryAcquire reports it
    return (bytes + kBlockGranule - 1) / kBlockGranule * kBlockGranule;
  }

  static void LockForFork() { Instance().mutex_.lock(); }
  static void UnlockAfterFork() { Instance().mutex_.unlock(); }

  static void Unmap(void* address, size_t bytes) noexcept { munmap(address, bytes); }

  // A fresh mapping of `bytes` (a multiple of kBlockGranule) aligned to kBlockGranule, or null (errno).
  static void* Map(size_t bytes) {
    const size_t padded = bytes + kBlockGranule;  // room to align the start
    void* raw = mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kBlockGranule - 1) & ~(uintptr_t{kBlockGranule} - 1);
    if (aligned > start) munmap(raw, aligned - start);
    const size_t tail = start + padded - (aligned + bytes);
    if (tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
#ifdef MADV_HUGEPAGE
    madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);  // advice only: failure keeps 4 KiB pages
#endif
    return reinterpret_cast<void*>(aligned);
  }

  // One attempt: a cached block that fits, else a new mapping within the bound (evicting cached blocks).
  // The lists change only by moving nodes (no allocation under the lock), so every step can be undone.
  void* TryAcquire(size_t rounded, size_t* block_bytes, std::string* error) {
    if (rounded == 0) {
      *error = "the request is too large to round up to a multiple of 2 MiB";
      return nullptr;
    }
    std::multimap<size_t, void*> victims;
    void* address = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto fit = free_.lower_bound(rounded);
      if (fit != free_.end() && fit->first - rounded <= rounded / kMaxWasteDivisor) {
        *block_bytes = fit->first;
        address = fit->second;
        free_.erase(fit);
        cached_ -= *block_bytes;
        Reserve(*block_bytes);
        ++reuses_total_;
        return address;
      }
      const uint64_t old_high_water = high_water_;
      Reserve(rounded);
      SelectVictims(&victims);
      address = Map(rounded);
      if (address == nullptr) {  // undo: the victims are still mapped
        const int map_errno = errno;
        in_use_ -= rounded;
        high_water_ = old_high_water;
        for (const auto& victim : victims) cached_ += victim.first;
        free_.merge(victims);
        *error = "out of memory: mmap of " + std::to_string(rounded) + " bytes failed: " + std::strerror(map_errno);
        return nullptr;
      }
      ++mapped_total_;
      *block_bytes = rounded;
    }
    for (const auto& [bytes, victim] : victims) Unmap(victim, bytes);  // before the caller touches the block
    return address;
  }

  void Reserve(size_t bytes) {
    in_use_ += bytes;
    high_water_ = std::max(high_water_, in_use_);
  }

  // Moves cached blocks to `victims` until in use + cached <= the high-water mark (under the lock).
  void SelectVictims(std::multimap<size_t, void*>* victims) {
    while (in_use_ + cached_ > high_water_ && !free_.empty()) {
      const uint64_t excess = in_use_ + cached_ - high_water_;
      auto victim = free_.lower_bound(excess);  // the smallest block that covers the excess alone
      if (victim == free_.end()) victim = std::prev(free_.end());  // else the largest, and go on
      cached_ -= victim->first;
      victims->insert(free_.extract(victim));
    }
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // cached blocks by size
  uint64_t in_use_ = 0;
  uint64_t cached_ = 0;
  uint64_t high_water_ = 0;  // the most bytes in use at once (since the last Trim)
  uint64_t mapped_total_ = 0;
  uint64_t reuses_total_ = 0;
};

// ---- Tensors ----

// A DLManagedTensor and the arrays it points to, in one allocation. `managed` comes first, so the
// DLManagedTensor* that torch holds is this struct's address.
struct PooledTensor {
  DLManagedTensor managed;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  size_t block_bytes;  // 0: a zero-byte tensor, whose data is empty_tensor_data and belongs to no block
};

static_assert(offsetof(PooledTensor, managed) == 0, "the DLManagedTensor must start the struct");

alignas(64) inline unsigned char empty_tensor_data[64];  // the data of zero-byte tensors (never written)

inline void DeletePooledTensor(DLManagedTensor* self) {
  if (self == nullptr) return;
  auto* tensor = reinterpret_cast<PooledTensor*>(self);
  if (tensor->block_bytes != 0) Pool::Instance().Release(self->dl_tensor.data, tensor->block_bytes);
  delete tensor;
}

struct DtypeInfo {
  const char* name;
  DLDataType dl;
  size_t itemsize;
};

constexpr DtypeInfo kDtypes[] = {
    {"float32", {kDLFloat, 32, 1}, 4},
    {"float64", {kDLFloat, 64, 1}, 8},
    {"uint8", {kDLUInt, 8, 1}, 1},
    {"bool", {kDLBool, 8, 1}, 1},
};
constexpr int64_t kNumDtypes = sizeof(kDtypes) / sizeof(kDtypes[0]);

// Checks the arguments and computes the tensor's size in bytes and its row-major strides (in elements);
// an empty string when they are valid, else a message that names the argument, its value and the rule.
inline std::string CheckTensorRequest(int64_t ndim, const int64_t* shape, int64_t dtype_code, int64_t* strides,
                                      size_t* bytes) {
  if (ndim < 1 || ndim > kMaxDims) {
    return "`ndim` (=" + std::to_string(ndim) + ") must be in [1, " + std::to_string(kMaxDims) + "]";
  }
  if (shape == nullptr) return "`shape` is null";
  if (dtype_code < 0 || dtype_code >= kNumDtypes) {
    return "`dtype_code` (=" + std::to_string(dtype_code) + ") must be 0 (float32), 1 (float64), 2 (uint8) or 3 (bool)";
  }
  // torch.empty's rules (computeStorageNbytesContiguous, then the contiguous strides): the running
  // product of the dimensions, first to last (so a zero after an overflow does not excuse it), times
  // the item size, and every stride must fit in int64. torch.from_dlpack aborts the process on some
  // shapes that break them, instead of raising: they never reach it.
  uint64_t elements = 1;
  bool overflow = false;
  for (int64_t i = 0; i < ndim; ++i) {
    if (shape[i] < 0) {
      return "`shape[" + std::to_string(i) + "]` (=" + std::to_string(shape[i]) + ") must be >= 0";
    }
    overflow = __builtin_mul_overflow(elements, static_cast<uint64_t>(shape[i]), &elements) || overflow;
  }
  uint64_t total = 0;
  overflow = __builtin_mul_overflow(elements, kDtypes[dtype_code].itemsize, &total) || overflow;
  strides[ndim - 1] = 1;
  for (int64_t i = ndim - 2; i >= 0; --i) {
    overflow = __builtin_mul_overflow(strides[i + 1], std::max<int64_t>(shape[i + 1], 1), &strides[i]) || overflow;
  }
  if (overflow || total > static_cast<uint64_t>(INT64_MAX)) {
    return "`shape` (" + std::to_string(ndim) + " dimensions): the running product of its dimensions times the "
           "item size, and its strides, must fit in int64 (as for torch.empty)";
  }
  *bytes = static_cast<size_t>(total);
  return std::string();
}

inline void WriteError(const std::string& message, char* error, int64_t error_size) {
  if (error == nullptr || error_size <= 0) return;
  const size_t n = std::min<size_t>(message.size(), static_cast<size_t>(error_size - 1));
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

// A contiguous CPU tensor of `shape` and dtype `dtype_code` on pooled memory (uninitialized), or null
// with a message in *error.
inline DLManagedTensor* NewPooledTensor(int64_t ndim, const int64_t* shape, int64_t dtype_code, std::string* error) {
  std::unique_ptr<PooledTensor> tensor(new (std::nothrow) PooledTensor());
  if (tensor == nullptr) {
    *error = "out of memory: no room for the tensor descriptor";
    return nullptr;
  }
  size_t bytes = 0;
  *error = CheckTensorRequest(ndim, shape, dtype_code, tensor->strides, &bytes);
  if (!error->empty()) return nullptr;
  void* data = empty_tensor_data;
  if (bytes != 0) {
    data = Pool::Instance().Acquire(bytes, &tensor->block_bytes, error);
    if (data == nullptr) return nullptr;
  }
  std::copy(shape, shape + ndim, tensor->shape);
  DLTensor& dl = tensor->managed.dl_tensor;
  dl.data = data;
  dl.device = DLDevice{kDLCPU, 0};
  dl.ndim = static_cast<int32_t>(ndim);
  dl.dtype = kDtypes[dtype_code].dl;
  dl.shape = tensor->shape;
  dl.strides = tensor->strides;
  dl.byte_offset = 0;
  tensor->managed.manager_ctx = tensor.get();
  tensor->managed.deleter = &DeletePooledTensor;
  return &tensor.release()->managed;
}

}  // namespace memory
}  // namespace izh

// A DLManagedTensor* (to wrap in a PyCapsule named "dltensor") for a contiguous CPU tensor of `ndim`
// (1..8) dimensions `shape` (each >= 0) and dtype `dtype_code`: 0 float32, 1 float64, 2 uint8, 3 bool.
// Its contents are uninitialized. Null on failure, with a message of at most error_size - 1
// characters in `error` (when not null); the message starts with "out of memory" when the arguments
// were valid but memory could not be had, else it names the argument, its value and the rule.
IZH_EXPORT void* SparkTorchPoolTensor(int64_t ndim, const int64_t* shape, int64_t dtype_code, char* error,
                                      int64_t error_size) {
  std::string message;
  izh::memory::DLManagedTensor* tensor = nullptr;
  try {
    tensor = izh::memory::NewPooledTensor(ndim, shape, dtype_code, &message);
  } catch (const std::bad_alloc&) {  // from building a message
    message = "out of memory";
  }
  if (tensor == nullptr) izh::memory::WriteError(message, error, error_size);
  return tensor;
}

// Unmaps every cached block (memory held by live tensors stays) and resets the high-water mark.
IZH_EXPORT void SparkTorchPoolTrim() { izh::memory::Pool::Instance().Trim(); }

// Writes in_use_bytes, cached_bytes, mapped_blocks_total, reuses_total to out4[0..3].
IZH_EXPORT void SparkTorchPoolStats(int64_t* out4) {
  if (out4 == nullptr) return;
  const izh::memory::Stats stats = izh::memory::Pool::Instance().GetStats();
  out4[0] = static_cast<int64_t>(stats.in_use_bytes);
  out4[1] = static_cast<int64_t>(stats.cached_bytes);
  out4[2] = static_cast<int64_t>(stats.mapped_blocks_total);
  out4[3] = static_cast<int64_t>(stats.reuses_total);
}

#endif  // SPARK_TORCH_IZHIKEVICH_MEMORY_H_
