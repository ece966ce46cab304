// The only file that knows about Python: converts arrays and arguments, releases the GIL around the
// long loops, and maps C++ exceptions onto Python's (std::invalid_argument -> ValueError).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine.hpp"
#include "pgcopy.hpp"
#include "tickjson.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Parameters are copied into the engine, so an implicit conversion (from a list or float32) is fine.
using InVec = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using InMat = nb::ndarray<const double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using InCube = nb::ndarray<const double, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
// Outputs are written in place: a silently converted copy would swallow the results, so these
// arguments are bound with .noconvert() and must already be C-contiguous float64.
using OutMat = nb::ndarray<double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

using U32Mat = nb::ndarray<std::uint32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using U32Vec = nb::ndarray<const std::uint32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32Vec = nb::ndarray<float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64In = nb::ndarray<const std::int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64Out = nb::ndarray<std::int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using U64In = nb::ndarray<const std::uint64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// The generator's copies, fastest first, and their names in Python.
constexpr mf::PhiloxIsa kPhiloxIsas[] = {mf::PhiloxIsa::Avx512, mf::PhiloxIsa::Avx2, mf::PhiloxIsa::Generic};

const char* philox_isa_name(mf::PhiloxIsa isa) {
  return isa == mf::PhiloxIsa::Avx512 ? "avx512" : isa == mf::PhiloxIsa::Avx2 ? "avx2" : "generic";
}

bool runs_here(mf::PhiloxIsa isa) { return static_cast<int>(isa) <= static_cast<int>(mf::philox_best_isa()); }

mf::PhiloxIsa philox_isa(const std::string& name) {
  for (const mf::PhiloxIsa isa : kPhiloxIsas)
    if (name == philox_isa_name(isa)) {
      if (!runs_here(isa)) throw std::invalid_argument("this CPU does not run the " + name + " generator");
      return isa;
    }
  throw std::invalid_argument("unknown generator copy: " + name);
}

mf::Vec<double> to_vector(const InVec& a) { return {a.data(), a.data() + a.shape(0)}; }

mf::Engine make_engine(InVec log_s0, InVec mu, InVec v0, InVec kappa, InVec theta, InVec xi, InVec rho,
                       InMat loadings, InVec idio, InCube factor_chol, InVec regime_scale, InMat regime_switch,
                       InVec jump_lambda, InVec jump_mean, InVec jump_std, InMat lift_weight, InMat lift_speed,
                       double dt, std::uint64_t seed, int scheme, int threads) {
  if (scheme < 0 || scheme > 2) throw std::invalid_argument("scheme must be 0 (QE), 1 (Euler) or 2 (lifted)");
  mf::ModelParams p;
  p.n_assets = log_s0.shape(0);
  p.n_regimes = factor_chol.shape(0);
  p.n_factors = factor_chol.shape(1);
  if (factor_chol.shape(2) != p.n_factors) throw std::invalid_argument("factor_chol must be (regimes, K, K)");
  if (regime_switch.shape(0) != p.n_regimes || regime_switch.shape(1) != p.n_regimes)
    throw std::invalid_argument("regime_switch must be (regimes, regimes)");
  if (loadings.shape(0) != p.n_factors || loadings.shape(1) != p.n_assets)
    throw std::invalid_argument("loadings must have shape (n_factors, n_assets)");
  p.log_s0 = to_vector(log_s0);
  p.mu = to_vector(mu);
  p.v0 = to_vector(v0);
  p.kappa = to_vector(kappa);
  p.theta = to_vector(theta);
  p.xi = to_vector(xi);
  p.rho = to_vector(rho);
  p.loadings.assign(loadings.data(), loadings.data() + loadings.size());
  p.idio = to_vector(idio);
  p.factor_chol.assign(factor_chol.data(), factor_chol.data() + factor_chol.size());
  p.regime_scale = to_vector(regime_scale);
  p.regime_switch.assign(regime_switch.data(), regime_switch.data() + regime_switch.size());
  p.jump_lambda = to_vector(jump_lambda);
  p.jump_mean = to_vector(jump_mean);
  p.jump_std = to_vector(jump_std);
  if (lift_weight.shape(0) != lift_speed.shape(0) || lift_weight.shape(1) != p.n_assets ||
      lift_speed.shape(1) != p.n_assets)
    throw std::invalid_argument("lift_weight and lift_speed must both have shape (n_lift, n_assets)");
  p.n_lift = lift_weight.shape(0);
  p.lift_weight.assign(lift_weight.data(), lift_weight.data() + lift_weight.size());
  p.lift_speed.assign(lift_speed.data(), lift_speed.data() + lift_speed.size());
  p.dt = dt;
  p.seed = seed;
  p.scheme = static_cast<mf::Scheme>(scheme);
  return mf::Engine(std::move(p), threads);
}

