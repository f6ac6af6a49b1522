// Fused local response normalization for float32 CPU tensors (PAPER.md section 3.3).
//
//   denom_i = k + scale * sum_{j = i - before}^{i + after} a_j^2,   b_i = a_i * denom_i^-beta
//
// One pass over memory for the forward and one for the backward, instead of the ~15
// elementwise passes a composition of torch ops needs. Two layouts: contiguous NCHW
// (channels strided by H*W: blocks of pixels, vectorised over pixels) and channels_last
// (channels contiguous per pixel). The backward recomputes denom from the input, so
// only the input is saved.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kBlock = 512;  // pixels per work item in NCHW: C*512 floats stay in L2

// out[i] = d[i]^-beta, with the branch on beta outside the loop so each loop vectorises.
inline void neg_pow_n(const float* __restrict d, float* __restrict out, int64_t n, float beta) {
  if (beta == 0.75f) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float r = 1.0f / std::sqrt(d[i]);
      out[i] = r * std::sqrt(r);
    }
  } else if (beta == 0.5f) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = 1.0f / std::sqrt(d[i]);
  } else if (beta == 1.0f) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = 1.0f / d[i];
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = std::pow(d[i], -beta);
  }
}

// window of input channels feeding output channel c: [c - before, c + after] clipped to [0, C)
struct Window {
  int64_t before, after, C;
  inline int64_t lo(int64_t c) const { return c - before < 0 ? 0 : c - before; }
  inline int64_t hi(int64_t c) const { return c + after >= C ? C - 1 : c + after; }
};

void check(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "lrn_cpu: expected a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lrn_cpu: expected float32");
  TORCH_CHECK(x.dim() >= 3, "lrn_cpu: expected (N, C, ...) input");
}

// ---------------------------------------------------------------- NCHW, contiguous
void forward_nchw(const float* x, float* y, int64_t N, int64_t C, int64_t S, Window w,
                  float scale, float beta, float k) {
  const int64_t nblocks = (S + kBlock - 1) / kBlock;
  at::parallel_for(0, N * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sq(C * kBlock);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / nblocks, s0 = (item % nblocks) * kBlock;
      const int64_t len = std::min(kBlock, S - s0);
      const float* xn = x + n * C * S + s0;
      float* yn = y + n * C * S + s0;
      for (int64_t c = 0; c < C; ++c) {
        const float* xc = xn + c * S;
        float* q = sq.data() + c * kBlock;
        for (int64_t j = 0; j < len; ++j) q[j] = xc[j] * xc[j];
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t lo = w.lo(c), hi = w.hi(c);
        const float* xc = xn + c * S;
        float* yc = yn + c * S;
        float acc[kBlock];
        for (int64_t j = 0; j < len; ++j) acc[j] = 0.f;
        for (int64_t cc = lo; cc <= hi; ++cc) {
          const float* q = sq.data() + cc * kBlock;
          for (int64_t j = 0; j < len; ++j) acc[j] += q[j];
        }
        float iv[kBlock];
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] = k + scale * acc[j];
        neg_pow_n(acc, iv, len, beta);
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) yc[j] = xc[j] * iv[j];
      }
    }
  });
}

void backward_nchw(const float* x, const float* g, float* gx, int64_t N, int64_t C, int64_t S,
                   Window w, float scale, float beta, float k) {
  const int64_t nblocks = (S + kBlock - 1) / kBlock;
  const Window wt{w.after, w.before, C};  // transposed window
  const float coef = 2.f * scale * beta;
  at::parallel_for(0, N * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sq(C * kBlock), inv(C * kBlock), t(C * kBlock);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / nblocks, s0 = (item % nblocks) * kBlock;
      const int64_t len = std::min(kBlock, S - s0);
      const int64_t off = n * C * S + s0;
      for (int64_t c = 0; c < C; ++c) {
        const float* xc = x + off + c * S;
        float* q = sq.data() + c * kBlock;
        for (int64_t j = 0; j < len; ++j) q[j] = xc[j] * xc[j];
      }
      // inv = denom^-beta; t = g * a * denom^(-beta-1)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t lo = w.lo(c), hi = w.hi(c);
        float acc[kBlock];
        for (int64_t j = 0; j < len; ++j) acc[j] = 0.f;
        for (int64_t cc = lo; cc <= hi; ++cc) {
          const float* q = sq.data() + cc * kBlock;
          for (int64_t j = 0; j < len; ++j) acc[j] += q[j];
        }
        const float* xc = x + off + c * S;
        const float* gc = g + off + c * S;
        float* ic = inv.data() + c * kBlock;
        float* tc = t.data() + c * kBlock;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] = k + scale * acc[j];
        neg_pow_n(acc, ic, len, beta);
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) tc[j] = gc[j] * xc[j] * ic[j] / acc[j];
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t lo = wt.lo(c), hi = wt.hi(c);
        float acc[kBlock];
        for (int64_t j = 0; j < len; ++j) acc[j] = 0.f;
        for (int64_t cc = lo; cc <= hi; ++cc) {
          const float* tc = t.data() + cc * kBlock;
          for (int64_t j = 0; j < len; ++j) acc[j] += tc[j];
        }
        const float* xc = x + off + c * S;
        const float* gc = g + off + c * S;
        const float* ic = inv.data() + c * kBlock;
        float* oc = gx + off + c * S;
        for (int64_t j = 0; j < len; ++j) oc[j] = gc[j] * ic[j] - coef * xc[j] * acc[j];
      }
    }
  });
}

