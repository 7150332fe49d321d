// Per-target basics of the fast kernels (Highway's -inl pattern: included by each unit after
// <hwy/foreach_target.h>, so compiled once per target): the vector types, and loads/stores of a
// span's partial last vector.

// Include guard (still compiled once per target)
#if defined(LOWBIT_KERNELS_SIMD_COMMON_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_KERNELS_SIMD_COMMON_INL_H_
#undef LOWBIT_KERNELS_SIMD_COMMON_INL_H_
#else
#define LOWBIT_KERNELS_SIMD_COMMON_INL_H_
#endif

#include <cstddef>
#include <cstring>

#include <hwy/highway.h>

#include "src/kernels/fast_plan.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::grid_params;
using detail::row_job;
using detail::row_plan;

using DF = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<DF>;
using DU = hn::RebindToUnsigned<DF>;
using VF = hn::Vec<DF>;
using VI = hn::Vec<DI>;

// Partial vectors at the end of a span go through an aligned stack buffer: Highway 1.0.3's
// MaskedLoad on SSE4 is an aligned full-vector load, which faults on misaligned tails and reads
// past the end. Lanes beyond `count` read as 0.
template <class D, typename T>
HWY_INLINE hn::Vec<D> LoadTail(D d, const T* p, size_t count) {
  HWY_ALIGN T buf[hn::MaxLanes(D())] = {};
  std::memcpy(buf, p, count * sizeof(T));
  return hn::Load(d, buf);
}
template <class D, typename T>
HWY_INLINE void StoreTail(D d, hn::Vec<D> v, T* p, size_t count) {
  HWY_ALIGN T buf[hn::MaxLanes(D())];
  hn::Store(v, d, buf);
  std::memcpy(p, buf, count * sizeof(T));
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_KERNELS_SIMD_COMMON_INL_H_
