// The CUDA backend's own kernels (compiled by NVRTC when a CudaEngine
// starts; see cuda.rs). Layout NHWC, f32. Every reduction has a fixed
// order (per-chunk partial sums, then the chunks in order in double), so
// results do not depend on scheduling. Each kernel mirrors the CPU
// backend's op of the same name in cpu.rs.

typedef long long i64;

// out (cols x rows) = in (rows x cols) transposed: a conv weight between
// the engine's [k*k*c][o] and cuDNN's NHWC filter [o][k][k][c].
extern "C" __global__ void transpose(const float* __restrict__ in, float* __restrict__ out,
                                     int rows, int cols) {
    __shared__ float tile[32][33];
    int bx = blockIdx.x * 32, by = blockIdx.y * 32;
    int tx = threadIdx.x, ty = threadIdx.y;
    for (int j = ty; j < 32; j += blockDim.y) {
        int r = by + j, c = bx + tx;
        if (r < rows && c < cols) tile[j][tx] = in[(i64)r * cols + c];
    }
    __syncthreads();
    for (int j = ty; j < 32; j += blockDim.y) {
        int c = bx + j, r = by + tx;
        if (r < rows && c < cols) out[(i64)c * rows + r] = tile[tx][j];
    }
}

// BatchNorm statistics, first pass: partial[chunk][ch] = the sum over the
// chunk's rows of x (mode 0) or of (x - mean)^2 (mode 1, mean = saved[ch]).
// Block (32, 8): 32 channels by 8 row stripes; grid (channel slabs, chunks).
extern "C" __global__ void bn_sums(const float* __restrict__ x, const float* __restrict__ saved,
                                   float* __restrict__ partial, int rows, int c, int chunk_rows,
                                   int mode) {
    __shared__ float s[8][33];
    int ch = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * chunk_rows;
    int r1 = min(rows, r0 + chunk_rows);
    float acc = 0.f;
    if (ch < c) {
        float m = mode ? saved[ch] : 0.f;
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float v = x[(i64)r * c + ch];
            if (mode) {
                v -= m;
                v *= v;
            }
            acc += v;
        }
    }
    s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        float t = 0.f;
        for (int j = 0; j < 8; j++) t += s[j][threadIdx.x];
        partial[(i64)blockIdx.y * c + ch] = t;
    }
}

// The mean: mean64[ch] (double) and saved[ch] (float) from the chunks' sums.
extern "C" __global__ void bn_mean(const float* __restrict__ partial, double* __restrict__ mean64,
                                   float* __restrict__ saved, int chunks, int c, int rows) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s = 0.0;
    for (int k = 0; k < chunks; k++) s += (double)partial[(i64)k * c + ch];
    double m = s / (double)rows;
    mean64[ch] = m;
    saved[ch] = (float)m;
}

// The variance from the chunks' squared deviations: saved = (mean, 1/std),
// running statistics updated as PyTorch does (unbiased running variance).
extern "C" __global__ void bn_var(const float* __restrict__ partial,
                                  const double* __restrict__ mean64, float* __restrict__ saved,
                                  float* __restrict__ run_mean, float* __restrict__ run_var,
                                  int chunks, int c, int rows, double momentum, double eps) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s = 0.0;
    for (int k = 0; k < chunks; k++) s += (double)partial[(i64)k * c + ch];
    double n = (double)rows;
    double v = s / n;
    double m = mean64[ch];
    run_mean[ch] = (float)((1.0 - momentum) * (double)run_mean[ch] + momentum * m);
    run_var[ch] = (float)((1.0 - momentum) * (double)run_var[ch] + momentum * (n / (n - 1.0)) * v);
    saved[ch] = (float)m;
    saved[c + ch] = (float)(1.0 / sqrt(v + eps));
}

