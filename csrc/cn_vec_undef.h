/* Clears the per-copy parameters of cn_vec_copies.h between two includes of its template. */
#undef CN_T
#undef CN_INT
#undef CN_SFX
#undef CN_ATTR
#undef CN_BYTES