void run(mf::Engine& e, std::size_t n, OutMat prices, OutMat variances, OutMat log_returns) {
  const std::size_t rows = prices.shape(0), N = e.n_assets();
  for (const OutMat* a : {&prices, &variances, &log_returns})
    if (a->shape(0) != rows || a->shape(1) != N)
      throw std::invalid_argument("output arrays must all have shape (rows, n_assets)");
  e.run(n, prices.data(), variances.data(), log_returns.data(), rows);
}

// The tick layer's last step: a step's columns -> (ticks, each tick's JSON bytes, the ticks left to the
// caller). The JSON is written by tickjson.hpp without the GIL; the ticks (instances of the Python
// tuple type given, with the fields in order) are made here with it, each field from its column in
// C, instead of nine lists zipped in Python (a third of the engine thread's time per tick).
class TickMaker {
 public:
  // The ticks share the symbols' str objects (as ticks built in Python did).
  TickMaker(nb::type_object tick_type, std::vector<nb::str> symbols, const std::vector<std::string>& symbol_json)
      : json_(symbol_json), type_(std::move(tick_type)), symbols_(std::move(symbols)) {
    if (!PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(type_.ptr()), &PyTuple_Type))
      throw std::invalid_argument("TickMaker: tick_type must be a tuple type (the Tick named tuple)");
    if (!nb::hasattr(type_, "_fields") || nb::len(nb::object(type_.attr("_fields"))) != kFields)
      throw std::invalid_argument("TickMaker: tick_type must have the nine fields of Tick");
    if (symbols_.size() != symbol_json.size())
      throw std::invalid_argument("TickMaker: one JSON string per symbol");
  }

  std::tuple<nb::typed<nb::list, nb::object>, nb::typed<nb::list, nb::bytes>, std::vector<std::size_t>> make(
      I64In asset, I64In seq, I64In gseq, std::int64_t ts, const std::string& time, InVec last_cents,
      InVec bid_cents, InVec ask_cents, I64In size, InVec vol) const {
    mf::TickColumns t;
    t.n = asset.shape(0);
    for (const std::size_t len : {seq.shape(0), gseq.shape(0), last_cents.shape(0), bid_cents.shape(0),
                                  ask_cents.shape(0), size.shape(0), vol.shape(0)})
      if (len != t.n) throw std::invalid_argument("make: every column must have one entry per tick");
    for (std::size_t i = 0; i < t.n; ++i)
      if (asset.data()[i] < 0 || static_cast<std::size_t>(asset.data()[i]) >= symbols_.size())
        throw std::invalid_argument("make: asset index out of range");
    std::vector<double> vol_rounded(t.n);
    t.asset = asset.data();
    t.seq = seq.data();
    t.gseq = gseq.data();
    t.last_cents = last_cents.data();
    t.bid_cents = bid_cents.data();
    t.ask_cents = ask_cents.data();
    t.size = size.data();
    t.vol = vol.data();
    t.vol_rounded = vol_rounded.data();
    std::string buf;
    std::vector<std::size_t> ends, left;
    {
      nb::gil_scoped_release released;
      json_.encode(t, ts, time, buf, ends, left);
    }
    const auto n = static_cast<Py_ssize_t>(t.n);
    nb::list ticks = nb::steal<nb::list>(check(PyList_New(n)));
    nb::list encoded = nb::steal<nb::list>(check(PyList_New(n)));
    const nb::object ts_obj = nb::int_(ts);
    auto* type = reinterpret_cast<PyTypeObject*>(type_.ptr());
    std::size_t start = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyList_SET_ITEM(encoded.ptr(), i,
                      check(PyBytes_FromStringAndSize(buf.data() + start, static_cast<Py_ssize_t>(ends[i] - start))));
      start = ends[i];
      // Prices are whole cents / 100: the doubles round(price, 2) gives. The list owns the tick as
      // soon as it exists, so an error below leaves nothing half-made behind.
      PyObject* tick = check(type->tp_alloc(type, kFields));
      PyList_SET_ITEM(ticks.ptr(), i, tick);
      PyObject* fields[kFields] = {
          symbols_[static_cast<std::size_t>(t.asset[i])].inc_ref().ptr(), PyLong_FromLongLong(t.seq[i]),
          PyLong_FromLongLong(t.gseq[i]), ts_obj.inc_ref().ptr(), PyFloat_FromDouble(t.last_cents[i] / 100.0),
          PyFloat_FromDouble(t.bid_cents[i] / 100.0), PyFloat_FromDouble(t.ask_cents[i] / 100.0),
          PyLong_FromLongLong(t.size[i]), PyFloat_FromDouble(vol_rounded[i])};
      for (int f = 0; f < kFields; ++f) PyTuple_SET_ITEM(tick, f, fields[f]);
      for (PyObject* f : fields) check(f);
      PyObject_GC_UnTrack(tick);  // a str, ints and floats: see untrack_ticks
    }
    return {nb::typed<nb::list, nb::object>(std::move(ticks)), nb::typed<nb::list, nb::bytes>(std::move(encoded)),
            std::move(left)};
  }

 private:
  static constexpr int kFields = 9;
  static PyObject* check(PyObject* o) {
    if (o == nullptr) throw nb::python_error();
    return o;
  }
  mf::TickJson json_;
  nb::type_object type_;
  std::vector<nb::str> symbols_;
};

