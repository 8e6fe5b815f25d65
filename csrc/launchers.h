// Host-side API of the fastenc CUDA kernels: plain C++ over raw device pointers, sizes, strides and a dtype tag,
// so that nvcc compiles every kernel file without torch, and bindings.cpp (the only file that knows torch) checks
// the tensors, allocates the outputs and workspaces, and calls these on the current stream.
//
// Conventions: every tensor argument is a device pointer; row-wise ops take contiguous [n, d] tensors; "nullable"
// pointers may be nullptr (the feature is off). Each launcher returns the first CUDA error it meets
// (cudaErrorInvalidValue for arguments the kernels cannot take) and never synchronises.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastenc {

// dtype tags (bindings.cpp maps torch dtypes onto them).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Number of thread blocks of the backward kernels that also sum parameter gradients. Each block owns a fixed set
// of rows and one fp32 row of partial sums per parameter gradient; the launcher then sums the partials in a fixed
// order, so parameter gradients are deterministic without atomics. The caller allocates the fp32 workspace
// `partial` of [num_grads, row_partials_blocks(n), d].
int row_partials_blocks(int64_t n_rows);

// ---- add_layer_norm: y = LayerNorm(dropout(x + x_bias) + residual) -------------------------------------------
// x, residual, x_bias, y, h, dh_extra: `dtype`; weight, bias, dweight, dbias: `param_dtype` (dtype or fp32); mean,
// rstd fp32. bias nullable (bias-free LayerNorm).
cudaError_t add_layer_norm_fwd(const void* x, const void* residual /*nullable*/, const void* x_bias /*nullable*/,
                               const void* weight, const void* bias /*nullable*/, void* y, void* h /*nullable*/,
                               float* mean, float* rstd, int64_t n, int64_t d, float eps, float dropout_p,
                               const int64_t* seed /*nullable iff dropout_p == 0*/, DType dtype, DType param_dtype,
                               cudaStream_t stream);
// dh = LayerNorm-backward(dy) + dh_extra (nullable: the gradient of a returned h); dx may be nullptr when
// dropout_p == 0 (dx is then dh); dx_bias and dbias nullable; partial [3, G, d] fp32.
cudaError_t add_layer_norm_bwd(const void* dy, const void* h, const void* dh_extra /*nullable*/, const void* weight,
                               const float* mean, const float* rstd, void* dx, void* dh, void* dx_bias, void* dweight,
                               void* dbias, float* partial, int64_t n, int64_t d, float dropout_p, const int64_t* seed,
                               DType dtype, DType param_dtype, cudaStream_t stream);

// ---- bias_gelu: y = gelu(x + bias) ---------------------------------------------------------------------------
cudaError_t bias_gelu_fwd(const void* x, const void* bias /*nullable*/, void* y, int64_t n, int64_t d, bool tanh_approx,
                          DType dtype, cudaStream_t stream);
// dbias nullable (iff bias is); partial [1, G, d] fp32 when dbias is given.
cudaError_t bias_gelu_bwd(const void* dy, const void* x, const void* bias, void* dx, void* dbias, float* partial,
                          int64_t n, int64_t d, bool tanh_approx, DType dtype, cudaStream_t stream);

// ---- gelu_layer_norm: y = LayerNorm(gelu(x + x_bias)) --------------------------------------------------------
cudaError_t gelu_layer_norm_fwd(const void* x, const void* x_bias /*nullable*/, const void* weight, const void* bias,
                                void* y, float* mean, float* rstd, int64_t n, int64_t d, float eps, bool tanh_approx,
                                DType dtype, DType param_dtype, cudaStream_t stream);
// dx_bias nullable (iff x_bias is); partial [3, G, d] fp32.
cudaError_t gelu_layer_norm_bwd(const void* dy, const void* x, const void* x_bias, const void* weight,
                                const float* mean, const float* rstd, void* dx, void* dx_bias, void* dweight,
                                void* dbias, float* partial, int64_t n, int64_t d, bool tanh_approx, DType dtype,
                                DType param_dtype, cudaStream_t stream);

// ---- gated_act: out = dropout(act(u) * g) ----------------------------------------------------------------------
// act: a GatedAct (the order of fastenc.ops.gated_act.ACTIVATIONS). u, g: [n, d] rows at u + row * u_stride
// (elements, unit column stride; the one-tensor form passes g = u + d with strides 2d); out contiguous [n, d].
enum class GatedAct : int { kGelu = 0, kGeluTanh = 1, kSilu = 2 };
cudaError_t gated_act_fwd(const void* u, int64_t u_stride, const void* g, int64_t g_stride, void* out, int64_t n,
                          int64_t d, int act, float dropout_p, const int64_t* seed /*nullable iff dropout_p == 0*/,
                          DType dtype, cudaStream_t stream);
