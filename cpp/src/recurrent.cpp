// Forward and backward through time for every cell: one driver, led by the cell's traits; the
// cell-specific math lives in its epilogues (cpp/kernels/cells/<cell>.hpp).
//
// Forward: per chunk of steps, each thread projects x W_ih^T for its own hidden blocks (the
// kernels' packed product), then per step the fused recurrent product + gates for those blocks,
// one sync of the team per step (two for gru_rh; cpp/src/threads.hpp). Backward: per step the
// fused dgates; per chunk of steps, the weight gradients and dx with the same register tiles,
// while the chunk's dgates are in cache.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.hpp"
#include "scratch.hpp"
#include "threads.hpp"

namespace rnnkern {
namespace {

template <class F, class W>
int64_t blocks(int64_t n, const KernelTable<F, W>& kt) { return (n + kt.nb - 1) / kt.nb; }

}  // namespace

// The weights of one direction packed for the kernels kt of precision (F, W): forward panels
// (W_hh, and W_ih for the input projection) and backward panels (W_hh, and W_ih for dx = dG
// W_ih), and the biases (F). Each thread packs the panels of the hidden blocks (and W_ih's column
// blocks) that it owns in a call on `threads` threads, so they start in its cache.
template <class F, class W>
struct Panels {
  Cell cell;
  int64_t I, H, P;  // P: the size of h, w_hr's rows (lstm with a projection), else H
  const KernelTable<F, W>* kt;
  bool fwd, bwd, bias;
  // Each panels buffer: the main gates' (nblk, P, G', NB) forward, (blocks of P, G'*H, NB)
  // backward; gru_rh: W_hn's (nblk, H, NB); then W_ih's: forward (nblk, I, G, NB), backward
  // (blocks of I, G*H, NB); then W_hr's: forward (blocks of P, H, NB), backward (nblk, P, NB).
  // Forward blocks are panel_elems<W> apart (int8: with their scales; int8 has no backward
  // panels).
  int64_t fmain_size, bmain_size, n_size, wif_size, wib_size, wrf_size, wrb_size;
  Buffer<W> fpanels, bpanels;
  std::vector<F> xbias;  // (G*H,) b_ih + b_hh, but b_hn stays inside r * (W_hn h + b_hn)
  std::vector<F> b_hn;   // (H,) gru, gru_rh with biases; else empty
  std::vector<F> peep;   // (3, H) peepholes p_i, p_f, p_o; empty without
  // Layer norm: gains (2, 4H), gain and shift of c (2, H), and the biases b_ih + b_hh (4H,),
  // which the normalized sums take after them (xbias is then 0); all empty without.
  std::vector<F> ln_gates, ln_cell, ln_bias;

  Panels(Cell cell_, int64_t I_, int64_t H_, const KernelTable<F, W>& kt_, Params<F> p,
         bool fwd_, bool bwd_, int threads)
      : cell(cell_), I(I_), H(H_), P(p.w_hr ? p.P : H_), kt(&kt_), fwd(fwd_), bwd(bwd_),
        bias(p.b_ih != nullptr),
        fmain_size(blocks(H, kt_) * panel_elems<W>(P, cell_traits(cell).main_gates, kt_.nb)),
        bmain_size(blocks(P, kt_) * kt_.nb * cell_traits(cell).main_gates * H),
        n_size(blocks(H, kt_) * panel_elems<W>(H, gates(cell) - cell_traits(cell).main_gates,
                                                kt_.nb)),
        wif_size(blocks(H, kt_) * panel_elems<W>(I, gates(cell), kt_.nb)),
        wib_size(blocks(I, kt_) * kt_.nb * H * gates(cell)),
        wrf_size(p.w_hr ? blocks(P, kt_) * panel_elems<W>(H, 1, kt_.nb) : 0),
        wrb_size(p.w_hr ? blocks(H, kt_) * kt_.nb * P : 0),
        fpanels(fwd ? fmain_size + n_size + wif_size + wrf_size : 0),
        bpanels(bwd ? bmain_size + n_size + wib_size + wrb_size : 0),
        xbias(gates(cell) * H, F(0)) {
    const CellTraits& ct = cell_traits(cell);
    if (p.w_peep && !ct.peepholes)
      throw std::invalid_argument(std::string("w_peep: ") + ct.name + " has no peepholes");
    if (p.w_hr && !ct.projection)
      throw std::invalid_argument(std::string("w_hr: ") + ct.name + " has no projection");
    if (p.w_hr && p.P < 1) throw std::invalid_argument("w_hr: P must be >= 1");
    if ((p.ln_gates != nullptr) != (p.ln_cell != nullptr))
      throw std::invalid_argument("ln_gates, ln_cell: give both or neither");
    if (p.ln_gates && cell != Cell::lstm)
      throw std::invalid_argument(std::string("ln_gates: ") + ct.name + " has no layer norm");
    if (p.w_peep) peep.assign(p.w_peep, p.w_peep + 3 * H);
    const int64_t G = ct.gates, G2 = ct.main_gates, GH = G * H;
    const int64_t folded = ct.separate_b_hn ? GH - H : GH;  // rows of b_hh in xbias
    for (int64_t r = 0; r < GH; ++r) {
      if (p.b_ih) xbias[r] += p.b_ih[r];
      if (p.b_hh && r < folded) xbias[r] += p.b_hh[r];
    }
    if (p.ln_gates) {
      ln_gates.assign(p.ln_gates, p.ln_gates + 2 * GH);
      ln_cell.assign(p.ln_cell, p.ln_cell + 2 * H);
      ln_bias.swap(xbias);
      xbias.assign(GH, F(0));
    }
    if (ct.separate_b_hn && p.b_hh) b_hn.assign(p.b_hh + folded, p.b_hh + GH);
    W *fmain = fpanels.get(), *bmain = bpanels.get();
    // Each planned thread packs its share; the caller packs the shares of workers that have not
    // started yet (threads.hpp).
    parallel(threads, [&](int tid, Team& team) {
      auto pack_share = [&](int share) {
        int64_t jb0, jb1, ib0, ib1, pb0, pb1;  // the share's hidden blocks; its column blocks
                                               // of W_ih; its blocks of h's P units
        split(blocks(H, *kt), share, team.planned(), &jb0, &jb1);
        split(blocks(I, *kt), share, team.planned(), &ib0, &ib1);
        split(blocks(P, *kt), share, team.planned(), &pb0, &pb1);
        if (fwd) {
          kt->pack_forward(fmain, p.w_hh, H, P, 0, G2, jb0, jb1);
          if (n_size) kt->pack_forward(fmain + fmain_size, p.w_hh, H, H, G2, 1, jb0, jb1);
          W* rest = fmain + fmain_size + n_size;
          if (wif_size) kt->pack_forward(rest, p.w_ih, H, I, 0, G, jb0, jb1);
          if (wrf_size) kt->pack_forward(rest + wif_size, p.w_hr, P, H, 0, 1, pb0, pb1);
        }
        if (bwd) {
          kt->pack_backward(bmain, p.w_hh, G2 * H, P, P, 0, pb0, pb1);
          if (n_size) kt->pack_backward(bmain + bmain_size, p.w_hh, H, H, H, G2 * H, jb0, jb1);
          W* rest = bmain + bmain_size + n_size;
          if (wib_size) kt->pack_backward(rest, p.w_ih, GH, I, I, 0, ib0, ib1);
          if (wrb_size) kt->pack_backward(rest + wib_size, p.w_hr, P, H, H, 0, jb0, jb1);
        }
      };
      pack_share(tid);
      if (tid == 0)
        for (int w; (w = team.take_over()) >= 0;) pack_share(w);
    });
  }

