// Vanilla RNN (Elman): h_t = act(x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), act tanh, relu or
// sigmoid; one gate block, nothing cached but h. Backward from the saved output h_t: da = dh *
// act'(a) with tanh' = 1 - h^2, relu' = (h > 0), sigmoid' = h (1 - h).
#pragma once
#include "rnnkern/rnnkern.hpp"

namespace rnnkern {
namespace cells {
enum class Act { tanh, relu, sigmoid };
template <Cell C, Act A>
struct Rnn {
  static constexpr Cell id = C;
  static constexpr Act act = A;
  static constexpr CellTraits traits{
      C == Cell::rnn_tanh ? "rnn_tanh" : C == Cell::rnn_relu ? "rnn_relu" : "rnn_sigmoid",
      "rnn", "h",
      A == Act::tanh ? "tanh" : A == Act::relu ? "relu" : "sigmoid",
      1, 1, 1, false, false, "", false, false};
};
using RnnTanh = Rnn<Cell::rnn_tanh, Act::tanh>;
using RnnRelu = Rnn<Cell::rnn_relu, Act::relu>;
using RnnSigmoid = Rnn<Cell::rnn_sigmoid, Act::sigmoid>;
}  // namespace cells

#ifdef RNNKERN_ISA
namespace RNNKERN_ISA {
namespace {
template <Cell C, cells::Act A, class F, class W>
struct Kernels<cells::Rnn<C, A>, F, W> {
  RNNKERN_FLATTEN static void forward_phase(const StepConst<F, W>& c, const Step<F>& s, int, int64_t jb0,
                            int64_t jb1) {
    const int64_t B = c.B, H = c.H;
    const Rows<F, W> h = operand_rows<F, W>(s.hp, H, B, H);  // h_{t-1} as the products take it
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      panel_rows<F, 1>(h, B, block<F>(c.wf, jb, H, 1), H, [&](int64_t b, const F* acc) {
        if (padded(c.lengths, b, s.t)) return freeze(s, H, b, j0, n);
        vec<F> a = load(s.xp + b * c.HX + j0) + load(acc);
        vec<F> h = A == cells::Act::tanh ? vtanh(a) : A == cells::Act::relu ? vrelu(a) : vsigmoid(a);
        put_h(s, H, b, j0, n, h);
      });
    });
  }

  RNNKERN_FLATTEN static void backward_phase(const StepConst<F, W>& c, const Step<F>& s, int, int64_t jb0,
                             int64_t jb1) {
    const int64_t B = c.B, H = c.H, LD = c.LDG;
    const DhRows<F, W> dhp(s.dgh_next, LD, B, c.wb, H, H, jb0, jb1);
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      dhp.rows(jb, rows_dh(c, s, j0, n, [&](int64_t b, vec<F> dh) {
        vec<F> h = load(s.hn + b * H + j0, n);
        vec<F> d = A == cells::Act::tanh   ? dh * (F(1) - h * h)
                   : A == cells::Act::relu ? (h > 0 ? dh : vec<F>{})
                                           : dh * h * (F(1) - h);
        store(s.dg + b * LD + j0, d, n);
        zero(s.dh + b * H + j0, n);
      }));
    });
  }
};
}  // namespace
}  // namespace RNNKERN_ISA
#endif
}  // namespace rnnkern