// ---------------------------------------------------------------- channels last
// Channels are contiguous per pixel. The window sum runs over a zero-padded copy of the pixel's
// squares, so every term is a shifted contiguous load and each loop over channels vectorises.
void forward_nhwc(const float* x, float* y, int64_t P, int64_t C, Window w, float scale,
                  float beta, float k) {
  const int64_t size = w.before + w.after + 1;
  at::parallel_for(0, P, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> pad(C + size, 0.f), acc(C), inv(C);
    float* __restrict sq = pad.data() + w.before;  // sq[c - before .. c + after] is always in bounds
    float* __restrict a = acc.data();
    float* __restrict iv = inv.data();
    for (int64_t p = begin; p < end; ++p) {
      const float* __restrict xp = x + p * C;
      float* __restrict yp = y + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) sq[c] = xp[c] * xp[c];
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) a[c] = k;
      for (int64_t o = -w.before; o <= w.after; ++o) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) a[c] += scale * sq[c + o];
      }
      neg_pow_n(a, iv, C, beta);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = xp[c] * iv[c];
    }
  });
}

void backward_nhwc(const float* x, const float* g, float* gx, int64_t P, int64_t C, Window w,
                   float scale, float beta, float k) {
  const int64_t size = w.before + w.after + 1;
  const float coef = 2.f * scale * beta;
  at::parallel_for(0, P, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> sqpad(C + size, 0.f), tpad(C + size, 0.f), inv(C), acc(C);
    float* __restrict sq = sqpad.data() + w.before;
    float* __restrict t = tpad.data() + w.after;  // the transposed window: `after` back, `before` ahead
    float* __restrict a = acc.data();
    float* __restrict iv = inv.data();
    for (int64_t p = begin; p < end; ++p) {
      const float* __restrict xp = x + p * C;
      const float* __restrict gp = g + p * C;
      float* __restrict op = gx + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) sq[c] = xp[c] * xp[c];
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) a[c] = k;
      for (int64_t o = -w.before; o <= w.after; ++o) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) a[c] += scale * sq[c + o];
      }
      neg_pow_n(a, iv, C, beta);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) t[c] = gp[c] * xp[c] * iv[c] / a[c];
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) a[c] = 0.f;
      for (int64_t o = -w.after; o <= w.before; ++o) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) a[c] += t[c + o];
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) op[c] = gp[c] * iv[c] - coef * xp[c] * a[c];
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
    forward_nhwc(input.data_ptr<float>(), y.data_ptr<float>(), P, C, w, scale, beta, k);
    return y;
  }
  auto x = input.contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t N = x.size(0), C = x.size(1), S = N * C == 0 ? 0 : x.numel() / (N * C);
  forward_nchw(x.data_ptr<float>(), y.data_ptr<float>(), N, C, S, w, scale, beta, k);
  return y;
}

at::Tensor lrn_backward(const at::Tensor& grad, const at::Tensor& input, int64_t size, double scale,
                        double beta, double k) {
  check(input);
  const Window w{size / 2, (size - 1) / 2, input.size(1)};
  if (is_channels_last(input)) {
    auto g = grad.contiguous(at::MemoryFormat::ChannelsLast);
    auto gx = at::empty_like(input, at::MemoryFormat::ChannelsLast);
    const int64_t C = input.size(1), P = input.numel() / std::max<int64_t>(C, 1);
    backward_nhwc(input.data_ptr<float>(), g.data_ptr<float>(), gx.data_ptr<float>(), P, C, w,
                  scale, beta, k);
    return gx;
  }
  auto x = input.contiguous();
  auto g = grad.contiguous();
  auto gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t N = x.size(0), C = x.size(1), S = N * C == 0 ? 0 : x.numel() / (N * C);
  backward_nchw(x.data_ptr<float>(), g.data_ptr<float>(), gx.data_ptr<float>(), N, C, S, w, scale,
                beta, k);
  return gx;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lrn_forward, "fused LRN forward (float32, CPU)");
  m.def("backward", &lrn_backward, "fused LRN backward (float32, CPU)");
}
