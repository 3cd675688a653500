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
// Layer-normalized (c.ln_gates): two phases per step, the first over hidden blocks, the second
// over whole rows (the driver passes rows [b0, b1) for it). Forward: 0 the product W_hh h_{t-1}
// into c.ln_z; 1 a = N(x W_ih^T) g_0 + N(W_hh h) g_1 + b, the gates, c_t, h_t = o tanh(N(c_t)
// g_c + s_c). Backward: 0 dh_t and, from it, da_o and dN(c_t); 1 dc_t through N(c_t), da_i,
// da_f, da_g, dc_{t-1}, then dL/d(W_ih x) and dL/d(W_hh h) through the two norms into s.dg and
// s.dgh. With a projection too, three: forward phase 1 puts m_t = o tanh(N(c_t) g_c + s_c) in
// s.aux and phase 2 makes h_t = W_hr m_t (blocks of P); backward phase 0 gathers dh_t (blocks
// of P), phase 1 takes dm_t = dh_t W_hr in place of dh, phase 2 is the rows' phase. A row's
// statistics (over 4H or H) are computed whole by the thread that has the row, so the bits do
// not depend on the thread count. The gradients summed over rows are summed by each hidden
// block's owner: the cell norm's in the block phase (ln_dh), those over da (gate gains,
// biases, peepholes) in the next step's block phase (ln_sums) and, for step 0, in
// backward_finish after the last step.
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
  RNNKERN_FLATTEN static void forward_phase(const StepConst<F, W>& c, const Step<F>& s,
                                            int phase, int64_t jb0, int64_t jb1) {
    if (c.ln_gates) {
      if (phase == 0) return ln_product(c, s, jb0, jb1);
      if (phase == 2) return project_h(c, s, jb0, jb1);
      return variant(c.peep, c.wr, [&](auto peep, auto proj) {
        ln_rows<decltype(peep)::value, decltype(proj)::value>(c, s, jb0, jb1);
      });
    }
    if (phase == 1) return project_h(c, s, jb0, jb1);
    variant(c.peep, c.wr, [&](auto peep, auto proj) {
      forward<decltype(peep)::value, decltype(proj)::value>(c, s, jb0, jb1);
    });
  }
  RNNKERN_FLATTEN static void backward_phase(const StepConst<F, W>& c, const Step<F>& s,
                                             int phase, int64_t jb0, int64_t jb1) {
    if (c.ln_gates) {
      if (c.wrb && phase == 0) return gather_dh(c, s, jb0, jb1);
      if (phase == (c.wrb ? 1 : 0)) return c.wrb ? ln_dh<true>(c, s, jb0, jb1)
                                                  : ln_dh<false>(c, s, jb0, jb1);
      return c.peep ? ln_back_rows<true>(c, s, jb0, jb1) : ln_back_rows<false>(c, s, jb0, jb1);
    }
    if (c.wrb && phase == 0) return gather_dh(c, s, jb0, jb1);
    variant(c.peep, c.wrb, [&](auto peep, auto proj) {
      backward<decltype(peep)::value, decltype(proj)::value>(c, s, jb0, jb1);
    });
  }

  // Layer norm: step 0's sums over da (the gate gains', biases', peepholes'), which phase 0 of
  // each step adds for the step after it.
  static void backward_finish(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0,
                              int64_t jb1) {
    if (c.ln_gates)
      for_hidden_blocks<F>(c.H, jb0, jb1, [&](int64_t, int64_t j0, int64_t n) {
        ln_sums(c, s.t, s.ln, s.cp, s.cn, j0, n);
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

  // A padded row's block [j0, j0 + n) in a cell phase: h and c stay; with a projection c stays
  // and m_t is 0 (nothing for dW_hr; the projection's phase keeps h).
  template <bool PROJ>
  static void freeze_block(const Step<F>& s, int64_t H, int64_t b, int64_t j0, int64_t n) {
    if constexpr (PROJ) {
      std::memcpy(s.cn + b * H + j0, s.cp + b * H + j0, n * sizeof(F));
      zero(s.aux + b * H + j0, n);
    } else {
      freeze(s, H, b, j0, n);
    }
  }
  // m = o tanh(.) of a row's block: h_t (and y_t), or with a projection m_t into s.aux.
  template <bool PROJ>
  static void put_m(const Step<F>& s, int64_t H, int64_t b, int64_t j0, int64_t n, vec<F> m) {
    if constexpr (PROJ) store(s.aux + b * H + j0, m, n);
    else put_h(s, H, b, j0, n, m);
  }
  // With a projection, the backward's rows of hidden block jb: body(b, dm) with dm_t = dh_t W_hr
  // (dh_t gathered in s.dht); padded rows get zero dgates (both buffers) and dc passes on.
  template <class Body>
  static void rows_dm(const StepConst<F, W>& c, const Step<F>& s, int64_t jb, int64_t j0,
                      int64_t n, Body&& body) {
    panel_rows<F, 1>(s.dht, c.P, c.B, c.wrb + jb * c.P * NB<F>, c.P, [&](int64_t b, const F* acc) {
      if (!padded(c.lengths, b, s.t)) return body(b, load(acc));
      for (int64_t q = 0; q < 4; ++q) {
        zero(s.dg + b * c.LDG + q * c.H + j0, n);
        if (s.dgh != s.dg) zero(s.dgh + b * c.LDG + q * c.H + j0, n);
      }
    });
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
        if (padded(c.lengths, b, s.t)) return freeze_block<PROJ>(s, H, b, j0, n);
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
        put_m<PROJ>(s, H, b, j0, n, o * vtanh(cn));
        if (s.gates) {
          F* gp = s.gates + b * GH + j0;
          store(gp, i, n), store(gp + H, f, n), store(gp + 2 * H, g, n), store(gp + 3 * H, o, n);
        }
      });
    });
  }

  // ---- layer normalization

  static constexpr F LN_EPS = F(1e-5);  // as rnnkern.reference and torch.nn.LayerNorm
  // Offsets in a cache row (ln_width(H)): N(W_ih x) (4H), N(W_hh h) (4H), N(c_t) (H), then the
  // rstd of the three.
  static int64_t at_zhh(int64_t H) { return 4 * H; }
  static int64_t at_n(int64_t H) { return 8 * H; }
  static int64_t at_rstd(int64_t H) { return 9 * H; }
  static int64_t nblocks(int64_t H) { return (H + NB<F> - 1) / NB<F>; }

  // The sum of fn(k, lanes) over k = v * stride + j for v < segs, j < n by vectors (fn's lanes
  // past `lanes` are masked off), in an order fixed by the shape: four accumulators, each
  // vector of a segment's groups of four into its own (four add chains, not one: a single
  // chain waited on the add's latency), the rest into the first.
  template <class Fn>
  static F row_sum(int64_t segs, int64_t n, int64_t stride, Fn&& fn) {
    constexpr int64_t L = NB<F>;
    vec<F> idx{}, a0{}, a1{}, a2{}, a3{};
    for (int64_t l = 0; l < L; ++l) idx[l] = F(l);
    for (int64_t v = 0; v < segs; ++v) {
      const int64_t k = v * stride;
      int64_t j = 0;
      for (; j + 4 * L <= n; j += 4 * L)
        a0 += fn(k + j, L), a1 += fn(k + j + L, L), a2 += fn(k + j + 2 * L, L),
            a3 += fn(k + j + 3 * L, L);
      for (; j < n; j += L) {
        const int64_t m = imin(L, n - j);
        const vec<F> x = fn(k + j, m);
        a0 += m == L ? x : (idx < F(m) ? x : vec<F>{});
      }
    }
    const vec<F> acc = (a0 + a1) + (a2 + a3);
    F sum = 0;
    for (int64_t l = 0; l < L; ++l) sum += acc[l];
    return sum;
  }
  // mean and 1 / sqrt(var + eps) of the segs * n values of z (segments stride apart).
  static void stats(const F* z, int64_t segs, int64_t n, int64_t stride, F* mean, F* rstd) {
    const F N = F(segs * n);
    const F mu = row_sum(segs, n, stride, [&](int64_t k, int64_t m) { return load(z + k, m); }) / N;
    const F var = row_sum(segs, n, stride, [&](int64_t k, int64_t m) {
                    const vec<F> d = load(z + k, m) - mu;
                    return d * d;
                  }) / N;
    *mean = mu, *rstd = F(1) / std::sqrt(var + LN_EPS);
  }
  // Forward phase 0: W_hh h_{t-1} (B, 4H) into c.ln_z, for hidden blocks [jb0, jb1).
  static void ln_product(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0, int64_t jb1) {
    const int64_t B = c.B, H = c.H, P = c.P, GH = 4 * H;
    const Rows<F, W> h = operand_rows<F, W>(s.hp, P, B, P);  // h_{t-1} (B, P)
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      panel_rows<F, 4>(h, B, block<F>(c.wf, jb, P, 4), P, [&](int64_t b, const F* acc) {
        for (int64_t v = 0; v < 4; ++v) store(c.ln_z + b * GH + v * H + j0, load(acc + v * NB<F>), n);
      });
    });
  }

  // Forward phase 1 for whole rows [b0, b1) (rows, not hidden blocks, are this phase's share
  // of a thread: a row's statistics need all its columns, so each row's are computed once and
  // c_t goes on to h_t with no sync between): the gates and c_t from the normalized sums, then
  // h_t = o tanh(N(c_t) g_c + s_c) (with a projection, that is m_t, into s.aux).
  template <bool PEEP, bool PROJ>
  static void ln_rows(const StepConst<F, W>& c, const Step<F>& s, int64_t b0, int64_t b1) {
    const int64_t H = c.H, GH = 4 * H, HX = c.HX, GHX = 4 * HX, LW = ln_width(H), nb = nblocks(H);
    for (int64_t b = b0; b < b1; ++b) {
      if (padded(c.lengths, b, s.t)) {
        freeze_block<PROJ>(s, H, b, 0, H);
        continue;
      }
      const F *xp = s.xp + b * GHX, *z = c.ln_z + b * GH, *cp = s.cp + b * H;
      F r[4];  // mean and rstd of x W_ih^T, of W_hh h_{t-1}
      stats(xp, 4, H, HX, r, r + 1);
      stats(z, 4, H, H, r + 2, r + 3);
      F *ln = s.ln ? s.ln + b * LW : nullptr, *gp = s.gates + b * GH, *cn = s.cn + b * H;
      for_hidden_blocks<F>(H, 0, nb, [&](int64_t, int64_t j0, int64_t n) {
        vec<F> a[4];
        for (int64_t v = 0; v < 4; ++v) {
          const int64_t k = v * H + j0;
          const vec<F> zi = (load(xp + v * HX + j0, n) - r[0]) * r[1];
          const vec<F> zh = (load(z + k, n) - r[2]) * r[3];
          a[v] = zi * load(c.ln_gates + k, n) + zh * load(c.ln_gates + GH + k, n) +
                 load(c.ln_bias + k, n);
          if (ln) store(ln + k, zi, n), store(ln + at_zhh(H) + k, zh, n);
        }
        const vec<F> cpv = load(cp + j0, n);
        if constexpr (PEEP)
          a[0] += load(c.peep + j0, n) * cpv, a[1] += load(c.peep + H + j0, n) * cpv;
        const vec<F> i = vsigmoid(a[0]), f = vsigmoid(a[1]), g = vtanh(a[2]);
        const vec<F> cnv = f * cpv + i * g;
        if constexpr (PEEP) a[3] += load(c.peep + 2 * H + j0, n) * cnv;
        store(cn + j0, cnv, n);
        store(gp + j0, i, n), store(gp + H + j0, f, n), store(gp + 2 * H + j0, g, n);
        store(gp + 3 * H + j0, vsigmoid(a[3]), n);
      });
      F mc, rc;  // mean and rstd of c_t
      stats(cn, 1, H, H, &mc, &rc);
      for_hidden_blocks<F>(H, 0, nb, [&](int64_t, int64_t j0, int64_t n) {
        const vec<F> nh = (load(cn + j0, n) - mc) * rc;
        const vec<F> u = nh * load(c.ln_cell + j0, n) + load(c.ln_cell + H + j0, n);
        put_m<PROJ>(s, H, b, j0, n, load(gp + 3 * H + j0, n) * vtanh(u));
        if (ln) store(ln + at_n(H) + j0, nh, n);
      });
      if (ln) ln[at_rstd(H)] = r[1], ln[at_rstd(H) + 1] = r[3], ln[at_rstd(H) + 2] = rc;
    }
  }

  // Adds acc (n lanes) to dst's.
  static void add_to(F* dst, vec<F> acc, int64_t n) { store(dst, load(dst, n) + acc, n); }

  // The sums over step u's rows (its cache row ln, c_{u-1} cp, c_u cn, its dL/da in c.ln_da)
  // by the owner of hidden block [j0, j0 + n): the gradients of the gate gains, the biases (da)
  // and the peepholes. Backward phase 0 does those of step t+1 (phase 1 works on rows), the
  // flush (phase 2, after the last step) those of step 0.
  static void ln_sums(const StepConst<F, W>& c, int64_t u, const F* ln, const F* cp,
                      const F* cn, int64_t j0, int64_t n) {
    const int64_t B = c.B, H = c.H, GH = 4 * H, LW = ln_width(H);
    for (int64_t v = 0; v < 4; ++v) {
      const int64_t k = v * H + j0;
      vec<F> dg0{}, dg1{}, db{};  // over rows
      for (int64_t b = 0; b < B; ++b) {
        if (padded(c.lengths, b, u)) continue;
        const vec<F> da = load(c.ln_da + b * GH + k, n);
        dg0 += da * load(ln + b * LW + k, n), dg1 += da * load(ln + b * LW + at_zhh(H) + k, n);
        db += da;
      }
      add_to(c.dln_gates + k, dg0, n);
      add_to(c.dln_gates + GH + k, dg1, n);
      if (c.dbias) add_to(c.dbias + k, db, n);
    }
    if (!c.peep) return;
    vec<F> dp_i{}, dp_f{}, dp_o{};  // over rows
    for (int64_t b = 0; b < B; ++b) {
      if (padded(c.lengths, b, u)) continue;
      const F* da = c.ln_da + b * GH + j0;
      const vec<F> cpv = load(cp + b * H + j0, n);
      dp_i += load(da, n) * cpv, dp_f += load(da + H, n) * cpv;
      dp_o += load(da + 3 * H, n) * load(cn + b * H + j0, n);
    }
    add_to(c.dpeep + j0, dp_i, n), add_to(c.dpeep + H + j0, dp_f, n);
    add_to(c.dpeep + 2 * H + j0, dp_o, n);
  }

  // Backward phase 0 (with a projection, 1): step t+1's sums (ln_sums), then dh_t (as the plain
  // LSTM's; with a projection dm_t = dh_t W_hr), da_o into c.ln_da and dN(c_t) * g_c into
  // c.ln_dn; dln_cell.
  template <bool PROJ>
  static void ln_dh(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0, int64_t jb1) {
    const int64_t B = c.B, H = c.H, GH = 4 * H, LW = ln_width(H), LD = c.LDG;
    const DhRows<F, W> dhp(PROJ ? nullptr : s.dgh_next, LD, B, c.wb, GH, H, jb0, jb1);
    for_hidden_blocks<F>(H, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      if (s.dgh_next) ln_sums(c, s.t + 1, s.ln + B * LW, s.cn, s.cn + B * H, j0, n);
      const vec<F> gc = load(c.ln_cell + j0, n), sc = load(c.ln_cell + H + j0, n);
      vec<F> dgain{}, dshift{};  // this step's dln_cell of the block, over its rows
      // dh: the gradient reaching m_t = o tanh(N(c_t) g_c + s_c)
      auto cell = [&](int64_t b, vec<F> dh) {
        const vec<F> o = load(s.gates + b * GH + 3 * H + j0, n);
        const vec<F> nh = load(s.ln + b * LW + at_n(H) + j0, n);
        const vec<F> tn = vtanh(nh * gc + sc);
        const vec<F> dn = dh * o * (F(1) - tn * tn);
        store(c.ln_da + b * GH + 3 * H + j0, dh * tn * o * (F(1) - o), n);
        store(c.ln_dn + b * H + j0, dn * gc, n);
        dgain += dn * nh, dshift += dn;
      };
      if constexpr (PROJ) {
        rows_dm(c, s, jb, j0, n, cell);
      } else {
        dhp.rows(jb, rows_dh(c, s, j0, n, [&](int64_t b, vec<F> dh) {
                           cell(b, dh);
                           zero(s.dh + b * H + j0, n);
                         }));
      }
      add_to(c.dln_cell + j0, dgain, n);
      add_to(c.dln_cell + H + j0, dshift, n);
    });
  }

  // Backward phase 1 for whole rows [b0, b1) (as forward phase 1): dc_t = dc + N'(dN(c_t) g_c)
  // (+ da_o p_o), then da_i, da_f, da_g and dc_{t-1} as the plain LSTM's; then through the gate
  // sums' norms, dz_ih = N'(da g_0) into s.dg and dz_hh = N'(da g_1) into s.dgh.
  template <bool PEEP>
  static void ln_back_rows(const StepConst<F, W>& c, const Step<F>& s, int64_t b0, int64_t b1) {
    const int64_t H = c.H, GH = 4 * H, LW = ln_width(H), LD = c.LDG, nb = nblocks(H);
    for (int64_t b = b0; b < b1; ++b) {
      if (padded(c.lengths, b, s.t)) continue;  // dc passes on; the dgates are 0 (phase 0)
      const F *ln = s.ln + b * LW, *nh = ln + at_n(H), *d = c.ln_dn + b * H;
      const F *gp = s.gates + b * GH, *cp = s.cp + b * H;
      F *da = c.ln_da + b * GH, *dc = s.dc + b * H;
      // means of dN g_c and of dN g_c N(c_t) over H
      const F m0 = row_sum(1, H, H, [&](int64_t k, int64_t m) { return load(d + k, m); }) / F(H);
      const F m1 = row_sum(1, H, H, [&](int64_t k, int64_t m) {
                     return load(d + k, m) * load(nh + k, m);
                   }) / F(H);
      const F rc = ln[at_rstd(H) + 2];
      for_hidden_blocks<F>(H, 0, nb, [&](int64_t, int64_t j0, int64_t n) {
        const vec<F> i = load(gp + j0, n), f = load(gp + H + j0, n), g = load(gp + 2 * H + j0, n);
        const vec<F> cpv = load(cp + j0, n);
        vec<F> dcv = load(dc + j0, n) + rc * (load(d + j0, n) - m0 - load(nh + j0, n) * m1);
        if constexpr (PEEP) dcv += load(da + 3 * H + j0, n) * load(c.peep + 2 * H + j0, n);
        const vec<F> da_i = dcv * g * i * (F(1) - i), da_f = dcv * cpv * f * (F(1) - f);
        store(da + j0, da_i, n), store(da + H + j0, da_f, n);
        store(da + 2 * H + j0, dcv * i * (F(1) - g * g), n);
        vec<F> dc_prev = dcv * f;
        if constexpr (PEEP)
          dc_prev += da_i * load(c.peep + j0, n) + da_f * load(c.peep + H + j0, n);
        store(dc + j0, dc_prev, n);
      });
      F r[4];  // means of da g_0, da g_0 N(W_ih x), da g_1, da g_1 N(W_hh h)
      for (int64_t q = 0; q < 2; ++q) {
        const F *gq = c.ln_gates + q * GH, *z = ln + q * GH;
        r[2 * q] = row_sum(1, GH, GH, [&](int64_t k, int64_t m) {
                     return load(da + k, m) * load(gq + k, m);
                   }) / F(GH);
        r[2 * q + 1] = row_sum(1, GH, GH, [&](int64_t k, int64_t m) {
                         return load(da + k, m) * load(gq + k, m) * load(z + k, m);
                       }) / F(GH);
      }
      for_hidden_blocks<F>(H, 0, nb, [&](int64_t, int64_t j0, int64_t n) {
        for (int64_t v = 0; v < 4; ++v) {
          const int64_t k = v * H + j0;
          const vec<F> dav = load(da + k, n);
          const vec<F> zi = load(ln + k, n), zh = load(ln + at_zhh(H) + k, n);
          store(s.dg + b * LD + k,
                ln[at_rstd(H)] * (dav * load(c.ln_gates + k, n) - r[0] - zi * r[1]), n);
          store(s.dgh + b * LD + k,
                ln[at_rstd(H) + 1] * (dav * load(c.ln_gates + GH + k, n) - r[2] - zh * r[3]), n);
        }
      });
    }
  }

  // Forward phase 1 (2 with layer norm): h_t = W_hr m_t for blocks [jb0, jb1) of the P units.
  static void project_h(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0, int64_t jb1) {
    const int64_t B = c.B, H = c.H, P = c.P;
    const Rows<F, W> m = operand_rows<F, W>(s.aux, H, B, H);  // m_t (B, H) as products take it
    for_hidden_blocks<F>(P, jb0, jb1, [&](int64_t jb, int64_t j0, int64_t n) {
      panel_rows<F, 1>(m, B, block<F>(c.wr, jb, H, 1), H, [&](int64_t b, const F* acc) {
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
    // with a projection dh comes through W_hr (below): none made here
    const DhRows<F, W> dhp(PROJ ? nullptr : s.dgh_next, LD, B, c.wb, GH, H, jb0, jb1);
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
      if constexpr (PROJ) {
        rows_dm(c, s, jb, j0, n, cell);
      } else {
        dhp.rows(jb, rows_dh(c, s, j0, n, [&](int64_t b, vec<F> dh) {
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
