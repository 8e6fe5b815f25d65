// The only fastenc source that knows torch: registers the ops in the `fastenc` library (TORCH_LIBRARY, CUDA
// implementations here; the fake implementations for torch.compile are fastenc/kernels/_fakes.py's, registered by
// fastenc/_cuda.py), checks devices,
// dtypes, shapes and layouts with errors that name the argument, allocates outputs and workspaces with torch's
// caching allocator, and calls the plain-CUDA launchers of launchers.h on the current stream.
//
// Trade-off: optional outputs are returned as empty tensors (torch custom-op schemas cannot return None or alias
// one output to another); fastenc/ops/<op>.py reads only the outputs it asked for, as with the Triton launchers.
#include <ATen/ATen.h>
#include <Python.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "launchers.h"

namespace {

using at::Tensor;
using fastenc::DType;
using OptTensor = std::optional<Tensor>;

DType dtype_of(const Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fastenc.", op, ": ", name, " must be float32, float16 or bfloat16, got ",
                       t.scalar_type());
  }
  return DType::kFloat32;
}

void check_cuda(const Tensor& t, const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), "fastenc.", op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastenc.", op, ": ", name, " is on ", t.device(),
                    " but the input is on ", ref.device());
}

// A CUDA tensor on ref's device, contiguous, of the given dtype (when given) and shape.
void check_tensor(const Tensor& t, const Tensor& ref, const char* op, const char* name, at::IntArrayRef shape,
                  std::optional<at::ScalarType> dtype = std::nullopt) {
  check_cuda(t, ref, op, name);
  TORCH_CHECK_VALUE(t.sizes() == shape, "fastenc.", op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "fastenc.", op, ": ", name, " must be contiguous");
  if (dtype) {
    TORCH_CHECK_TYPE(t.scalar_type() == *dtype, "fastenc.", op, ": ", name, " must have dtype ", *dtype, ", got ",
                     t.scalar_type());
  }
}

// The [n, d] input of a row-wise op.
void check_rows(const Tensor& x, const char* op, const char* name) {
  TORCH_CHECK_VALUE(x.is_cuda(), "fastenc.", op, ": ", name, " must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK_VALUE(x.dim() == 2, "fastenc.", op, ": ", name, " must be 2-D [rows, hidden], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) > 0, "fastenc.", op, ": ", name, " must have a non-empty last dim");
  TORCH_CHECK_VALUE(x.is_contiguous(), "fastenc.", op, ": ", name, " must be contiguous");
  dtype_of(x, op, name);
}

// LayerNorm weight and bias (absent: bias-free): [d], one dtype, the input's dtype or fp32 (mixed precision).
DType check_params(const Tensor& weight, const OptTensor& bias, const Tensor& ref, int64_t d, const char* op) {
  check_tensor(weight, ref, op, "weight", {d});
  if (bias) check_tensor(*bias, ref, op, "bias", {d}, weight.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == ref.scalar_type() || weight.scalar_type() == at::kFloat, "fastenc.", op,
                   ": weight must have the input's dtype ", ref.scalar_type(), " or float32, got ",
                   weight.scalar_type());
  return dtype_of(weight, op, "weight");
}

void check_stats(const Tensor& mean, const Tensor& rstd, const Tensor& ref, int64_t n, const char* op) {
  check_tensor(mean, ref, op, "mean", {n}, at::kFloat);
  check_tensor(rstd, ref, op, "rstd", {n}, at::kFloat);
}

const int64_t* seed_ptr(const OptTensor& seed, double dropout_p, const Tensor& ref, const char* op) {
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "fastenc.", op, ": dropout_p must be in [0, 1), got ",
                    dropout_p);
  if (dropout_p == 0.0) return nullptr;
  TORCH_CHECK_VALUE(seed.has_value(), "fastenc.", op, ": seed is required when dropout_p > 0");
  check_tensor(*seed, ref, op, "seed", {1}, at::kLong);
  return seed->data_ptr<int64_t>();
}

const void* opt_ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr() : nullptr; }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fastenc.", op, ": CUDA error: ", cudaGetErrorString(err));
}