  // What the kernels read of a call: the forward's panels, or the backward's.
  StepConst<F, W> step_const(Dims d, const int64_t* lengths, bool backward) const {
    const char* what = backward ? "backward" : "forward";
    if (d.I != I || d.H != H || h_size(d) != P || (d.P != 0) != projected())
      throw std::invalid_argument(std::string(what) + ": the pack's sizes are I = " +
                                  std::to_string(I) + ", H = " + std::to_string(H) +
                                  (projected() ? ", P = " + std::to_string(P) : ""));
    if (!(backward ? bwd : fwd))
      throw std::invalid_argument(std::string(what) + ": the pack was not made for it");
    W* main = backward ? bpanels.get() : fpanels.get();
    const int64_t msize = backward ? bmain_size : fmain_size;
    const int64_t wi_size = backward ? wib_size : wif_size;
    W* n = n_size ? main + msize : nullptr;
    W* wi = wi_size ? main + msize + n_size : nullptr;
    W* wr = projected() ? main + msize + n_size + wi_size : nullptr;
    StepConst<F, W> sc{cell, d.B, d.H, backward ? nullptr : main, backward ? nullptr : n,
                       backward ? main : nullptr, backward ? n : nullptr, d.I, wi,
                       blocks(H, *kt) * kt->nb, b_hn.empty() ? nullptr : b_hn.data(),
                       xbias.data(), lengths, 0, peep.empty() ? nullptr : peep.data(),
                       nullptr};
    sc.P = P;
    (backward ? sc.wrb : sc.wr) = wr;
    if (normalized())
      sc.ln_gates = ln_gates.data(), sc.ln_cell = ln_cell.data(), sc.ln_bias = ln_bias.data();
    return sc;
  }
  bool projected() const { return wrf_size + wrb_size > 0; }
  bool normalized() const { return !ln_gates.empty(); }
};

// A Pack's panels: of its precision's W (native: F).
template <class F>
struct Pack<F>::Impl {
  // Precisions bf16 and int8 have float arrays only (for double, `half` and `q8` are never made).
  static constexpr bool f32 = std::is_same_v<F, float>;
  using Half = std::conditional_t<f32, Panels<F, bf16>, Panels<F, F>>;
  using Q8 = std::conditional_t<f32, Panels<F, int8_t>, Panels<F, F>>;
  std::unique_ptr<Panels<F, F>> native;
  std::unique_ptr<Half> half;
  std::unique_ptr<Q8> q8;

