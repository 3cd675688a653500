// Work buffers of the kernels and the bindings' result arrays, kept between calls. A call's
// buffers are megabytes (the packed weights, the forward's projection chunk, the backward's
// dgates chunks and panels, the training caches and weight gradients it returns), and glibc
// gives blocks that large back to the system when they are freed, so each call faulted them in
// again: about 2,400 page faults per GRU backward at B = 32, T = 50, H = 256; 1,200-2,600 per
// backward of a 3-layer LSTM at B = 1 (its results), 2 of its 5.6 ms on Zen 5.
#pragma once
#include <cstddef>
#include <cstdint>

#include "rnnkern/rnnkern.hpp"  // scratch_acquire, scratch_release

namespace rnnkern {

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
