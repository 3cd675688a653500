// The threads of a call, made to hold up in company (other thread pools spinning, other processes
// on the cores). A call is planned for `planned()` threads and each plans its own share of the
// work (hidden blocks), but:
// - nobody waits for a thread the OS has not run yet: a worker that has not started when the
//   caller is done with its own start share is taken over (the caller does its share); in a call
//   that allows it (`late_join`) it then joins benched, as below, else it sits the call out;
// - at each step a member waits for the others by spinning briefly, then sleeping (futex), never
//   by yielding its core to whoever is there;
// - a member that arrives at a step so late that it was surely descheduled makes the team shrink
//   to the caller alone, so a preempted thread costs one wait, not one wait per step; the
//   benched workers follow the steps without work and come back after 1 ms (then 2, 4, .. 16 ms
//   if the caller keeps missing them), so a short disturbance does not cost the whole call.
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

  // Makes the team of a new call of `planned` threads (the caller is member 0). `late_join`: a
  // worker whose start share was taken over may still join, benched (its job skips its start
  // work, see joined_late, and goes to begin()).
  // `own_pool`: on rnnkern's pool (see start_shares; and a late-joining call starts on the
  // caller alone, every worker's share its own, shortly after a call whose team shrank).
  void reset(int planned, uint32_t generation, bool late_join = false, bool own_pool = false);
  // A worker's first act: true if it keeps its share of call `generation`, false if that share
  // was taken over or the call is another one (then it must not touch the call's data).
  bool check_in(int tid, uint32_t generation);
  // After a failed check_in: true if the worker joins call `generation` late, benched (then it
  // runs the job, whose begin() returns at once); false if it must not touch the call.
  bool join_late(int tid, uint32_t generation);
  // The caller, after doing its own start share: the share of a worker that has not checked in
  // (waiting until 150 us into the call for one asleep to wake), now the caller's to do; -1
  // once every share is decided.
  int take_over();
  // Every member once, after its start work (and the caller after its take-overs): waits until
  // the start work of every member is done.
  void begin(int tid);
  // End of each step, by every member, active or benched: an active member waits for the other
  // active ones; a benched one catches up (it has no work) and may be let in again here.
  void sync(int tid);
  // Whether member tid has work now, and its part [begin, end) of n items (empty if benched).
  bool active(int tid) const;
  void part(int tid, int64_t n, int64_t* begin, int64_t* end) const;
  // The caller, when its work is done: benched members stop waiting to be let in and no worker
  // joins late any more. Returns the number of workers that joined late.
  int finish();
  int planned() const { return planned_.load(std::memory_order_relaxed); }
  // Member tid joined late: its start share was taken over, so it has no start work.
  bool joined_late(int tid) const {
    return late_in_.load(std::memory_order_relaxed) >> tid & 1;
  }
  bool shrunk() const { return shrunk_; }  // the team shrank during the call
  // ns from reset() to the latest late join (0: nobody joined late).
  int64_t joined_after() const { return joined_after_.load(std::memory_order_relaxed); }
  // Whether the members should do planned start shares before begin(): on rnnkern's pool, whose
  // workers may be asleep at the start (the caller takes those shares over after its own). On an
  // OpenMP runtime's threads, which spin, it is faster that the caller takes over first and the
  // members split the start work after begin().
  bool start_shares() const { return start_shares_; }

 private:
  friend class Pool;
  void sync_alone(int64_t k);
  void sync_benched(int tid, int64_t k);
  uint32_t admit(int64_t k);

  // Start word: generation (16 bits) | members (16) | decided shares (16) | arrivals (16).
  std::atomic<uint64_t> start_{0};
  std::atomic<uint32_t> phase_{0};   // futex word: bumped when a sync (or the start) completes
  std::atomic<uint32_t> over_{0};    // futex word: 1 once the caller's work is done
  std::atomic<int> sleepers_{0};
  std::atomic<int> arrived_{0};
  std::atomic<bool> late_{false};    // a member waited so long that a partner was descheduled
  std::atomic<uint32_t> active_{1};  // bit per member with work now (the caller always)
  // Late joiners: generation (16 bits) << 32 | closed (bit 31: no more) | bit per late member.
  std::atomic<uint64_t> late_in_{0};
  std::atomic<int64_t> ready_[kMaxThreads];  // sync at which benched member i asks to come back
  int64_t syncs_[kMaxThreads] = {};        // syncs done by member i (its own)
  int64_t bench_until_[kMaxThreads] = {};  // ns: benched member i sleeps until then
  int64_t backoff_[kMaxThreads] = {};      // ns: its next sleep
  // Atomic: an idle worker reads it for a call that may be over, while the caller resets it
  // for the next (check_in then fails; ThreadSanitizer saw the plain int race).
  std::atomic<int> planned_{1};
  uint32_t base_ = 0;                // phase_ at reset()
  int64_t released_ = 0;             // ns of the last release
  std::atomic<int64_t> step_ns_{0};  // ns between the last two releases
  std::atomic<int64_t> joined_after_{0};  // see joined_after()
  int64_t started_ = 0;              // ns of reset()
  bool start_alone_ = false;         // the workers' shares were the caller's from the start
  bool start_shares_ = false;        // on rnnkern's pool
  uint32_t pending_ = 0;             // workers' shares taken at reset, for take_over to hand out
  bool taken_ = false;               // the caller took a worker's share over
  bool shrunk_ = false;
};

// Runs fn(tid, team) on up to min(want, get_num_threads()) threads (the caller is tid 0) and
// returns when every member is done. If another call holds the pool, runs on the caller alone.
// An exception thrown by fn reaches the caller (other members must not be left waiting at a
// sync: throw only before the first sync or after the last).
// `late_join`: see Team::reset.
void parallel(int want, const std::function<void(int tid, Team& team)>& fn,
              bool late_join = false);

// [begin, end) of part `tid` of `n` items split into `nth` near-equal contiguous parts.
inline void split(int64_t n, int tid, int nth, int64_t* begin, int64_t* end) {
  const int64_t q = n / nth, r = n % nth;
  *begin = tid * q + (tid < r ? tid : r);
  *end = *begin + q + (tid < r ? 1 : 0);
}

}  // namespace rnnkern
