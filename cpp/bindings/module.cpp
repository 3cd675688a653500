// pybind11 bindings: argument checks, output allocation, GIL release. No kernel code here.
// The Python layer (python/rnnkern/_api.py) validates arguments with friendly messages
// first; the checks here make sure that nothing reaching the core can crash it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <cstring>
#include <vector>

#include "rnnkern/digest.hpp"
#include "rnnkern/rnnkern.hpp"

namespace py = pybind11;
using rnnkern::Cell;
using Shape = std::vector<int64_t>;

namespace {

template <class T>
bool is_dtype(const py::dtype& dt) {
  return dt.num() == py::dtype::of<T>().num() && dt.byteorder() != '>';
}

std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// The data of `o`, a C-contiguous aligned array of T with `shape`; null for None if optional.
// Read only: the core never writes to its inputs (read-only arrays are fine).
template <class T>
const T* data(const py::object& o, const char* name, const Shape& shape, bool optional = false) {
  if (o.is_none()) {
    if (optional) return nullptr;
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray, got None");
  }
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray");
  auto a = py::reinterpret_borrow<py::array>(o);
  if (!is_dtype<T>(a.dtype()))
    throw py::type_error(std::string(name) + ": dtype " + py::str(a.dtype()).cast<std::string>() +
                         " is not the call's dtype " +
                         py::str(py::dtype::of<T>()).cast<std::string>());
  Shape got(a.shape(), a.shape() + a.ndim());
  if (got != shape)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                          shape_str(got));
  const int flags = a.flags();
  if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) ||
      !(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) + ": must be C-contiguous and aligned");
  return static_cast<const T*>(a.data());
}

// The data of `o` as `data` checks it, and writeable: a buffer the core adds to.
template <class T>
T* writeable(const py::object& o, const char* name, const Shape& shape, bool optional = false) {
  const T* p = data<T>(o, name, shape, optional);
  if (p && !py::reinterpret_borrow<py::array>(o).writeable())
    throw py::value_error(std::string(name) + ": must be writeable");
  return const_cast<T*>(p);
}

// A new uninitialized C-contiguous array for a result. From kScratchMin bytes on its memory
// comes from the core's scratch pool (rnnkern::scratch_acquire): a result the caller frees goes
// back there, and the next call's results reuse it without page faults. Smaller ones are
// NumPy's own (no faults, and no capsule to pay for on a B = 1 step).
template <class T>
py::array_t<T> new_array(const Shape& shape) {
  size_t n = 1;
  for (const int64_t s : shape) n *= static_cast<size_t>(s);
  const std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  if (n * sizeof(T) < rnnkern::kScratchMin) return py::array_t<T>(dims);
  struct Block {
    void* p;
    size_t capacity;
  };
  auto block = std::make_unique<Block>();
  block->p = rnnkern::scratch_acquire(n * sizeof(T), &block->capacity);
  py::capsule owner;
  try {
    owner = py::capsule(block.get(), [](void* b) {
      const std::unique_ptr<Block> own(static_cast<Block*>(b));
      rnnkern::scratch_release(own->p, own->capacity);
    });
  } catch (...) {
    rnnkern::scratch_release(block->p, block->capacity);
    throw;
  }
  T* data = static_cast<T*>(block.release()->p);  // the capsule owns the block now
  return py::array_t<T>(dims, data, owner);
}

template <class T>
py::object array_or_none(bool present, const Shape& shape) {
  if (!present) return py::none();
  return new_array<T>(shape);
}

template <class T>
T* ptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<T*>(py::reinterpret_borrow<py::array>(o).mutable_data());
}

Cell to_cell(int id) {
  if (id < 0 || id >= rnnkern::num_cells)
    throw py::value_error("cell: unknown cell id " + std::to_string(id));
  return static_cast<Cell>(id);
}

rnnkern::Precision to_precision(int id) {
  if (id < 0 || id > 2) throw py::value_error("precision: unknown precision id " + std::to_string(id));
  return static_cast<rnnkern::Precision>(id);
}

// Every cell's traits (rnnkern::CellTraits), in id order, as dicts.
py::list cells() {
  py::list out;
  for (int id = 0; id < rnnkern::num_cells; ++id) {
    const rnnkern::CellTraits& t = rnnkern::cell_traits(static_cast<Cell>(id));
    py::dict d;
    d["id"] = id, d["name"] = t.name, d["family"] = t.family;
    d["gate_names"] = py::str(t.gate_names).attr("split")();
    d["activation"] = t.activation, d["gates"] = t.gates, d["main_gates"] = t.main_gates;
    d["phases"] = t.phases, d["cell_state"] = t.cell_state, d["cache_gates"] = t.cache_gates;
    d["aux"] = t.aux, d["separate_b_hn"] = t.separate_b_hn;
    d["recurrent_dgates"] = t.recurrent_dgates;
    d["peepholes"] = t.peepholes, d["projection"] = t.projection;
    out.append(d);
  }
  return out;
}

struct Sizes {
  rnnkern::Dims d;
  int64_t G;
};

// H (and P) from w_hh: (G*H, H), or (G*H, P) with a projection w_hr (then d.P = P).
Sizes sizes(Cell cell, const py::object& x, const py::object& w_hh, const py::object& w_hr) {
  if (!py::isinstance<py::array>(x) || py::reinterpret_borrow<py::array>(x).ndim() != 3)
    throw py::value_error("x: expected a numpy.ndarray of shape (T, B, I)");
  if (!py::isinstance<py::array>(w_hh) || py::reinterpret_borrow<py::array>(w_hh).ndim() != 2)
    throw py::value_error("w_hh: expected a numpy.ndarray of shape (G*H, H)");
  auto xs = py::reinterpret_borrow<py::array>(x).shape();
  auto ws = py::reinterpret_borrow<py::array>(w_hh).shape();
  const int64_t G = rnnkern::gates(cell);
  if (w_hr.is_none()) return {{xs[0], xs[1], xs[2], ws[1]}, G};
  if (!rnnkern::cell_traits(cell).projection)
    throw py::value_error("w_hr: only lstm has a projection");
  if (ws[0] % G || ws[1] < 1)
    throw py::value_error("w_hh: expected shape (G*H, P) with P >= 1, got " +
                          shape_str({ws[0], ws[1]}));
  return {{xs[0], xs[1], xs[2], ws[0] / G, ws[1]}, G};
}

