// Whole stacks, L layers x D directions, in one call (rnnkern.hpp, stack_forward): the layers one
// after another on the packed kernels, a layer's directions side by side or each with the team,
// and the copies between them (the reverse direction's time map, the directions' columns of a
// layer's output, dropout masks, the sum of the directions' input gradients) done here, split
// over the threads when large, inside each direction's job when the directions run side by side.
//
// Not a wavefront: layer l+1 does not start before layer l ends. With D = 2 it cannot (layer
// l+1's step 0 needs layer l's reverse direction's last step); with D = 1 a layer per thread
// was measured slower on this project's 2-core machine than each layer on the team (T = 100,
// B = 1, H = 256: a layer 1.15 ms on one thread, 0.44 ms on two; docs/design.md).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "rnnkern/rnnkern.hpp"
#include "scratch.hpp"
#include "threads.hpp"

namespace rnnkern {
namespace {

// The reverse direction's time map: step t of row b in its kernel's order is step rev(t, b) of
// the sequence, each reversed within its own length, padded steps in place; an involution.
struct Reverse {
  int64_t T;
  const int64_t* lengths;  // (B,) or null
  int64_t operator()(int64_t t, int64_t b) const {
    if (!lengths) return T - 1 - t;
    return t < lengths[b] ? lengths[b] - 1 - t : t;
  }
};

// fn(t0, t1) over the steps [0, T), split over the threads when the rows hold many elements
// (inside a job of concurrently(), on the job's thread alone).
template <class Fn>
void over_steps(int64_t T, int64_t elems_per_step, const Fn& fn) {
  const int64_t want = elems_per_step * T >= (int64_t(1) << 16) ? get_num_threads() : 1;
  const int n = static_cast<int>(std::min<int64_t>(want, T));
  if (n <= 1) return fn(int64_t(0), T);
  concurrently(n, [&](int i) {
    int64_t a, e;
    split(T, i, n, &a, &e);
    fn(a, e);
  });
}

struct StackShape {
  Cell cell;
  int64_t I, H, P;  // layer 0's input size, hidden size, the size of h
  bool proj, lstm;
};

// The stack's sizes, after checking that the packs form one (std::invalid_argument).
template <class F>
StackShape stack_shape(const Pack<F>* const* packs, int L, int D, bool backward) {
  if (L < 1 || (D != 1 && D != 2))
    throw std::invalid_argument("stack: layers must be >= 1 and directions 1 or 2");
  for (int k = 0; k < L * D; ++k)
    if (!packs[k]) throw std::invalid_argument("stack: packs[" + std::to_string(k) + "] is null");
  const Pack<F>& p0 = *packs[0];
  StackShape s{p0.cell(), p0.input_size(), p0.hidden_size(), p0.output_size(), p0.has_projection(),
             cell_traits(p0.cell()).cell_state};
  for (int k = 0; k < L * D; ++k) {
    const Pack<F>& p = *packs[k];
    const int64_t in = k < D ? s.I : D * s.P;
    const std::string at = "stack: packs[" + std::to_string(k) + "]";
    if (p.cell() != s.cell || p.hidden_size() != s.H || p.output_size() != s.P ||
        p.has_projection() != s.proj || p.precision() != p0.precision())
      throw std::invalid_argument(at + ": not the cell, sizes and precision of packs[0]");
    if (p.input_size() != in)
      throw std::invalid_argument(at + ": input size " + std::to_string(p.input_size()) +
                                  ", expected " + std::to_string(in));
    if (!(backward ? p.for_backward() : p.for_forward()))
      throw std::invalid_argument(at + ": not made for the " +
                                  (backward ? "backward" : "forward"));
  }
  return s;
}

// job(d) for each direction of a layer of calls of sizes `d`: side by side when each would run
// on one thread (rnnkern.hpp, concurrently), else one after the other.
template <class F, class Job>
void directions(Cell cell, Dims d, int D, const Job& job) {
  if (D > 1 && call_threads<F>(cell, d) == 1) concurrently(D, job);
  else
    for (int i = 0; i < D; ++i) job(i);
}

}  // namespace

template <class F>
void stack_forward(const Pack<F>* const* packs, int L, int D, int64_t T, int64_t B,
                   const StackForward<F>& a) {
  const StackShape s = stack_shape(packs, L, D, false);
  const bool training = a.caches != nullptr;
  if (training != (a.inputs != nullptr))
    throw std::invalid_argument("stack_forward: inputs and caches: both or neither");
  const int64_t P = s.P, BP = B * P, BH = B * s.H, W = D * P;  // W: a layer's output features
  const Reverse rev{T, a.lengths};
  Buffer<F> ys(D == 2 ? 2 * T * BP : 0);  // (2, T, B, P): each direction's y, its kernel's order
  // inference: (T, B, max(I, D*P)) the reverse direction's input; (min(L-1, 2), T, B, D*P) the
  // layers' outputs, alternating
  Buffer<F> xr(D == 2 && !training ? T * B * std::max(s.I, W) : 0);
  Buffer<F> outs(training ? 0 : std::min(L - 1, 2) * T * B * W);
  const F* in = a.x;  // (T, B, F_l): layer l's input
  for (int l = 0; l < L; ++l) {
    const int64_t Fl = l ? W : s.I;
    F* out = l == L - 1 ? a.y : training ? a.inputs[(l + 1) * D] : outs.get() + (l & 1) * T * B * W;
    const F* mask = l < L - 1 && a.masks ? a.masks[l] : nullptr;  // (T, B, D*P) or null
    const Dims dl{T, B, Fl, s.H, s.proj ? P : 0};
    directions<F>(s.cell, dl, D, [&](int dir) {
      const int k = l * D + dir;
      const F* xk = in;  // (T, B, F_l) in the kernel's order
      if (dir == 1) {
        F* r = training ? a.inputs[k] : xr.get();
        over_steps(T, B * Fl, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t)
            for (int64_t b = 0; b < B; ++b)
              std::copy_n(in + (rev(t, b) * B + b) * Fl, Fl, r + (t * B + b) * Fl);
        });
        xk = r;
      }
      F* yk = D == 1 ? out : ys.get() + dir * T * BP;  // (T, B, P)
      forward(*packs[k], dl, xk, a.h0 ? a.h0 + k * BP : nullptr,
              a.c0 && s.lstm ? a.c0 + k * BH : nullptr, a.lengths, yk, a.h_n + k * BP,
              s.lstm ? a.c_n + k * BH : nullptr, training ? &a.caches[k] : nullptr);
      if (D == 1 && !mask) return;
      // out[t', b, dir*P + j] = yk[t, b, j] (* mask there), t' = t, or rev(t, b) for dir 1
      over_steps(T, BP, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t b = 0; b < B; ++b) {
            const F* src = yk + (t * B + b) * P;
            const int64_t o = ((dir ? rev(t, b) : t) * B + b) * W + dir * P;
            F* dst = out + o;
            if (mask)
              for (int64_t j = 0; j < P; ++j) dst[j] = src[j] * mask[o + j];
            else
              std::copy_n(src, P, dst);
          }
      });
    });
    in = out;
  }
}

