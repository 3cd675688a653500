// One thread's share of an LSTM float32 inference step on the AVX2 kernels, timed with the
// library's own code in three forms that alternate round by round (the machine is noisy;
// compare within one run):
//   product:    panel_rows over the thread's blocks of the packed W_hh, an epilogue that only
//               stores each row's gate sums (the step's arithmetic without its epilogue);
//   step:       Kernels<cells::Lstm>::forward_phase over the same blocks (cells/lstm.hpp's
//               epilogue: gates, the cell update, h), so step - product is the epilogue's cost;
//   projection: project() of T steps' inputs (T * B rows, I = H) for all 4H units, per step.
// Weights packed by pack_forward, x W_ih^T rows in run_forward's layout (gates HX apart).
// FLOP/s count the products' FLOPs.
//   g++ -std=gnu++17 -O3 -ffp-contract=fast -falign-loops=64 -mavx2 -mfma -Icpp/kernels
//       -Icpp/include scripts/step_bench.cpp cpp/src/cells.cpp -o /tmp/step_bench
//   /tmp/step_bench B H BLOCKS [ROUNDS]      (BLOCKS: this thread's share, e.g. H / 8 / 2)
#define RNNKERN_ISA avx2
#define RNNKERN_ISA_NAME "avx2"
#define RNNKERN_VBYTES 32
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "kernels_impl.hpp"

using namespace rnnkern;
using namespace rnnkern::avx2;

int main(int argc, char** argv) {
  if (argc < 4) return std::fprintf(stderr, "usage: step_bench B H BLOCKS [ROUNDS]\n"), 2;
  const int64_t B = std::atol(argv[1]), H = std::atol(argv[2]), nblk = std::atol(argv[3]);
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 200;
  const int64_t N = NB<float>, K = H, HX = (H + N - 1) / N * N, T = 16;
  if (B < 1 || nblk < 1 || nblk * N > HX) return std::fprintf(stderr, "need BLOCKS * 8 <= H\n"), 2;
  std::vector<float> w_hh(4 * H * K), w_ih(4 * H * K);  // (4H, K) weights, K = I = H
  std::vector<float> x(T * B * K);                       // (T, B, I) inputs
  std::vector<float> bias(4 * H);                        // (4H,) b_ih + b_hh
  std::vector<float> h(B * K), hn(B * H), c(B * H), cn(B * H);  // (B, H) states
  std::vector<float> xp(T * B * 4 * HX);                 // (T, B, 4HX) x W_ih^T + bias
  std::vector<float> sums(B * 4 * N);                    // (B, 4, NB) a block's gate sums
  const int64_t nall = HX / N;
  std::vector<float> wf(nall * K * 4 * N), wi(nall * K * 4 * N);  // (blocks, K, 4, NB) panels
  srand(1);
  auto fill = [](std::vector<float>& v, float scale) {
    for (auto& e : v) e = scale * (static_cast<float>(rand()) / RAND_MAX - 0.5f);
  };
  fill(w_hh, 0.12f), fill(w_ih, 0.12f), fill(x, 2.0f), fill(bias, 0.2f), fill(h, 2.0f);
  fill(c, 2.0f);
  pack_forward<float, float>(wf.data(), w_hh.data(), H, K, 0, 4, 0, nall);
  pack_forward<float, float>(wi.data(), w_ih.data(), H, K, 0, 4, 0, nall);
  StepConst<float, float> sc{};
  sc.cell = Cell::lstm, sc.B = B, sc.H = H, sc.P = H, sc.I = K, sc.HX = HX;
  sc.wf = wf.data(), sc.wi = wi.data(), sc.xbias = bias.data();
  project<float, float>(sc, x.data(), T * B, xp.data(), 0, nall);
  int64_t t = 0;  // the step: rows of xp
  auto run = [&](int form) {
    if (form == 0) {
      for (int64_t jb = 0; jb < nblk; ++jb)
        panel_rows<float, 4>(h.data(), K, B, block<float>(wf.data(), jb, K, 4), K,
                             [&](int64_t b, const float* acc) {
                               std::copy(acc, acc + 4 * N, sums.data() + b * 4 * N);
                             });
    } else if (form == 1) {
      Step<float> s{};
      s.t = t, s.xp = xp.data() + t * B * 4 * HX, s.hp = h.data(), s.hn = hn.data();
      s.cp = c.data(), s.cn = cn.data();
      Kernels<cells::Lstm, float, float>::forward_phase(sc, s, 0, 0, nblk);
      t = (t + 1) % T;
    } else {
      project<float, float>(sc, x.data(), T * B, xp.data(), 0, nall);
    }
  };
  const double flops[3] = {2.0 * B * K * 4 * N * nblk, 2.0 * B * K * 4 * N * nblk,
                           2.0 * T * B * K * 4 * HX};
  const char* names[3] = {"product", "step", "projection"};
  std::vector<double> ts[3];
  for (int r = 0; r < rounds; ++r)
    for (int form = 0; form < 3; ++form) {
      const int inner = static_cast<int>(std::max(1.0, 2e7 / flops[form]));  // ~250 us a sample
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < inner; ++i) run(form);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ts[form].push_back(form == 2 ? dt / inner / T : dt / inner);  // the projection: per step
    }
  double med[3];
  for (int form = 0; form < 3; ++form) {
    std::sort(ts[form].begin(), ts[form].end());
    med[form] = ts[form][rounds / 2];
    const double f = form == 2 ? flops[2] / T : flops[form];
    std::printf("B=%ld H=%ld blocks=%ld %-10s median %8.2f us  (%5.1f GFLOP/s)\n", B, H, nblk,
                names[form], med[form] * 1e6, f / med[form] * 1e-9);
  }
  std::printf("step / product %.3f, epilogue (step - product) per row and block %.1f ns"
              " (sink %g)\n", med[1] / med[0], (med[1] - med[0]) / (B * nblk) * 1e9,
              static_cast<double>(hn[0] + cn[0] + sums[0]));
}
