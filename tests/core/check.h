/* Minimal test helpers: CHECK() reports the line and fails the test. */
#ifndef IL_TEST_CHECK_H
#define IL_TEST_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", \
                    __FILE__, __LINE__, #cond); \
            exit(1); \
        } \
    } while (0)

#define CHECK_EQ(a, b) do { \
        uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b); \
        if (a_ != b_) { \
            fprintf(stderr, "%s:%d: %s == 0x%" PRIx64 ", expected %s == 0x%" \
                    PRIx64 "\n", __FILE__, __LINE__, #a, a_, #b, b_); \
            exit(1); \
        } \
    } while (0)

#endif
