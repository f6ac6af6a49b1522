// Fused local response normalization for CPU tensors (PAPER.md section 3.3): float32, and
// bfloat16/float16 read and written in their own type with the arithmetic in float32.
//
//   denom_i = k + scale * sum_{j = i - before}^{i + after} a_j^2,   b_i = a_i * denom_i^-beta
//
// One pass over memory for the forward and one for the backward, instead of the ~15
// elementwise passes a composition of torch ops needs. Two layouts: contiguous NCHW
// (channels strided by H*W: blocks of pixels, vectorised over pixels) and channels_last
// (channels contiguous per pixel). The backward recomputes denom from the input, so
// only the input is saved. Reduced-precision tensors are converted element by element as they
// are read and written: no float32 copy of the tensor is ever made (under bf16 autocast, casts
// around a float32-only kernel cost as much as the kernel itself: docs/benchmarks.md).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 512;  // pixels per work item in NCHW: C*512 floats stay in L2

// Elements of T <-> float32. bfloat16 is the top half of a float32, so its conversions are shifts
// and an add (round to nearest even, NaN kept NaN, as c10::BFloat16) that vectorise inside the
// loops that use them; the c10 type's own scalar conversion does not, which makes a bf16 kernel
// slower than the float32 one.
template <typename T>
struct Cvt {
  static inline float load(const T* p, int64_t i) { return float(p[i]); }
  static inline void store(T* p, int64_t i, float v) { p[i] = T(v); }
};
template <>
struct Cvt<c10::BFloat16> {
  static inline float load(const c10::BFloat16* p, int64_t i) {
    const uint32_t u = uint32_t(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static inline void store(c10::BFloat16* p, int64_t i, float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    // (-ffast-math drops v != v, so NaN is found from the bits)
    reinterpret_cast<uint16_t*>(p)[i] = (u & 0x7fffffffu) > 0x7f800000u ? uint16_t(0x7fc0) : uint16_t(rounded);
  }
};

// d^-beta for one element, the common betas by sqrt (several times faster than pow); the choice is
// a template argument so each fused loop is compiled, and vectorised, for one beta.
enum class Beta { k075, k05, k1, any };
template <Beta B>
inline float neg_pow(float d, float beta) {
  if constexpr (B == Beta::k075) {
    const float r = 1.0f / std::sqrt(d);
    return r * std::sqrt(r);
  } else if constexpr (B == Beta::k05) {
    return 1.0f / std::sqrt(d);
  } else if constexpr (B == Beta::k1) {
    return 1.0f / d;
  } else {
    return std::pow(d, -beta);
  }
}
template <typename F>
inline void with_beta(float beta, F&& f) {
  if (beta == 0.75f) f(std::integral_constant<Beta, Beta::k075>{});
  else if (beta == 0.5f) f(std::integral_constant<Beta, Beta::k05>{});
  else if (beta == 1.0f) f(std::integral_constant<Beta, Beta::k1>{});
  else f(std::integral_constant<Beta, Beta::any>{});
}

// window of input channels feeding output channel c: [c - before, c + after] clipped to [0, C)
struct Window {
  int64_t before, after, C;
  inline int64_t lo(int64_t c) const { return c - before < 0 ? 0 : c - before; }
  inline int64_t hi(int64_t c) const { return c + after >= C ? C - 1 : c + after; }
};

void check(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "lrn_cpu: expected a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 ||
                  x.scalar_type() == at::kHalf,
              "lrn_cpu: expected float32, bfloat16 or float16");
  TORCH_CHECK(x.dim() >= 3, "lrn_cpu: expected (N, C, ...) input");
}

// ---------------------------------------------------------------- NCHW, contiguous
// Loops that read or write T do only exact work (conversions, products); d^-beta runs in loops over
// float rows alone. Under -ffast-math 1/sqrt is an estimate refined by Newton's step, whose last
// bit depends on the vector width; a loop that also converts T is compiled to a different width for
// bf16 than for float32, and the bf16 result would no longer be the float32 one rounded once.
template <typename T, Beta B>
void forward_nchw(const T* x, T* y, int64_t N, int64_t C, int64_t S, Window w,
                  float scale, float beta, float k) {
  const int64_t nblocks = (S + kBlock - 1) / kBlock;
  at::parallel_for(0, N * nblocks, 1, [&](int64_t begin, int64_t end) {
    // The constants copied into each thread's locals: read through the lambda's references they may
    // alias the float rows the loops store to, so the compiler reloads them after every store from
    // the calling thread's stack (1.7-1.9x slower channels_last forward, 1.1-1.5x slower backward).
    const float kk = k, sc = scale, bt = beta;
    std::vector<float> sq(C * kBlock);
    float acc[kBlock];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / nblocks, s0 = (item % nblocks) * kBlock;
      const int64_t len = std::min(kBlock, S - s0);
      const T* xn = x + n * C * S + s0;
      T* yn = y + n * C * S + s0;
      for (int64_t c = 0; c < C; ++c) {
        const T* xc = xn + c * S;
        float* q = sq.data() + c * kBlock;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const float v = Cvt<T>::load(xc, j);
          q[j] = v * v;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t lo = w.lo(c), hi = w.hi(c);
        for (int64_t j = 0; j < len; ++j) acc[j] = 0.f;
        for (int64_t cc = lo; cc <= hi; ++cc) {
          const float* q = sq.data() + cc * kBlock;
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) acc[j] += q[j];
        }
        const T* xc = xn + c * S;
        T* yc = yn + c * S;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] = neg_pow<B>(kk + sc * acc[j], bt);
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) Cvt<T>::store(yc, j, Cvt<T>::load(xc, j) * acc[j]);
      }
    }
  });
}