// Shared by the readers of Tick tuples below (`what` names the function in an error).
constexpr Py_ssize_t kTickFields = 9;

PyObject* tick_list(const nb::handle ticks, const std::string& what) {
  if (!PyList_Check(ticks.ptr())) throw nb::type_error((what + ": ticks must be a list").c_str());
  return ticks.ptr();
}

PyObject* tick_at(PyObject* list, Py_ssize_t i, const std::string& what) {
  PyObject* t = PyList_GET_ITEM(list, i);
  if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != kTickFields) throw nb::type_error((what + ": every tick must be a Tick").c_str());
  return t;
}

std::int64_t as_int(PyObject* o) {
  const long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) throw nb::python_error();
  return static_cast<std::int64_t>(v);
}

double as_double(PyObject* o) {
  const double v = PyFloat_AsDouble(o);
  if (v == -1.0 && PyErr_Occurred()) throw nb::python_error();
  return v;
}

// The cyclic garbage collector walks every object it tracks. A tick holding only a str, ints and
// floats can never be part of a reference cycle, and CPython stops tracking such plain tuples itself,
// but not instances of a tuple subclass like Tick, nor tuples holding them; a server keeps a million
// ticks (the resume ring), and each full collection walked them all (docs/performance.md, section 1).
// Untracks each such tick of `ticks` (a list or tuple), then a tuple whose ticks all were; returns how
// many objects it untracked. Anything else is left as it is.
std::size_t untrack_ticks(nb::handle ticks) {
  PyObject* const seq = ticks.ptr();
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) throw nb::type_error("untrack_ticks: ticks must be a list or tuple");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** const items = PySequence_Fast_ITEMS(seq);
  std::size_t untracked = 0;
  bool all = true;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* const t = items[i];
    bool atomic = PyTuple_Check(t) && PyTuple_GET_SIZE(t) == kTickFields;
    for (Py_ssize_t f = 0; atomic && f < kTickFields; ++f) {
      PyObject* const v = PyTuple_GET_ITEM(t, f);
      atomic = PyUnicode_CheckExact(v) || PyLong_CheckExact(v) || PyFloat_CheckExact(v);
    }
    if (!atomic) {
      all = false;
    } else if (PyObject_GC_IsTracked(t)) {
      PyObject_GC_UnTrack(t);
      ++untracked;
    }
  }
  if (all && PyTuple_Check(seq) && PyObject_GC_IsTracked(seq)) {
    PyObject_GC_UnTrack(seq);
    ++untracked;
  }
  return untracked;
}

