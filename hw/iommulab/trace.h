#include "trace/trace-hw_iommulab.h"