// Params of the weights' arrays (w_hh (G*H, P) with w_hr (P, H)).
template <class F>
rnnkern::Params<F> params(Sizes z, const py::object& w_ih, const py::object& w_hh,
                          const py::object& b_ih, const py::object& b_hh,
                          const py::object& w_peep, const py::object& w_hr,
                          const py::object& ln_gates = py::none(),
                          const py::object& ln_cell = py::none()) {
  const int64_t I = z.d.I, H = z.d.H, GH = z.G * H, P = rnnkern::h_size(z.d);
  return {data<F>(w_ih, "w_ih", {GH, I}), data<F>(w_hh, "w_hh", {GH, P}),
          data<F>(b_ih, "b_ih", {GH}, true), data<F>(b_hh, "b_hh", {GH}, true),
          data<F>(w_peep, "w_peep", {3, H}, true), data<F>(w_hr, "w_hr", {P, H}, true), z.d.P,
          data<F>(ln_gates, "ln_gates", {2, GH}, true), data<F>(ln_cell, "ln_cell", {2, H}, true)};
}

// A forward's buffers for its backward: (hs, cs, gates, aux), and ln with layer norm (the
// others' caches keep their four).
py::tuple buffers_tuple(const py::object& hs, const py::object& cs, const py::object& gates,
                        const py::object& aux, const py::object& ln) {
  if (ln.is_none()) return py::make_tuple(hs, cs, gates, aux);
  return py::make_tuple(hs, cs, gates, aux, ln);
}

// lengths (B,) int64 in 1..T, or None (null).
const int64_t* checked_lengths(const py::object& lengths, int64_t T, int64_t B) {
  const int64_t* len = data<int64_t>(lengths, "lengths", {B}, true);
  for (int64_t b = 0; len && b < B; ++b)
    if (len[b] < 1 || len[b] > T) throw py::value_error("lengths: every value must be in 1..T");
  return len;
}

// A training forward's cache: new arrays (buffers_tuple's) and the core's view of them.
template <class F>
struct CacheArrays {
  py::tuple buffers;
  rnnkern::Cache<F> cache;
};

template <class F>
CacheArrays<F> new_cache(Cell cell, rnnkern::Dims d, bool ln) {
  const int64_t T = d.T, B = d.B, H = d.H, P = rnnkern::h_size(d);
  const auto L = rnnkern::cache_layout(cell, d);
  py::object hs = new_array<F>({T + 1, B, P});
  py::object cs = array_or_none<F>(L.cs, {T + 1, B, H});
  py::object gates = array_or_none<F>(L.gates, {T, B, rnnkern::gates(cell) * H});
  py::object aux = array_or_none<F>(L.aux, {T, B, H});
  py::object lnc = array_or_none<F>(ln, {T, B, rnnkern::ln_width(H)});
  return {buffers_tuple(hs, cs, gates, aux, lnc),
          {ptr<F>(hs), ptr<F>(cs), ptr<F>(gates), ptr<F>(aux), ptr<F>(lnc)}};
}

// The core's view of a forward's cache (buffers_tuple's), checked; backward only reads it.
template <class F>
rnnkern::Cache<F> read_cache(Cell cell, rnnkern::Dims d, bool ln, const py::tuple& cache) {
  const int64_t T = d.T, B = d.B, H = d.H, P = rnnkern::h_size(d);
  const auto L = rnnkern::cache_layout(cell, d);
  if (cache.size() != (ln ? 5u : 4u))
    throw py::type_error("cache: not a cache of this cell's forward");
  auto buf = [&](int i, bool present, const Shape& shape) {
    return present ? const_cast<F*>(data<F>(cache[i], "cache", shape)) : nullptr;
  };
  return {buf(0, true, {T + 1, B, P}), buf(1, L.cs, {T + 1, B, H}),
          buf(2, L.gates, {T, B, rnnkern::gates(cell) * H}), buf(3, L.aux, {T, B, H}),
          buf(4, ln, {T, B, rnnkern::ln_width(H)})};
}

// pk: run with these packed weights (w_ih ... b_hh unused), else pack w_ih ... b_hh per call.
// A call's outputs, allocated with the GIL held, and the work that fills them (run without it).
struct Prepared {
  py::tuple result;
  std::function<void()> run;
  int threads;  // that the call plans for (rnnkern::call_threads)
};

template <class F>
Prepared prepare_forward(Cell cell, Sizes z, const py::object& x, const py::object& h0,
                  const py::object& c0, const rnnkern::Pack<F>* pk, const py::object& w_ih,
                  const py::object& w_hh, const py::object& b_ih, const py::object& b_hh,
                  const py::object& lengths, bool training, const py::object& w_peep,
                  const py::object& w_hr,
                  rnnkern::Precision prec = rnnkern::Precision::native) {
  const int64_t T = z.d.T, B = z.d.B, I = z.d.I, H = z.d.H;
  const int64_t P = rnnkern::h_size(z.d);
  const bool lstm = rnnkern::cell_traits(cell).cell_state;
  const F* xp = data<F>(x, "x", {T, B, I});
  const F* h0p = data<F>(h0, "h0", {B, P}, true);
  const F* c0p = lstm ? data<F>(c0, "c0", {B, H}, true) : nullptr;
  rnnkern::Params<F> p{};
  if (!pk) p = params<F>(z, w_ih, w_hh, b_ih, b_hh, w_peep, w_hr);
  const int64_t* len = checked_lengths(lengths, T, B);
  py::array_t<F> y = new_array<F>({T, B, P}), h_n = new_array<F>({B, P});
  py::object c_n = array_or_none<F>(lstm, {B, H});
  const bool ln = pk ? pk->has_layer_norm() : p.ln_gates != nullptr;
  const py::object none = py::none();
  CacheArrays<F> ca{buffers_tuple(none, none, none, none, none), {}};
  if (training) ca = new_cache<F>(cell, z.d, ln);
  const rnnkern::Cache<F> cache = ca.cache;
  F *yp = y.mutable_data(), *hnp = h_n.mutable_data(), *cnp = ptr<F>(c_n);
  const rnnkern::Dims d = z.d;
  return {py::make_tuple(y, h_n, c_n, ca.buffers), [=] {
            const rnnkern::Cache<F>* cp = training ? &cache : nullptr;
            if (pk) rnnkern::forward<F>(*pk, d, xp, h0p, c0p, len, yp, hnp, cnp, cp);
            else rnnkern::forward<F>(cell, d, xp, h0p, c0p, p, len, yp, hnp, cnp, cp, prec);
          }, rnnkern::call_threads<F>(cell, d)};
}

// Runs a prepared call without the GIL.
py::tuple run(Prepared call) {
  {
    py::gil_scoped_release release;
    call.run();
  }
  return call.result;
}

// One training pass's rows of one-step backwards (rnnkern::GradRows of the pack's dtype, made
// by the first backward that keeps rows), for one weight_gradients call.
struct RowsHandle {
  std::shared_ptr<rnnkern::GradRows<float>> f32;
  std::shared_ptr<rnnkern::GradRows<double>> f64;
  template <class F>
  rnnkern::GradRows<F>& get() {
    auto& r = [this]() -> auto& { if constexpr (std::is_same_v<F, float>) return f32; else return f64; }();
    if (!r) {
      if (f32 || f64) throw py::type_error("into: rows kept for the other dtype");
      r = std::make_shared<rnnkern::GradRows<F>>();
    }
    return *r;
  }
  int64_t rows() const { return f32 ? f32->rows() : f64 ? f64->rows() : 0; }
};

