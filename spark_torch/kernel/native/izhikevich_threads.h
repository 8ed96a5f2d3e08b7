// Running the blocks of a kernel call on several threads, for both ways in: the FFI handlers schedule
// on XLA's intra-op pool (izhikevich_ffi.cc), the direct entry points on WorkerPool below.
//
// Blocks of neurons are independent (each has its own state, carries and outputs), so the results do
// not depend on how many threads run them or in which order: every thread count gives the same bits.
#ifndef SPARK_TORCH_IZHIKEVICH_THREADS_H_
#define SPARK_TORCH_IZHIKEVICH_THREADS_H_

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "izhikevich_loops.h"

namespace izh {

// ceil(a / b) for a >= 0, b > 0.
constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Neuron-steps below which a call runs on the calling thread alone.
constexpr int64_t kParallelWork = int64_t{1} << 18;

inline int64_t Cores() {
  static const int64_t cores = std::max<unsigned>(1, std::thread::hardware_concurrency());  // a syscall: once
  return cores;
}

// The threads a call above kParallelWork may use: at most max_threads, the cores and its blocks.
template <typename T>
int64_t WorkerCount(int64_t max_threads, int64_t m, int64_t n_steps) {
  const int64_t n_blocks = CeilDiv(m, kBlock<T>);
  return n_steps * m < kParallelWork ? 1 : std::min({n_blocks, Cores(), std::max<int64_t>(1, max_threads)});
}

// The least bytes of each row that a run of blocks should cover: a 4 KiB page. Runs of a single block left two
// threads writing parts of the same pages at every step, and a call in the L3 cache then took far longer
// (likely because the cores' prefetchers, which run ahead within a page, fetch the lines the other is writing).
constexpr int64_t kRunBytes = 4096;

// A call's blocks in runs of `grain` consecutive blocks, claimed from a shared counter by every thread that
// works on the call: a thread that starts late or is preempted (e.g. by another library's spinning threads on
// a small machine) just takes fewer runs. Each worker gets 1 to 8 runs, as many as keep a run at kRunBytes
// of each row or more.
template <typename T>
struct BlockRuns {
  static constexpr int64_t kPageBlocks = CeilDiv(kRunBytes, kBlockBytes);

  BlockRuns(int64_t m, int64_t n_workers)
      : m(m), n_blocks(CeilDiv(m, kBlock<T>)),
        grain(CeilDiv(n_blocks, n_workers * std::clamp<int64_t>(n_blocks / (n_workers * kPageBlocks), 1, 8))),
        n_runs(CeilDiv(n_blocks, grain)) {}

  template <typename Block>
  void Run(int64_t i, T* scratch, Block& block) const {
    for (int64_t b = i * grain; b < std::min((i + 1) * grain, n_blocks); ++b) {
      const int64_t j0 = b * kBlock<T>;
      block(j0, std::min(kBlock<T>, m - j0), scratch);
    }
  }

