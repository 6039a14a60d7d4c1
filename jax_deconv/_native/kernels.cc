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
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
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
JD_INLINE int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// The input positions p in [0, size) whose tap q lands inside the output window [o_lo, o_hi),
// o = s*p + d*q - pb: along the last axis, one small matrix product.
struct Run {
  int64_t lo, hi, o0;  // p in [lo, hi); p = lo lands at o0
};

JD_INLINE Run run_of(int64_t size, int64_t o_lo, int64_t o_hi, int64_t s, int64_t dq, int64_t pb) {
  const int64_t lo = std::max<int64_t>(0, ceil_div(o_lo + pb - dq, s));
  const int64_t hi = std::min<int64_t>(size, floor_div(o_hi - 1 + pb - dq, s) + 1);
  return Run{lo, hi, s * lo + dq - pb};
}

// A run cut to the input positions [lo, hi).
JD_INLINE Run clip(const Run& r, int64_t lo, int64_t hi, int64_t s) {
  const int64_t a = std::max(r.lo, lo), b = std::min(r.hi, hi);
  return Run{a, b, r.o0 + s * (a - r.lo)};
}

// Taps of one axis, an arithmetic range: q = first + i * step, i < count.
struct Taps {
  int64_t first, step, count;
};

// One of the outer spatial axes and which (position, tap) pairs meet along it, enumerated
// without visiting the pairs that do not (a long kernel on a large stride meets few).
struct Axis {
  int64_t size, out, k, s, d, pb;
  int64_t common, step, inverse;  // gcd(s, d); s / gcd; the inverse of d / gcd modulo step

  Axis(int64_t size, int64_t out, int64_t k, int64_t s, int64_t d, int64_t pb)
      : size(size), out(out), k(k), s(s), d(d), pb(pb) {
    int64_t a = s, b = d;
    while (b) {
      const int64_t r = a % b;
      a = b;
      b = r;
    }
    common = a;
    step = s / common;
    int64_t r0 = (d / common) % step, r1 = step, t0 = 1, t1 = 0;  // extended Euclid
    while (r1) {
      const int64_t q = r0 / r1;
      r0 -= q * r1;
      std::swap(r0, r1);
      t0 -= q * t1;
      std::swap(t0, t1);
    }
    inverse = (t0 % step + step) % step;
  }

  // The taps that reach output position o: d*q = o + pb (mod s), source inside [0, size).
  JD_INLINE Taps reaching(int64_t o) const {
    const int64_t t = o + pb;  // >= 0
    if (t % common) return Taps{0, 1, 0};
    const int64_t residue = int64_t(static_cast<__int128>((t / common) % step) * inverse % step);
    const int64_t lo = std::max<int64_t>(0, ceil_div(t - s * (size - 1), d));
    const int64_t hi = std::min<int64_t>(k - 1, t / d);
    const int64_t first = lo + ((residue - lo) % step + step) % step;
    return Taps{first, step, first > hi ? 0 : (hi - first) / step + 1};
  }
  JD_INLINE int64_t source(int64_t o, int64_t q) const { return (o + pb - d * q) / s; }

  // The taps through which input position p reaches the output [0, out).
  JD_INLINE Taps reached(int64_t p) const {
    const int64_t lo = std::max<int64_t>(0, ceil_div(pb - s * p, d));
    const int64_t hi = std::min<int64_t>(k - 1, floor_div(out - 1 + pb - s * p, d));
    return Taps{lo, 1, lo > hi ? 0 : hi - lo + 1};
  }
  JD_INLINE int64_t target(int64_t p, int64_t q) const { return s * p + d * q - pb; }
};

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

// f(std::integral_constant<int, r>) for a run-time r in [1, R].
template <int R, typename F>
JD_INLINE void with_rows(int64_t r, const F& f) {
  if constexpr (R >= 1) {
    if (r == R) f(std::integral_constant<int, R>());
    else with_rows<R - 1>(r, f);
  }
}

// tile(R, m) over the rows [0, M) in tiles of at most RMAX rows, as even as they come (30 rows,
// RMAX 8: 7, 7, 8, 8) rather than full tiles and a tail of single rows: a tile of few rows has
// few independent sums, and its chain of multiply-adds waits on their latency.
template <int RMAX, typename Tile>
JD_INLINE void even_tiles(int64_t M, const Tile& tile) {
  const int64_t tiles = (M + RMAX - 1) / RMAX;
  for (int64_t i = 0, m = 0; i < tiles; ++i) {
    const int64_t r = (M - m) / (tiles - i);
    with_rows<RMAX>(r, [&](auto R) JD_LAMBDA_INLINE { tile(R, m); });
    m += r;
  }
}

// Copies of a tile's sums that take alternate terms (added at the end), so that at least `want`
// independent sums are in flight in a tile of `sums` vectors.
constexpr int copies_for(int sums, int want) { return sums >= want ? 1 : sums * 2 >= want ? 2 : 4; }

// The groups of a grouped product, side by side: `count` groups, the g-th one's A, B and C `a`,
// `b`, `c` elements after the first one's.
struct Groups {
  int64_t count = 1, a = 0, b = 0, c = 0;
};

// C (M x N) += sum_t A_t (M x K) . B_t (K x N) over a batch of `count` products; A_t[m, k] at
// a[t] + m*am + k*ak (so A may be read transposed), rows of B_t and C ldb and ldc elements
// apart. A and B may be bfloat16 (widened as read); C is the accumulator's type T. Each tile of
// C (R rows, NV vectors of L columns) is loaded into registers, takes every product of the
// batch, and is stored once: with one product per call its load and store cost as much as the
// multiply-adds when K is a few channels. NG groups side by side (groups g0 .. g0 + NG of `gs`)
// share the tile: with 8 channels or fewer per group a group's columns fill half a vector, and
// one group's tile, a few rows of it, has too few sums and too little work per call.
template <typename TA, typename TB, typename T, int VB, int NV, int R, int NG, int KC>
JD_INLINE void batch_tile(int64_t count, const TA* const* a, int64_t row, int64_t am, int64_t ak, const TB* const* b,
                          int64_t K, int64_t ldb, int64_t j0, T* c, int64_t ldc, const Groups& gs, int64_t g0) {
  if constexpr (KC > 0) K = KC;  // (and A's groups KC apart: each address a fixed offset from its row's)
  const int64_t ga = KC > 0 ? KC : gs.a;
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::lanes;
  constexpr int C = copies_for(R * NG * NV, 4);  // FMA latency 4 (measured on Zen 4: 8 no better)
  V acc[C][R][NG][NV];
  T* const cg = c + (NG > 1 ? g0 * gs.c : 0) + j0;  // (one group: the caller's pointers are its own)
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < NG; ++g)
      for (int v = 0; v < NV; ++v) {
        acc[0][r][g][v] = load<V>(cg + g * gs.c + r * ldc + v * L);
        for (int i = 1; i < C; ++i) acc[i][r][g][v] = V{};
      }
  for (int64_t t = 0; t < count; ++t) {
    const TA* at = a[t] + row * am + (NG > 1 ? g0 * ga : 0);
    const TB* bt = b[t] + (NG > 1 ? g0 * gs.b : 0) + j0;
    const auto term = [&](V(&sum)[R][NG][NV], int64_t k) JD_LAMBDA_INLINE {
      V bv[NG][NV];
      for (int g = 0; g < NG; ++g)
        for (int v = 0; v < NV; ++v) bv[g][v] = load_as<V>(bt + g * gs.b + k * ldb + v * L);
      for (int r = 0; r < R; ++r)
        for (int g = 0; g < NG; ++g) {
          const T ar = widen(at[g * ga + r * am + k * ak]);
          for (int v = 0; v < NV; ++v) sum[r][g][v] += ar * bv[g][v];
        }
    };
    int64_t k = 0;
    for (; k + C <= K; k += C)
      for (int i = 0; i < C; ++i) term(acc[i], k + i);
    for (; k < K; ++k) term(acc[0], k);
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < NG; ++g)
      for (int v = 0; v < NV; ++v) {
        for (int i = 1; i < C; ++i) acc[0][r][g][v] += acc[i][r][g][v];
        store(cg + g * gs.c + r * ldc + v * L, acc[0][r][g][v]);
      }
}

// Columns [j0, j0 + NV*L) of every row, in even tiles of up to 6 rows (measured, float32 on
// Zen 4: up to 8 rows with one vector of columns 5-15 % slower), 4 with 4 groups side by side.
template <typename TA, typename TB, typename T, int VB, int NV, int NG, int KC>
JD_INLINE void batch_strip(int64_t M, int64_t count, const TA* const* a, int64_t am, int64_t ak, const TB* const* b,
                           int64_t K, int64_t ldb, int64_t j0, T* C, int64_t ldc, const Groups& gs, int64_t g0) {
  constexpr int RMAX = NG * NV > 2 ? 4 : 6;
  even_tiles<RMAX>(M, [&](auto R, int64_t m) JD_LAMBDA_INLINE {
    batch_tile<TA, TB, T, VB, NV, decltype(R)::value, NG, KC>(count, a, m, am, ak, b, K, ldb, j0, C + m * ldc, ldc,
                                                               gs, g0);
  });
}

// One column (N == 1, a one-channel side: the first layer of a network), vectorised along what
// is contiguous instead of the columns. By rows, where A's rows and C are contiguous (am == 1,
// ldc == 1: the weight gradient reads x transposed): C[m..m+L) += A[k][m..m+L) * B[k].
template <typename TA, typename TB, typename T, int VB>
JD_INLINE void column_by_rows(int64_t M, int64_t K, int64_t count, const TA* const* a, int64_t ak, const TB* const* b,
                              int64_t ldb, T* C) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::lanes;
  int64_t m = 0;
  for (; m + L <= M; m += L) {
    V acc = load<V>(C + m);
    for (int64_t t = 0; t < count; ++t)
      for (int64_t k = 0; k < K; ++k) acc += load_as<V>(a[t] + k * ak + m) * widen(b[t][k * ldb]);
    store(C + m, acc);
  }
  for (; m < M; ++m) {
    T acc = C[m];
    for (int64_t t = 0; t < count; ++t)
      for (int64_t k = 0; k < K; ++k) acc += widen(a[t][k * ak + m]) * widen(b[t][k * ldb]);
    C[m] = acc;
  }
}

// By sums, where A's rows and B's column are contiguous (ak == 1, ldb == 1): C[m] += A[m, :] . B.
template <typename TA, typename TB, typename T, int VB>
JD_INLINE void column_by_sums(int64_t M, int64_t K, int64_t count, const TA* const* a, int64_t am, const TB* const* b,
                              T* C, int64_t ldc) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::lanes;
  for (int64_t m = 0; m < M; ++m) {
    V acc = {};
    T rest = 0;
    for (int64_t t = 0; t < count; ++t) {
      const TA* at = a[t] + m * am;
      const TB* bt = b[t];
      int64_t k = 0;
      for (; k + L <= K; k += L) acc += load_as<V>(at + k) * load_as<V>(bt + k);
      for (; k < K; ++k) rest += widen(at[k]) * widen(bt[k]);
    }
    for (int l = 0; l < L; ++l) rest += acc[l];
    C[m * ldc] += rest;
  }
}

// The products' operands of a later group: a[t] + da, b[t] + db, in this thread's buffers (kept
// between calls: no allocation once they have grown).
template <typename TA, typename TB>
std::pair<const TA* const*, const TB* const*> group_pointers(int64_t count, const TA* const* a, const TB* const* b,
                                                             int64_t da, int64_t db) {
  thread_local std::vector<const TA*> as;
  thread_local std::vector<const TB*> bs;
  as.resize(count);
  bs.resize(count);
  for (int64_t t = 0; t < count; ++t) {
    as[t] = a[t] + da;
    bs[t] = b[t] + db;
  }
  return {as.data(), bs.data()};
}