  Impl(Cell cell, int64_t I, int64_t H, Params<F> p, bool fwd, bool bwd, Precision prec,
       int threads) {
    if (prec != Precision::native && !f32)
      throw std::invalid_argument(std::string("precision: ") +
                                  (prec == Precision::bf16 ? "bf16" : "int8") +
                                  " needs float32 arrays");
    if (prec == Precision::int8 && bwd)
      throw std::invalid_argument("precision: int8 is inference only (no backward panels)");
    if (prec == Precision::int8 && p.ln_gates)  // measured in docs/precision.md
      throw std::invalid_argument("ln_gates: layer norm has no int8 kernels (normalized, the int8 "
                                  "sums' error grows about tenfold; use 'float' or 'bf16')");
    // |sum of (q - zp) q_w| <= K * 255 * 63 must fit in int32
    if (prec == Precision::int8 && (I > 131072 || H > 131072))
      throw std::invalid_argument("precision: int8 takes I and H up to 131072");
    if constexpr (f32) {
      if (prec == Precision::bf16)
        half = std::make_unique<Half>(cell, I, H, *kernels<F, bf16>(), p, fwd, bwd, threads);
      if (prec == Precision::int8)
        q8 = std::make_unique<Q8>(cell, I, H, *kernels<F, int8_t>(), p, fwd, bwd, threads);
    }
    if (prec == Precision::native)
      native = std::make_unique<Panels<F, F>>(cell, I, H, *kernels<F>(), p, fwd, bwd, threads);
  }
  // The fields every precision has.
  template <class Fn>
  auto with(Fn fn) const {
    return half ? fn(*half) : q8 ? fn(*q8) : fn(*native);
  }
};

// Threads to pack with, when the calls to come are unknown: one per block of H (or I).
int pack_threads(int64_t I, int64_t H, int64_t nb) {
  const int64_t n = ((H > I ? H : I) + nb - 1) / nb;
  return n < 1 ? 1 : (n > 16 ? 16 : static_cast<int>(n));
}

template <class F>
Pack<F>::Pack(Cell cell, int64_t I, int64_t H, Params<F> p, bool for_forward, bool for_backward,
              Precision prec)
    : impl_(std::make_unique<Impl>(cell, I, H, p, for_forward, for_backward, prec,
                                   pack_threads(I, H, kernels<F>()->nb))) {}
template <class F>
Pack<F>::Pack(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
template <class F>
Pack<F>::~Pack() = default;
template <class F>
Cell Pack<F>::cell() const { return impl_->with([](auto& p) { return p.cell; }); }
template <class F>
int64_t Pack<F>::input_size() const { return impl_->with([](auto& p) { return p.I; }); }
template <class F>
int64_t Pack<F>::hidden_size() const { return impl_->with([](auto& p) { return p.H; }); }
template <class F>
bool Pack<F>::has_bias() const { return impl_->with([](auto& p) { return p.bias; }); }
template <class F>
bool Pack<F>::has_peepholes() const { return impl_->with([](auto& p) { return !p.peep.empty(); }); }
template <class F>
bool Pack<F>::has_layer_norm() const {
  return impl_->with([](auto& p) { return p.normalized(); });
}
template <class F>
int64_t Pack<F>::output_size() const { return impl_->with([](auto& p) { return p.P; }); }
template <class F>
bool Pack<F>::has_projection() const {
  return impl_->with([](auto& p) { return p.projected(); });
}
template <class F>
bool Pack<F>::for_forward() const { return impl_->with([](auto& p) { return p.fwd; }); }
template <class F>
bool Pack<F>::for_backward() const { return impl_->with([](auto& p) { return p.bwd; }); }
template <class F>
std::string Pack<F>::isa() const { return impl_->with([](auto& p) { return p.kt->isa; }); }
template <class F>
Precision Pack<F>::precision() const {
  return impl_->half ? Precision::bf16 : impl_->q8 ? Precision::int8 : Precision::native;
}

namespace {

// Steps per chunk: about 4 MB of (steps, B, G*H) buffer, but at least 256 rows (forward: the
// input projection's; backward: the length of the weight gradients' products). With `l2` (the
// int8 forward) at most about 64 rows, so that each thread's columns of the chunk's projections
// (64 x 4H floats / threads: 128 KB at H = 256 on two threads) are still in its L2 when its steps
// read them; 64 rows are one row group of the projection, which runs as fast as on longer
// chunks (LSTM S2, S3: about 10% less time than 4 MB chunks, which the steps read from L3).
int64_t chunk_steps(int64_t T, int64_t B, int64_t GH, bool l2 = false) {
  int64_t tc = (int64_t(1) << 20) / (B * GH > 0 ? B * GH : 1);
  if (tc * B < 256) tc = (256 + B - 1) / B;
  if (l2 && tc * B > 64) tc = (64 + B - 1) / B;
  return tc < 1 ? 1 : (tc > T ? T : tc);
}

// Threads worth using: each should get at least ~16K multiply-adds per step, else the
// per-step barrier costs more than it saves, and the call at least ~256K in all (about 16 us on
// one thread), else waking a worker costs more than it saves. A single step of a decoding loop
// at H = 256 is above that: the caller does not wait for a worker asleep (it joins late), and in
// a loop the worker is still spinning from the last step.
int threads_for(Dims d, int64_t GH, int64_t nblk) {
  if (d.T * d.B * GH * (d.H + d.I) < (int64_t(1) << 18)) return 1;
  const int64_t per_step = d.B * GH * d.H / 16384;
  const int64_t n = per_step < nblk ? per_step : nblk;
  return n < 1 ? 1 : static_cast<int>(n);
}

// Calls fn(c0, c1) for this member's part of [0, n) cut into about 8 blocks (multiples of 16,
// at least 64) that depend on n only, not on the team (so neither do the results, e.g. the bias
// gradients' column sums); eight share evenly among 1, 2, 4 or 8 threads.
template <class Fn>
void for_blocks(int64_t n, const Team& team, int tid, Fn fn) {
  int64_t blk = ((n + 7) / 8 + 15) / 16 * 16;
  blk = blk < 64 ? 64 : blk;
  int64_t b0, b1;
  team.part(tid, (n + blk - 1) / blk, &b0, &b1);
  for (int64_t b = b0; b < b1; ++b) fn(b * blk, (b + 1) * blk < n ? (b + 1) * blk : n);
}

// This member's part [b0, b1) of n column blocks, in whole pairs counted from block 0: product()
// takes a range's blocks two by two from its start, and a block's bits depend on whether it is
// paired (a tile's accumulators), so every team must pair the same blocks.
void pair_part(const Team& team, int tid, int64_t n, int64_t* b0, int64_t* b1) {
  team.part(tid, (n + 1) / 2, b0, b1);
  *b0 *= 2, *b1 = *b1 * 2 < n ? *b1 * 2 : n;
}

// This member's column blocks of I, of P (h's units) and of H in the products that sum over
// rows (weight gradients, dx, dh0), in whole pairs (pair_part), so their bits do not depend on
// the team: blk = {I from, to, P from, to, H from, to}.
void column_blocks(const Team& team, int tid, int64_t nblk_i, int64_t nblk_p, int64_t nblk,
                   int64_t (&blk)[6]) {
  pair_part(team, tid, nblk_i, &blk[0], &blk[1]);
  pair_part(team, tid, nblk_p, &blk[2], &blk[3]);
  pair_part(team, tid, nblk, &blk[4], &blk[5]);
}

// Phases per step: the product's, then a projection's (h_t = W_hr m_t; backward dm_t =
// dh_t W_hr) or layer norm's whole rows as a second, both with both (lstm.hpp); else the
// cell's own.
int step_phases(const CellTraits& ct, bool proj, bool ln) {
  return ln && proj ? 3 : ln || proj ? 2 : ct.phases;
}

// A member's share [first, second) of phase `ph`: its rows `r` in layer norm's rows phase
// (forward 1; backward 1, 2 with a projection), its blocks of P `p` in a projection's phase
// (forward 1, 2 with layer norm; backward 0), else its hidden blocks `j`.
using Range = std::pair<int64_t, int64_t>;
bool rows_phase(int ph, bool ln, bool proj, bool backward) {
  return ln && ph == (backward && proj ? 2 : 1);
}
Range phase_share(int ph, bool ln, bool proj, bool backward, Range j, Range p, Range r) {
  const int p_phase = backward ? 0 : ln ? 2 : 1;
  return rows_phase(ph, ln, proj, backward) ? r : proj && ph == p_phase ? p : j;
}

// One-step calls this thread has walked its blocks in (serpentine): the parity of its next.
thread_local uint32_t walks = 0;

// fn(a, e) over a member's blocks [first, second) of a step's phase in pieces of two counted
// from `first`, ascending, or descending when `down` (a forward phase computes each block on its
// own, so any order gives the same bits). A one-step call (T = 1: a decoding loop's) reads W_ih
// and W_hh, a member's share of them at H = 256 on two threads 1 MiB, its core's whole L2:
// walked the same way at every call, each piece had been evicted just before it was read
// again; walked up on one call and down on the next, the pieces read last are read first.
// Measured (A/B in one process, random order, 25-61 rounds): 100 steps at B = 1 0.85-0.94x the
// time, at B = 8 0.95-0.97x; walking one way with the same fused projection 0.99-1.03x. A whole
// sequence's share (W_hh's half, 512 KB) fits its L2: there it gained nothing measurable.
template <class Fn>
void serpentine(Range b, bool down, Fn&& fn) {
  const int64_t n = (b.second - b.first + 1) / 2;  // pieces
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = b.first + 2 * (down ? n - 1 - i : i);
    fn(a, a + 2 < b.second ? a + 2 : b.second);
  }
}

template <class F>
void copy_or_zero(F* dst, const F* src, int64_t n) {
  if (src) std::memcpy(dst, src, n * sizeof(F));
  else std::memset(dst, 0, n * sizeof(F));
}

// out[c] (+)= the sum of the rows of a (rows, ld) in column c, for c in [c0, c1), in row order;
// with `tr`, of a stored transposed (column c at a + c * ld): the same sums, the same bits.
template <class F>
void column_sums(const F* a, int64_t rows, int64_t ld, bool tr, int64_t c0, int64_t c1, F* out,
                 bool add) {
  if (!add)
    for (int64_t c = c0; c < c1; ++c) out[c] = 0;
  if (tr) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t r = 0; r < rows; ++r) out[c] += a[c * ld + r];
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; ++c) out[c] += a[r * ld + c];
}