// The other way: ticks (Tick named tuples) -> columns, for the PostgreSQL store's blocks. Eight
// np.fromiter passes over the tuples took 0.3 us a tick on the writer's thread, holding the GIL the
// engine thread needs; one pass here takes a few nanoseconds a field. Rows of `ints`: symbol id (from
// `ids`), seq, gseq, ts, size; of `floats`: price, bid, ask, vol. Returns -1, or the index of the first
// tick whose symbol `ids` lacks (the caller numbers it and calls again).
Py_ssize_t tick_columns(nb::typed<nb::sequence, nb::object> ticks, nb::typed<nb::dict, nb::str, nb::int_> ids,
                        I64Out ints, OutMat floats) {
  PyObject* const list = tick_list(ticks, "tick_columns");
  const Py_ssize_t n = PyList_GET_SIZE(list);
  if (ints.shape(0) != 5 || floats.shape(0) != 4 || ints.shape(1) != static_cast<std::size_t>(n) ||
      floats.shape(1) != static_cast<std::size_t>(n))
    throw std::invalid_argument("tick_columns: ints must be 5 x len(ticks), floats 4 x len(ticks)");
  std::int64_t* const id = ints.data();
  std::int64_t* const seq = id + n;
  std::int64_t* const gseq = seq + n;
  std::int64_t* const ts = gseq + n;
  std::int64_t* const size = ts + n;
  double* const price = floats.data();
  double* const bid = price + n;
  double* const ask = bid + n;
  double* const vol = ask + n;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* t = tick_at(list, i, "tick_columns");
    PyObject* sym = PyDict_GetItemWithError(ids.ptr(), PyTuple_GET_ITEM(t, 0));
    if (sym == nullptr) {
      if (PyErr_Occurred()) throw nb::python_error();
      return i;
    }
    id[i] = as_int(sym);
    seq[i] = as_int(PyTuple_GET_ITEM(t, 1));
    gseq[i] = as_int(PyTuple_GET_ITEM(t, 2));
    ts[i] = as_int(PyTuple_GET_ITEM(t, 3));
    price[i] = as_double(PyTuple_GET_ITEM(t, 4));
    bid[i] = as_double(PyTuple_GET_ITEM(t, 5));
    ask[i] = as_double(PyTuple_GET_ITEM(t, 6));
    size[i] = as_int(PyTuple_GET_ITEM(t, 7));
    vol[i] = as_double(PyTuple_GET_ITEM(t, 8));
  }
  return -1;
}

// The SQLite store's parameters for the ticks [start, start + count) of `ticks`: their fields in order,
// the symbol (field 0) replaced by its number from `ids`, flattened into one tuple for an INSERT of
// `count` rows. The objects are the ticks' own (no conversion), as itertools.chain would give them.
// Returns None, binding nothing, if a symbol is not in `ids` (the caller numbers it and calls again).
nb::object tick_params(nb::typed<nb::sequence, nb::object> ticks, nb::typed<nb::dict, nb::str, nb::int_> ids,
                       std::size_t start, std::size_t count) {
  PyObject* const list = tick_list(ticks, "tick_params");
  const auto n = static_cast<std::size_t>(PyList_GET_SIZE(list));
  if (start > n || count > n - start) throw std::invalid_argument("tick_params: start + count exceeds len(ticks)");
  nb::object out = nb::steal(PyTuple_New(static_cast<Py_ssize_t>(count) * kTickFields));
  if (!out.is_valid()) throw nb::python_error();
  for (std::size_t i = 0; i < count; ++i) {
    PyObject* t = tick_at(list, static_cast<Py_ssize_t>(start + i), "tick_params");
    PyObject* id = PyDict_GetItemWithError(ids.ptr(), PyTuple_GET_ITEM(t, 0));
    if (id == nullptr) {
      if (PyErr_Occurred()) throw nb::python_error();
      return nb::none();
    }
    PyObject** row = &PyTuple_GET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i) * kTickFields);
    row[0] = Py_NewRef(id);
    for (Py_ssize_t f = 1; f < kTickFields; ++f) row[f] = Py_NewRef(PyTuple_GET_ITEM(t, f));
  }
  return out;
}