// Columns in vectors of the register width, then of a half and a quarter of it (8 and 4 float32
// channels with AVX-512), the last few one by one; groups g0 .. g0 + NG of `gs` side by side
// (NG == 1: one group, whose pointers a, b, C are; more: half a vector of columns at most).
template <typename TA, typename TB, typename T, int VB, int NG, int KC = 0>
JD_INLINE void group_columns(int64_t M, int64_t K, int64_t N, int64_t count, const TA* const* a, int64_t am,
                             int64_t ak, const TB* const* b, int64_t ldb, T* C, int64_t ldc, const Groups& gs,
                             int64_t g0) {
  constexpr int L = Vec<T, VB>::lanes;
  int64_t j = 0;
  if constexpr (NG == 1) {
    for (; j + 2 * L <= N; j += 2 * L)
      batch_strip<TA, TB, T, VB, 2, NG, KC>(M, count, a, am, ak, b, K, ldb, j, C, ldc, gs, g0);
    for (; j + L <= N; j += L)
      batch_strip<TA, TB, T, VB, 1, NG, KC>(M, count, a, am, ak, b, K, ldb, j, C, ldc, gs, g0);
  }
  if constexpr (VB > 16) {
    constexpr int L2 = Vec<T, VB / 2>::lanes;
    for (; j + L2 <= N; j += L2)
      batch_strip<TA, TB, T, VB / 2, 1, NG, KC>(M, count, a, am, ak, b, K, ldb, j, C, ldc, gs, g0);
  }
  if constexpr (VB > 32) {
    constexpr int L4 = Vec<T, VB / 4>::lanes;
    for (; j + L4 <= N; j += L4)
      batch_strip<TA, TB, T, VB / 4, 1, NG, KC>(M, count, a, am, ak, b, K, ldb, j, C, ldc, gs, g0);
  }
  for (int64_t g = NG > 1 ? g0 : 0; g < (NG > 1 ? g0 + NG : 1); ++g)  // (one group: its own pointers)
    for (int64_t jj = j; jj < N; ++jj)
      for (int64_t m = 0; m < M; ++m) {
        T& c = C[g * gs.c + m * ldc + jj];
        T acc = c;
        for (int64_t t = 0; t < count; ++t)
          for (int64_t k = 0; k < K; ++k)
            acc += widen(a[t][g * gs.a + m * am + k * ak]) * widen(b[t][g * gs.b + k * ldb + jj]);
        c = acc;
      }
}

// One group: a single column by rows or by sums, else in vectors as above.
template <typename TA, typename TB, typename T, int VB>
JD_INLINE void gemm_batch(int64_t M, int64_t K, int64_t N, int64_t count, const TA* const* a, int64_t am, int64_t ak,
                          const TB* const* b, int64_t ldb, T* C, int64_t ldc) {
  if (N == 1 && am == 1 && ldc == 1) return column_by_rows<TA, TB, T, VB>(M, K, count, a, ak, b, ldb, C);
  if (N == 1 && ak == 1 && ldb == 1) return column_by_sums<TA, TB, T, VB>(M, K, count, a, am, b, C, ldc);
  group_columns<TA, TB, T, VB, 1>(M, K, N, count, a, am, ak, b, ldb, C, ldc, Groups{}, 0);
}

// Whether float32 groups go side by side: with vectors of 8 or 16 float32 (AVX2, AVX-512).
template <typename T, int VB>
constexpr bool kFloatGroups = std::is_same_v<T, float> && VB > 16;

// C_g (M x N) += sum_t A_t,g . B_t,g for each group g of `gs`: float32 groups of 4 or 8
// channels summed (A's groups K apart: x or dy) and at most half a vector of columns 4 side by
// side, the others one by one. Measured, Zen 4, one core, 8-channel groups (layer D): forward
// 0.9-0.95x, input gradient 0.85-0.9x; 16-channel groups 2 side by side: 1.15x, not used.
template <typename TA, typename TB, typename T, int VB>
JD_INLINE void gemm_groups(int64_t M, int64_t K, int64_t N, int64_t count, const TA* const* a, int64_t am,
                           int64_t ak, const TB* const* b, int64_t ldb, T* C, int64_t ldc, const Groups& gs) {
  constexpr bool kSideBySide = kFloatGroups<T, VB>;
  const bool side_by_side = kSideBySide && gs.a == K && (K == 4 || K == 8) && 2 * N <= Vec<T, VB>::lanes;
  for (int64_t g0 = 0; g0 < gs.count;) {
    if constexpr (kSideBySide) {
      if (side_by_side && gs.count - g0 >= 4) {
        if (K == 4) group_columns<TA, TB, T, VB, 4, 4>(M, K, N, count, a, am, ak, b, ldb, C, ldc, gs, g0);
        else group_columns<TA, TB, T, VB, 4, 8>(M, K, N, count, a, am, ak, b, ldb, C, ldc, gs, g0);
        g0 += 4;
        continue;
      }
    }
    const TA* const* ag = a;
    const TB* const* bg = b;
    if (g0 > 0) std::tie(ag, bg) = group_pointers(count, a, b, g0 * gs.a, g0 * gs.b);
    gemm_batch<TA, TB, T, VB>(M, K, N, count, ag, am, ak, bg, ldb, C + g0 * gs.c, ldc);
    g0 += 1;
  }
}

// C (M x N) += A (M x K) . B (K x N): one product.
template <typename TA, typename TB, typename T, int VB>
JD_INLINE void gemm(int64_t M, int64_t K, int64_t N, const TA* A, int64_t am, int64_t ak, const TB* B, int64_t ldb,
                    T* C, int64_t ldc) {
  gemm_batch<TA, TB, T, VB>(M, K, N, 1, &A, am, ak, &B, ldb, C, ldc);
}

// The weight operand of the forward and the input gradient, as `Gemm::run_batch` reads it: one
// block of `block` elements per (group, tap), holding that tap's K x N matrix (K: the channels
// summed).
template <typename TA, typename TB, typename T, int VB>
struct Fma {  // plain rows of N (float32/float64, or bfloat16 widened to float32 once per call)
  using A = TA;
  using B = TB;
  using Acc = T;
  static constexpr bool kAlwaysBatched = false;  // (batched)
  static constexpr bool kSideBySide = kFloatGroups<T, VB>;  // (gemm_groups)
  static JD_INLINE void run_batch(int64_t M, int64_t K, int64_t N, int64_t count, const TA* const* a, int64_t am,
                                  const TB* const* b, T* c, int64_t ldc) {
    gemm_batch<TA, TB, T, VB>(M, K, N, count, a, am, 1, b, N, c, ldc);
  }
  static JD_INLINE void run_groups(int64_t M, int64_t K, int64_t N, int64_t count, const TA* const* a, int64_t am,
                                   const TB* const* b, T* c, int64_t ldc, const Groups& gs) {
    gemm_groups<TA, TB, T, VB>(M, K, N, count, a, am, 1, b, N, c, ldc, gs);
  }
};

// Depthwise: one channel in and one out per group, the groups being the channels. C[m, c] +=
// sum over t < count of A_t[m, c] * B_t[c] for the channels c < `channels`: A_t's channels
// contiguous (x or dy, channels-last; rows am apart), B_t one weight per channel, contiguous
// (the weight taken per tap, `prepare_depthwise`). Vectorised along the channels: a tile of R
// rows x one vector of channels stays in registers over every product. (As products of 1 x 1
// matrices, one group at a time, each multiply-add had been a call of its own: 40-60x slower.)
template <typename TA, typename T, int VB, int R>
JD_INLINE void depthwise_tile(int64_t count, const TA* const* a, int64_t row, int64_t am, const T* const* b, int64_t j0,
                              T* c, int64_t ldc) {
  using V = typename Vec<T, VB>::type;
  V acc[R];
  for (int r = 0; r < R; ++r) acc[r] = load<V>(c + r * ldc + j0);
  for (int64_t t = 0; t < count;) {
    // Three taps whose rows are one position apart (stride 1 along the last axis: the forward's
    // taps in turn read x one position back, the input gradient's dy one forward) read R + 2
    // rows of A between them: output r takes rows r, r+1, r+2 times the three weights, each row
    // loaded once for the three outputs it reaches, the three products summed before the
    // output (a shorter chain of dependent additions). Measured, float32 3x3 depthwise over 64
    // channels at 56^2: 0.6-0.8x the time of the three products in turn.
    if (t + 2 < count) {
      const int64_t step = a[t + 1] - a[t];
      if ((step == am || step == -am) && a[t + 2] - a[t + 1] == step) {
        const bool up = step > 0;
        const TA* at = (up ? a[t] : a[t + 2]) + row * am + j0;  // the lowest of the three
        const T* bq[3] = {b[up ? t : t + 2], b[t + 1], b[up ? t + 2 : t]};
        const V b0 = load<V>(bq[0] + j0), b1 = load<V>(bq[1] + j0), b2 = load<V>(bq[2] + j0);
        V prev = load_as<V>(at), cur = load_as<V>(at + am);
        for (int r = 0; r < R; ++r) {
          at += am;
          const V next = load_as<V>(at + am);
          acc[r] += prev * b0 + cur * b1 + next * b2;
          prev = cur;
          cur = next;
        }
        t += 3;
        continue;
      }
    }
    const TA* at = a[t] + row * am + j0;
    const V bv = load<V>(b[t] + j0);
    for (int r = 0; r < R; ++r) acc[r] += load_as<V>(at + r * am) * bv;
    t += 1;
  }
  for (int r = 0; r < R; ++r) store(c + r * ldc + j0, acc[r]);
}

// Channels [j0, j0 + L) of every row, in even tiles of up to 8 rows (measured, float32 32 and 64
// channels, Zen 4: 0.85-0.9x the time of 4 rows x 2 or 4 vectors).
template <typename TA, typename T, int VB>
JD_INLINE void depthwise_strip(int64_t M, int64_t count, const TA* const* a, int64_t am, const T* const* b, int64_t j0,
                               T* C, int64_t ldc) {
  even_tiles<8>(M, [&](auto R, int64_t m) JD_LAMBDA_INLINE {
    depthwise_tile<TA, T, VB, decltype(R)::value>(count, a, m, am, b, j0, C + m * ldc, ldc);
  });
}

template <typename TA, typename T, int VB>
JD_INLINE void depthwise_columns(int64_t M, int64_t count, const TA* const* a, int64_t am, const T* const* b, T* C,
                                 int64_t ldc, int64_t channels) {
  constexpr int L = Vec<T, VB>::lanes;
  int64_t j = 0;
  for (; j + L <= channels; j += L) depthwise_strip<TA, T, VB>(M, count, a, am, b, j, C, ldc);
  if constexpr (VB > 16)
    for (; j + L / 2 <= channels; j += L / 2) depthwise_strip<TA, T, VB / 2>(M, count, a, am, b, j, C, ldc);
  if constexpr (VB > 32)
    for (; j + L / 4 <= channels; j += L / 4) depthwise_strip<TA, T, VB / 4>(M, count, a, am, b, j, C, ldc);
  for (; j < channels; ++j)
    for (int64_t m = 0; m < M; ++m) {
      T acc = C[m * ldc + j];
      for (int64_t t = 0; t < count; ++t) acc += widen(a[t][m * am + j]) * b[t][j];
      C[m * ldc + j] = acc;
    }
}

template <typename TA, typename T, int VB>
struct Depthwise {  // (forward_rows and dx_rows with K = N = 1 and the channels as groups)
  using A = TA;
  using B = T;
  using Acc = T;
  static constexpr bool kAlwaysBatched = true;
  static JD_INLINE void run_groups(int64_t M, int64_t, int64_t, int64_t count, const TA* const* a, int64_t am,
                                   const T* const* b, T* c, int64_t ldc, const Groups& gs) {
    depthwise_columns<TA, T, VB>(M, count, a, am, b, c, ldc, gs.count);
  }
};

#if defined(JD_X86) && (defined(__clang__) || __GNUC__ >= 10)
#define JD_DPBF16 1
#define JD_TARGET_BF16 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")))

