/* A C loop compiled twice from one definition: for the build's baseline (SSE2 on
 * x86-64, where many loops run at half width or not vectorized) and for AVX2, which
 * runs where the GEMM's instruction set (current_isa) is AVX2 or wider. Used by the
 * GEMM epilogue (gemm_epilogue.h), the finite check (arrays.pyx) and the optimizer
 * updates (optim_update.h). Where there is no x86 target attribute the "avx2" copy is
 * a second baseline copy, so the names always exist.
 *
 *   CN_BASELINE_AND_AVX2(DEF)   expands DEF(generic, ) DEF(avx2, CN_TARGET_AVX2): DEF(sfx,
 *                               attr) defines the functions of one copy, named ..._sfx
 *   CN_PICK_AVX2(name, avx2)    name_avx2 if avx2 else name_generic */
#ifndef CN_ISA_COPIES_H
#define CN_ISA_COPIES_H
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CN_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define CN_TARGET_AVX2
#endif
#define CN_BASELINE_AND_AVX2(DEF) DEF(generic, ) DEF(avx2, CN_TARGET_AVX2)
#define CN_PICK_AVX2(name, avx2) ((avx2) ? name##_avx2 : name##_generic)
#endif