// A weight gradient of a backward's result: its name, whether the weights have it, its shape,
// where the core takes it.
template <class F>
struct GradSlot {
  const char* name;
  bool on;
  Shape shape;
  F** to;
};

// The arrays of `used` (a slot not `on` gets None): new ones, or `into`'s (a tuple of as many,
// which the backward adds to), checked and set in the slots' Grads fields.
template <class F>
std::vector<py::object> grad_arrays(const std::vector<const GradSlot<F>*>& used,
                                    const py::object& into) {
  std::vector<py::object> dws;
  if (!into.is_none()) {
    auto t = into.cast<py::tuple>();
    if (t.size() != used.size()) {
      std::string names;
      for (const auto* s : used) names += (names.empty() ? "" : ", ") + std::string(s->name);
      throw py::value_error("into: expected (" + names + ")");
    }
    for (const auto& h : t) dws.push_back(py::reinterpret_borrow<py::object>(h));
  } else {
    for (const auto* s : used) dws.push_back(array_or_none<F>(s->on, s->shape));
  }
  for (size_t i = 0; i < used.size(); ++i) {
    *used[i]->to = writeable<F>(dws[i], used[i]->name, used[i]->shape, !used[i]->on);
    if (*used[i]->to && !used[i]->on)  // (a missing one: writeable's error)
      throw py::value_error("into: " + std::string(used[i]->name) +
                            " must be None: the weights have none");
  }
  return dws;
}

// The weight gradients' arrays in the order of a backward's result: dw_ih, dw_hh, db_ih, db_hh
// (None without bias), then the variants' present ones in the order of
// rnnkern._api.LSTM_EXTRAS; new ones, or `into`'s (not None: g.accumulate), set in g.
template <class F>
std::vector<py::object> weight_grads(Sizes z, bool bias, bool peep, bool ln, rnnkern::Grads<F>& g,
                                     const py::object& into) {
  const int64_t I = z.d.I, H = z.d.H, GH = z.G * H, P = rnnkern::h_size(z.d);
  const bool proj = z.d.P != 0;
  const GradSlot<F> slots[] = {
      {"dw_ih", true, {GH, I}, &g.dw_ih},       {"dw_hh", true, {GH, P}, &g.dw_hh},
      {"db_ih", bias, {GH}, &g.db_ih},          {"db_hh", bias, {GH}, &g.db_hh},
      {"dw_hr", proj, {P, H}, &g.dw_hr},        {"dw_peep", peep, {3, H}, &g.dw_peep},
      {"dln_gates", ln, {2, GH}, &g.dln_gates}, {"dln_cell", ln, {2, H}, &g.dln_cell}};
  std::vector<const GradSlot<F>*> used;  // the four (a bias's None without bias), the variants
  for (const auto& s : slots)
    if (&s < slots + 4 || s.on) used.push_back(&s);
  g.accumulate = !into.is_none();
  return grad_arrays<F>(used, into);
}

template <class F>
Prepared prepare_backward(Cell cell, Sizes z, const py::object& x, const rnnkern::Pack<F>* pk,
                   const py::object& w_ih, const py::object& w_hh, bool bias,
                   const py::object& lengths,
                   const py::tuple& cache, const py::object& dy, const py::object& dh_n,
                   const py::object& dc_n, const py::object& w_peep, const py::object& w_hr,
                   rnnkern::Precision prec = rnnkern::Precision::native,
                   const py::object& into = py::none(), bool need_dx = true) {
  const int64_t T = z.d.T, B = z.d.B, I = z.d.I, H = z.d.H;
  const int64_t P = rnnkern::h_size(z.d);
  const bool lstm = rnnkern::cell_traits(cell).cell_state;
  const bool ln = pk && pk->has_layer_norm();
  const rnnkern::Cache<F> c = read_cache<F>(cell, z.d, ln, cache);
  const F* xp = data<F>(x, "x", {T, B, I});
  rnnkern::Params<F> p{};
  if (!pk) p = params<F>(z, w_ih, w_hh, py::none(), py::none(), w_peep, w_hr);
  const bool peep = pk ? pk->has_peepholes() : p.w_peep != nullptr;
  const int64_t* len = checked_lengths(lengths, T, B);
  const F* dyp = data<F>(dy, "dy", {T, B, P}, true);
  const F* dhp = data<F>(dh_n, "dh_n", {B, P}, true);
  const F* dcp = lstm ? data<F>(dc_n, "dc_n", {B, H}, true) : nullptr;
  py::object dx = array_or_none<F>(need_dx, {T, B, I});  // None: not wanted, not computed
  py::array_t<F> dh0 = new_array<F>({B, P});
  py::object dc0 = array_or_none<F>(lstm, {B, H});
  rnnkern::Grads<F> g{ptr<F>(dx), dh0.mutable_data(), ptr<F>(dc0), nullptr, nullptr,
                      nullptr, nullptr};  // the weight gradients: weight_grads' slots
  // New arrays, or `into`'s, which the backward adds to, or `into` a Rows: none, the step's rows
  // kept there (rnnkern::GradRows) for weight_gradients.
  const bool keep = py::isinstance<RowsHandle>(into);
  if (keep) {
    if (!pk || T != 1 || len || z.d.P || peep || ln)
      throw py::value_error("into: rows are kept only for one step with a pack, without "
                            "lengths, projection, peepholes or layer norm");
    g.rows = &into.cast<RowsHandle&>().get<F>();
  }
  const bool acc = !into.is_none() && !keep;
  const std::vector<py::object> dws =
      keep ? std::vector<py::object>{} : weight_grads<F>(z, bias, peep, ln, g, into);
  const rnnkern::Dims d = z.d;
  py::list grads;
  for (const py::object& o : {dx, py::object(dh0), dc0}) grads.append(o);
  for (size_t i = 0; !acc && i < dws.size(); ++i) grads.append(dws[i]);
  py::tuple result(grads);
  return {result, [=] {
            if (pk) rnnkern::backward<F>(*pk, d, xp, len, c, dyp, dhp, dcp, g);
            else rnnkern::backward<F>(cell, d, xp, p, len, c, dyp, dhp, dcp, g, prec);
          }, rnnkern::call_threads<F>(cell, d)};
}

bool is_f64(const py::object& x, const char* name) {
  if (!py::isinstance<py::array>(x)) throw py::type_error(std::string(name) + ": expected a numpy.ndarray");
  auto dt = py::reinterpret_borrow<py::array>(x).dtype();
  if (is_dtype<double>(dt)) return true;
  if (is_dtype<float>(dt)) return false;
  throw py::type_error(std::string(name) + ": dtype must be float32 or float64");
}

