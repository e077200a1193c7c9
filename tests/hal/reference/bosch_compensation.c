/* The datasheets' integer compensation (BME280 4.2.3, BMP280 3.11.3) as printed, with
 * C's own int32/int64 arithmetic. Reads lines of 18 calibration words and adc_T adc_P
 * adc_H; prints t_fine T P H, or "overflow" when an int32 step of the humidity formula
 * would overflow (checked by redoing it in int64). */
#include <stdio.h>
#include <stdint.h>
typedef int32_t S32; typedef uint32_t U32; typedef int64_t S64;
static S32 T1,T2,T3,P1,P2,P3,P4,P5,P6,P7,P8,P9,H1,H2,H3,H4,H5,H6, t_fine;
static S32 comp_T(S32 adc_T) {
  S32 var1, var2;
  var1 = ((((adc_T>>3) - ((S32)(uint16_t)T1<<1))) * ((S32)T2)) >> 11;
  var2 = (((((adc_T>>4) - ((S32)(uint16_t)T1)) * ((adc_T>>4) - ((S32)(uint16_t)T1))) >> 12) * ((S32)T3)) >> 14;
  t_fine = var1 + var2;
  return (t_fine * 5 + 128) >> 8;
}
static U32 comp_P(S32 adc_P) {
  S64 var1, var2, p;
  var1 = ((S64)t_fine) - 128000;
  var2 = var1 * var1 * (S64)P6;
  var2 = var2 + ((var1*(S64)P5)<<17);
  var2 = var2 + (((S64)P4)<<35);
  var1 = ((var1 * var1 * (S64)P3)>>8) + ((var1 * (S64)P2)<<12);
  var1 = (((((S64)1)<<47)+var1))*((S64)(uint16_t)P1)>>33;
  if (var1 == 0) return 0;
  p = 1048576-adc_P;
  p = (((p<<31)-var2)*3125)/var1;
  var1 = (((S64)P9) * (p>>13) * (p>>13)) >> 25;
  var2 = (((S64)P8) * p) >> 19;
  p = ((p + var1 + var2) >> 8) + (((S64)P7)<<4);
  return (U32)p;
}
static U32 comp_H(S32 adc_H, int *overflow) {
  S32 v; S64 w;
  v = (t_fine - ((S32)76800)); w = v;
  v = (((((adc_H << 14) - (((S32)H4) << 20) - (((S32)H5) * v)) + ((S32)16384)) >> 15) *
       (((((((v * ((S32)H6)) >> 10) * (((v * ((S32)H3)) >> 11) + ((S32)32768))) >> 10) +
          ((S32)2097152)) * ((S32)H2) + 8192) >> 14));
  w = (((((((S64)adc_H) << 14) - (((S64)H4) << 20) - (((S64)H5) * w)) + 16384) >> 15) *
       (((((((w * H6) >> 10) * (((w * H3) >> 11) + 32768)) >> 10) + 2097152) * H2 + 8192) >> 14));
  if ((S64)v != w) *overflow = 1;
  v = (v - (((((v >> 15) * (v >> 15)) >> 7) * ((S32)H1)) >> 4));
  w = (w - (((((w >> 15) * (w >> 15)) >> 7) * H1) >> 4));
  if ((S64)v != w) *overflow = 1;
  v = (v < 0 ? 0 : v);
  v = (v > 419430400 ? 419430400 : v);
  return (U32)(v>>12);
}
int main(void) {
  long a[21];
  while (1) {
    for (int i = 0; i < 21; i++) if (scanf("%ld", &a[i]) != 1) return 0;
    T1=a[0];T2=a[1];T3=a[2];P1=a[3];P2=a[4];P3=a[5];P4=a[6];P5=a[7];P6=a[8];P7=a[9];P8=a[10];P9=a[11];
    H1=a[12];H2=a[13];H3=a[14];H4=a[15];H5=a[16];H6=a[17];
    int overflow = 0;
    S32 T = comp_T((S32)a[18]);
    U32 P = comp_P((S32)a[19]);
    U32 H = comp_H((S32)a[20], &overflow);
    if (overflow) printf("overflow\n"); else printf("%d %d %u %u\n", t_fine, T, P, H);
  }
}
