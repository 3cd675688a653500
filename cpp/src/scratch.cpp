#include "scratch.hpp"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define RNNKERN_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define RNNKERN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define RNNKERN_POISON(p, n) ((void)(p), (void)(n))
#define RNNKERN_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace rnnkern {
namespace {

// The pool keeps at most kKeep bytes and kBlocks blocks (kScratchMin or more each): a training
// step of a 3-layer bidirectional stack frees about 40 (its caches, weight gradients, work
// buffers), all of them wanted again by the next step.
constexpr size_t kKeep = size_t(256) << 20, kBlocks = 64;

struct Block {
  void* p;
  size_t size;
};

std::mutex pool_mutex;
std::vector<Block> pool;  // free blocks, oldest first
size_t kept = 0;          // bytes in pool

// Under ASan every block handed out is NaN (fresh or reused alike): no kernel may read what it
// has not written.
void* fill(void* p, size_t bytes) {
#if defined(__SANITIZE_ADDRESS__)
  std::memset(p, 0xff, bytes);
#else
  (void)bytes;
#endif
  return p;
}

}  // namespace

void* scratch_acquire(size_t bytes, size_t* capacity) {
  bytes = (bytes + 63) / 64 * 64;
  if (bytes >= kScratchMin) {
    std::lock_guard<std::mutex> lock(pool_mutex);
    size_t best = pool.size();  // the smallest free block that fits, if at most twice `bytes`
    for (size_t i = 0; i < pool.size(); ++i)
      if (pool[i].size >= bytes && pool[i].size / 2 <= bytes &&
          (best == pool.size() || pool[i].size < pool[best].size))
        best = i;
    if (best < pool.size()) {
      Block b = pool[best];
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(best));
      kept -= b.size;
      *capacity = b.size;
      RNNKERN_UNPOISON(b.p, bytes);  // past `bytes` stays poisoned under ASan
      return fill(b.p, bytes);
    }
  }
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  *capacity = bytes;
  return fill(p, bytes);
}

void scratch_release(void* p, size_t capacity) {
  if (capacity < kScratchMin || capacity > kKeep) return std::free(p);
  std::lock_guard<std::mutex> lock(pool_mutex);
  RNNKERN_POISON(p, capacity);
  pool.push_back({p, capacity});
  kept += capacity;
  while (kept > kKeep || pool.size() > kBlocks) {  // drop the oldest
    RNNKERN_UNPOISON(pool.front().p, pool.front().size);
    std::free(pool.front().p);
    kept -= pool.front().size;
    pool.erase(pool.begin());
  }
}

}  // namespace rnnkern
