#include "portcullis/app/cli.hpp"

#include <malloc.h>

#if PORTCULLIS_TCMALLOC
#include <gperftools/malloc_extension_c.h>
#endif

int main(int argc, char** argv) {
  // A million-entry CRL arrives as 20–35 MB buffers (response body, serial list, index) freed at
  // every refresh; they must go back to the system when freed, not stay resident (~40 instead of
  // ~20 bytes per CRL entry after a few refreshes).
#if PORTCULLIS_TCMALLOC
  // tcmalloc keeps freed spans for reuse unless told to return them at once. Small objects (a
  // handshake's, a request's) still come from its per-thread caches.
  MallocExtension_SetNumericProperty("tcmalloc.aggressive_memory_decommit", 1);
#else
  // glibc's dynamic mmap threshold rises to the size of such a freed buffer, after which the next
  // ones come from an arena. A fixed 1 MiB threshold keeps them in mmap, returned on free.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
  return portcullis::app::main_entry(argc, argv);
}
