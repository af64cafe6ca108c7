// libiscsi, the iSCSI initiator library (Debian's libiscsi-dev), for the iscsi protocol node.
#include <stdint.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
