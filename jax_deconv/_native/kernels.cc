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
#include <new>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <Python.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__x86_64__) && defined(__GNUC__)
#define JD_X86 1
#include <immintrin.h>
#endif
#define JD_INLINE inline __attribute__((always_inline))
#define JD_LAMBDA_INLINE __attribute__((always_inline))  // so a lambda compiles for its caller's ISA

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

// bfloat16 as stored: the high half of a float32. Inputs widen exactly; results are rounded to
// nearest-even once, from the float32 accumulator.
struct bf16 {
  uint16_t bits;
};

JD_INLINE float widen(bf16 v) {
  const uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
JD_INLINE float widen(float v) { return v; }
JD_INLINE double widen(double v) { return v; }

JD_INLINE bf16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // NaN stays (quiet) NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
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

// A vector of V's lanes read from p, widened from bfloat16 when S is.
template <typename V, typename S>
JD_INLINE V load_as(const S* p) {
  if constexpr (std::is_same_v<S, bf16>) {
    typedef uint16_t Half __attribute__((vector_size(sizeof(V) / 2)));
    typedef uint32_t Word __attribute__((vector_size(sizeof(V))));
    const Word w = __builtin_convertvector(load<Half>(p), Word) << 16;
    return (V)w;
  } else {
    return load<V>(p);
  }
}

constexpr int kRows = 6;  // rows of C per register tile: 6 x 2 vectors = 12 accumulators

// C[m, j0 : j0 + NV*L] += sum_k A[m, k] * B[k, j0 : j0 + NV*L] for m < M (L: a vector's lanes).
// A[m, k] is at A + m*am + k*ak (so A may be read transposed), rows of B and C are ldb and ldc
// elements apart. A and B may be bfloat16 (widened as read); C is the accumulator's type T.
template <typename TA, typename TB, typename T, int VB, int NV>
JD_INLINE void gemm_strip(int64_t M, int64_t K, int64_t j0, const TA* A, int64_t am, int64_t ak, const TB* B,
                          int64_t ldb, T* C, int64_t ldc) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::lanes;
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows) {
    V acc[kRows][NV];
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = load<V>(C + (m + r) * ldc + j0 + v * L);
    const TA* a = A + m * am;
    for (int64_t k = 0; k < K; ++k) {
      V b[NV];
      for (int v = 0; v < NV; ++v) b[v] = load_as<V>(B + k * ldb + j0 + v * L);
      for (int r = 0; r < kRows; ++r) {
        const T ar = widen(a[r * am + k * ak]);
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
      const T a = widen(A[m * am + k * ak]);
      for (int v = 0; v < NV; ++v) acc[v] += a * load_as<V>(B + k * ldb + j0 + v * L);
    }
    for (int v = 0; v < NV; ++v) store(C + m * ldc + j0 + v * L, acc[v]);
  }
}

// C (M x N) += A (M x K) . B (K x N), with A's strides as in gemm_strip.
template <typename TA, typename TB, typename T, int VB>
JD_INLINE void gemm(int64_t M, int64_t K, int64_t N, const TA* A, int64_t am, int64_t ak, const TB* B, int64_t ldb,
                    T* C, int64_t ldc) {
  constexpr int L = Vec<T, VB>::lanes;
  int64_t j = 0;
  for (; j + 2 * L <= N; j += 2 * L) gemm_strip<TA, TB, T, VB, 2>(M, K, j, A, am, ak, B, ldb, C, ldc);
  for (; j + L <= N; j += L) gemm_strip<TA, TB, T, VB, 1>(M, K, j, A, am, ak, B, ldb, C, ldc);
  if constexpr (VB > 16) {
    constexpr int L2 = Vec<T, VB / 2>::lanes;
    for (; j + L2 <= N; j += L2) gemm_strip<TA, TB, T, VB / 2, 1>(M, K, j, A, am, ak, B, ldb, C, ldc);
  }
  for (; j < N; ++j)
    for (int64_t m = 0; m < M; ++m) {
      T acc = C[m * ldc + j];
      for (int64_t k = 0; k < K; ++k) acc += widen(A[m * am + k * ak]) * widen(B[k * ldb + j]);
      C[m * ldc + j] = acc;
    }
}

