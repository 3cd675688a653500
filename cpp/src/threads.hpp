// The threads of a call, made to hold up in company (other thread pools spinning, other processes
// on the cores). A call is planned for `planned()` threads and each plans its own share of the
// work (hidden blocks), but:
// - nobody waits for a thread the OS has not run yet: a worker that has not started when the
//   caller is done with its own start share is taken over (the caller does its share) and sits the
//   call out;
// - at each step a member waits for the others by spinning briefly, then sleeping (futex), never
//   by yielding its core to whoever is there;
// - a member that arrives at a step so late that it was surely descheduled makes the team shrink
//   to the caller alone for the rest of the call, so a preempted thread costs one wait, not one
//   wait per step.
// Every output element is computed by the same instructions whoever computes it, so results are
// bitwise the same for any team and any change of team.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>

namespace rnnkern {

class Team {
 public:
  static constexpr int kMaxThreads = 16;

  // Makes the team of a new call of `planned` threads (the caller is member 0).
  void reset(int planned, uint32_t generation);
  // A worker's first act: true if it keeps its share of call `generation`, false if that share
  // was taken over or the call is another one (then it must not touch the call's data).
  bool check_in(int tid, uint32_t generation);
  // The caller, after doing its own start share: the share of a worker that has not checked in
  // (waiting until 150 us into the call for one asleep to wake), now the caller's to do; -1
  // once every share is decided.
  int take_over();
  // Every member once, after its start work (and the caller after its take-overs): waits until
  // the start work of every member is done. Then size() and rank() hold. Returns false for a
  // member that must leave because the team shrank to the caller already.
  bool begin(int tid);
  // End of a step: waits for every member. Returns false for a member that must leave because
  // the team shrank to the caller (it then does nothing more of the call).
  bool sync(int tid);
  int size() const { return size_.load(std::memory_order_relaxed); }  // members now
  int rank(int tid) const;  // 0 .. size()-1 (the caller is 0)
  int planned() const { return planned_; }
  bool shrunk() const { return shrunk_; }  // the team shrank during the call

 private:
  friend class Pool;
  // Start word: generation (16 bits) | members (16) | decided shares (16) | arrivals (16).
  std::atomic<uint64_t> start_{0};
  std::atomic<uint32_t> phase_{0};  // futex word: bumped at each release
  std::atomic<int> sleepers_{0};
  std::atomic<int> arrived_{0};
  std::atomic<bool> late_{false};   // a member waited so long that a partner was descheduled
  std::atomic<int> size_{1};
  int planned_ = 1;
  uint32_t members_ = 1;            // bit per tid, fixed at the start's release
  int64_t released_ = 0;            // ns of the last release
  int64_t started_ = 0;             // ns of reset()
  bool taken_ = false;              // the caller took a worker's share over
  bool shrunk_ = false;
};

// Runs fn(tid, team) on up to min(want, get_num_threads()) threads (the caller is tid 0) and
// returns when every member is done. If another call holds the pool, runs on the caller alone.
// An exception thrown by fn reaches the caller (other members must not be left waiting at a
// sync: throw only before the first sync or after the last).
void parallel(int want, const std::function<void(int tid, Team& team)>& fn);

// [begin, end) of part `tid` of `n` items split into `nth` near-equal contiguous parts.
inline void split(int64_t n, int tid, int nth, int64_t* begin, int64_t* end) {
  const int64_t q = n / nth, r = n % nth;
  *begin = tid * q + (tid < r ? tid : r);
  *end = *begin + q + (tid < r ? 1 : 0);
}

}  // namespace rnnkern
