#include <stddef.h>
#include <math.h>
/* Hand-fused Izhikevich euler fwd+bwd, float32, M = B*N neurons contiguous; blocks of neurons stay in L1. */
#define BLK 256
void izh_fwd(const float *restrict I, float *restrict spk, float *restrict vs, float *restrict us,
             long T, long M, float a, float b, float c, float d, float vr, float vpk, float dt) {
  float vloc[BLK], uloc[BLK];
  for (long j0 = 0; j0 < M; j0 += BLK) {
    long n = M - j0 < BLK ? M - j0 : BLK;
    for (long j = 0; j < n; j++) { vloc[j] = vr; uloc[j] = b * vr; }
    for (long t = 0; t < T; t++) {
      const float *It = I + t * M + j0; float *st = spk + t * M + j0, *vt = vs + t * M + j0, *ut = us + t * M + j0;
      for (long j = 0; j < n; j++) {
        float v = vloc[j], u = uloc[j];
        vt[j] = v; ut[j] = u;
        float vst = v + dt * (0.04f * v * v + 5.0f * v + 140.0f - u + It[j]);
        float ust = u + dt * a * (b * v - u);
        int s = vst >= vpk;
        st[j] = s ? 1.0f : 0.0f;
        vloc[j] = s ? c : vst;
        uloc[j] = s ? ust + d : ust;
      }
    }
  }
}
void izh_bwd(const float *restrict I, const float *restrict vs, const float *restrict us, const float *restrict w,
             float *restrict gI, long T, long M, float a, float b, float vr, float vpk, float dt, float slope) {
  float gvl[BLK], gul[BLK];
  float scale = 1.0f / (vpk - vr);
  for (long j0 = 0; j0 < M; j0 += BLK) {
    long n = M - j0 < BLK ? M - j0 : BLK;
    for (long j = 0; j < n; j++) { gvl[j] = 0.0f; gul[j] = 0.0f; }
    for (long t = T - 1; t >= 0; t--) {
      const float *It = I + t * M + j0, *vt = vs + t * M + j0, *ut = us + t * M + j0, *wt = w + t * M + j0;
      float *gt = gI + t * M + j0;
      for (long j = 0; j < n; j++) {
        float v = vt[j], u = ut[j];
        float vst = v + dt * (0.04f * v * v + 5.0f * v + 140.0f - u + It[j]);
        float x = (vst - vpk) * scale;
        float den = slope * fabsf(x) + 1.0f;
        float gx = wt[j] / (den * den);
        float gvs = gx * scale + (vst >= vpk ? 0.0f : gvl[j]);
        float gus = gul[j];
        gt[j] = gvs * dt;
        gvl[j] = gvs * (1.0f + dt * (0.08f * v + 5.0f)) + gus * (dt * a * b);
        gul[j] = gus * (1.0f - dt * a) - gvs * dt;
      }
    }
  }
}
