// Native CPU kernels of jax_deconv's transposed convolution, under the XLA FFI.
//
// Three linear maps of one canonical 3-D problem (lower ranks carry unit axes), channels-last:
//   forward  y[n, o, g*Cgo + j]  = sum_{q, i} x[n, p, g*Cgi + i] * wf[g, q, i, j]
//   dx       dx[n, p, g*Cgi + i] = sum_{q, j} dy[n, o, g*Cgo + j] * wt[g, q, j, i]
//   dw       dw[g, q, i, j]      = sum_{n, p} x[n, p, g*Cgi + i] * dy[n, o, g*Cgo + j]
// over the pairs (p, q) with o = s*p + d*q - pad_begin per axis inside the output (positions
// past the full length receive nothing). Each map writes every element of its result.
//
// Along the last spatial axis the positions of one tap form a run: consecutive input
// positions p land s apart in the output. Each run is one small matrix product written
// straight into the strided rows it owns: no im2col, no interleave pass. Work is split over
// output rows (forward: batch x output depth; dx: batch x input depth; dw: group x tap), so
// no two threads write the same element; threads come from XLA's intra-op pool.
//
// ISA: the row functions are compiled for AVX-512, AVX2+FMA and the baseline from this one
// source (GCC/Clang target attributes on x86-64) and the best one the processor has is chosen
// when the module loads (JAX_DECONV_ISA=avx2+fma or =baseline picks a lower one, for tests);
// elsewhere (aarch64...) the portable build alone.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include <Python.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__x86_64__) && defined(__GNUC__)
#define JD_X86 1
#endif
#define JD_INLINE inline __attribute__((always_inline))

struct Geometry {
  int64_t n, g, cgi, cgo;
  int64_t in[3], out[3], k[3], s[3], d[3], pb[3];
  int64_t cin() const { return g * cgi; }
  int64_t cout() const { return g * cgo; }
};

constexpr int64_t kGeometrySize = 22;

bool read_geometry(ffi::Span<const int64_t> v, Geometry* geo) {
  if (v.size() != kGeometrySize) return false;
  geo->n = v[0];
  geo->g = v[1];
  geo->cgi = v[2];
  geo->cgo = v[3];
  for (int a = 0; a < 3; ++a) {
    geo->in[a] = v[4 + a];
    geo->out[a] = v[7 + a];
    geo->k[a] = v[10 + a];
    geo->s[a] = v[13 + a];
    geo->d[a] = v[16 + a];
    geo->pb[a] = v[19 + a];
  }
  for (int64_t x : v)
    if (x < 0) return false;
  for (int a = 0; a < 3; ++a)
    if (geo->s[a] < 1 || geo->d[a] < 1 || geo->k[a] < 1 || geo->in[a] < 1 || geo->out[a] < 1) return false;
  return geo->g >= 1;
}

JD_INLINE int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// The input positions p in [0, size) whose tap q lands inside [0, out): o = s*p + d*q - pb.
struct Run {
  int64_t lo, hi, o0;  // p in [lo, hi); p = lo lands at o0
};

JD_INLINE Run run_of(int64_t size, int64_t out, int64_t s, int64_t dq, int64_t pb) {
  int64_t lo = std::max<int64_t>(0, -floor_div(dq - pb, s));  // ceil((pb - dq) / s)
  int64_t hi = std::min<int64_t>(size, floor_div(out - 1 + pb - dq, s) + 1);
  return Run{lo, hi, s * lo + dq - pb};
}

// The input position whose tap q lands on output position o, or -1.
JD_INLINE int64_t source_of(int64_t o, int64_t size, int64_t s, int64_t dq, int64_t pb) {
  int64_t t = o + pb - dq;
  if (t < 0 || t % s) return -1;
  t /= s;
  return t < size ? t : -1;
}

// Vectors of VB bytes (GCC's vector extensions), VB being the processor's register width in
// each variant: 64 with AVX-512, 32 with AVX2, 16 on the baseline. (Wider vectors than the
// registers compile to spills.)
template <typename T, int Bytes>
struct Vec {
  typedef T type __attribute__((vector_size(Bytes)));
  static constexpr int lanes = Bytes / int(sizeof(T));
};

