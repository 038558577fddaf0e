/* Clears the per-dtype parameters of gemm_ukr_template.h between two instantiations. */
#undef UKR_NAME
#undef UKR_ROWS_NAME
#undef PACK_A_NAME
#undef PACK_B_NAME
#undef GEMV_NAME
#undef DOTS_NAME
#undef FMA_LOOP_NAME
#undef UKR_T
#undef UKR_V
#undef UKR_VL
#undef UKR_ZERO
#undef UKR_LOAD
#undef UKR_STORE
#undef UKR_BCAST
#undef UKR_FMA
#undef UKR_ADD