template <class F>
void stack_backward(const Pack<F>* const* packs, int L, int D, int64_t T, int64_t B,
                    const StackBackward<F>& a) {
  const StackShape s = stack_shape(packs, L, D, true);
  const int64_t P = s.P, BP = B * P, BH = B * s.H, W = D * P;
  const Reverse rev{T, a.lengths};
  Buffer<F> dys(D == 2 ? 2 * T * BP : 0);  // (2, T, B, P): each direction's dy, its kernel's order
  // (2, T, B, max(I, D*P)): each direction's dx, its kernel's order (D = 2)
  Buffer<F> dxs(D == 2 ? 2 * T * B * std::max(s.I, W) : 0);
  Buffer<F> douts(std::min(L - 1, 2) * T * B * W);  // (.., T, B, D*P): layer outputs' gradients
  const F* d_out = a.dy;  // (T, B, D*P) or null: the gradient of layer l's output
  for (int l = L - 1; l >= 0; --l) {
    const int64_t Fl = l ? W : s.I;
    const bool want_dx = l > 0 || a.dx;
    // (T, B, F_l): the gradient of layer l's input; for l > 0, of layer l-1's output after its
    // mask, so multiplied by it
    F* dst = l == 0 ? a.dx : douts.get() + ((L - 1 - l) & 1) * T * B * W;
    const F* mask = l > 0 && a.masks ? a.masks[l - 1] : nullptr;
    const Dims dl{T, B, Fl, s.H, s.proj ? P : 0};
    directions<F>(s.cell, dl, D, [&](int dir) {
      const int k = l * D + dir;
      const F* dyk = d_out;  // (T, B, P) in the kernel's order, or null
      if (D == 2 && d_out) {
        F* g = dys.get() + dir * T * BP;
        over_steps(T, BP, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t)
            for (int64_t b = 0; b < B; ++b)
              std::copy_n(d_out + ((dir ? rev(t, b) : t) * B + b) * W + dir * P, P,
                          g + (t * B + b) * P);
        });
        dyk = g;
      }
      Grads<F> g = a.grads[k];
      g.dx = !want_dx ? nullptr : D == 1 ? dst : dxs.get() + dir * T * B * Fl;
      g.dh0 = a.dh0 + k * BP;
      g.dc0 = s.lstm ? a.dc0 + k * BH : nullptr;
      backward(*packs[k], dl, a.inputs[k], a.lengths, a.caches[k], dyk,
               a.dh_n ? a.dh_n + k * BP : nullptr, a.dc_n && s.lstm ? a.dc_n + k * BH : nullptr,
               g);
    });
    if (!want_dx) break;
    if (D == 2 || mask) {
      // dst[t, b] = (dx_0[t, b] + dx_1[rev(t, b), b]) * mask[t, b] (D = 1: dst *= mask)
      const F* dx0 = D == 2 ? dxs.get() : dst;
      const F* dx1 = dxs.get() + T * B * Fl;
      over_steps(T, B * Fl, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t b = 0; b < B; ++b) {
            const int64_t o = (t * B + b) * Fl;
            const F* u = dx0 + o;
            const F* v = D == 2 ? dx1 + (rev(t, b) * B + b) * Fl : nullptr;
            F* z = dst + o;
            for (int64_t j = 0; j < Fl; ++j) {
              F sum = v ? u[j] + v[j] : u[j];
              z[j] = mask ? sum * mask[o + j] : sum;
            }
          }
      });
    }
    d_out = dst;
  }
}

template void stack_forward<float>(const Pack<float>* const*, int, int, int64_t, int64_t,
                                   const StackForward<float>&);
template void stack_forward<double>(const Pack<double>* const*, int, int, int64_t, int64_t,
                                    const StackForward<double>&);
template void stack_backward<float>(const Pack<float>* const*, int, int, int64_t, int64_t,
                                    const StackBackward<float>&);
template void stack_backward<double>(const Pack<double>* const*, int, int, int64_t, int64_t,
                                     const StackBackward<double>&);

}  // namespace rnnkern
