# Required third-party libraries, all from Debian 12 packages (launch/install_deps.sh).
find_package(Threads REQUIRED)
# Static protobuf: Debian's libsentencepiece carries its own protobuf-lite 3.14 and exports its
# symbols; a shared libprotobuf 3.21 in the same process makes the two bind to each other and
# crash. configs/ links libprotobuf.a and keeps its symbols out of the export table.
set(Protobuf_USE_STATIC_LIBS ON)
find_package(Protobuf REQUIRED)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(CLI11 CONFIG REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(fmt REQUIRED)
find_package(GTest REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
find_library(SENTENCEPIECE_TRAIN_LIB sentencepiece_train REQUIRED)

# OpenBLAS, the OpenMP build: sgemm called inside our own OpenMP regions then runs on the calling
# thread instead of spawning a second pool that fights ours for the two cores. Linked by full
# path with an RPATH, so the system-wide alternative (often the pthread build) is not used.
find_library(OPENBLAS_LIBRARY openblas PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp NO_DEFAULT_PATH REQUIRED)
find_path(CBLAS_INCLUDE_DIR cblas.h PATHS /usr/include/x86_64-linux-gnu/openblas-openmp PATH_SUFFIXES openblas REQUIRED)

find_package(benchmark QUIET)