template <typename V>
JD_INLINE V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
JD_INLINE void store(void* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

constexpr int kRows = 6;  // rows of C per register tile: 6 x 2 vectors = 12 accumulators

// C[m, j0 : j0 + NV*L] += sum_k A[m, k] * B[k, j0 : j0 + NV*L] for m < M (L: a vector's lanes).
// A[m, k] is at A + m*am + k*ak (so A may be read transposed), rows of B and C are ldb and ldc
// elements apart.
template <typename T, int VB, int NV>
JD_INLINE void gemm_strip(int64_t M, int64_t K, int64_t j0, const T* A, int64_t am, int64_t ak, const T* B,
                          int64_t ldb, T* C, int64_t ldc) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::lanes;
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows) {
    V acc[kRows][NV];
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = load<V>(C + (m + r) * ldc + j0 + v * L);
    const T* a = A + m * am;
    for (int64_t k = 0; k < K; ++k) {
      V b[NV];
      for (int v = 0; v < NV; ++v) b[v] = load<V>(B + k * ldb + j0 + v * L);
      for (int r = 0; r < kRows; ++r) {
        const T ar = a[r * am + k * ak];
        for (int v = 0; v < NV; ++v) acc[r][v] += ar * b[v];
      }
    }
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < NV; ++v) store(C + (m + r) * ldc + j0 + v * L, acc[r][v]);
  }
  for (; m < M; ++m) {
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = load<V>(C + m * ldc + j0 + v * L);
    for (int64_t k = 0; k < K; ++k) {
      const T a = A[m * am + k * ak];
      for (int v = 0; v < NV; ++v) acc[v] += a * load<V>(B + k * ldb + j0 + v * L);
    }
    for (int v = 0; v < NV; ++v) store(C + m * ldc + j0 + v * L, acc[v]);
  }
}

// C (M x N) += A (M x K) . B (K x N), with A's strides as in gemm_strip.
template <typename T, int VB>
JD_INLINE void gemm(int64_t M, int64_t K, int64_t N, const T* A, int64_t am, int64_t ak, const T* B, int64_t ldb,
                    T* C, int64_t ldc) {
  constexpr int L = Vec<T, VB>::lanes;
  int64_t j = 0;
  for (; j + 2 * L <= N; j += 2 * L) gemm_strip<T, VB, 2>(M, K, j, A, am, ak, B, ldb, C, ldc);
  for (; j + L <= N; j += L) gemm_strip<T, VB, 1>(M, K, j, A, am, ak, B, ldb, C, ldc);
  if constexpr (VB > 16) {
    constexpr int L2 = Vec<T, VB / 2>::lanes;
    for (; j + L2 <= N; j += L2) gemm_strip<T, VB / 2, 1>(M, K, j, A, am, ak, B, ldb, C, ldc);
  }
  for (; j < N; ++j)
    for (int64_t m = 0; m < M; ++m) {
      T acc = C[m * ldc + j];
      for (int64_t k = 0; k < K; ++k) acc += A[m * am + k * ak] * B[k * ldb + j];
      C[m * ldc + j] = acc;
    }
}

// ---------------------------------------------------------------------------- the three maps

// Forward, output rows (n, od) for item = n * OD + od.
template <typename T, int VB>
JD_INLINE void forward_rows(const Geometry& geo, const T* x, const T* wf, T* y, int64_t begin, int64_t end) {
  const int64_t cin = geo.cin(), cout = geo.cout();
  const int64_t D = geo.in[0], H = geo.in[1], W = geo.in[2];
  const int64_t OD = geo.out[0], OH = geo.out[1], OW = geo.out[2];
  const int64_t KD = geo.k[0], KH = geo.k[1], KW = geo.k[2];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / OD, od = item % OD;
    T* yrow = y + item * OH * OW * cout;
    std::memset(static_cast<void*>(yrow), 0, sizeof(T) * OH * OW * cout);
    for (int64_t qd = 0; qd < KD; ++qd) {
      const int64_t pd = source_of(od, D, geo.s[0], geo.d[0] * qd, geo.pb[0]);
      if (pd < 0) continue;
      for (int64_t oh = 0; oh < OH; ++oh) {
        for (int64_t qh = 0; qh < KH; ++qh) {
          const int64_t ph = source_of(oh, H, geo.s[1], geo.d[1] * qh, geo.pb[1]);
          if (ph < 0) continue;
          for (int64_t qw = 0; qw < KW; ++qw) {
            const Run r = run_of(W, OW, geo.s[2], geo.d[2] * qw, geo.pb[2]);
            if (r.lo >= r.hi) continue;
            const T* xrow = x + (((n * D + pd) * H + ph) * W + r.lo) * cin;
            T* out = yrow + (oh * OW + r.o0) * cout;
            for (int64_t g = 0; g < geo.g; ++g) {
              const T* w = wf + (((g * KD + qd) * KH + qh) * KW + qw) * geo.cgi * geo.cgo;
              gemm<T, VB>(r.hi - r.lo, geo.cgi, geo.cgo, xrow + g * geo.cgi, cin, 1, w, geo.cgo, out + g * geo.cgo,
                          geo.s[2] * cout);
            }
          }
        }
      }
    }
  }
}

