// librbd and librados, Ceph's client libraries (Debian's librbd-dev), for the rbd protocol node.
#include <rados/librados.h>
#include <rbd/librbd.h>