py::tuple forward_any(int cell_id, const py::object& x, const py::object& h0, const py::object& c0,
                      const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                      const py::object& b_hh, const py::object& lengths, bool training,
                      const py::object& w_peep, const py::object& w_hr, int precision) {
  Cell cell = to_cell(cell_id);
  Sizes z = sizes(cell, x, w_hh, w_hr);
  const auto prec = to_precision(precision);
  return run(is_f64(x, "x") ? prepare_forward<double>(cell, z, x, h0, c0, nullptr, w_ih, w_hh, b_ih, b_hh, lengths, training, w_peep, w_hr, prec)
                            : prepare_forward<float>(cell, z, x, h0, c0, nullptr, w_ih, w_hh, b_ih, b_hh, lengths, training, w_peep, w_hr, prec));
}

py::tuple backward_any(int cell_id, const py::object& x, const py::object& w_ih,
                       const py::object& w_hh, bool bias, const py::object& lengths,
                       const py::tuple& cache, const py::object& dy, const py::object& dh_n,
                       const py::object& dc_n, const py::object& w_peep, const py::object& w_hr,
                       int precision) {
  Cell cell = to_cell(cell_id);
  Sizes z = sizes(cell, x, w_hh, w_hr);
  const auto prec = to_precision(precision);
  return run(is_f64(x, "x") ? prepare_backward<double>(cell, z, x, nullptr, w_ih, w_hh, bias, lengths, cache, dy, dh_n, dc_n, w_peep, w_hr, prec)
                            : prepare_backward<float>(cell, z, x, nullptr, w_ih, w_hh, bias, lengths, cache, dy, dh_n, dc_n, w_peep, w_hr, prec));
}

// One cell's weights packed once (rnnkern::Pack of the weights' dtype), for forward_packed and
// backward_packed.
struct PackHandle {
  Cell cell;
  int64_t I, H;
  int64_t P;  // rnnkern::Dims::P: w_hr's rows with a projection, else 0
  std::shared_ptr<const rnnkern::Pack<float>> f32;
  std::shared_ptr<const rnnkern::Pack<double>> f64;
  bool has_bias() const { return f32 ? f32->has_bias() : f64->has_bias(); }
  bool has_peepholes() const { return f32 ? f32->has_peepholes() : f64->has_peepholes(); }
  bool has_layer_norm() const { return f32 ? f32->has_layer_norm() : f64->has_layer_norm(); }
  std::string isa() const { return f32 ? f32->isa() : f64->isa(); }
  template <class F>
  const rnnkern::Pack<F>* get(const py::object& x) const {
    if constexpr (std::is_same_v<F, float>) {
      if (f32) return f32.get();
    } else {
      if (f64) return f64.get();
    }
    throw py::type_error("x: dtype " + py::str(py::reinterpret_borrow<py::array>(x).dtype()).cast<std::string>() +
                         " is not the packed weights' dtype");
  }
};

template <class F>
std::shared_ptr<const rnnkern::Pack<F>> make_pack(Cell cell, Sizes z,
                                                  const py::object& w_ih, const py::object& w_hh,
                                                  const py::object& b_ih, const py::object& b_hh,
                                                  bool fwd, bool bwd, const py::object& w_peep,
                                                  const py::object& w_hr,
                                                  const py::object& ln_gates,
                                                  const py::object& ln_cell,
                                                  rnnkern::Precision prec) {
  const rnnkern::Params<F> p = params<F>(z, w_ih, w_hh, b_ih, b_hh, w_peep, w_hr, ln_gates,
                                         ln_cell);
  const int64_t I = z.d.I, H = z.d.H;
  if (p.w_peep && !rnnkern::cell_traits(cell).peepholes)
    throw py::value_error("w_peep: only lstm has peepholes");
  if ((p.b_ih == nullptr) != (p.b_hh == nullptr))
    throw py::value_error("b_ih, b_hh: both arrays or both None");
  if ((p.ln_gates == nullptr) != (p.ln_cell == nullptr))
    throw py::value_error("ln_gates, ln_cell: both arrays or both None");
  py::gil_scoped_release release;
  return std::make_shared<const rnnkern::Pack<F>>(cell, I, H, p, fwd, bwd, prec);
}

PackHandle pack_any(int cell_id, const py::object& w_ih, const py::object& w_hh,
                    const py::object& b_ih, const py::object& b_hh, bool fwd, bool bwd,
                    const py::object& w_peep, const py::object& w_hr, int precision,
                    const py::object& ln_gates, const py::object& ln_cell) {
  Cell cell = to_cell(cell_id);
  const auto prec = to_precision(precision);
  for (auto [o, name] : {std::pair{&w_ih, "w_ih"}, std::pair{&w_hh, "w_hh"}})
    if (!py::isinstance<py::array>(*o) || py::reinterpret_borrow<py::array>(*o).ndim() != 2)
      throw py::value_error(std::string(name) + ": expected a 2-D numpy.ndarray");
  // The sizes of a call without steps: x (0, 0, I) gives I.
  const int64_t I = py::reinterpret_borrow<py::array>(w_ih).shape(1);
  const Sizes z = sizes(cell, py::array_t<float>(std::vector<py::ssize_t>{0, 0, I}), w_hh, w_hr);
  PackHandle h{cell, I, z.d.H, z.d.P, nullptr, nullptr};
  if (is_f64(w_hh, "w_hh"))
    h.f64 = make_pack<double>(cell, z, w_ih, w_hh, b_ih, b_hh, fwd, bwd, w_peep, w_hr, ln_gates,
                              ln_cell, prec);
  else h.f32 = make_pack<float>(cell, z, w_ih, w_hh, b_ih, b_hh, fwd, bwd, w_peep, w_hr,
                                ln_gates, ln_cell, prec);
  return h;
}

// The data of `o` if it is exactly a C-contiguous aligned array of T with `ndim` dims of sizes
// `dims` (None: `none_ok`), else null and `ok` false. For the one-step fast path: no errors, the
// caller's general path converts odd arguments or raises its clear message.
template <class T>
const T* exact(const py::handle& o, int ndim, const int64_t* dims, bool none_ok, bool& ok) {
  if (o.is_none()) {
    ok = ok && none_ok;
    return nullptr;
  }
  if (!ok || !py::isinstance<py::array>(o)) return ok = false, nullptr;
  auto a = py::reinterpret_borrow<py::array>(o);
  const int flags = a.flags();
  ok = is_dtype<T>(a.dtype()) && a.ndim() == ndim &&
       (flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) &&
       (flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_);
  for (int i = 0; ok && i < ndim; ++i) ok = a.shape(i) == dims[i];
  return ok ? static_cast<const T*>(a.data()) : nullptr;
}

