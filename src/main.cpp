#include "portcullis/app/cli.hpp"

#include <malloc.h>

int main(int argc, char** argv) {
  // A million-entry CRL arrives as 20–35 MB buffers (response body, serial list, index) freed at
  // every refresh. glibc's dynamic mmap threshold rises to the size of such a freed buffer, after
  // which the next ones come from an arena and stay resident once freed (~40 instead of ~20
  // bytes per CRL entry after a few refreshes). A fixed 1 MiB threshold keeps them in mmap,
  // returned to the system on free.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  return portcullis::app::main_entry(argc, argv);
}
