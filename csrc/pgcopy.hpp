// The tick blocks' rows in PostgreSQL's binary COPY format (marketfeed/history/blocks.py decides the
// blocks and their summaries; this only writes the bytes). Done in C++ because slicing eight columns per
// block in Python and joining the pieces copied each flush's payload four times under the GIL the engine
// thread needs (a fifth of the writer's time in py-spy); here it is one pass, with the GIL released.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace mf {

struct BlockRows {
  std::string_view head, tail;               // the payload's header and trailer
  std::vector<std::string_view> row_starts;  // per symbol id: field count and symbol field
  const std::int64_t* symbol = nullptr;      // per block: its symbol id
  const std::int64_t* start = nullptr;       // per block: its first tick (index into the columns)
  const std::int64_t* end = nullptr;         // per block: one past its last tick
  std::size_t blocks = 0;
  const unsigned char* summaries = nullptr;  // per block: `summary_width` bytes, already encoded
  std::size_t summary_width = 0;
  std::vector<const std::uint64_t*> columns;  // per array column: each tick's 8-byte value (a float's bits)
  std::vector<std::int32_t> oids;             // per array column: its element type
  std::size_t ticks = 0;                      // length of every column
};

namespace pgcopy {
constexpr std::size_t kArrayHeader = 24;  // length, ndim, has-nulls, element type, size, lower bound
constexpr std::size_t kElement = 12;      // length (8), then the value

inline char* put32(char* p, std::uint32_t v) {
  v = __builtin_bswap32(v);  // the format is big-endian; every target here is little-endian
  std::memcpy(p, &v, 4);
  return p + 4;
}
inline char* put64(char* p, std::uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
  return p + 8;
}
}  // namespace pgcopy

// Checks the blocks against the columns and returns the payload's size; throws std::invalid_argument.
inline std::size_t block_rows_size(const BlockRows& r) {
  using namespace pgcopy;
  if (r.columns.size() != r.oids.size()) throw std::invalid_argument("block_rows: one element type per column");
  std::size_t size = r.head.size() + r.tail.size() + r.blocks * r.summary_width;
  for (std::size_t b = 0; b < r.blocks; ++b) {
    if (r.symbol[b] < 0 || static_cast<std::size_t>(r.symbol[b]) >= r.row_starts.size())
      throw std::invalid_argument("block_rows: a block's symbol id has no row start");
    if (r.start[b] < 0 || r.end[b] <= r.start[b] || static_cast<std::size_t>(r.end[b]) > r.ticks)
      throw std::invalid_argument("block_rows: a block's ticks lie outside the columns");
    const auto count = static_cast<std::size_t>(r.end[b] - r.start[b]);
    size += r.row_starts[static_cast<std::size_t>(r.symbol[b])].size() +
            r.columns.size() * (kArrayHeader + kElement * count);
  }
  return size;
}

// Writes exactly block_rows_size(r) bytes to `out`.
inline void write_block_rows(const BlockRows& r, char* out) {
  using namespace pgcopy;
  char* p = out;
  std::memcpy(p, r.head.data(), r.head.size());
  p += r.head.size();
  for (std::size_t b = 0; b < r.blocks; ++b) {
    const std::string_view row = r.row_starts[static_cast<std::size_t>(r.symbol[b])];
    std::memcpy(p, row.data(), row.size());
    p += row.size();
    std::memcpy(p, r.summaries + b * r.summary_width, r.summary_width);
    p += r.summary_width;
    const auto first = static_cast<std::size_t>(r.start[b]), last = static_cast<std::size_t>(r.end[b]);
    const auto count = static_cast<std::uint32_t>(last - first);
    for (std::size_t c = 0; c < r.columns.size(); ++c) {
      p = put32(p, 20 + kElement * count);  // the array's length after this field
      p = put32(p, 1);                      // one dimension
      p = put32(p, 0);                      // no nulls
      p = put32(p, static_cast<std::uint32_t>(r.oids[c]));
      p = put32(p, count);
      p = put32(p, 1);  // lower bound: arrays start at 1
      const std::uint64_t* v = r.columns[c];
      for (std::size_t i = first; i < last; ++i) p = put64(put32(p, 8), v[i]);
    }
  }
  std::memcpy(p, r.tail.data(), r.tail.size());
}

}  // namespace mf