// AVX512-BF16: vdpbf16ps adds the products of a pair of bfloat16 (k, k+1) into float32 lanes,
// twice the multiply-adds of float32 per instruction. B is packed per tap as pairs:
// Bp[k2 * n32 + j] = (B[2 k2, j], B[2 k2 + 1, j]) (zero past K), n32 = N rounded up to 32.
// C (R rows x NV vectors of 16 columns, the last masked by m1, a single one by m0) += the sum
// over t < count of A_t . B_t: the tile stays in registers over every product of the batch and
// is stored once (with 8 or 16 channels a product is 4 or 8 pairs deep: per product, the tile's
// load and store cost as much as its dot products). A_t's pair (k, k+1) of row r is adjacent, at
// a[t] + r*am + (k/2)*ak2 (bfloat16 units); with K odd the last k is read alone.
// acc (R rows x NV vectors) += row r's pair at A + r*am times the pair row B, one vdpbf16ps per
// vector; `alone`: K is odd and this is its last channel, read alone (its pair's second half is
// zero in A and in B).
template <int R, int NV>
JD_TARGET_BF16 JD_INLINE void dp_step(__m512 (&acc)[R][NV], const bf16* A, int64_t am, const uint32_t* B, bool alone) {
  __m512bh bv[NV];
  for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(B + 16 * v);
  for (int r = 0; r < R; ++r) {
    uint32_t pair;
    if (alone) pair = A[r * am].bits;
    else std::memcpy(&pair, A + r * am, 4);
    const __m512bh av = (__m512bh)_mm512_set1_epi32(int(pair));
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
  }
}

template <int R, int NV>
JD_TARGET_BF16 inline void dp_tile(int64_t count, const bf16* const* a, int64_t row, int64_t K, int64_t am,
                                   int64_t ak2, const uint32_t* const* b, int64_t j0, int64_t n32, float* C,
                                   int64_t ldc, __mmask16 m0, __mmask16 m1) {
  constexpr int CP = copies_for(R * NV, 6);  // vdpbf16ps: latency 5-6
  __m512 acc[CP][R][NV];
  for (int r = 0; r < R; ++r) {
    acc[0][r][0] = _mm512_maskz_loadu_ps(m0, C + r * ldc);
    if (NV > 1) acc[0][r][NV - 1] = _mm512_maskz_loadu_ps(m1, C + r * ldc + 16);
    for (int i = 1; i < CP; ++i)
      for (int v = 0; v < NV; ++v) acc[i][r][v] = _mm512_setzero_ps();
  }
  const int64_t K2 = K / 2;
  for (int64_t t = 0; t < count; ++t) {
    const bf16* A = a[t] + row * am;
    const uint32_t* B = b[t] + j0;
    int64_t k2 = 0;
    for (; k2 + CP <= K2; k2 += CP)
      for (int i = 0; i < CP; ++i) dp_step<R, NV>(acc[i], A + (k2 + i) * ak2, am, B + (k2 + i) * n32, false);
    for (; k2 < K2; ++k2) dp_step<R, NV>(acc[0], A + k2 * ak2, am, B + k2 * n32, false);
    if (K & 1) dp_step<R, NV>(acc[CP - 1], A + K2 * ak2, am, B + K2 * n32, true);
  }
  for (int r = 0; r < R; ++r) {
    for (int i = 1; i < CP; ++i)
      for (int v = 0; v < NV; ++v) acc[0][r][v] = _mm512_add_ps(acc[0][r][v], acc[i][r][v]);
    _mm512_mask_storeu_ps(C + r * ldc, m0, acc[0][r][0]);
    if (NV > 1) _mm512_mask_storeu_ps(C + r * ldc + 16, m1, acc[0][r][NV - 1]);
  }
}

template <int NV>
JD_TARGET_BF16 inline void dp_rows(int64_t M, int64_t count, const bf16* const* a, int64_t K, int64_t am, int64_t ak2,
                                   const uint32_t* const* b, int64_t j0, int64_t n32, float* C, int64_t ldc,
                                   __mmask16 m0, __mmask16 m1) {
  even_tiles<8>(M, [&](auto R, int64_t m) JD_LAMBDA_INLINE {
    dp_tile<decltype(R)::value, NV>(count, a, m, K, am, ak2, b, j0, n32, C + m * ldc, ldc, m0, m1);
  });
}

// C (M x N, float32) += sum over t < count of A_t (M x K, bfloat16) . B_t (packed pairs).
JD_TARGET_BF16 void gemm_dp(int64_t M, int64_t K, int64_t N, int64_t count, const bf16* const* a, int64_t am,
                            int64_t ak2, const uint32_t* const* b, float* C, int64_t ldc) {
  const int64_t n32 = (N + 31) / 32 * 32;
  for (int64_t j = 0; j < N; j += 32) {
    const int64_t left = N - j;
    const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    if (left > 16) {
      const __mmask16 m1 = left >= 32 ? __mmask16(0xffff) : __mmask16((1u << (left - 16)) - 1);
      dp_rows<2>(M, count, a, K, am, ak2, b, j, n32, C + j, ldc, m0, m1);
    } else {
      dp_rows<1>(M, count, a, K, am, ak2, b, j, n32, C + j, ldc, m0, 0);
    }
  }
}

// One pair of every row and group: group g's pair KC elements after group g-1's, its B row gb
// after.
template <int R, int NG, int KC>
JD_TARGET_BF16 JD_INLINE void dp_groups_step(__m512 (&acc)[R][NG], const bf16* A, int64_t am, const uint32_t* B,
                                             int64_t gb) {
  __m512bh bv[NG];
  for (int g = 0; g < NG; ++g) bv[g] = (__m512bh)_mm512_loadu_si512(B + g * gb);
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < NG; ++g) {
      uint32_t pair;
      std::memcpy(&pair, A + g * KC + r * am, 4);
      acc[r][g] = _mm512_dpbf16_ps(acc[r][g], (__m512bh)_mm512_set1_epi32(int(pair)), bv[g]);
    }
}

// NG groups side by side, groups g0 .. g0 + NG of `gs`, each of KC channels (even) and at most
// 16 columns (mask m0): the tile of R rows x NG groups as above, each group's A pair a fixed
// KC elements from the previous group's (A's groups are adjacent: x or dy), its B rows and C
// columns gs.b and gs.c apart.
template <int R, int NG, int KC>
JD_TARGET_BF16 inline void dp_groups_tile(int64_t count, const bf16* const* a, int64_t row, int64_t am, int64_t ak2,
                                          const uint32_t* const* b, int64_t n32, float* C, int64_t ldc,
                                          __mmask16 m0, const Groups& gs, int64_t g0) {
  constexpr int CP = copies_for(R * NG, 6);
  __m512 acc[CP][R][NG];
  C += g0 * gs.c;
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < NG; ++g) {
      acc[0][r][g] = _mm512_maskz_loadu_ps(m0, C + g * gs.c + r * ldc);
      for (int i = 1; i < CP; ++i) acc[i][r][g] = _mm512_setzero_ps();
    }
  for (int64_t t = 0; t < count; ++t) {
    const bf16* A = a[t] + row * am + g0 * KC;
    const uint32_t* B = b[t] + g0 * gs.b;
    int k2 = 0;
    for (; k2 + CP <= KC / 2; k2 += CP)
      for (int i = 0; i < CP; ++i) dp_groups_step<R, NG, KC>(acc[i], A + (k2 + i) * ak2, am, B + (k2 + i) * n32, gs.b);
    for (; k2 < KC / 2; ++k2) dp_groups_step<R, NG, KC>(acc[0], A + k2 * ak2, am, B + k2 * n32, gs.b);
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < NG; ++g) {
      for (int i = 1; i < CP; ++i) acc[0][r][g] = _mm512_add_ps(acc[0][r][g], acc[i][r][g]);
      _mm512_mask_storeu_ps(C + g * gs.c + r * ldc, m0, acc[0][r][g]);
    }
}

template <int NG, int KC>
JD_TARGET_BF16 inline void dp_groups_rows(int64_t M, int64_t count, const bf16* const* a, int64_t am, int64_t ak2,
                                          const uint32_t* const* b, int64_t n32, float* C, int64_t ldc,
                                          __mmask16 m0, const Groups& gs, int64_t g0) {
  even_tiles<NG == 2 ? 6 : 4>(M, [&](auto R, int64_t m) JD_LAMBDA_INLINE {
    dp_groups_tile<decltype(R)::value, NG, KC>(count, a, m, am, ak2, b, n32, C + m * ldc, ldc, m0, gs, g0);
  });
}

// C_g (M x N) += sum over t of A_t,g . B_t,g for each group g of `gs`: groups of 8 or 16 channels
// in (A's groups K apart) and at most 16 out 2 or 4 side by side (4: 8 and 8 or fewer), the
// others one by one as above.
JD_TARGET_BF16 void gemm_dp_groups(int64_t M, int64_t K, int64_t N, int64_t count, const bf16* const* a, int64_t am,
                                   int64_t ak2, const uint32_t* const* b, float* C, int64_t ldc, const Groups& gs) {
  const int64_t n32 = (N + 31) / 32 * 32;
  const __mmask16 m0 = N >= 16 ? __mmask16(0xffff) : __mmask16((1u << N) - 1);
  const bool side_by_side = gs.a == K && (K == 8 || K == 16) && N <= 16;
  for (int64_t g0 = 0; g0 < gs.count;) {
    const int64_t left = gs.count - g0;
    if (side_by_side && K == 8 && N <= 8 && left >= 4) {
      dp_groups_rows<4, 8>(M, count, a, am, ak2, b, n32, C, ldc, m0, gs, g0);
      g0 += 4;
    } else if (side_by_side && left >= 2) {
      if (K == 8) dp_groups_rows<2, 8>(M, count, a, am, ak2, b, n32, C, ldc, m0, gs, g0);
      else dp_groups_rows<2, 16>(M, count, a, am, ak2, b, n32, C, ldc, m0, gs, g0);
      g0 += 2;
    } else {
      const bf16* const* ag = a;
      const uint32_t* const* bg = b;
      if (g0 > 0) std::tie(ag, bg) = group_pointers(count, a, b, g0 * gs.a, g0 * gs.b);
      gemm_dp(M, K, N, count, ag, am, ak2, bg, C + g0 * gs.c, ldc);
      g0 += 1;
    }
  }
}

struct Dp {
  using A = bf16;
  using B = uint32_t;
  using Acc = float;
  static constexpr bool kAlwaysBatched = true;
  static constexpr bool kSideBySide = true;  // (gemm_dp_groups)
  static JD_INLINE void run_batch(int64_t M, int64_t K, int64_t N, int64_t count, const bf16* const* a, int64_t am,
                                  const uint32_t* const* b, float* c, int64_t ldc) {
    gemm_dp(M, K, N, count, a, am, 2, b, c, ldc);
  }
  static JD_INLINE void run_groups(int64_t M, int64_t K, int64_t N, int64_t count, const bf16* const* a, int64_t am,
                                   const uint32_t* const* b, float* c, int64_t ldc, const Groups& gs) {
    gemm_dp_groups(M, K, N, count, a, am, 2, b, c, ldc, gs);
  }
};
#endif

// The accumulator of a row stored in a narrower type: its own float32 buffer, rounded into the
// output at the end; when the output is the accumulator's type, the output itself.
template <typename TX, typename T>
struct RowAccumulator {
  std::unique_ptr<T[]> buffer;
  explicit RowAccumulator(int64_t size) {
    if constexpr (!std::is_same_v<TX, T>) buffer.reset(new T[size]);
  }
  // `positions` x `channels` sums, starting from the bias (one value per channel) or zero: +0.0
  // either way, so a zero result is +0.0 (docs/limits.md).
  T* begin(TX* row, int64_t positions, int64_t channels, const TX* bias) {
    T* acc;
    if constexpr (std::is_same_v<TX, T>) acc = row;
    else acc = buffer.get();
    if (bias) {
      for (int64_t p = 0; p < positions; ++p)
        for (int64_t c = 0; c < channels; ++c) acc[p * channels + c] = widen(bias[c]) + T(0);  // -0.0 -> +0.0
    } else {
      std::memset(static_cast<void*>(acc), 0, sizeof(T) * positions * channels);
    }
    return acc;
  }
  void finish(TX* row, int64_t size) {
    if constexpr (!std::is_same_v<TX, T>)
      for (int64_t i = 0; i < size; ++i) row[i] = to_bf16(buffer[i]);
  }
};

