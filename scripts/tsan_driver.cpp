// Every threaded path of the core on rnnkern's pool, for ThreadSanitizer (scripts/tsan.sh): the
// forward and backward of each cell form in float32, float64, bf16 and int8 (lengths or none),
// the LSTM variants (projection, peepholes, layer norm), a chunked backward, the cells' kept
// rows and their weight gradients (a short last block), on 2 and 3 threads; four callers at
// once and concurrently(); whole stacks; then forced take-overs, late joins and shrinks (the core's fault
// injection, as tests/test_threads.py).
// The Python tests cannot run under ThreadSanitizer here (the interpreter with libtsan
// preloaded crashes at start), so this drives the C++ API (cpp/include/rnnkern/rnnkern.hpp).
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>
#include <vector>
#include "rnnkern/digest.hpp"
#include "rnnkern/rnnkern.hpp"
using namespace rnnkern;

// n values uniform in (-s, s).
template <class F>
std::vector<F> rnd(int64_t n, std::mt19937& g, double s = 0.3) {
  std::uniform_real_distribution<double> u(-s, s);
  std::vector<F> v(n);
  for (auto& e : v) e = F(u(g));
  return v;
}

// A training forward and backward (int8: an inference forward) of random weights and input.
template <class F>
void train(Cell cell, Dims d, bool lengths, bool peep, bool proj, bool ln, Precision prec,
           std::mt19937& g) {
  const int64_t G = gates(cell), GH = G * d.H, P = proj ? d.P : d.H;
  // (G*H, I), (G*H, P), (G*H,), (G*H,), peepholes (3, H), projection (P, H)
  auto w_ih = rnd<F>(GH * d.I, g), w_hh = rnd<F>(GH * P, g), b_ih = rnd<F>(GH, g),
       b_hh = rnd<F>(GH, g), wp = rnd<F>(3 * d.H, g), wr = rnd<F>(P * d.H, g);
  // layer norm: gains and biases (2, 4H) of the gate sums, gain and shift (2, H) of c
  std::vector<F> lng(2 * 4 * d.H, F(1)), lnc(2 * d.H, F(0));
  for (int64_t i = 0; i < d.H; ++i) lnc[i] = F(1);
  Params<F> p{w_ih.data(), w_hh.data(), b_ih.data(), b_hh.data()};
  if (peep) p.w_peep = wp.data();
  if (proj) p.w_hr = wr.data(), p.P = P;
  if (ln) p.ln_gates = lng.data(), p.ln_cell = lnc.data();
  auto x = rnd<F>(d.T * d.B * d.I, g, 1.0);  // (T, B, I)
  std::vector<int64_t> len(d.B);  // (B,) lengths 1..T
  for (int64_t b = 0; b < d.B; ++b) len[b] = 1 + (b * 7) % d.T;
  const int64_t* L = lengths ? len.data() : nullptr;
  std::vector<F> y(d.T * d.B * P), hn(d.B * P), cn(d.B * d.H);  // (T, B, P), (B, P), (B, H)
  const bool training = prec != Precision::int8;
  CacheLayout cl = cache_layout(cell, d);
  std::vector<F> hs(cl.hs), cs(cl.cs), ga(cl.gates), aux(cl.aux),  // cache_layout's sizes
      lnb(ln ? d.T * d.B * ln_width(d.H) : 0);                       // (T, B, 9H + 3)
  Cache<F> c{hs.data(), cs.data(), ga.data(), aux.data(), ln ? lnb.data() : nullptr};
  forward<F>(cell, d, x.data(), nullptr, nullptr, p, L, y.data(), hn.data(),
             cell == Cell::lstm ? cn.data() : nullptr, training ? &c : nullptr, prec);
  if (!training) return;
  auto dy = rnd<F>(d.T * d.B * P, g, 1.0);  // (T, B, P)
  // the gradients, shaped as what they differentiate
  std::vector<F> dx(d.T * d.B * d.I), dh0(d.B * P), dc0(d.B * d.H), dwi(GH * d.I),
      dwh(GH * P), dbi(GH), dbh(GH), dwp(3 * d.H), dwr(P * d.H), dlg(8 * d.H), dlc(2 * d.H);
  Grads<F> gr{dx.data(), dh0.data(), cell == Cell::lstm ? dc0.data() : nullptr, dwi.data(),
              dwh.data(), dbi.data(), dbh.data()};
  if (peep) gr.dw_peep = dwp.data();
  if (proj) gr.dw_hr = dwr.data();
  if (ln) gr.dln_gates = dlg.data(), gr.dln_cell = dlc.data();
  backward<F>(cell, d, x.data(), p, L, c, dy.data(), nullptr, nullptr, gr, prec);
}