// dout contiguous [n, d]; du, dg: [n, d] rows at du + row * du_stride, dg + row * dg_stride.
cudaError_t gated_act_bwd(const void* dout, const void* u, int64_t u_stride, const void* g, int64_t g_stride, void* du,
                          int64_t du_stride, void* dg, int64_t dg_stride, int64_t n, int64_t d, int act,
                          float dropout_p, const int64_t* seed, DType dtype, cudaStream_t stream);

// ---- embeddings: y = dropout(LayerNorm(word[ids] + token_type[tt_ids] + position[pos_ids])) --------------------
// ids int64 [n]; tables [word_rows, e], [position_rows, e], [token_type_rows, e] in `dtype`; pos_ids and position
// nullable together (no position table), as are tt_ids and token_type; bias nullable (bias-free LayerNorm). Ids
// outside a table are clamped into it (never read out of bounds).
cudaError_t embeddings_fwd(const int64_t* ids, const int64_t* pos_ids, const int64_t* tt_ids, const void* word,
                           const void* position, const void* token_type, const void* weight, const void* bias, void* y,
                           float* mean, float* rstd, int64_t n, int64_t e, int64_t word_rows, int64_t position_rows,
                           int64_t token_type_rows, float eps, float dropout_p, const int64_t* seed, DType dtype,
                           DType param_dtype, cudaStream_t stream);
// Table gradients accumulate with fp32 atomicAdd into the zero-filled dword / dposition / dtoken_type buffers
// (fp32, table shapes; dposition and dtoken_type nullable with their tables); rows whose id equals a padding index
// (-1: none) add nothing. dbias nullable (no dbias sum). partial [2, G, e] fp32.
cudaError_t embeddings_bwd(const void* dy, const int64_t* ids, const int64_t* pos_ids, const int64_t* tt_ids,
                           const void* word, const void* position, const void* token_type, const void* weight,
                           const float* mean, const float* rstd, float* dword, float* dposition, float* dtoken_type,
                           void* dweight, void* dbias, float* partial, int64_t n, int64_t e, int64_t word_rows,
                           int64_t position_rows, int64_t token_type_rows, float dropout_p, const int64_t* seed,
                           int64_t word_padding_idx, int64_t position_padding_idx, DType dtype, DType param_dtype,
                           cudaStream_t stream);

// ---- attention ----------------------------------------------------------------------------------------------
// One tensor of the padded [B, S, H, D] or packed [T, H, D] layout: element (b, row, h, d) of a sequence starting
// at token `start` (0 padded, cu_seqlens[b] packed) is at ptr[b * batch_stride + (start + row) * row_stride +
// h * head_stride + d]. Packed tensors have batch_stride 0.
struct AttnTensor {
  void* ptr;
  int64_t batch_stride, row_stride, head_stride;
};

struct AttnParams {
  AttnTensor q, k, v, o;        // o contiguous, written by forward
  AttnTensor dout, dq, dk, dv;  // backward only
  float* lse;                   // fp32: [B, H, S] padded, [H, T] packed; natural-log log-sum-exp, +inf for empty rows
  float* delta;                 // backward workspace of lse's shape: rowsum(dout * o)
  int64_t lse_batch_stride, lse_head_stride;
  const uint8_t* key_mask;  // [B, S] (nonzero = attend) or nullptr; padded layout only
  int64_t mask_batch_stride;
  const int32_t* cu_seqlens;  // [B + 1] or nullptr (padded)
  // max_seqlen = S for the padded layout; packed: at least every sequence's length (longer ones are cut to it,
  // and their extra rows are not written), as the launcher cannot read cu_seqlens without a host sync.
  int batch, heads, head_dim, max_seqlen;
  float softmax_scale, dropout_p;
  const int64_t* seed;  // [1] int64, nullable iff dropout_p == 0
};

// Head dims 32, 64, 128; dtype fp16 or bf16; every row 16-byte aligned (bindings.cpp checks; Python side:
// fastenc._cuda.SUPPORT and fastenc._cuda.not_supported_reasons).
cudaError_t attention_fwd(const AttnParams& params, DType dtype, cudaStream_t stream);
cudaError_t attention_bwd(const AttnParams& params, DType dtype, cudaStream_t stream);
// The dropout keep-mask the attention kernels apply for `seed`: out uint8 [batch, heads, seqlen, seqlen], 1 = kept.
cudaError_t attention_dropout_mask(const int64_t* seed, uint8_t* out, int batch, int heads, int seqlen, float dropout_p,
                                   cudaStream_t stream);

}  // namespace fastenc