  int64_t m, n_blocks, grain, n_runs;
};

// Runs block(j0, n, scratch) for every block of neurons on at most `max_threads` threads (the caller
// included; `pool.Schedule(task)` starts the others), as BlockRuns; the caller waits only for runs already
// claimed.
template <typename T, typename Pool, typename Block>
void ForEachBlock(Pool& pool, int64_t max_threads, int64_t m, int64_t n_steps, size_t scratch_size, Block block) {
  const int64_t n_workers = WorkerCount<T>(max_threads, m, n_steps);
  if (n_workers == 1) return ForEachBlockOnThisThread<T>(m, scratch_size, block);
  const BlockRuns<T> runs(m, n_workers);
  const int64_t n_runs = runs.n_runs;
  auto run = [&](int64_t i, T* scratch) { runs.Run(i, scratch, block); };
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

// An OpenMP runtime's entry point for a parallel region, GOMP_parallel(fn, data, num_threads, flags) (the
// ABI of GNU libgomp, also provided by LLVM's libomp): fn(data) runs on a team of num_threads threads, the
// caller included, and returns when all have finished.
using ParallelRegionFn = void (*)(void (*)(void*), void*, unsigned, unsigned);

// The host's OpenMP runtime, when the caller named one (SparkTorchUseHostThreads; null: none): torch runs its
// own operations on that runtime's threads, which keep spinning for a while after each of them, so a call
// run on them takes threads that are already awake instead of competing with them for the cores.
inline std::atomic<ParallelRegionFn>& HostParallelRegion() {
  static std::atomic<ParallelRegionFn> region{nullptr};
  return region;
}

// ForEachBlock on a team of the host's OpenMP threads (HostParallelRegion), as BlockRuns.
template <typename T, typename Block>
void ForEachBlockOnTeam(ParallelRegionFn region, int64_t max_threads, int64_t m, int64_t n_steps, size_t scratch_size,
                        Block block) {
  const int64_t n_workers = WorkerCount<T>(max_threads, m, n_steps);
  if (n_workers == 1) return ForEachBlockOnThisThread<T>(m, scratch_size, block);
  struct Team {
    BlockRuns<T> runs;
    size_t scratch_size;
    Block* block;
    std::atomic<int64_t> next{0};
    static void Work(void* data) {
      Team& team = *static_cast<Team*>(data);
      std::unique_ptr<Scratch<T>> scratch;  // allocated once this thread has claimed a run
      for (int64_t i; (i = team.next.fetch_add(1, std::memory_order_relaxed)) < team.runs.n_runs;) {
        if (!scratch) scratch = std::make_unique<Scratch<T>>(team.scratch_size);
        team.runs.Run(i, scratch->data(), *team.block);
      }
    }
  } team{BlockRuns<T>(m, n_workers), scratch_size, &block};
  region(&Team::Work, &team, static_cast<unsigned>(n_workers), 0);
}

// The direct entry points' threads: one per further core, started on first use; between calls each
// watches for the next task for kWatch (yielding its core to any other runnable thread), then sleeps on a
// condition variable (holding no core). A process forked from one that
// started them has no such threads: Get() then starts a new pool (the parent's is left untouched; its
// lock may have been held at the fork).
class WorkerPool {
 public:
  static WorkerPool& Get() {
    static std::atomic<WorkerPool*> current{nullptr};
    static std::mutex creating;
    WorkerPool* pool = current.load(std::memory_order_acquire);
    if (pool == nullptr || pool->pid_ != getpid()) {
      std::lock_guard<std::mutex> lock(creating);
      pool = current.load(std::memory_order_acquire);
      if (pool == nullptr || pool->pid_ != getpid()) {
        pool = new WorkerPool(Cores() - 1);  // never deleted: its threads live as long as the process
        current.store(pool, std::memory_order_release);
      }
    }
    return *pool;
  }

  void Schedule(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.push_back(std::move(task));
      pending_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_one();
  }

 private:
  explicit WorkerPool(int64_t n_threads) : pid_(getpid()) {
    for (int64_t i = 0; i < n_threads; ++i) std::thread([this] { Serve(); }).detach();
  }

  // After a task, a worker watches for the next one for kWatch before it sleeps: a training step's calls
  // (forward, backward, the next forward) follow each other closely, and waking a sleeping thread takes
  // longer than a small call's blocks. It yields while it watches, so a busy core stays with its owner.
  void Serve() {
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kWatch;
      while (pending_.load(std::memory_order_acquire) == 0 && std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
      }
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return !tasks_.empty(); });
        task = std::move(tasks_.front());
        tasks_.pop_front();
        pending_.fetch_sub(1, std::memory_order_relaxed);
      }
      task();
    }
  }

  static constexpr std::chrono::microseconds kWatch{300};

  const pid_t pid_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  std::atomic<int64_t> pending_{0};  // tasks_.size(), readable without the lock
};

}  // namespace izh

#endif  // SPARK_TORCH_IZHIKEVICH_THREADS_H_