cudaStream_t stream_of(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

Tensor partial_workspace(const Tensor& ref, int64_t nacc, int64_t n, int64_t d) {
  return at::empty({nacc, fastenc::row_partials_blocks(n), d}, ref.options().dtype(at::kFloat));
}

Tensor empty0(const Tensor& ref) { return at::empty({0}, ref.options()); }

// ---- add_layer_norm ------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor> add_layer_norm_fwd(const Tensor& x, const OptTensor& residual,
                                                              const OptTensor& x_bias, const Tensor& weight,
                                                              const OptTensor& bias, double eps, double dropout_p,
                                                              const OptTensor& seed, bool store_h) {
  const char* op = "add_layer_norm_fwd";
  check_rows(x, op, "x");
  const int64_t n = x.size(0), d = x.size(1);
  if (residual) check_tensor(*residual, x, op, "residual", x.sizes(), x.scalar_type());
  if (x_bias) check_tensor(*x_bias, x, op, "x_bias", {d}, x.scalar_type());
  const DType pdt = check_params(weight, bias, x, d, op);
  const int64_t* sp = seed_ptr(seed, dropout_p, x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor y = at::empty_like(x), h = store_h ? at::empty_like(x) : empty0(x);
  Tensor mean = at::empty({n}, x.options().dtype(at::kFloat)), rstd = at::empty_like(mean);
  check_launch(fastenc::add_layer_norm_fwd(
                   x.data_ptr(), opt_ptr(residual), opt_ptr(x_bias), weight.data_ptr(), opt_ptr(bias), y.data_ptr(),
                   store_h ? h.data_ptr() : nullptr, mean.data_ptr<float>(), rstd.data_ptr<float>(), n, d,
                   static_cast<float>(eps), static_cast<float>(dropout_p), sp, dtype_of(x, op, "x"), pdt, stream_of(x)),
               op);
  return {y, h, mean, rstd};
}

// dx is empty when dropout_p == 0 (it equals dh); dx_bias is empty without has_x_bias, dbias without has_bias;
// dh_extra (the gradient of a returned h) is added to dh.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> add_layer_norm_bwd(const Tensor& dy, const Tensor& h,
                                                                      const Tensor& weight, const Tensor& mean,
                                                                      const Tensor& rstd, double dropout_p,
                                                                      const OptTensor& seed, bool has_x_bias,
                                                                      bool has_bias, const OptTensor& dh_extra) {
  const char* op = "add_layer_norm_bwd";
  check_rows(h, op, "h");
  const int64_t n = h.size(0), d = h.size(1);
  check_tensor(dy, h, op, "dy", h.sizes(), h.scalar_type());
  if (dh_extra) check_tensor(*dh_extra, h, op, "dh_extra", h.sizes(), h.scalar_type());
  const DType pdt = check_params(weight, std::nullopt, h, d, op);
  check_stats(mean, rstd, h, n, op);
  const int64_t* sp = seed_ptr(seed, dropout_p, h, op);
  const c10::cuda::CUDAGuard guard(h.device());
  Tensor dh = at::empty_like(h), dx = sp ? at::empty_like(h) : empty0(h);
  Tensor dx_bias = has_x_bias ? at::empty({d}, h.options()) : empty0(h);
  Tensor dweight = at::empty_like(weight), dbias = has_bias ? at::empty_like(weight) : empty0(h);
  Tensor partial = partial_workspace(h, 3, n, d);
  check_launch(fastenc::add_layer_norm_bwd(dy.data_ptr(), h.data_ptr(), opt_ptr(dh_extra), weight.data_ptr(),
                                           mean.data_ptr<float>(), rstd.data_ptr<float>(), sp ? dx.data_ptr() : nullptr,
                                           dh.data_ptr(), has_x_bias ? dx_bias.data_ptr() : nullptr,
                                           dweight.data_ptr(), has_bias ? dbias.data_ptr() : nullptr,
                                           partial.data_ptr<float>(), n, d, static_cast<float>(dropout_p), sp,
                                           dtype_of(h, op, "h"), pdt, stream_of(h)),
               op);
  return {dx, dh, dx_bias, dweight, dbias};
}

// ---- bias_gelu -----------------------------------------------------------------------------------------------

