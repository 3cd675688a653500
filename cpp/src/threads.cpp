#include "threads.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__unix__)
#include <dlfcn.h>
#endif

#include "rnnkern/rnnkern.hpp"

#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RNNKERN_PAUSE() _mm_pause()
#else
#define RNNKERN_PAUSE() ((void)0)
#endif

namespace rnnkern {
namespace {

// A member waits for the others by spinning, keeping its core: sleeping would hand the core to
// whatever else wants it (another process, another pool's spinning threads) for a whole
// scheduler slice (0.75-3 ms) at every step. A member that has waited longer than this, or than
// twice its own work on the step, has a partner that was descheduled: the team shrinks to the
// caller for the rest of the call, and the waiter sleeps (futex) so that the late member can
// have its core to finish its step.
constexpr int64_t kLateNs = 100'000;
// An idle worker spins this long for the next call (calls come back to back), then sleeps.
constexpr int64_t kIdleSpinNs = 100'000;
// A benched worker (the team shrank without it) sleeps this long before it asks to come back,
// twice as long after each try that failed, up to kBenchMaxNs.
constexpr int64_t kBenchNs = 1'000'000, kBenchMaxNs = 16'000'000;
// After a call whose team shrank (a member was descheduled: something else wants the cores),
// the calls on rnnkern's pool until `contended_until` start on the caller alone: it takes the
// workers' shares over at once, and they join late, benched until then. (On PyTorch's OpenMP
// threads, judge_openmp_call below does the same job.) Each further shrink doubles the time
// (kBenchNs .. kBenchMaxNs); a call that ends with its workers in resets it. Beside a busy
// process a call then runs at one thread's speed instead of losing a scheduler slice to a
// preempted member, and tries two threads again when the time is up.
std::atomic<int64_t> contended_until{0}, contended_ns{0};
// A worker asleep between calls takes tens of us to wake; the caller waits for it this long
// after the call started (doing its own share meanwhile) before it takes the worker's share over.
// In a call it may join late (forward, backward), only as long as a spinning worker takes to
// check in: the caller starts the steps alone at once and the worker joins when it is up.
constexpr int64_t kWakeNs = 150'000, kJoinWaitNs = 5'000;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Sleeps while *word == expected (futex on Linux; elsewhere a short sleep).
void sleep_while(std::atomic<uint32_t>* word, uint32_t expected) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
#else
  if (word->load() == expected) std::this_thread::sleep_for(std::chrono::microseconds(50));
#endif
}
void wake_all(std::atomic<uint32_t>* word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
#else
  (void)word;
#endif
}

// Waits until *word != value: spins for `spin_ns`, then calls late() once and sleeps;
// `sleepers` counts the sleepers so that the waker makes a system call only when somebody does.
template <class Late>
void wait_change(std::atomic<uint32_t>& word, uint32_t value, std::atomic<int>& sleepers,
                 int64_t spin_ns, Late late) {
  const int64_t t0 = now_ns();
  bool told = false;
  for (int i = 0; word.load(std::memory_order_acquire) == value; ++i) {
    if (i < 32 || now_ns() - t0 < spin_ns) {
      RNNKERN_PAUSE();
      continue;
    }
    if (!told) late(), told = true;
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    if (word.load(std::memory_order_seq_cst) == value) sleep_while(&word, value);
    sleepers.fetch_sub(1, std::memory_order_seq_cst);
  }
}

void wait_change(std::atomic<uint32_t>& word, uint32_t value, std::atomic<int>& sleepers,
                 int64_t spin_ns) {
  wait_change(word, value, sleepers, spin_ns, [] {});
}

void bump_and_wake(std::atomic<uint32_t>& word, std::atomic<int>& sleepers) {
  word.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers.load(std::memory_order_seq_cst) > 0) wake_all(&word);
}

int popcount(uint64_t v) { return __builtin_popcountll(v); }

// Fault injection for the tests (rnnkern._core._test_delays): a worker sleeps this long before
// it checks in (so the caller takes its share over), and at its `test_sync_at`-th sync of a call
// (so the team shrinks).
std::atomic<int64_t> test_start_delay_ns{0}, test_sync_delay_ns{0};
std::atomic<int> test_sync_at{0};
thread_local int syncs_in_call = 0;

void test_delay_start() {
  syncs_in_call = 0;
  if (const int64_t d = test_start_delay_ns.load(std::memory_order_relaxed))
    std::this_thread::sleep_for(std::chrono::nanoseconds(d));
}

