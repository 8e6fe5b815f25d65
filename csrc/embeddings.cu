// embeddings: y = dropout(LayerNorm(word[ids] + token_type[tt_ids] + position[pos_ids])), gather to dropout in one
// kernel; backward scatters dL/dh into the three tables. The token type and position tables are optional (rotary
// models have no position table), as is the LayerNorm bias.
//
// Trade-off: the table gradients are summed with fp32 atomicAdd into zero-filled fp32 buffers (a row id repeats
// across the batch, and sorting ids to make the scatter deterministic costs more than the op), so dword /
// dposition / dtoken_type are NOT bitwise deterministic from run to run; dweight / dbias are (fixed-order sums).
// A token type table of at most kTokenTypeRegs rows (BERT's 2, RoBERTa's 1) is summed per block in registers when
// each thread owns one chunk of the row, and each block adds its sums once at the end: every token would otherwise
// hit the same one or two table rows with atomics.
#include "layer_norm.cuh"

namespace fastenc {

namespace {

template <typename T, int VEC>
struct EmbeddingsFwdOp {
  const int64_t* ids_ptr;      // [n]
  const int64_t* pos_ids_ptr;  // [n] or nullptr
  const int64_t* tt_ids_ptr;   // [n] or nullptr
  const T* word_ptr;           // [V, e]
  const T* position_ptr;       // [P, e] or nullptr
  const T* token_type_ptr;     // [T, e] or nullptr
  T* y_ptr;                    // [n, e]
  int64_t e;
  int64_t word_rows, position_rows, token_type_rows;  // table sizes: ids are clamped into them
  DropoutParams drop;
  int64_t word_id, pos_id, tt_id, word_off, pos_off, tt_off;

  // The op checks ids on the host (eagerly); a bad id that slips through (compiled / captured) reads a clamped
  // row instead of out-of-bounds memory.
  static __device__ int64_t clamp_id(int64_t id, int64_t rows) { return id < 0 ? 0 : (id >= rows ? rows - 1 : id); }

  __device__ void row_begin(int64_t row) {
    word_id = clamp_id(ids_ptr[row], word_rows);
    pos_id = pos_ids_ptr != nullptr ? clamp_id(pos_ids_ptr[row], position_rows) : 0;
    word_off = word_id * e;
    pos_off = pos_id * e;
    tt_id = tt_ids_ptr != nullptr ? clamp_id(tt_ids_ptr[row], token_type_rows) : 0;
    tt_off = tt_id * e;
  }

  __device__ void load_h(int64_t, int64_t c0, float (&h)[VEC], bool) {
    float t[VEC];
    load_f<VEC>(word_ptr + word_off + c0, h);
    if (token_type_ptr != nullptr) {
      load_f<VEC>(token_type_ptr + tt_off + c0, t);
#pragma unroll
      for (int k = 0; k < VEC; ++k) h[k] += t[k];
    }
    if (position_ptr != nullptr) {
      load_f<VEC>(position_ptr + pos_off + c0, t);
#pragma unroll
      for (int k = 0; k < VEC; ++k) h[k] += t[k];
    }
  }

  __device__ void store_y(int64_t row, int64_t c0, const float (&y)[VEC]) {
    if (drop.seed_ptr == nullptr) {
      store_f<VEC>(y_ptr + row * e + c0, y);
      return;
    }
    uint32_t key0, key1;
    read_seed(drop.seed_ptr, key0, key1);
    bool keep[VEC];
    rowwise_keep<VEC>(key0, key1, drop.threshold, row, c0, keep);
    float out[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = keep[k] ? y[k] * drop.scale : 0.f;
    store_f<VEC>(y_ptr + row * e + c0, out);
  }
};

constexpr int kTokenTypeRegs = 2;

template <typename T, int VEC>
struct EmbeddingsBwdOp {
  EmbeddingsFwdOp<T, VEC> fwd;                     // gathers h again (its y_ptr is unused)
  const T* dy_ptr;                                 // [n, e]
  float* dword_ptr;                                // [V, e] fp32, zero-filled
  float* dposition_ptr;                            // [P, e] fp32, zero-filled, or nullptr
  float* dtoken_type_ptr;                          // [T, e] fp32, zero-filled, or nullptr
  int64_t word_padding_idx, position_padding_idx;  // -1: none
  bool word_grad, pos_grad;
  bool tt_in_regs;                        // token type gradient summed in tt_sum (one-chunk mode, small table)
  float tt_sum[kTokenTypeRegs][VEC];      // this thread's chunk of the block's token type gradient