// The weight operand of the forward and the input gradient, as `Gemm::run` reads it: one block
// of `block` elements per (group, tap), holding that tap's K x N matrix (K: the channels summed).
template <typename TA, typename TB, typename T, int VB>
struct Fma {  // plain rows of N (float32/float64, or bfloat16 widened to float32 once per call)
  using A = TA;
  using B = TB;
  using Acc = T;
  static JD_INLINE void run(int64_t M, int64_t K, int64_t N, const TA* a, int64_t am, const TB* b, T* c,
                            int64_t ldc) {
    gemm<TA, TB, T, VB>(M, K, N, a, am, 1, b, N, c, ldc);
  }
};

#if defined(JD_X86) && (defined(__clang__) || __GNUC__ >= 10)
#define JD_DPBF16 1
#define JD_TARGET_BF16 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")))

// AVX512-BF16: vdpbf16ps adds the products of a pair of bfloat16 (k, k+1) into float32 lanes,
// twice the multiply-adds of float32 per instruction. B is packed per tap as pairs:
// Bp[k2 * n32 + j] = (B[2 k2, j], B[2 k2 + 1, j]) (zero past K), n32 = N rounded up to 32.
template <int R, int NV>
JD_TARGET_BF16 inline void dp_tile(int64_t K, const bf16* A, int64_t am, int64_t ak2, const uint32_t* B, int64_t n32,
                                   float* C, int64_t ldc, __mmask16 m0, __mmask16 m1) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    acc[r][0] = _mm512_maskz_loadu_ps(m0, C + r * ldc);
    if (NV > 1) acc[r][NV - 1] = _mm512_maskz_loadu_ps(m1, C + r * ldc + 16);
  }
  const int64_t K2 = K / 2;
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    __m512bh b[NV];
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(B + k2 * n32 + 16 * v);
    for (int r = 0; r < R; ++r) {
      uint32_t pair;
      std::memcpy(&pair, A + r * am + k2 * ak2, 4);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(pair));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
  if (K & 1) {  // the last channel alone: its pair's second half is zero in A and in B
    __m512bh b[NV];
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(B + K2 * n32 + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(A[r * am + K2 * ak2].bits));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, acc[r][0]);
    if (NV > 1) _mm512_mask_storeu_ps(C + r * ldc + 16, m1, acc[r][NV - 1]);
  }
}

template <int NV>
JD_TARGET_BF16 inline void dp_rows(int64_t M, int64_t K, const bf16* A, int64_t am, int64_t ak2, const uint32_t* B,
                                   int64_t n32, float* C, int64_t ldc, __mmask16 m0, __mmask16 m1) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) dp_tile<8, NV>(K, A + m * am, am, ak2, B, n32, C + m * ldc, ldc, m0, m1);
  for (; m + 4 <= M; m += 4) dp_tile<4, NV>(K, A + m * am, am, ak2, B, n32, C + m * ldc, ldc, m0, m1);
  for (; m < M; ++m) dp_tile<1, NV>(K, A + m * am, am, ak2, B, n32, C + m * ldc, ldc, m0, m1);
}

// C (M x N, float32) += A (M x K, bfloat16) . B (packed). A's pair (k, k+1) of row m is adjacent,
// at A + m*am + (k/2)*ak2 (bfloat16 units); with K odd the last k is read alone.
JD_TARGET_BF16 void gemm_dp(int64_t M, int64_t K, int64_t N, const bf16* A, int64_t am, int64_t ak2, const uint32_t* B,
                            float* C, int64_t ldc) {
  const int64_t n32 = (N + 31) / 32 * 32;
  for (int64_t j = 0; j < N; j += 32) {
    const int64_t left = N - j;
    const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    if (left > 16) {
      const __mmask16 m1 = left >= 32 ? __mmask16(0xffff) : __mmask16((1u << (left - 16)) - 1);
      dp_rows<2>(M, K, A, am, ak2, B + j, n32, C + j, ldc, m0, m1);
    } else {
      dp_rows<1>(M, K, A, am, ak2, B + j, n32, C + j, ldc, m0, 0);
    }
  }
}