// A recent call's team shrank (with a sync delay injected, the tests want the worker in from the
// start: never).
bool contended() {
  return now_ns() < contended_until.load(std::memory_order_relaxed) &&
         !test_sync_delay_ns.load(std::memory_order_relaxed);
}

// What the pool did, for rnnkern.thread_stats() (relaxed counters).
std::atomic<int64_t> stat_calls{0}, stat_taken{0}, stat_shrunk{0}, stat_openmp{0}, stat_late{0},
    stat_alone{0};

// CPUs this process may run on.
int available_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

// Start word fields.
constexpr int kArrivals = 0, kDecided = 16, kMembers = 32, kGeneration = 48;
constexpr uint64_t kField = 0xffff;
uint64_t field(uint64_t s, int at) { return (s >> at) & kField; }
// Late-join word: the call's generation above bit 32; kClosed once nobody may join late.
constexpr uint64_t kClosed = uint64_t(1) << 31;

}  // namespace

// ---- Team

void Team::reset(int planned, uint32_t generation, bool late_join, bool own_pool) {
  planned_.store(planned, std::memory_order_relaxed);
  late_in_.store((uint64_t(generation & kField) << 32) | (late_join ? 0 : kClosed),
                 std::memory_order_relaxed);
  // Shares >= planned count as decided, so that no other thread can check in for them; when
  // starting alone the workers' shares too: they are the caller's (take_over) and the workers
  // join late, benched until contended_until.
  start_alone_ = late_join && own_pool && contended();
  // The caller's own share of the first projections first (start_shares) only while no
  // shrink is remembered: beside a busy process a worker that checks in during it and is then
  // preempted holds the caller at the projections' barrier (a scheduler slice); the old order
  // (take a sleeping worker's share over at once, let it join the steps) loses less there.
  start_shares_ = own_pool && contended_ns.load(std::memory_order_relaxed) == 0;
  if (start_alone_) stat_alone.fetch_add(1, std::memory_order_relaxed);
  pending_ = start_alone_ ? ((uint32_t(1) << planned) - 1) & ~uint32_t(1) : 0;
  const uint64_t decided = (kField & ~((uint64_t(1) << planned) - 1)) | 1 |
                           (uint64_t(pending_) & kField);
  start_.store((uint64_t(generation & kField) << kGeneration) | (uint64_t(1) << kMembers) |
                   (decided << kDecided),
               std::memory_order_release);
  arrived_.store(0, std::memory_order_relaxed);
  late_.store(false, std::memory_order_relaxed);
  joined_after_.store(0, std::memory_order_relaxed);
  over_.store(0, std::memory_order_relaxed);
  base_ = phase_.load(std::memory_order_relaxed);
  started_ = now_ns();
  taken_ = false;
  active_.store(1, std::memory_order_relaxed);
  shrunk_ = false;
  for (int i = 0; i < kMaxThreads; ++i) {
    ready_[i].store(-1, std::memory_order_relaxed);
    syncs_[i] = 0, bench_until_[i] = 0, backoff_[i] = kBenchNs;
  }
}

bool Team::check_in(int tid, uint32_t generation) {
  const uint64_t decided = uint64_t(1) << (kDecided + tid);
  uint64_t s = start_.load(std::memory_order_acquire);
  do {
    if (field(s, kGeneration) != (generation & kField) || (s & decided)) return false;
  } while (!start_.compare_exchange_weak(s, s | decided | (uint64_t(1) << (kMembers + tid)),
                                         std::memory_order_acq_rel, std::memory_order_acquire));
  return true;
}

bool Team::join_late(int tid, uint32_t generation) {
  uint64_t s = late_in_.load(std::memory_order_acquire);
  do {
    if ((s >> 32) != (generation & kField) || (s & kClosed)) return false;
  } while (!late_in_.compare_exchange_weak(s, s | (uint64_t(1) << tid),
                                           std::memory_order_acq_rel, std::memory_order_acquire));
  stat_late.fetch_add(1, std::memory_order_relaxed);
  const int64_t after = now_ns() - started_;
  for (int64_t a = joined_after_.load(std::memory_order_relaxed);
       a < after && !joined_after_.compare_exchange_weak(a, after, std::memory_order_relaxed);) {
  }
  // Benched from the start: it asks in at once, or, starting alone, when the time is up.
  bench_until_[tid] = start_alone_ ? contended_until.load(std::memory_order_relaxed) : 0;
  return true;
}

