"""Numerical constants shared by the CPU kernels."""

# exp of an argument below about -87.3 has a denormal or zero float32 result, and x86 CPUs compute
# those 3-100x slower (measured: a whole mLSTM forward 1.3x, a selective scan with large steps 3-4x).
# Decays and stabilised weights are floored here: exp(-87) ~ 1.6e-38 beside values of order 1
# changes no float32 result, and the gradient it drops was below float32 resolution too.
EXP_FLOOR = -87.0

# The mLSTM normaliser's floor exp(-m_t) overflows float32 once the stabiliser m_t < -88 (input
# gates far below zero). The exponent is capped here: when m_t < -80 every true output is below
# ~1e-35 times the stabilised numerator, so the capped floor changes no float32 result, while an
# infinite floor turns the backward's 0 * inf into NaN.
NORMALISER_EXP_CEILING = 80.0
