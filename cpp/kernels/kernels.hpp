// The kernel layer's three axes (internal header: cpp/src and cpp/kernels only).
//   cell:      cpp/kernels/cells/<cell>.hpp, one file per cell: its traits (rnnkern::CellTraits)
//              and its pointwise forward and backward side by side; cells/all.hpp lists them.
//   ISA:       cpp/kernels/kernels_<isa>.cpp compiles kernels_impl.hpp (the packing, the panel
//              product, the input projection; every cell's epilogues) with the ISA's flags.
//   precision: a table's (F, W): F the activations' and the arithmetic's type, W the panels'
//              (the weights' and the products' other operand): (float, float), (double,
//              double), (float, bf16), (float, int8_t); dispatch.cpp keeps one table per
//              (precision, ISA), filled once, and picks the row of the ISA in use.
//
// W_hh is packed once per call into panels, one panel per block of NB hidden units (NB = the
// vector width): forward panel (K = H, NV gates, NB) so that one pass over a panel gives every
// gate of those units; backward panel (K = rows of the gates involved, 1, NB) for
// dgates @ W_hh. Threads own whole blocks, so each keeps its panels in its own cache.
#pragma once
#include <cstdint>
#include <type_traits>

#include "rnnkern/rnnkern.hpp"

namespace rnnkern {

// bfloat16 bits (the high half of a float32): the panels' element of precision "bf16", whose
// products take both operands rounded to bf16 (to nearest, ties to even) and sum in float.
using bf16 = uint16_t;

// Precision "int8" (inference) has panels of int8_t: each weight row (gate row) quantized
// symmetrically to 7 bits, q = rint(w * 63 / max|row|) in [-63, 63], with its float scale; the
// products' other operand (x, h_{t-1}, gru_rh's r * h_{t-1}) is quantized per row to u8 with a
// zero point, and the products are exact s32 sums (docs/precision.md, "int8").
constexpr int INT8_WMAX = 63;
// Elements of W in one block's forward panel (K, nv, nb): int8 pads K to whole groups of 4 k
// and appends each unit's scale (nv, nb) float and quantized row sum (nv, nb) int32.
template <class W>
constexpr int64_t panel_elems(int64_t K, int64_t nv, int64_t nb) {
  if constexpr (std::is_same_v<W, int8_t>)
    return K == 0 ? 0 : ((K + 3) / 4 * 4 + 2 * 4) * nv * nb;
  return K * nv * nb;
}

// Constant over a call.
template <class F, class W = F>
struct StepConst {
  Cell cell;
  int64_t B, H;
  const W* wf;      // forward panels, every gate except gru_rh's n (nblk, H, G', NB) (blocks
                    // panel_elems apart)
  const W* wf_n;    // gru_rh: forward panels of W_hn (nblk, H, 1, NB)
  const W* wb;      // backward panels, rows of the gates in wf (nblk, G'*H, 1, NB)
  const W* wb_n;    // gru_rh: backward panels of W_hn (nblk, H, 1, NB)
  int64_t I;
  const W* wi;      // panels of W_ih: forward (nblk, I, G, NB); backward, for dx (nblk_I, G*H, NB)
  int64_t HX;       // forward: gate stride of xp, H rounded up to whole blocks (aligned loads)
  const F* b_hn;    // gru, gru_rh: (H,) or null
  const F* xbias;   // forward: (G*H,) b_ih + b_hh, without gru's b_hn; project adds it to xp
  const int64_t* lengths;  // (B,) or null
  int64_t LDG;      // backward: row stride of dg, dgh, dgh_next (>= G*H; see the driver)
  const F* peep = nullptr;  // lstm: (3, H) peepholes p_i, p_f, p_o, or null
  F* dpeep = nullptr;  // backward with peep: (3, H) their gradients, summed over steps and batch
                       // rows by the owner of each hidden block (zeroed by the driver)
  // lstm with a projection W_hr (P, H): h has size P, wf's panels are (nblk, P, 4, NB) and wb's
  // (blocks of P, 4H, NB); a step's second phase is h_t = W_hr m_t, forward over blocks of P,
  // backward (dm_t = dh_t W_hr) over blocks of H.
  int64_t P = 0;            // the size of h: P, or H without a projection (set by the driver)
  const W* wr = nullptr;    // forward panels of W_hr (blocks of P, H, 1, NB), or null
  const W* wrb = nullptr;   // backward panels of W_hr (nblk, P, NB), or null
  // Layer-normalized lstm (docs/lstm_variants.md): two phases per step, forward and backward;
  // xbias is then zero (the normalized sums take the biases after them: ln_bias).
  const F* ln_gates = nullptr;  // (2, 4H) gains of N(W_ih x_t), N(W_hh h_{t-1}), or null
  const F* ln_cell = nullptr;   // (2, H) gain and shift of N(c_t)
  const F* ln_bias = nullptr;   // (4H,) b_ih + b_hh
  F* ln_z = nullptr;    // forward: (B, 4H) W_hh h_{t-1} of the step (phase 0 -> phase 1)
  F* ln_da = nullptr;   // backward: (B, 4H) dL/da, a = the gates' pre-activations
  F* ln_dn = nullptr;   // backward: (B, H) dL/dN(c_t) * ln_cell[0]
  F* dln_gates = nullptr;  // backward: (2, 4H), (2, H), (4H,) gradients summed over steps and
  F* dln_cell = nullptr;   // rows by the owner of each hidden block (zeroed by the driver);
  F* dbias = nullptr;      // dbias null without biases
};

// Pointers of one time step t (each thread builds its own).
template <class F>
struct Step {
  int64_t t;
  const F* xp;   // (B, G*HX): x_t W_ih^T + b_ih + b_hh (not gru's b_hn), gates HX apart
  const F* hp;   // (B, P): h_{t-1} (P = c.P)
  F* hn;         // (B, P): h_t
  const F* cp;   // (B, H): c_{t-1} (LSTM)
  F* cn;         // (B, H): c_t (LSTM)
  F* y;          // (B, P): y_t
  F* gates;      // (B, G*H): gate activations of step t (cache or scratch)
  F* aux;        // (B, H): gru: W_hn h + b_hn; gru_rh: r * h_{t-1}; projected lstm: m_t
  // backward only
  const F* dy;   // (B, P) or null
  F* dg;         // (B, G*H): dL/d(preactivation), input side, of step t
  F* dgh;        // (B, G*H): gru: recurrent-side dgates (n block is dn * r) of step t
  const F* dgh_next;  // (B, G*H): recurrent-side dgates of step t+1 (null at t = T-1)
  F* dh;         // (B, P): gradient reaching h_t besides dy_t and dgh_next W_hh
  F* dc;         // (B, H): LSTM: gradient reaching c_t
  F* dht;        // projected lstm: (B, P) the whole gradient reaching h_t (0 on padded rows)
  F* ln;         // layer-normalized lstm: (B, ln_width(H)) the cache's row of step t, or null
                 // (inference)
};

// One cell's part of a kernel table (cpp/kernels/cells/<cell>.hpp).
template <class F, class W = F>
struct CellKernels {
  // One phase of a forward step for hidden blocks [jb0, jb1) (CellTraits::phases of them).
  void (*forward_phase)(const StepConst<F, W>& c, const Step<F>& s, int phase, int64_t jb0,
                        int64_t jb1) = nullptr;
  // One phase of a backward step.
  void (*backward_phase)(const StepConst<F, W>& c, const Step<F>& s, int phase, int64_t jb0,
                         int64_t jb1) = nullptr;
  // After the backward's last step (s of step 0), for hidden blocks [jb0, jb1): what the cell's
  // phases leave one step late (layer norm's gradient sums); null for cells with nothing left.
  void (*backward_finish)(const StepConst<F, W>& c, const Step<F>& s, int64_t jb0,
                          int64_t jb1) = nullptr;
};

template <class F, class W = F>
struct KernelTable {
  const char* isa;
  int64_t nb;  // hidden units per block
  // Packing of the panels of blocks [jb0, jb1) (each thread packs its own, so they land in its
  // cache). Forward: w (rows, ldw), the gates' blocks of H rows from row gate0*H; panels
  // (K = ldw: every column of w, nv, nb) of H units, dst: nblk * (ldw*nv*nb). Backward: the
  // rows [row0, row0 + rows) of w (., ldw); panels (K = rows, nb) of `cols` columns, dst:
  // nblk * (rows*nb).
  void (*pack_forward)(W* dst, const F* w, int64_t H, int64_t ldw, int gate0, int nv,
                       int64_t jb0, int64_t jb1);
  void (*pack_backward)(W* dst, const F* w, int64_t rows, int64_t cols, int64_t ldw,
                        int64_t row0, int64_t jb0, int64_t jb1);
  // The backward's kernels (pack_backward, zero_row, product) are null in the
  // int8 table: int8 is inference only.
  // Zeroes row q of the backward panels (nblk, rows, nb) of blocks [jb0, jb1).
  void (*zero_row)(W* panels, int64_t rows, int64_t q, int64_t jb0, int64_t jb1);
  // xp (rows, G*HX) = x (rows, I) W_ih^T (gate v at columns v*HX) in the columns of hidden
  // blocks [jb0, jb1), from the panels c.wi: each thread projects the columns its steps read.
  void (*project)(const StepConst<F, W>& c, const F* x, int64_t rows, F* xp, int64_t jb0,
                  int64_t jb1);
  // out (M, N) (+)= A w in the columns of blocks [jb0, jb1), w from its backward panels
  // (nblk, K, nb); A = a (M rows, lda apart) or, with `at`, a^T (a: (K, lda), its first M
  // columns): the backward's dx = dG W_ih and weight gradients dW = dG^T X.
  void (*product)(const F* a, int64_t lda, bool at, int64_t M, const W* panels, int64_t K,
                  int64_t N, F* out, int64_t ldo, bool add, int64_t jb0, int64_t jb1);
  CellKernels<F, W> cells[num_cells];  // indexed by Cell (int8: backward_phase null)
};

// The table of precision (F, W) for the ISA in use (dispatch.cpp).
template <class F, class W = F>
const KernelTable<F, W>* kernels();

// The precisions (F, W): a kernel table per (precision, ISA).
#define RNNKERN_NATIVE_PRECISIONS(X) X(float, float) X(double, double)
#define RNNKERN_LOW_PRECISIONS(X) X(float, bf16) X(float, int8_t)
#define RNNKERN_PRECISIONS(X) RNNKERN_NATIVE_PRECISIONS(X) RNNKERN_LOW_PRECISIONS(X)

// Each ISA's table of precision (F, W) (kernels_<isa>.cpp; null when the ISA was not compiled;
// avx512's bf16 and int8 tables need AVX512_BF16 and AVX512_VNNI too: kernels_avx512_lowp.cpp).
template <class F, class W>
const KernelTable<F, W>* scalar_kernels();
template <class F, class W>
const KernelTable<F, W>* avx2_kernels();
template <class F, class W>
const KernelTable<F, W>* avx512_kernels();

}  // namespace rnnkern