// Evaluation: saved = (running mean, 1/sqrt(running var + eps)).
extern "C" __global__ void bn_eval_stats(const float* __restrict__ run_mean,
                                         const float* __restrict__ run_var,
                                         float* __restrict__ saved, int c, double eps) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    saved[ch] = run_mean[ch];
    saved[c + ch] = (float)(1.0 / sqrt((double)run_var[ch] + eps));
}

// y = (x - mean) * (rstd * gamma) + beta (+ residual), ReLU'd if asked.
extern "C" __global__ void bn_apply(const float* __restrict__ x, float* __restrict__ y,
                                    const float* __restrict__ res, const float* __restrict__ saved,
                                    const float* __restrict__ gamma,
                                    const float* __restrict__ beta, i64 n, int c, int relu) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        float k = saved[c + ch] * gamma[ch];
        float v = (x[i] - saved[ch]) * k + beta[ch];
        if (res) v += res[i];
        y[i] = relu ? fmaxf(v, 0.f) : v;
    }
}

// Backward sums: partial[chunk][ch] = sum of g, partial[chunk][c + ch] =
// sum of g * xhat, with g = dy masked by the ReLU (y <= 0: 0).
extern "C" __global__ void bn_bwd_sums(const float* __restrict__ x, const float* __restrict__ y,
                                       const float* __restrict__ dy,
                                       const float* __restrict__ saved,
                                       float* __restrict__ partial, int rows, int c,
                                       int chunk_rows, int relu) {
    __shared__ float s[2][8][33];
    int ch = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * chunk_rows;
    int r1 = min(rows, r0 + chunk_rows);
    float sg = 0.f, sgh = 0.f;
    if (ch < c) {
        float m = saved[ch], rs = saved[c + ch];
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            i64 i = (i64)r * c + ch;
            float g = (relu && y[i] <= 0.f) ? 0.f : dy[i];
            sg += g;
            sgh += g * ((x[i] - m) * rs);
        }
    }
    s[0][threadIdx.y][threadIdx.x] = sg;
    s[1][threadIdx.y][threadIdx.x] = sgh;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        float a = 0.f, b = 0.f;
        for (int j = 0; j < 8; j++) {
            a += s[0][j][threadIdx.x];
            b += s[1][j][threadIdx.x];
        }
        partial[(i64)blockIdx.y * 2 * c + ch] = a;
        partial[(i64)blockIdx.y * 2 * c + c + ch] = b;
    }
}

// dbeta, dgamma and the input gradient's coefficients (k, mean g, mean g*xhat).
extern "C" __global__ void bn_bwd_final(const float* __restrict__ partial,
                                        const float* __restrict__ saved,
                                        const float* __restrict__ gamma,
                                        float* __restrict__ dgamma, float* __restrict__ dbeta,
                                        float* __restrict__ coef, int chunks, int c, int rows) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double sg = 0.0, sgh = 0.0;
    for (int k = 0; k < chunks; k++) {
        sg += (double)partial[(i64)k * 2 * c + ch];
        sgh += (double)partial[(i64)k * 2 * c + c + ch];
    }
    dbeta[ch] = (float)sg;
    dgamma[ch] = (float)sgh;
    double inv_n = 1.0 / (double)rows;
    coef[ch] = gamma[ch] * saved[c + ch];
    coef[c + ch] = (float)(sg * inv_n);
    coef[2 * c + ch] = (float)(sgh * inv_n);
}

// The residual's gradient (g) and the input's: k * (g - mean g - xhat * mean g*xhat).
extern "C" __global__ void bn_bwd_apply(const float* __restrict__ x, const float* __restrict__ y,
                                        const float* __restrict__ dy,
                                        const float* __restrict__ saved,
                                        const float* __restrict__ coef, float* dx, int dx_acc,
                                        float* dres, int dres_acc, i64 n, int c, int relu) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        float g = (relu && y[i] <= 0.f) ? 0.f : dy[i];
        if (dres) dres[i] = dres_acc ? dres[i] + g : g;
        if (dx) {
            float v = coef[ch] * (g - coef[c + ch] - (x[i] - saved[ch]) * saved[c + ch] * coef[2 * c + ch]);
            dx[i] = dx_acc ? dx[i] + v : v;
        }
    }
}

