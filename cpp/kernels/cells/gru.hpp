// GRU, PyTorch's (linear before reset): gates r, z, n,
//   r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr), z likewise,
//   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)), h_t = (1 - z) n + z h_{t-1}.
// The cache's aux keeps hn = h W_hn^T + b_hn. Backward: dn = dh (1 - z) (1 - n^2),
// dr = dn hn r (1 - r), dz = dh (h_{t-1} - n) z (1 - z); what multiplies W_hh differs from the
// input side in the n block (dn * r), so it has its own rows (dgh); dh_{t-1} gets dh z.
#pragma once
#include "rnnkern/rnnkern.hpp"

namespace rnnkern {
namespace cells {
struct Gru {
  static constexpr Cell id = Cell::gru;
  static constexpr CellTraits traits{"gru", "gru", "r z n", "", 3, 3, 1, false, true,
                                     "h W_hn^T + b_hn", true, true};
};
}  // namespace cells

#ifdef RNNKERN_ISA
namespace RNNKERN_ISA {
namespace {
template <class F, class W>
struct Kernels<cells::Gru, F, W> {
  RNNKERN_FLATTEN static void forward_phase(const StepConst<F, W>& c, const Step<F>& s, int, int64_t jb0,
                            int64_t jb1) {
    const int64_t B = c.B, H = c.H, GH = 3 * H, HX = c.HX, GHX = 3 * HX;
    const Rows<F, W> h = operand_rows<F, W>(s.hp, H, B, H);  // h_{t-1} as the products take it
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      panel_rows<F, 3>(h, B, block<F>(c.wf, jb, H, 3), H, [&](int64_t b, const F* acc) {
        if (padded(c.lengths, b, s.t)) return freeze(s, H, b, j0, n);
        const F* xp = s.xp + b * GHX + j0;
        vec<F> r = vsigmoid(load(xp) + load(acc));
        vec<F> z = vsigmoid(load(xp + HX) + load(acc + NB<F>));
        vec<F> hn = load(acc + 2 * NB<F>);
        if (c.b_hn) hn += load(c.b_hn + j0, n);
        vec<F> nn = vtanh(load(xp + 2 * HX) + r * hn);
        vec<F> hp = load(s.hp + b * H + j0, n);
        put_h(s, H, b, j0, n, nn + z * (hp - nn));
        if (s.gates) {
          F* gp = s.gates + b * GH + j0;
          store(gp, r, n), store(gp + H, z, n), store(gp + 2 * H, nn, n);
          store(s.aux + b * H + j0, hn, n);
        }
      });
    });
  }

  RNNKERN_FLATTEN static void backward_phase(const StepConst<F, W>& c, const Step<F>& s, int, int64_t jb0,
                             int64_t jb1) {
    const int64_t B = c.B, H = c.H, GH = 3 * H, LD = c.LDG;
    const DhRows<F, W> dhp(s.dgh_next, LD, B, c.wb, GH, H, jb0, jb1);
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      dhp.rows(jb, rows_dh(c, s, j0, n, [&](int64_t b, vec<F> dh) {
        const F* gp = s.gates + b * GH + j0;
        vec<F> r = load(gp, n), z = load(gp + H, n), nn = load(gp + 2 * H, n);
        vec<F> hp = load(s.hp + b * H + j0, n), hn = load(s.aux + b * H + j0, n);
        vec<F> dn = dh * (F(1) - z) * (F(1) - nn * nn);
        vec<F> dr = dn * hn * r * (F(1) - r);
        vec<F> dz = dh * (hp - nn) * z * (F(1) - z);
        F* dg = s.dg + b * LD + j0;
        F* dgh = s.dgh + b * LD + j0;
        store(dg, dr, n), store(dg + H, dz, n), store(dg + 2 * H, dn, n);
        store(dgh, dr, n), store(dgh + H, dz, n), store(dgh + 2 * H, dn * r, n);
        store(s.dh + b * H + j0, dh * z, n);
      }));
    });
  }
};
}  // namespace
}  // namespace RNNKERN_ISA
#endif
}  // namespace rnnkern