template <typename TX, typename T>
JD_INLINE TX round_to(T v) {
  if constexpr (std::is_same_v<TX, T>) return v;
  else return to_bf16(v);
}

// Long sums without the error of one running sum. The running sums (level 0) take at most
// about kLeafTerms terms per element; then they are added into level 1, which takes kFan of
// them, and so on up. The rounding error grows like kLeafTerms + kFan * log(n) instead of n:
// the weight gradient's sums run over every position of every example (2^20 and more).
constexpr int64_t kLeafTerms = 256, kFan = 16;

template <typename T>
class Cascade {
 public:
  explicit Cascade(int64_t size) : size_(size) { grow(); }
  T* sums() const { return levels_[0].get(); }
  // Level 0 took `terms` more terms per element.
  void took(int64_t terms) {
    if ((counts_[0] += terms) < kLeafTerms) return;
    for (size_t l = 0;; ++l) {
      if (l + 1 == levels_.size()) grow();
      T* from = levels_[l].get();
      T* to = levels_[l + 1].get();
      for (int64_t i = 0; i < size_; ++i) to[i] += from[i];
      std::fill(from, from + size_, T(0));
      counts_[l] = 0;
      if (++counts_[l + 1] < kFan) return;
    }
  }
  // out[i] = the whole sum of element i, rounded to TX once.
  template <typename TX>
  void total(TX* out) const {
    for (int64_t i = 0; i < size_; ++i) {
      T sum = levels_[0][i];
      for (size_t l = 1; l < levels_.size(); ++l) sum += levels_[l][i];
      out[i] = round_to<TX>(sum);
    }
  }

 private:
  void grow() {
    levels_.emplace_back(new T[size_]());
    counts_.push_back(0);
  }
  int64_t size_;
  std::vector<std::unique_ptr<T[]>> levels_;
  std::vector<int64_t> counts_;
};

// ---------------------------------------------------------------------------- the three maps

// One task of a map. Forward and dx: items [begin, end) are (row of the result, segment of
// `segment` positions along its last axis). dw: items are (group, tap) weight blocks, summed
// over the row units [u0, u1) of x (a unit: one row of x cut to `segment` positions); the
// sums go to `partial` (T, all items' blocks, when several tasks share an item) or, rounded,
// straight into dw. bias: the forward's C_out values, added before the one rounding.
struct Work {
  int64_t begin, end, segment;
  int64_t u0 = 0, u1 = 0;
  void* partial = nullptr;
  const void* bias = nullptr;
};

constexpr int64_t kBatchDepth = 32;

// The products that reach one strip of an accumulator, gathered and then computed in batches
// (`Gemm::run_batch`: each tile of the accumulator loaded and stored once for all of them). A
// product covers the strip's rows [lo, hi) (rows ldc apart), its span; a: its A at row lo (A's
// rows am apart), b: its weight block. The spans differ only near the ends of a row, where some
// taps do not reach; `cut` (once per strip: every group's products cover the same spans) says
// how they are batched. Cut at every end of a span, each stretch between cuts takes the products
// that cover it, the fewest loads and stores of the accumulator, but a stretch may be a row or
// two (a 3x3x3 stride-1 row of 12: rows 0, 1-10, 11), and a tile of one row runs at a third of
// the speed of one of six. By span, each distinct span is a batch of its own products over its
// whole length (12, 11 and 11 rows): full tiles, the accumulator loaded and stored once per span
// (3 times) instead of once. By span where each span's batch is deep enough that those loads
// and stores are cheap: at least kSpanDepth channels summed (the outer taps times the channels:
// every span has every outer tap). Measured, Zen 4, one core, bfloat16 3x3x3 16 -> 16 on rows
// of 12: forward and input gradient 0.93x; 32 -> 32 on rows of 16 0.95x; with 8 channels per
// group (4 pairs) by span was 1.05-1.1x slower.
constexpr int64_t kSpanDepth = 128;

struct Span {  // rows [lo, hi) of a strip
  int64_t lo, hi;
};

// C_g += sum over t < count of A_t,g . B_t,g for each group g of `gs` (kGroups; else one group).
template <typename Gemm, bool kGroups>
JD_INLINE void multiply(int64_t M, int64_t K, int64_t N, int64_t count, const typename Gemm::A* const* a, int64_t am,
                        const typename Gemm::B* const* b, typename Gemm::Acc* c, int64_t ldc, const Groups& gs) {
  if constexpr (kGroups) Gemm::run_groups(M, K, N, count, a, am, b, c, ldc, gs);
  else Gemm::run_batch(M, K, N, count, a, am, b, c, ldc);
}

template <typename Gemm>
class Batches {
 public:
  using A = typename Gemm::A;
  using B = typename Gemm::B;
  // The strip's spans (one per tap along the last axis; empty: it does not reach the strip), and
  // how deep the shallowest span's batch is (channels summed).
  JD_INLINE void cut(const std::vector<Span>& spans, int64_t depth) {
    by_span_ = depth >= kSpanDepth;
    stretches_.clear();
    if (by_span_) {
      for (const Span& r : spans) {
        if (r.lo >= r.hi) continue;
        bool seen = false;
        for (const Span& d : stretches_) seen |= d.lo == r.lo && d.hi == r.hi;
        if (!seen) stretches_.push_back(r);
      }
      return;
    }
    cuts_.clear();
    for (const Span& r : spans)
      if (r.lo < r.hi) {
        cuts_.push_back(r.lo);
        cuts_.push_back(r.hi);
      }
    std::sort(cuts_.begin(), cuts_.end());
    cuts_.erase(std::unique(cuts_.begin(), cuts_.end()), cuts_.end());
    for (size_t i = 0; i + 1 < cuts_.size(); ++i) stretches_.push_back(Span{cuts_[i], cuts_[i + 1]});
  }
  JD_INLINE void add(int64_t lo, int64_t hi, const A* a, const B* b) {
    if (lo >= hi) return;
    // (member by member: a product built whole was stored in two parts and read back as one
    // 32-byte vector, a failed store forwarding per product: 16 % of a 3x3x3 bfloat16 forward)
    Product& p = products_.emplace_back();
    p.lo = lo;
    p.hi = hi;
    p.a = a;
    p.b = b;
  }
  template <bool kGroups>
  JD_INLINE void flush(int64_t K, int64_t N, int64_t am, typename Gemm::Acc* c, int64_t ldc, const Groups& gs) {
    if (as_.size() < products_.size()) {
      as_.resize(products_.size());
      bs_.resize(products_.size());
    }
    const A** as = as_.data();
    const B** bs = bs_.data();
    for (const Span& d : stretches_) {
      int64_t count = 0;
      for (const Product& p : products_)
        if (by_span_ ? p.lo == d.lo && p.hi == d.hi : p.lo <= d.lo && p.hi >= d.hi) {
          as[count] = p.a + (d.lo - p.lo) * am;
          bs[count] = p.b;
          ++count;
        }
      if (count > 0) multiply<Gemm, kGroups>(d.hi - d.lo, K, N, count, as, am, bs, c + d.lo * ldc, ldc, gs);
    }
    products_.clear();
  }

 private:
  struct Product {
    int64_t lo, hi;
    const A* a;
    const B* b;
  };
  std::vector<Product> products_;
  std::vector<int64_t> cuts_;
  std::vector<Span> stretches_;  // the batches' rows: stretches between cuts, or the distinct spans
  bool by_span_ = false;
  std::vector<const A*> as_;
  std::vector<const B*> bs_;
};

// Whether a map runs its products in batches (`Batches`) rather than one by one (each tap's
// weight block then stays in cache over a row): `products` per row of the strip (the taps that
// reach it), each summing `depth` channels into `width`, over rows of `length` positions. The
// vdpbf16ps kernels always (measured, one core, AMD Zen 4, against one by one: 3x3x3 16 -> 16 at
// 32^3 0.75x, 32 -> 32 at 16^3 0.63-0.85x, the 8-channel groups of layer D 0.63-0.71x). The
// float32 kernels already run at the core's peak on 8 channels and more, and batch only where a
// product is shallow or one column wide (1 -> 16 at 32^3: 0.5x forward, 0.47x input gradient),
// or on long rows (1 -> 32 at 64^3 0.75x, 32 -> 64 stride 2 at 64^3 0.78x, 32 -> 64 at 32^3
// 0.9x; 64 -> 128 at 16^3 1.09x).
template <typename Gemm>
JD_INLINE bool batched(int64_t products, int64_t depth, int64_t width, int64_t length) {
  if (products < 2) return false;
  if constexpr (Gemm::kAlwaysBatched) return true;
  return depth <= 4 || width == 1 || (depth <= kBatchDepth && length >= 64);
}

// Forward: item = ((n * OD + od) * OH + oh) * segments + segment; wf: a block per (group, tap).
// Along the last axis, the outputs o = o_lo + e of a segment fall in s classes (e mod s): the
// taps of one class reach consecutive outputs of the class from consecutive inputs, so each
// class is a strip of rows s*C_out apart that all its taps (and the outer axes' taps) add into.
template <typename Gemm, typename TX, bool kGroups>
JD_INLINE void forward_rows(const Geometry& geo, const TX* x, const typename Gemm::B* wf, int64_t block, TX* y,
                            const Work& work) {
  const int64_t cin = geo.cin(), cout = geo.cout();
  const int64_t D = geo.in[0], H = geo.in[1], W = geo.in[2];
  const int64_t OD = geo.out[0], OH = geo.out[1], OW = geo.out[2];
  const int64_t KD = geo.k[0], KH = geo.k[1], KW = geo.k[2], S = geo.s[2];
  const Axis depth(D, OD, KD, geo.s[0], geo.d[0], geo.pb[0]), height(H, OH, KH, geo.s[1], geo.d[1], geo.pb[1]);
  const int64_t seg = work.segment, segments = (OW + seg - 1) / seg;
  const TX* bias = static_cast<const TX*>(work.bias);
  RowAccumulator<TX, typename Gemm::Acc> rows(seg * cout);
  std::vector<Run> runs(KW);  // tap qw's run of the segment
  std::vector<Span> spans(KW);  // its rows of the strip being batched
  Batches<Gemm> batches;
  for (int64_t item = work.begin; item < work.end; ++item) {
    const int64_t row = item / segments, o_lo = item % segments * seg, o_hi = std::min(OW, o_lo + seg);
    const int64_t oh = row % OH, od = row / OH % OD, n = row / (OH * OD);
    TX* yrow = y + (row * OW + o_lo) * cout;
    auto* acc = rows.begin(yrow, o_hi - o_lo, cout, bias);
    const Taps td = depth.reaching(od), th = height.reaching(oh);
    for (int64_t qw = 0; qw < KW; ++qw) runs[qw] = run_of(W, o_lo, o_hi, S, geo.d[2] * qw, geo.pb[2]);
    // taps(visit): visit(qw, x row, weight block of tap qw) for every outer tap (i, j) that
    // reaches this row: the row of x it reads and its first block (group 0), computed once per
    // (i, j) rather than per product (a division each).
    const auto taps = [&](const auto& visit) JD_LAMBDA_INLINE {
      for (int64_t i = 0; i < td.count; ++i) {
        const int64_t qd = td.first + i * td.step, pd = depth.source(od, qd);
        for (int64_t j = 0; j < th.count; ++j) {
          const int64_t qh = th.first + j * th.step, ph = height.source(oh, qh);
          const TX* xrow = x + ((n * D + pd) * H + ph) * W * cin;
          const auto* blocks = wf + (qd * KH + qh) * KW * block;
          for (int64_t qw = 0; qw < KW; ++qw) visit(qw, xrow, blocks + qw * block);
        }
      }
    };
    const int64_t group_block = KD * KH * KW * block;
    const Groups groups{geo.g, geo.cgi, group_block, geo.cgo};
    if (batched<Gemm>(td.count * th.count * ceil_div(KW, S), geo.cgi, geo.cgo, o_hi - o_lo)) {
      for (int64_t e = 0; e < std::min(S, o_hi - o_lo); ++e) {  // the class of outputs o_lo + e + S*m
        for (int64_t qw = 0; qw < KW; ++qw) {  // tap qw's rows of the class's strip (none: another class)
          const Run& r = runs[qw];
          const int64_t m = (r.o0 - o_lo) / S;
          spans[qw] = r.lo < r.hi && (r.o0 - o_lo) % S == e ? Span{m, m + r.hi - r.lo} : Span{0, 0};
        }
        batches.cut(spans, td.count * th.count * geo.cgi);
        taps([&](int64_t qw, const TX* xrow, const auto* b) JD_LAMBDA_INLINE {
          batches.add(spans[qw].lo, spans[qw].hi, xrow + runs[qw].lo * cin, b);
        });
        batches.template flush<kGroups>(geo.cgi, geo.cgo, cin, acc + e * cout, S * cout, groups);
      }
    } else {
      taps([&](int64_t qw, const TX* xrow, const auto* b) JD_LAMBDA_INLINE {
        const Run& r = runs[qw];
        if (r.lo >= r.hi) return;
        const TX* a = xrow + r.lo * cin;
        multiply<Gemm, kGroups>(r.hi - r.lo, geo.cgi, geo.cgo, 1, &a, cin, &b, acc + (r.o0 - o_lo) * cout, S * cout,
                                groups);
      });
    }
    rows.finish(yrow, (o_hi - o_lo) * cout);
  }
}

