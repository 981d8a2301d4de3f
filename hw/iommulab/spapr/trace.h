#include "trace/trace-hw_iommulab_spapr.h"