int Team::take_over() {
  if (pending_) {  // decided at reset
    const int w = __builtin_ctz(pending_);
    pending_ &= pending_ - 1;
    stat_taken.fetch_add(1, std::memory_order_relaxed);
    taken_ = true;
    return w;
  }
  uint64_t s = start_.load(std::memory_order_acquire);
  for (int i = 0;; ++i) {
    const uint64_t decided = field(s, kDecided);
    int w = 1;
    while (w < planned() && (decided >> w & 1)) ++w;
    if (w >= planned()) return -1;
    // (With a sync delay injected, the tests want the worker in from the start: the full wait.)
    const bool quick = !(late_in_.load(std::memory_order_relaxed) & kClosed) &&
                       !test_sync_delay_ns.load(std::memory_order_relaxed);
    if (i < 32 || now_ns() < started_ + (quick ? kJoinWaitNs : kWakeNs)) {  // time to wake up
      RNNKERN_PAUSE();
      s = start_.load(std::memory_order_acquire);
      continue;
    }
    if (start_.compare_exchange_weak(s, s | (uint64_t(1) << (kDecided + w)),
                                     std::memory_order_acq_rel, std::memory_order_acquire)) {
      stat_taken.fetch_add(1, std::memory_order_relaxed);
      taken_ = true;
      return w;
    }
  }
}

void Team::begin(int tid) {
  if (joined_late(tid)) return;  // benched
  if (planned() == 1) {
    released_ = now_ns();
    bump_and_wake(phase_, sleepers_);
    return;
  }
  const uint32_t ph = phase_.load(std::memory_order_acquire);
  const uint64_t s = start_.fetch_add(1, std::memory_order_acq_rel) + 1;
  const uint64_t members = field(s, kMembers);
  if (field(s, kDecided) == kField && field(s, kArrivals) == uint64_t(popcount(members))) {
    const bool late = late_.load(std::memory_order_relaxed);
    active_.store(late ? 1 : static_cast<uint32_t>(members), std::memory_order_relaxed);
    shrunk_ = late;
    late_.store(false, std::memory_order_relaxed);
    released_ = now_ns();
    bump_and_wake(phase_, sleepers_);
  } else {
    // Late: longer than the caller's own start (its share and the wait for check-ins) again.
    const int64_t start = now_ns() - started_;
    wait_change(phase_, ph, sleepers_, std::max(kLateNs, 2 * start), [&] { late_.store(true); });
  }
}

bool Team::active(int tid) const {
  return active_.load(std::memory_order_relaxed) >> tid & 1;
}

void Team::part(int tid, int64_t n, int64_t* begin, int64_t* end) const {
  const uint32_t a = active_.load(std::memory_order_relaxed);
  if (!(a >> tid & 1)) {
    *begin = *end = 0;
    return;
  }
  split(n, popcount(a & ((uint32_t(1) << tid) - 1)), popcount(a), begin, end);
}

// By the member completing sync k: the benched members that asked to come back at it (bits).
uint32_t Team::admit(int64_t k) {
  uint32_t in = 0;
  for (int w = 1; w < planned(); ++w) {
    int64_t want = k;
    if (ready_[w].load(std::memory_order_relaxed) == k &&
        ready_[w].compare_exchange_strong(want, -1, std::memory_order_acq_rel))
      in |= uint32_t(1) << w;
  }
  return in;
}

// The caller's part of a sync while it is the only active member: lets in benched workers that
// asked to come back at this sync, then completes the sync.
void Team::sync_alone(int64_t k) {
  if (const uint32_t in = admit(k)) {
    active_.store(1 | in, std::memory_order_relaxed);
    arrived_.store(0, std::memory_order_relaxed);
  }
  const int64_t now = now_ns();
  step_ns_.store(now - released_, std::memory_order_relaxed);
  released_ = now;
  bump_and_wake(phase_, sleepers_);
}

