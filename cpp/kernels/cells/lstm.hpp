// LSTM (PyTorch's): gates i, f, g, o of a = x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,
//   i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g), c_t = f c_{t-1} + i g, h_t = o tanh(c_t).
// Backward from the cached gates and c: with dh the gradient reaching h_t and dc the one
// reaching c_t from step t+1, dc += dh o (1 - tanh(c_t)^2); da_i = dc g i (1 - i),
// da_f = dc c_{t-1} f (1 - f), da_g = dc i (1 - g^2), da_o = dh tanh(c_t) o (1 - o);
// dc_{t-1} = dc f.
#pragma once
#include "rnnkern/rnnkern.hpp"

namespace rnnkern {
namespace cells {
struct Lstm {
  static constexpr Cell id = Cell::lstm;
  static constexpr CellTraits traits{"lstm", "lstm", "i f g o", "", 4, 4, 1, true, true, "",
                                     false, false};
};
}  // namespace cells

#ifdef RNNKERN_ISA  // the kernels, in a kernels_<isa>.cpp (kernels_impl.hpp)
namespace RNNKERN_ISA {
namespace {
template <class F, class W>
struct Kernels<cells::Lstm, F, W> {
  [[gnu::flatten]] static void forward_phase(const StepConst<F, W>& c, const Step<F>& s, int, int64_t jb0,
                            int64_t jb1) {
    const int64_t B = c.B, H = c.H, GH = 4 * H, HX = c.HX, GHX = 4 * HX;
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      panel_rows<F, 4>(s.hp, H, B, c.wf + jb * H * 4 * NB<F>, H, [&](int64_t b, const F* acc) {
        if (padded(c.lengths, b, s.t)) return freeze(s, H, b, j0, n);
        const F* xp = s.xp + b * GHX + j0;
        vec<F> i = vsigmoid(load(xp) + load(acc));
        vec<F> f = vsigmoid(load(xp + HX) + load(acc + NB<F>));
        vec<F> g = vtanh(load(xp + 2 * HX) + load(acc + 2 * NB<F>));
        vec<F> o = vsigmoid(load(xp + 3 * HX) + load(acc + 3 * NB<F>));
        vec<F> cn = f * load(s.cp + b * H + j0, n) + i * g;
        store(s.cn + b * H + j0, cn, n);
        put_h(s, H, b, j0, n, o * vtanh(cn));
        if (s.gates) {
          F* gp = s.gates + b * GH + j0;
          store(gp, i, n), store(gp + H, f, n), store(gp + 2 * H, g, n), store(gp + 3 * H, o, n);
        }
      });
    });
  }

  [[gnu::flatten]] static void backward_phase(const StepConst<F, W>& c, const Step<F>& s, int, int64_t jb0,
                             int64_t jb1) {
    const int64_t B = c.B, H = c.H, GH = 4 * H, LD = c.LDG;
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      const W* wb = c.wb + jb * GH * NB<F>;
      panel_rows<F, 1>(s.dgh_next, LD, B, wb, GH, rows_dh(c, s, j0, n, [&](int64_t b, vec<F> dh) {
        const F* gp = s.gates + b * GH + j0;
        vec<F> i = load(gp, n), f = load(gp + H, n), g = load(gp + 2 * H, n),
               og = load(gp + 3 * H, n);
        vec<F> ct = load(s.cn + b * H + j0, n), tc = vtanh(ct);
        vec<F> dc = load(s.dc + b * H + j0, n) + dh * og * (F(1) - tc * tc);
        F* dg = s.dg + b * LD + j0;
        store(dg, dc * g * i * (F(1) - i), n);
        store(dg + H, dc * load(s.cp + b * H + j0, n) * f * (F(1) - f), n);
        store(dg + 2 * H, dc * i * (F(1) - g * g), n);
        store(dg + 3 * H, dh * tc * og * (F(1) - og), n);
        store(s.dc + b * H + j0, dc * f, n);
        zero(s.dh + b * H + j0, n);
      }));
    });
  }
};
}  // namespace
}  // namespace RNNKERN_ISA
#endif
}  // namespace rnnkern