// Max pool; arg holds the winner's index within its image (as the bits of a float).
extern "C" __global__ void maxpool_fwd(const float* __restrict__ x, float* __restrict__ y,
                                       float* __restrict__ arg, int b, int h, int w, int c,
                                       int oh, int ow, int k, int s, int p) {
    i64 n = (i64)b * oh * ow * c;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        i64 pos = i / c;
        int ox = (int)(pos % ow), oy = (int)((pos / ow) % oh);
        i64 img = pos / ((i64)ow * oh);
        const float* xi = x + img * h * w * c;
        float best = __int_as_float(0xff800000);
        int besti = 0;
        for (int ky = 0; ky < k; ky++) {
            int iy = oy * s - p + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < k; kx++) {
                int ix = ox * s - p + kx;
                if (ix < 0 || ix >= w) continue;
                int at = (iy * w + ix) * c + ch;
                float v = xi[at];
                if (v > best) {
                    best = v;
                    besti = at;
                }
            }
        }
        y[i] = best;
        arg[i] = __int_as_float(besti);
    }
}

// Max pool backward as a gather (no atomics): each input element sums, in
// output order, the gradients of the windows it won.
extern "C" __global__ void maxpool_bwd(const float* __restrict__ dy, const float* __restrict__ arg,
                                       float* dx, int acc, int b, int h, int w, int c, int oh,
                                       int ow, int k, int s, int p) {
    i64 n = (i64)b * h * w * c;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        i64 pos = i / c;
        int ix = (int)(pos % w), iy = (int)((pos / w) % h);
        i64 img = pos / ((i64)w * h);
        int at = (iy * w + ix) * c + ch;
        // Windows oy with oy*s - p <= iy <= oy*s - p + k - 1.
        int oy0 = max(0, (iy + p - k + s) / s), oy1 = min(oh - 1, (iy + p) / s);
        int ox0 = max(0, (ix + p - k + s) / s), ox1 = min(ow - 1, (ix + p) / s);
        if (iy + p - k + 1 < 0) oy0 = 0;
        if (ix + p - k + 1 < 0) ox0 = 0;
        float v = acc ? dx[i] : 0.f;
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++) {
                i64 o = ((img * oh + oy) * ow + ox) * c + ch;
                if (__float_as_int(arg[o]) == at) v += dy[o];
            }
        dx[i] = v;
    }
}

// Option A's shortcut: the input subsampled by s, channels c..o zero.
extern "C" __global__ void shortcut_fwd(const float* __restrict__ x, float* __restrict__ y, int b,
                                        int h, int w, int c, int oh, int ow, int o, int s) {
    i64 n = (i64)b * oh * ow * o;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        int co = (int)(i % o);
        i64 pos = i / o;
        int ox = (int)(pos % ow), oy = (int)((pos / ow) % oh);
        i64 img = pos / ((i64)ow * oh);
        y[i] = co < c ? x[((img * h + (i64)oy * s) * w + (i64)ox * s) * c + co] : 0.f;
    }
}

extern "C" __global__ void shortcut_bwd(const float* __restrict__ dy, float* dx, int acc, int b,
                                        int h, int w, int c, int oh, int ow, int o, int s) {
    i64 n = (i64)b * h * w * c;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        i64 pos = i / c;
        int ix = (int)(pos % w), iy = (int)((pos / w) % h);
        i64 img = pos / ((i64)w * h);
        float g = 0.f;
        if (iy % s == 0 && ix % s == 0 && iy / s < oh && ix / s < ow)
            g = dy[((img * oh + iy / s) * ow + ix / s) * o + ch];
        dx[i] = acc ? dx[i] + g : g;
    }
}

