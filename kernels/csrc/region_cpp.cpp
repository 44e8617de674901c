// Region cross-attention on the CPU, fused: for each (segment, block of up to `block` of its query
// rows, head), gather the rows, S = Q·Kᵀ against the segment's T keys read in place, softmax, O = P·V,
// and write the rows back to their tokens. No padding between segments and no K/V copies; products
// of block × T × D, as large as one plain cross-attention's (PyTorch's CPU flash kernel picks its
// query block from the sequence length, so chunks of a region's rows get small blocks).
// Built on first use by kernels/region_cpp.py (torch.utils.cpp_extension); float32 only.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

using Vec = at::vec::Vectorized<float>;

// The BLAS PyTorch links (MKL in the x86 wheels): column-major sgemm.
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);

static inline void gemm(char ta, char tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                        float* c, int ldc) {
  const float one = 1.f, zero = 0.f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
}

static inline float reduce(const Vec& v, bool take_max) {
  float lanes[Vec::size()];
  v.store(lanes);
  float r = lanes[0];
  for (int i = 1; i < Vec::size(); ++i) r = take_max ? std::max(r, lanes[i]) : r + lanes[i];
  return r;
}

// row (T scores) ← softmax(scale · row)
static inline void softmax_row(float* row, int64_t T, float scale) {
  const Vec vscale(scale);
  Vec vmax(-std::numeric_limits<float>::infinity());
  float mx = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + Vec::size() <= T; j += Vec::size()) {
    Vec x = Vec::loadu(row + j) * vscale;
    x.store(row + j);
    vmax = at::vec::maximum(vmax, x);
  }
  for (; j < T; ++j) { row[j] *= scale; mx = std::max(mx, row[j]); }
  mx = std::max(mx, reduce(vmax, true));
  const Vec vm(mx);
  Vec vsum(0.f);
  float sum = 0.f;
  for (j = 0; j + Vec::size() <= T; j += Vec::size()) {
    Vec x = (Vec::loadu(row + j) - vm).exp_u20();
    x.store(row + j);
    vsum = vsum + x;
  }
  for (; j < T; ++j) { row[j] = std::exp(row[j] - mx); sum += row[j]; }
  const float inv = 1.f / (sum + reduce(vsum, false));
  const Vec vinv(inv);
  for (j = 0; j + Vec::size() <= T; j += Vec::size()) (Vec::loadu(row + j) * vinv).store(row + j);
  for (; j < T; ++j) row[j] *= inv;
}

// q (B, H, N, D); k, v (B, H, R·T, D); each with unit stride in D. order (M,): flat token indices
// b·N + n sorted by segment b·R + r; offsets (B·R + 1,): where each segment starts in order.
// Returns the output with q's strides; tokens not in order (no region) are zero.
at::Tensor region_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& order,
                          const at::Tensor& offsets, int64_t T, double scale, int64_t block) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "region_forward: float32 only");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "region_forward: D must have stride 1");
  TORCH_CHECK(order.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong && order.is_contiguous() &&
              offsets.is_contiguous(), "region_forward: order and offsets must be contiguous int64");
  TORCH_CHECK(T > 0 && block > 0, "region_forward: segment length and block must be positive");
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3), R = k.size(2) / T;
  const int64_t int_max = std::numeric_limits<int>::max();
  TORCH_CHECK(k.stride(2) <= int_max && v.stride(2) <= int_max && T * block <= int_max && D * block <= int_max,
              "region_forward: sizes beyond BLAS's 32-bit arguments");
  TORCH_CHECK(offsets.numel() == B * R + 1, "region_forward: offsets must have B·R + 1 entries");
  at::Tensor out = order.numel() == B * N ? at::empty_like(q) : at::zeros_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t* ord = order.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t qB = q.stride(0), qH = q.stride(1), qN = q.stride(2);
  const int64_t kB = k.stride(0), kH = k.stride(1), kN = k.stride(2);
  const int64_t vB = v.stride(0), vH = v.stride(1), vN = v.stride(2);
  const int64_t oB = out.stride(0), oH = out.stride(1), oN = out.stride(2);
  std::vector<int64_t> item_segment, item_start;  // one per (segment, block of its rows)
  for (int64_t s = 0; s < B * R; ++s)
    for (int64_t p = off[s]; p < off[s + 1]; p += block) {
      item_segment.push_back(s);
      item_start.push_back(p);
    }
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, static_cast<int64_t>(item_segment.size()) * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qbuf(block * D), sbuf(block * T), obuf(block * D);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item % H, w = item / H, s = item_segment[w], p0 = item_start[w];
      const int64_t m = std::min(block, off[s + 1] - p0), b = s / R, r = s % R;
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(&qbuf[i * D], qp + b * qB + h * qH + (ord[p0 + i] - b * N) * qN, D * sizeof(float));
      const float* kseg = kp + b * kB + h * kH + r * T * kN;
      const float* vseg = vp + b * vB + h * vH + r * T * vN;
      gemm('T', 'N', T, m, D, kseg, kN, qbuf.data(), D, sbuf.data(), T);  // S (m × T) = Q Kᵀ
      for (int64_t i = 0; i < m; ++i) softmax_row(&sbuf[i * T], T, sc);
      gemm('N', 'N', D, m, T, vseg, vN, sbuf.data(), T, obuf.data(), D);  // O (m × D) = P V
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(op + b * oB + h * oH + (ord[p0 + i] - b * N) * oN, &obuf[i * D], D * sizeof(float));
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("region_forward", &region_forward, "fused region cross-attention (float32, CPU)");
}
