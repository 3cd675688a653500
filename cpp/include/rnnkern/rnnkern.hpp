// rnnkern: fused CPU kernels for recurrent networks. Public C++ API (no Python here).
//
// Conventions (as in PyTorch): time-major x (T, B, I); weights w_ih (G*H, I), w_hh (G*H, H),
// biases (G*H,), gate blocks of H rows: LSTM i, f, g, o; GRU r, z, n; RNN one gate.
// All arrays are dense row-major; a null optional pointer means "absent" (zeros / no bias).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace rnnkern {

enum class Cell : int {
  rnn_tanh = 0,
  rnn_relu = 1,
  rnn_sigmoid = 2,
  lstm = 3,
  gru = 4,     // n = tanh(W_in x + b_in + r * (W_hn h + b_hn))  (linear before reset, PyTorch)
  gru_rh = 5,  // n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)  (ONNX default, Keras reset_after=False)
};

constexpr int num_cells = 6;

// What the driver, the bindings and Python know about a cell: one record per cell, its values in
// the cell's own file (cpp/kernels/cells/<cell>.hpp), bound to Python as rnnkern._core.cells().
struct CellTraits {
  const char* name;        // the id's name: "rnn_tanh", "lstm", "gru_rh", ...
  const char* family;      // the functional API's cell: "rnn", "lstm" or "gru"
  const char* gate_names;  // the gate blocks in row order, space-separated: "i f g o"
  const char* activation;  // rnn: "tanh", "relu" or "sigmoid"; others: ""
  int gates;               // G: blocks of H rows in w_ih, w_hh and the biases
  int main_gates;          // of them, those whose W_hh rows multiply h_{t-1} in the fused
                           // product; the rest multiply the cached aux (gru_rh: n, W_hn (r*h))
  int phases;              // fused products (and team syncs) per step
  bool cell_state;         // has c: c0, c_n, and the cache's cs (T+1, B, H)
  bool cache_gates;        // the cache keeps the gate activations (T, B, G*H)
  const char* aux;         // what the cache's aux (T, B, H) holds, "" when it has none
  bool separate_b_hn;      // b_hh's last block stays inside r * (W_hn h + b_hn): it is not
                           // folded into the input side's bias
  bool recurrent_dgates;   // the backward's dgates that multiply W_hh differ from the input
                           // side's (gru: the n block is dn * r), so they get their own buffer
  bool peepholes = false;  // takes peephole weights Params::w_peep (3, H) (lstm)
  bool projection = false;  // takes a projection Params::w_hr (P, H) (lstm)
};
const CellTraits& cell_traits(Cell cell);  // std::invalid_argument for an unknown cell
int gates(Cell cell);                      // cell_traits(cell).gates

struct Dims {
  int64_t T, B, I, H;
  int64_t P = 0;  // LSTM with a projection w_hr: the size of h and y; 0: none (h has size H)
};
inline int64_t h_size(Dims d) { return d.P ? d.P : d.H; }  // the size of h and y: P or H

// The products' precision. native: the arrays' own type (float or double). bf16 (float arrays
// only): both operands of every product (weights; x, h_{t-1}, gru_rh's r * h_{t-1}; in the
// backward the dgates, x and h_{t-1}) rounded to bfloat16 (to nearest, ties to even), summed in
// float; biases, states, the gate math and gradients stay float. The weights are stored as bf16.
// int8 (float arrays, forward only): weights quantized per gate row to 7-bit symmetric int8 at
// packing, x and h_{t-1} (gru_rh: r * h_{t-1}) per row to u8 with a zero point at each chunk
// or step; exact int32 sums, dequantized to float (docs/precision.md).
enum class Precision : int { native = 0, bf16 = 1, int8 = 2 };

// What forward(training) keeps for backward; element counts, 0 when a buffer is not used.
struct CacheLayout {
  int64_t hs;     // (T+1, B, P): h0 then the state after each step (P = h_size: H or w_hr's)
  int64_t cs;     // (T+1, B, H): LSTM cell states
  int64_t gates;  // (T, B, G*H): gate activations (LSTM i f g o; GRU r z n)
  int64_t aux;    // (T, B, H): GRU: W_hn h + b_hn (gru) or r * h (gru_rh); projected LSTM:
                  // m_t = o tanh(c_t), the input of the projection
};
// A layer-normalized LSTM's cache row per (t, b) (Cache::ln, (T, B, ln_width(H))): the
// normalized W_ih x_t and W_hh h_{t-1} (4H each), N(c_t) (H), then rstd of the three.
inline int64_t ln_width(int64_t H) { return 9 * H + 3; }
CacheLayout cache_layout(Cell cell, Dims d);