// Input gradient: item = ((n * D + pd) * H + ph) * segments + segment; wt: a block per (group,
// tap) of the transposed weight (Cg_out x Cg_in). Already a strided correlation: each input
// position is a row of the strip that every tap reaching it adds into.
template <typename Gemm, typename TX, bool kGroups>
JD_INLINE void dx_rows(const Geometry& geo, const TX* dy, const typename Gemm::B* wt, int64_t block, TX* dx,
                       const Work& work) {
  const int64_t cin = geo.cin(), cout = geo.cout();
  const int64_t D = geo.in[0], H = geo.in[1], W = geo.in[2];
  const int64_t OD = geo.out[0], OH = geo.out[1], OW = geo.out[2];
  const int64_t KD = geo.k[0], KH = geo.k[1], KW = geo.k[2];
  const Axis depth(D, OD, KD, geo.s[0], geo.d[0], geo.pb[0]), height(H, OH, KH, geo.s[1], geo.d[1], geo.pb[1]);
  const int64_t seg = work.segment, segments = (W + seg - 1) / seg, am = geo.s[2] * cout;
  const Groups groups{geo.g, geo.cgo, KD * KH * KW * block, geo.cgi};
  RowAccumulator<TX, typename Gemm::Acc> rows(seg * cin);
  std::vector<Run> runs(KW);  // tap qw's run of the segment
  std::vector<Span> spans(KW);  // its rows of the strip being batched
  Batches<Gemm> batches;
  for (int64_t item = work.begin; item < work.end; ++item) {
    const int64_t row = item / segments, p_lo = item % segments * seg, p_hi = std::min(W, p_lo + seg);
    const int64_t ph = row % H, pd = row / H % D, n = row / (H * D);
    TX* xrow = dx + (row * W + p_lo) * cin;
    auto* acc = rows.begin(xrow, p_hi - p_lo, cin, nullptr);
    const Taps td = depth.reached(pd), th = height.reached(ph);
    for (int64_t qw = 0; qw < KW; ++qw)
      runs[qw] = clip(run_of(W, 0, OW, geo.s[2], geo.d[2] * qw, geo.pb[2]), p_lo, p_hi, geo.s[2]);
    const bool batch = batched<Gemm>(td.count * th.count * ceil_div(KW, geo.s[2]), geo.cgo, geo.cgi, p_hi - p_lo);
    if (batch) {
      for (int64_t qw = 0; qw < KW; ++qw) spans[qw] = Span{runs[qw].lo - p_lo, runs[qw].hi - p_lo};
      batches.cut(spans, td.count * th.count * geo.cgo);
    }
    for (int64_t i = 0; i < td.count; ++i)
      for (int64_t j = 0; j < th.count; ++j)
        for (int64_t qw = 0; qw < KW; ++qw) {
          const Run& r = runs[qw];
          if (r.lo >= r.hi) continue;
          const int64_t qd = td.first + i, qh = th.first + j;
          const int64_t od = depth.target(pd, qd), oh = height.target(ph, qh);
          const TX* a = dy + (((n * OD + od) * OH + oh) * OW + r.o0) * cout;
          const auto* b = wt + ((qd * KH + qh) * KW + qw) * block;
          if (batch) batches.add(r.lo - p_lo, r.hi - p_lo, a, b);
          else
            multiply<Gemm, kGroups>(r.hi - r.lo, geo.cgo, geo.cgi, 1, &a, am, &b, acc + (r.lo - p_lo) * cin, cin,
                                    groups);
        }
    if (batch) batches.template flush<kGroups>(geo.cgo, geo.cgi, am, acc, cin, groups);
    rows.finish(xrow, (p_hi - p_lo) * cin);
  }
}

// A row unit of x for the weight gradient: row (n, pd, ph) of x, positions [p_lo, p_hi) (rows
// cut in segments of `seg` positions).
struct Unit {
  int64_t row, p_lo, p_hi;
};

JD_INLINE Unit unit_of(const Geometry& geo, int64_t u, int64_t seg) {
  const int64_t W = geo.in[2], segments = ceil_div(W, seg), p_lo = u % segments * seg;
  return Unit{u / segments, p_lo, std::min(W, p_lo + seg)};
}

// Where item (g, qd, qh, qw) takes `unit` in the output: false when its tap lands the row
// outside it or no position of the unit reaches it; else its run r and dy_row = (n*OD + od)*OH + oh.
JD_INLINE bool tap_run(const Geometry& geo, const Unit& unit, int64_t item, Run* r, int64_t* dy_row) {
  const int64_t D = geo.in[0], H = geo.in[1], OD = geo.out[0], OH = geo.out[1], KW = geo.k[2], KH = geo.k[1];
  const int64_t ph = unit.row % H, pd = unit.row / H % D, n = unit.row / (H * D);
  const int64_t qw = item % KW, qh = (item / KW) % KH, qd = (item / (KW * KH)) % geo.k[0];
  const int64_t od = geo.s[0] * pd + geo.d[0] * qd - geo.pb[0];
  const int64_t oh = geo.s[1] * ph + geo.d[1] * qh - geo.pb[1];
  if (od < 0 || od >= OD || oh < 0 || oh >= OH) return false;
  *r = clip(run_of(geo.in[2], 0, geo.out[2], geo.s[2], geo.d[2] * qw, geo.pb[2]), unit.p_lo, unit.p_hi, geo.s[2]);
  *dy_row = (n * OD + od) * OH + oh;
  return r->lo < r->hi;
}

// The runs a weight-gradient task reads. For each row unit u in [u0, u1) of x, outer, and each
// item (g, qd, qh, qw) in [begin, end) that reaches it (tap_run): visit(row, p_lo, p_hi, first,
// item, g, run, dy_row), first true at a unit's first call; then done(p_hi - p_lo), the most
// terms a unit adds to a sum. Units outer: each is read once per task while it is in cache.
template <typename Visit, typename Done>
JD_INLINE void dw_runs(const Geometry& geo, const Work& work, const Visit& visit, const Done& done) {
  const int64_t taps = geo.k[0] * geo.k[1] * geo.k[2];
  for (int64_t u = work.u0; u < work.u1; ++u) {
    const Unit unit = unit_of(geo, u, work.segment);
    bool first = true;
    for (int64_t item = work.begin; item < work.end; ++item) {
      Run r;
      int64_t dy_row;
      if (!tap_run(geo, unit, item, &r, &dy_row)) continue;
      visit(unit.row, unit.p_lo, unit.p_hi, first, item, item / taps, r, dy_row);
      first = false;
    }
    done(unit.p_hi - unit.p_lo);
  }
}

// The sums of a weight-gradient task, into `partial` (T) or rounded into dw.
template <typename TX, typename T>
JD_INLINE void dw_store(const Cascade<T>& sums, const Geometry& geo, TX* dw, const Work& work) {
  const int64_t offset = work.begin * geo.cgi * geo.cgo;
  if (work.partial) sums.total(static_cast<T*>(work.partial) + offset);
  else sums.total(dw + offset);
}

// Weight gradient, items (g, qd, qh, qw) in that order; T accumulates.
template <typename TX, typename T, int VB>
JD_INLINE void dw_items(const Geometry& geo, const TX* x, const TX* dy, TX* dw, const Work& work) {
  const int64_t cin = geo.cin(), cout = geo.cout(), W = geo.in[2], OW = geo.out[2];
  const int64_t size = geo.cgi * geo.cgo;
  Cascade<T> sums((work.end - work.begin) * size);
  constexpr bool narrow = !std::is_same_v<TX, T>;
  std::unique_ptr<T[]> wide(narrow ? new T[work.segment * cin] : nullptr);  // a unit of x, widened once
  const auto visit = [&](int64_t row, int64_t p_lo, int64_t p_hi, bool first, int64_t item, int64_t g,
                         const Run& r, int64_t dy_row) JD_LAMBDA_INLINE {
    const TX* xrow = x + row * W * cin;
    const TX* dyrun = dy + (dy_row * OW + r.o0) * cout + g * geo.cgo;
    T* out = sums.sums() + (item - work.begin) * size;
    // dw[q] (Cg_in x Cg_out) += x_run^T . dy_run: x read transposed, positions as the sum
    if constexpr (!narrow) {
      gemm<TX, TX, T, VB>(geo.cgi, r.hi - r.lo, geo.cgo, xrow + r.lo * cin + g * geo.cgi, 1, cin, dyrun,
                          geo.s[2] * cout, out, geo.cgo);
    } else {  // x's elements are read one at a time: widened first
      if (first)
        for (int64_t i = p_lo * cin; i < p_hi * cin; ++i) wide[i - p_lo * cin] = widen(xrow[i]);
      gemm<T, TX, T, VB>(geo.cgi, r.hi - r.lo, geo.cgo, wide.get() + (r.lo - p_lo) * cin + g * geo.cgi, 1, cin,
                         dyrun, geo.s[2] * cout, out, geo.cgo);
    }
  };
  dw_runs(geo, work, visit, [&](int64_t terms) JD_LAMBDA_INLINE { sums.took(terms); });
  dw_store(sums, geo, dw, work);
}

// out[j] += sum over m < M of x[m*xs + j] * d[m*ds + j] for j < n: a depthwise weight gradient's
// sums over a run of positions, vectorised along the channels (two copies of each tile's sums
// take alternate positions: 8 sums in flight in a tile of 4 vectors, 2 in the narrower tails).
template <typename TX, typename T, int VB, int NV>
JD_INLINE void depthwise_sums_tile(int64_t M, const TX* x, int64_t xs, const TX* d, int64_t ds, T* out) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::lanes;
  V acc[2][NV];
  for (int v = 0; v < NV; ++v) {
    acc[0][v] = load<V>(out + v * L);
    acc[1][v] = V{};
  }
  int64_t m = 0;
  for (; m + 2 <= M; m += 2)
    for (int i = 0; i < 2; ++i)
      for (int v = 0; v < NV; ++v)
        acc[i][v] += load_as<V>(x + (m + i) * xs + v * L) * load_as<V>(d + (m + i) * ds + v * L);
  if (m < M)
    for (int v = 0; v < NV; ++v) acc[0][v] += load_as<V>(x + m * xs + v * L) * load_as<V>(d + m * ds + v * L);
  for (int v = 0; v < NV; ++v) store(out + v * L, acc[0][v] + acc[1][v]);
}

