// Python bindings of the package's CPU kernels, built as one extension (alexnet/kernels.py).
#include <torch/extension.h>
#include <vector>

at::Tensor lrn_forward(const at::Tensor& input, int64_t size, double scale, double beta, double k);
at::Tensor lrn_backward(const at::Tensor& grad, const at::Tensor& input, int64_t size, double scale,
                        double beta, double k);
void paper_sgd(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> velocities,
               double lr, double momentum, double weight_decay);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lrn_forward", &lrn_forward, "fused LRN forward (float32/bfloat16/float16, CPU)");
  m.def("lrn_backward", &lrn_backward, "fused LRN backward (float32/bfloat16/float16, CPU)");
  m.def("paper_sgd_", &paper_sgd, "the paper's SGD update in place, one pass (float32, CPU)");
}