template <typename T, Beta B>
void backward_nchw(const T* x, const T* g, T* gx, int64_t N, int64_t C, int64_t S,
                   Window w, float scale, float beta, float k) {
  const int64_t nblocks = (S + kBlock - 1) / kBlock;
  const Window wt{w.after, w.before, C};  // transposed window
  const float coef = 2.f * scale * beta;
  at::parallel_for(0, N * nblocks, 1, [&](int64_t begin, int64_t end) {
    // (constants as locals: see forward_nchw)
    const float kk = k, sc = scale, bt = beta, cf = coef;
    std::vector<float> sq(C * kBlock), gi(C * kBlock), t(C * kBlock);
    float acc[kBlock];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / nblocks, s0 = (item % nblocks) * kBlock;
      const int64_t len = std::min(kBlock, S - s0);
      const int64_t off = n * C * S + s0;
      for (int64_t c = 0; c < C; ++c) {
        const T* xc = x + off + c * S;
        float* q = sq.data() + c * kBlock;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const float v = Cvt<T>::load(xc, j);
          q[j] = v * v;
        }
      }
      // gi = denom^-beta; t = g * a * denom^(-beta-1)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t lo = w.lo(c), hi = w.hi(c);
        for (int64_t j = 0; j < len; ++j) acc[j] = 0.f;
        for (int64_t cc = lo; cc <= hi; ++cc) {
          const float* q = sq.data() + cc * kBlock;
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) acc[j] += q[j];
        }
        const T* xc = x + off + c * S;
        const T* gc = g + off + c * S;
        float* gic = gi.data() + c * kBlock;
        float* tc = t.data() + c * kBlock;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const float d = kk + sc * acc[j], iv = neg_pow<B>(d, bt);
          gic[j] = iv;
          acc[j] = iv / d;
        }
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) tc[j] = Cvt<T>::load(gc, j) * Cvt<T>::load(xc, j) * acc[j];
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t lo = wt.lo(c), hi = wt.hi(c);
        for (int64_t j = 0; j < len; ++j) acc[j] = 0.f;
        for (int64_t cc = lo; cc <= hi; ++cc) {
          const float* tc = t.data() + cc * kBlock;
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) acc[j] += tc[j];
        }
        const T* xc = x + off + c * S;
        const T* gc = g + off + c * S;
        const float* gic = gi.data() + c * kBlock;
        T* oc = gx + off + c * S;
        // g is read again here rather than g * denom^-beta kept: one pass less over the C x block
        // scratch, which is out of L1 (15% of the float32 backward at conv1's size)
#pragma omp simd
        for (int64_t j = 0; j < len; ++j)
          Cvt<T>::store(oc, j, Cvt<T>::load(gc, j) * gic[j] - cf * Cvt<T>::load(xc, j) * acc[j]);
      }
    }
  });
}

