// A small persistent thread pool: one job at a time, the caller is thread 0, workers spin on a
// barrier between time steps. Hidden units are split across threads once per call, so each
// thread keeps its slice of the packed weights in its own cache for every step.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>

namespace rnnkern {

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait();

 private:
  const int n_;
  std::atomic<int> arrived_{0};
  std::atomic<int> phase_{0};
};

// Runs fn(tid, nth, barrier) on nth = min(want, get_num_threads()) threads and returns when all
// are done. If another call holds the pool, runs on the caller alone (nth = 1): the kernels give
// the same bits for any thread count. An exception thrown by fn reaches the caller.
void parallel(int want, const std::function<void(int tid, int nth, Barrier& bar)>& fn);

// [begin, end) of part `tid` of `n` items split into `nth` near-equal contiguous parts.
inline void split(int64_t n, int tid, int nth, int64_t* begin, int64_t* end) {
  const int64_t q = n / nth, r = n % nth;
  *begin = tid * q + (tid < r ? tid : r);
  *end = *begin + q + (tid < r ? 1 : 0);
}

}  // namespace rnnkern