// Input gradient, rows (n, pd) for item = n * D + pd.
template <typename T, int VB>
JD_INLINE void dx_rows(const Geometry& geo, const T* dy, const T* wt, T* dx, int64_t begin, int64_t end) {
  const int64_t cin = geo.cin(), cout = geo.cout();
  const int64_t D = geo.in[0], H = geo.in[1], W = geo.in[2];
  const int64_t OD = geo.out[0], OH = geo.out[1], OW = geo.out[2];
  const int64_t KD = geo.k[0], KH = geo.k[1], KW = geo.k[2];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / D, pd = item % D;
    T* xrow = dx + item * H * W * cin;
    std::memset(static_cast<void*>(xrow), 0, sizeof(T) * H * W * cin);
    for (int64_t qd = 0; qd < KD; ++qd) {
      const int64_t od = geo.s[0] * pd + geo.d[0] * qd - geo.pb[0];
      if (od < 0 || od >= OD) continue;
      for (int64_t ph = 0; ph < H; ++ph) {
        for (int64_t qh = 0; qh < KH; ++qh) {
          const int64_t oh = geo.s[1] * ph + geo.d[1] * qh - geo.pb[1];
          if (oh < 0 || oh >= OH) continue;
          for (int64_t qw = 0; qw < KW; ++qw) {
            const Run r = run_of(W, OW, geo.s[2], geo.d[2] * qw, geo.pb[2]);
            if (r.lo >= r.hi) continue;
            const T* dyrow = dy + (((n * OD + od) * OH + oh) * OW + r.o0) * cout;
            T* out = xrow + (ph * W + r.lo) * cin;
            for (int64_t g = 0; g < geo.g; ++g) {
              const T* w = wt + (((g * KD + qd) * KH + qh) * KW + qw) * geo.cgo * geo.cgi;
              gemm<T, VB>(r.hi - r.lo, geo.cgo, geo.cgi, dyrow + g * geo.cgo, geo.s[2] * cout, 1, w, geo.cgi,
                          out + g * geo.cgi, cin);
            }
          }
        }
      }
    }
  }
}

// Weight gradient, items (g, qd, qh, qw) in that order.
template <typename T, int VB>
JD_INLINE void dw_items(const Geometry& geo, const T* x, const T* dy, T* dw, int64_t begin, int64_t end) {
  const int64_t cin = geo.cin(), cout = geo.cout();
  const int64_t D = geo.in[0], H = geo.in[1], W = geo.in[2];
  const int64_t OD = geo.out[0], OH = geo.out[1], OW = geo.out[2];
  const int64_t KD = geo.k[0], KH = geo.k[1], KW = geo.k[2];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t qw = item % KW, qh = (item / KW) % KH, qd = (item / (KW * KH)) % KD, g = item / (KW * KH * KD);
    T* out = dw + item * geo.cgi * geo.cgo;
    std::memset(static_cast<void*>(out), 0, sizeof(T) * geo.cgi * geo.cgo);
    const Run r = run_of(W, OW, geo.s[2], geo.d[2] * qw, geo.pb[2]);
    if (r.lo >= r.hi) continue;
    for (int64_t n = 0; n < geo.n; ++n) {
      for (int64_t pd = 0; pd < D; ++pd) {
        const int64_t od = geo.s[0] * pd + geo.d[0] * qd - geo.pb[0];
        if (od < 0 || od >= OD) continue;
        for (int64_t ph = 0; ph < H; ++ph) {
          const int64_t oh = geo.s[1] * ph + geo.d[1] * qh - geo.pb[1];
          if (oh < 0 || oh >= OH) continue;
          const T* xrow = x + (((n * D + pd) * H + ph) * W + r.lo) * cin + g * geo.cgi;
          const T* dyrow = dy + (((n * OD + od) * OH + oh) * OW + r.o0) * cout + g * geo.cgo;
          // dw[q] (Cg_in x Cg_out) += x_run^T . dy_run: x read transposed, positions as the sum
          gemm<T, VB>(geo.cgi, r.hi - r.lo, geo.cgo, xrow, 1, cin, dyrow, geo.s[2] * cout, out, geo.cgo);
        }
      }
    }
  }
}

