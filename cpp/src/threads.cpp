#include "threads.hpp"

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "rnnkern/rnnkern.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RNNKERN_PAUSE() _mm_pause()
#else
#define RNNKERN_PAUSE() ((void)0)
#endif

namespace rnnkern {

void Barrier::wait() {
  if (n_ == 1) return;
  const int ph = phase_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    phase_.store(ph + 1, std::memory_order_release);
    return;
  }
  for (int spin = 0; phase_.load(std::memory_order_acquire) == ph; ++spin) {
    if (spin < 4000) {
      RNNKERN_PAUSE();
    } else {
      std::this_thread::yield();  // the machine is oversubscribed: let the others run
    }
  }
}

namespace {

using Job = std::function<void(int, int, Barrier&)>;

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: workers may outlive static destructors
    return *pool;
  }

  int size() const { return size_.load(); }

  void resize(int n) {
    std::lock_guard<std::mutex> busy(busy_);
    stop_workers();
    size_ = n;
    // A new worker has seen every job so far: it must not run the last one again.
    const uint64_t seen = generation_.load();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, seen] { work(i, seen); });
  }

  void run(int want, const Job& fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    int nth = want < size_ ? want : size_.load();
    if (!busy.owns_lock() || nth <= 1) {
      Barrier bar(1);
      fn(0, 1, bar);
      return;
    }
    Barrier bar(nth);
    errors_.assign(nth, nullptr);
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &fn, bar_ = &bar, nth_ = nth, pending_ = nth - 1;
      ++generation_;
    }
    cv_.notify_all();
    call(fn, 0, nth, bar);
    // Wait for the workers, spinning briefly since steps are short.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
      if (spin < 4000) RNNKERN_PAUSE(); else std::this_thread::yield();
    }
    for (auto& e : errors_)
      if (e) std::rethrow_exception(e);
  }

 private:
  Pool() {
    unsigned hw = std::thread::hardware_concurrency();
    resize(hw ? static_cast<int>(hw) : 1);
  }

  void call(const Job& fn, int tid, int nth, Barrier& bar) {
    try {
      fn(tid, nth, bar);
    } catch (...) {
      errors_[tid] = std::current_exception();
    }
  }

  void work(int tid, uint64_t seen) {
    for (;;) {
      // Spin for a while after a job (calls come in quick succession), then sleep.
      auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      while (generation_.load(std::memory_order_acquire) == seen && !stop_.load() &&
             std::chrono::steady_clock::now() < until)
        for (int i = 0; i < 64; ++i) RNNKERN_PAUSE();
      const Job* job;
      Barrier* bar;
      int nth;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_.load() != seen || stop_.load(); });
        if (stop_) return;
        seen = generation_.load();
        job = job_, bar = bar_, nth = nth_;
      }
      if (tid < nth) {
        call(*job, tid, nth, *bar);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    stop_ = false;
  }

  std::mutex busy_;  // held by the running job
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::vector<std::exception_ptr> errors_;
  std::atomic<int> size_{1};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const Job* job_ = nullptr;
  Barrier* bar_ = nullptr;
  int nth_ = 1;
};

}  // namespace

void parallel(int want, const Job& fn) { Pool::get().run(want, fn); }

void set_num_threads(int n) { Pool::get().resize(n < 1 ? 1 : n); }
int get_num_threads() { return Pool::get().size(); }

}  // namespace rnnkern
