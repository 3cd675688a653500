// One thread's share of an LSTM inference step on the AVX2 kernels (kernels_impl.hpp), timed in
// three forms that alternate round by round (the machine is noisy; compare within one run):
//   product:  panel_rows over the blocks, the epilogue only stores the gates' sums;
//   step:     panel_rows with the LSTM epilogue (sigmoid, tanh, the cell update; as
//             cells/lstm.hpp's forward, no peephole, no projection, no padding);
//   epilogue: the LSTM epilogue alone, on sums read from a buffer.
// Layout as run_forward's: x W_ih^T rows 4H apart (gates H apart) in a 4 MB chunk, c and h rows
// H apart. FLOP/s count the product's FLOPs only.
//   g++ -std=gnu++17 -O3 -ffp-contract=fast -falign-loops=64 -mavx2 -mfma -Icpp/kernels
//       -Icpp/include scripts/step_bench.cpp -o /tmp/step_bench    (the library's flags)
//   /tmp/step_bench B H BLOCKS [ROUNDS]      (BLOCKS: this thread's share, e.g. H / 8 / 2)
#define RNNKERN_ISA avx2
#define RNNKERN_ISA_NAME "avx2"
#define RNNKERN_VBYTES 32
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "kernels_impl.hpp"

using namespace rnnkern::avx2;

int main(int argc, char** argv) {
  if (argc < 4) return std::fprintf(stderr, "usage: step_bench B H BLOCKS [ROUNDS]\n"), 2;
  const int64_t B = std::atol(argv[1]), H = std::atol(argv[2]), nblk = std::atol(argv[3]);
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 200;
  const int64_t N = NB<float>, K = H, steps = std::max<int64_t>(1, (1 << 20) / (B * 4 * H));
  if (B < 1 || nblk < 1 || nblk * N > H) return std::fprintf(stderr, "need BLOCKS * 8 <= H\n"), 2;
  std::vector<float> h(B * K);                 // (B, K) h_{t-1}
  std::vector<float> c(B * H), hn(B * H);      // (B, H) c (updated in place), h_t
  std::vector<float> xp(steps * B * 4 * H);    // (steps, B, 4H) the input projections
  std::vector<float> sums(B * 4 * N);          // (B, 4, NB) a block's products
  std::vector<float> panels(nblk * K * 4 * N);  // (nblk, K, 4, NB)
  srand(1);
  auto fill = [](std::vector<float>& v, float scale) {
    for (auto& e : v) e = scale * (static_cast<float>(rand()) / RAND_MAX - 0.5f);
  };
  fill(h, 2.0f), fill(c, 2.0f), fill(xp, 2.0f), fill(panels, 0.12f), fill(sums, 2.0f);
  int64_t t = 0;  // the step: rows of xp
  auto lstm = [&](int64_t jb, int64_t b, const float* acc) {
    const int64_t j0 = jb * N;
    const float* x = xp.data() + (t * B + b) * 4 * H + j0;
    const vec<float> cp = load(c.data() + b * H + j0);
    const vec<float> i = vsigmoid(load(x) + load(acc)), f = vsigmoid(load(x + H) + load(acc + N));
    const vec<float> g = vtanh(load(x + 2 * H) + load(acc + 2 * N));
    const vec<float> cn = f * cp + i * g;
    const vec<float> o = vsigmoid(load(x + 3 * H) + load(acc + 3 * N));
    store(c.data() + b * H + j0, cn);
    store(hn.data() + b * H + j0, o * vtanh(cn));
  };
  auto run = [&](int form) {
    for (int64_t jb = 0; jb < nblk; ++jb) {
      const float* panel = panels.data() + jb * K * 4 * N;
      if (form == 0)
        panel_rows<float, 4>(h.data(), K, B, panel, K, [&](int64_t b, const float* acc) {
          std::copy(acc, acc + 4 * N, sums.data() + b * 4 * N);
        });
      else if (form == 1)
        panel_rows<float, 4>(h.data(), K, B, panel, K,
                             [&](int64_t b, const float* acc) { lstm(jb, b, acc); });
      else
        for (int64_t b = 0; b < B; ++b) lstm(jb, b, sums.data() + b * 4 * N);
    }
    t = (t + 1) % steps;
  };
  const double flops = 2.0 * B * K * 4 * N * nblk;
  const int inner = static_cast<int>(std::max(1.0, 4e6 / flops));  // about 50 us a sample
  const char* names[3] = {"product", "step", "epilogue"};
  std::vector<double> ts[3];
  for (int r = 0; r < rounds; ++r)
    for (int form = 0; form < 3; ++form) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < inner; ++i) run(form);
      ts[form].push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / inner);
    }
  double med[3];
  for (int form = 0; form < 3; ++form) {
    std::sort(ts[form].begin(), ts[form].end());
    med[form] = ts[form][rounds / 2];
    std::printf("B=%ld H=%ld blocks=%ld %-8s median %8.2f us  (%5.1f GFLOP/s of the product)\n",
                B, H, nblk, names[form], med[form] * 1e6, flops / med[form] * 1e-9);
  }
  std::printf("step / product %.3f, epilogue / product %.3f, epilogue per row and block %.1f ns"
              " (sink %g)\n", med[1] / med[0], med[2] / med[0], med[2] / (B * nblk) * 1e9,
              static_cast<double>(hn[0] + c[0] + sums[0]));
}
