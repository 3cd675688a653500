// Softmax and cross-entropy over the last axis: subtract the row max, loss = logsumexp - z[target].
#include <cmath>
#include <cstdint>
#include <vector>

#include "rnnkern/rnnkern.hpp"

namespace rnnkern {

template <class F>
void softmax(int64_t N, int64_t C, const F* z, F* out) {
  for (int64_t i = 0; i < N; ++i) {
    const F* zi = z + i * C;
    F* oi = out + i * C;
    F m = zi[0];
    for (int64_t c = 1; c < C; ++c) m = zi[c] > m ? zi[c] : m;
    F s = 0;
    for (int64_t c = 0; c < C; ++c) s += (oi[c] = std::exp(zi[c] - m));
    for (int64_t c = 0; c < C; ++c) oi[c] /= s;
  }
}

template <class F>
double softmax_cross_entropy(int64_t N, int64_t C, const F* logits, const int64_t* targets,
                             int64_t ignore_index, F* dlogits) {
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) count += targets[i] != ignore_index;
  const F scale = count ? F(1) / F(count) : F(0);
  double loss = 0;
  for (int64_t i = 0; i < N; ++i) {
    F* di = dlogits + i * C;
    if (targets[i] == ignore_index) {
      for (int64_t c = 0; c < C; ++c) di[c] = 0;
      continue;
    }
    softmax<F>(1, C, logits + i * C, di);
    const F* zi = logits + i * C;
    F m = zi[0];
    for (int64_t c = 1; c < C; ++c) m = zi[c] > m ? zi[c] : m;
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += std::exp(double(zi[c] - m));
    loss += double(m) + std::log(s) - double(zi[targets[i]]);
    for (int64_t c = 0; c < C; ++c) di[c] *= scale;
    di[targets[i]] -= scale;
  }
  return count ? loss / double(count) : 0.0;
}

template void softmax<float>(int64_t, int64_t, const float*, float*);
template void softmax<double>(int64_t, int64_t, const double*, double*);
template double softmax_cross_entropy<float>(int64_t, int64_t, const float*, const int64_t*,
                                             int64_t, float*);
template double softmax_cross_entropy<double>(int64_t, int64_t, const double*, const int64_t*,
                                              int64_t, double*);

}  // namespace rnnkern