template <class F>
struct Params {
  const F* w_ih;  // (G*H, I)
  const F* w_hh;  // (G*H, H)
  const F* b_ih;  // (G*H,) or null
  const F* b_hh;  // (G*H,) or null
  const F* w_peep = nullptr;  // LSTM only: (3, H) peepholes p_i, p_f, p_o, or null (none):
                              // i, f see p_i c_{t-1}, p_f c_{t-1}; o sees p_o c_t (ONNX's P)
  const F* w_hr = nullptr;  // LSTM only: (P, H) projection h_t = W_hr (o tanh(c_t)), or null;
                            // then w_hh is (G*H, P) and h, y have size P (PyTorch's proj_size)
  int64_t P = 0;            // w_hr's rows (>= 1 with w_hr)
  // LSTM only, both or neither (docs/lstm_variants.md): layer normalization of W_ih x_t and
  // W_hh h_{t-1} over 4H with gains ln_gates (2, 4H), and of c_t over H before the output tanh
  // with gain and shift ln_cell (2, H). No projection with it.
  const F* ln_gates = nullptr;
  const F* ln_cell = nullptr;
};

template <class F>
struct Cache {
  F* hs;
  F* cs;
  F* gates;
  F* aux;
  F* ln = nullptr;  // (T, B, ln_width(H)): layer-normalized LSTM only (ln_width)
};

template <class F>
class GradRows;

template <class F>
struct Grads {
  F* dx;     // (T, B, I), or null: not computed (the input needs no gradient)
  F* dh0;    // (B, H)
  F* dc0;    // (B, H), LSTM only (else null)
  F* dw_ih;  // (G*H, I)
  F* dw_hh;  // (G*H, H)
  F* db_ih;  // (G*H,) or null
  F* db_hh;  // (G*H,) or null
  F* dw_peep = nullptr;  // (3, H): non-null exactly when the weights have peepholes
  F* dw_hr = nullptr;    // (P, H): non-null exactly when the weights have a projection
  F* dln_gates = nullptr;  // (2, 4H), and dln_cell (2, H): non-null exactly when the weights
  F* dln_cell = nullptr;   // have layer normalization
  // The weight gradients (dw_ih ... dw_hr, dln_gates, dln_cell) are added to, not overwritten: the one-step loops of
  // cells sum their steps' gradients in the caller's buffers (dx, dh0, dc0 are overwritten).
  bool accumulate = false;
  // Non-null: a one-step backward (d.T = 1, no lengths, no projection, no layer norm) keeps the
  // rows its weight gradients need here instead (dw_ih, dw_hh, db_ih, db_hh are then unused):
  // weight_gradients() does one product per pass over every step kept.
  GradRows<F>* rows = nullptr;
};

