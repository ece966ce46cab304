// A tick's JSON, written without Python objects: the bytes orjson gives for `Tick.to_dict()`, to the
// byte, for the values the tick layer makes (prices on the cent grid, a volatility rounded to six
// decimals). A value this writer does not cover (a non-finite or huge one) makes it give up on that
// tick, and the caller encodes that tick with orjson: the output is the same either way.
//
// Why: the server's engine thread spent 1.7-2.8 us of its 2.3-4.3 us per tick building a dict and
// calling orjson.dumps (docs/performance.md, section 1).
#pragma once

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace mf {

// The columns of one step's ticks (one entry per tick, in output order).
struct TickColumns {
  std::size_t n = 0;
  const std::int64_t* asset = nullptr;  // index into the symbols
  const std::int64_t* seq = nullptr;
  const std::int64_t* gseq = nullptr;
  const double* last_cents = nullptr;  // whole cents, as doubles (np.rint of price / 0.01)
  const double* bid_cents = nullptr;
  const double* ask_cents = nullptr;
  const std::int64_t* size = nullptr;
  const double* vol = nullptr;  // unrounded: written as round(vol, 6) is
  // Out: round(vol, 6), the value the JSON shows (NaN where the volatility is left to the caller).
  double* vol_rounded = nullptr;
};

namespace tickjson {

inline void put_int(std::string& out, std::int64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// `cents / 100` as orjson writes that double: the decimal with its trailing zeros dropped, and ".0"
// for whole units. That is the double's shortest round-trip form while it has at most 15 significant
// digits, hence the bound (10^13 units); beyond it, or for a non-integral input, false.
inline bool put_cents(std::string& out, double cents) {
  if (!(std::fabs(cents) < 1e15) || cents != std::trunc(cents)) return false;
  const std::int64_t c = static_cast<std::int64_t>(cents);
  const std::int64_t a = c < 0 ? -c : c;
  if (std::signbit(cents)) out.push_back('-');  // -0.0 too, as orjson writes it
  put_int(out, a / 100);
  out.push_back('.');
  const int frac = static_cast<int>(a % 100);
  out.push_back(static_cast<char>('0' + frac / 10));
  if (frac % 10 != 0) out.push_back(static_cast<char>('0' + frac % 10));
  return true;
}

// round(v, 6) as orjson writes it, and as a double in `rounded`. Python's round and std::to_chars with
// a precision both round the exact binary value to nearest, ties to even, and both then read the six
// decimals back correctly rounded (Python's round is dtoa and strtod), so the digits and the double
// are the same; below 10^9 the result has at most 15 significant digits, so they are also its
// shortest form. orjson writes 1e-6 .. 9e-6 in exponent form ("3e-6"), the rest as a plain decimal.
inline bool put_vol(std::string& out, double v, double& rounded) {
  if (!(std::fabs(v) < 1e9)) return false;  // NaN too
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, 6);
  if (r.ec != std::errc() || std::from_chars(buf, r.ptr, rounded).ec != std::errc()) return false;
  std::string_view s(buf, static_cast<std::size_t>(r.ptr - buf));
  const bool neg = s.front() == '-';
  const std::string_view digits = neg ? s.substr(1) : s;
  if (digits.substr(0, 7) == "0.00000" && digits[7] != '0') {
    if (neg) out.push_back('-');
    out.push_back(digits[7]);
    out.append("e-6");
    return true;
  }
  while (s.back() == '0' && s[s.size() - 2] != '.') s.remove_suffix(1);
  out.append(s);
  return true;
}

}  // namespace tickjson

// One encoder per universe: the symbols' JSON strings (with their quotes and escapes, as orjson wrote
// them) are turned into each tick's opening once.
class TickJson {
 public:
  explicit TickJson(const std::vector<std::string>& symbol_json) {
    openings_.reserve(symbol_json.size());
    for (const std::string& s : symbol_json) openings_.push_back("{\"symbol\":" + s + ",\"seq\":");
  }

  std::size_t n_symbols() const { return openings_.size(); }

  // Appends each tick's JSON to `buf`; ends[i] is where tick i ends (it starts where i - 1 ended).
  // A tick this writer does not cover is left empty (ends[i] == its start) and its index put in
  // `failed`. Assets must be < n_symbols() (the bindings check).
  void encode(const TickColumns& t, std::int64_t ts, std::string_view time, std::string& buf,
              std::vector<std::size_t>& ends, std::vector<std::size_t>& failed) const {
    std::string tail = ",\"ts\":";  // the step's shared middle: ts and time
    tickjson::put_int(tail, ts);
    tail.append(",\"time\":\"").append(time).append("\",\"price\":");
    buf.reserve(buf.size() + t.n * (tail.size() + 96));
    ends.resize(t.n);
    for (std::size_t i = 0; i < t.n; ++i) {
      const std::size_t start = buf.size();
      buf.append(openings_[static_cast<std::size_t>(t.asset[i])]);
      tickjson::put_int(buf, t.seq[i]);
      buf.append(",\"gseq\":");
      tickjson::put_int(buf, t.gseq[i]);
      buf.append(tail);
      bool ok = tickjson::put_cents(buf, t.last_cents[i]);
      buf.append(",\"bid\":");
      ok = tickjson::put_cents(buf, t.bid_cents[i]) && ok;
      buf.append(",\"ask\":");
      ok = tickjson::put_cents(buf, t.ask_cents[i]) && ok;
      buf.append(",\"size\":");
      tickjson::put_int(buf, t.size[i]);
      buf.append(",\"vol\":");
      double vol = std::numeric_limits<double>::quiet_NaN();
      ok = tickjson::put_vol(buf, t.vol[i], vol) && ok;
      buf.push_back('}');
      if (!ok) {
        buf.resize(start);
        failed.push_back(i);
      }
      t.vol_rounded[i] = vol;
      ends[i] = buf.size();
    }
  }

 private:
  std::vector<std::string> openings_;
};

}  // namespace mf
