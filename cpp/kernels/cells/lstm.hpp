// LSTM (PyTorch's): gates i, f, g, o of a = x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,
//   i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g), c_t = f c_{t-1} + i g, h_t = o tanh(c_t).
// With peepholes p (3, H) (c.peep): a_i += p_i c_{t-1}, a_f += p_f c_{t-1}, a_o += p_o c_t.
// With a projection W_hr (P, H) (c.wr, PyTorch's proj_size): m_t = o tanh(c_t) goes to s.aux
// and a second phase makes h_t = W_hr m_t (P units; h_{t-1} multiplies W_hh (4H, P)).
// Backward from the cached gates and c: with dh the gradient reaching h_t and dc the one
// reaching c_t from step t+1, da_o = dh tanh(c_t) o (1 - o), dc += dh o (1 - tanh(c_t)^2)
// (+ da_o p_o); da_i = dc g i (1 - i), da_f = dc c_{t-1} f (1 - f), da_g = dc i (1 - g^2);
// dc_{t-1} = dc f (+ da_i p_i + da_f p_f); dp += (da_i c_{t-1}, da_f c_{t-1}, da_o c_t), summed
// over a step's rows in registers, then into c.dpeep by the hidden block's owner. With a
// projection, phase 0 gathers the whole dh_t (P) into s.dht and phase 1 takes dm_t = dh_t W_hr
// in place of dh (docs/lstm_variants.md).
#pragma once
#include "rnnkern/rnnkern.hpp"

namespace rnnkern {
namespace cells {
struct Lstm {
  static constexpr Cell id = Cell::lstm;
  static constexpr CellTraits traits{"lstm", "lstm", "i f g o", "", 4, 4, 1, true, true, "",
                                     false, false, true, true};
};
}  // namespace cells

#ifdef RNNKERN_ISA  // the kernels, in a kernels_<isa>.cpp (kernels_impl.hpp)
namespace RNNKERN_ISA {
namespace {
template <class F, class W>
struct Kernels<cells::Lstm, F, W> {
  // Each variant's phases are instantiated apart, so the plain LSTM's epilogue has no peephole
  // or projection term at all. With a projection, forward phase 1 and backward phase 0 run over
  // blocks of P (the driver passes those).
  [[gnu::flatten]] static void forward_phase(const StepConst<F, W>& c, const Step<F>& s,
                                             int phase, int64_t jb0, int64_t jb1) {
    if (phase == 1) {
      if constexpr (!is_s8<W>) project_h(c, s, jb0, jb1);  // int8 packs have no projection
      return;
    }
    variant(c.peep, c.wr, [&](auto peep, auto proj) {
      forward<decltype(peep)::value, decltype(proj)::value>(c, s, jb0, jb1);
    });
  }
  [[gnu::flatten]] static void backward_phase(const StepConst<F, W>& c, const Step<F>& s,
                                              int phase, int64_t jb0, int64_t jb1) {
    if (c.wrb && phase == 0) return gather_dh(c, s, jb0, jb1);
    variant(c.peep, c.wrb, [&](auto peep, auto proj) {
      backward<decltype(peep)::value, decltype(proj)::value>(c, s, jb0, jb1);
    });
  }

  // fn(PEEP, PROJ) with the runtime flags as std::bool_constant: one instantiation per variant.
  template <class Fn>
  static void variant(bool peep, bool proj, Fn&& fn) {
    using T = std::true_type;
    using N = std::false_type;
    if (proj) peep ? fn(T{}, T{}) : fn(N{}, T{});
    else peep ? fn(T{}, N{}) : fn(N{}, N{});
  }

  template <bool PEEP, bool PROJ>
  static void forward(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0, int64_t jb1) {
    const int64_t B = c.B, H = c.H, P = c.P, GH = 4 * H, HX = c.HX, GHX = 4 * HX;
    const Rows<F, W> h = operand_rows<F, W>(s.hp, P, B, P);  // h_{t-1} (B, P) as products take it
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      vec<F> p_i{}, p_f{}, p_o{};
      if constexpr (PEEP)
        p_i = load(c.peep + j0, n), p_f = load(c.peep + H + j0, n),
        p_o = load(c.peep + 2 * H + j0, n);
      panel_rows<F, 4>(h, B, block<F>(c.wf, jb, P, 4), P, [&](int64_t b, const F* acc) {
        if (padded(c.lengths, b, s.t)) {
          if constexpr (!PROJ) return freeze(s, H, b, j0, n);
          std::memcpy(s.cn + b * H + j0, s.cp + b * H + j0, n * sizeof(F));
          return zero(s.aux + b * H + j0, n);  // m_t: nothing for dW_hr (phase 1 freezes h)
        }
        const F* xp = s.xp + b * GHX + j0;
        vec<F> cp = load(s.cp + b * H + j0, n);
        vec<F> a_i = load(xp) + load(acc), a_f = load(xp + HX) + load(acc + NB<F>);
        if constexpr (PEEP) a_i += p_i * cp, a_f += p_f * cp;
        vec<F> i = vsigmoid(a_i), f = vsigmoid(a_f);
        vec<F> g = vtanh(load(xp + 2 * HX) + load(acc + 2 * NB<F>));
        vec<F> cn = f * cp + i * g;
        vec<F> a_o = load(xp + 3 * HX) + load(acc + 3 * NB<F>);
        if constexpr (PEEP) a_o += p_o * cn;
        vec<F> o = vsigmoid(a_o);
        store(s.cn + b * H + j0, cn, n);
        if constexpr (PROJ) store(s.aux + b * H + j0, o * vtanh(cn), n);
        else put_h(s, H, b, j0, n, o * vtanh(cn));
        if (s.gates) {
          F* gp = s.gates + b * GH + j0;
          store(gp, i, n), store(gp + H, f, n), store(gp + 2 * H, g, n), store(gp + 3 * H, o, n);
        }
      });
    });
  }

