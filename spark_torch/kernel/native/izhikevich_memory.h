// A caching pool for the kernel's large CPU buffers, handed to torch through DLPack.
//
// Why. A layer call returns fresh [T, B, N] tensors every call. glibc serves a request above its mmap
// threshold (at most 32 MiB on 64-bit Linux) with its own mmap and unmaps it again on free, so every
// call starts from untouched memory and pays one page fault per 4 KiB page on first write. This pool
// keeps such memory mapped between calls and hands the same (already faulted) pages to later requests,
// inside the library: no process-wide setting (mallopt, environment variables) is changed.
//
// Memory. Anonymous private mmap regions, 2 MiB aligned, their size a multiple of 2 MiB (kBlockGranule),
// with madvise(MADV_HUGEPAGE) where the kernel offers it (transparent huge pages in "madvise" mode: a
// first touch then faults 2 MiB at once; without it the advice fails and the memory keeps 4 KiB pages).
//
// Free ranges. A tensor gets one address range, its size rounded up to 2 MiB. The cache is a set of
// free ranges (mapped, used by no tensor): a request takes the smallest one that holds it, and from a
// larger one its first bytes, the rest staying free. So calls whose buffers differ in size (another
// layout, another sequence length) reuse the last ones' memory instead of mapping and faulting it anew.
// A range given back merges with the free ranges next to it in the address space, whether or not they
// came from the same mmap (munmap and madvise work on any page range, and a tensor may span adjacent
// mappings): a buffer split for small requests is whole again once they are freed. New memory is mapped
// only when no free range alone holds the request.
//
// Bound. The pool never holds more bytes (in use + cached) than the high-water mark of bytes in use at
// once, so a loop's peak memory is that of its live tensors (in 2 MiB granules), as without the pool.
// When a new mapping exceeds it, only the excess of cached bytes is unmapped: cut from the end of the
// smallest free range that holds it, else the largest free range whole, and the rest likewise. Trim()
// unmaps every free range and resets the high-water mark to the bytes in use now (the bound then grows
// again with the next peak). A failed mmap changes nothing; the cache is then trimmed and mmap retried.
//
// DLPack hand-off. SparkTorchPoolTensor returns a DLManagedTensor (the unversioned DLPack ABI that
// torch.from_dlpack accepts in a PyCapsule named "dltensor"): contiguous, CPU, explicit row-major
// strides. Its deleter, which torch calls when the tensor's storage is freed (from any thread), returns
// the range to the pool and frees the struct: the same life cycle as PyTorch's CUDA caching allocator.
//
// Fork. pthread_atfork handlers take the pool's lock before fork() and release it in the parent and
// in the child, so the child inherits a consistent pool state (its inherited memory is a copy-on-write
// copy at the same addresses): tensors inherited from the parent return their ranges to the child's
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
#include <set>
#include <string>
#include <utility>

#ifndef IZH_EXPORT
#define IZH_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace izh {
namespace memory {

// ---- The DLPack ABI (v0.x, unversioned; identical in DLPack 1.x as DLManagedTensor) ----

enum DLDeviceType : int32_t { kDLCPU = 1 };
enum DLDataTypeCode : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBool = 6 };

struct DLDevice { DLDeviceType device_type; int32_t device_id; };
struct DLDataType { uint8_t code; uint8_t bits; uint16_t lanes; };  // code: a DLDataTypeCode

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

constexpr size_t kBlockGranule = size_t{2} << 20;  // 2 MiB: the unit of sizes and alignment (one huge page)
constexpr int64_t kMaxDims = 8;

struct Stats {
  uint64_t in_use_bytes;         // bytes of the ranges held by live tensors
  uint64_t cached_bytes;         // bytes of the free ranges (mapped, not in use)
  uint64_t mapped_blocks_total;  // mmap calls that succeeded, since the process started
  uint64_t reuses_total;         // requests served from free ranges (split or not), since the process started
};

