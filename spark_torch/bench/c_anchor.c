/* The benchmark's hand-fused anchor (spark_torch.bench.anchors.CAnchor; not part of the library).
 *
 * Izhikevich (2003) neurons, euler, float32, M = B*N neurons contiguous in every [T, M] buffer. Per
 * neuron-step, in the order and rounding of the library's native kernel (built, like this file, with
 * -ffp-contract=off: no fused multiply-add):
 *
 *   v* = v + dt*(0.04*v*v + 5*v + 140 - u + I)          (mV; I in drive units, R = 1)
 *   u* = u + (dt*a)*(b*v - u)                           (mV/ms; the old v)
 *   s  = v* >= v_pk;   v' = s ? c : v*;   u' = s ? u* + d : u*      (v_0 = v_r, u_0 = b*v_r)
 *
 * Reverse, with the spike's cotangent g (1, or w[t] for a weighted loss), the fast-sigmoid surrogate at
 * x = (v* - v_pk)/den, den = v_pk - v_r, and the reset's spike held constant; carries (gv, gu) = dL/d(v', u'):
 *
 *   gvs = g*(1/(slope*|x| + 1)^2)/den + (s ? 0 : gv)     gI = dt*gvs
 *   gv  <- gvs + gI*(0.08*v + 5) + gu*(dt*a)*b           gu <- (gu - gu*(dt*a)) - gI
 *
 * The forward stores only v* and the spikes; the reverse reads one row of v* per step: the spike is
 * v* >= v_pk again, the pre-step v is s ? c : v* of the previous step (v_r at t = 0), and u is not needed
 * (it enters v* and u* linearly, so its adjoint carries through constants). Neurons run in blocks of BLK
 * whose state and carries stay in L1 for all T steps; the blocks are shared among OpenMP threads (without
 * OpenMP the pragmas are ignored and one thread runs them all). */
#include <math.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLK 512
#define INLINE static inline __attribute__((always_inline))

typedef struct {
  float a, b, c, d, vr, vpk, dt, slope;
} Model;

int izh_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/* Forward of neurons [j0, j0 + n): spikes (0/1) and, when `keep`, v* into vs. */
INLINE void forward_block(const float *restrict I, float *restrict spk, float *restrict vs, long T, long M, long j0,
                          long n, Model m, int keep) {
  float v[BLK], u[BLK];
  const float dt_a = m.dt * m.a;
  for (long j = 0; j < n; j++) { v[j] = m.vr; u[j] = m.b * m.vr; }
  for (long t = 0; t < T; t++) {
    const float *restrict it = I + t * M + j0;
    float *restrict st = spk + t * M + j0;
    float *restrict vt = keep ? vs + t * M + j0 : NULL;
    for (long j = 0; j < n; j++) {
      const float vj = v[j], uj = u[j];
      const float vst = vj + m.dt * (0.04f * vj * vj + 5.0f * vj + 140.0f - uj + it[j]);
      const float ust = uj + dt_a * (m.b * vj - uj);
      const int s = vst >= m.vpk;
      if (keep) vt[j] = vst;
      st[j] = s ? 1.0f : 0.0f;
      v[j] = s ? m.c : vst;
      u[j] = s ? ust + m.d : ust;
    }
  }
}

/* Forward of all M neurons over T steps; vs may be NULL (inference: nothing kept for a reverse). */
void izh_forward(const float *I, float *spk, float *vs, long T, long M, Model m) {
  const long blocks = (M + BLK - 1) / BLK;
#pragma omp parallel for schedule(static)
  for (long k = 0; k < blocks; k++) {
    const long j0 = k * BLK, n = M - j0 < BLK ? M - j0 : BLK;
    if (vs) forward_block(I, spk, vs, T, M, j0, n, m, 1);
    else forward_block(I, spk, NULL, T, M, j0, n, m, 0);
  }
}

/* Reverse of neurons [j0, j0 + n) from the kept v*; w: the spikes' cotangent per step, or 1 (`weighted` 0). */
INLINE void reverse_block(const float *restrict vs, const float *restrict w, float *restrict gI, long T, long M,
                          long j0, long n, Model m, int weighted) {
  float gv[BLK], gu[BLK], rest[BLK];
  const float dt_a = m.dt * m.a, den = m.vpk - m.vr;
  for (long j = 0; j < n; j++) { gv[j] = 0.0f; gu[j] = 0.0f; rest[j] = m.vr; }
  for (long t = T - 1; t >= 0; t--) {
    const float *restrict vt = vs + t * M + j0;
    const float *restrict vp = t ? vs + (t - 1) * M + j0 : rest; /* v_r < v_pk: "v' = v_r" at t = 0 */
    const float *restrict wt = weighted ? w + t * M + j0 : NULL;
    float *restrict gt = gI + t * M + j0;
    for (long j = 0; j < n; j++) {
      const float vst = vt[j], vprev = vp[j];
      const float v = vprev >= m.vpk ? m.c : vprev;
      const float y = m.slope * fabsf((vst - m.vpk) / den) + 1.0f;
      const float gx = weighted ? wt[j] * (1.0f / (y * y)) : 1.0f / (y * y);
      const float gvs = gx / den + (vst >= m.vpk ? 0.0f : gv[j]);
      const float h = gu[j] * dt_a;
      const float gf = gvs * m.dt;
      gt[j] = gf;
      gv[j] = gvs + gf * (0.08f * v + 5.0f) + h * m.b;
      gu[j] = gu[j] - h - gf;
    }
  }
}

/* dL/dI [T, M] of loss = sum(spikes * w) (w NULL: spikes.sum()) from the v* that izh_forward kept. */
void izh_reverse(const float *vs, const float *w, float *gI, long T, long M, Model m) {
  const long blocks = (M + BLK - 1) / BLK;
#pragma omp parallel for schedule(static)
  for (long k = 0; k < blocks; k++) {
    const long j0 = k * BLK, n = M - j0 < BLK ? M - j0 : BLK;
    if (w) reverse_block(vs, w, gI, T, M, j0, n, m, 1);
    else reverse_block(vs, NULL, gI, T, M, j0, n, m, 0);
  }
}