  // Forward phase 1: h_t = W_hr m_t for blocks [jb0, jb1) of the P units.
  static void project_h(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0, int64_t jb1) {
    const int64_t B = c.B, H = c.H, P = c.P;
    for_hidden_blocks<F>(P, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      panel_rows<F, 1>(s.aux, H, B, c.wr + jb * H * NB<F>, H, [&](int64_t b, const F* acc) {
        if (!padded(c.lengths, b, s.t)) return put_h(s, P, b, j0, n, load(acc));
        std::memcpy(s.hn + b * P + j0, s.hp + b * P + j0, n * sizeof(F));
        if (s.y) zero(s.y + b * P + j0, n);
      });
    });
  }

  // Backward phase 0 with a projection, blocks [jb0, jb1) of the P units: the whole dh_t into
  // s.dht (padded rows: 0, and dh passes on to h_{t-1} in s.dh).
  static void gather_dh(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0, int64_t jb1) {
    const int64_t B = c.B, GH = 4 * c.H, P = c.P;
    for_hidden_blocks<F>(P, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      panel_rows<F, 1>(s.dgh_next, c.LDG, B, c.wb + jb * GH * NB<F>, GH,
                       [&](int64_t b, const F* acc) {
                         const bool valid = !padded(c.lengths, b, s.t);
                         vec<F> dh = grad_h(c, s, b, j0, n, acc, valid);
                         store(s.dht + b * P + j0, valid ? dh : vec<F>{}, n);
                         store(s.dh + b * P + j0, valid ? vec<F>{} : dh, n);
                       });
    });
  }

  template <bool PEEP, bool PROJ>
  static void backward(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0, int64_t jb1) {
    const int64_t B = c.B, H = c.H, GH = 4 * H, LD = c.LDG;
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      vec<F> p_i{}, p_f{}, p_o{};
      vec<F> dp_i{}, dp_f{}, dp_o{};  // this step's dw_peep of the block, over its rows
      if constexpr (PEEP)
        p_i = load(c.peep + j0, n), p_f = load(c.peep + H + j0, n),
        p_o = load(c.peep + 2 * H + j0, n);
      // dh: the gradient reaching o tanh(c_t) (dm_t with a projection)
      auto cell = [&](int64_t b, vec<F> dh) {
        const F* gp = s.gates + b * GH + j0;
        vec<F> i = load(gp, n), f = load(gp + H, n), g = load(gp + 2 * H, n),
               og = load(gp + 3 * H, n);
        vec<F> ct = load(s.cn + b * H + j0, n), tc = vtanh(ct), cp = load(s.cp + b * H + j0, n);
        vec<F> da_o = dh * tc * og * (F(1) - og);
        vec<F> dc = load(s.dc + b * H + j0, n) + dh * og * (F(1) - tc * tc);
        if constexpr (PEEP) dc += da_o * p_o;
        vec<F> da_i = dc * g * i * (F(1) - i), da_f = dc * cp * f * (F(1) - f);
        F* dg = s.dg + b * LD + j0;
        store(dg, da_i, n);
        store(dg + H, da_f, n);
        store(dg + 2 * H, dc * i * (F(1) - g * g), n);
        store(dg + 3 * H, da_o, n);
        vec<F> dc_prev = dc * f;
        if constexpr (PEEP) {
          dc_prev += da_i * p_i + da_f * p_f;
          dp_i += da_i * cp, dp_f += da_f * cp, dp_o += da_o * ct;
        }
        store(s.dc + b * H + j0, dc_prev, n);
      };
      if constexpr (PROJ) {  // dm_t = dh_t W_hr; padded rows: zero dgates, dc passes on
        panel_rows<F, 1>(s.dht, c.P, B, c.wrb + jb * c.P * NB<F>, c.P,
                         [&](int64_t b, const F* acc) {
                           if (!padded(c.lengths, b, s.t)) return cell(b, load(acc));
                           for (int64_t q = 0; q < 4; ++q) zero(s.dg + b * LD + q * H + j0, n);
                         });
      } else {
        panel_rows<F, 1>(s.dgh_next, LD, B, c.wb + jb * GH * NB<F>, GH,
                         rows_dh(c, s, j0, n, [&](int64_t b, vec<F> dh) {
                           cell(b, dh);
                           zero(s.dh + b * H + j0, n);
                         }));
      }
      if constexpr (PEEP) {  // this block's columns: only its owner writes them
        F* dp = c.dpeep + j0;
        store(dp, load(dp, n) + dp_i, n);
        store(dp + H, load(dp + H, n) + dp_f, n);
        store(dp + 2 * H, load(dp + 2 * H, n) + dp_o, n);
      }
    });
  }
};
}  // namespace
}  // namespace RNNKERN_ISA
#endif
}  // namespace rnnkern
