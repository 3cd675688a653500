// Work buffers of the kernels, kept between calls. A call's buffers are megabytes (the packed
// weights, the forward's projection chunk, the backward's dgates chunks and panels), and glibc
// gives blocks that large back to the system when they are freed, so each call faulted them in
// again: about 2,400 page faults per GRU backward at B = 32, T = 50, H = 256.
#pragma once
#include <cstddef>
#include <cstdint>

namespace rnnkern {

// A 64-byte aligned, uninitialized block of at least `bytes`; its true size goes to *capacity.
// Throws std::bad_alloc.
void* scratch_acquire(size_t bytes, size_t* capacity);
// Gives a block back: kept for the next call (up to a cap on the memory kept), else freed.
void scratch_release(void* p, size_t capacity);

template <class F>
class Buffer {  // n elements of scratch; empty when n <= 0
 public:
  explicit Buffer(int64_t n) {
    if (n > 0) p_ = static_cast<F*>(scratch_acquire(static_cast<size_t>(n) * sizeof(F), &cap_));
  }
  ~Buffer() {
    if (p_) scratch_release(p_, cap_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  F* get() const { return p_; }

 private:
  F* p_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace rnnkern