// `steps` one-step training calls with a pack that keep their rows (as rnnkern.torch's cells do),
// then their weight gradients over all of them, three times.
template <class F>
void kept_rows(Cell cell, int64_t I, int64_t H, int64_t B, int steps, std::mt19937& g) {
  const int64_t GH = gates(cell) * H;
  auto w_ih = rnd<F>(GH * I, g), w_hh = rnd<F>(GH * H, g), b_ih = rnd<F>(GH, g),  // (G*H, I),
       b_hh = rnd<F>(GH, g);  // (G*H, H), (G*H,), (G*H,)
  Params<F> p{w_ih.data(), w_hh.data(), b_ih.data(), b_hh.data()};
  Pack<F> pk(cell, I, H, p);
  GradRows<F> rows;
  Dims d{1, B, I, H};
  CacheLayout cl = cache_layout(cell, d);
  for (int s = 0; s < steps; ++s) {
    // x (1, B, I), h0 and c0 (B, H); outputs (B, H) and the step's cache (cache_layout)
    auto x = rnd<F>(B * I, g, 1.0), h0 = rnd<F>(B * H, g, 1.0), c0 = rnd<F>(B * H, g, 1.0);
    std::vector<F> y(B * H), hn(B * H), cn(B * H), hs(cl.hs), cs(cl.cs), ga(cl.gates),
        aux(cl.aux);
    Cache<F> c{hs.data(), cs.data(), ga.data(), aux.data()};
    const bool lstm = cell == Cell::lstm;
    forward<F>(pk, d, x.data(), h0.data(), lstm ? c0.data() : nullptr, nullptr, y.data(),
               hn.data(), lstm ? cn.data() : nullptr, &c);
    auto dh = rnd<F>(B * H, g, 1.0);
    std::vector<F> dh0(B * H), dc0(B * H);
    Grads<F> gr{nullptr, dh0.data(), lstm ? dc0.data() : nullptr, nullptr, nullptr, nullptr,
                nullptr};
    gr.rows = &rows;
    backward<F>(pk, d, x.data(), nullptr, c, nullptr, dh.data(), nullptr, gr);
  }
  std::vector<F> dwi(GH * I), dwh(GH * H), dbi(GH), dbh(GH);  // the weights' shapes
  for (int r = 0; r < 3; ++r)
    weight_gradients<F>(pk, rows, Grads<F>{nullptr, nullptr, nullptr, dwi.data(), dwh.data(),
                                           dbi.data(), dbh.data()});
}

// Digests of two ranges (1.2 MB and a partial block) in one team call, against each range's own
// call (other parts and streams, the same values); a mismatch aborts.
void digest_check(std::mt19937& g) {
  std::vector<uint32_t> a(300'000), b(1'001);  // (300000,), (1001,) random words
  for (auto& w : a) w = g();
  for (auto& w : b) w = g();
  const void* data[] = {a.data(), b.data()};
  const size_t bytes[] = {a.size() * 4, b.size() * 4 - 3};
  std::vector<uint64_t> da(digest_size(bytes[0])), db(digest_size(bytes[1]));
  std::vector<uint64_t> ea(da.size()), eb(db.size());
  uint64_t* team[] = {da.data(), db.data()};
  digests(2, data, bytes, team);
  for (int j = 0; j < 2; ++j) {
    uint64_t* alone[] = {j ? eb.data() : ea.data()};
    digests(1, &data[j], &bytes[j], alone);
  }
  if (da != ea || db != eb) {
    std::fprintf(stderr, "digest_check: digests differ\n");
    std::abort();
  }
}

