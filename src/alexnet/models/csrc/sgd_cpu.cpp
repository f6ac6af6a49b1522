// The paper's SGD update (PAPER.md section 5) in one pass over memory, for float32 CPU tensors:
//
//   v <- momentum * v - weight_decay * lr * w - lr * grad
//   w <- w + v
//
// Written with torch's foreach ops it is four passes (v read and written three times, w read
// twice); here each element of w, grad and v is read once and w, v written once. For the paper
// model's 61 M parameters that is 1.2 GB of memory traffic a step instead of 2.7 GB.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <vector>

namespace {

constexpr int64_t kGrain = 1 << 16;  // elements per work item: 256 KB of each stream

void update(float* __restrict w, const float* __restrict g, float* __restrict v, int64_t n,
            float lr, float momentum, float decay) {
  for (int64_t i = 0; i < n; ++i) {
    const float vi = momentum * v[i] - decay * w[i] - lr * g[i];
    v[i] = vi;
    w[i] += vi;
  }
}

void check(const at::Tensor& t, const at::Tensor& w, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "paper_sgd_: ", what,
              " must be float32 on the CPU");
  TORCH_CHECK(t.sizes() == w.sizes(), "paper_sgd_: ", what, " shape ", t.sizes(), " != parameter shape ", w.sizes());
  TORCH_CHECK(t.is_non_overlapping_and_dense() && t.strides() == w.strides(), "paper_sgd_: ", what,
              " must be dense with the parameter's strides");
}

}  // namespace

void paper_sgd(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> velocities,
               double lr, double momentum, double weight_decay) {
  TORCH_CHECK(params.size() == grads.size() && params.size() == velocities.size(),
              "paper_sgd_: params, grads and velocities differ in length");
  // Work items: (tensor, chunk) pairs, so the small tensors (biases) and the big ones (fc6) are
  // spread over the threads together.
  std::vector<std::pair<size_t, int64_t>> items;
  for (size_t t = 0; t < params.size(); ++t) {
    check(params[t], params[t], "parameter");
    check(grads[t], params[t], "gradient");
    check(velocities[t], params[t], "velocity");
    for (int64_t start = 0; start < params[t].numel(); start += kGrain) items.emplace_back(t, start);
  }
  const float flr = float(lr), fm = float(momentum), fd = float(weight_decay * lr);
  at::parallel_for(0, int64_t(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto [t, start] = items[i];
      const int64_t n = std::min(kGrain, params[t].numel() - start);
      update(params[t].data_ptr<float>() + start, grads[t].data_ptr<float>() + start,
             velocities[t].data_ptr<float>() + start, n, flr, fm, fd);
    }
  });
}