// Rows of the weight gradients' products: dgates (rows, ld) of the input side and of the
// recurrent side (the same unless gru's or layer norm's differ), h_{t-1} (rows, P), gru_rh's
// r * h_{t-1} (rows, H) or null. `tr`: the dgates stored transposed, (G*H, ld) (kept rows:
// each gate's column contiguous, so the products read them by rows, not a row per k).
template <class F>
struct WeightRows {
  const F *dg, *dgr;
  int64_t ld, rows;
  const F *h, *aux;
  bool tr;
};

// This member's share of the weight gradients over `r`'s rows, their x already in panels `xq`
// (its column blocks [ib0, ib1) of I): dW_ih (+)= dg^T x there; dW_hh (+)= dgr^T h in its blocks
// [pb0, pb1) of P, the rows from split_row (gru_rh's n rows) dgr^T aux in its blocks [jb0, jb1)
// of H; with `bias`, its for_blocks of the bias sums (db_hh from dgr when `two`, from dg when
// `add_hh`, else left to the caller: the same as db_ih). hpan, apan: its panels of h and aux.
template <class F, class W>
void weight_products(const KernelTable<F, W>& kt, const WeightRows<F>& r, const W* xq, W* hpan,
                     W* apan, int64_t I, int64_t H, int64_t P, int64_t GH, int64_t split_row,
                     const int64_t (&blk)[6], const Grads<F>& g, bool add, bool bias, bool two,
                     bool add_hh, const Team& team, int tid) {
  const auto [ib0, ib1, pb0, pb1, jb0, jb1] = blk;
  const bool at = !r.tr;  // dg^T: dg read transposed, unless stored so
  kt.product(r.dg, r.ld, at, GH, xq, r.rows, I, g.dw_ih, I, add, ib0, ib1);
  kt.pack_backward(hpan, r.h, r.rows, P, P, 0, pb0, pb1);
  kt.product(r.dgr, r.ld, at, split_row, hpan, r.rows, P, g.dw_hh, P, add, pb0, pb1);
  if (split_row < GH) {
    kt.pack_backward(apan, r.aux, r.rows, H, H, 0, jb0, jb1);
    kt.product(r.dgr + split_row * (r.tr ? r.ld : 1), r.ld, at, GH - split_row, apan, r.rows, H,
               g.dw_hh + split_row * H, H, add, jb0, jb1);
  }
  if (bias)
    for_blocks(GH, team, tid, [&](int64_t c0, int64_t c1) {
      column_sums(r.dg, r.rows, r.ld, r.tr, c0, c1, g.db_ih, add);
      if (two || add_hh) column_sums(r.dgr, r.rows, r.ld, r.tr, c0, c1, g.db_hh, add);
    });
}

}  // namespace

namespace {

// Storage of kept rows' blocks that finished passes gave back, for the next passes: a block is
// megabytes, and a fresh one's page faults cost about a third of a one-step backward at B = 32,
// H = 256 (perf). Keeps at most kKeep bytes; a block is taken if it is large enough.
class RowsStore {
 public:
  static constexpr size_t kKeep = size_t(64) << 20;
  // A block of at least `bytes`, its true size in *capacity.
  std::unique_ptr<char[]> take(size_t bytes, size_t* capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = 0; i < free_.size(); ++i)
        if (free_[i].second >= bytes) {
          std::unique_ptr<char[]> p = std::move(free_[i].first);
          *capacity = free_[i].second;
          kept_ -= *capacity;
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          return p;
        }
    }
    *capacity = bytes;
    return std::unique_ptr<char[]>(new char[bytes]);
  }
  void give(std::unique_ptr<char[]> p, size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (kept_ + capacity > kKeep) return;  // freed
    kept_ += capacity;
    free_.emplace_back(std::move(p), capacity);
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<std::unique_ptr<char[]>, size_t>> free_;
  size_t kept_ = 0;
};

RowsStore& rows_store() {
  static RowsStore* store = new RowsStore;  // never destroyed: GradRows may outlive statics
  return *store;
}

}  // namespace

template <class F>
struct GradRows<F>::Impl {
  static constexpr int64_t R = 256;  // rows per block: the length of one product
  struct Block {  // in one allocation of rows_store(): (R, I), (R, P), (R, H) gru_rh, and the
                  // dgates transposed, (G*H, R) (WeightRows::tr), twice (two sides)
    std::unique_ptr<char[]> mem;
    size_t capacity = 0;
    F *x = nullptr, *h = nullptr, *aux = nullptr, *dg = nullptr, *dgr = nullptr;
    int64_t n = 0;
  };
  Cell cell{};
  int64_t I = -1, P = -1, H = -1, ld = 0;  // sizes of the first rows kept; later ones must match
  int64_t GH = 0;                          // the dgates' columns kept
  bool two = false, aux = false;
  std::vector<Block> blocks;
  int64_t n = 0;

  // dst (GH, R) from its column 0 = the k rows of src (k, ld), transposed, in 16 x 16 tiles
  // read a row at a time: a tile's 16 destination lines stay in L1 while it fills them. A column
  // at a time over all k rows took 6x as long (86 against 15 us at k = 32, GH = 1024: 6% of a
  // B = 32 LSTM cell training loop, on the caller's serial path).
  void transpose_into(F* dst, const F* src, int64_t k) const {
    constexpr int64_t S = 16;
    for (int64_t c0 = 0; c0 < GH; c0 += S)
      for (int64_t r0 = 0; r0 < k; r0 += S) {
        const int64_t c1 = std::min(c0 + S, GH), r1 = std::min(r0 + S, k);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) dst[c * R + r] = src[r * ld + c];
      }
  }

  ~Impl() {
    for (Block& b : blocks) rows_store().give(std::move(b.mem), b.capacity);
  }

  // Keeps `rows` rows (each of the arrays' rows in order, dg and dgr `ld` apart).
  void append(Cell c, int64_t I_, int64_t P_, int64_t H_, int64_t ld_, bool two_, int64_t rows,
              const F* x, const F* h, const F* a, const F* dg, const F* dgr) {
    if (I < 0)
      cell = c, I = I_, P = P_, H = H_, ld = ld_, two = two_, aux = a != nullptr,
      GH = gates(c) * H_;
    if (c != cell || I_ != I || P_ != P || H_ != H || ld_ != ld)
      throw std::invalid_argument("backward: these rows were kept for another cell or sizes");
    for (int64_t q = 0; q < rows;) {
      if (blocks.empty() || blocks.back().n == R) {
        Block b;
        const int64_t nx = R * I, nh = R * P, na = aux ? R * H : 0, ng = GH * R;
        b.mem = rows_store().take((nx + nh + na + ng * (two ? 2 : 1)) * sizeof(F), &b.capacity);
        F* p = reinterpret_cast<F*>(b.mem.get());
        b.x = p, b.h = p + nx, b.dg = p + nx + nh;
        if (aux) b.aux = b.dg + ng;
        if (two) b.dgr = b.dg + ng + na;
        blocks.push_back(std::move(b));
      }
      Block& b = blocks.back();
      const int64_t k = std::min(R - b.n, rows - q);
      std::memcpy(b.x + b.n * I, x + q * I, k * I * sizeof(F));
      std::memcpy(b.h + b.n * P, h + q * P, k * P * sizeof(F));
      if (aux) std::memcpy(b.aux + b.n * H, a + q * H, k * H * sizeof(F));
      transpose_into(b.dg + b.n, dg + q * ld, k);
      if (two) transpose_into(b.dgr + b.n, dgr + q * ld, k);
      b.n += k, q += k, n += k;
    }
  }
};

