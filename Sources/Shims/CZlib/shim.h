// The system zlib, for the qcow2 node's compressed clusters (raw deflate, as QEMU writes them).
#include <zlib.h>