// One step with a pack: x (B, I) or unbatched (I,), h0 and c0 (lstm) shaped like x with H, or
// None. Returns (h, c or None) shaped like h0, and in training (x (1, B, I) copied, hs, cs,
// gates, aux: backward_packed's cache), or None when an argument is not exactly that.
template <class F>
py::object step(const PackHandle& pk, const rnnkern::Pack<F>* w, const py::handle& x,
                const py::handle& h0, const py::handle& c0, bool training) {
  const bool lstm = rnnkern::cell_traits(pk.cell).cell_state;
  const auto xa = py::reinterpret_borrow<py::array>(x);
  const int nd = static_cast<int>(xa.ndim());
  if (nd != 1 && nd != 2) return py::none();
  const int64_t B = nd == 2 ? xa.shape(0) : 1, I = pk.I, H = pk.H;
  const rnnkern::Dims d{1, B, I, H, pk.P};
  const int64_t P = rnnkern::h_size(d);
  const int64_t xd[2] = {B, I}, sd[2] = {B, H}, pd[2] = {B, P};
  bool ok = true;
  const F* xp = exact<F>(x, nd, xd + 2 - nd, false, ok);
  const F* h0p = exact<F>(h0, nd, pd + 2 - nd, true, ok);
  const F* c0p = exact<F>(c0, nd, sd + 2 - nd, true, ok);
  if (!ok || (!lstm && !c0.is_none())) return py::none();
  const std::vector<py::ssize_t> shape(sd + 2 - nd, sd + 2), hshape(pd + 2 - nd, pd + 2);
  py::array_t<F> h = new_array<F>(hshape), h_n = new_array<F>(hshape);
  py::object c = array_or_none<F>(lstm, shape);
  py::object xc = array_or_none<F>(training, {1, B, I});
  CacheArrays<F> ca{py::tuple(), {}};
  if (training) ca = new_cache<F>(pk.cell, d, w->has_layer_norm());
  const rnnkern::Cache<F> cache = ca.cache;
  {
    py::gil_scoped_release release;
    if (training) std::memcpy(ptr<F>(xc), xp, B * I * sizeof(F));
    rnnkern::forward<F>(*w, d, xp, h0p, c0p, nullptr, h.mutable_data(), h_n.mutable_data(),
                        ptr<F>(c), training ? &cache : nullptr);
  }
  if (!training) return py::make_tuple(h, c);
  return py::make_tuple(h, c, xc, ca.buffers);
}

py::object step_any(const PackHandle& pk, const py::handle& x, const py::handle& h0,
                    const py::handle& c0, bool training) {
  if (!py::isinstance<py::array>(x)) return py::none();
  if (pk.f32) return step<float>(pk, pk.f32.get(), x, h0, c0, training);
  return step<double>(pk, pk.f64.get(), x, h0, c0, training);
}

Sizes packed_sizes(const PackHandle& pk, const py::object& x) {
  if (!py::isinstance<py::array>(x) || py::reinterpret_borrow<py::array>(x).ndim() != 3)
    throw py::value_error("x: expected a numpy.ndarray of shape (T, B, I)");
  auto xs = py::reinterpret_borrow<py::array>(x).shape();
  return {{xs[0], xs[1], pk.I, pk.H, pk.P}, rnnkern::gates(pk.cell)};
}

Prepared prepare_forward_packed(const PackHandle& pk, const py::object& x, const py::object& h0,
                                const py::object& c0, const py::object& lengths, bool training) {
  const auto prec = pk.f32 ? pk.f32->precision() : pk.f64->precision();
  if (training && prec == rnnkern::Precision::int8)  // every path here: layers, stacks, drop-in
    throw py::value_error("precision: 'int8' is inference only, pass training=False");
  Sizes z = packed_sizes(pk, x);
  const py::object none = py::none();
  return is_f64(x, "x") ? prepare_forward<double>(pk.cell, z, x, h0, c0, pk.get<double>(x), none,
                                                  none, none, none, lengths, training, none,
                                                  none)
                        : prepare_forward<float>(pk.cell, z, x, h0, c0, pk.get<float>(x), none,
                                                 none, none, none, lengths, training, none, none);
}

Prepared prepare_backward_packed(const PackHandle& pk, const py::object& x,
                                 const py::object& lengths, const py::tuple& cache,
                                 const py::object& dy, const py::object& dh_n,
                                 const py::object& dc_n, const py::object& into = py::none(),
                                 bool need_dx = true) {
  Sizes z = packed_sizes(pk, x);
  const py::object none = py::none();
  const auto native = rnnkern::Precision::native;
  return is_f64(x, "x") ? prepare_backward<double>(pk.cell, z, x, pk.get<double>(x), none, none,
                                                   pk.has_bias(), lengths, cache, dy, dh_n, dc_n,
                                                   none, none, native, into, need_dx)
                        : prepare_backward<float>(pk.cell, z, x, pk.get<float>(x), none, none,
                                                  pk.has_bias(), lengths, cache, dy, dh_n, dc_n,
                                                  none, none, native, into, need_dx);
}

py::tuple forward_packed(const PackHandle& pk, const py::object& x, const py::object& h0,
                         const py::object& c0, const py::object& lengths, bool training) {
  return run(prepare_forward_packed(pk, x, h0, c0, lengths, training));
}

py::tuple backward_packed(const PackHandle& pk, const py::object& x, const py::object& lengths,
                          const py::tuple& cache, const py::object& dy, const py::object& dh_n,
                          const py::object& dc_n, const py::object& into, bool need_dx) {
  return run(prepare_backward_packed(pk, x, lengths, cache, dy, dh_n, dc_n, into, need_dx));
}