// A whole stack (rnnkern::stack_forward / stack_backward), L layers x 2 directions with lengths
// and dropout masks: small sizes run the directions side by side (their copies inside the
// jobs), larger ones each direction with the team and the copies split over the threads.
template <class F>
void stack_check(Cell cell, int L, Dims d, std::mt19937& g) {
  const int D = 2, LD = L * D;
  const int64_t T = d.T, B = d.B, H = d.H, G = gates(cell), W = D * H, TBW = T * B * W;
  std::vector<std::vector<F>> w(4 * LD);  // per k: w_ih (G*H, F_l), w_hh (G*H, H), biases (G*H,)
  std::vector<std::unique_ptr<Pack<F>>> packs;
  std::vector<const Pack<F>*> pp;
  for (int k = 0; k < LD; ++k) {
    const int64_t in = k < D ? d.I : W;
    w[4 * k] = rnd<F>(G * H * in, g), w[4 * k + 1] = rnd<F>(G * H * H, g);
    w[4 * k + 2] = rnd<F>(G * H, g), w[4 * k + 3] = rnd<F>(G * H, g);
    Params<F> p{w[4 * k].data(), w[4 * k + 1].data(), w[4 * k + 2].data(), w[4 * k + 3].data()};
    packs.push_back(std::make_unique<Pack<F>>(cell, in, H, p));
    pp.push_back(packs.back().get());
  }
  auto x = rnd<F>(T * B * d.I, g, 1.0);  // (T, B, I)
  std::vector<int64_t> len(B);           // (B,)
  for (int64_t b = 0; b < B; ++b) len[b] = 1 + (b * 5) % T;
  std::vector<std::vector<F>> masks(L - 1, std::vector<F>(TBW, F(2)));  // (T, B, D*H) each
  std::vector<const F*> mp;
  for (auto& m : masks) m[0] = F(0), mp.push_back(m.data());
  const CacheLayout c0 = cache_layout(cell, Dims{T, B, d.I, H}), c1 = cache_layout(cell, Dims{T, B, W, H});
  std::vector<std::vector<F>> in(LD), bufs(4 * LD);  // inputs (T, B, F_l); caches
  std::vector<F*> ip(LD, nullptr);
  std::vector<Cache<F>> caches(LD);
  for (int k = 0; k < LD; ++k) {
    const CacheLayout& cl = k < D ? c0 : c1;
    if (k) in[k].resize(T * B * (k < D ? d.I : W)), ip[k] = in[k].data();
    bufs[4 * k].resize(cl.hs), bufs[4 * k + 1].resize(cl.cs);
    bufs[4 * k + 2].resize(cl.gates), bufs[4 * k + 3].resize(cl.aux);
    caches[k] = Cache<F>{bufs[4 * k].data(), cl.cs ? bufs[4 * k + 1].data() : nullptr,
                         cl.gates ? bufs[4 * k + 2].data() : nullptr,
                         cl.aux ? bufs[4 * k + 3].data() : nullptr};
  }
  const bool lstm = cell == Cell::lstm;
  std::vector<F> y(TBW), hn(LD * B * H), cn(LD * B * H);  // (T, B, D*H), (L*D, B, H) x 2
  StackForward<F> f{x.data(), nullptr, nullptr, len.data(), mp.data(), y.data(), hn.data(),
                    lstm ? cn.data() : nullptr, ip.data(), caches.data()};
  stack_forward<F>(pp.data(), L, D, T, B, f);
  f.inputs = nullptr, f.caches = nullptr;  // and an inference
  stack_forward<F>(pp.data(), L, D, T, B, f);
  std::vector<const F*> xs(LD);
  for (int k = 0; k < LD; ++k) xs[k] = k ? in[k].data() : x.data();
  auto dy = rnd<F>(TBW, g, 1.0);
  std::vector<F> dx(T * B * d.I), dh0(LD * B * H), dc0(LD * B * H), dws;  // dws: every k's
  std::vector<Grads<F>> gr(LD);
  int64_t n = 0;
  for (int k = 0; k < LD; ++k) n += G * H * ((k < D ? d.I : W) + H + 2);
  dws.resize(n);
  F* q = dws.data();
  for (int k = 0; k < LD; ++k) {
    const int64_t in_k = k < D ? d.I : W;
    gr[k] = Grads<F>{nullptr, nullptr, nullptr, q, q + G * H * in_k, q + G * H * (in_k + H),
                     q + G * H * (in_k + H + 1)};
    q += G * H * (in_k + H + 2);
  }
  StackBackward<F> b{xs.data(), len.data(), mp.data(), caches.data(), dy.data(), nullptr,
                     nullptr, dx.data(), dh0.data(), lstm ? dc0.data() : nullptr, gr.data()};
  stack_backward<F>(pp.data(), L, D, T, B, b);
}