template <class F>
GradRows<F>::GradRows() : impl_(std::make_unique<Impl>()) {}
template <class F>
GradRows<F>::~GradRows() = default;
template <class F>
int64_t GradRows<F>::rows() const { return impl_->n; }

template <class F>
int call_threads(Cell cell, Dims d) {
  return threads_for(d, gates(cell) * d.H, blocks(d.H, *kernels<F>()));
}

CacheLayout cache_layout(Cell cell, Dims d) {
  const CellTraits& ct = cell_traits(cell);
  const int64_t BH = d.B * d.H;
  return CacheLayout{(d.T + 1) * d.B * h_size(d), ct.cell_state ? (d.T + 1) * BH : 0,
                     ct.cache_gates ? d.T * ct.gates * BH : 0, *ct.aux || d.P ? d.T * BH : 0};
}

template <class F>
void forward(Cell cell, Dims d, const F* x, const F* h0, const F* c0, Params<F> p,
             const int64_t* lengths, F* y, F* h_n, F* c_n, const Cache<F>* cache,
             Precision prec) {
  if (d.B == 0 || d.H == 0) return;
  const int threads = threads_for(d, gates(cell) * d.H, blocks(d.H, *kernels<F>()));
  const Pack<F> w(std::make_unique<typename Pack<F>::Impl>(cell, d.I, d.H, p, true, false, prec,
                                                           threads));
  forward(w, d, x, h0, c0, lengths, y, h_n, c_n, cache);
}

namespace {

template <class F, class W>
void run_forward(const Panels<F, W>& pk, Dims d, const F* x, const F* h0, const F* c0,
                 const int64_t* lengths, F* y, F* h_n, F* c_n, const Cache<F>* cache) {
  StepConst<F, W> sc = pk.step_const(d, lengths, false);
  const Cell cell = pk.cell;
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, GH = gates(cell) * H, BH = B * H;
  const int64_t BP = B * pk.P;  // h's rows: P = H without a projection
  if (B == 0 || H == 0) return;
  const KernelTable<F, W>& kt = *pk.kt;
  const CellTraits& ct = cell_traits(cell);
  const CellKernels<F, W>& ck = kt.cells[static_cast<int>(cell)];
  const bool lstm = ct.cell_state, proj = sc.wr != nullptr, ln = pk.normalized();
  if (ln && cache && !cache->ln)
    throw std::invalid_argument("forward: a layer-normalized LSTM's cache needs its ln buffer");
  const int phases = step_phases(ct, proj, ln);
  const int64_t nblk = blocks(H, kt), nblk_p = blocks(pk.P, kt), LW = ln_width(H);

  const int64_t tc = chunk_steps(T, B, GH, std::is_same_v<W, int8_t>),
                GHX = gates(cell) * sc.HX;
  Buffer<F> xp(tc * B * GHX);  // (tc, B, G*HX) input projections of a chunk
  // States: the cache's rows (T+1, B, P), (T+1, B, H) in training, else two alternating rows
  // (2, B, P), (2, B, H).
  Buffer<F> hbuf(cache ? 0 : 2 * BP), cbuf(!cache && lstm ? 2 * BH : 0);
  F* hs = cache ? cache->hs : hbuf.get();
  F* cs = lstm ? (cache ? cache->cs : cbuf.get()) : nullptr;
  auto row = [&](F* base, int64_t t, int64_t n) { return base + (cache ? t : (t & 1)) * n; };
  // Gates and aux between the phases of a step when nothing is cached: (B, G*H), (B, H).
  const bool scratch = !cache && phases > 1;
  Buffer<F> gscratch(scratch && (ct.phases > 1 || ln) ? B * GH : 0), ascratch(scratch ? BH : 0);
  Buffer<F> lnz(ln ? B * GH : 0);  // (B, 4H) layer norm: W_hh h_{t-1} of a step
  sc.ln_z = lnz.get();
  copy_or_zero(hs, h0, BP);
  if (lstm) copy_or_zero(cs, c0, BH);

  // One step (a decoding loop's) on float weights: each member projects x for a piece of its
  // blocks just before the piece's recurrent product, walking its W_ih and W_hh blocks together
  // (serpentine). Not bf16 or int8: each piece would round or quantize x and h again (the
  // kernels prepare their operand rows per call), and the walk was measured on float only.
  const bool one_step = T == 1 && std::is_same_v<W, F>;
  parallel(threads_for(d, GH, nblk), [&](int tid, Team& team) {
    // The first chunk's projections, in the planned members' shares of the hidden blocks: the
    // caller does its own, then those of the workers that have not started by then (they join
    // later, benched). begin() waits for every member that started, so all are done after it.
    auto project0 = [&](int share) {
      if (one_step) return;
      int64_t b0, b1;
      split(nblk, share, team.planned(), &b0, &b1);
      kt.project(sc, x, std::min(tc, T) * B, xp.get(), b0, b1);
    };
    const bool shares = team.start_shares();  // else each member its own part after begin()
    if (shares && !team.joined_late(tid)) project0(tid);
    if (tid == 0)
      for (int w; (w = team.take_over()) >= 0;)
        if (shares) project0(w);
    team.begin(tid);
    int64_t jb0, jb1, pb0, pb1, rb0, rb1;  // this member's hidden blocks (none while benched),
                                           // blocks of h's P units, rows (layer norm's second
                                           // phase): they change only when the team does
    auto mine = [&] {
      team.part(tid, nblk, &jb0, &jb1);
      team.part(tid, nblk_p, &pb0, &pb1);
      team.part(tid, B, &rb0, &rb1);
    };
    mine();
    for (int64_t t0 = 0; t0 < T; t0 += tc) {
      const int64_t steps = tc < T - t0 ? tc : T - t0;
      const int64_t rows = steps * B;
      // This member's columns of a later chunk's projections: only its own steps read them (or,
      // when the team changes, the new owner's, which come after a sync), so no sync is needed.
      if ((t0 > 0 || !shares) && !one_step)
        kt.project(sc, x + t0 * B * I, rows, xp.get(), jb0, jb1);
      for (int64_t t = t0; t < t0 + steps; ++t) {
        Step<F> s{};
        s.t = t;
        s.xp = xp.get() + (t - t0) * B * GHX;
        s.hp = row(hs, t, BP), s.hn = row(hs, t + 1, BP);
        if (lstm) s.cp = row(cs, t, BH), s.cn = row(cs, t + 1, BH);
        s.y = y + t * BP;
        s.gates = cache ? (cache->gates ? cache->gates + t * B * GH : nullptr) : gscratch.get();
        s.aux = cache ? (cache->aux ? cache->aux + t * BH : nullptr) : ascratch.get();
        s.ln = ln && cache ? cache->ln + t * B * LW : nullptr;
        const bool down = one_step && (walks++ & 1) != 0;
        for (int ph = 0; ph < phases; ++ph) {
          const Range b = phase_share(ph, ln, proj, false, {jb0, jb1}, {pb0, pb1}, {rb0, rb1});
          // Not with no share (benched): a phase's operand rows (bf16, int8) read h_{t-1},
          // which the caller, steps ahead, may be writing (ThreadSanitizer saw it).
          const bool walk = one_step && !rows_phase(ph, ln, proj, false);
          if (b.first < b.second && walk) {
            serpentine(b, down, [&](int64_t a, int64_t e) {
              if (ph == 0) kt.project(sc, x, B, xp.get(), a, e);  // a phase 0 is of blocks
              ck.forward_phase(sc, s, ph, a, e);
            });
          } else if (b.first < b.second) {
            ck.forward_phase(sc, s, ph, b.first, b.second);
          }
          team.sync(tid);
          mine();
        }
      }
    }
  }, /*late_join=*/true);
  std::memcpy(h_n, row(hs, T, BP), BP * sizeof(F));
  if (lstm) std::memcpy(c_n, row(cs, T, BH), BH * sizeof(F));
}

}  // namespace

