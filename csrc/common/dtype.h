// Element types shared by kernels that know nothing of torch.
#pragma once

namespace bertfast {

enum class DType { kFloat32, kFloat16, kBFloat16 };

}  // namespace bertfast
