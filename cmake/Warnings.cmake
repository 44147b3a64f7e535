# Compile flags shared by every cadtrain target: warnings (as errors by default) and sanitizers.
add_library(cadtrain_flags INTERFACE)
target_compile_options(cadtrain_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
    -Wcast-align -Wunused -Woverloaded-virtual -Wnull-dereference -Wformat=2>)
if(CADTRAIN_WERROR)
  target_compile_options(cadtrain_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
if(CMAKE_BUILD_TYPE STREQUAL "Release")
  # AVX2 + FMA is the floor on the machines we target; -march=native would tie binaries to one host.
  target_compile_options(cadtrain_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-O3 -mavx2 -mfma>)
endif()
if(CADTRAIN_SANITIZE)
  target_compile_options(cadtrain_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer>)
  target_link_options(cadtrain_flags INTERFACE -fsanitize=address,undefined)
endif()