template <class F>
void forward(const Pack<F>& w, Dims d, const F* x, const F* h0, const F* c0,
             const int64_t* lengths, F* y, F* h_n, F* c_n, const Cache<F>* cache) {
  w.impl().with([&](auto& pk) { run_forward(pk, d, x, h0, c0, lengths, y, h_n, c_n, cache); });
}

template <class F>
void backward(Cell cell, Dims d, const F* x, Params<F> p, const int64_t* lengths,
              const Cache<F>& cache, const F* dy, const F* dh_n, const F* dc_n, Grads<F> g,
              Precision prec) {
  const int threads = threads_for(d, gates(cell) * d.H, blocks(d.H, *kernels<F>()));
  const Pack<F> w(std::make_unique<typename Pack<F>::Impl>(cell, d.I, d.H, p, false, true, prec,
                                                           threads));
  backward(w, d, x, lengths, cache, dy, dh_n, dc_n, g);
}

namespace {

template <class F, class W>
void run_backward(const Panels<F, W>& pk, Dims d, const F* x, const int64_t* lengths,
                  const Cache<F>& cache, const F* dy, const F* dh_n, const F* dc_n, Grads<F> g) {
  StepConst<F, W> sc = pk.step_const(d, lengths, true);
  const Cell cell = pk.cell;
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, GH = gates(cell) * H, BH = B * H, TB = T * B;
  const int64_t P = pk.P, BP = B * P;  // h's size: P = H without a projection
  const CellTraits& ct = cell_traits(cell);
  const bool lstm = ct.cell_state, proj = sc.wrb != nullptr, ln = pk.normalized();
  if ((g.dln_gates != nullptr) != ln || (g.dln_cell != nullptr) != ln || (ln && !cache.ln))
    throw std::invalid_argument("backward: dln_gates, dln_cell and the cache's ln buffer must be "
                                "given exactly when the pack has layer norm");
  if ((g.dw_peep != nullptr) != !pk.peep.empty())
    throw std::invalid_argument("backward: dw_peep must be given exactly when the pack has "
                                "peepholes");
  if ((g.dw_hr != nullptr) != proj)
    throw std::invalid_argument("backward: dw_hr must be given exactly when the pack has a "
                                "projection");
  const bool acc = g.accumulate;  // add to the weight gradients
  const bool defer = g.rows != nullptr;  // keep the rows for weight_gradients() instead
  if (defer && (T != 1 || lengths || proj || ln))
    throw std::invalid_argument("backward: rows are kept only for one step without lengths, "
                                "projection or layer norm");
  // the epilogues add to these
  if (g.dw_peep && !acc) std::memset(g.dw_peep, 0, 3 * H * sizeof(F));
  // layer norm: the epilogues sum the biases' gradient (da) into dbias; with accumulate, into
  // this call's own buffer (G*H,), added to both biases at the end
  std::unique_ptr<F[]> dbias;
  if (ln) {
    if (!acc)
      std::memset(g.dln_gates, 0, 2 * GH * sizeof(F)),
          std::memset(g.dln_cell, 0, 2 * H * sizeof(F));
    if (g.db_ih && acc) dbias.reset(new F[GH]());
    if (g.db_ih && !acc) std::memset(g.db_ih, 0, GH * sizeof(F));
    sc.dln_gates = g.dln_gates, sc.dln_cell = g.dln_cell;
    sc.dbias = dbias ? dbias.get() : g.db_ih;
  }
  sc.dpeep = g.dw_peep;
  if (B == 0 || H == 0) {
    if (g.dx) std::memset(g.dx, 0, TB * I * sizeof(F));
    std::memset(g.dh0, 0, BP * sizeof(F));
    if (lstm) std::memset(g.dc0, 0, BH * sizeof(F));
    if (acc || defer) return;
    std::memset(g.dw_ih, 0, GH * I * sizeof(F));
    std::memset(g.dw_hh, 0, GH * P * sizeof(F));
    if (g.dw_hr) std::memset(g.dw_hr, 0, P * H * sizeof(F));
    if (g.db_ih) std::memset(g.db_ih, 0, GH * sizeof(F)), std::memset(g.db_hh, 0, GH * sizeof(F));
    return;
  }
  // Rows of the dgates buffers LDG apart, not G*H: at G*H = 1024 or 2048 floats (4 or 8 KB) the
  // rows that one backward tile reads side by side would all fall in one L1 set.
  const int64_t LDG = (GH * sizeof(F)) % 1024 == 0 ? GH + 64 / sizeof(F) : GH;
  const KernelTable<F, W>& kt = *pk.kt;
  const CellKernels<F, W>& ck = kt.cells[static_cast<int>(cell)];
  sc.LDG = LDG;
  const int64_t nblk = blocks(H, kt), nblk_p = blocks(P, kt);
  const int phases = step_phases(ct, proj, ln);
  const int64_t LW = ln_width(H);

  // The dgates of a chunk of steps, two chunks alternating: the weight gradients of a chunk are
  // products over its rows while they are still in cache.
  const int64_t tc = chunk_steps(T, B, GH), chunk = tc * B * LDG;
  const bool two = ct.recurrent_dgates || ln;
  Buffer<F> dg(2 * chunk);               // (2, tc, B, LDG) dL/d(preactivations); layer norm:
                                         // dL/d(W_ih x)
  Buffer<F> dgh(two ? 2 * chunk : 0);    // (2, tc, B, LDG) gru: recurrent side; layer norm:
                                         // dL/d(W_hh h)
  Buffer<F> lnda(ln ? BH * 4 : 0), lndn(ln ? BH : 0);  // layer norm: (B, 4H) dL/da, (B, H)
  sc.ln_da = lnda.get(), sc.ln_dn = lndn.get();        // dL/dN(c_t) g_c of a step
  Buffer<F> dht(proj ? 2 * tc * BP : 0);  // (2, tc, B, P) projection: the whole dL/dh_t
  Buffer<F> dh(BP), dc(lstm ? BH : 0);   // (B, P), (B, H) carried gradients
  copy_or_zero(dh.get(), dh_n, BP);
  if (lstm) copy_or_zero(dc.get(), dc_n, BH);
  // dW_hh = dgr^T h_{t-1} in the main gates' rows; the rest multiply the cached aux (gru_rh's
  // n rows: r * h_{t-1}).
  const int64_t split_row = ct.main_gates * H;
  // Steps t >= the shortest length have padded rows.
  int64_t shortest = T;
  for (int64_t b = 0; lengths && b < B; ++b)
    if (lengths[b] < shortest) shortest = lengths[b];
  // The chunk's x, h_{t-1} (and gru_rh's r * h_{t-1}, a projection's m_t) as panels for the
  // weight gradients: each thread packs the column blocks of dW it computes. (blocks of I, P or
  // H, tc*B, NB); none when the rows are kept for weight_gradients)
  const int64_t nblk_i = blocks(I, kt), NBK = kt.nb, pan_rows = defer ? 0 : tc * B;
  Buffer<W> xpan(nblk_i * NBK * pan_rows), hpan(nblk_p * NBK * pan_rows);
  Buffer<W> apan(split_row < GH || proj ? nblk * NBK * pan_rows : 0);

  parallel(threads_for(d, GH, nblk), [&](int tid, Team& team) {
    if (tid == 0)  // the workers that have not started by now join later, benched
      while (team.take_over() >= 0) {
      }
    team.begin(tid);
    // This member's hidden blocks, rows (layer norm's phase 1) and column_blocks: of I (dx,
    // dW_ih), of P (dh with a projection, dW_hh, dh0) and of H (gru_rh's n rows of dW_hh, dW_hr).
    int64_t jb0, jb1, rb0, rb1, blk[6];
    const auto& [ib0, ib1, pb0, pb1, hb0, hb1] = blk;
    auto mine = [&] {
      team.part(tid, nblk, &jb0, &jb1);
      team.part(tid, B, &rb0, &rb1);
      column_blocks(team, tid, nblk_i, nblk_p, nblk, blk);
    };
    mine();
    Step<F> s{};
    s.dh = dh.get(), s.dc = dc.get();
    const F* next = nullptr;  // (B, LDG) recurrent-side dgates of step t+1
    for (int64_t t1 = T, c = 0; t1 > 0; t1 -= tc, ++c) {  // chunk of steps [t0, t1), backwards
      const int64_t t0 = t1 > tc ? t1 - tc : 0, rows = (t1 - t0) * B;
      F* dgc = dg.get() + (c & 1) * chunk;                  // (t1 - t0, B, LDG)
      F* dgr = two ? dgh.get() + (c & 1) * chunk : dgc;     // what multiplies W_hh
      F* dhc = proj ? dht.get() + (c & 1) * tc * BP : nullptr;  // (t1 - t0, B, P)
      for (int64_t t = t1 - 1; t >= t0; --t) {
        s.t = t;
        s.hp = cache.hs + t * BP, s.hn = cache.hs + (t + 1) * BP;
        if (lstm) s.cp = cache.cs + t * BH, s.cn = cache.cs + (t + 1) * BH;
        s.gates = cache.gates ? cache.gates + t * B * GH : nullptr;
        s.aux = cache.aux ? cache.aux + t * BH : nullptr;
        s.dy = dy ? dy + t * BP : nullptr;
        s.dg = dgc + (t - t0) * B * LDG, s.dgh = dgr + (t - t0) * B * LDG;
        s.dht = proj ? dhc + (t - t0) * BP : nullptr;
        s.dgh_next = next;
        s.ln = ln ? cache.ln + t * B * LW : nullptr;
        for (int ph = 0; ph < phases; ++ph) {
          const Range b = phase_share(ph, ln, proj, true, {jb0, jb1}, {pb0, pb1}, {rb0, rb1});
          if (b.first < b.second) ck.backward_phase(sc, s, ph, b.first, b.second);  // as above
          team.sync(tid);
          mine();
        }
        next = s.dgh;
      }
      // The chunk's share of the weight gradients (each thread its column blocks of dW; the
      // first chunk assigns, the others add) and of dx. The next chunk's steps write the other
      // buffer, and its first sync waits for every member to be done with this one.
      const bool add = c > 0 || acc;
      // This thread's column blocks of dW_ih and dW_hh, and of dx, with the steps' tiles.
      if (!defer) {
        W* xq = xpan.get();
        kt.pack_backward(xq, x + t0 * B * I, rows, I, I, 0, ib0, ib1);
        // Whatever x holds at a padded step (NaN included) must not reach dW_ih, as 0 * NaN
        // would: its rows of the panels are zeroed.
        for (int64_t q = 0; t1 > shortest && q < rows; ++q)
          if (t0 + q / B >= lengths[q % B]) kt.zero_row(xq, rows, q, ib0, ib1);
        const WeightRows<F> r{dgc, dgr, LDG, rows, cache.hs + t0 * BP,  // h_{t-1}
                              cache.aux ? cache.aux + t0 * BH : nullptr, false};
        // layer norm: the epilogues sum the biases' gradients
        weight_products(kt, r, xq, hpan.get(), apan.get(), I, H, P, GH, split_row, blk, g, add,
                        g.db_ih && !ln, two, acc, team, tid);
        if (proj) {  // dW_hr (P, H) (+)= dh^T m over the chunk's rows (dh is 0 on padded ones)
          kt.pack_backward(apan.get(), cache.aux + t0 * BH, rows, H, H, 0, hb0, hb1);
          kt.product(dhc, P, true, P, apan.get(), rows, H, g.dw_hr, H, add, hb0, hb1);
        }
      }
      if (g.dx)  // else not wanted
        kt.product(dgc, LDG, false, rows, sc.wi, GH, I, g.dx + t0 * B * I, I, false, ib0, ib1);
    }
    if (ck.backward_finish) ck.backward_finish(sc, s, jb0, jb1);  // what the phases left
    // dh0 = dh + dgh_0 W_hh (its main gates' rows), this member's blocks of P: the product's
    // two-block tiles (12 FMAs per 8 loads; one block per tile: 8 per 9).
    const int64_t q0 = pb0 * NBK, q1 = std::min(pb1 * NBK, P);  // its columns of dh0
    for (int64_t b = 0; q0 < q1 && b < B; ++b)
      std::memcpy(g.dh0 + b * P + q0, s.dh + b * P + q0, (q1 - q0) * sizeof(F));
    if (next)
      kt.product(next, LDG, false, B, sc.wb, split_row, P, g.dh0, P, true, pb0, pb1);
  }, /*late_join=*/true);
  if (lstm) std::memcpy(g.dc0, dc.get(), BH * sizeof(F));
  if (defer) {  // one chunk of one step: its rows in dg (and dgh)
    g.rows->impl().append(cell, I, P, H, LDG, two, B, x, cache.hs, split_row < GH ? cache.aux
                                                                                  : nullptr,
                          dg.get(), two ? dgh.get() : nullptr);
    return;
  }
  // Without gru's recurrent-side dgates both biases have the same gradient: summed once (layer
  // norm: da, by the epilogues; with accumulate, added to both: the caller's sums may differ).
  if (dbias) {
    for (int64_t r = 0; r < GH; ++r) g.db_ih[r] += dbias[r], g.db_hh[r] += dbias[r];
  } else if (g.db_ih && (!two || ln) && !acc) {
    std::memcpy(g.db_hh, g.db_ih, GH * sizeof(F));
  }
}

}  // namespace