// One entry per (map, dtype), compiled once per ISA; `kernels` is the set chosen at load time.
template <typename T>
using RowFn = void (*)(const Geometry&, const T*, const T*, T*, int64_t, int64_t);

struct KernelSet {
  const char* isa;
  RowFn<float> forward32, dx32, dw32;
  RowFn<double> forward64, dx64, dw64;
};

#define JD_VARIANT(ATTR, NAME, ISA, VB)                                                                           \
  ATTR void forward32_##NAME(const Geometry& g, const float* a, const float* b, float* c, int64_t i, int64_t j) { \
    forward_rows<float, VB>(g, a, b, c, i, j);                                                                  \
  }                                                                                                         \
  ATTR void dx32_##NAME(const Geometry& g, const float* a, const float* b, float* c, int64_t i, int64_t j) {    \
    dx_rows<float, VB>(g, a, b, c, i, j);                                                                       \
  }                                                                                                         \
  ATTR void dw32_##NAME(const Geometry& g, const float* a, const float* b, float* c, int64_t i, int64_t j) {    \
    dw_items<float, VB>(g, a, b, c, i, j);                                                                      \
  }                                                                                                         \
  ATTR void forward64_##NAME(const Geometry& g, const double* a, const double* b, double* c, int64_t i,        \
                             int64_t j) {                                                                   \
    forward_rows<double, VB>(g, a, b, c, i, j);                                                                 \
  }                                                                                                         \
  ATTR void dx64_##NAME(const Geometry& g, const double* a, const double* b, double* c, int64_t i, int64_t j) { \
    dx_rows<double, VB>(g, a, b, c, i, j);                                                                      \
  }                                                                                                         \
  ATTR void dw64_##NAME(const Geometry& g, const double* a, const double* b, double* c, int64_t i, int64_t j) { \
    dw_items<double, VB>(g, a, b, c, i, j);                                                                     \
  }                                                                                                         \
  const KernelSet kernels_##NAME = {ISA,           forward32_##NAME, dx32_##NAME, dw32_##NAME,              \
                                    forward64_##NAME, dx64_##NAME,  dw64_##NAME};

#ifdef JD_X86
JD_VARIANT(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), avx512, "avx512f", 64)
JD_VARIANT(__attribute__((target("avx2,fma"))), avx2, "avx2+fma", 32)
JD_VARIANT(, baseline, "x86-64 baseline", 16)
#else
JD_VARIANT(, baseline, "portable C++", 16)
#endif

// The best set this processor runs, or the one JAX_DECONV_ISA names if the processor has it.
const KernelSet* choose_kernels() {
#ifdef JD_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* wanted = std::getenv("JAX_DECONV_ISA");
  const std::string want = wanted ? wanted : "";
  if (want == "baseline") return &kernels_baseline;
  if (want == "avx2+fma" && avx2) return &kernels_avx2;
  if (avx512) return &kernels_avx512;
  if (avx2) return &kernels_avx2;
#endif
  return &kernels_baseline;
}

const KernelSet* const kernels = choose_kernels();

// ---------------------------------------------------------------------------- threads

// Runs body(begin, end) over [0, items) in chunks, on the calling thread and on up to
// threads - 1 helpers from XLA's pool. A helper that starts after every chunk was taken
// touches nothing but the shared counters (kept alive by shared_ptr); the caller returns
// once every chunk is done, computing any that no helper took.
template <typename Body>
void parallel_for(ffi::ThreadPool& pool, int64_t items, const Body& body) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), items));
  if (threads <= 1 || items <= 1) {
    body(0, items);
    return;
  }
  const int64_t chunks = std::min<int64_t>(items, 4 * threads);
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  // A participant takes chunks while any is left; a helper that starts after the last one was
  // taken touches only `state` (which it co-owns), never `body`, which outlives every chunk.
  auto drain = [state, chunks, items, body_ptr = &body]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      (*body_ptr)(c * items / chunks, (c + 1) * items / chunks);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule([drain]() { drain(); });
  drain();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// ---------------------------------------------------------------------------- FFI handlers