// A benched member at its k-th sync: returns at once while the active members are past it;
// otherwise sleeps out its backoff (or until the call is over), then asks to be let in at this
// sync and waits for the caller to get there; if the caller does not within kLateNs, it takes
// the request back and sleeps twice as long.
void Team::sync_benched(int tid, int64_t k) {
  const uint32_t done = base_ + 1 + static_cast<uint32_t>(k);  // phase_ once sync k is complete
  auto passed = [&] { return int32_t(phase_.load(std::memory_order_acquire) - done) >= 0; };
  for (;;) {
    if (passed() || over_.load(std::memory_order_acquire)) return;
    const int64_t now = now_ns();
    if (now < bench_until_[tid]) {
      timespec ts{0, static_cast<long>(bench_until_[tid] - now)};
#if defined(__linux__)
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&over_), FUTEX_WAIT_PRIVATE, 0, &ts,
              nullptr, 0);
#else
      std::this_thread::sleep_for(std::chrono::nanoseconds(ts.tv_nsec));
#endif
      continue;
    }
    ready_[tid].store(k, std::memory_order_release);
    const int64_t t0 = now_ns();
    const int64_t patience = std::max(kLateNs, 3 * step_ns_.load(std::memory_order_relaxed));
    while (!passed() && now_ns() - t0 < patience) RNNKERN_PAUSE();
    int64_t want = k;
    if (!ready_[tid].compare_exchange_strong(want, -1, std::memory_order_acq_rel)) {
      while (!passed()) RNNKERN_PAUSE();  // let in at sync k: the caller completes it now
      return;
    }
    if (passed()) return;  // the caller went by before it saw the request: ask again later
    backoff_[tid] = std::min(2 * backoff_[tid], kBenchMaxNs);
    bench_until_[tid] = now_ns() + backoff_[tid];
  }
}

void Team::sync(int tid) {
  const int64_t k = ++syncs_[tid];  // this member's k-th sync of the call
  const uint32_t a = active_.load(std::memory_order_relaxed);
  if (!(a >> tid & 1)) return sync_benched(tid, k);
  const int n = popcount(a);
  if (n == 1) return sync_alone(k);
  if (tid != 0 && test_sync_delay_ns.load(std::memory_order_relaxed) &&
      ++syncs_in_call == test_sync_at.load(std::memory_order_relaxed))
    std::this_thread::sleep_for(std::chrono::nanoseconds(test_sync_delay_ns.load()));
  const int64_t now = now_ns();
  const uint32_t ph = phase_.load(std::memory_order_acquire);
  // Read before arriving: the last member to arrive writes it (ThreadSanitizer saw the race).
  const int64_t work = now - released_;
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
    if (late_.load(std::memory_order_relaxed)) {  // a member was descheduled: bench the workers
      active_.store(1, std::memory_order_relaxed);
      shrunk_ = true;
      late_.store(false, std::memory_order_relaxed);
      for (int w = 1; w < planned(); ++w) bench_until_[w] = now + backoff_[w];
    } else if (const uint32_t in = admit(k)) {  // benched members that asked in (joined late)
      active_.store(a | in, std::memory_order_relaxed);
    }
    step_ns_.store(now - released_, std::memory_order_relaxed);
    released_ = now;
    arrived_.store(0, std::memory_order_relaxed);
    bump_and_wake(phase_, sleepers_);
  } else {
    wait_change(phase_, ph, sleepers_, std::max(kLateNs, 2 * work),
                [&] { late_.store(true, std::memory_order_relaxed); });
  }
}

int Team::finish() {
  const int late = popcount(late_in_.fetch_or(kClosed, std::memory_order_acq_rel) & kField);
  over_.store(1, std::memory_order_release);
  if (shrunk_ || late) wake_all(&over_);
  if (shrunk_) {
    const int64_t d = contended_ns.load(std::memory_order_relaxed);
    const int64_t next = d ? std::min(2 * d, kBenchMaxNs) : kBenchNs;
    contended_ns.store(next, std::memory_order_relaxed);  // the window opens in remember()
  } else if (popcount(active_.load(std::memory_order_relaxed)) > 1) {
    contended_ns.store(0, std::memory_order_relaxed);
  }
  return late;
}

// ---- the pool

