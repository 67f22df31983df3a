// The fused ops of speedrun-kernels on CUDA, f32, compiled at run time by NVRTC
// for the GPU present (see src/cuda.rs). No headers: NVRTC has no host headers.
// Each kernel computes what its CPU twin in src/ computes; row reductions run
// in a fixed shared-memory tree (and in double where the CPU uses f64), so a
// result does not depend on scheduling. Launch shapes: "row" kernels take one
// block of BLOCK threads per row; elementwise kernels use a grid-stride loop.

#define BLOCK 256

__device__ double block_sum(double v, double* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// ---- activations: kind 0 = GELU (tanh form), 1 = ReLU² -------------------------

__device__ float act(float x, int kind) {
    if (kind == 0) {
        float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    float r = x > 0.0f ? x : 0.0f;
    return r * r;
}

__device__ float act_grad(float x, int kind) {
    if (kind == 0) {
        const float c = 0.7978845608028654f;
        float t = tanhf(c * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
    }
    return x > 0.0f ? 2.0f * x : 0.0f;
}

extern "C" __global__ void act_fwd(const float* x, float* y, long long n, int kind) {
    GRID_STRIDE(i, n) y[i] = act(x[i], kind);
}

extern "C" __global__ void act_bwd(const float* x, const float* g, float* dx, long long n, int kind) {
    GRID_STRIDE(i, n) dx[i] = g[i] * act_grad(x[i], kind);
}

// ---- bias: y = x + b repeated over rows; its gradient, a column sum ------------

extern "C" __global__ void add_rows(const float* x, const float* b, float* y, long long n, int m) {
    GRID_STRIDE(i, n) y[i] = x[i] + b[i % m];
}

// Column sums in two fixed stages: partial[c][j] sums rows [c*chunk, (c+1)*chunk).
extern "C" __global__ void col_partials(const float* g, double* partial, int rows, int m, int chunk) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int c = blockIdx.y;
    if (j >= m) return;
    double acc = 0.0;
    int end = min(rows, (c + 1) * chunk);
    for (int r = c * chunk; r < end; r++) acc += g[(long long)r * m + j];
    partial[(long long)c * m + j] = acc;
}

// Writes out[offset + j]: the norm's backward packs dx | dw | db in one buffer.
extern "C" __global__ void col_reduce(const double* partial, float* out, long long offset, int chunks, int m) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    double acc = 0.0;
    for (int c = 0; c < chunks; c++) acc += partial[(long long)c * m + j];
    out[offset + j] = (float)acc;
}

// ---- LayerNorm / RMSNorm over rows of d ---------------------------------------

// (mean, 1/std) of a row, in double as on the CPU; rms: (0, 1/rms).
__device__ void row_stats(const float* x, int d, int rms, double eps, double* sh, float* mean, float* rstd) {
    double m = 0.0;
    if (!rms) {
        double s = 0.0;
        for (int j = threadIdx.x; j < d; j += blockDim.x) s += x[j];
        m = block_sum(s, sh) / d;
    }
    double q = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        double c = (double)x[j] - m;
        q += c * c;
    }
    double var = block_sum(q, sh) / d;
    *mean = (float)m;
    *rstd = (float)(1.0 / sqrt(var + eps));
}

extern "C" __global__ void norm_fwd(const float* x, const float* w, const float* b, float* y, int d, int rms, double eps) {
    __shared__ double sh[BLOCK];
    long long row = blockIdx.x;
    const float* xr = x + row * d;
    float mean, rstd;
    row_stats(xr, d, rms, eps, sh, &mean, &rstd);
    for (int j = threadIdx.x; j < d; j += blockDim.x) y[row * d + j] = (xr[j] - mean) * rstd * w[j] + b[j];
}

// dx of each row; the row's (mean, rstd) go to stats for the gain/bias gradients.
extern "C" __global__ void norm_bwd_dx(const float* x, const float* w, const float* g, float* dx, float* stats, int d, int rms, double eps) {
    __shared__ double sh[BLOCK];
    long long row = blockIdx.x;
    const float* xr = x + row * d;
    const float* gr = g + row * d;
    float mean, rstd;
    row_stats(xr, d, rms, eps, sh, &mean, &rstd);
    double s1 = 0.0, s2 = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float xhat = (xr[j] - mean) * rstd;
        float dxhat = gr[j] * w[j];
        s1 += dxhat;
        s2 += dxhat * xhat;
    }
    float mean_dxhat = rms ? 0.0f : (float)(block_sum(s1, sh) / d);
    float mean_dxhat_xhat = (float)(block_sum(s2, sh) / d);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float xhat = (xr[j] - mean) * rstd;
        dx[row * d + j] = rstd * (gr[j] * w[j] - mean_dxhat - xhat * mean_dxhat_xhat);
    }
    if (threadIdx.x == 0) {
        stats[2 * row] = mean;
        stats[2 * row + 1] = rstd;
    }
}

// Partial sums of g·xhat (dw) and g (db) over a chunk of rows, per column.
extern "C" __global__ void norm_bwd_partials(const float* x, const float* g, const float* stats, double* pw, double* pb, int rows, int d, int chunk) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int c = blockIdx.y;
    if (j >= d) return;
    double aw = 0.0, ab = 0.0;
    int end = min(rows, (c + 1) * chunk);
    for (int r = c * chunk; r < end; r++) {
        long long i = (long long)r * d + j;
        float xhat = (x[i] - stats[2 * r]) * stats[2 * r + 1];
        aw += g[i] * xhat;
        ab += g[i];
    }
    pw[(long long)c * d + j] = aw;
    pb[(long long)c * d + j] = ab;
}