  __device__ void row_begin(int64_t row) {
    fwd.row_begin(row);
    word_grad = fwd.word_id != word_padding_idx;
    pos_grad = dposition_ptr != nullptr && fwd.pos_id != position_padding_idx;
  }
  __device__ void load_h(int64_t row, int64_t c0, float (&h)[VEC]) { fwd.load_h(row, c0, h, false); }
  __device__ void load_dy(int64_t row, int64_t c0, float (&dy)[VEC]) {
    load_f<VEC>(dy_ptr + row * fwd.e + c0, dy);
    if (fwd.drop.seed_ptr == nullptr) return;
    uint32_t key0, key1;
    read_seed(fwd.drop.seed_ptr, key0, key1);
    bool keep[VEC];
    rowwise_keep<VEC>(key0, key1, fwd.drop.threshold, row, c0, keep);
#pragma unroll
    for (int k = 0; k < VEC; ++k) dy[k] = keep[k] ? dy[k] * fwd.drop.scale : 0.f;
  }
  __device__ void store_dh(int64_t, int64_t c0, const float (&dh)[VEC], float (&)[VEC]) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if (word_grad) atomicAdd(dword_ptr + fwd.word_off + c0 + k, dh[k]);
      if (pos_grad) atomicAdd(dposition_ptr + fwd.pos_off + c0 + k, dh[k]);
      if (tt_in_regs) {
#pragma unroll
        for (int t = 0; t < kTokenTypeRegs; ++t) tt_sum[t][k] += fwd.tt_id == t ? dh[k] : 0.f;
      } else if (dtoken_type_ptr != nullptr) {
        atomicAdd(dtoken_type_ptr + fwd.tt_off + c0 + k, dh[k]);
      }
    }
  }
  __device__ void finish(int64_t c0) {
    if (!tt_in_regs) return;
#pragma unroll
    for (int t = 0; t < kTokenTypeRegs; ++t) {
      if (t >= fwd.token_type_rows) break;
#pragma unroll
      for (int k = 0; k < VEC; ++k) atomicAdd(dtoken_type_ptr + t * fwd.e + c0 + k, tt_sum[t][k]);
    }
  }
};

template <typename T, int VEC>
EmbeddingsFwdOp<T, VEC> make_fwd_op(const int64_t* ids, const int64_t* pos_ids, const int64_t* tt_ids, const void* word,
                                    const void* position, const void* token_type, void* y, int64_t e,
                                    const int64_t (&rows)[3], DropoutParams drop) {
  return EmbeddingsFwdOp<T, VEC>{ids,
                                 pos_ids,
                                 tt_ids,
                                 static_cast<const T*>(word),
                                 static_cast<const T*>(position),
                                 static_cast<const T*>(token_type),
                                 static_cast<T*>(y),
                                 e,
                                 rows[0],
                                 rows[1],
                                 rows[2],
                                 drop,
                                 0,
                                 0,
                                 0,
                                 0,
                                 0,
                                 0};
}

}  // namespace