// The SQLite store's tick_minutes rows for a flush of ticks: (symbol, minute, first gseq, last gseq) of
// each symbol-minute, in the order first seen; None unless gseq grows strictly from tick to tick (the
// first and last seen are then the least and greatest; otherwise the store has SQLite work them out).
// One pass: a dict per batch in Python cost 0.26 us a tick under the GIL the engine thread needs.
nb::object tick_minutes(nb::typed<nb::sequence, nb::object> ticks, std::int64_t minute_ns) {
  PyObject* const list = tick_list(ticks, "tick_minutes");
  if (minute_ns <= 0) throw std::invalid_argument("tick_minutes: minute_ns must be > 0");
  struct Bounds {
    PyObject* symbol;
    std::int64_t minute, first, last;
  };
  using Key = std::pair<std::string_view, std::int64_t>;
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      return std::hash<std::string_view>()(k.first) ^ (static_cast<std::size_t>(k.second) * 0x9E3779B97F4A7C15ULL);
    }
  };
  std::vector<Bounds> bounds;
  std::unordered_map<Key, std::size_t, KeyHash> index;
  const Py_ssize_t n = PyList_GET_SIZE(list);
  std::int64_t previous = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* t = tick_at(list, i, "tick_minutes");
    PyObject* symbol = PyTuple_GET_ITEM(t, 0);
    Py_ssize_t size = 0;
    const char* name = PyUnicode_Check(symbol) ? PyUnicode_AsUTF8AndSize(symbol, &size) : nullptr;
    if (name == nullptr) throw nb::type_error("tick_minutes: a tick's symbol must be a str");
    const std::int64_t gseq = as_int(PyTuple_GET_ITEM(t, 2));
    const std::int64_t ts = as_int(PyTuple_GET_ITEM(t, 3));
    if (i > 0 && gseq <= previous) return nb::none();
    previous = gseq;
    const std::int64_t minute = ts / minute_ns - (ts % minute_ns < 0);  // floor, as Python's //
    const auto [it, added] = index.try_emplace(Key{std::string_view(name, static_cast<std::size_t>(size)), minute},
                                               bounds.size());
    if (added)
      bounds.push_back({symbol, minute, gseq, gseq});
    else
      bounds[it->second].last = gseq;
  }
  nb::list out;
  for (const Bounds& b : bounds)
    out.append(nb::make_tuple(nb::borrow(b.symbol), b.minute, b.first, b.last));
  return out;
}

// The tick blocks' COPY payload (pgcopy.hpp): the pointers are taken with the GIL, the bytes written
// without it, into a bytes object nobody else sees yet.
nb::bytes block_rows(nb::bytes head, nb::bytes tail, const std::vector<nb::bytes>& row_starts, I64In symbol,
                     I64In start, I64In end, nb::bytes summaries, std::size_t summary_width,
                     const std::vector<U64In>& columns, const std::vector<std::int32_t>& oids) {
  mf::BlockRows r;
  r.head = {head.c_str(), head.size()};
  r.tail = {tail.c_str(), tail.size()};
  for (const nb::bytes& b : row_starts) r.row_starts.emplace_back(b.c_str(), b.size());
  r.blocks = symbol.shape(0);
  if (start.shape(0) != r.blocks || end.shape(0) != r.blocks)
    throw std::invalid_argument("block_rows: symbol, start and end need one entry per block");
  if (summaries.size() != r.blocks * summary_width)
    throw std::invalid_argument("block_rows: summaries must hold summary_width bytes per block");
  r.symbol = symbol.data();
  r.start = start.data();
  r.end = end.data();
  r.summaries = reinterpret_cast<const unsigned char*>(summaries.c_str());
  r.summary_width = summary_width;
  r.ticks = columns.empty() ? 0 : columns[0].shape(0);
  for (const U64In& c : columns) {
    if (c.shape(0) != r.ticks) throw std::invalid_argument("block_rows: every column must have one value per tick");
    r.columns.push_back(c.data());
  }
  r.oids = oids;
  const std::size_t size = mf::block_rows_size(r);
  PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
  if (out == nullptr) throw nb::python_error();
  nb::bytes result = nb::steal<nb::bytes>(out);
  {
    nb::gil_scoped_release released;
    mf::write_block_rows(r, PyBytes_AS_STRING(out));
  }
  return result;
}

}  // namespace