Tensor bias_gelu_fwd(const Tensor& x, const OptTensor& bias, bool tanh_approx) {
  const char* op = "bias_gelu_fwd";
  check_rows(x, op, "x");
  const int64_t n = x.size(0), d = x.size(1);
  if (bias) check_tensor(*bias, x, op, "bias", {d}, x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor y = at::empty_like(x);
  check_launch(fastenc::bias_gelu_fwd(x.data_ptr(), opt_ptr(bias), y.data_ptr(), n, d, tanh_approx,
                                      dtype_of(x, op, "x"), stream_of(x)),
               op);
  return y;
}

std::tuple<Tensor, Tensor> bias_gelu_bwd(const Tensor& dy, const Tensor& x, const OptTensor& bias, bool tanh_approx) {
  const char* op = "bias_gelu_bwd";
  check_rows(x, op, "x");
  const int64_t n = x.size(0), d = x.size(1);
  check_tensor(dy, x, op, "dy", x.sizes(), x.scalar_type());
  if (bias) check_tensor(*bias, x, op, "bias", {d}, x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty_like(x), dbias = bias ? at::empty({d}, x.options()) : empty0(x);
  Tensor partial = bias ? partial_workspace(x, 1, n, d) : empty0(x);
  check_launch(fastenc::bias_gelu_bwd(dy.data_ptr(), x.data_ptr(), opt_ptr(bias), dx.data_ptr(),
                                      bias ? dbias.data_ptr() : nullptr, bias ? partial.data_ptr<float>() : nullptr, n,
                                      d, tanh_approx, dtype_of(x, op, "x"), stream_of(x)),
               op);
  return {dx, dbias};
}

// ---- gated_act -----------------------------------------------------------------------------------------------

// The kernels' activation code (fastenc::GatedAct, the order of fastenc.ops.gated_act.ACTIVATIONS).
int gated_act_code(c10::string_view activation, const char* op) {
  constexpr const char* kNames[] = {"gelu", "gelu_tanh", "silu"};
  for (int i = 0; i < 3; ++i) {
    if (activation == kNames[i]) return i;
  }
  TORCH_CHECK_VALUE(false, "fastenc.", op, ": activation must be one of gelu, gelu_tanh, silu, got ",
                    std::string(activation));
  return 0;
}

// x [n, 2d] (y None) or x, y [n, d]: CUDA, unit last stride, any row stride (views of a wider matmul output).
// Returns d.
int64_t check_gated_inputs(const Tensor& x, const OptTensor& y, const char* op) {
  TORCH_CHECK_VALUE(x.is_cuda(), "fastenc.", op, ": x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) > 0 && (x.stride(1) == 1 || x.size(1) == 1), "fastenc.", op,
                    ": x must be 2-D [rows, columns] with a non-empty last dim of unit stride, got shape ", x.sizes(),
                    ", strides ", x.strides());
  dtype_of(x, op, "x");
  if (!y) {
    TORCH_CHECK_VALUE(x.size(1) % 2 == 0, "fastenc.", op, ": x must have an even number of columns when y is None, "
                      "got shape ", x.sizes());
    return x.size(1) / 2;
  }
  check_cuda(*y, x, op, "y");
  TORCH_CHECK_VALUE(y->sizes() == x.sizes() && (y->stride(1) == 1 || y->size(1) == 1), "fastenc.", op,
                    ": y must have the shape of x ", x.sizes(), " and unit last stride, got shape ", y->sizes(),
                    ", strides ", y->strides());
  TORCH_CHECK_TYPE(y->scalar_type() == x.scalar_type(), "fastenc.", op, ": y must have dtype ", x.scalar_type(),
                   ", got ", y->scalar_type());
  return x.size(1);
}

// Column `col` of a 2-D tensor with unit last stride.
void* column_ptr(const Tensor& t, int64_t col) { return static_cast<char*>(t.data_ptr()) + col * t.element_size(); }

Tensor gated_act_fwd(const Tensor& x, const OptTensor& y, c10::string_view activation, double dropout_p,
                     const OptTensor& seed) {
  const char* op = "gated_act_fwd";
  const int64_t d = check_gated_inputs(x, y, op), n = x.size(0);
  const int act = gated_act_code(activation, op);
  const int64_t* sp = seed_ptr(seed, dropout_p, x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty({n, d}, x.options());
  const void* g = y ? y->data_ptr() : column_ptr(x, d);
  const int64_t g_stride = y ? y->stride(0) : x.stride(0);
  check_launch(fastenc::gated_act_fwd(x.data_ptr(), x.stride(0), g, g_stride, out.data_ptr(), n, d, act,
                                      static_cast<float>(dropout_p), sp, dtype_of(x, op, "x"), stream_of(x)),
               op);
  return out;
}

// dx has x's shape (y None: both halves' gradients), contiguous; dy is empty when y is None.
std::tuple<Tensor, Tensor> gated_act_bwd(const Tensor& dout, const Tensor& x, const OptTensor& y,
                                         c10::string_view activation, double dropout_p, const OptTensor& seed) {
  const char* op = "gated_act_bwd";
  const int64_t d = check_gated_inputs(x, y, op), n = x.size(0);
  const int act = gated_act_code(activation, op);
  check_tensor(dout, x, op, "dout", {n, d}, x.scalar_type());
  const int64_t* sp = seed_ptr(seed, dropout_p, x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty(x.sizes(), x.options()), dy = y ? at::empty({n, d}, x.options()) : empty0(x);
  const void* g = y ? y->data_ptr() : column_ptr(x, d);
  const int64_t g_stride = y ? y->stride(0) : x.stride(0);
  void* dg = y ? dy.data_ptr() : column_ptr(dx, d);
  check_launch(fastenc::gated_act_bwd(dout.data_ptr(), x.data_ptr(), x.stride(0), g, g_stride, dx.data_ptr(),
                                      dx.stride(0), dg, y ? d : dx.stride(0), n, d, act,
                                      static_cast<float>(dropout_p), sp, dtype_of(x, op, "x"), stream_of(x)),
               op);
  return {dx, dy};
}

// ---- gelu_layer_norm -----------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> gelu_layer_norm_fwd(const Tensor& x, const OptTensor& x_bias, const Tensor& weight,
                                                       const Tensor& bias, double eps, bool tanh_approx) {
  const char* op = "gelu_layer_norm_fwd";
  check_rows(x, op, "x");
  const int64_t n = x.size(0), d = x.size(1);
  if (x_bias) check_tensor(*x_bias, x, op, "x_bias", {d}, x.scalar_type());
  const DType pdt = check_params(weight, bias, x, d, op);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor y = at::empty_like(x);
  Tensor mean = at::empty({n}, x.options().dtype(at::kFloat)), rstd = at::empty_like(mean);
  check_launch(
      fastenc::gelu_layer_norm_fwd(x.data_ptr(), opt_ptr(x_bias), weight.data_ptr(), bias.data_ptr(), y.data_ptr(),
                                   mean.data_ptr<float>(), rstd.data_ptr<float>(), n, d, static_cast<float>(eps),
                                   tanh_approx, dtype_of(x, op, "x"), pdt, stream_of(x)),
      op);
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gelu_layer_norm_bwd(const Tensor& dy, const Tensor& x,
                                                               const OptTensor& x_bias, const Tensor& weight,
                                                               const Tensor& mean, const Tensor& rstd,
                                                               bool tanh_approx) {
  const char* op = "gelu_layer_norm_bwd";
  check_rows(x, op, "x");
  const int64_t n = x.size(0), d = x.size(1);
  check_tensor(dy, x, op, "dy", x.sizes(), x.scalar_type());
  if (x_bias) check_tensor(*x_bias, x, op, "x_bias", {d}, x.scalar_type());
  const DType pdt = check_params(weight, weight, x, d, op);
  check_stats(mean, rstd, x, n, op);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor dx = at::empty_like(x), dx_bias = x_bias ? at::empty({d}, x.options()) : empty0(x);
  Tensor dweight = at::empty_like(weight), dbias = at::empty_like(weight);
  Tensor partial = partial_workspace(x, 3, n, d);
  check_launch(fastenc::gelu_layer_norm_bwd(dy.data_ptr(), x.data_ptr(), opt_ptr(x_bias), weight.data_ptr(),
                                            mean.data_ptr<float>(), rstd.data_ptr<float>(), dx.data_ptr(),
                                            x_bias ? dx_bias.data_ptr() : nullptr, dweight.data_ptr(), dbias.data_ptr(),
                                            partial.data_ptr<float>(), n, d, tanh_approx, dtype_of(x, op, "x"), pdt,
                                            stream_of(x)),
               op);
  return {dx, dx_bias, dweight, dbias};
}

// ---- embeddings ----------------------------------------------------------------------------------------------

void check_ids(const Tensor& ids, const Tensor& ref, int64_t n, const char* op, const char* name) {
  check_tensor(ids, ref, op, name, {n}, at::kLong);
}

// Tables: 2-D contiguous [rows, e] in the word table's dtype.
void check_table(const Tensor& t, const Tensor& word, const char* op, const char* name) {
  check_cuda(t, word, op, name);
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == word.size(1), "fastenc.", op, ": ", name, " must be [rows, ",
                    word.size(1), "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "fastenc.", op, ": ", name, " must be contiguous");
  TORCH_CHECK_TYPE(t.scalar_type() == word.scalar_type(), "fastenc.", op, ": ", name,
                   " must have the word table's dtype ", word.scalar_type(), ", got ", t.scalar_type());
}

void check_embedding_inputs(const Tensor& ids, const OptTensor& pos_ids, const OptTensor& tt_ids, const Tensor& word,
                            const OptTensor& position, const OptTensor& token_type, const char* op) {
  check_rows(word, op, "word");
  TORCH_CHECK_VALUE(pos_ids.has_value() == position.has_value(), "fastenc.", op,
                    ": position_ids and position must be given together");
  if (position) check_table(*position, word, op, "position");
  TORCH_CHECK_VALUE(tt_ids.has_value() == token_type.has_value(), "fastenc.", op,
                    ": token_type_ids and token_type must be given together");
  if (token_type) check_table(*token_type, word, op, "token_type");
  const int64_t n = ids.numel();
  check_ids(ids, word, n, op, "input_ids");
  if (pos_ids) check_ids(*pos_ids, word, n, op, "position_ids");
  if (tt_ids) check_ids(*tt_ids, word, n, op, "token_type_ids");
}

std::tuple<Tensor, Tensor, Tensor> embeddings_fwd(const Tensor& ids, const OptTensor& pos_ids,
                                                  const OptTensor& tt_ids, const Tensor& word,
                                                  const OptTensor& position, const OptTensor& token_type,
                                                  const Tensor& weight, const OptTensor& bias, double eps,
                                                  double dropout_p, const OptTensor& seed) {
  const char* op = "embeddings_fwd";
  check_embedding_inputs(ids, pos_ids, tt_ids, word, position, token_type, op);
  const int64_t n = ids.numel(), e = word.size(1);
  const DType pdt = check_params(weight, bias, word, e, op);
  const int64_t* sp = seed_ptr(seed, dropout_p, word, op);
  const c10::cuda::CUDAGuard guard(word.device());
  Tensor y = at::empty({n, e}, word.options());
  Tensor mean = at::empty({n}, word.options().dtype(at::kFloat)), rstd = at::empty_like(mean);
  check_launch(fastenc::embeddings_fwd(
                   ids.data_ptr<int64_t>(), pos_ids ? pos_ids->data_ptr<int64_t>() : nullptr,
                   tt_ids ? tt_ids->data_ptr<int64_t>() : nullptr, word.data_ptr(), opt_ptr(position),
                   opt_ptr(token_type), weight.data_ptr(), opt_ptr(bias), y.data_ptr(), mean.data_ptr<float>(),
                   rstd.data_ptr<float>(), n, e, word.size(0), position ? position->size(0) : 0,
                   token_type ? token_type->size(0) : 0, static_cast<float>(eps), static_cast<float>(dropout_p), sp,
                   dtype_of(word, op, "word"), pdt, stream_of(word)),
               op);
  return {y, mean, rstd};
}

// dposition / dtoken_type are empty without their tables, dbias without has_bias. Table gradients are summed in
// fp32 (atomics), then cast.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> embeddings_bwd(
    const Tensor& dy, const Tensor& ids, const OptTensor& pos_ids, const OptTensor& tt_ids, const Tensor& word,
    const OptTensor& position, const OptTensor& token_type, const Tensor& weight, const Tensor& mean,
    const Tensor& rstd, double dropout_p, const OptTensor& seed, int64_t word_padding_idx,
    int64_t position_padding_idx, bool has_bias) {
  const char* op = "embeddings_bwd";
  check_embedding_inputs(ids, pos_ids, tt_ids, word, position, token_type, op);
  const int64_t n = ids.numel(), e = word.size(1);
  check_tensor(dy, word, op, "dy", {n, e}, word.scalar_type());
  const DType pdt = check_params(weight, weight, word, e, op);
  check_stats(mean, rstd, word, n, op);
  const int64_t* sp = seed_ptr(seed, dropout_p, word, op);
  const c10::cuda::CUDAGuard guard(word.device());
  const auto f32 = word.options().dtype(at::kFloat);
  Tensor dword = at::zeros(word.sizes(), f32);
  Tensor dposition = position ? at::zeros(position->sizes(), f32) : empty0(word);
  Tensor dtoken_type = token_type ? at::zeros(token_type->sizes(), f32) : empty0(word);
  Tensor dweight = at::empty_like(weight), dbias = has_bias ? at::empty_like(weight) : empty0(word);
  Tensor partial = partial_workspace(word, 2, n, e);
  check_launch(
      fastenc::embeddings_bwd(dy.data_ptr(), ids.data_ptr<int64_t>(), pos_ids ? pos_ids->data_ptr<int64_t>() : nullptr,
                              tt_ids ? tt_ids->data_ptr<int64_t>() : nullptr, word.data_ptr(), opt_ptr(position),
                              opt_ptr(token_type), weight.data_ptr(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
                              dword.data_ptr<float>(), position ? dposition.data_ptr<float>() : nullptr,
                              token_type ? dtoken_type.data_ptr<float>() : nullptr, dweight.data_ptr(),
                              has_bias ? dbias.data_ptr() : nullptr, partial.data_ptr<float>(), n, e, word.size(0),
                              position ? position->size(0) : 0, token_type ? token_type->size(0) : 0,
                              static_cast<float>(dropout_p), sp, word_padding_idx, position_padding_idx,
                              dtype_of(word, op, "word"), pdt, stream_of(word)),
      op);
  const auto dt = word.scalar_type();
  return {dword.to(dt), position ? dposition.to(dt) : empty0(word), token_type ? dtoken_type.to(dt) : empty0(word),
          dweight, dbias};
}

// ---- attention -----------------------------------------------------------------------------------------------

struct AttnLayout {
  bool packed;
  int64_t batch, seqlen, heads, head_dim, tokens;
};

fastenc::AttnTensor attn_tensor(const Tensor& t, bool packed) {
  if (packed) return {t.data_ptr(), 0, t.stride(0), t.stride(1)};
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

// The kernels read q, k, v and dout with 16-byte cp.async copies: data pointer and every stride but the last (unit)
// one must keep rows 16-byte aligned.
void check_rows_aligned16(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.stride(-1) == 1, "fastenc.", op, ": ", name, " must have a unit-stride last dim");
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t i = 0; i + 1 < t.dim(); ++i) aligned = aligned && t.stride(i) % 8 == 0;
  TORCH_CHECK_VALUE(aligned, "fastenc.", op, ": ", name, " must have 16-byte aligned rows (data pointer and strides)");
}

// q, k, v: one shape and dtype (fp16 / bf16), head dim 32 / 64 / 128, unit last stride, 16-byte aligned rows.
AttnLayout check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& key_mask,
                                  const OptTensor& cu_seqlens, int64_t max_seqlen, const char* op) {
  AttnLayout lay{cu_seqlens.has_value(), 0, 0, 0, 0, 0};
  TORCH_CHECK_VALUE(q.is_cuda(), "fastenc.", op, ": q must be a CUDA tensor, got device ", q.device());
  TORCH_CHECK_TYPE(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, "fastenc.", op,
                   ": q must be float16 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK_VALUE(q.dim() == (lay.packed ? 3 : 4), "fastenc.", op, ": q must be ",
                    lay.packed ? "[tokens, heads, head_dim] with cu_seqlens" : "[batch, seq, heads, head_dim]",
                    ", got shape ", q.sizes());
  const std::pair<const Tensor*, const char*> qkv[] = {{&q, "q"}, {&k, "k"}, {&v, "v"}};
  for (const auto& [t, name] : qkv) {
    check_cuda(*t, q, op, name);
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), "fastenc.", op, ": ", name, " must have q's shape ", q.sizes(), ", got ",
                      t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(), "fastenc.", op, ": ", name, " must have q's dtype");
    check_rows_aligned16(*t, op, name);
  }
  lay.head_dim = q.size(-1);
  lay.heads = q.size(-2);
  TORCH_CHECK_VALUE(lay.head_dim == 32 || lay.head_dim == 64 || lay.head_dim == 128, "fastenc.", op,
                    ": head_dim must be 32, 64 or 128, got ", lay.head_dim);
  if (lay.packed) {
    const Tensor& cu = *cu_seqlens;
    check_cuda(cu, q, op, "cu_seqlens");
    TORCH_CHECK_VALUE(cu.dim() == 1 && cu.numel() >= 2 && cu.scalar_type() == at::kInt && cu.is_contiguous(),
                      "fastenc.", op, ": cu_seqlens must be a contiguous int32 [batch + 1] tensor");
    TORCH_CHECK_VALUE(!key_mask.has_value(), "fastenc.", op, ": key_padding_mask and cu_seqlens are exclusive");
    TORCH_CHECK_VALUE(max_seqlen > 0, "fastenc.", op, ": max_seqlen must be positive, got ", max_seqlen);
    lay.batch = cu.numel() - 1;
    lay.seqlen = max_seqlen;
    lay.tokens = q.size(0);
  } else {
    lay.batch = q.size(0);
    lay.seqlen = q.size(1);
    if (key_mask) {
      check_tensor(*key_mask, q, op, "key_padding_mask", {lay.batch, lay.seqlen});
      TORCH_CHECK_TYPE(key_mask->scalar_type() == at::kBool || key_mask->scalar_type() == at::kByte, "fastenc.", op,
                       ": key_padding_mask must be bool or uint8, got ", key_mask->scalar_type());
    }
  }
  TORCH_CHECK_VALUE(lay.seqlen < (int64_t{1} << 31) && lay.batch < 65536 && lay.heads < 65536, "fastenc.", op,
                    ": batch, heads or sequence length too large");
  return lay;
}