struct Dp {
  using A = bf16;
  using B = uint32_t;
  using Acc = float;
  static JD_INLINE void run(int64_t M, int64_t K, int64_t N, const bf16* a, int64_t am, const uint32_t* b, float* c,
                            int64_t ldc) {
    gemm_dp(M, K, N, a, am, 2, b, c, ldc);
  }
};
#endif

// The f32 accumulator of a row that is stored in a narrower type: its own buffer, rounded into
// the output at the end; when the output is the accumulator's type, the output itself.
template <typename TX, typename T>
struct RowAccumulator {
  std::unique_ptr<T[]> buffer;
  explicit RowAccumulator(int64_t size) {
    if constexpr (!std::is_same_v<TX, T>) buffer.reset(new T[size]);
  }
  T* begin(TX* row, int64_t size) {
    T* acc;
    if constexpr (std::is_same_v<TX, T>) acc = row;
    else acc = buffer.get();
    std::memset(static_cast<void*>(acc), 0, sizeof(T) * size);
    return acc;
  }
  void finish(TX* row, int64_t size) {
    if constexpr (!std::is_same_v<TX, T>)
      for (int64_t i = 0; i < size; ++i) row[i] = to_bf16(buffer[i]);
  }
};

// ---------------------------------------------------------------------------- the three maps

// Forward, output rows (n, od) for item = n * OD + od; wf holds a block per (group, tap).
template <typename Gemm, typename TX>
JD_INLINE void forward_rows(const Geometry& geo, const TX* x, const typename Gemm::B* wf, int64_t block, TX* y,
                            int64_t begin, int64_t end) {
  const int64_t cin = geo.cin(), cout = geo.cout();
  const int64_t D = geo.in[0], H = geo.in[1], W = geo.in[2];
  const int64_t OD = geo.out[0], OH = geo.out[1], OW = geo.out[2];
  const int64_t KD = geo.k[0], KH = geo.k[1], KW = geo.k[2];
  const int64_t row = OH * OW * cout;
  RowAccumulator<TX, typename Gemm::Acc> rows(row);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / OD, od = item % OD;
    TX* yrow = y + item * row;
    auto* acc = rows.begin(yrow, row);
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
            const TX* xrow = x + (((n * D + pd) * H + ph) * W + r.lo) * cin;
            auto* out = acc + (oh * OW + r.o0) * cout;
            for (int64_t g = 0; g < geo.g; ++g) {
              const auto* w = wf + (((g * KD + qd) * KH + qh) * KW + qw) * block;
              Gemm::run(r.hi - r.lo, geo.cgi, geo.cgo, xrow + g * geo.cgi, cin, w, out + g * geo.cgo,
                        geo.s[2] * cout);
            }
          }
        }
      }
    }
    rows.finish(yrow, row);
  }
}

// Input gradient, rows (n, pd) for item = n * D + pd; wt holds a block per (group, tap) of the
// transposed weight (Cg_out x Cg_in).
template <typename Gemm, typename TX>
JD_INLINE void dx_rows(const Geometry& geo, const TX* dy, const typename Gemm::B* wt, int64_t block, TX* dx,
                       int64_t begin, int64_t end) {
  const int64_t cin = geo.cin(), cout = geo.cout();
  const int64_t D = geo.in[0], H = geo.in[1], W = geo.in[2];
  const int64_t OD = geo.out[0], OH = geo.out[1], OW = geo.out[2];
  const int64_t KD = geo.k[0], KH = geo.k[1], KW = geo.k[2];
  const int64_t row = H * W * cin;
  RowAccumulator<TX, typename Gemm::Acc> rows(row);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / D, pd = item % D;
    TX* xrow = dx + item * row;
    auto* acc = rows.begin(xrow, row);
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
            const TX* dyrow = dy + (((n * OD + od) * OH + oh) * OW + r.o0) * cout;
            auto* out = acc + (ph * W + r.lo) * cin;
            for (int64_t g = 0; g < geo.g; ++g) {
              const auto* w = wt + (((g * KD + qd) * KH + qh) * KW + qw) * block;
              Gemm::run(r.hi - r.lo, geo.cgo, geo.cgi, dyrow + g * geo.cgo, geo.s[2] * cout, w, out + g * geo.cgi,
                        cin);
            }
          }
        }
      }
    }
    rows.finish(xrow, row);
  }
}