NB_MODULE(_engine, m) {
  m.doc() = "marketfeed's compiled simulation core (factor model + Heston/Bates). Use marketfeed.engine.";
#ifdef MARKETFEED_NATIVE_BUILD
  m.attr("native") = true;  // built with -march=native for the build machine's CPU
#else
  m.attr("native") = false;  // portable build
#endif
  // The highest x86-64 level this CPU runs (the tests build the engine for each level up to it), and
  // which copy of the hot loops runs here: "native", the level the portable build dispatched to (the
  // loader's choice, by the same test), or "portable" elsewhere.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
  const bool v4 = __builtin_cpu_supports("x86-64-v4"), v3 = __builtin_cpu_supports("x86-64-v3");
  const bool v2 = __builtin_cpu_supports("x86-64-v2");
  m.attr("cpu_level") = v4 ? "x86-64-v4" : v3 ? "x86-64-v3" : v2 ? "x86-64-v2" : "x86-64";
#else
  m.attr("cpu_level") = "";
#endif
#if defined(MARKETFEED_NATIVE_BUILD)
  m.attr("isa") = "native";
#elif defined(MARKETFEED_DISPATCH)
  m.attr("isa") = v4 ? "x86-64-v4 (AVX-512)" : v3 ? "x86-64-v3 (AVX2)" : "x86-64";
#else
  m.attr("isa") = "portable";
#endif

  nb::class_<mf::Engine>(m, "Engine")
      .def(nb::new_(&make_engine), "log_s0"_a, "mu"_a, "v0"_a, "kappa"_a, "theta"_a, "xi"_a, "rho"_a,
           "loadings"_a, "idio"_a, "factor_chol"_a, "regime_scale"_a, "regime_switch"_a, "jump_lambda"_a,
           "jump_mean"_a, "jump_std"_a, "lift_weight"_a, "lift_speed"_a, "dt"_a,
           "seed"_a, "scheme"_a, "threads"_a = 1,
           "Build an engine from validated per-asset arrays (see marketfeed.engine.Simulator).")
      .def("run", &run, "n"_a, "prices"_a.noconvert(), "variances"_a.noconvert(),
           "log_returns"_a.noconvert(), nb::call_guard<nb::gil_scoped_release>(),
           "Advance n steps writing into (rows, n_assets) float64 arrays; rows is n (every step) or 1 "
           "(final prices/variances, log-return over the n steps).")
      .def("draw_only", &mf::Engine::draw_only, "n"_a, nb::call_guard<nb::gil_scoped_release>(),
           "Draw the random numbers n steps would consume and discard them (benchmark floor).")
      .def("state", [](const mf::Engine& e) {
             return std::make_tuple(e.step_index(), e.log_prices(), e.variances(), e.factor_levels(), e.regime(),
                                    e.lift_factors());
           }, "Return (step, log_prices, variances, factor_levels, regime, lift_factors).")
      .def("set_state", &mf::Engine::set_state, "step"_a, "log_prices"_a, "variances"_a, "factor_levels"_a,
           "regime"_a, "lift_factors"_a, "Restore a state returned by state().")
      .def("set_overlay", &mf::Engine::set_overlay, "var_scale"_a, "factor_chol"_a,
           "Scenario overlay: prices see var_scale * v; factor shocks use factor_chol (K*K row-major "
           "lower Cholesky factor) unless it is empty. (1.0, []) restores the model.")
      .def_prop_ro("var_scale", &mf::Engine::var_scale)
      .def_prop_rw("threads", &mf::Engine::threads, &mf::Engine::set_threads)
      .def_prop_ro("n_assets", &mf::Engine::n_assets)
      .def_prop_ro("n_factors", &mf::Engine::n_factors)
      .def_prop_ro("step_index", &mf::Engine::step_index)
      .def_prop_ro("dt", &mf::Engine::dt);

  nb::class_<TickMaker>(m, "TickMaker")
      .def(nb::init<nb::type_object, std::vector<nb::str>, const std::vector<std::string>&>(),
           "tick_type"_a, "symbols"_a, "symbol_json"_a,
           "Makes the ticks of these symbols (instances of tick_type, a nine-field tuple type) and their "
           "JSON; symbol_json is each symbol's JSON string, quotes included.")
      .def("make", &TickMaker::make, "asset"_a, "seq"_a, "gseq"_a, "ts"_a, "time"_a, "last_cents"_a,
           "bid_cents"_a, "ask_cents"_a, "size"_a, "vol"_a,
           "(ticks, their JSON, left): prices are cents / 100, vol is round(vol, 6), the JSON is orjson's "
           "bytes for Tick.to_dict(). For the ticks in left (a value outside the cent grid's range, or "
           "a volatility it cannot round, which is then NaN) the JSON is empty, for the caller to fill in.");

  m.def("untrack_ticks", &untrack_ticks, "ticks"_a,
        "Stop the cyclic garbage collector tracking each tick of a list or tuple that holds only a str, "
        "ints and floats (it can be in no cycle), then a tuple of such ticks; the number untracked.");
  m.def("tick_columns", &tick_columns, "ticks"_a, "ids"_a, "ints"_a.noconvert(), "floats"_a.noconvert(),
        "Fill `ints` (symbol id, seq, gseq, ts, size) and `floats` (price, bid, ask, vol), one column per "
        "row, from a list of Tick; -1, or the index of the first tick whose symbol `ids` lacks.");
  m.def("tick_params", &tick_params, "ticks"_a, "ids"_a, "start"_a, "count"_a,
        "The INSERT parameters of ticks[start:start + count]: every field in order, the symbol replaced by "
        "ids[symbol], in one flat tuple; None if a symbol is not in ids.");
  m.def("tick_minutes", &tick_minutes, "ticks"_a, "minute_ns"_a,
        "(symbol, minute, first gseq, last gseq) of each symbol-minute of a list of Tick, in the order first "
        "seen (minute = ts // minute_ns); None unless gseq grows strictly from tick to tick.");
  m.def("block_rows", &block_rows, "head"_a, "tail"_a, "row_starts"_a, "symbol"_a, "start"_a, "end"_a,
        "summaries"_a, "summary_width"_a, "columns"_a.noconvert(), "oids"_a,
        "The binary COPY payload of tick blocks: head, then per block its symbol's row start, its summary "
        "bytes and one array per column (values given as 8-byte words: a float64 column viewed as uint64), "
        "then tail.");
  m.def("philox4x32_10", [](std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                            std::uint32_t k0, std::uint32_t k1) {
          const mf::U32x4 r = mf::philox4x32_10({c0, c1, c2, c3}, k0, k1);
          return std::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
        }, "c0"_a, "c1"_a, "c2"_a, "c3"_a, "k0"_a, "k1"_a,
        "One Philox4x32-10 block, exposed for known-answer tests.");
  // Each copy of the block generator this CPU runs, best first, so the tests can check them all.
  m.def("philox_isas", [] {
        std::vector<std::string> isas;
        for (const mf::PhiloxIsa isa : kPhiloxIsas)
          if (runs_here(isa)) isas.push_back(philox_isa_name(isa));
        return isas;
      }, "The copies of the block generator this CPU runs, fastest first.");
  m.def("philox4x32_10_block", [](U32Mat out, std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                                  std::uint32_t k0, std::uint32_t k1, const std::string& isa) {
          if (out.shape(0) != 4) throw std::invalid_argument("out must have 4 rows");
          const std::size_t n = out.shape(1);
          std::uint32_t* r = out.data();
          mf::philox_block_fn(philox_isa(isa))(c0, n, c1, c2, c3, k0, k1, r, r + n, r + 2 * n, r + 3 * n);
        }, "out"_a.noconvert(), "c0"_a, "c1"_a, "c2"_a, "c3"_a, "k0"_a, "k1"_a, "isa"_a,
        "The engine's block generator (one of philox_isas()) for counters (c0 + j, c1, c2, c3), into a (4, n) array.");
  m.def("normals_from_bits", [](U32Vec bits, F32Vec out) {
          if (bits.shape(0) != out.shape(0)) throw std::invalid_argument("bits and out differ in length");
          mf::normals_from_bits(bits.data(), out.data(), bits.shape(0));
        }, "bits"_a, "out"_a.noconvert(),
        "The engine's transform for a block of words (tail branch only in chunks that need it), into out.");
  m.def("normal_from_bits", &mf::normal_from_bits, "bits"_a,
        "The engine's uint32 -> standard normal transform (inverse CDF), exposed for tests.");
}