template <class F>
void backward(const Pack<F>& w, Dims d, const F* x, const int64_t* lengths,
              const Cache<F>& cache, const F* dy, const F* dh_n, const F* dc_n, Grads<F> g) {
  w.impl().with([&](auto& pk) { run_backward(pk, d, x, lengths, cache, dy, dh_n, dc_n, g); });
}

namespace {

template <class F, class W>
void run_weight_gradients(const Panels<F, W>& pk, const GradRows<F>& rows, Grads<F> g) {
  const auto& r = rows.impl();
  const Cell cell = pk.cell;
  const int64_t I = pk.I, H = pk.H, P = pk.P, GH = gates(cell) * H;
  const CellTraits& ct = cell_traits(cell);
  const bool acc = g.accumulate, two = ct.recurrent_dgates;
  if (r.n > 0 && (r.cell != cell || r.I != I || r.H != H || r.P != P))
    throw std::invalid_argument("weight_gradients: the rows were kept for another cell or sizes");
  if ((g.db_ih != nullptr) != pk.bias || (g.db_hh != nullptr) != pk.bias)
    throw std::invalid_argument("weight_gradients: db_ih and db_hh must be given exactly when "
                                "the pack has biases");
  if (r.n == 0) {  // no rows: zero gradients
    if (acc) return;
    std::memset(g.dw_ih, 0, GH * I * sizeof(F));
    std::memset(g.dw_hh, 0, GH * P * sizeof(F));
    if (g.db_ih) std::memset(g.db_ih, 0, GH * sizeof(F)), std::memset(g.db_hh, 0, GH * sizeof(F));
    return;
  }
  const KernelTable<F, W>& kt = *pk.kt;
  const int64_t R = GradRows<F>::Impl::R, NBK = kt.nb, split_row = ct.main_gates * H;
  const int64_t nblk = blocks(H, kt), nblk_i = blocks(I, kt), nblk_p = blocks(P, kt);
  Buffer<W> xpan(nblk_i * NBK * R), hpan(nblk_p * NBK * R);  // (blocks, R, NB) panels of a block
  Buffer<W> apan(split_row < GH ? nblk * NBK * R : 0);       // of rows
  parallel(threads_for(Dims{1, r.n, I, H, 0}, GH, nblk), [&](int tid, Team& team) {
    if (tid == 0)  // the workers that have not started by now sit the call out
      while (team.take_over() >= 0) {
      }
    team.begin(tid);
    int64_t blk[6];
    column_blocks(team, tid, nblk_i, nblk_p, nblk, blk);
    for (size_t k = 0; k < r.blocks.size(); ++k) {  // in order: the sums' order is fixed
      const auto& b = r.blocks[k];
      // The members do not sync between blocks, so each keeps its panels where R rows of its
      // first column block b0 would start (panel jb of n rows at base + jb * n * NB, base =
      // buf + b0 * (R - n) * NB): a member already packing a shorter last block never writes
      // over the panels another still reads for the block before.
      auto own = [&](const Buffer<W>& buf, int64_t b0) {
        return buf.get() ? buf.get() + b0 * (R - b.n) * NBK : nullptr;
      };
      W* xq = own(xpan, blk[0]);
      kt.pack_backward(xq, b.x, b.n, I, I, 0, blk[0], blk[1]);
      const WeightRows<F> wr{b.dg, two ? b.dgr : b.dg, R, b.n, b.h, b.aux, true};
      weight_products(kt, wr, xq, own(hpan, blk[2]), own(apan, blk[4]), I, H, P, GH, split_row,
                      blk, g, k > 0 || acc, g.db_ih != nullptr, two, acc, team, tid);
    }
  });
  if (g.db_ih && !two && !acc) std::memcpy(g.db_hh, g.db_ih, GH * sizeof(F));
}

}  // namespace