// The runs a chunk [begin, end) of weight-gradient items (g, qd, qh, qw) reads: for each row
// (n, pd, ph) of x, outer, and each item whose tap lands that row inside the output, calls
// visit(row, first, item, g, run, dy_row), with row = (n*D + pd)*H + ph, dy_row = (n*OD + od)*OH
// + oh and first true at a row's first call. Rows outer: each is read once per chunk while it
// is in cache (items outer would stream all of x and dy once per tap).
template <typename Visit>
JD_INLINE void dw_runs(const Geometry& geo, int64_t begin, int64_t end, const Visit& visit) {
  const int64_t D = geo.in[0], H = geo.in[1], W = geo.in[2];
  const int64_t OD = geo.out[0], OH = geo.out[1], OW = geo.out[2];
  const int64_t KD = geo.k[0], KH = geo.k[1], KW = geo.k[2];
  for (int64_t n = 0; n < geo.n; ++n)
    for (int64_t pd = 0; pd < D; ++pd)
      for (int64_t ph = 0; ph < H; ++ph) {
        bool first = true;
        for (int64_t item = begin; item < end; ++item) {
          const int64_t qw = item % KW, qh = (item / KW) % KH, qd = (item / (KW * KH)) % KD;
          const int64_t od = geo.s[0] * pd + geo.d[0] * qd - geo.pb[0];
          const int64_t oh = geo.s[1] * ph + geo.d[1] * qh - geo.pb[1];
          if (od < 0 || od >= OD || oh < 0 || oh >= OH) continue;
          const Run r = run_of(W, OW, geo.s[2], geo.d[2] * qw, geo.pb[2]);
          if (r.lo >= r.hi) continue;
          visit((n * D + pd) * H + ph, first, item, item / (KW * KH * KD), r, (n * OD + od) * OH + oh);
          first = false;
        }
      }
}

// Weight gradient, items (g, qd, qh, qw) in that order; T accumulates.
template <typename TX, typename T, int VB>
JD_INLINE void dw_items(const Geometry& geo, const TX* x, const TX* dy, TX* dw, int64_t begin, int64_t end) {
  const int64_t cin = geo.cin(), cout = geo.cout(), W = geo.in[2], OW = geo.out[2];
  const int64_t size = geo.cgi * geo.cgo;
  RowAccumulator<TX, T> blocks((end - begin) * size);
  T* acc = blocks.begin(dw + begin * size, (end - begin) * size);
  constexpr bool narrow = !std::is_same_v<TX, T>;
  std::unique_ptr<T[]> wide(narrow ? new T[W * cin] : nullptr);  // a row of x, widened once
  const auto visit = [&](int64_t row, bool first, int64_t item, int64_t g, const Run& r,
                         int64_t dy_row) JD_LAMBDA_INLINE {
    const TX* xrow = x + row * W * cin;
    const TX* dyrun = dy + (dy_row * OW + r.o0) * cout + g * geo.cgo;
    T* out = acc + (item - begin) * size;
    // dw[q] (Cg_in x Cg_out) += x_run^T . dy_run: x read transposed, positions as the sum
    if constexpr (!narrow) {
      gemm<TX, TX, T, VB>(geo.cgi, r.hi - r.lo, geo.cgo, xrow + r.lo * cin + g * geo.cgi, 1, cin, dyrun,
                          geo.s[2] * cout, out, geo.cgo);
    } else {  // x's elements are read one at a time: widened first
      if (first)
        for (int64_t i = 0; i < W * cin; ++i) wide[i] = widen(xrow[i]);
      gemm<T, TX, T, VB>(geo.cgi, r.hi - r.lo, geo.cgo, wide.get() + r.lo * cin + g * geo.cgi, 1, cin, dyrun,
                         geo.s[2] * cout, out, geo.cgo);
    }
  };
  dw_runs(geo, begin, end, visit);
  blocks.finish(dw + begin * size, (end - begin) * size);
}