fastenc::AttnParams attn_params(const Tensor& q, const Tensor& k, const Tensor& v, const AttnLayout& lay,
                                const OptTensor& key_mask, const OptTensor& cu_seqlens, const Tensor& lse,
                                double softmax_scale, double dropout_p, const int64_t* seed) {
  fastenc::AttnParams p{};
  p.q = attn_tensor(q, lay.packed);
  p.k = attn_tensor(k, lay.packed);
  p.v = attn_tensor(v, lay.packed);
  p.lse = lse.data_ptr<float>();
  p.lse_batch_stride = lay.packed ? 0 : lay.heads * lay.seqlen;
  p.lse_head_stride = lay.packed ? lay.tokens : lay.seqlen;
  p.key_mask = key_mask ? static_cast<const uint8_t*>(key_mask->data_ptr()) : nullptr;
  p.mask_batch_stride = lay.seqlen;
  p.cu_seqlens = cu_seqlens ? cu_seqlens->data_ptr<int32_t>() : nullptr;
  p.batch = static_cast<int>(lay.batch);
  p.heads = static_cast<int>(lay.heads);
  p.head_dim = static_cast<int>(lay.head_dim);
  p.max_seqlen = static_cast<int>(lay.seqlen);
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.dropout_p = static_cast<float>(dropout_p);
  p.seed = seed;
  return p;
}