namespace {

using Job = std::function<void(int, Team&)>;

void call(const Job& fn, int tid, Team& team, std::exception_ptr* error) {
  try {
    fn(tid, team);
  } catch (...) {
    *error = std::current_exception();
  }
}

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
// The OpenMP runtime to run on: unset (look for one), none (rnnkern's own pool) or its
// GOMP_parallel.
enum class Runtime : int { unset, own, openmp };
std::atomic<int> runtime_choice{static_cast<int>(Runtime::unset)};
std::atomic<GompParallel> gomp_parallel{nullptr};

// GOMP_parallel of a GNU-compatible OpenMP runtime already loaded in the process (torch's
// libgomp, Intel's libiomp5, LLVM's libomp), or null. Never loads one.
GompParallel loaded_openmp() {
#if defined(__unix__) && defined(RTLD_NOLOAD)
  for (const char* name : {"libgomp.so.1", "libiomp5.so", "libomp.so", "libomp.so.5"}) {
    if (void* h = dlopen(name, RTLD_LAZY | RTLD_NOLOAD)) {
      auto f = reinterpret_cast<GompParallel>(dlsym(h, "GOMP_parallel"));
      dlclose(h);  // the library stays loaded: its user holds it
      if (f) return f;
    }
  }
#endif
  return nullptr;
}

// Until when (ns) "auto" avoids the OpenMP runtime: set for openmp_avoid_ns when the preemption
// score below reaches kAvoidAt. That is 100 ms, twice as long (up to 800 ms) when the score gets
// there again within 1 s of the last avoidance's end (a busy process stays for seconds).
std::atomic<int64_t> openmp_avoided_until{0}, openmp_avoid_ns{0};
constexpr int64_t kAvoidNs = 100'000'000, kAvoidMaxNs = 800'000'000;
constexpr int64_t kAvoidAgainNs = 1'000'000'000;
// Preemption on the OpenMP runtime: +2 per call on it whose member was preempted (the team
// shrank during the call, or a worker joined it more than 1 ms late or not at all: a sleeping
// one wakes within 50 us), -1 per clean call (every worker in from the start, no shrink); a
// call whose worker joined late but within 1 ms (asleep after a quiet phase) counts neither
// way. At kAvoidAt "auto" avoids the runtime (openmp_avoided_until): three preempted calls in
// a row, or five of nine as beside a busy process, where about every other call's team
// shrinks. The calls that come back after an avoidance are on probation (the score starts one
// preempted call short of kAvoidAt), so that a busy process still there costs one or two calls
// on the OpenMP threads per 100-800 ms. One preempted call is no evidence: in a PyTorch
// training step a member is sometimes late, and rnnkern's own pool would then compete with
// PyTorch's spinning threads (the drop-in step at B = 1 took 1.7x as long as on the OpenMP
// threads throughout). Neither is a late member: counted as trouble (session 10), the workers
// asleep after a quiet phase kept calls on rnnkern's pool, competing with torch's spinning
// threads once torch operators came back (1.15-1.99x).
std::atomic<int> openmp_preempted{0};
constexpr int kAvoidAt = 6;
// A worker asleep between calls wakes within 50 us; one that joins a call later than this, or
// not at all in a call that took longer, was preempted.
constexpr int64_t kPreemptedNs = 1'000'000;

// A call on the OpenMP runtime: its team shrank, a worker's share was taken over, the last late
// joiner joined `joined_after` ns into the call (0: none), it allowed late joins and took call_ns.
void judge_openmp_call(bool shrunk, bool taken, int64_t joined_after, bool late_join,
                       int64_t call_ns) {
  const bool preempted = shrunk || (taken && late_join &&
                                    (joined_after ? joined_after : call_ns) > kPreemptedNs);
  const bool clean = !taken && !shrunk;
  int s = openmp_preempted.load(std::memory_order_relaxed);
  s = preempted ? s + 2 : clean ? std::max(s - 1, 0) : s;
  if (s >= kAvoidAt) {
    const int64_t now = now_ns(), last = openmp_avoided_until.load(std::memory_order_relaxed);
    const int64_t again =
        std::min(2 * openmp_avoid_ns.load(std::memory_order_relaxed), kAvoidMaxNs);
    const int64_t d = now - last < kAvoidAgainNs ? again : kAvoidNs;
    openmp_avoid_ns.store(d, std::memory_order_relaxed);
    openmp_avoided_until.store(now + d, std::memory_order_relaxed);
    s = kAvoidAt - 2;  // probation for the calls that come back
  }
  openmp_preempted.store(s, std::memory_order_relaxed);
}

// The OpenMP runtime a call runs on, or null for rnnkern's pool. "auto": when the process has
// loaded an OpenMP runtime, some library in it (PyTorch) keeps that runtime's threads spinning
// for milliseconds after each of its parallel regions; rnnkern's threads would compete with
// them for the cores, so rnnkern's steps run on them instead. But when another process wants
// the cores, those threads' spinning after rnnkern's own calls costs more than it saves: when
// its members are preempted (judge_openmp_call), the next calls run on rnnkern's pool (whose
// workers sleep at once when they leave a call) for 100-800 ms, then try again.
GompParallel openmp_for_call(int64_t t) {
  switch (static_cast<Runtime>(runtime_choice.load(std::memory_order_relaxed))) {
    case Runtime::own: return nullptr;
    case Runtime::openmp: return gomp_parallel.load(std::memory_order_relaxed);
    default: break;
  }
  static std::atomic<int64_t> looked{-1};  // ns of the last look for a runtime
  GompParallel f = gomp_parallel.load(std::memory_order_relaxed);
  const int64_t last = looked.load(std::memory_order_relaxed);
  if (!f && (last < 0 || t - last > 100'000'000)) {  // look again at most every 100 ms
    looked.store(t, std::memory_order_relaxed);
    if ((f = loaded_openmp())) gomp_parallel.store(f);
  }
  return f && t >= openmp_avoided_until.load(std::memory_order_relaxed) ? f : nullptr;
}

// One call on an OpenMP runtime's threads. GOMP_parallel returns when every thread has run the
// trampoline, so the context may live on the caller's stack.
struct GompCall {
  const Job* fn;
  Team team;
  std::thread::id caller;
  std::atomic<int> ticket{0};
  std::vector<std::exception_ptr> errors;
};

void gomp_trampoline(void* p) {
  auto& g = *static_cast<GompCall*>(p);
  const int tid = std::this_thread::get_id() == g.caller ? 0 : 1 + g.ticket.fetch_add(1);
  if (tid >= g.team.planned()) return;
  if (tid != 0) test_delay_start();
  if (tid != 0 && !g.team.check_in(tid, 0) && !g.team.join_late(tid, 0)) return;
  call(*g.fn, tid, g.team, &g.errors[tid]);
  if (tid == 0) g.team.finish();  // benched workers stop waiting to come back
}

}  // namespace

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
    size_ = std::min({n, available_cpus(), Team::kMaxThreads});
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this, i] { work(i); });
  }

  void run(int want, const Job& fn, bool late_join) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    const int nth = std::min(want, size_.load());
    if (!busy.owns_lock() || nth <= 1) {
      Team solo;
      solo.reset(1, 0);
      fn(0, solo);
      return;
    }
    if (GompParallel gomp = openmp_for_call(now_ns())) {
      GompCall g{&fn, {}, std::this_thread::get_id(), {}, std::vector<std::exception_ptr>(nth)};
      g.team.reset(nth, 0, late_join);
      const int64_t t0 = now_ns();
      gomp(gomp_trampoline, &g, static_cast<unsigned>(nth), 0);
      remember(g.team);
      stat_openmp.fetch_add(1, std::memory_order_relaxed);
      judge_openmp_call(g.team.shrunk(), g.team.taken_, g.team.joined_after(), late_join,
                        now_ns() - t0);
      for (auto& e : g.errors)
        if (e) std::rethrow_exception(e);
      return;
    }
    errors_.assign(nth, nullptr);
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &fn;
      team_.reset(nth, static_cast<uint32_t>(generation_.load() + 1), late_join,
                  /*own_pool=*/true);
      done_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes job_ and team_
    }
    if (idle_.load(std::memory_order_seq_cst) > 0) cv_.notify_all();
    call(fn, 0, team_, &errors_[0]);
    const int late = team_.finish();  // benched workers stop waiting to come back
    // Wait for the workers that joined (the others never touch the call again).
    const int joined = popcount(field(team_.start_.load(), kMembers)) - 1 + late;
    const uint32_t target = static_cast<uint32_t>(joined);
    for (uint32_t d; (d = done_.load(std::memory_order_acquire)) < target;)
      wait_change(done_, d, done_sleepers_, kLateNs);
    remember(team_);
    for (auto& e : errors_)
      if (e) std::rethrow_exception(e);
  }

 private:
  Pool() { resize(available_cpus()); }

  void remember(const Team& team) {
    stat_calls.fetch_add(1, std::memory_order_relaxed);
    if (!team.shrunk()) return;
    stat_shrunk.fetch_add(1, std::memory_order_relaxed);
    // The contended window counts from the call's end, after the caller has waited for the
    // member that was descheduled (a scheduler slice beside a busy process), not from finish().
    contended_until.store(now_ns() + contended_ns.load(std::memory_order_relaxed),
                          std::memory_order_relaxed);
  }

  void work(int tid) {
    uint64_t seen = generation_.load();
    bool left = false;  // this worker left its last call because it was descheduled
    for (;;) {
      // Spin a little after a call (calls come in quick succession), then sleep; but not after
      // leaving a call: then the cores are wanted by others, the caller among them.
      const int64_t until = left ? 0 : now_ns() + kIdleSpinNs;
      while (generation_.load(std::memory_order_acquire) == seen && !stop_.load() &&
             now_ns() < until)
        for (int i = 0; i < 16; ++i) RNNKERN_PAUSE();
      if (generation_.load(std::memory_order_acquire) == seen && !stop_.load()) {
        std::unique_lock<std::mutex> lk(m_);
        idle_.fetch_add(1, std::memory_order_seq_cst);
        cv_.wait(lk, [&] { return generation_.load() != seen || stop_.load(); });
        idle_.fetch_sub(1, std::memory_order_seq_cst);
      }
      if (stop_) return;
      seen = generation_.load(std::memory_order_acquire);
      if (tid >= team_.planned()) continue;
      test_delay_start();
      // The call may be over already (the caller took this share over): then check_in and
      // join_late fail and nothing of the call is touched.
      if (!team_.check_in(tid, static_cast<uint32_t>(seen)) &&
          !team_.join_late(tid, static_cast<uint32_t>(seen)))
        continue;
      call(*job_, tid, team_, &errors_[tid]);
      left = team_.shrunk();
      done_.fetch_add(1, std::memory_order_acq_rel);
      if (done_sleepers_.load(std::memory_order_seq_cst) > 0) wake_all(&done_);
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

  std::mutex busy_;  // held by the running call
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::vector<std::exception_ptr> errors_;
  std::atomic<int> size_{1};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> idle_{0};           // workers asleep on cv_
  std::atomic<uint32_t> done_{0};      // workers that joined the call and are done
  std::atomic<int> done_sleepers_{0};
  std::atomic<bool> stop_{false};
  const Job* job_ = nullptr;
  Team team_;
};

void parallel(int want, const Job& fn, bool late_join) { Pool::get().run(want, fn, late_join); }

void concurrently(int n, const std::function<void(int i)>& job) {
  if (n <= 0) return;
  // No exception leaves the region: a member that threw before take_over() would leave the
  // shares of workers that have not started undecided.
  std::vector<std::exception_ptr> errors(n);
  parallel(n, [&](int tid, Team& team) {
    auto share = [&](int s) {  // jobs [b, e) of share s; the pool is held, so their regions run alone
      int64_t b, e;
      split(n, s, team.planned(), &b, &e);
      for (int64_t i = b; i < e; ++i) {
        try {
          job(static_cast<int>(i));
        } catch (...) {
          errors[i] = std::current_exception();
        }
      }
    };
    share(tid);
    if (tid == 0)
      for (int w; (w = team.take_over()) >= 0;) share(w);
  });
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

void set_thread_runtime(const std::string& name) {
  if (name == "auto") {
    runtime_choice.store(static_cast<int>(Runtime::unset));
  } else if (name == "rnnkern") {
    runtime_choice.store(static_cast<int>(Runtime::own));
  } else if (name == "openmp") {
    GompParallel f = loaded_openmp();
    if (!f) throw std::invalid_argument("name: no OpenMP runtime is loaded in this process");
    gomp_parallel.store(f);
    runtime_choice.store(static_cast<int>(Runtime::openmp));
  } else {
    throw std::invalid_argument("name: expected 'auto', 'rnnkern' or 'openmp', got '" + name +
                                "'");
  }
}

void set_test_delays(int64_t start_ns, int64_t sync_ns, int sync_at) {
  test_start_delay_ns.store(start_ns);
  test_sync_delay_ns.store(sync_ns);
  test_sync_at.store(sync_at);
}

ThreadStats thread_stats() {
  return ThreadStats{stat_calls.load(), stat_openmp.load(), stat_taken.load(), stat_shrunk.load(),
                     stat_late.load(), stat_alone.load()};
}

std::string thread_runtime() {
  switch (static_cast<Runtime>(runtime_choice.load())) {
    case Runtime::own: return "rnnkern";
    case Runtime::openmp: return "openmp";
    default: return "auto";
  }
}

void set_num_threads(int n) { Pool::get().resize(n < 1 ? 1 : n); }
int get_num_threads() { return Pool::get().size(); }

}  // namespace rnnkern
