// The system libzstd, for qcow2's zstd-compressed clusters (compression type 1).
#include <zstd.h>