cudaError_t embeddings_fwd(const int64_t* ids, const int64_t* pos_ids, const int64_t* tt_ids, const void* word,
                           const void* position, const void* token_type, const void* weight, const void* bias, void* y,
                           float* mean, float* rstd, int64_t n, int64_t e, int64_t word_rows, int64_t position_rows,
                           int64_t token_type_rows, float eps, float dropout_p, const int64_t* seed, DType dtype,
                           DType param_dtype, cudaStream_t stream) {
  const int64_t rows[3] = {word_rows, position_rows, token_type_rows};
  if (e < 1 || n < 0 || word_rows < 1 || (position != nullptr && position_rows < 1) ||
      (token_type != nullptr && token_type_rows < 1) || (pos_ids == nullptr) != (position == nullptr) ||
      (tt_ids == nullptr) != (token_type == nullptr) || (dropout_p > 0.f && seed == nullptr))
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const DropoutParams drop = make_dropout(seed, dropout_p);
  FASTENC_DISPATCH_DTYPE(
      dtype, T, FASTENC_DISPATCH_PARAM(dtype, param_dtype, T, P, {
        const bool vec = e % vec_width<T>() == 0 && aligned16(word) && (!position || aligned16(position)) &&
                         (!token_type || aligned16(token_type)) && aligned16(y) && aligned16(weight) &&
                         (!bias || aligned16(bias));
        FASTENC_DISPATCH_VEC(vec, T, VEC, {
          const auto op = make_fwd_op<T, VEC>(ids, pos_ids, tt_ids, word, position, token_type, y, e, rows, drop);
          layer_norm_fwd_rows_kernel<T, P, VEC><<<fwd_rows_grid(n), row_threads((e + VEC - 1) / VEC), 0, stream>>>(
              op, static_cast<const P*>(weight), static_cast<const P*>(bias), mean, rstd, n, e, eps);
        })
      }))
  return cudaGetLastError();
}

cudaError_t embeddings_bwd(const void* dy, const int64_t* ids, const int64_t* pos_ids, const int64_t* tt_ids,
                           const void* word, const void* position, const void* token_type, const void* weight,
                           const float* mean, const float* rstd, float* dword, float* dposition, float* dtoken_type,
                           void* dweight, void* dbias, float* partial, int64_t n, int64_t e, int64_t word_rows,
                           int64_t position_rows, int64_t token_type_rows, float dropout_p, const int64_t* seed,
                           int64_t word_padding_idx, int64_t position_padding_idx, DType dtype, DType param_dtype,
                           cudaStream_t stream) {
  const int64_t rows[3] = {word_rows, position_rows, token_type_rows};
  if (e < 1 || n < 0 || word_rows < 1 || (position != nullptr && position_rows < 1) ||
      (token_type != nullptr && token_type_rows < 1) || (pos_ids == nullptr) != (position == nullptr) ||
      (position == nullptr) != (dposition == nullptr) || (tt_ids == nullptr) != (token_type == nullptr) ||
      (token_type == nullptr) != (dtoken_type == nullptr) || (dropout_p > 0.f && seed == nullptr))
    return cudaErrorInvalidValue;
  const DropoutParams drop = make_dropout(seed, dropout_p);
  FASTENC_DISPATCH_DTYPE(
      dtype, T, FASTENC_DISPATCH_PARAM(dtype, param_dtype, T, P, {
        const bool vec = e % vec_width<T>() == 0 && aligned16(dy) && aligned16(word) &&
                         (!position || aligned16(position)) && (!token_type || aligned16(token_type)) &&
                         aligned16(weight);
        FASTENC_DISPATCH_VEC(vec, T, VEC, {
          const EmbeddingsBwdOp<T, VEC> op{
              make_fwd_op<T, VEC>(ids, pos_ids, tt_ids, word, position, token_type, nullptr, e, rows, drop),
              static_cast<const T*>(dy),
              dword,
              dposition,
              dtoken_type,
              word_padding_idx,
              position_padding_idx,
              false,
              false,
              token_type != nullptr && token_type_rows <= kTokenTypeRegs && bwd_one_chunk(e, VEC),
              {}};
          return launch_layer_norm_bwd<T, P, VEC, 2>(op, static_cast<const P*>(weight), mean, rstd, partial, dweight,
                                                     dbias, nullptr, n, e, dtype, param_dtype, stream);
        })
      }))
  return cudaErrorInvalidValue;
}

}  // namespace fastenc