template <typename TX, typename T, int VB>
JD_INLINE void depthwise_sums(int64_t M, int64_t n, const TX* x, int64_t xs, const TX* d, int64_t ds, T* out) {
  constexpr int L = Vec<T, VB>::lanes;
  int64_t j = 0;
  for (; j + 4 * L <= n; j += 4 * L) depthwise_sums_tile<TX, T, VB, 4>(M, x + j, xs, d + j, ds, out + j);
  for (; j + L <= n; j += L) depthwise_sums_tile<TX, T, VB, 1>(M, x + j, xs, d + j, ds, out + j);
  if constexpr (VB > 16)
    for (; j + L / 2 <= n; j += L / 2) depthwise_sums_tile<TX, T, VB / 2, 1>(M, x + j, xs, d + j, ds, out + j);
  if constexpr (VB > 32)
    for (; j + L / 4 <= n; j += L / 4) depthwise_sums_tile<TX, T, VB / 4, 1>(M, x + j, xs, d + j, ds, out + j);
  for (; j < n; ++j) {
    T acc = out[j];
    for (int64_t m = 0; m < M; ++m) acc += widen(x[m * xs + j]) * widen(d[m * ds + j]);
    out[j] = acc;
  }
}

// The depthwise weight gradient: items (c, qd, qh, qw), the channels being the groups. A task
// sums every tap of the channels its items belong to (a channel cut between two tasks is summed
// by both, each storing its own items), per tap a vector of sums over those channels.
template <typename TX, typename T, int VB>
JD_INLINE void depthwise_dw(const Geometry& geo, const TX* x, const TX* dy, TX* dw, const Work& work) {
  const int64_t taps = geo.k[0] * geo.k[1] * geo.k[2], C = geo.g, W = geo.in[2], OW = geo.out[2];
  const int64_t c0 = work.begin / taps, channels = ceil_div(work.end, taps) - c0;
  Cascade<T> sums(taps * channels);  // (tap, channel - c0)
  for (int64_t u = work.u0; u < work.u1; ++u) {
    const Unit unit = unit_of(geo, u, work.segment);
    for (int64_t tap = 0; tap < taps; ++tap) {
      Run r;
      int64_t dy_row;
      if (!tap_run(geo, unit, tap, &r, &dy_row)) continue;
      depthwise_sums<TX, T, VB>(r.hi - r.lo, channels, x + (unit.row * W + r.lo) * C + c0, C,
                                dy + (dy_row * OW + r.o0) * C + c0, geo.s[2] * C, sums.sums() + tap * channels);
    }
    sums.took(unit.p_hi - unit.p_lo);
  }
  std::vector<T> total(taps * channels);
  sums.total(total.data());
  for (int64_t item = work.begin; item < work.end; ++item) {
    const T v = total[item % taps * channels + item / taps - c0];
    if (work.partial) static_cast<T*>(work.partial)[item] = v;
    else dw[item] = round_to<TX>(v);
  }
}

#ifdef JD_DPBF16
// to[j] = (first[j], second[j]) as a vdpbf16ps pair for j < n; a missing row (nullptr) reads as
// zeros.
// (The zero-masking forms: the plain ones start from an undefined register, which GCC 12 warns
// of as maybe uninitialised.)
JD_TARGET_BF16 inline __m512i widen_halves(const bf16* row, __mmask16 m) {
  return row ? _mm512_maskz_cvtepu16_epi32(m, _mm256_maskz_loadu_epi16(m, row)) : _mm512_setzero_si512();
}

JD_TARGET_BF16 inline void interleave(const bf16* first, const bf16* second, int64_t n, uint32_t* to) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1);
    const __m512i a = widen_halves(first ? first + j : nullptr, m), b = widen_halves(second ? second + j : nullptr, m);
    _mm512_mask_storeu_epi32(to + j, m, _mm512_or_si512(a, _mm512_maskz_slli_epi32(m, b, 16)));
  }
}

// The bfloat16 weight gradient with vdpbf16ps. Its sum runs over positions, so both operands are
// packed as pairs of consecutive positions: each unit of x once (pairs starting at even and at
// odd positions: a run starts at either), each run of dy per tap. Units are taken in blocks of
// up to kLeafTerms positions, taps inner: a tap's products over the block's units (runs of one
// length) are one batch, so each tile of its sums is loaded and stored once per block, not
// once per unit.
template <int VB>
JD_TARGET_BF16 void dw_items_dp(const Geometry& geo, const bf16* x, const bf16* dy, bf16* dw, const Work& work) {
  constexpr int64_t kUnits = 16;
  const int64_t cin = geo.cin(), cout = geo.cout(), W = geo.in[2], OW = geo.out[2];
  const int64_t taps = geo.k[0] * geo.k[1] * geo.k[2], seg = work.segment, step = geo.s[2] * cout;
  const int64_t size = geo.cgi * geo.cgo, w2 = seg / 2 + 1, n32 = (geo.cgo + 31) / 32 * 32;
  const int64_t block = std::max<int64_t>(1, std::min(kUnits, kLeafTerms / seg));
  Cascade<float> sums((work.end - work.begin) * size);
  // xp[unit][parity][k2 * cin + c] = (x[p_lo + parity + 2 k2, c], x[p_lo + parity + 2 k2 + 1, c]),
  // zero past p_hi; dyp[product][k2 * n32 + j]: a tap's run of dy in pairs
  std::unique_ptr<uint32_t[]> xp(new uint32_t[block * 2 * w2 * cin]);
  std::unique_ptr<uint32_t[]> dyp(new uint32_t[block * w2 * n32]());
  Unit units[kUnits];
  const bf16* pa[kUnits];
  const uint32_t* pb[kUnits];
  for (int64_t u0 = work.u0; u0 < work.u1; u0 += block) {
    const int64_t count_units = std::min(block, work.u1 - u0);
    int64_t terms = 0;
    for (int64_t i = 0; i < count_units; ++i) {
      const Unit& unit = units[i] = unit_of(geo, u0 + i, seg);
      const bf16* xrow = x + unit.row * W * cin;
      for (int64_t parity = 0; parity < 2; ++parity)
        for (int64_t k2 = 0; k2 < w2; ++k2) {
          const int64_t p = unit.p_lo + parity + 2 * k2;
          interleave(p < unit.p_hi ? xrow + p * cin : nullptr, p + 1 < unit.p_hi ? xrow + (p + 1) * cin : nullptr,
                     cin, xp.get() + ((i * 2 + parity) * w2 + k2) * cin);
        }
      terms += unit.p_hi - unit.p_lo;
    }
    for (int64_t item = work.begin; item < work.end; ++item) {
      const int64_t g = item / taps;
      float* out = sums.sums() + (item - work.begin) * size;
      int64_t count = 0, len = 0;
      const auto flush = [&]() JD_LAMBDA_INLINE {
        if (count) gemm_dp(geo.cgi, len, geo.cgo, count, pa, 2, 2 * cin, pb, out, geo.cgo);
        count = 0;
      };
      for (int64_t i = 0; i < count_units; ++i) {
        Run r;
        int64_t dy_row;
        if (!tap_run(geo, units[i], item, &r, &dy_row)) continue;
        if (count && r.hi - r.lo != len) flush();
        len = r.hi - r.lo;
        const bf16* dyrun = dy + (dy_row * OW + r.o0) * cout + g * geo.cgo;
        uint32_t* packed = dyp.get() + count * w2 * n32;
        for (int64_t k2 = 0; 2 * k2 < len; ++k2) {
          const bf16* even = dyrun + 2 * k2 * step;
          interleave(even, 2 * k2 + 1 < len ? even + step : nullptr, geo.cgo, packed + k2 * n32);
        }
        const int64_t at = r.lo - units[i].p_lo;
        pa[count] = reinterpret_cast<const bf16*>(xp.get() + ((i * 2 + (at & 1)) * w2 + at / 2) * cin + g * geo.cgi);
        pb[count] = packed;
        ++count;
      }
      flush();
    }
    sums.took(terms);
  }
  dw_store(sums, geo, dw, work);
}
#endif

template <int VB>
JD_INLINE void dw_items_widen(const Geometry& geo, const bf16* x, const bf16* dy, bf16* dw, const Work& work) {
  dw_items<bf16, float, VB>(geo, x, dy, dw, work);
}

// One entry per (map, dtype), compiled once per ISA; `kernels` is the set chosen at load time.
// forward and dx read their weight operand prepared by `prepare_weight` (blocks of `block`).
using MapFn = void (*)(const Geometry&, const void*, const void*, int64_t, void*, const Work&);

struct KernelSet {
  const char* isa;
  MapFn forward32, dx32, dw32, forward64, dx64, dw64, forward16, dx16, dw16;
  MapFn dw16_wide;  // the bfloat16 weight gradient on float32 sums of operands widened as read
  bool pairs;  // the bfloat16 forward and dx read their weight as vdpbf16ps pairs (else float32)
  // depthwise forward and dx (Depthwise; their weight per tap, prepare_depthwise) and weight
  // gradient (depthwise_dw): float32, float64, bfloat16 (widened as read, float32 sums)
  MapFn depthwise_forward32, depthwise_dx32, depthwise_dw32, depthwise_forward64, depthwise_dx64, depthwise_dw64,
      depthwise_forward16, depthwise_dx16, depthwise_dw16;
};

// forward and dx: one group, or (Gemm::kSideBySide) several, whose side-by-side tiles are a
// function of their own (inlined into one function, they made the one-group calls 5-15 % slower).
#define JD_MAPS(ATTR, NAME, ISA, VB, GEMM16, DW16)                                                            \
  template <typename Gemm, bool kGroups>                                                                      \
  ATTR __attribute__((noinline)) void forward_##NAME##_rows(const Geometry& g, const void* a, const void* b,   \
                                                            int64_t k, void* c, const Work& work) {           \
    using X = typename Gemm::A;                                                                               \
    forward_rows<Gemm, X, kGroups>(g, static_cast<const X*>(a), static_cast<const typename Gemm::B*>(b), k,   \
                                   static_cast<X*>(c), work);                                                 \
  }                                                                                                           \
  template <typename Gemm>                                                                                    \
  ATTR void forward_##NAME(const Geometry& g, const void* a, const void* b, int64_t k, void* c,                \
                           const Work& work) {                                                                \
    if constexpr (Gemm::kSideBySide)                                                                          \
      if (g.g == 1) return forward_##NAME##_rows<Gemm, false>(g, a, b, k, c, work);                           \
    forward_##NAME##_rows<Gemm, true>(g, a, b, k, c, work);                                                   \
  }                                                                                                           \
  template <typename Gemm, bool kGroups>                                                                      \
  ATTR __attribute__((noinline)) void dx_##NAME##_rows(const Geometry& g, const void* a, const void* b,        \
                                                       int64_t k, void* c, const Work& work) {                \
    using X = typename Gemm::A;                                                                               \
    dx_rows<Gemm, X, kGroups>(g, static_cast<const X*>(a), static_cast<const typename Gemm::B*>(b), k,        \
                              static_cast<X*>(c), work);                                                      \
  }                                                                                                           \
  template <typename Gemm>                                                                                    \
  ATTR void dx_##NAME(const Geometry& g, const void* a, const void* b, int64_t k, void* c, const Work& work) { \
    if constexpr (Gemm::kSideBySide)                                                                          \
      if (g.g == 1) return dx_##NAME##_rows<Gemm, false>(g, a, b, k, c, work);                                \
    dx_##NAME##_rows<Gemm, true>(g, a, b, k, c, work);                                                        \
  }                                                                                                           \
  template <typename X, typename T>                                                                           \
  ATTR void dw_##NAME(const Geometry& g, const void* a, const void* b, int64_t, void* c, const Work& work) {   \
    dw_items<X, T, VB>(g, static_cast<const X*>(a), static_cast<const X*>(b), static_cast<X*>(c), work);      \
  }                                                                                                           \
  ATTR void dw16_##NAME(const Geometry& g, const void* a, const void* b, int64_t, void* c, const Work& work) {  \
    DW16<VB>(g, static_cast<const bf16*>(a), static_cast<const bf16*>(b), static_cast<bf16*>(c), work);       \
  }                                                                                                           \
  template <typename X, typename T>                                                                           \
  ATTR void depthwise_forward_##NAME(const Geometry& g, const void* a, const void* b, int64_t k, void* c,      \
                                     const Work& work) {                                                      \
    forward_rows<Depthwise<X, T, VB>, X, true>(g, static_cast<const X*>(a), static_cast<const T*>(b), k,      \
                                                static_cast<X*>(c), work);                                     \
  }                                                                                                           \
  template <typename X, typename T>                                                                           \
  ATTR void depthwise_dx_##NAME(const Geometry& g, const void* a, const void* b, int64_t k, void* c,           \
                                const Work& work) {                                                           \
    dx_rows<Depthwise<X, T, VB>, X, true>(g, static_cast<const X*>(a), static_cast<const T*>(b), k,           \
                                           static_cast<X*>(c), work);                                          \
  }                                                                                                           \
  template <typename X, typename T>                                                                           \
  ATTR void depthwise_dw_##NAME(const Geometry& g, const void* a, const void* b, int64_t, void* c,             \
                                const Work& work) {                                                           \
    depthwise_dw<X, T, VB>(g, static_cast<const X*>(a), static_cast<const X*>(b), static_cast<X*>(c), work);  \
  }                                                                                                           \
  const KernelSet kernels_##NAME = {                                                                          \
      ISA,                                                                                                    \
      forward_##NAME<Fma<float, float, float, VB>>,                                                           \
      dx_##NAME<Fma<float, float, float, VB>>,                                                                \
      dw_##NAME<float, float>,                                                                                \
      forward_##NAME<Fma<double, double, double, VB>>,                                                        \
      dx_##NAME<Fma<double, double, double, VB>>,                                                             \
      dw_##NAME<double, double>,                                                                              \
      forward_##NAME<GEMM16>,                                                                                 \
      dx_##NAME<GEMM16>,                                                                                      \
      dw16_##NAME,                                                                                            \
      dw_##NAME<bf16, float>,                                                                                 \
      std::is_same_v<typename GEMM16::B, uint32_t>,                                                           \
      depthwise_forward_##NAME<float, float>,                                                                 \
      depthwise_dx_##NAME<float, float>,                                                                      \
      depthwise_dw_##NAME<float, float>,                                                                      \
      depthwise_forward_##NAME<double, double>,                                                               \
      depthwise_dx_##NAME<double, double>,                                                                    \
      depthwise_dw_##NAME<double, double>,                                                                    \
      depthwise_forward_##NAME<bf16, float>,                                                                  \
      depthwise_dx_##NAME<bf16, float>,                                                                       \
      depthwise_dw_##NAME<bf16, float>};

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