enum class Map { kForward, kDx, kDw };

template <Map kMap>
ffi::Error run(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
               ffi::Span<const int64_t> geometry) {
  Geometry geo;
  if (!read_geometry(geometry, &geo)) return ffi::Error::InvalidArgument("jax_deconv native: bad geometry");
  const ffi::DataType type = a.element_type();
  if (b.element_type() != type || out->element_type() != type)
    return ffi::Error::InvalidArgument("jax_deconv native: operands of different dtypes");
  const int64_t items = kMap == Map::kForward ? geo.n * geo.out[0]
                        : kMap == Map::kDx    ? geo.n * geo.in[0]
                                              : geo.g * geo.k[0] * geo.k[1] * geo.k[2];
  if (type == ffi::DataType::F32) {
    auto* pa = static_cast<const float*>(a.untyped_data());
    auto* pb = static_cast<const float*>(b.untyped_data());
    auto* pc = static_cast<float*>(out->untyped_data());
    const RowFn<float> fn = kMap == Map::kForward ? kernels->forward32 : kMap == Map::kDx ? kernels->dx32 : kernels->dw32;
    parallel_for(pool, items, [&](int64_t i, int64_t j) { fn(geo, pa, pb, pc, i, j); });
  } else if (type == ffi::DataType::F64) {
    auto* pa = static_cast<const double*>(a.untyped_data());
    auto* pb = static_cast<const double*>(b.untyped_data());
    auto* pc = static_cast<double*>(out->untyped_data());
    const RowFn<double> fn = kMap == Map::kForward ? kernels->forward64 : kMap == Map::kDx ? kernels->dx64 : kernels->dw64;
    parallel_for(pool, items, [&](int64_t i, int64_t j) { fn(geo, pa, pb, pc, i, j); });
  } else {
    return ffi::Error::InvalidArgument("jax_deconv native: only float32 and float64");
  }
  return ffi::Error::Success();
}

}  // namespace

#define JD_BIND                             \
  ffi::Ffi::Bind()                          \
      .Ctx<ffi::ThreadPool>()               \
      .Arg<ffi::AnyBuffer>()                \
      .Arg<ffi::AnyBuffer>()                \
      .Ret<ffi::AnyBuffer>()                \
      .Attr<ffi::Span<const int64_t>>("geometry")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdForward, run<Map::kForward>, JD_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JdDx, run<Map::kDx>, JD_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JdDw, run<Map::kDw>, JD_BIND);

// ---------------------------------------------------------------------------- Python module

namespace {

PyObject* handlers(PyObject*, PyObject*) {
  PyObject* dict = PyDict_New();
  if (!dict) return nullptr;
  const struct {
    const char* name;
    void* fn;
  } entries[] = {{"forward", reinterpret_cast<void*>(JdForward)},
                 {"dx", reinterpret_cast<void*>(JdDx)},
                 {"dw", reinterpret_cast<void*>(JdDw)}};
  for (const auto& e : entries) {
    PyObject* capsule = PyCapsule_New(e.fn, nullptr, nullptr);
    if (!capsule || PyDict_SetItemString(dict, e.name, capsule) < 0) {
      Py_XDECREF(capsule);
      Py_DECREF(dict);
      return nullptr;
    }
    Py_DECREF(capsule);
  }
  return dict;
}

PyObject* isa_name(PyObject*, PyObject*) { return PyUnicode_FromString(kernels->isa); }

PyMethodDef methods[] = {
    {"handlers", handlers, METH_NOARGS, "The FFI handlers: {'forward', 'dx', 'dw'} -> PyCapsule."},
    {"isa", isa_name, METH_NOARGS, "The instruction set the kernels run on this processor."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "jax_deconv's native CPU kernels (XLA FFI).", -1,
                      methods};

}  // namespace

PyMODINIT_FUNC PyInit__kernels() { return PyModule_Create(&module); }