#ifdef JD_DPBF16
// The bfloat16 weight gradient with vdpbf16ps. Its sum runs over positions, so both operands are
// packed as pairs of consecutive positions: each row of x once (pairs starting at even and at
// odd positions: a run starts at either), each run of dy per tap. Rows outer, as in dw_items.
template <int VB>
JD_TARGET_BF16 void dw_items_dp(const Geometry& geo, const bf16* x, const bf16* dy, bf16* dw, int64_t begin,
                                int64_t end) {
  const int64_t cin = geo.cin(), cout = geo.cout(), W = geo.in[2], OW = geo.out[2];
  const int64_t size = geo.cgi * geo.cgo, w2 = W / 2 + 1, n32 = (geo.cgo + 31) / 32 * 32;
  RowAccumulator<bf16, float> blocks((end - begin) * size);
  float* acc = blocks.begin(dw + begin * size, (end - begin) * size);
  // xp[parity][k2 * cin + c] = (x[parity + 2 k2, c], x[parity + 2 k2 + 1, c]), zero past W
  std::unique_ptr<uint32_t[]> xp(new uint32_t[2 * w2 * cin]);
  std::unique_ptr<uint32_t[]> dyp(new uint32_t[w2 * n32]());
  const auto visit = [&](int64_t row, bool first, int64_t item, int64_t g, const Run& r,
                         int64_t dy_row) JD_LAMBDA_INLINE {
    if (first) {
      const bf16* xrow = x + row * W * cin;
      for (int64_t parity = 0; parity < 2; ++parity)
        for (int64_t k2 = 0; k2 < w2; ++k2) {
          const int64_t p = parity + 2 * k2;
          uint32_t* to = xp.get() + (parity * w2 + k2) * cin;
          for (int64_t c = 0; c < cin; ++c)
            to[c] = (p < W ? uint32_t(xrow[p * cin + c].bits) : 0u) |
                    (p + 1 < W ? uint32_t(xrow[(p + 1) * cin + c].bits) << 16 : 0u);
        }
    }
    const int64_t len = r.hi - r.lo, step = geo.s[2] * cout;
    const bf16* dyrun = dy + (dy_row * OW + r.o0) * cout + g * geo.cgo;
    for (int64_t k2 = 0; 2 * k2 < len; ++k2) {
      const bf16* even = dyrun + 2 * k2 * step;
      uint32_t* to = dyp.get() + k2 * n32;
      if (2 * k2 + 1 < len)
        for (int64_t j = 0; j < geo.cgo; ++j) to[j] = uint32_t(even[j].bits) | uint32_t(even[step + j].bits) << 16;
      else
        for (int64_t j = 0; j < geo.cgo; ++j) to[j] = uint32_t(even[j].bits);
    }
    const uint32_t* a = xp.get() + ((r.lo & 1) * w2 + r.lo / 2) * cin + g * geo.cgi;
    gemm_dp(geo.cgi, len, geo.cgo, reinterpret_cast<const bf16*>(a), 2, 2 * cin, dyp.get(),
            acc + (item - begin) * size, geo.cgo);
  };
  dw_runs(geo, begin, end, visit);
  blocks.finish(dw + begin * size, (end - begin) * size);
}
#endif

template <int VB>
JD_INLINE void dw_items_widen(const Geometry& geo, const bf16* x, const bf16* dy, bf16* dw, int64_t begin,
                              int64_t end) {
  dw_items<bf16, float, VB>(geo, x, dy, dw, begin, end);
}