// The free ranges, in two indexes that only Extract and Insert change: by address (to find neighbours)
// and by size (best fit); touching ranges are always merged. Only Add of a range that touches none
// allocates; all else moves or frees nodes, so it cannot fail midway. The Pool's lock guards it.
class FreeRanges {
 public:
  using ByAddress = std::map<uintptr_t, size_t>;  // start -> bytes
  struct Range { uintptr_t start; size_t bytes; };

  uint64_t bytes() const { return bytes_; }
  const ByAddress& by_address() const { return by_address_; }

  // Adds [start, start + bytes), merged with the ranges it touches. Throws std::bad_alloc, having
  // changed nothing, only when it touches none.
  void Add(uintptr_t start, size_t bytes) {
    const auto next = by_address_.lower_bound(start);
    const auto prev = next == by_address_.begin() ? by_address_.end() : std::prev(next);
    const bool joins_next = next != by_address_.end() && next->first == start + bytes;
    const bool joins_prev = prev != by_address_.end() && prev->first + prev->second == start;
    const Range merged{joins_prev ? prev->first : start,
                       (joins_prev ? prev->second : 0) + bytes + (joins_next ? next->second : 0)};
    Nodes nodes = joins_prev ? Extract(prev) : joins_next ? Extract(next) : NewNodes();
    if (joins_prev && joins_next) Extract(next);  // its nodes are freed
    Insert(std::move(nodes), merged);
  }

  // The start of `bytes` taken from the front of the smallest range that holds them (the rest stays), or 0.
  uintptr_t TakeBestFit(size_t bytes) noexcept {
    const auto fit = by_size_.lower_bound({bytes, 0});
    if (fit == by_size_.end()) return 0;
    const auto [fit_bytes, start] = *fit;
    Nodes nodes = Extract(by_address_.find(start));
    if (fit_bytes > bytes) Insert(std::move(nodes), Range{start + bytes, fit_bytes - bytes});
    return start;
  }

  // Takes ranges out, to unmap, until at most `keep` bytes are left, and no more than that needs: cut
  // from the end of the smallest range that holds the excess, else the largest range whole, and the rest
  // likewise. Whole ranges go to `whole`; returns the end cut from a range that stays (zero bytes if none).
  Range ShrinkTo(uint64_t keep, ByAddress* whole) noexcept {
    uint64_t excess = bytes_ > keep ? bytes_ - keep : 0;
    while (excess > 0 && !by_size_.empty()) {
      auto victim = by_size_.lower_bound({excess, 0});
      if (victim == by_size_.end()) victim = std::prev(by_size_.end());
      const auto [victim_bytes, start] = *victim;
      Nodes nodes = Extract(by_address_.find(start));
      if (victim_bytes > excess) {
        Insert(std::move(nodes), Range{start, victim_bytes - excess});
        return Range{start + victim_bytes - excess, excess};
      }
      whole->insert(std::move(nodes.address));
      excess -= victim_bytes;
    }
    return Range{0, 0};
  }

 private:
  using BySize = std::set<std::pair<size_t, uintptr_t>>;  // (bytes, start)
  struct Nodes { ByAddress::node_type address; BySize::node_type size; };

  static Nodes NewNodes() {  // may throw std::bad_alloc
    ByAddress address{{0, 0}};
    BySize size{{0, 0}};
    return Nodes{address.extract(address.begin()), size.extract(size.begin())};
  }

  Nodes Extract(ByAddress::iterator range) noexcept {
    bytes_ -= range->second;
    BySize::node_type size = by_size_.extract({range->second, range->first});
    return Nodes{by_address_.extract(range), std::move(size)};
  }

  void Insert(Nodes nodes, Range range) noexcept {
    nodes.address.key() = range.start;
    nodes.address.mapped() = range.bytes;
    nodes.size.value() = {range.bytes, range.start};
    by_address_.insert(std::move(nodes.address));
    by_size_.insert(std::move(nodes.size));
    bytes_ += range.bytes;
  }

  ByAddress by_address_;
  BySize by_size_;
  uint64_t bytes_ = 0;
};