std::vector<int64_t> lse_shape(const AttnLayout& lay) {
  if (lay.packed) return {lay.heads, lay.tokens};
  return {lay.batch, lay.heads, lay.seqlen};
}

std::tuple<Tensor, Tensor> attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const OptTensor& key_padding_mask, const OptTensor& cu_seqlens,
                                         int64_t max_seqlen, double softmax_scale, double dropout_p,
                                         const OptTensor& seed) {
  const char* op = "attention_fwd";
  const AttnLayout lay = check_attention_inputs(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, op);
  const int64_t* sp = seed_ptr(seed, dropout_p, q, op);
  const c10::cuda::CUDAGuard guard(q.device());
  Tensor o = at::empty(q.sizes(), q.options());
  Tensor lse = at::empty(lse_shape(lay), q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {o, lse};
  fastenc::AttnParams p = attn_params(q, k, v, lay, key_padding_mask, cu_seqlens, lse, softmax_scale, dropout_p, sp);
  p.o = attn_tensor(o, lay.packed);
  check_launch(fastenc::attention_fwd(p, dtype_of(q, op, "q"), stream_of(q)), op);
  return {o, lse};
}

std::tuple<Tensor, Tensor, Tensor> attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const Tensor& o, const Tensor& lse, const OptTensor& key_padding_mask,
                                                 const OptTensor& cu_seqlens, int64_t max_seqlen, double softmax_scale,
                                                 double dropout_p, const OptTensor& seed) {
  const char* op = "attention_bwd";
  const AttnLayout lay = check_attention_inputs(q, k, v, key_padding_mask, cu_seqlens, max_seqlen, op);
  check_tensor(dout, q, op, "dout", q.sizes(), q.scalar_type());
  check_rows_aligned16(dout, op, "dout");  // o and lse are read element by element: contiguity is enough
  check_tensor(o, q, op, "o", q.sizes(), q.scalar_type());
  check_tensor(lse, q, op, "lse", lse_shape(lay), at::kFloat);
  const int64_t* sp = seed_ptr(seed, dropout_p, q, op);
  const c10::cuda::CUDAGuard guard(q.device());
  Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  Tensor dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0) return {dq, dk, dv};
  Tensor delta = at::empty_like(lse);
  fastenc::AttnParams p = attn_params(q, k, v, lay, key_padding_mask, cu_seqlens, lse, softmax_scale, dropout_p, sp);
  p.o = attn_tensor(o, lay.packed);
  p.dout = attn_tensor(dout, lay.packed);
  p.dq = attn_tensor(dq, lay.packed);
  p.dk = attn_tensor(dk, lay.packed);
  p.dv = attn_tensor(dv, lay.packed);
  p.delta = delta.data_ptr<float>();
  check_launch(fastenc::attention_bwd(p, dtype_of(q, op, "q"), stream_of(q)), op);
  return {dq, dk, dv};
}