// One entry per (map, dtype), compiled once per ISA; `kernels` is the set chosen at load time.
// forward and dx read their weight operand prepared by `prepare_weight` (blocks of `block`).
using MapFn = void (*)(const Geometry&, const void*, const void*, int64_t, void*, int64_t, int64_t);

struct KernelSet {
  const char* isa;
  MapFn forward32, dx32, dw32, forward64, dx64, dw64, forward16, dx16, dw16;
  bool pairs;  // the bfloat16 forward and dx read their weight as vdpbf16ps pairs (else float32)
};

#define JD_MAPS(ATTR, NAME, ISA, VB, GEMM16, DW16)                                                                       \
  template <typename Gemm>                                                                                  \
  ATTR void forward_##NAME(const Geometry& g, const void* a, const void* b, int64_t k, void* c, int64_t i,   \
                           int64_t j) {                                                                     \
    using X = typename Gemm::A;                                                                             \
    forward_rows<Gemm, X>(g, static_cast<const X*>(a), static_cast<const typename Gemm::B*>(b), k,          \
                          static_cast<X*>(c), i, j);                                                        \
  }                                                                                                         \
  template <typename Gemm>                                                                                  \
  ATTR void dx_##NAME(const Geometry& g, const void* a, const void* b, int64_t k, void* c, int64_t i,        \
                      int64_t j) {                                                                          \
    using X = typename Gemm::A;                                                                             \
    dx_rows<Gemm, X>(g, static_cast<const X*>(a), static_cast<const typename Gemm::B*>(b), k,               \
                     static_cast<X*>(c), i, j);                                                             \
  }                                                                                                         \
  template <typename X, typename T>                                                                         \
  ATTR void dw_##NAME(const Geometry& g, const void* a, const void* b, int64_t, void* c, int64_t i,          \
                      int64_t j) {                                                                          \
    dw_items<X, T, VB>(g, static_cast<const X*>(a), static_cast<const X*>(b), static_cast<X*>(c), i, j);    \
  }                                                                                                         \
  ATTR void dw16_##NAME(const Geometry& g, const void* a, const void* b, int64_t, void* c, int64_t i,         \
                        int64_t j) {                                                                        \
    DW16<VB>(g, static_cast<const bf16*>(a), static_cast<const bf16*>(b), static_cast<bf16*>(c), i, j);     \
  }                                                                                                         \
  const KernelSet kernels_##NAME = {                                                                        \
      ISA,                                                                                                  \
      forward_##NAME<Fma<float, float, float, VB>>,                                                         \
      dx_##NAME<Fma<float, float, float, VB>>,                                                              \
      dw_##NAME<float, float>,                                                                              \
      forward_##NAME<Fma<double, double, double, VB>>,                                                      \
      dx_##NAME<Fma<double, double, double, VB>>,                                                           \
      dw_##NAME<double, double>,                                                                            \
      forward_##NAME<GEMM16>,                                                                               \
      dx_##NAME<GEMM16>,                                                                                    \
      dw16_##NAME,                                                                                          \
      std::is_same_v<typename GEMM16::B, uint32_t>};

// bfloat16 widened to float32 as read (processors without AVX512-BF16)
template <int VB>
using Widen = Fma<bf16, float, float, VB>;

#ifdef JD_X86
#ifdef JD_DPBF16
JD_MAPS(JD_TARGET_BF16, avx512bf16, "avx512bf16", 64, Dp, dw_items_dp)
#endif
JD_MAPS(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), avx512, "avx512f", 64, Widen<64>,
        dw_items_widen)
JD_MAPS(__attribute__((target("avx2,fma"))), avx2, "avx2+fma", 32, Widen<32>, dw_items_widen)
JD_MAPS(, baseline, "x86-64 baseline", 16, Widen<16>, dw_items_widen)
#else
JD_MAPS(, baseline, "portable C++", 16, Widen<16>, dw_items_widen)
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
  if (want == "avx512f" && avx512) return &kernels_avx512;