// The best set this processor runs, or the one JAX_DECONV_ISA names if the processor has it (the
// names `isa()` reports; 'baseline' too). Python warns when the name is unknown or not run here.
const KernelSet* choose_kernels() {
  const char* wanted = std::getenv("JAX_DECONV_ISA");
  const std::string want = wanted ? wanted : "";
#ifdef JD_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (want == "baseline" || want == kernels_baseline.isa) return &kernels_baseline;
  if (want == kernels_avx2.isa && avx2) return &kernels_avx2;
  if (want == kernels_avx512.isa && avx512) return &kernels_avx512;
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

// A depthwise weight (a value per (channel, tap)) as Depthwise reads it: per tap, a value per
// channel, in the accumulator's type.
template <typename TW, typename T>
const T* prepare_depthwise(const TW* w, int64_t channels, int64_t taps, std::vector<T>* out) {
  out->resize(channels * taps);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t t = 0; t < taps; ++t) (*out)[t * channels + c] = widen(w[c * taps + t]);
  return out->data();
}

// The positions per segment that cut `rows` rows of `length` positions into about `wanted`
// items (whole rows when there are enough of them; segments of at least 16 positions).
int64_t segment_for(int64_t rows, int64_t length, int64_t wanted) {
  if (rows >= wanted) return length;
  const int64_t segments = std::min(ceil_div(wanted, rows), std::max<int64_t>(1, length / 16));
  return ceil_div(length, segments);
}

// How a call is cut into tasks for `threads` threads. Forward and dx: one Work over all items,
// rows of the result cut along the last axis when there are fewer than 4 rows per thread (a
// batch-1 1-D or 2-D call), which parallel_for takes in chunks of 4 per thread. dw: (group, tap)
// items in blocks over the threads and, when there are fewer items than threads (a 1x1 kernel),
// the row units of x in `unit_blocks` blocks as well, each task with its own sums (`partial`),
// added at the end; at most 256 MiB of such sums.
struct Split {
  std::vector<Work> tasks;
  int64_t unit_blocks = 1;
};

Split split_work(Map map, const Geometry& geo, int64_t threads, int64_t accumulator) {
  Split split;
  const int64_t taps = geo.k[0] * geo.k[1] * geo.k[2];
  if (map == Map::kDw) {
    const int64_t W = geo.in[2], seg = ceil_div(W, ceil_div(W, kLeafTerms / 2));
    const int64_t items = geo.g * taps, units = geo.n * geo.in[0] * geo.in[1] * ceil_div(W, seg);
    const int64_t item_blocks = std::min(items, threads);
    const int64_t bytes = std::max<int64_t>(1, items * geo.cgi * geo.cgo * accumulator);
    const int64_t wanted = items >= threads ? 1 : std::min(units, ceil_div(threads, items));
    split.unit_blocks = std::max<int64_t>(1, std::min(wanted, (int64_t(256) << 20) / bytes));
    for (int64_t i = 0; i < item_blocks; ++i)
      for (int64_t u = 0; u < split.unit_blocks; ++u) {
        Work w{i * items / item_blocks, (i + 1) * items / item_blocks, seg};
        w.u0 = u * units / split.unit_blocks;
        w.u1 = (u + 1) * units / split.unit_blocks;
        split.tasks.push_back(w);
      }
  } else {
    const bool fw = map == Map::kForward;
    const int64_t rows = geo.n * (fw ? geo.out[0] * geo.out[1] : geo.in[0] * geo.in[1]);
    const int64_t length = fw ? geo.out[2] : geo.in[2];
    const int64_t seg = segment_for(rows, length, 4 * threads);
    split.tasks.push_back(Work{0, rows * ceil_div(length, seg), seg});
  }
  return split;
}

// The sums of the tasks that shared the weight gradient's items, added in a fixed order and
// rounded once.
template <typename TX, typename T>
void add_partials(const T* partial, int64_t parts, int64_t count, TX* dw, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    T sum = partial[i];
    for (int64_t r = 1; r < parts; ++r) sum += partial[r * count + i];
    dw[i] = round_to<TX>(sum);
  }
}

template <Map kMap>
ffi::Error run(ffi::ThreadPool& pool, ffi::AnyBuffer a, ffi::AnyBuffer b, const ffi::AnyBuffer* bias,
               ffi::Result<ffi::AnyBuffer> out, ffi::Span<const int64_t> geometry) {
  Geometry geo;
  if (!read_geometry(geometry, &geo)) return ffi::Error::InvalidArgument("jax_deconv native: bad geometry");
  const ffi::DataType type = a.element_type();
  if (b.element_type() != type || out->element_type() != type || (bias && bias->element_type() != type))
    return ffi::Error::InvalidArgument("jax_deconv native: operands of different dtypes");
  if (bias && int64_t(bias->element_count()) != geo.cout())
    return ffi::Error::InvalidArgument("jax_deconv native: the bias must hold C_out values");
  const int64_t taps = geo.k[0] * geo.k[1] * geo.k[2];
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const KernelSet& set = *kernels;
  MapFn fn = nullptr;
  const void* weight = b.untyped_data();
  int64_t block = geo.cgi * geo.cgo;
  std::vector<float> wide;
  std::vector<uint32_t> packed;
  std::vector<char> partial;  // the weight gradient's per-task sums, when tasks share items
  const int64_t accumulator = type == ffi::DataType::F64 ? 8 : 4;
  const Split split = split_work(kMap, geo, threads, accumulator);
  std::vector<Work> tasks = split.tasks;
  const int64_t unit_blocks = split.unit_blocks, weight_count = geo.g * taps * geo.cgi * geo.cgo;
  if (bias) tasks[0].bias = bias->untyped_data();
  std::vector<double> tapwise;  // a depthwise float64 weight per tap
  const bool depthwise = geo.g > 1 && geo.cgi == 1 && geo.cgo == 1;
  try {
    if (depthwise && kMap == Map::kDw) {
      fn = type == ffi::DataType::F32   ? set.depthwise_dw32
           : type == ffi::DataType::F64 ? set.depthwise_dw64
           : type == ffi::DataType::BF16 ? set.depthwise_dw16
                                         : nullptr;
      if (!fn) return ffi::Error::InvalidArgument("jax_deconv native: only float32, float64 and bfloat16");
    } else if (depthwise) {
      const bool forward = kMap == Map::kForward;
      if (type == ffi::DataType::F32) {
        fn = forward ? set.depthwise_forward32 : set.depthwise_dx32;
        weight = prepare_depthwise(static_cast<const float*>(weight), geo.g, taps, &wide);
      } else if (type == ffi::DataType::F64) {
        fn = forward ? set.depthwise_forward64 : set.depthwise_dx64;
        weight = prepare_depthwise(static_cast<const double*>(weight), geo.g, taps, &tapwise);
      } else if (type == ffi::DataType::BF16) {
        fn = forward ? set.depthwise_forward16 : set.depthwise_dx16;
        weight = prepare_depthwise(static_cast<const bf16*>(weight), geo.g, taps, &wide);
      } else {
        return ffi::Error::InvalidArgument("jax_deconv native: only float32, float64 and bfloat16");
      }
      block = geo.g;
    } else if (type == ffi::DataType::F32) {
      fn = kMap == Map::kForward ? set.forward32 : kMap == Map::kDx ? set.dx32 : set.dw32;
    } else if (type == ffi::DataType::F64) {
      fn = kMap == Map::kForward ? set.forward64 : kMap == Map::kDx ? set.dx64 : set.dw64;
    } else if (type == ffi::DataType::BF16) {
      fn = kMap == Map::kForward ? set.forward16 : kMap == Map::kDx ? set.dx16 : set.dw16;
      // vdpbf16ps sums pairs of positions in the weight gradient, into vectors of C_out: with
      // at most 8 channels a side, or at most 4 on one (a network's first or last layer: 1 of
      // 16 lanes used), the float32 kernels on x widened once per row and dy as read are the
      // faster (measured, Zen 4, one core, time against the pairs: 0.25x on a first layer's
      // 1 -> 32 channels at 64^3, 0.4-0.6x on a 16 -> 1 head; 16 -> 16 channels, since the
      // pairs' tiles take a block of rows per tap: 1.4-1.6x, so pairs there).
      if (kMap == Map::kDw && (std::max(geo.cgi, geo.cgo) <= 8 || std::min(geo.cgi, geo.cgo) <= 4))
        fn = set.dw16_wide;
      if (kMap != Map::kDw) {
        const int64_t K = kMap == Map::kForward ? geo.cgi : geo.cgo, N = kMap == Map::kForward ? geo.cgo : geo.cgi;
        block = prepare_weight(static_cast<const bf16*>(weight), geo.g * taps, K, N, set.pairs, &wide, &packed);
        weight = set.pairs ? static_cast<const void*>(packed.data()) : static_cast<const void*>(wide.data());
      }
    } else {
      return ffi::Error::InvalidArgument("jax_deconv native: only float32, float64 and bfloat16");
    }
    if (unit_blocks > 1) {  // tasks (item block i, unit block u) in order: each unit block its own sums
      partial.resize(size_t(unit_blocks * weight_count * accumulator));
      for (size_t t = 0; t < tasks.size(); ++t)
        tasks[t].partial = partial.data() + (int64_t(t) % unit_blocks) * weight_count * accumulator;
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jax_deconv native: out of memory");
  }
  const void* pa = a.untyped_data();
  void* pc = out->untyped_data();
  std::atomic<bool> failed{false};  // a buffer that could not be allocated (never thrown across threads)
  const auto guarded = [&](const auto& body) {
    try {
      body();
    } catch (const std::bad_alloc&) {
      failed = true;
    }
  };
  if (kMap == Map::kDw) {
    parallel_for(pool, int64_t(tasks.size()), [&](int64_t i, int64_t j) {
      for (int64_t t = i; t < j; ++t) guarded([&] { fn(geo, pa, weight, block, pc, tasks[t]); });
    }, 1);
  } else {
    const Work& all = tasks[0];
    parallel_for(pool, all.end, [&](int64_t i, int64_t j) {
      Work work = all;
      work.begin = i;
      work.end = j;
      guarded([&] { fn(geo, pa, weight, block, pc, work); });
    }, 4);
  }
  if (failed) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jax_deconv native: out of memory");
  if (unit_blocks > 1) {
    const int64_t count = weight_count;
    parallel_for(pool, count, [&](int64_t i, int64_t j) {
      const auto* doubles = reinterpret_cast<const double*>(partial.data());
      const auto* floats = reinterpret_cast<const float*>(partial.data());  // (bfloat16's sums too)
      if (type == ffi::DataType::F64)
        add_partials(doubles, unit_blocks, count, static_cast<double*>(pc), i, j);
      else if (type == ffi::DataType::F32)
        add_partials(floats, unit_blocks, count, static_cast<float*>(pc), i, j);
      else
        add_partials(floats, unit_blocks, count, static_cast<bf16*>(pc), i, j);
    }, 1);
  }
  return ffi::Error::Success();
}

ffi::Error forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer wf, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> geometry) {
  return run<Map::kForward>(pool, x, wf, nullptr, y, geometry);
}