// Global average pool over hw positions: y[img][ch].
extern "C" __global__ void avgpool_fwd(const float* __restrict__ x, float* __restrict__ y, int b,
                                       int hw, int c) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= b * c) return;
    int img = i / c, ch = i % c;
    const float* xi = x + (i64)img * hw * c + ch;
    float s = 0.f;
    for (int r = 0; r < hw; r++) s += xi[(i64)r * c];
    y[i] = s * (1.f / (float)hw);
}

extern "C" __global__ void avgpool_bwd(const float* __restrict__ dy, float* dx, int acc, int b,
                                       int hw, int c) {
    i64 n = (i64)b * hw * c;
    float inv = 1.f / (float)hw;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        i64 img = i / ((i64)hw * c);
        float g = dy[img * c + ch] * inv;
        dx[i] = acc ? dx[i] + g : g;
    }
}

// y[r][j] = bias[j] (the classifier's product then adds x W).
extern "C" __global__ void bias_rows(const float* __restrict__ bias, float* __restrict__ y, int b,
                                     int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < b * n) y[i] = bias[i % n];
}

// out[j] = sum over rows of m[r][j], rows in order.
extern "C" __global__ void col_sums(const float* __restrict__ m, float* __restrict__ out, int rows,
                                    int n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = 0.f;
    for (int r = 0; r < rows; r++) s += m[(i64)r * n + j];
    out[j] = s;
}

// Softmax cross-entropy, one block (256 threads) per row: the row's loss
// and dz = (softmax - onehot) / b.
extern "C" __global__ void softmax_ce(const float* __restrict__ z,
                                      const unsigned* __restrict__ labels,
                                      float* __restrict__ dz, float* __restrict__ loss, int n,
                                      int b) {
    __shared__ float red[256];
    int row = blockIdx.x, t = threadIdx.x;
    const float* zr = z + (i64)row * n;
    float m = __int_as_float(0xff800000);
    for (int j = t; j < n; j += 256) m = fmaxf(m, zr[j]);
    red[t] = m;
    __syncthreads();
    for (int k = 128; k > 0; k >>= 1) {
        if (t < k) red[t] = fmaxf(red[t], red[t + k]);
        __syncthreads();
    }
    m = red[0];
    __syncthreads();
    float s = 0.f;
    for (int j = t; j < n; j += 256) s += expf(zr[j] - m);
    red[t] = s;
    __syncthreads();
    for (int k = 128; k > 0; k >>= 1) {
        if (t < k) red[t] += red[t + k];
        __syncthreads();
    }
    float lse = m + logf(red[0]);
    unsigned label = labels[row];
    if (t == 0) loss[row] = lse - zr[label];
    for (int j = t; j < n; j += 256) {
        float p = expf(zr[j] - lse);
        dz[(i64)row * n + j] = (p - (j == (int)label ? 1.f : 0.f)) / (float)b;
    }
}

// skip[0] = whether any row's loss is not finite (the update is then skipped).
extern "C" __global__ void loss_flag(const float* __restrict__ loss, int b, int* __restrict__ skip) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int bad = 0;
    for (int r = 0; r < b; r++) bad |= !isfinite(loss[r]);
    skip[0] = bad;
}

// SGD with momentum and weight decay (PyTorch's formulation) on the
// gradient g * scale (1 / ranks for summed gradients), unless skip[0].
extern "C" __global__ void sgd(float* __restrict__ p, const float* __restrict__ g,
                               float* __restrict__ v, i64 n, float lr, float momentum,
                               float decay, float scale, int first,
                               const int* __restrict__ skip) {
    if (skip[0]) return;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        float d = __fmul_rn(g[i], scale) + decay * p[i];
        float nv = first ? d : momentum * v[i] + d;
        v[i] = nv;
        p[i] -= lr * nv;
    }
}