int main() {
  std::mt19937 g(1);
  set_thread_runtime("rnnkern");
  set_num_threads(2);
  for (int rep = 0; rep < 2; ++rep) {
    const Dims d{24, 8, 32, 64};
    for (Cell cell : {Cell::rnn_tanh, Cell::lstm, Cell::gru, Cell::gru_rh})
      for (bool lengths : {false, true}) {
        train<float>(cell, d, lengths, false, false, false, Precision::native, g);
        train<double>(cell, d, lengths, false, false, false, Precision::native, g);
        train<float>(cell, d, lengths, false, false, false, Precision::bf16, g);
        train<float>(cell, d, lengths, false, false, false, Precision::int8, g);
      }
    Dims dp = d;
    dp.P = 32;
    for (bool peep : {false, true}) {
      train<float>(Cell::lstm, dp, true, peep, true, false, Precision::native, g);
      train<float>(Cell::lstm, dp, true, peep, true, false, Precision::int8, g);
      train<float>(Cell::lstm, d, true, peep, false, true, Precision::native, g);
      train<float>(Cell::lstm, dp, true, peep, true, true, Precision::native, g);
    }
    train<float>(Cell::lstm, Dims{40, 64, 32, 256}, true, false, false, false,
                 Precision::native, g);
    kept_rows<float>(Cell::lstm, 24, 24, 8, 69, g);
    kept_rows<float>(Cell::gru_rh, 24, 24, 8, 69, g);
    kept_rows<float>(Cell::lstm, 64, 256, 32, 9, g);
    digest_check(g);
    stack_check<float>(Cell::lstm, 2, Dims{12, 2, 8, 16}, g);
    stack_check<double>(Cell::gru, 3, Dims{12, 2, 8, 16}, g);
    stack_check<float>(Cell::lstm, 2, Dims{20, 16, 32, 128}, g);
    set_num_threads(rep == 0 ? 3 : 2);
  }
  // Callers at once: four threads (one holds the pool, the others run alone; the scratch
  // buffers, the kept rows' store and the packs are shared), and concurrently().
  std::vector<std::thread> callers;
  for (int i = 0; i < 4; ++i)
    callers.emplace_back([i] {
      std::mt19937 gi(100 + i);
      const Dims d{24, 8, 32, 64};
      train<float>(i % 2 ? Cell::gru : Cell::lstm, d, true, false, false, false,
                   i < 2 ? Precision::native : Precision::int8, gi);
      kept_rows<float>(Cell::lstm, 24, 24, 8, 69, gi);
      digest_check(gi);
    });
  for (auto& t : callers) t.join();
  concurrently(4, [](int i) {
    std::mt19937 gi(200 + i);
    train<double>(Cell::rnn_tanh, Dims{12, 2, 8, 16}, i % 2 == 1, false, false, false,
                  Precision::native, gi);
  });
  // Forced take-overs (a worker starting late), late joins and shrinks (a worker stalled at a
  // sync), as tests/test_threads.py forces them.
  set_num_threads(2);
  const int64_t delays[][3] = {{2'000'000, 0, 0}, {500'000, 0, 0}, {0, 50'000'000, 1},
                               {0, 50'000'000, 2}, {0, 50'000'000, 5}};
  for (const auto& dl : delays) {
    set_test_delays(dl[0], dl[1], static_cast<int>(dl[2]));
    const Dims d{24, 8, 32, 64};
    train<float>(Cell::lstm, Dims{40, 64, 32, 256}, true, false, false, false,
                 Precision::native, g);
    train<float>(Cell::gru, d, true, false, false, false, Precision::int8, g);
    train<float>(Cell::gru_rh, d, true, false, false, false, Precision::bf16, g);
    Dims dp = d;
    dp.P = 32;
    train<float>(Cell::lstm, dp, true, true, true, true, Precision::native, g);
    kept_rows<float>(Cell::lstm, 24, 24, 8, 69, g);
  }
  set_test_delays(0, 0, 0);
  std::printf("done: %s\n", [] {
    const ThreadStats s = thread_stats();
    static char b[160];
    std::snprintf(b, sizeof b, "calls %lld, taken over %lld, shrunk %lld, joined late %lld",
                  (long long)s.team_calls, (long long)s.taken_over, (long long)s.shrunk,
                  (long long)s.joined_late);
    return b;
  }());
}
