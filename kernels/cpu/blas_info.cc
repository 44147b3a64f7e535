// blas_info.h: asks OpenBLAS about itself and the dynamic loader which file holds it.
#include "kernels/cpu/blas_info.h"

#include <cblas.h>
#include <link.h>

#include <filesystem>
#include <string_view>
#include <system_error>

namespace cadtrain::kernels::cpu {

std::string blas_config() { return openblas_get_config(); }

int blas_parallel_mode() { return openblas_get_parallel(); }

std::string blas_library_path() {
  std::string found;
  // dl_iterate_phdr visits every loaded object; the name is the path the loader resolved.
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        const std::string_view name = info->dlpi_name != nullptr ? info->dlpi_name : "";
        if (name.find("libopenblas") == std::string_view::npos) return 0;
        *static_cast<std::string*>(out) = std::string(name);
        return 1;
      },
      &found);
  if (found.empty()) return found;
  std::error_code ec;
  const auto canonical = std::filesystem::canonical(found, ec);
  return ec ? found : canonical.string();
}

}  // namespace cadtrain::kernels::cpu