// ---- the causal masked softmax of [.., T, T] scores ----------------------------

extern "C" __global__ void causal_softmax_fwd(const float* x, float* y, int t, float scale) {
    __shared__ float shf[BLOCK];
    __shared__ double sh[BLOCK];
    long long row = blockIdx.x;
    int pos = (int)(row % t);
    const float* xr = x + row * t;
    float m = __int_as_float(0xff800000);
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) m = fmaxf(m, xr[j] * scale);
    m = block_max(m, shf);
    double s = 0.0;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) s += expf(xr[j] * scale - m);
    float inv = (float)(1.0 / block_sum(s, sh));
    for (int j = threadIdx.x; j < t; j += blockDim.x)
        y[row * t + j] = j <= pos ? expf(xr[j] * scale - m) * inv : 0.0f;
}

// dx = scale · y · (g − Σ y·g) over the unmasked prefix; zero beyond it.
extern "C" __global__ void causal_softmax_bwd(const float* y, const float* g, float* dx, int t, float scale) {
    __shared__ double sh[BLOCK];
    long long row = blockIdx.x;
    int pos = (int)(row % t);
    const float* yr = y + row * t;
    const float* gr = g + row * t;
    double s = 0.0;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) s += yr[j] * gr[j];
    float dot = (float)block_sum(s, sh);
    for (int j = threadIdx.x; j < t; j += blockDim.x)
        dx[row * t + j] = j <= pos ? scale * yr[j] * (gr[j] - dot) : 0.0f;
}

// ---- cross-entropy: mean over rows of logsumexp(row) − row[target] -------------

__device__ float row_lse(const float* xr, int v, float* shf, double* sh) {
    float m = __int_as_float(0xff800000);
    for (int j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, xr[j]);
    m = block_max(m, shf);
    double s = 0.0;
    for (int j = threadIdx.x; j < v; j += blockDim.x) s += expf(xr[j] - m);
    return (float)((double)m + log(block_sum(s, sh)));
}

extern "C" __global__ void xent_rows(const float* x, const unsigned int* t, double* loss, int v) {
    __shared__ float shf[BLOCK];
    __shared__ double sh[BLOCK];
    long long row = blockIdx.x;
    const float* xr = x + row * v;
    float l = row_lse(xr, v, shf, sh);
    // A target outside the vocabulary makes the loss NaN (the host's finiteness
    // check names it) instead of reading past the row.
    unsigned int target = t[row];
    if (threadIdx.x == 0) loss[row] = target < (unsigned)v ? (double)l - (double)xr[target] : __longlong_as_double(0x7ff8000000000000LL);
}

// One block: the mean of n doubles, in a fixed order.
extern "C" __global__ void mean_of(const double* a, float* out, int n) {
    __shared__ double sh[BLOCK];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += a[i];
    double total = block_sum(s, sh);
    if (threadIdx.x == 0) out[0] = (float)(total / n);
}

extern "C" __global__ void xent_bwd(const float* x, const unsigned int* t, float* dx, int v, float inv_n) {
    __shared__ float shf[BLOCK];
    __shared__ double sh[BLOCK];
    long long row = blockIdx.x;
    const float* xr = x + row * v;
    float l = row_lse(xr, v, shf, sh);
    unsigned int target = t[row];
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float p = expf(xr[j] - l) * inv_n;
        dx[row * v + j] = j == (int)target ? p - inv_n : p;
    }
}

// ---- rotary on [.., T, hd], rotate-half form; sign −1 is the backward ---------

extern "C" __global__ void rotary(const float* x, float* y, long long n, int t, int hd, double base, double sign) {
    int half = hd / 2;
    GRID_STRIDE(i, n / 2) {
        long long row = i / half;
        int k = (int)(i % half);
        int pos = (int)(row % t);
        double a = (double)pos / pow(base, 2.0 * k / hd);
        float c = (float)cos(a), s = (float)(sign * sin(a));
        const float* xr = x + row * hd;
        float x1 = xr[k], x2 = xr[k + half];
        y[row * hd + k] = x1 * c - x2 * s;
        y[row * hd + k + half] = x1 * s + x2 * c;
    }
}

// ---- AdamW, in place, the CPU's three passes ------------------------------------

extern "C" __global__ void adamw_first(float* m, const float* g, long long n, float clip, float beta1) {
    GRID_STRIDE(i, n) {
        float gj = g[i] * clip;
        m[i] += (1.0f - beta1) * (gj - m[i]);
    }
}

extern "C" __global__ void adamw_second(float* v, const float* g, long long n, float clip, float beta2) {
    GRID_STRIDE(i, n) {
        float gj = g[i] * clip;
        v[i] = beta2 * v[i] + (1.0f - beta2) * gj * gj;
    }
}

extern "C" __global__ void adamw_param(float* p, const float* m, const float* v, long long n, float decay, float step_size, float bc2_sqrt, float eps) {
    GRID_STRIDE(i, n) {
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] = p[i] * decay - step_size * m[i] / denom;
    }
}