class Pool {
 public:
  // The process's pool, never destroyed: tensors may be freed during exit, after static destructors.
  static Pool& Instance() {
    static Pool* const pool = new Pool();
    return *pool;
  }

  // A range of at least `bytes` (> 0) bytes, 2 MiB aligned; its size (a multiple of kBlockGranule) in
  // *block_bytes. Null on failure, with errno's message in *error.
  void* Acquire(size_t bytes, size_t* block_bytes, std::string* error) {
    *block_bytes = RoundUp(bytes);
    if (*block_bytes == 0) {
      *error = "the request is too large to round up to a multiple of 2 MiB";
      return nullptr;
    }
    void* address = TryAcquire(*block_bytes, error);
    if (address == nullptr) {
      Trim();  // the cached ranges may be what the system lacks: give them back and try once more
      address = TryAcquire(*block_bytes, error);
    }
    return address;
  }

  // Returns a range from Acquire (`bytes`: its *block_bytes) to the free ranges.
  void Release(void* address, size_t bytes) noexcept {
    std::unique_lock<std::mutex> lock(mutex_);
    in_use_ -= bytes;
    try {
      free_.Add(reinterpret_cast<uintptr_t>(address), bytes);
    } catch (...) {  // no memory for index nodes (so no free neighbour): unmap it instead of caching it
      lock.unlock();
      Unmap(reinterpret_cast<uintptr_t>(address), bytes);
    }
  }

  // Unmaps every free range; the high-water mark becomes the bytes in use now.
  void Trim() noexcept {
    std::unique_lock<std::mutex> lock(mutex_);
    const FreeRanges victims = std::exchange(free_, FreeRanges());  // unmapped and freed after the lock
    high_water_ = in_use_;
    lock.unlock();
    for (const auto& [start, bytes] : victims.by_address()) Unmap(start, bytes);
  }

  Stats GetStats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return Stats{in_use_, free_.bytes(), mapped_total_, reuses_total_};
  }

 private:
  Pool() { pthread_atfork(&LockForFork, &UnlockAfterFork, &UnlockAfterFork); }

  static size_t RoundUp(size_t bytes) {  // 0 on overflow: Acquire reports it
    return bytes > SIZE_MAX - (kBlockGranule - 1) ? 0 : (bytes + kBlockGranule - 1) / kBlockGranule * kBlockGranule;
  }

  static void LockForFork() { Instance().mutex_.lock(); }
  static void UnlockAfterFork() { Instance().mutex_.unlock(); }

  static void Unmap(uintptr_t start, size_t bytes) noexcept { munmap(reinterpret_cast<void*>(start), bytes); }

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

  // One attempt: the best-fitting free range, else a new mapping and then the excess over the bound
  // evicted. The mapping precedes every change, so a failed mmap leaves nothing to undo.
  void* TryAcquire(size_t rounded, std::string* error) {
    FreeRanges::ByAddress evicted;  // destroyed after the lock is released
    std::unique_lock<std::mutex> lock(mutex_);
    if (const uintptr_t start = free_.TakeBestFit(rounded)) {
      in_use_ += rounded;  // within the high-water mark: it was cached
      ++reuses_total_;
      return reinterpret_cast<void*>(start);
    }
    void* const address = Map(rounded);
    if (address == nullptr) {
      const int map_errno = errno;
      lock.unlock();
      *error = "out of memory: mmap of " + std::to_string(rounded) + " bytes failed: " + std::strerror(map_errno);
      return nullptr;
    }
    ++mapped_total_;
    in_use_ += rounded;
    high_water_ = std::max(high_water_, in_use_);
    const FreeRanges::Range cut = free_.ShrinkTo(high_water_ - in_use_, &evicted);  // the bound
    lock.unlock();
    for (const auto& [start, bytes] : evicted) Unmap(start, bytes);  // before the caller touches its range
    if (cut.bytes != 0) Unmap(cut.start, cut.bytes);
    return address;
  }

  std::mutex mutex_;
  FreeRanges free_;
  uint64_t in_use_ = 0;
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
