#pragma once
// The revoked serials of one CRL, laid out so that a lookup touches few cache lines: serials are
// grouped into 2^k buckets by a hash of the serial (about 16 serials per bucket), a directory of
// 32-bit offsets says where each bucket starts, and a lookup scans one bucket. A binary search
// over a million sorted serials takes ~20 dependent steps whose last ten miss the cache; this
// takes the directory entry and one bucket (320 bytes on average).
// Memory: 20 bytes per serial plus 4 bytes per bucket (~0.25 bytes per serial), allocated to
// size.
// Thread-safety: immutable once built; contains() allocates nothing and takes no locks.

#include "portcullis/revocation/crl.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace portcullis::revocation {

class SerialSet {
 public:
  SerialSet() = default;
  // Takes serials in any order, duplicates allowed; `serials` is released before this returns,
  // so building needs the input plus the set, not two copies of either.
  explicit SerialSet(std::vector<Serial> serials);

  bool contains(const Serial& serial) const noexcept;
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // Bytes held: the serials and the bucket directory.
  std::size_t memory_bytes() const noexcept {
    return size_ * sizeof(Serial) + offsets_.capacity() * sizeof(std::uint32_t);
  }
  std::size_t buckets() const noexcept { return offsets_.empty() ? 0 : offsets_.size() - 1; }
  // The most serials one lookup scans.
  std::size_t largest_bucket() const noexcept;
  // The serials in storage order (bucket by bucket): for iteration, not for ordering.
  const Serial* begin() const noexcept { return serials_.get(); }
  const Serial* end() const noexcept { return serials_.get() + size_; }
  // The serials in ascending order (a copy, for tests and tools).
  std::vector<Serial> sorted() const;

 private:
  std::size_t bucket_of(const Serial& serial) const noexcept;

  std::unique_ptr<Serial[]> serials_;  // bucket by bucket, ascending within a bucket
  std::size_t size_ = 0;
  std::vector<std::uint32_t> offsets_;  // bucket b is [offsets_[b], offsets_[b + 1])
  unsigned bucket_bits_ = 0;
};

// Ascending big-endian order of serials, comparing machine words rather than bytes.
bool serial_less(const Serial& a, const Serial& b) noexcept;

}  // namespace portcullis::revocation