// ---------------------------------------------------------------- channels last
// Channels are contiguous per pixel, so a block of pixels is one flat row of np * C values, and
// each step is one long loop over that row, which vectorises (a loop per pixel is dominated by
// loop overhead at AlexNet's 48-96 channels). Per block: one pass converts and squares, one sums
// the window, one computes and writes the result. The window sum's shifted loads run across
// pixel boundaries, so the few channels at each pixel's edges are then summed again over their
// clipped window (exact, no subtraction).
constexpr int64_t kRow = 4096;  // target floats per block: the block's buffers stay in L2

// dst[q*C + c] = sum of src[q*C + c + o] for o in [-before, after] with 0 <= c + o < C.
// src must be readable (zeros) from -before to np*C + after.
inline void window_sum_rows(const float* __restrict src, float* __restrict dst, int64_t np,
                            int64_t C, int64_t before, int64_t after) {
  const int64_t L = np * C;
  if (before == 2 && after == 2) {  // the paper's n = 5: one pass
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) dst[i] = (src[i - 2] + src[i - 1]) + src[i] + (src[i + 1] + src[i + 2]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) dst[i] = src[i];
    for (int64_t o = -before; o <= after; ++o) {
      if (o == 0) continue;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) dst[i] += src[i + o];
    }
  }
  if (before == 2 && after == 2 && C >= 4) {  // the edges of n = 5, unrolled: independent adds
    for (int64_t q = 0; q < np; ++q) {
      const float* sp = src + q * C;
      float* dp = dst + q * C;
      const float h = sp[0] + sp[1], t = sp[C - 2] + sp[C - 1];
      dp[0] = h + sp[2];
      dp[1] = h + (sp[2] + sp[3]);
      dp[C - 2] = (sp[C - 4] + sp[C - 3]) + t;
      dp[C - 1] = sp[C - 3] + t;
    }
    return;
  }
  const int64_t head = std::min(before, C), tail = std::max(C - after, head);
  for (int64_t q = 0; q < np; ++q) {
    const float* sp = src + q * C;
    float* dp = dst + q * C;
    auto clipped = [&](int64_t c) {
      const int64_t lo = std::max<int64_t>(0, c - before), hi = std::min<int64_t>(C - 1, c + after);
      float acc = 0.f;
      for (int64_t j = lo; j <= hi; ++j) acc += sp[j];
      dp[c] = acc;
    };
    for (int64_t c = 0; c < head; ++c) clipped(c);
    for (int64_t c = tail; c < C; ++c) clipped(c);
  }
}

// Per-thread scratch rows, each with `margin` zeros on both sides for the shifted loads. (Not
// aligned to 64 bytes: aligned rows give no faster forward and a 1.4x slower bf16 backward.)
struct Rows {
  int64_t margin;
  std::vector<float> mem;
  int64_t stride;
  Rows(int count, int64_t len, int64_t margin)
      : margin(margin), mem(count * (len + 2 * margin), 0.f), stride(len + 2 * margin) {}
  float* operator[](int i) { return mem.data() + i * stride + margin; }
};

template <typename T, Beta B>
void forward_nhwc(const T* x, T* y, int64_t pixels, int64_t C, Window w, float scale,
                  float beta, float k) {
  const int64_t block = std::max<int64_t>(1, kRow / std::max<int64_t>(C, 1));
  const int64_t margin = std::max(w.before, w.after);
  at::parallel_for(0, (pixels + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
    // (constants as locals: see forward_nchw)
    const float kk = k, sc = scale, bt = beta;
    Rows rows(2, block * C, margin);
    float *sq = rows[0], *d = rows[1];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * block, np = std::min(block, pixels - p0), L = np * C;
      const T* xb = x + p0 * C;
      T* yb = y + p0 * C;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) {
        const float v = Cvt<T>::load(xb, i);
        sq[i] = v * v;
      }
      for (int64_t i = L; i < L + margin; ++i) sq[i] = 0.f;  // a short last block leaves stale values
      window_sum_rows(sq, d, np, C, w.before, w.after);
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) d[i] = neg_pow<B>(kk + sc * d[i], bt);
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) Cvt<T>::store(yb, i, Cvt<T>::load(xb, i) * d[i]);
    }
  });
}