template <class F>
void weight_gradients(const Pack<F>& w, const GradRows<F>& rows, Grads<F> g) {
  w.impl().with([&](auto& pk) { run_weight_gradients(pk, rows, g); });
}

#define RNNKERN_INSTANTIATE(F)                                                                  \
  template void forward<F>(Cell, Dims, const F*, const F*, const F*, Params<F>, const int64_t*, \
                           F*, F*, F*, const Cache<F>*, Precision);                             \
  template void backward<F>(Cell, Dims, const F*, Params<F>, const int64_t*,                    \
                            const Cache<F>&,                                            \
                            const F*, const F*, const F*, Grads<F>, Precision);         \
  template class Pack<F>;                                                                       \
  template int call_threads<F>(Cell, Dims);                                                     \
  template void forward<F>(const Pack<F>&, Dims, const F*, const F*, const F*, const int64_t*,  \
                           F*, F*, F*, const Cache<F>*);                                        \
  template void backward<F>(const Pack<F>&, Dims, const F*, const int64_t*, const Cache<F>&,    \
                            const F*, const F*, const F*, Grads<F>);                    \
  template class GradRows<F>;                                                                   \
  template void weight_gradients<F>(const Pack<F>&, const GradRows<F>&, Grads<F>);
RNNKERN_INSTANTIATE(float)
RNNKERN_INSTANTIATE(double)

}  // namespace rnnkern