// What the weight gradients of one-step backwards need (Grads::rows): their dgates, x and
// h_{t-1} (gru's r * h_{t-1} too), kept in blocks of rows, so that a cell's training loop does
// one product per pass over all its steps instead of adding (G*H, I + H) per step.
template <class F>
class GradRows {
 public:
  struct Impl;  // defined in cpp/src
  GradRows();
  ~GradRows();
  GradRows(const GradRows&) = delete;
  GradRows& operator=(const GradRows&) = delete;
  int64_t rows() const;  // rows kept (a step of batch B keeps B)
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// y (T, B, P), h_n (B, P), c_n (B, H) for LSTM (P = h_size(d): d.P with w_hr, else H; d.P
// must be p.P with w_hr, else 0); h0 (B, P), c0 (B, H) or null; lengths (B,) in 1..T or
// null. cache null = inference (O(B*H) workspace, nothing per step); else filled for backward.
template <class F>
void forward(Cell cell, Dims d, const F* x, const F* h0, const F* c0, Params<F> p,
             const int64_t* lengths, F* y, F* h_n, F* c_n, const Cache<F>* cache,
             Precision prec = Precision::native);

// dy (T, B, P), dh_n (B, P), dc_n (B, H): each may be null (zero); dh0 (B, P), dw_hh (G*H, P).
// Overwrites every non-null gradient, or adds to the weight gradients (g.accumulate).
template <class F>
void backward(Cell cell, Dims d, const F* x, Params<F> p, const int64_t* lengths,
              const Cache<F>& cache, const F* dy, const F* dh_n, const F* dc_n, Grads<F> g,
              Precision prec = Precision::native);

// One (layer, direction)'s weights packed once for the kernels of the ISA in use, for many
// forward and backward calls: forward panels of W_hh and W_ih, and (for training) backward
// panels of W_hh and of W_ih (for dx), and the biases. A copy: later changes to the arrays it
// was made from do not reach it. Immutable once made, so any number of threads may use it at
// once. It runs on the kernels it was packed for, even after set_isa chose others.
template <class F>
class Pack {
 public:
  struct Impl;  // defined in cpp/src (panels, kernel table)
  // w_ih (G*H, I), w_hh (G*H, H) (with p.w_hr (P, H): (G*H, P)), biases (G*H,) or both null.
  // I >= 0, H >= 0. prec bf16 or int8 with F = double, int8 with for_backward:
  // std::invalid_argument.
  Pack(Cell cell, int64_t I, int64_t H, Params<F> p, bool for_forward = true,
       bool for_backward = true, Precision prec = Precision::native);
  explicit Pack(std::unique_ptr<Impl> impl);
  ~Pack();
  Pack(const Pack&) = delete;
  Pack& operator=(const Pack&) = delete;
  Cell cell() const;
  int64_t input_size() const;
  int64_t hidden_size() const;
  bool has_bias() const;
  bool has_peepholes() const;
  bool has_layer_norm() const;
  int64_t output_size() const;  // P, the size of h: w_hr's rows, else H
  bool has_projection() const;  // made with w_hr (then calls take Dims::P = output_size())
  bool for_forward() const;
  bool for_backward() const;
  std::string isa() const;  // the kernels it was packed for
  Precision precision() const;
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// As forward/backward below with the weights of `w` (d.I and d.H must be its sizes, and it must
// have been made for_forward / for_backward; std::invalid_argument otherwise). The same bits as
// the calls that take the weights' arrays, which pack them, then run these.
template <class F>
void forward(const Pack<F>& w, Dims d, const F* x, const F* h0, const F* c0,
             const int64_t* lengths, F* y, F* h_n, F* c_n, const Cache<F>* cache);
// g.db_ih and g.db_hh must be non-null exactly when w has biases, g.dw_peep when it has
// peepholes, g.dw_hr when it has a projection, g.dln_gates and g.dln_cell (and cache.ln) when
// it has layer normalization.
template <class F>
void backward(const Pack<F>& w, Dims d, const F* x, const int64_t* lengths,
              const Cache<F>& cache, const F* dy, const F* dh_n, const F* dc_n, Grads<F> g);

// The weight gradients of the rows kept (g.dw_ih, g.dw_hh, and g.db_ih, g.db_hh when w has
// biases; the other fields unused), overwritten or added to (g.accumulate). w: the pack that
// the rows' backwards ran with (std::invalid_argument if its cell or sizes differ).
template <class F>
void weight_gradients(const Pack<F>& w, const GradRows<F>& rows, Grads<F> g);

// A whole stack in one call: L layers x D directions (D = 1 or 2) of one cell, packs[k] for
// (layer l, direction d), k = l*D + d, all of one cell, dtype, H and P (output_size), layer 0's
// of input size I, later layers' of D*P. PyTorch's layout: the reverse direction (d = 1) runs
// each sequence backwards within its own length (padded steps stay in place), reading its input
// and writing its output through that time map; a layer's output (T, B, D*P) has the forward
// direction's P features first; masks[l] (dropout) multiplies layer l's output for l < L-1.
// The directions of a layer run side by side when each is too small for a team of threads
// (call_threads 1, as concurrently()), else one after the other with the whole team. The same
// bits as running the layers one by one with forward(pack, ...) and these copies, on any number
// of threads. std::invalid_argument for packs that do not form such a stack.
template <class F>
struct StackForward {
  const F* x;              // (T, B, I)
  const F* h0;             // (L*D, B, P) or null (zeros)
  const F* c0;             // (L*D, B, H) or null (zeros; lstm only)
  const int64_t* lengths;  // (B,) in 1..T, or null
  const F* const* masks;   // L-1 pointers (T, B, D*P), each null for no dropout there; or null
  F* y;                    // (T, B, D*P): the last layer's output, zero past each length
  F* h_n;                  // (L*D, B, P)
  F* c_n;                  // (L*D, B, H) (lstm, else null)
  // Training: both non-null (inference: both null, the copies in scratch). inputs[k] gets the
  // input (T, B, F_l) as k's kernel reads it, for stack_backward: for d = 0 of l >= 1, layer
  // l-1's output after its mask; for d = 1, the layer's input reversed per sequence; inputs[0]
  // is not written (layer 0's d = 0 reads x). caches[k]: k's cache (cache_layout).
  F* const* inputs;
  const Cache<F>* caches;
};
template <class F>
void stack_forward(const Pack<F>* const* packs, int L, int D, int64_t T, int64_t B,
                   const StackForward<F>& a);

template <class F>
struct StackBackward {
  const F* const* inputs;  // L*D (T, B, F_l): x for k = 0, then stack_forward's inputs
  const int64_t* lengths;  // the forward's
  const F* const* masks;   // the forward's
  const Cache<F>* caches;  // L*D: the forward's
  const F* dy;    // (T, B, D*P) or null (zero)
  const F* dh_n;  // (L*D, B, P) or null
  const F* dc_n;  // (L*D, B, H) or null (lstm)
  F* dx;          // (T, B, I), or null: not computed (layer 0's input product skipped)
  F* dh0;         // (L*D, B, P)
  F* dc0;         // (L*D, B, H) (lstm, else null)
  const Grads<F>* grads;  // L*D: each's weight gradients and accumulate (dx, dh0, dc0 unused)
};
template <class F>
void stack_backward(const Pack<F>* const* packs, int L, int D, int64_t T, int64_t B,
                    const StackBackward<F>& a);

// softmax over the last axis of z (N, C) -> out (N, C).
template <class F>
void softmax(int64_t N, int64_t C, const F* z, F* out);

// Mean cross-entropy over rows whose target != ignore_index; dlogits (N, C) = (softmax - onehot)
// / count (zero rows for ignored targets). targets are pre-checked to be in range. Returns loss.
template <class F>
double softmax_cross_entropy(int64_t N, int64_t C, const F* logits, const int64_t* targets,
                             int64_t ignore_index, F* dlogits);

// The threads a forward or backward call of these sizes plans for (before get_num_threads()
// caps it): 1 for calls too small to gain from a team.
template <class F>
int call_threads(Cell cell, Dims d);

// Runs job(i) for every i in [0, n) with the jobs spread over the threads (up to n of them, the
// caller's included); the parallel regions inside a job run on its thread alone. For independent
// calls too small to use every thread each, e.g. the two directions of a bidirectional layer at
// batch 1: each runs without per-step syncs, side by side. Results are the same bits as running
// the jobs one by one. A job's exception reaches the caller (after every job has ended).
void concurrently(int n, const std::function<void(int i)>& job);

// Memory for the kernels' work buffers and the bindings' result arrays: a 64-byte aligned,
// uninitialized block of at least `bytes`, its true size in *capacity (std::bad_alloc if none).
// Released blocks of kScratchMin bytes or more are kept (up to a cap) for later calls, so that
// memory a call or its caller freed is reused without page faults (scratch.cpp); smaller ones
// come from malloc's heap, without faults anyway.
inline constexpr size_t kScratchMin = size_t(64) << 10;
void* scratch_acquire(size_t bytes, size_t* capacity);
void scratch_release(void* p, size_t capacity);

void set_num_threads(int n);  // n >= 1; calls use at most min(n, CPUs available, 16) threads
int get_num_threads();        // the threads a call may use
// Whose threads run the parallel regions: "rnnkern" (its own pool), "openmp" (the threads of a
// GNU-compatible OpenMP runtime already loaded in the process, e.g. PyTorch's: they keep spinning
// after each of the library's parallel regions, and joining them beats competing with them for
// the cores) or "auto" (the default: "openmp" once such a runtime is loaded, else "rnnkern").
void set_thread_runtime(const std::string& name);  // throws std::invalid_argument
std::string thread_runtime();                      // "rnnkern" or "openmp"
// What the thread pool did since the process started.
struct ThreadStats {
  int64_t team_calls;  // calls run by a team of threads
  int64_t openmp_calls;  // of which on an OpenMP runtime's threads
  int64_t taken_over;  // workers' shares done by the caller (the worker had not started)
  int64_t shrunk;      // team calls whose team shrank to the caller (a member was descheduled)
  int64_t joined_late;  // workers taken over that then joined their call at a later step
  int64_t started_alone;  // team calls started on the caller alone: a recent call had shrunk
};
ThreadStats thread_stats();
// For the tests only: every worker sleeps start_ns before it joins a call (so the caller takes
// its share over) and sync_ns at its sync_at-th step of each call (so the team shrinks); zeros
// turn it off.
void set_test_delays(int64_t start_ns, int64_t sync_ns, int sync_at);
std::string isa();        // the ISA whose kernels run: "scalar", "avx2" or "avx512"
std::string kernel_isa(Precision prec);  // the ISA whose kernels run that precision's products
std::string supported_isas();  // comma-separated list this CPU can run
void set_isa(const std::string& name);  // throws std::invalid_argument if unknown/unsupported

}  // namespace rnnkern
