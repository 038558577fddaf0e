/* Runtime CPU check: cpuid for the feature bits, xgetbv for the OS saving
 * the wider registers. Compiled with baseline flags only. */
#include <stddef.h>
#include "cn_kernels.h"

#if defined(CN_HAVE_X86_KERNELS)
#include <cpuid.h>

static unsigned long long cn_xgetbv0(void)
{
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

static int cn_x86_supports(int isa)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!(osxsave && avx && fma))
        return 0;
    unsigned long long xcr0 = cn_xgetbv0();
    if ((xcr0 & 0x6) != 0x6)            /* XMM and YMM state */
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1;
    if (isa == CN_ISA_AVX2)
        return avx2;
    if (isa == CN_ISA_AVX512)           /* plus opmask and ZMM state */
        return avx512f && (xcr0 & 0xe6) == 0xe6;
    return 0;
}
#endif

int cn_cpu_supports(int isa)
{
    if (isa == CN_ISA_GENERIC)
        return 1;
#if defined(CN_HAVE_X86_KERNELS)
    if (isa == CN_ISA_AVX2 || isa == CN_ISA_AVX512)
        return cn_x86_supports(isa);
#endif
    return 0;
}

int cn_best_isa(void)
{
    for (int isa = CN_ISA_COUNT - 1; isa > CN_ISA_GENERIC; --isa)
        if (cn_cpu_supports(isa))
            return isa;
    return CN_ISA_GENERIC;
}

const cn_kernel_table *cn_kernel_layout(int isa)
{
    switch (isa) {
#if defined(CN_HAVE_X86_KERNELS)
    case CN_ISA_AVX512: return &cn_table_avx512;
    case CN_ISA_AVX2: return &cn_table_avx2;
#endif
    case CN_ISA_GENERIC: return &cn_table_generic;
    default: return NULL;
    }
}

const cn_kernel_table *cn_kernels_for(int isa)
{
    return cn_cpu_supports(isa) ? cn_kernel_layout(isa) : NULL;
}