#ifdef JD_DPBF16
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return &kernels_avx512bf16;
#endif
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
void parallel_for(ffi::ThreadPool& pool, int64_t items, const Body& body, int64_t per_thread = 4) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), items));
  if (threads <= 1 || items <= 1) {
    body(0, items);
    return;
  }
  const int64_t chunks = std::min<int64_t>(items, per_thread * threads);
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

// The bfloat16 weight of the forward or dx as the chosen kernels read it: per (group, tap) a
// K x N block, widened to float32 or packed as vdpbf16ps pairs. Returns the block's length.
int64_t prepare_weight(const bf16* w, int64_t blocks, int64_t K, int64_t N, bool pairs, std::vector<float>* wide,
                       std::vector<uint32_t>* packed) {
  if (!pairs) {
    wide->resize(blocks * K * N);
    for (int64_t i = 0; i < blocks * K * N; ++i) (*wide)[i] = widen(w[i]);
    return K * N;
  }
  const int64_t K2 = (K + 1) / 2, n32 = (N + 31) / 32 * 32;
  packed->assign(blocks * K2 * n32, 0u);
  for (int64_t t = 0; t < blocks; ++t)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j)
        (*packed)[(t * K2 + k / 2) * n32 + j] |= uint32_t(w[(t * K + k) * N + j].bits) << (16 * (k & 1));
  return K2 * n32;
}

template <Map kMap>
ffi::Error run(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
               ffi::Span<const int64_t> geometry) {
  Geometry geo;
  if (!read_geometry(geometry, &geo)) return ffi::Error::InvalidArgument("jax_deconv native: bad geometry");
  const ffi::DataType type = a.element_type();
  if (b.element_type() != type || out->element_type() != type)
    return ffi::Error::InvalidArgument("jax_deconv native: operands of different dtypes");
  const int64_t taps = geo.k[0] * geo.k[1] * geo.k[2];
  const int64_t items = kMap == Map::kForward ? geo.n * geo.out[0]
                        : kMap == Map::kDx    ? geo.n * geo.in[0]
                                              : geo.g * taps;
  const KernelSet& set = *kernels;
  MapFn fn = nullptr;
  const void* weight = b.untyped_data();
  int64_t block = geo.cgi * geo.cgo;
  std::vector<float> wide;
  std::vector<uint32_t> packed;
  try {
    if (type == ffi::DataType::F32) {
      fn = kMap == Map::kForward ? set.forward32 : kMap == Map::kDx ? set.dx32 : set.dw32;
    } else if (type == ffi::DataType::F64) {
      fn = kMap == Map::kForward ? set.forward64 : kMap == Map::kDx ? set.dx64 : set.dw64;
    } else if (type == ffi::DataType::BF16) {
      fn = kMap == Map::kForward ? set.forward16 : kMap == Map::kDx ? set.dx16 : set.dw16;
      if (kMap != Map::kDw) {
        const int64_t K = kMap == Map::kForward ? geo.cgi : geo.cgo, N = kMap == Map::kForward ? geo.cgo : geo.cgi;
        block = prepare_weight(static_cast<const bf16*>(weight), geo.g * taps, K, N, set.pairs, &wide, &packed);
        weight = set.pairs ? static_cast<const void*>(packed.data()) : static_cast<const void*>(wide.data());
      }
    } else {
      return ffi::Error::InvalidArgument("jax_deconv native: only float32, float64 and bfloat16");
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jax_deconv native: out of memory");
  }
  const void* pa = a.untyped_data();
  void* pc = out->untyped_data();
  std::atomic<bool> failed{false};  // a row buffer that could not be allocated (never thrown across threads)
  // Chunks of rows: 4 per thread, for balance; dw: one per thread, as each chunk reads all of x and dy.
  parallel_for(
      pool, items,
      [&](int64_t i, int64_t j) {
        try {
          fn(geo, pa, weight, block, pc, i, j);
        } catch (const std::bad_alloc&) {
          failed = true;
        }
      },
      kMap == Map::kDw ? 1 : 4);
  if (failed) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jax_deconv native: out of memory");
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