// The weight gradients (dw_ih, dw_hh, db_ih, db_hh; None biases without bias) of the rows kept
// by backward_packed(..., into=rows) with `pk`: new arrays, or added to `into`'s (then None).
template <class F>
py::object weight_gradients(const PackHandle& pk, RowsHandle& rows, const py::object& into) {
  const int64_t GH = rnnkern::gates(pk.cell) * pk.H, P = pk.P ? pk.P : pk.H;
  const bool bias = pk.has_bias();
  rnnkern::Grads<F> g{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  const GradSlot<F> slots[] = {{"dw_ih", true, {GH, pk.I}, &g.dw_ih},
                               {"dw_hh", true, {GH, P}, &g.dw_hh},
                               {"db_ih", bias, {GH}, &g.db_ih},
                               {"db_hh", bias, {GH}, &g.db_hh}};
  const std::vector<py::object> out = grad_arrays<F>({slots, slots + 1, slots + 2, slots + 3},
                                                     into);
  g.accumulate = !into.is_none();
  const rnnkern::Pack<F>* pack;
  if constexpr (std::is_same_v<F, float>) pack = pk.f32.get(); else pack = pk.f64.get();
  auto& kept = rows.get<F>();
  {
    py::gil_scoped_release release;
    rnnkern::weight_gradients<F>(*pack, kept, g);
  }
  if (!into.is_none()) return py::none();
  return py::make_tuple(out[0], out[1], out[2], out[3]);
}

// Independent calls: every call's arguments are checked and its outputs allocated first, then
// they run without the GIL, side by side (rnnkern::concurrently) when each would run on one
// thread anyway, else one by one, each with the whole team (measured on a 2-core AVX2 machine,
// LSTM T = 100, B = 1, two calls side by side against one by one: 1.8x faster at H = 64, where
// each call runs alone; 1.25x slower at H = 256, where half of W_hh per core stays in its L2
// and all of it does not; docs/design.md "Independent calls side by side").
// The results in the calls' order, the same bits either way.
py::list run_many(std::vector<Prepared>& calls) {
  bool solo = true;
  for (const auto& c : calls) solo = solo && c.threads == 1;
  {
    py::gil_scoped_release release;
    if (solo) rnnkern::concurrently(static_cast<int>(calls.size()), [&](int i) { calls[i].run(); });
    else
      for (auto& c : calls) c.run();
  }
  py::list out;
  for (auto& c : calls) out.append(c.result);
  return out;
}

// calls: a list of (pack, x, h0, c0, lengths, training), forward_packed's arguments.
py::list forward_packed_many(const py::list& calls) {
  std::vector<Prepared> ps;
  for (const auto& item : calls) {
    auto a = item.cast<py::tuple>();
    if (a.size() != 6) throw py::value_error("calls: expected (pack, x, h0, c0, lengths, training) tuples");
    ps.push_back(prepare_forward_packed(a[0].cast<const PackHandle&>(), a[1], a[2], a[3], a[4],
                                        a[5].cast<bool>()));
  }
  return run_many(ps);
}

// calls: a list of (pack, x, lengths, cache, dy, dh_n, dc_n[, need_dx[, into]]),
// backward_packed's arguments (need_dx: true if absent; into: None if absent, or the weight
// gradients' arrays to add to).
py::list backward_packed_many(const py::list& calls) {
  std::vector<Prepared> ps;
  for (const auto& item : calls) {
    auto a = item.cast<py::tuple>();
    if (a.size() < 7 || a.size() > 9)
      throw py::value_error("calls: expected (pack, x, lengths, cache, dy, dh_n, dc_n[, need_dx"
                            "[, into]]) tuples");
    const py::object into = a.size() == 9 ? py::object(a[8]) : py::none();
    if (py::isinstance<RowsHandle>(into))
      throw py::type_error("into: a tuple of arrays or None (rows are kept by backward_packed)");
    ps.push_back(prepare_backward_packed(a[0].cast<const PackHandle&>(), a[1], a[2],
                                         a[3].cast<py::tuple>(), a[4], a[5], a[6], into,
                                         a.size() >= 8 ? a[7].cast<bool>() : true));
  }
  return run_many(ps);
}

// A stack's packs (rnnkern::stack_forward's order, k = l*D + d) of the dtype F of `x`.
template <class F>
std::vector<const rnnkern::Pack<F>*> stack_packs(const py::list& packs, int D,
                                                 const py::object& x) {
  if (D != 1 && D != 2) throw py::value_error("directions: expected 1 or 2");
  if (packs.empty() || packs.size() % D)
    throw py::value_error("packs: expected L*D packs, L >= 1");
  std::vector<const rnnkern::Pack<F>*> out;
  for (const py::handle& h : packs) out.push_back(h.cast<const PackHandle&>().get<F>(x));
  return out;
}

// masks: None or L-1 items, each None or (T, B, D*P); their data pointers.
template <class F>
std::vector<const F*> stack_masks(const py::object& masks, size_t layers, const Shape& shape) {
  std::vector<const F*> out;
  if (masks.is_none()) return out;
  auto list = masks.cast<py::sequence>();
  if (list.size() != 0 && list.size() != layers - 1)
    throw py::value_error("masks: expected none or L-1 = " + std::to_string(layers - 1));
  for (const py::handle& m : list)
    out.push_back(data<F>(py::reinterpret_borrow<py::object>(m), "masks", shape, true));
  return out;
}

// rnnkern::stack_forward. Returns (y (T, B, D*P), h_n (L*D, B, P), c_n (L*D, B, H) or None,
// xs, buffers): in training xs is the L*D inputs as each kernel read them (xs[0] is x) and
// buffers their caches, else both None.
template <class F>
py::tuple stack_forward(const py::list& packs, int D, const py::object& x, const py::object& h0,
                        const py::object& c0, const py::object& lengths,
                        const py::object& masks, bool training) {
  const auto pks = stack_packs<F>(packs, D, x);
  const PackHandle& p0 = packs[0].cast<const PackHandle&>();
  if (training && pks[0]->precision() == rnnkern::Precision::int8)
    throw py::value_error("precision: 'int8' is inference only, pass training=False");
  const int L = static_cast<int>(pks.size()) / D, LD = L * D;
  const Sizes z = packed_sizes(p0, x);
  const int64_t T = z.d.T, B = z.d.B, H = p0.H, P = p0.P ? p0.P : H, W = D * P;
  const bool lstm = rnnkern::cell_traits(p0.cell).cell_state;
  rnnkern::StackForward<F> a{};
  a.x = data<F>(x, "x", {T, B, p0.I});
  a.h0 = data<F>(h0, "h0", {LD, B, P}, true);
  a.c0 = lstm ? data<F>(c0, "c0", {LD, B, H}, true) : nullptr;
  a.lengths = checked_lengths(lengths, T, B);
  const std::vector<const F*> ms = stack_masks<F>(masks, L, {T, B, W});
  a.masks = ms.empty() ? nullptr : ms.data();
  py::array_t<F> y = new_array<F>({T, B, W}), h_n = new_array<F>({LD, B, P});
  py::object c_n = array_or_none<F>(lstm, {LD, B, H});
  a.y = y.mutable_data(), a.h_n = h_n.mutable_data(), a.c_n = ptr<F>(c_n);
  std::vector<F*> inputs;  // L*D
  std::vector<rnnkern::Cache<F>> caches;  // L*D
  py::object xs = py::none(), bufs = py::none();
  if (training) {
    py::list xl, bl;
    for (int k = 0; k < LD; ++k) {
      const int64_t Fl = k < D ? p0.I : W;
      py::object in = k == 0 ? x : py::object(new_array<F>({T, B, Fl}));
      CacheArrays<F> ca = new_cache<F>(p0.cell, {T, B, Fl, H, p0.P}, pks[k]->has_layer_norm());
      inputs.push_back(k == 0 ? nullptr : ptr<F>(in));
      caches.push_back(ca.cache);
      xl.append(in), bl.append(ca.buffers);
    }
    a.inputs = inputs.data(), a.caches = caches.data();
    xs = xl, bufs = bl;
  }
  {
    py::gil_scoped_release release;
    rnnkern::stack_forward<F>(pks.data(), L, D, T, B, a);
  }
  return py::make_tuple(y, h_n, c_n, xs, bufs);
}

// rnnkern::stack_backward of a training stack_forward (its packs, xs, lengths, buffers, masks).
// into: None, or L*D tuples of the weight gradients' arrays to add to. Returns (dx (T, B, I) or
// None without need_dx, dh0 (L*D, B, P), dc0 (L*D, B, H) or None, L*D tuples of the weight
// gradients as backward_packed returns them, empty with into).
template <class F>
py::tuple stack_backward(const py::list& packs, int D, const py::list& xs,
                         const py::object& lengths, const py::list& buffers,
                         const py::object& masks, const py::object& dy, const py::object& dh_n,
                         const py::object& dc_n, bool need_dx, const py::object& into) {
  if (xs.empty()) throw py::value_error("xs: expected L*D arrays");
  const py::object x0 = xs[0];
  const auto pks = stack_packs<F>(packs, D, x0);
  const PackHandle& p0 = packs[0].cast<const PackHandle&>();
  const int L = static_cast<int>(pks.size()) / D, LD = L * D;
  if (xs.size() != size_t(LD) || buffers.size() != size_t(LD))
    throw py::value_error("xs, buffers: expected L*D = " + std::to_string(LD) + " items");
  if (!into.is_none() && into.cast<py::sequence>().size() != size_t(LD))
    throw py::value_error("into: expected None or L*D = " + std::to_string(LD) + " tuples");
  const Sizes z = packed_sizes(p0, x0);
  const int64_t T = z.d.T, B = z.d.B, H = p0.H, P = p0.P ? p0.P : H, W = D * P;
  const bool lstm = rnnkern::cell_traits(p0.cell).cell_state;
  rnnkern::StackBackward<F> a{};
  std::vector<const F*> inputs;  // L*D
  std::vector<rnnkern::Cache<F>> caches;  // L*D
  std::vector<rnnkern::Grads<F>> grads(LD, rnnkern::Grads<F>{});  // L*D
  py::list weight;
  for (int k = 0; k < LD; ++k) {
    const Sizes zk{{T, B, k < D ? p0.I : W, H, p0.P}, z.G};
    inputs.push_back(data<F>(xs[k], "xs", {T, B, zk.d.I}));
    const bool ln = pks[k]->has_layer_norm();
    caches.push_back(read_cache<F>(p0.cell, zk.d, ln, buffers[k].cast<py::tuple>()));
    const py::object into_k = into.is_none() ? py::none() : py::object(into[py::int_(k)]);
    const auto dws = weight_grads<F>(zk, pks[k]->has_bias(), pks[k]->has_peepholes(), ln,
                                     grads[k], into_k);
    py::tuple t(into_k.is_none() ? dws.size() : 0);
    for (size_t i = 0; i < t.size(); ++i) t[i] = dws[i];
    weight.append(t);
  }
  a.inputs = inputs.data(), a.caches = caches.data(), a.grads = grads.data();
  a.lengths = checked_lengths(lengths, T, B);
  const std::vector<const F*> ms = stack_masks<F>(masks, L, {T, B, W});
  a.masks = ms.empty() ? nullptr : ms.data();
  a.dy = data<F>(dy, "dy", {T, B, W}, true);
  a.dh_n = data<F>(dh_n, "dh_n", {LD, B, P}, true);
  a.dc_n = lstm ? data<F>(dc_n, "dc_n", {LD, B, H}, true) : nullptr;
  py::object dx = array_or_none<F>(need_dx, {T, B, p0.I});
  py::array_t<F> dh0 = new_array<F>({LD, B, P});
  py::object dc0 = array_or_none<F>(lstm, {LD, B, H});
  a.dx = ptr<F>(dx), a.dh0 = dh0.mutable_data(), a.dc0 = ptr<F>(dc0);
  {
    py::gil_scoped_release release;
    rnnkern::stack_backward<F>(pks.data(), L, D, T, B, a);
  }
  return py::make_tuple(dx, dh0, dc0, weight);
}

template <class F>
py::array softmax(const py::object& z) {
  auto a = py::reinterpret_borrow<py::array>(z);
  const int64_t C = a.ndim() ? a.shape(a.ndim() - 1) : 0, N = C ? a.size() / C : 0;
  Shape s(a.shape(), a.shape() + a.ndim());
  const F* zp = data<F>(z, "z", s);
  py::array_t<F> out = new_array<F>(s);
  F* op = out.mutable_data();
  py::gil_scoped_release release;
  rnnkern::softmax<F>(N, C, zp, op);
  return out;
}

py::array softmax_any(const py::object& z) {
  return is_f64(z, "z") ? softmax<double>(z) : softmax<float>(z);
}

template <class F>
py::tuple xent(const py::object& logits, const py::object& targets, int64_t ignore_index) {
  auto a = py::reinterpret_borrow<py::array>(logits);
  if (a.ndim() != 2) throw py::value_error("logits: expected shape (N, C)");
  const int64_t N = a.shape(0), C = a.shape(1);
  const F* lp = data<F>(logits, "logits", {N, C});
  const int64_t* tp = data<int64_t>(targets, "targets", {N});
  for (int64_t i = 0; i < N; ++i)
    if (tp[i] != ignore_index && (tp[i] < 0 || tp[i] >= C))
      throw py::value_error("targets: values must be in 0..C-1 or ignore_index");
  py::array_t<F> d = new_array<F>({N, C});
  F* dp = d.mutable_data();
  double loss;
  {
    py::gil_scoped_release release;
    loss = rnnkern::softmax_cross_entropy<F>(N, C, lp, tp, ignore_index, dp);
  }
  return py::make_tuple(loss, d);
}

py::tuple xent_any(const py::object& logits, const py::object& targets, int64_t ignore_index) {
  return is_f64(logits, "logits") ? xent<double>(logits, targets, ignore_index)
                                  : xent<float>(logits, targets, ignore_index);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnnkern's compiled core (use the functions of the rnnkern package instead)";
  m.def("cells", &cells);
  m.def("forward", &forward_any, py::arg("cell_id"), py::arg("x"), py::arg("h0"), py::arg("c0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"),
        py::arg("training"), py::arg("w_peep") = py::none(), py::arg("w_hr") = py::none(),
        py::arg("precision") = 0);
  m.def("backward", &backward_any, py::arg("cell_id"), py::arg("x"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("bias"), py::arg("lengths"), py::arg("cache"), py::arg("dy"),
        py::arg("dh_n"), py::arg("dc_n"), py::arg("w_peep") = py::none(),
        py::arg("w_hr") = py::none(),
        py::arg("precision") = 0);
  py::class_<PackHandle>(m, "Pack")
      .def(py::init(&pack_any), py::arg("cell_id"), py::arg("w_ih"), py::arg("w_hh"),
           py::arg("b_ih"), py::arg("b_hh"), py::arg("forward") = true,
           py::arg("backward") = true, py::arg("w_peep") = py::none(),
           py::arg("w_hr") = py::none(), py::arg("precision") = 0,
           py::arg("ln_gates") = py::none(), py::arg("ln_cell") = py::none())
      .def_property_readonly("precision", [](const PackHandle& h) {
        return static_cast<int>(h.f32 ? h.f32->precision() : h.f64->precision());
      })
      .def("step", &step_any, py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("training"))
      .def_property_readonly("cell_id", [](const PackHandle& h) { return static_cast<int>(h.cell); })
      .def_property_readonly("input_size", [](const PackHandle& h) { return h.I; })
      .def_property_readonly("hidden_size", [](const PackHandle& h) { return h.H; })
      .def_property_readonly("output_size", [](const PackHandle& h) { return h.P ? h.P : h.H; })
      .def_property_readonly("has_projection", [](const PackHandle& h) { return h.P != 0; })
      .def_property_readonly("has_bias", &PackHandle::has_bias)
      .def_property_readonly("has_peepholes", &PackHandle::has_peepholes)
      .def_property_readonly("has_layer_norm", &PackHandle::has_layer_norm)
      .def_property_readonly("isa", &PackHandle::isa)
      .def_property_readonly("dtype", [](const PackHandle& h) {
        return h.f64 ? py::dtype::of<double>() : py::dtype::of<float>();
      });
  py::class_<RowsHandle>(m, "Rows", "A training pass's rows kept by one-step backwards "
                                    "(backward_packed(..., into=Rows())) for weight_gradients.")
      .def(py::init<>())
      .def_property_readonly("rows", &RowsHandle::rows);
  m.def("weight_gradients", [](const PackHandle& pk, RowsHandle& rows, const py::object& into) {
    return pk.f32 ? weight_gradients<float>(pk, rows, into)
                  : weight_gradients<double>(pk, rows, into);
  }, py::arg("pack"), py::arg("rows"), py::arg("into") = py::none());
  m.def("forward_packed", &forward_packed);
  // into: None, or the weight gradients' arrays to add to, or a Rows that keeps the step's rows
  // for weight_gradients (then only dx, dh0, dc0 return, and dw_peep with peepholes).
  // need_dx=False: dx is None, its product skipped (the input needs no gradient).
  m.def("backward_packed", &backward_packed, py::arg("pack"), py::arg("x"), py::arg("lengths"),
        py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        py::arg("into") = py::none(), py::kw_only(), py::arg("need_dx") = true);
  m.def("forward_packed_many", &forward_packed_many);
  m.def("backward_packed_many", &backward_packed_many);
  m.def("stack_forward", [](const py::list& packs, int directions, const py::object& x,
                            const py::object& h0, const py::object& c0,
                            const py::object& lengths, const py::object& masks, bool training) {
    return is_f64(x, "x") ? stack_forward<double>(packs, directions, x, h0, c0, lengths, masks,
                                                  training)
                          : stack_forward<float>(packs, directions, x, h0, c0, lengths, masks,
                                                 training);
  }, py::arg("packs"), py::arg("directions"), py::arg("x"), py::arg("h0"), py::arg("c0"),
     py::arg("lengths"), py::arg("masks"), py::arg("training"));
  m.def("stack_backward", [](const py::list& packs, int directions, const py::list& xs,
                             const py::object& lengths, const py::list& buffers,
                             const py::object& masks, const py::object& dy,
                             const py::object& dh_n, const py::object& dc_n, bool need_dx,
                             const py::object& into) {
    if (xs.empty()) throw py::value_error("xs: expected L*D arrays");
    return is_f64(xs[0], "xs") ? stack_backward<double>(packs, directions, xs, lengths, buffers,
                                                        masks, dy, dh_n, dc_n, need_dx, into)
                               : stack_backward<float>(packs, directions, xs, lengths, buffers,
                                                       masks, dy, dh_n, dc_n, need_dx, into);
  }, py::arg("packs"), py::arg("directions"), py::arg("xs"), py::arg("lengths"),
     py::arg("buffers"), py::arg("masks"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
     py::arg("need_dx"), py::arg("into"));
  m.def("softmax", &softmax_any);
  m.def("softmax_cross_entropy", &xent_any);
  m.def("set_num_threads", [](int n) { if (n < 1) throw py::value_error("n: must be >= 1"); rnnkern::set_num_threads(n); });
  m.def("get_num_threads", &rnnkern::get_num_threads);
  m.def("set_thread_runtime", &rnnkern::set_thread_runtime);
  m.def("thread_runtime", &rnnkern::thread_runtime);
  m.def("_test_delays", [](int64_t start_us, int64_t sync_us, int sync_at) {
    rnnkern::set_test_delays(start_us * 1000, sync_us * 1000, sync_at);
  });
  // Whether two C-contiguous arrays hold the same bytes (the drop-in's check that a pack is not
  // stale: NaN and -0.0 compare by their bits); memcmp without the GIL, a large array's parts
  // side by side on the threads (a cell's step checks its weights at every call: at H = 256,
  // 2 MB read twice, which one core reads at about half the speed of two).
  m.def("digests", [](const py::list& arrays) {
    std::vector<py::array> keep;  // (count,): the arrays, held while the GIL is released
    for (const py::handle& a : arrays) {
      if (!py::isinstance<py::array>(a))
        throw py::type_error("digests: expected a list of NumPy arrays");
      keep.push_back(py::reinterpret_borrow<py::array>(a));
      if (!(keep.back().flags() & py::array::c_style))
        throw py::value_error("digests: expected C-contiguous arrays");
    }
    const int count = static_cast<int>(keep.size());
    std::vector<const void*> data(count);
    std::vector<size_t> bytes(count);
    std::vector<std::vector<uint64_t>> out(count);  // per array: its digest's values
    std::vector<uint64_t*> outs(count);
    for (int j = 0; j < count; ++j) {
      data[j] = keep[j].data(), bytes[j] = static_cast<size_t>(keep[j].nbytes());
      out[j].resize(rnnkern::digest_size(bytes[j]));
      outs[j] = out[j].data();
    }
    {
      py::gil_scoped_release nogil;
      rnnkern::digests(count, data.data(), bytes.data(), outs.data());
    }
    py::list result;
    for (const auto& d : out)
      result.append(py::bytes(reinterpret_cast<const char*>(d.data()), d.size() * 8));
    return result;
  });
  m.def("thread_stats", [] {
    const auto s = rnnkern::thread_stats();
    py::dict d;
    d["team_calls"] = s.team_calls, d["openmp_calls"] = s.openmp_calls;
    d["taken_over"] = s.taken_over, d["shrunk"] = s.shrunk, d["joined_late"] = s.joined_late;
    d["started_alone"] = s.started_alone;
    return d;
  });
  m.def("isa", &rnnkern::isa);
  m.def("kernel_isa", [](int precision) { return rnnkern::kernel_isa(to_precision(precision)); });
  m.def("set_isa", &rnnkern::set_isa);
  m.def("supported_isas", &rnnkern::supported_isas);
}
