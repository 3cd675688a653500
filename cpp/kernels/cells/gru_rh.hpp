// GRU with the reset gate on h (ONNX's default, Keras reset_after=False): gates r, z, n,
//   n = tanh(x W_in^T + b_in + (r * h_{t-1}) W_hn^T + b_hn), h_t = (1 - z) n + z h_{t-1}.
// Two phases per step: r, z and aux = r * h_{t-1} from the product with W_hr, W_hz; then n from
// the product of aux with W_hn (panels of their own). Backward, phase 0: dz, dn from dh_t;
// phase 1: d(r * h) = dn W_hn gives dr = d(r*h) h_{t-1} r (1 - r) and dh_{t-1} += d(r*h) r.
#pragma once
#include "rnnkern/rnnkern.hpp"

namespace rnnkern {
namespace cells {
struct GruRh {
  static constexpr Cell id = Cell::gru_rh;
  static constexpr CellTraits traits{"gru_rh", "gru", "r z n", "", 3, 2, 2, false, true,
                                     "r * h_{t-1}", true, false};
};
}  // namespace cells

#ifdef RNNKERN_ISA
namespace RNNKERN_ISA {
namespace {
template <class F, class W>
struct Kernels<cells::GruRh, F, W> {
  RNNKERN_FLATTEN static void forward_phase(const StepConst<F, W>& c, const Step<F>& s, int phase, int64_t jb0,
                            int64_t jb1) {
    const int64_t B = c.B, H = c.H, GH = 3 * H, HX = c.HX, GHX = 3 * HX;
    // phase 0: h_{t-1}, phase 1: r * h_{t-1}, as the products take them
    const Rows<F, W> a = operand_rows<F, W>(phase == 0 ? s.hp : s.aux, H, B, H);
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      if (phase == 0) {  // r, z and r * h_{t-1}
        panel_rows<F, 2>(a, B, block<F>(c.wf, jb, H, 2), H, [&](int64_t b, const F* acc) {
          F* gp = s.gates + b * GH + j0;
          if (padded(c.lengths, b, s.t)) {
            zero(gp, n), zero(gp + H, n), zero(s.aux + b * H + j0, n);
            return;
          }
          const F* xp = s.xp + b * GHX + j0;
          vec<F> r = vsigmoid(load(xp) + load(acc));
          vec<F> z = vsigmoid(load(xp + HX) + load(acc + NB<F>));
          store(gp, r, n), store(gp + H, z, n);
          store(s.aux + b * H + j0, r * load(s.hp + b * H + j0, n), n);
        });
      } else {  // n = tanh(W_in x + b_in + W_hn (r * h) + b_hn), h_t
        panel_rows<F, 1>(a, B, block<F>(c.wf_n, jb, H, 1), H, [&](int64_t b, const F* acc) {
          if (padded(c.lengths, b, s.t)) return freeze(s, H, b, j0, n);
          const F* xp = s.xp + b * GHX + j0;
          F* gp = s.gates + b * GH + j0;
          vec<F> a = load(xp + 2 * HX) + load(acc);
          if (c.b_hn) a += load(c.b_hn + j0, n);
          vec<F> nn = vtanh(a);
          vec<F> z = load(gp + H, n), hp = load(s.hp + b * H + j0, n);
          store(gp + 2 * H, nn, n);
          put_h(s, H, b, j0, n, nn + z * (hp - nn));
        });
      }
    });
  }

  RNNKERN_FLATTEN static void backward_phase(const StepConst<F, W>& c, const Step<F>& s, int phase, int64_t jb0,
                             int64_t jb1) {
    const int64_t B = c.B, H = c.H, GH = 3 * H, LD = c.LDG, K = 2 * H;  // K: rows of r, z
    // phase 0's products (phase 1's is dn W_hn, below): none made in phase 1
    const DhRows<F, W> dhp(phase == 0 ? s.dgh_next : nullptr, LD, B, c.wb, K, H, jb0, jb1);
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      if (phase == 0) {  // dz, dn from dh_t
        dhp.rows(jb, rows_dh(c, s, j0, n, [&](int64_t b, vec<F> dh) {
          const F* gp = s.gates + b * GH + j0;
          vec<F> z = load(gp + H, n), nn = load(gp + 2 * H, n);
          vec<F> hp = load(s.hp + b * H + j0, n);
          F* dg = s.dg + b * LD + j0;
          store(dg + H, dh * (hp - nn) * z * (F(1) - z), n);
          store(dg + 2 * H, dh * (F(1) - z) * (F(1) - nn * nn), n);
          store(s.dh + b * H + j0, dh * z, n);
        }));
      } else {  // d(r * h) = dn W_hn: dr and the path through r * h
        panel_rows<F, 1>(s.dg + 2 * H, LD, B, c.wb_n + jb * H * NB<F>, H,
                         [&](int64_t b, const F* acc) {
                           if (padded(c.lengths, b, s.t)) return;
                           const F* gp = s.gates + b * GH + j0;
                           vec<F> r = load(gp, n), drh = load(acc);
                           vec<F> hp = load(s.hp + b * H + j0, n);
                           store(s.dg + b * LD + j0, drh * hp * r * (F(1) - r), n);
                           store(s.dh + b * H + j0, load(s.dh + b * H + j0, n) + drh * r, n);
                         });
      }
    });
  }
};
}  // namespace
}  // namespace RNNKERN_ISA
#endif
}  // namespace rnnkern