Tensor attention_dropout_mask(const Tensor& seed, int64_t batch, int64_t heads, int64_t seqlen, double dropout_p) {
  const char* op = "attention_dropout_mask";
  check_tensor(seed, seed, op, "seed", {1}, at::kLong);
  TORCH_CHECK_VALUE(batch >= 0 && heads >= 0 && seqlen >= 0 && batch < 65536 && heads < 65536 && seqlen < 65536,
                    "fastenc.", op, ": batch, heads and seqlen must be in [0, 65536)");
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "fastenc.", op, ": dropout_p must be in [0, 1), got ",
                    dropout_p);
  const c10::cuda::CUDAGuard guard(seed.device());
  Tensor out = at::empty({batch, heads, seqlen, seqlen}, seed.options().dtype(at::kByte));
  check_launch(fastenc::attention_dropout_mask(
                   seed.data_ptr<int64_t>(), out.data_ptr<uint8_t>(), static_cast<int>(batch), static_cast<int>(heads),
                   static_cast<int>(seqlen), static_cast<float>(dropout_p), stream_of(seed)),
               op);
  return out;
}

}  // namespace

TORCH_LIBRARY(fastenc, m) {
  m.def(
      "add_layer_norm_fwd(Tensor x, Tensor? residual, Tensor? x_bias, Tensor weight, Tensor? bias, float eps, "
      "float dropout_p, Tensor? seed, bool store_h) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "add_layer_norm_bwd(Tensor dy, Tensor h, Tensor weight, Tensor mean, Tensor rstd, float dropout_p, "
      "Tensor? seed, bool has_x_bias, bool has_bias=True, Tensor? dh_extra=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("bias_gelu_fwd(Tensor x, Tensor? bias, bool tanh_approx) -> Tensor");
  m.def("bias_gelu_bwd(Tensor dy, Tensor x, Tensor? bias, bool tanh_approx) -> (Tensor, Tensor)");
  m.def(
      "gelu_layer_norm_fwd(Tensor x, Tensor? x_bias, Tensor weight, Tensor bias, float eps, bool tanh_approx) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "gelu_layer_norm_bwd(Tensor dy, Tensor x, Tensor? x_bias, Tensor weight, Tensor mean, Tensor rstd, "
      "bool tanh_approx) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("gated_act_fwd(Tensor x, Tensor? y, str activation, float dropout_p, Tensor? seed) -> Tensor");
  m.def(
      "gated_act_bwd(Tensor dout, Tensor x, Tensor? y, str activation, float dropout_p, Tensor? seed) "
      "-> (Tensor, Tensor)");
  m.def(
      "embeddings_fwd(Tensor input_ids, Tensor? position_ids, Tensor? token_type_ids, Tensor word, "
      "Tensor? position, Tensor? token_type, Tensor weight, Tensor? bias, float eps, float dropout_p, Tensor? seed) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "embeddings_bwd(Tensor dy, Tensor input_ids, Tensor? position_ids, Tensor? token_type_ids, Tensor word, "
      "Tensor? position, Tensor? token_type, Tensor weight, Tensor mean, Tensor rstd, float dropout_p, "
      "Tensor? seed, int word_padding_idx, int position_padding_idx, bool has_bias=True) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor? cu_seqlens, "
      "int max_seqlen, float softmax_scale, float dropout_p, Tensor? seed) -> (Tensor, Tensor)");
  m.def(
      "attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor? key_padding_mask, "
      "Tensor? cu_seqlens, int max_seqlen, float softmax_scale, float dropout_p, Tensor? seed) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("attention_dropout_mask(Tensor seed, int batch, int heads, int seqlen, float dropout_p) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastenc, CUDA, m) {
  m.impl("add_layer_norm_fwd", &add_layer_norm_fwd);
  m.impl("add_layer_norm_bwd", &add_layer_norm_bwd);
  m.impl("bias_gelu_fwd", &bias_gelu_fwd);
  m.impl("bias_gelu_bwd", &bias_gelu_bwd);
  m.impl("gelu_layer_norm_fwd", &gelu_layer_norm_fwd);
  m.impl("gelu_layer_norm_bwd", &gelu_layer_norm_bwd);
  m.impl("gated_act_fwd", &gated_act_fwd);
  m.impl("gated_act_bwd", &gated_act_bwd);
  m.impl("embeddings_fwd", &embeddings_fwd);
  m.impl("embeddings_bwd", &embeddings_bwd);
  m.impl("attention_fwd", &attention_fwd);
  m.impl("attention_bwd", &attention_bwd);
  m.impl("attention_dropout_mask", &attention_dropout_mask);
}

// `import fastenc._C` loads this library, which runs the registrations above; the module holds one attribute,
// CUDA_ARCHS: the cubins and PTX compiled in (e.g. "sm_80+sm_90a+compute_90", set by setup.py; "" if unknown).
#ifndef FASTENC_CUDA_ARCHS
#define FASTENC_CUDA_ARCHS
#endif
#define FASTENC_STR2(x) #x
#define FASTENC_STR(x) FASTENC_STR2(x)

PyMODINIT_FUNC PyInit__C() {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastenc CUDA kernels (ops in torch.ops.fastenc)", -1,
                               nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr && PyModule_AddStringConstant(m, "CUDA_ARCHS", FASTENC_STR(FASTENC_CUDA_ARCHS)) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