ffi::Error forward_bias(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer wf, ffi::AnyBuffer bias,
                        ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> geometry) {
  return run<Map::kForward>(pool, x, wf, &bias, y, geometry);
}

ffi::Error dx(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer wt, ffi::Result<ffi::AnyBuffer> out,
              ffi::Span<const int64_t> geometry) {
  return run<Map::kDx>(pool, dy, wt, nullptr, out, geometry);
}

ffi::Error dw(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> out,
              ffi::Span<const int64_t> geometry) {
  return run<Map::kDw>(pool, x, dy, nullptr, out, geometry);
}

// ---------------------------------------------------------------------------- the bias gradient

// db[c] = sum over a and p of dy[a, c, p], for dy seen as (outer, C, inner): channels-last
// arrays have inner = 1, channels-first ones outer = N. (XLA:CPU's own reduction of a 16-bit
// dy, with its final rounding fused in, ran one scalar sum per channel: 2 ms for a 32^3 x 16
// bfloat16 gradient, 0.1 ms unfused.) The array is cut into pieces, each summed into W lanes
// (W a multiple of the channels of a piece, at least 32 values) that take at most 32 terms
// each (float32 sums for 16-bit values); the lanes are then added in double precision, per
// piece and over the pieces in order, and rounded once. The cut does not depend on the
// threads, so neither does the result.
constexpr int64_t kBiasLanes = 32, kBiasTerms = 32;

struct BiasPiece {
  int64_t offset, length, channel;  // elements [offset, offset + length), from channel `channel`
};

// A double rounded once to TY: a bfloat16 through a float32 rounded to odd (inexact results
// keep their last bit set), so that the second rounding cannot land on a false tie.
template <typename TY>
JD_INLINE TY round_from_double(double v) {
  if constexpr (std::is_same_v<TY, double>) {
    return v;
  } else {
    float f = float(v);
    if constexpr (std::is_same_v<TY, bf16>) {
      if (double(f) != v && std::isfinite(f)) {
        if (std::fabs(double(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        u |= 1u;
        std::memcpy(&f, &u, 4);
      }
      return to_bf16(f);
    } else {
      return f;
    }
  }
}

// One piece: its W lanes of sums (T), then those of each channel added in double precision
// into folded[0, period). Width: W when known at compile time, so that the lanes stay in
// registers; else they are `scratch`'s `width` values.
template <int64_t Width, typename TX, typename T>
JD_INLINE void bias_lanes(const TX* p, int64_t length, int64_t width, int64_t period, T* scratch, double* folded) {
  T sums[Width > 0 ? Width : 1] = {};
  T* lanes = sums;
  if constexpr (Width == 0) {
    std::fill(scratch, scratch + width, T(0));
    lanes = scratch;
  } else {
    width = Width;
  }
  int64_t i = 0;
  for (; i + width <= length; i += width)
    for (int64_t j = 0; j < width; ++j) lanes[j] += widen(p[i + j]);
  for (int64_t j = 0; i + j < length; ++j) lanes[j] += widen(p[i + j]);
  for (int64_t c = 0; c < period; ++c) {
    double sum = 0;
    for (int64_t j = c; j < width; j += period) sum += double(lanes[j]);
    folded[c] = sum;
  }
}

template <typename TX, typename TY, typename T>
ffi::Error bias_sums(ffi::ThreadPool& pool, const TX* dy, TY* db, int64_t outer, int64_t C, int64_t inner) {
  // channels-last: one run of outer * C values, channel = position mod C; else a run of `inner`
  // values per (a, c), all of channel c
  const int64_t period = inner == 1 ? C : 1;
  const int64_t width = period * std::max<int64_t>(1, kBiasLanes / period), span = width * kBiasTerms;
  std::vector<BiasPiece> pieces;
  std::vector<double> folded, total;
  try {
    if (inner == 1) {
      for (int64_t at = 0; at < outer * C; at += span) pieces.push_back({at, std::min(span, outer * C - at), 0});
    } else {
      for (int64_t a = 0; a < outer; ++a)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t at = 0; at < inner; at += span)
            pieces.push_back({(a * C + c) * inner + at, std::min(span, inner - at), c});
    }
    folded.resize(pieces.size() * period);
    total.assign(C, 0.0);
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jax_deconv native: out of memory");
  }
  std::atomic<bool> failed{false};
  parallel_for(pool, int64_t(pieces.size()), [&](int64_t i, int64_t j) {
    try {
      std::vector<T> scratch(width == kBiasLanes ? 0 : width);
      for (int64_t k = i; k < j; ++k) {
        const TX* p = dy + pieces[k].offset;
        double* to = folded.data() + k * period;
        if (width == kBiasLanes) bias_lanes<kBiasLanes, TX, T>(p, pieces[k].length, width, period, nullptr, to);
        else bias_lanes<0, TX, T>(p, pieces[k].length, width, period, scratch.data(), to);
      }
    } catch (const std::bad_alloc&) {
      failed = true;
    }
  });
  if (failed) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jax_deconv native: out of memory");
  for (size_t k = 0; k < pieces.size(); ++k)
    for (int64_t c = 0; c < period; ++c) total[pieces[k].channel + c] += folded[k * period + c];
  for (int64_t c = 0; c < C; ++c) db[c] = round_from_double<TY>(total[c]);
  return ffi::Error::Success();
}

ffi::Error bias_sum(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> db,
                    ffi::Span<const int64_t> shape) {
  if (shape.size() != 3 || shape[0] < 0 || shape[1] < 0 || shape[2] < 1 ||
      int64_t(dy.element_count()) != shape[0] * shape[1] * shape[2] || int64_t(db->element_count()) != shape[1])
    return ffi::Error::InvalidArgument("jax_deconv native: bias_sum's shape (outer, C, inner) does not fit");
  const ffi::DataType in = dy.element_type(), out = db->element_type();
  const void* x = dy.untyped_data();
  void* y = db->untyped_data();
  const int64_t a = shape[0], c = shape[1], p = shape[2];
  if (in == ffi::DataType::F32 && out == ffi::DataType::F32)
    return bias_sums<float, float, float>(pool, static_cast<const float*>(x), static_cast<float*>(y), a, c, p);
  if (in == ffi::DataType::F64 && out == ffi::DataType::F64)
    return bias_sums<double, double, double>(pool, static_cast<const double*>(x), static_cast<double*>(y), a, c, p);
  if (in == ffi::DataType::BF16 && out == ffi::DataType::BF16)
    return bias_sums<bf16, bf16, float>(pool, static_cast<const bf16*>(x), static_cast<bf16*>(y), a, c, p);
  if (in == ffi::DataType::BF16 && out == ffi::DataType::F32)
    return bias_sums<bf16, float, float>(pool, static_cast<const bf16*>(x), static_cast<float*>(y), a, c, p);
  if (in == ffi::DataType::F32 && out == ffi::DataType::BF16)
    return bias_sums<float, bf16, float>(pool, static_cast<const float*>(x), static_cast<bf16*>(y), a, c, p);
  return ffi::Error::InvalidArgument("jax_deconv native: bias_sum takes float32, float64 or bfloat16 (to itself, "
                                     "or between bfloat16 and float32)");
}

}  // namespace

#define JD_BIND(...)                          \
  ffi::Ffi::Bind()                            \
      .Ctx<ffi::ThreadPool>()                 \
      .Arg<ffi::AnyBuffer>()                  \
      .Arg<ffi::AnyBuffer>() __VA_ARGS__      \
      .Ret<ffi::AnyBuffer>()                  \
      .Attr<ffi::Span<const int64_t>>("geometry")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdForward, forward, JD_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JdForwardBias, forward_bias, JD_BIND(.Arg<ffi::AnyBuffer>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JdDx, dx, JD_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JdDw, dw, JD_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JdBiasSum, bias_sum,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("shape"));

// ---------------------------------------------------------------------------- Python module

namespace {

PyObject* handlers(PyObject*, PyObject*) {
  PyObject* dict = PyDict_New();
  if (!dict) return nullptr;
  const struct {
    const char* name;
    void* fn;
  } entries[] = {{"forward", reinterpret_cast<void*>(JdForward)},
                 {"forward_bias", reinterpret_cast<void*>(JdForwardBias)},
                 {"dx", reinterpret_cast<void*>(JdDx)},
                 {"dw", reinterpret_cast<void*>(JdDw)},
                 {"bias_sum", reinterpret_cast<void*>(JdBiasSum)}};
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

// The XLA FFI API version of the headers these kernels were compiled with: (major, minor).
PyObject* ffi_api_version(PyObject*, PyObject*) { return Py_BuildValue("ii", XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR); }

// split(map, geometry, threads) -> (items, segment, unit_blocks): how a call would be cut (tests).
// items: forward and dx, rows x segments (taken in chunks); dw, its tasks.
PyObject* split_of(PyObject*, PyObject* args) {
  const char* name;
  PyObject* sizes;
  long long threads;
  if (!PyArg_ParseTuple(args, "sOL", &name, &sizes, &threads)) return nullptr;
  const std::string map = name;
  std::vector<int64_t> values;
  const Py_ssize_t count = PySequence_Size(sizes);  // (the limited C API: one wheel for every CPython)
  if (count < 0) return nullptr;
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* item = PySequence_GetItem(sizes, i);
    if (!item) return nullptr;
    values.push_back(PyLong_AsLongLong(item));
    Py_DECREF(item);
  }
  if (PyErr_Occurred()) return nullptr;
  Geometry geo;
  if (!read_geometry(ffi::Span<const int64_t>(values.data(), values.size()), &geo) || threads < 1 ||
      (map != "forward" && map != "dx" && map != "dw")) {
    PyErr_SetString(PyExc_ValueError, "split: a map ('forward', 'dx', 'dw'), 22 sizes and threads >= 1");
    return nullptr;
  }
  const Map m = map == "forward" ? Map::kForward : map == "dx" ? Map::kDx : Map::kDw;
  const Split split = split_work(m, geo, threads, 4);
  const Work& w = split.tasks.front();
  const int64_t items = m == Map::kDw ? int64_t(split.tasks.size()) : w.end;
  return Py_BuildValue("LLL", (long long)items, (long long)w.segment, (long long)split.unit_blocks);
}

PyMethodDef methods[] = {
    {"handlers", handlers, METH_NOARGS, "The FFI handlers: {'forward', 'forward_bias', 'dx', 'dw', 'bias_sum'} -> PyCapsule."},
    {"isa", isa_name, METH_NOARGS, "The instruction set the kernels run on this processor."},
    {"ffi_api_version", ffi_api_version, METH_NOARGS, "The XLA FFI API version they were built for."},
    {"split", split_of, METH_VARARGS, "How a call would be cut into tasks (tests)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "jax_deconv's native CPU kernels (XLA FFI).", -1,
                      methods};

}  // namespace

PyMODINIT_FUNC PyInit__kernels() { return PyModule_Create(&module); }