template <typename T, Beta B>
void backward_nhwc(const T* x, const T* g, T* gx, int64_t pixels, int64_t C, Window w,
                   float scale, float beta, float k) {
  const int64_t block = std::max<int64_t>(1, kRow / std::max<int64_t>(C, 1));
  const int64_t margin = std::max(w.before, w.after);
  const float coef = 2.f * scale * beta;
  at::parallel_for(0, (pixels + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
    // (constants as locals: see forward_nchw)
    const float kk = k, sc = scale, bt = beta, cf = coef;
    Rows rows(4, block * C, margin);
    float *sq = rows[0], *d = rows[1], *gi = rows[2], *t = rows[3];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * block, np = std::min(block, pixels - p0), L = np * C;
      const T* xb = x + p0 * C;
      const T* gb = g + p0 * C;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) {
        const float v = Cvt<T>::load(xb, i);
        sq[i] = v * v;
      }
      for (int64_t i = L; i < L + margin; ++i) sq[i] = t[i] = 0.f;
      window_sum_rows(sq, d, np, C, w.before, w.after);
      // gi = g * denom^-beta; t = g * a * denom^(-beta-1); then the transposed window
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) {
        const float dn = kk + sc * d[i], iv = neg_pow<B>(dn, bt);
        gi[i] = iv;
        d[i] = iv / dn;
      }
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) {
        const float v = Cvt<T>::load(gb, i);
        t[i] = v * Cvt<T>::load(xb, i) * d[i];
        gi[i] *= v;
      }
      window_sum_rows(t, sq, np, C, w.after, w.before);
      T* ob = gx + p0 * C;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) Cvt<T>::store(ob, i, gi[i] - cf * Cvt<T>::load(xb, i) * sq[i]);
    }
  });
}

bool is_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

}  // namespace

at::Tensor lrn_forward(const at::Tensor& input, int64_t size, double scale, double beta, double k) {
  check(input);
  const Window w{size / 2, (size - 1) / 2, input.size(1)};
  if (is_channels_last(input)) {
    auto y = at::empty_like(input, at::MemoryFormat::ChannelsLast);
    const int64_t C = input.size(1), P = input.numel() / std::max<int64_t>(C, 1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lrn_forward", [&] {
      with_beta(beta, [&](auto b) {
        forward_nhwc<scalar_t, decltype(b)::value>(input.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), P, C, w,
                                                   scale, beta, k);
      });
    });
    return y;
  }
  auto x = input.contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t N = x.size(0), C = x.size(1), S = N * C == 0 ? 0 : x.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lrn_forward", [&] {
    with_beta(beta, [&](auto b) {
      forward_nchw<scalar_t, decltype(b)::value>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, C, S, w,
                                                 scale, beta, k);
    });
  });
  return y;
}

at::Tensor lrn_backward(const at::Tensor& grad, const at::Tensor& input, int64_t size, double scale,
                        double beta, double k) {
  check(input);
  TORCH_CHECK(grad.sizes() == input.sizes(), "lrn_cpu: grad and input shapes differ");
  const Window w{size / 2, (size - 1) / 2, input.size(1)};
  const auto type = input.scalar_type();
  if (is_channels_last(input)) {
    auto g = grad.to(type).contiguous(at::MemoryFormat::ChannelsLast);
    auto gx = at::empty_like(input, at::MemoryFormat::ChannelsLast);
    const int64_t C = input.size(1), P = input.numel() / std::max<int64_t>(C, 1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, type, "lrn_backward", [&] {
      with_beta(beta, [&](auto b) {
        backward_nhwc<scalar_t, decltype(b)::value>(input.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                                    gx.data_ptr<scalar_t>(), P, C, w, scale, beta, k);
      });
    });
    return gx;
  }
  auto x = input.contiguous();
  auto g = grad.to(type).contiguous();
  auto gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t N = x.size(0), C = x.size(1), S = N * C == 0 ? 0 : x.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, type, "lrn_backward", [&] {
    with_beta(beta, [&](auto b) {
      backward_nchw<scalar_t, decltype(b)::value>(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                                  gx.data_ptr<scalar_t>(), N, C, S, w, scale, beta, k);
    });
  });
  return gx;
}
